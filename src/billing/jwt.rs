//! The endpoints' JWTs (HS256). Each carries its purpose and is refused for any other, so a challenge token
//! cannot start an appliance and a start token cannot open a new session.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// `/api/auth/challenge/` → `/api/auth/verify/`: a room and endpoint waiting for the room's code.
    Challenge,
    /// `/api/auth/verify/` → `/api/appliance/start/`: a resident proved presence.
    Access,
    /// `/api/appliance/start/` → `/api/appliance/finish/`: one run.
    Start,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Challenge => "challenge",
            Purpose::Access => "access",
            Purpose::Start => "start",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub purpose: Purpose,
    pub room: i64,
    pub endpoint: i32,
    /// The endpoint's token version when issued; a bumped version refuses the token.
    pub ver: i32,
    /// The run a start token finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<i32>,
    pub iat: u64,
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is for `{0}`, not for this call")]
    WrongPurpose(&'static str),
    #[error("the token is invalid")]
    Invalid,
}

/// Signs and checks billing tokens with one key.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(***)")
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> TokenKeys {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A token for `purpose`, valid for `ttl` (whole seconds, at least one).
    ///
    /// # Errors
    /// [`TokenError::Invalid`] if signing fails (it does not for HMAC keys).
    pub fn issue(
        &self,
        purpose: Purpose,
        room: i64,
        endpoint: i32,
        ver: i32,
        run: Option<i32>,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let iat = unix_now();
        let claims = Claims {
            purpose,
            room,
            endpoint,
            ver,
            run,
            iat,
            exp: iat + ttl.as_secs().max(1),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)
    }

    /// The claims of a valid, unexpired token of `purpose`.
    ///
    /// # Errors
    /// [`TokenError`] for a bad signature or shape, an expired token, or another purpose.
    pub fn check(&self, token: &str, purpose: Purpose) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Lifetimes are short and configured; the library's 60 s default leeway would double a challenge's.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|err| {
                match err.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                }
            })?;
        if data.claims.purpose != purpose {
            return Err(TokenError::WrongPurpose(data.claims.purpose.as_str()));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_their_claims_and_purpose() {
        let keys = TokenKeys::new(b"secret");
        let token = keys
            .issue(
                Purpose::Start,
                12345,
                1,
                3,
                Some(9),
                Duration::from_secs(60),
            )
            .unwrap();
        let claims = keys.check(&token, Purpose::Start).unwrap();
        assert_eq!(
            (claims.room, claims.endpoint, claims.ver, claims.run),
            (12345, 1, 3, Some(9))
        );
        assert!(matches!(
            keys.check(&token, Purpose::Access),
            Err(TokenError::WrongPurpose("start"))
        ));
    }

    #[test]
    fn other_keys_and_garbage_are_refused() {
        let token = TokenKeys::new(b"one")
            .issue(Purpose::Access, 1, 1, 1, None, Duration::from_secs(60))
            .unwrap();
        let other = TokenKeys::new(b"two");
        assert!(matches!(
            other.check(&token, Purpose::Access),
            Err(TokenError::Invalid)
        ));
        assert!(matches!(
            other.check("not.a.jwt", Purpose::Access),
            Err(TokenError::Invalid)
        ));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let keys = TokenKeys::new(b"secret");
        let claims = Claims {
            purpose: Purpose::Access,
            room: 1,
            endpoint: 1,
            ver: 1,
            run: None,
            iat: unix_now() - 100,
            exp: unix_now() - 1,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert!(matches!(
            keys.check(&token, Purpose::Access),
            Err(TokenError::Expired)
        ));
    }
}
