//! HS256 access tokens with `sub`, `jti`, `sid`, `iat`, `exp`, `iss` and `aud`.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// Tokens are accepted up to this long after `exp`, for clock skew between nodes.
pub const LEEWAY_SECONDS: u64 = 30;

/// The signing secret. It never prints.
#[derive(Clone)]
pub struct JwtSecret(Vec<u8>);

impl JwtSecret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// A key for another purpose (signing media links, say), derived from this secret with
    /// HMAC-SHA256 so the two never share a key and every role derives the same one.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for JwtSecret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("JwtSecret(<redacted>)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: Uuid,
    pub jti: Uuid,
    /// The login session (refresh-token family) the token belongs to.
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

impl AccessClaims {
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or_else(Utc::now)
    }
}

#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub token: String,
    pub claims: AccessClaims,
    pub expires_in: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is invalid")]
    Invalid,
    #[error("the token has expired")]
    Expired,
}

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding_key: EncodingKey,
    decoding_key: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    lifetime: Duration,
}

impl Tokens {
    pub fn new(secret: &JwtSecret, issuer: &str, audience: &str, lifetime: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Only HS256: `alg: none` and algorithm confusion are refused before any check.
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECONDS;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud", "jti"]);
        Self {
            encoding_key: EncodingKey::from_secret(&secret.0),
            decoding_key: DecodingKey::from_secret(&secret.0),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            lifetime,
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    pub fn issue(&self, user_id: Uuid, session_id: Uuid) -> Result<IssuedToken, TokenError> {
        let now = Utc::now().timestamp();
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        let claims = AccessClaims {
            sub: user_id,
            jti: Uuid::now_v7(),
            sid: session_id,
            iat: now,
            exp: now.saturating_add(lifetime),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding_key)
                .map_err(|_| TokenError::Invalid)?;
        Ok(IssuedToken {
            token,
            claims,
            expires_in: self.lifetime.as_secs(),
        })
    }

    /// Checks signature, algorithm, expiry (30 s leeway), issuer, audience and the presence of
    /// every claim. Revocation is checked separately, by [`crate::Revocations`].
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.decoding_key, &self.validation)
                .map_err(|error| match error.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                })?;
        let now = Utc::now().timestamp();
        let leeway = i64::try_from(LEEWAY_SECONDS).unwrap_or(0);
        if data.claims.iat > now + leeway {
            return Err(TokenError::Invalid);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn tokens() -> Tokens {
        Tokens::new(
            &JwtSecret::new(b"0123456789abcdef0123456789abcdef".to_vec()),
            "chatd",
            "chat-clients",
            Duration::from_secs(900),
        )
    }

    #[test]
    fn issued_tokens_verify() {
        let tokens = tokens();
        let issued = tokens.issue(Uuid::now_v7(), Uuid::now_v7());
        let issued = issued.unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(tokens.verify(&issued.token), Ok(issued.claims));
    }

    #[test]
    fn alg_none_is_refused() {
        let tokens = tokens();
        let issued = tokens
            .issue(Uuid::now_v7(), Uuid::now_v7())
            .unwrap_or_else(|error| panic!("{error}"));
        let payload = issued.token.split('.').nth(1).unwrap_or_default();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let forged = format!("{header}.{payload}.");
        assert_eq!(tokens.verify(&forged), Err(TokenError::Invalid));
    }

    #[test]
    fn other_secret_audience_and_issuer_are_refused() {
        let issued = tokens()
            .issue(Uuid::now_v7(), Uuid::now_v7())
            .unwrap_or_else(|error| panic!("{error}"));
        let secret = JwtSecret::new(b"0123456789abcdef0123456789abcdef".to_vec());
        let other_secret = JwtSecret::new(b"another-secret-another-secret-xx".to_vec());
        let lifetime = Duration::from_secs(900);
        let wrong = [
            Tokens::new(&other_secret, "chatd", "chat-clients", lifetime),
            Tokens::new(&secret, "chatd", "someone-else", lifetime),
            Tokens::new(&secret, "other-issuer", "chat-clients", lifetime),
        ];
        for verifier in wrong {
            assert_eq!(verifier.verify(&issued.token), Err(TokenError::Invalid));
        }
    }
}
