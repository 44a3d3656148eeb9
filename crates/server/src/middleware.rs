//! Per-request plumbing: correlation id, client IP, the request log line, metrics, and
//! turning any bare error response (unknown route, wrong method, oversize body) into the
//! error envelope.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use tracing::Instrument;

use crate::AppState;
use crate::error::{CORRELATION_ID, EnvelopeMarker, envelope_response};

/// Response and request header carrying the correlation id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The client's IP: the direct peer, or the `X-Forwarded-For` client when the peer is a
/// trusted proxy (SPEC §4.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(IpAddr::from([0, 0, 0, 0]))))
    }
}

/// Resolves the client IP from the peer address and headers.
pub fn resolve_client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Walk right to left: the first hop that is not one of our proxies is the client.
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(hops.first())
        .copied()
        .unwrap_or(peer)
}

fn valid_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| text.to_owned())
}

/// The outermost middleware: sets up the request's context and logs one line for it.
pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let correlation_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(valid_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let client_ip = resolve_client_ip(peer, req.headers(), &state.config.trusted_proxies);
    req.extensions_mut().insert(ClientIp(client_ip));

    let method = req.method().clone();
    // Credentials in the URL (a support code in the path, a viewer token in the query)
    // never reach the log (SPEC §4.10).
    let path = loggable_path(req.uri().path());
    let query = req.uri().query().map(loggable_query).unwrap_or_default();
    let span = tracing::info_span!("request", correlation_id = %correlation_id, %method, %path, %query, client_ip = %client_ip);
    let has_nul =
        has_encoded_nul(req.uri().path()) || req.uri().query().is_some_and(has_encoded_nul);
    let started = Instant::now();
    let cid = correlation_id.clone();
    let mut response = CORRELATION_ID
        .scope(cid.clone(), async move {
            if has_nul {
                // PostgreSQL cannot store NUL in text and no URL has a use for it.
                return envelope_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the URL must not contain NUL characters".to_owned(),
                );
            }
            let response = next.run(req).await;
            ensure_envelope(response)
        })
        .instrument(span.clone())
        .await;
    let status = response.status();
    state.metrics.record_request(status.as_u16());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Whether a raw path or query carries a percent-encoded NUL byte.
fn has_encoded_nul(raw: &str) -> bool {
    raw.as_bytes().windows(3).any(|w| w == b"%00")
}

/// The path as the log shows it: a support code in `/api/codes/<code>`,
/// `/api/join/<code>` or `/join/<code>…` becomes `***-***-XYZ` (its last group at most);
/// a code's public id (16 hex digits) stays.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    let Some((prefix, rest)) = ["/api/codes/", "/api/join/", "/join/"]
        .into_iter()
        .find_map(|p| path.strip_prefix(p).map(|rest| (p, rest)))
    else {
        return path.into();
    };
    let (segment, tail) = rest.split_once('/').map_or((rest, ""), |(s, t)| (s, t));
    let is_id = segment.len() == 16 && segment.bytes().all(|b| b.is_ascii_hexdigit());
    if segment == "validate" || segment.is_empty() || is_id {
        return path.into();
    }
    let decoded = segment
        .replace("%20", " ")
        .replace("%2D", "-")
        .replace("%2d", "-");
    let masked = match crate::api::codes::normalize_code(&decoded) {
        Some(code) => crate::api::codes::redact_code(&code),
        None => "***".to_owned(),
    };
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!("/{tail}")
    };
    format!("{prefix}{masked}{tail}").into()
}

/// Query parameters whose values are credentials.
const SECRET_QUERY_KEYS: &[&str] = &["token", "code", "key", "password", "secret"];

/// The query as the log shows it: credential values replaced with `***`.
pub fn loggable_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let secret = SECRET_QUERY_KEYS
                .iter()
                .any(|s| key.to_ascii_lowercase().contains(s));
            if secret && pair.contains('=') {
                format!("{key}=***")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Replaces a bare error body (from the router or a layer) with the envelope.
fn ensure_envelope(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<EnvelopeMarker>().is_some()
        || status == StatusCode::SWITCHING_PROTOCOLS
    {
        return response;
    }
    let (code, detail) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "unsupported content type")
        }
        StatusCode::UNAUTHORIZED => ("unauthorized", "authentication required"),
        StatusCode::FORBIDDEN => ("forbidden", "forbidden"),
        StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "too many requests"),
        StatusCode::SERVICE_UNAVAILABLE => {
            ("service_unavailable", "service temporarily unavailable")
        }
        s if s.is_server_error() => ("internal_error", "internal error"),
        _ => ("bad_request", "bad request"),
    };
    let retry_after = response
        .headers()
        .get(axum::http::header::RETRY_AFTER)
        .cloned();
    let mut fresh = envelope_response(status, code, detail.to_owned());
    if let Some(value) = retry_after {
        fresh
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, value);
    }
    fresh
}

/// Fallback for unknown routes.
pub async fn not_found() -> impl IntoResponse {
    envelope_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such resource".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn codes_in_paths_are_redacted() {
        assert_eq!(
            loggable_path("/api/codes/ABC-DEF-X9T"),
            "/api/codes/***-***-X9T"
        );
        assert_eq!(
            loggable_path("/api/codes/abcdefx9t"),
            "/api/codes/***-***-X9T"
        );
        assert_eq!(
            loggable_path("/api/codes/abc%20def%20x9t"),
            "/api/codes/***-***-X9T"
        );
        assert_eq!(loggable_path("/api/codes/not-a-code"), "/api/codes/***");
        assert_eq!(
            loggable_path("/api/codes/0123456789abcdef"),
            "/api/codes/0123456789abcdef"
        );
        assert_eq!(loggable_path("/api/codes/validate"), "/api/codes/validate");
        assert_eq!(loggable_path("/api/machines/x"), "/api/machines/x");
        assert_eq!(
            loggable_path("/api/join/abc-def-x9t"),
            "/api/join/***-***-X9T"
        );
        assert_eq!(
            loggable_path("/join/ABC-DEF-X9T/guruconnect-support.sh"),
            "/join/***-***-X9T/guruconnect-support.sh"
        );
        assert_eq!(loggable_path("/join"), "/join");
    }

    #[test]
    fn credentials_in_queries_are_redacted() {
        assert_eq!(
            loggable_query("session_id=abc&token=eyJ.secret"),
            "session_id=abc&token=***"
        );
        assert_eq!(loggable_query("q=os:linux&limit=5"), "q=os:linux&limit=5");
        assert_eq!(
            loggable_query("viewer_token=x&code"),
            "viewer_token=***&code"
        );
    }

    #[test]
    fn encoded_nul_is_found() {
        assert!(has_encoded_nul("/api/codes/ABC%00"));
        assert!(!has_encoded_nul("/api/codes/ABC%2000"));
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let peer: IpAddr = "203.0.113.9".parse().expect("ip");
        let ip = resolve_client_ip(peer, &xff("1.2.3.4"), &["10.0.0.0/8".parse().expect("net")]);
        assert_eq!(ip, peer);
    }

    #[test]
    fn forwarded_for_is_used_from_trusted_peers_right_to_left() {
        let peer: IpAddr = "10.0.0.2".parse().expect("ip");
        let trusted = ["10.0.0.0/8".parse().expect("net")];
        let ip = resolve_client_ip(peer, &xff("6.6.6.6, 1.2.3.4, 10.0.0.7"), &trusted);
        assert_eq!(ip, "1.2.3.4".parse::<IpAddr>().expect("ip"));
    }
}
