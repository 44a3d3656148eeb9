//! TOTP second factor (RFC 6238: SHA-1, 6 digits, 30-second steps) and recovery codes.
//!
//! A code is accepted for the current step or one step either side (clock drift), and
//! only for a step newer than the last one accepted for that user (the store keeps it),
//! so a code cannot be replayed within its window. Recovery codes are 128-bit random
//! values shown once and stored as SHA-256 hashes.

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use totp_rs::{Algorithm, TOTP};

use crate::error::{ApiError, ApiResult};
use crate::secrets::{random_bytes, sha256_hex};

/// Issuer shown by authenticator apps.
pub const ISSUER: &str = "GuruConnect";
/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Recovery codes handed out at enrolment.
pub const RECOVERY_CODES: usize = 10;

/// A freshly generated secret and the ways to show it to the user once.
pub struct Enrolment {
    /// Base32 secret (for typing in by hand).
    pub secret: SecretString,
    /// `otpauth://totp/…` URI.
    pub otpauth_uri: SecretString,
    /// The URI as a QR code, an SVG `data:` URL.
    pub qr_svg_data_url: SecretString,
}

fn totp(secret_base32: &str, account: &str) -> ApiResult<TOTP> {
    let bytes = base32_decode(secret_base32)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("stored TOTP secret is not base32")))?;
    // Account names may not contain ':' (the label separator); usernames never do.
    let account = account.replace(':', "_");
    TOTP::new(
        Algorithm::SHA1,
        6,
        0,
        STEP_SECS,
        bytes,
        Some(ISSUER.to_owned()),
        account,
    )
    .map_err(|e| ApiError::internal(anyhow::anyhow!("TOTP parameters: {e:?}")))
}

fn base32_decode(text: &str) -> Option<Vec<u8>> {
    totp_rs::Secret::Encoded(text.to_owned()).to_bytes().ok()
}

/// Generates a 160-bit secret for `account` with its URI and QR code.
pub fn new_enrolment(account: &str) -> ApiResult<Enrolment> {
    let secret = totp_rs::Secret::Raw(random_bytes::<20>().to_vec()).to_encoded();
    let secret = secret.to_string();
    let totp = totp(&secret, account)?;
    let uri = totp.get_url();
    let svg = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| ApiError::internal(anyhow::anyhow!("QR code: {e:?}")))?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    let data_url = format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    );
    Ok(Enrolment {
        secret: SecretString::from(secret),
        otpauth_uri: SecretString::from(uri),
        qr_svg_data_url: SecretString::from(data_url),
    })
}

/// The current step number at `now_secs`.
pub fn current_step(now_secs: i64) -> i64 {
    now_secs.max(0) / STEP_SECS as i64
}

/// The step (current or one either side) whose code equals `code`, compared in constant
/// time; `None` if the code is malformed or matches none.
pub fn matching_step(secret_base32: &str, code: &str, now_secs: i64) -> ApiResult<Option<i64>> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let totp = totp(secret_base32, "")?;
    let now = current_step(now_secs);
    let mut found = None;
    for step in [now - 1, now, now + 1] {
        let time = u64::try_from(step).unwrap_or(0) * STEP_SECS;
        // Every candidate is checked so the time does not depend on which one matched.
        if totp.check(code, time) && found.is_none() {
            found = Some(step);
        }
    }
    Ok(found)
}

/// Generates [`RECOVERY_CODES`] codes (`xxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxx`, 128 bits
/// each) and their hashes.
pub fn new_recovery_codes() -> (Vec<SecretString>, Vec<String>) {
    (0..RECOVERY_CODES)
        .map(|_| {
            let hex = hex::encode(random_bytes::<16>());
            let grouped = hex
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("-");
            let hash = recovery_code_hash(&grouped);
            (SecretString::from(grouped), hash)
        })
        .unzip()
}

/// The stored hash of a recovery code as typed: separators, spaces and case are ignored.
pub fn recovery_code_hash(code: &str) -> String {
    let normalized: String = code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    sha256_hex(normalized.as_bytes())
}

/// Whether a secret string is shaped like a recovery code (32 hex digits once
/// separators are removed).
pub fn looks_like_recovery_code(code: &SecretString) -> bool {
    let digits: Vec<char> = code
        .expose_secret()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    digits.len() == 32 && digits.iter().all(char::is_ascii_hexdigit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_own_step_and_neighbours_only() {
        let enrolment = new_enrolment("alice").expect("enrolment");
        let secret = enrolment.secret.expose_secret().to_owned();
        let now = 1_700_000_000;
        let totp = totp(&secret, "alice").expect("totp");
        let code = totp.generate(now as u64);
        assert_eq!(
            matching_step(&secret, &code, now).expect("check"),
            Some(current_step(now))
        );
        assert_eq!(
            matching_step(&secret, &code, now + 30).expect("check"),
            Some(current_step(now))
        );
        assert_eq!(
            matching_step(&secret, &code, now + 95).expect("check"),
            None
        );
        assert_eq!(matching_step(&secret, "12345", now).expect("check"), None);
        assert!(
            enrolment
                .otpauth_uri
                .expose_secret()
                .starts_with("otpauth://totp/GuruConnect:alice?")
        );
        assert!(
            enrolment
                .qr_svg_data_url
                .expose_secret()
                .starts_with("data:image/svg+xml;base64,")
        );
    }

    #[test]
    fn recovery_codes_hash_ignoring_separators_and_case() {
        let (codes, hashes) = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let typed = codes[0].expose_secret().replace('-', " ").to_uppercase();
        assert_eq!(recovery_code_hash(&typed), hashes[0]);
        assert!(looks_like_recovery_code(&codes[3]));
        assert!(!looks_like_recovery_code(&SecretString::from("123456")));
    }
}
