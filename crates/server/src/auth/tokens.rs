//! JWTs: 24 h login tokens, 5 min viewer tokens and the short single-purpose tokens of
//! two-factor sign-in, HS256 pinned, each recorded by `jti`
//! in the store so that revocation survives restarts and unknown tokens are refused.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};

/// Issuer claim of every token.
pub const ISSUER: &str = "guruconnect";
/// Login token lifetime.
pub const LOGIN_TTL_SECS: i64 = 24 * 3600;
/// Viewer token lifetime.
pub const VIEWER_TTL_SECS: i64 = 5 * 60;
/// Lifetime of the token between a correct password and the second factor.
pub const MFA_TTL_SECS: i64 = 5 * 60;
/// Lifetime of a sign-in that may only enrol a second factor.
pub const ENROL_TTL_SECS: i64 = 15 * 60;

/// What a token may be used for; a token is accepted only for its own purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Console API.
    Login,
    /// One session's viewer socket.
    Viewer,
    /// Only `POST /api/auth/login/totp`: the password was right, the second factor is
    /// still to come.
    Mfa,
    /// A sign-in whose role requires a second factor the user has not enrolled: only
    /// enrolment, `me` and logout accept it.
    Enrol,
}

/// What a viewer may do in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessMode {
    /// Watch only; input is dropped by the relay.
    ViewOnly,
    /// Watch and control.
    Control,
}

/// Token claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Token id (revocation key).
    pub jti: String,
    /// Issued at (seconds).
    pub iat: i64,
    /// Expiry (seconds).
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Login or viewer.
    pub purpose: Purpose,
    /// Tenant.
    pub tenant_id: String,
    /// Username at issue time (display only; the role is re-read from the store).
    pub username: String,
    /// Viewer tokens: the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Viewer tokens: the access mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<AccessMode>,
}

/// Signs and verifies tokens with the server's secret.
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenService { .. }")
    }
}

impl TokenService {
    /// Builds the service from a secret (length is checked at configuration time).
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
        }
    }

    /// Signs claims.
    pub fn sign(&self, claims: &Claims) -> ApiResult<String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// Verifies signature, algorithm, issuer and expiry; does not check revocation.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    now_millis() / 1000
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(secret: &str) -> TokenService {
        TokenService::new(&SecretString::from(secret.to_owned()))
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "u1".into(),
            jti: "j1".into(),
            iat: now_secs(),
            exp,
            iss: ISSUER.into(),
            purpose: Purpose::Login,
            tenant_id: "default".into(),
            username: "alice".into(),
            session_id: None,
            access_mode: None,
        }
    }

    #[test]
    fn verifies_own_tokens_only() {
        let a = service(&"a".repeat(32));
        let b = service(&"b".repeat(32));
        let token = a.sign(&claims(now_secs() + 60)).expect("sign");
        assert!(a.verify(&token).is_some());
        assert!(b.verify(&token).is_none(), "wrong key must fail");
    }

    #[test]
    fn expired_tokens_fail() {
        let a = service(&"a".repeat(32));
        let token = a.sign(&claims(now_secs() - 120)).expect("sign");
        assert!(a.verify(&token).is_none());
    }

    #[test]
    fn unsigned_alg_none_tokens_fail() {
        let a = service(&"a".repeat(32));
        let token = a.sign(&claims(now_secs() + 60)).expect("sign");
        let mut parts = token.split('.');
        let _header = parts.next();
        let payload = parts.next().expect("payload");
        let forged = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(a.verify(&forged).is_none());
    }
}
