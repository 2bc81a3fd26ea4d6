//! Checks made before a charge point's WebSocket is accepted: its id, the `ocpp1.6` subprotocol, and (security
//! profiles 1 and 2) HTTP Basic credentials. Refusing at the handshake, with an HTTP status, is what chargers
//! expect; upgrading and then closing makes many of them retry in a tight loop.

use actix_web::http::header::{HeaderMap, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::Engine;

/// The only subprotocol we speak.
pub const SUBPROTOCOL: &str = "ocpp1.6";

/// Longest charge point id: OCPP 1.6 `chargeBoxIdentity` is a CiString48.
pub const MAX_ID_LEN: usize = 48;

/// Why a handshake is refused; each maps to one HTTP status.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("charge point id must be 1-48 characters of A-Z a-z 0-9 . _ - : * # @ +")]
    BadId,
    #[error("the `ocpp1.6` subprotocol is required (Sec-WebSocket-Protocol)")]
    NoSubprotocol,
    #[error("unknown charge point")]
    Unknown,
    #[error("charge point is blocked")]
    Blocked,
    #[error("valid HTTP Basic credentials are required (username = charge point id)")]
    BadCredentials,
}

/// Characters chargers use in ids that survive a URL path unencoded.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:*#@+".contains(&b))
}

/// Whether the client offered `ocpp1.6` (the header may list several, comma-separated, in several lines).
pub fn offers_subprotocol(headers: &HeaderMap) -> bool {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL))
}

/// The `(username, password)` of an HTTP Basic header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Argon2id hash in PHC format, with a random salt.
///
/// # Errors
/// Only when the hasher rejects its parameters (never with the defaults).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| err.to_string())
}

/// Checks a password against a stored PHC hash; a malformed hash never verifies.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Decides the credential part of the handshake for a charger with `security_profile` and `password_hash`.
pub fn check_credentials(
    id: &str,
    security_profile: i32,
    password_hash: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    if security_profile < 1 {
        return Ok(());
    }
    let Some(hash) = password_hash else {
        // Profile set but no password: nobody can log in until an operator sets one.
        return Err(Refusal::BadCredentials);
    };
    match basic_credentials(headers) {
        Some((user, password)) if user == id && verify_password(&password, hash) => Ok(()),
        _ => Err(Refusal::BadCredentials),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn ids() {
        for ok in ["CP1", "cp-01_a.b:c", "A", &"x".repeat(48)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(49), "a?b", "a%20"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn subprotocol_lists() {
        let mut headers = HeaderMap::new();
        assert!(!offers_subprotocol(&headers));
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("ocpp2.0.1, ocpp1.6"),
        );
        assert!(offers_subprotocol(&headers));
        headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("ocpp1.5"));
        assert!(!offers_subprotocol(&headers));
    }

    #[test]
    fn passwords_and_basic_auth() {
        let hash = hash_password("s3cret").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("s3cret", "not-a-hash"));

        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("CP1:s3cret");
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("header"),
        );
        assert_eq!(check_credentials("CP1", 1, Some(&hash), &headers), Ok(()));
        assert_eq!(
            check_credentials("CP2", 1, Some(&hash), &headers),
            Err(Refusal::BadCredentials)
        );
        assert_eq!(
            check_credentials("CP1", 1, None, &headers),
            Err(Refusal::BadCredentials)
        );
        assert_eq!(check_credentials("CP1", 0, None, &HeaderMap::new()), Ok(()));
        assert_eq!(
            check_credentials("CP1", 1, Some(&hash), &HeaderMap::new()),
            Err(Refusal::BadCredentials)
        );
    }
}
