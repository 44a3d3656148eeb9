//! The WebSocket relay: `/ws/agent` and `/ws/viewer`, both authenticated before the
//! upgrade, joined through the sessions service ([`crate::sessions`]).

pub mod agent;
pub mod throttle;
pub mod viewer;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use guruconnect_proto::Envelope;

use crate::AppState;

/// How often the relay pings each socket.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// Silence after which a peer is considered dead (SPEC §5: within 30 s).
pub const DEAD_PEER_AFTER: Duration = Duration::from_secs(30);

/// WebSocket close codes the relay uses.
pub mod close {
    /// Session over.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol (reserved bits, unmasked or unknown frames).
    pub const PROTOCOL: u16 = 1002;
    /// A message did not decode, or a text message was not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy (revoked key, protocol misuse).
    pub const POLICY: u16 = 1008;
    /// A message over the cap.
    pub const TOO_BIG: u16 = 1009;
}

/// `/ws/agent` and `/ws/viewer`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ws/agent", get(agent::upgrade))
        .route("/ws/viewer", get(viewer::upgrade))
}

/// Decodes a binary message; `Err` means malformed.
pub fn decode(bytes: &Bytes) -> Result<Envelope, prost::DecodeError> {
    Envelope::from_bytes(bytes.clone())
}

/// The close a socket read error calls for: a code and reason, or `None` when the peer
/// simply went away (nothing can be sent). axum wraps tungstenite's error without
/// exposing its type (and a direct dependency would have to track axum's tungstenite
/// version), so its text is the only handle; the relay tests pin each case.
pub fn read_error_close(err: &axum::Error) -> Option<(u16, &'static str)> {
    let text = err.to_string();
    if text.contains("too long") || text.contains("Space limit") || text.contains("too big") {
        Some((close::TOO_BIG, "message too big"))
    } else if text.contains("UTF-8") {
        Some((close::INVALID_PAYLOAD, "text message is not UTF-8"))
    } else if text.contains("WebSocket protocol error") && !text.contains("without closing") {
        Some((close::PROTOCOL, "protocol error"))
    } else {
        None
    }
}
