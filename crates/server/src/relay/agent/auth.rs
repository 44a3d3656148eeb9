//! Who an agent is: the credential checked before the upgrade, and its hello after it.

use std::net::IpAddr;

use axum::extract::ws::{Message, WebSocket};
use axum::http::HeaderMap;
use guruconnect_proto::{self as proto, Envelope, Payload};
use guruconnect_store::{AgentKey, SupportCode};
use secrecy::ExposeSecret;

use super::HELLO_TIMEOUT;
use super::{close, decode, read_error_close};
use crate::AppState;
use crate::api::codes::normalize_code;
use crate::config::SharedKeyMode;
use crate::error::{ApiError, ApiResult};
use crate::fleet;
use crate::secrets::sha256_hex;

/// How an agent proved itself.
#[derive(Debug)]
pub enum AgentCredential {
    /// A per-agent key: the agent is the key's machine.
    Key(AgentKey),
    /// A support code, already consumed for `session_id`.
    Code {
        /// The code row.
        code: SupportCode,
        /// Session created for it.
        session_id: String,
    },
    /// The deprecated server-wide key.
    SharedKey,
}

fn unauthorized(state: &AppState) -> ApiError {
    state.metrics.auth_failure("agent");
    ApiError::Unauthorized("invalid agent credential")
}

/// Checks the credential; for a support code this consumes it (the single-use gate).
/// Codes share the per-address lockout of `/api/codes/validate` (SPEC §4.9): a locked-out
/// `ip` is refused with 429 before the code is looked at, and every failed code counts.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    ip: IpAddr,
) -> ApiResult<AgentCredential> {
    let credential = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    if credential.is_empty() {
        return Err(unauthorized(state));
    }
    if credential.starts_with(fleet::AGENT_KEY_PREFIX) {
        let key = fleet::find_key(state, credential)
            .await?
            .ok_or_else(|| unauthorized(state))?;
        return Ok(AgentCredential::Key(key));
    }
    if let Some(code) = normalize_code(credential) {
        if let Err(e) = state.limits.check_code_lockout(ip).await {
            state.metrics.rate_limited("agent_code");
            return Err(e);
        }
        let now = state.clock.now_millis();
        let session_id = uuid::Uuid::new_v4().to_string();
        let row = match state.store.get_code(&code).await? {
            // The conditional update is the gate: exactly one agent, on any instance, wins.
            Some(row) if state.store.consume_code(&code, &session_id, now).await? => row,
            _ => {
                state.limits.record_code_attempt(ip, false).await?;
                return Err(unauthorized(state));
            }
        };
        state.limits.record_code_attempt(ip, true).await?;
        return Ok(AgentCredential::Code {
            code: row,
            session_id,
        });
    }
    if let Some(shared) = &state.config.shared_agent_key
        && state.config.shared_agent_key_mode != SharedKeyMode::Disabled
        && constant_time_eq(shared.expose_secret().as_bytes(), credential.as_bytes())
    {
        tracing::warn!(
            "an agent authenticated with the deprecated shared agent key; issue it a per-agent key"
        );
        return Ok(AgentCredential::SharedKey);
    }
    Err(unauthorized(state))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare digests so the comparison time does not depend on the secret's length.
    let (a, b) = (sha256_hex(a), sha256_hex(b));
    a.bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

pub(super) async fn read_hello(
    socket: &mut WebSocket,
) -> Result<proto::AgentHello, (u16, &'static str)> {
    let deadline = tokio::time::sleep(HELLO_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return Err((close::POLICY, "expected agent_hello")),
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    return match decode(&bytes) {
                        Ok(Envelope { payload: Some(Payload::AgentHello(hello)), .. }) => Ok(hello),
                        Ok(_) => Err((close::POLICY, "expected agent_hello")),
                        Err(_) => Err((close::INVALID_PAYLOAD, "malformed message")),
                    };
                }
                Some(Ok(Message::Close(_))) | None => return Err((close::NORMAL, "closed")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(read_error_close(&e).unwrap_or((close::NORMAL, "closed"))),
            }
        }
    }
}
