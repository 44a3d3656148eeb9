//! Argon2id password hashing, always on the blocking pool (never on the async runtime).

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use secrecy::{ExposeSecret, SecretString};

use crate::error::{ApiError, ApiResult};

/// Hashes a password with Argon2id (default parameters: 19 MiB, 2 passes).
pub async fn hash(password: SecretString) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::internal(anyhow::anyhow!("argon2 hash: {e}")))
    })
    .await?
}

/// Verifies a password against a PHC string; a malformed hash verifies as false.
pub async fn verify(password: SecretString, phc: String) -> ApiResult<bool> {
    Ok(tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.expose_secret().as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await?)
}

/// A hash of a random password, verified against when a user does not exist so that
/// the response time does not reveal which usernames exist.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(uuid::Uuid::new_v4().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Checks a new password against the policy.
pub fn validate_new(password: &str) -> ApiResult<()> {
    let chars = password.chars().count();
    if chars < 8 {
        return Err(ApiError::Validation(
            "password must be at least 8 characters".into(),
        ));
    }
    if chars > 256 {
        return Err(ApiError::Validation(
            "password must be at most 256 characters".into(),
        ));
    }
    Ok(())
}
