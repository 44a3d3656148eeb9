//! Alerts: an audit event plus, when `alert_webhook_url` is configured, a JSON POST signed
//! with HMAC-SHA256 over the exact body (`X-GuruConnect-Signature: sha256=<hex>`), so a
//! receiver can verify it came from this server. Delivery is best effort and never blocks
//! the request that raised the alert.

use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::Sha256;

use crate::AppState;
use crate::audit::Audit;

/// Header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-guruconnect-signature";

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Records `alert.<kind>` and posts it to the webhook, if one is configured.
pub async fn raise(state: &AppState, kind: &str, audit: Audit, details: serde_json::Value) {
    let event_type = format!("alert.{kind}");
    audit.details(details.clone()).record_quietly(state).await;
    let Some(url) = state.config.alert_webhook_url.clone() else {
        return;
    };
    let body = json!({
        "type": event_type,
        "at_ms": state.clock.now_millis(),
        "details": details,
    })
    .to_string();
    let signature = state
        .config
        .alert_webhook_secret
        .as_ref()
        .map(|s| sign(s.expose_secret().as_bytes(), body.as_bytes()));
    let http = state.http.clone();
    tokio::spawn(async move {
        let mut request = http
            .post(url.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(std::time::Duration::from_secs(10))
            .body(body);
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        match request.send().await {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => tracing::warn!(
                status = resp.status().as_u16(),
                "alert webhook refused the alert"
            ),
            Err(e) => tracing::warn!(error = %e, "alert webhook unreachable"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
