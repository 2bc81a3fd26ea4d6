//! RFC 6238 TOTP (HMAC-SHA1, 6 digits, 30 s steps), as authenticator apps and the rooms' code displays use it.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// Seconds per time step.
pub const STEP_SECONDS: u64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Bytes of a generated secret: 160 bits, the HMAC-SHA1 block RFC 4226 recommends.
const SECRET_BYTES: usize = 20;

/// A fresh random secret, base32 without padding (what `otpauth://` URIs carry).
pub fn generate_secret() -> String {
    let bytes: [u8; SECRET_BYTES] = rand::random();
    data_encoding::BASE32_NOPAD.encode(&bytes)
}

/// The key bytes of a base32 secret (case and padding tolerant); `None` when it is not base32.
pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    let cleaned: String = secret
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    data_encoding::BASE32_NOPAD.decode(cleaned.as_bytes()).ok()
}

/// The time step of a Unix time.
pub fn step_of(unix_seconds: u64) -> u64 {
    unix_seconds / STEP_SECONDS
}

/// The HOTP value (RFC 4226) of `key` at counter `step`, with `digits` digits.
pub fn hotp(key: &[u8], step: u64, digits: u32) -> u32 {
    // HMAC takes keys of any length, so this cannot fail; an empty MAC would only ever produce a wrong code.
    let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(key) else {
        return u32::MAX;
    };
    mac.update(&step.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash[hash.len() - 1] & 0x0f);
    let binary = (u32::from(hash[offset]) & 0x7f) << 24
        | u32::from(hash[offset + 1]) << 16
        | u32::from(hash[offset + 2]) << 8
        | u32::from(hash[offset + 3]);
    binary % 10u32.pow(digits)
}

/// The 6-digit code of a base32 secret at a Unix time; `None` when the secret is not base32. Tests and the
/// README use it to play the room's code display.
pub fn code_at(secret_base32: &str, unix_seconds: u64) -> Option<u32> {
    let key = decode_secret(secret_base32)?;
    Some(hotp(&key, step_of(unix_seconds), DIGITS))
}

/// The time step within ±1 step of `now` whose code is `code`, if any (clock drift of the code display).
pub fn matching_step(key: &[u8], code: u32, unix_seconds: u64) -> Option<u64> {
    let now = step_of(unix_seconds);
    // Oldest first, so a code matching two steps (a 1-in-a-million chance) counts as the earlier one.
    [now.checked_sub(1), Some(now), now.checked_add(1)]
        .into_iter()
        .flatten()
        .find(|step| hotp(key, *step, DIGITS) == code)
}

/// `otpauth://` URI for authenticator apps and QR codes.
pub fn otpauth_uri(issuer: &str, room_key: i64, secret_base32: &str) -> String {
    format!(
        "otpauth://totp/{issuer}:room-{room_key}?secret={secret_base32}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA1 rows (8 digits), secret "12345678901234567890".
    #[test]
    fn rfc_6238_test_vectors() {
        let key = b"12345678901234567890";
        for (time, code) in [
            (59u64, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(hotp(key, step_of(time), 8), code, "t={time}");
            assert_eq!(hotp(key, step_of(time), 6), code % 1_000_000, "t={time}");
        }
    }

    #[test]
    fn base32_secrets_round_trip_and_give_the_rfc_codes() {
        let secret = data_encoding::BASE32_NOPAD.encode(b"12345678901234567890");
        assert_eq!(secret, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(code_at(&secret, 59), Some(287_082));
        assert_eq!(code_at(&secret.to_lowercase(), 59), Some(287_082));
        assert_eq!(code_at("not base32!", 59), None);
        let fresh = generate_secret();
        assert_eq!(decode_secret(&fresh).map(|k| k.len()), Some(SECRET_BYTES));
        assert_ne!(fresh, generate_secret());
    }

    #[test]
    fn codes_match_within_one_step_of_drift() {
        let key = b"12345678901234567890";
        let now = 1_111_111_111;
        let step = step_of(now);
        for drift in [step - 1, step, step + 1] {
            assert_eq!(
                matching_step(key, hotp(key, drift, DIGITS), now),
                Some(drift)
            );
        }
        for far in [step - 2, step + 2] {
            assert_eq!(matching_step(key, hotp(key, far, DIGITS), now), None);
        }
    }
}
