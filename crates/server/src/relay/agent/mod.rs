//! The agent plane, `/ws/agent`.
//!
//! The credential (`Authorization: Bearer …`) is checked before the upgrade: a per-agent
//! key (`cak_…`), a support code (consumed atomically here), or the legacy shared key.
//! Anything else, a user JWT included, is answered 401 without upgrading (SPEC §4.1).
//! After the upgrade the agent sends `AgentHello`; an agent that authenticated with a key
//! is that key's machine whatever it claims (SPEC §4.13).
//!
//! Split by job: [`auth`] (credential and hello), [`bind`] (machine and session), this
//! module (the connection's loops) and [`routing`] (what each agent message does). Machine
//! identity and keys are [`crate::fleet`]'s; the session's life is [`crate::sessions`]'.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use guruconnect_proto::{self as proto, Payload};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{DEAD_PEER_AFTER, PING_INTERVAL, close, decode, read_error_close};
use crate::AppState;
use crate::audit::Audit;
use crate::middleware::ClientIp;
use crate::sessions::registry::{EndCode, LiveSession, SessionKind, close_message, message};

mod auth;
mod bind;
mod routing;

use auth::read_hello;
pub use auth::{AgentCredential, authenticate};
use bind::{Bound, bind};
use routing::handle;
pub(super) use routing::{file_refusal, record, too_big_error};

/// Time an agent has to send its hello after the upgrade.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Minimum spacing of refresh requests the relay sends on behalf of slow viewers.
const REFRESH_SPACING: Duration = Duration::from_millis(250);
/// Socket read buffer per agent connection: the read size for headers and small frames.
const AGENT_READ_BUFFER: usize = 8 * 1024;
/// Write batching threshold per agent connection (messages to agents are small).
const AGENT_WRITE_BUFFER: usize = 8 * 1024;
/// The end reason viewers and the session record get when the person at the machine
/// clicks "End session".
pub const ENDED_BY_CUSTOMER: &str = "ended by the person at the machine";

/// `GET /ws/agent`.
pub async fn upgrade(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let credential = match authenticate(&state, &headers, ip).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            if let AgentCredential::Code { code, session_id } = &credential {
                // Not a WebSocket request after all: do not burn the customer's code.
                let _ = state.store.release_code(&code.code, session_id).await;
            }
            return rejection.into_response();
        }
    };
    // Small socket buffers: an idle agent must cost little memory (10,000 of them per
    // server). A frame larger than the read buffer is read into a buffer of its own
    // length, in as few reads as the socket allows (vendor/tungstenite/GURUCONNECT.md),
    // so the small read buffer costs no throughput.
    ws.max_message_size(proto::MAX_AGENT_MESSAGE)
        .max_frame_size(proto::MAX_AGENT_MESSAGE)
        .read_buffer_size(AGENT_READ_BUFFER)
        .write_buffer_size(AGENT_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            state
                .tasks
                .clone()
                .track_future(run(state, socket, credential, ip))
        })
}

/// Runs one agent connection to its end.
async fn run(state: AppState, mut socket: WebSocket, credential: AgentCredential, ip: IpAddr) {
    let hello = match read_hello(&mut socket).await {
        Ok(hello) => hello,
        Err((code, reason)) => {
            if code == close::INVALID_PAYLOAD {
                Audit::new("relay.malformed_message")
                    .ip(ip)
                    .details(json!({ "plane": "agent" }))
                    .record_quietly(&state)
                    .await;
            }
            release_unbound_code(&state, &credential).await;
            let _ = socket.send(close_message(code, reason)).await;
            return;
        }
    };
    let Bound {
        session,
        agent_rx,
        technician,
    } = match bind(&state, &credential, &hello, ip).await {
        Ok(bound) => bound,
        Err((code, reason)) => {
            release_unbound_code(&state, &credential).await;
            let _ = socket.send(close_message(code, reason)).await;
            return;
        }
    };
    state.metrics.agents.inc();
    tracing::info!(session_id = %session.id, agent_id = %session.agent_id, kind = session.kind.as_str(), "agent connected");

    let (ws_tx, ws_rx) = socket.split();
    // Ends this connection's writer; a child of the session's token, so ending the
    // session ends it too, while an agent going offline ends only the connection.
    let connection = session.cancel.child_token();
    let writer = tokio::spawn(write_loop(
        connection.clone(),
        ws_tx,
        agent_rx,
        session.clone(),
        state.shutdown.clone(),
    ));

    session.try_send_to_agent(message(Payload::SessionInfo(proto::SessionInfo {
        session_id: session.id.clone(),
        agent_id: session.agent_id.clone(),
        attended: session.kind == SessionKind::Attended,
    })));
    let consent_timeout = Duration::from_secs(state.config.consent_timeout_secs);
    let consent_deadline = if session.kind == SessionKind::Attended {
        session.try_send_to_agent(message(Payload::ConsentRequest(proto::ConsentRequest {
            technician: technician.clone(),
            organization: String::new(),
            timeout_seconds: u32::try_from(consent_timeout.as_secs()).unwrap_or(u32::MAX),
        })));
        Audit::new("consent.requested")
            .agent(&session.agent_id)
            .session(&session.id)
            .details(json!({ "technician": technician }))
            .record_quietly(&state)
            .await;
        Some(Instant::now() + consent_timeout)
    } else {
        None
    };

    let outcome = read_loop(&state, &session, ws_rx, consent_deadline).await;
    if let (LoopEnd::Disconnected(why), SessionKind::Managed) = (outcome, session.kind) {
        // A managed machine that drops (reboot, network) keeps its session and viewers
        // until it reconnects (superseding this session) or the reaper removes it.
        connection.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        crate::sessions::agent_offline(&state, &session, why).await;
        return;
    }
    // The session is over: make sure everything watching it knows.
    let reason = session
        .end_reason()
        .map(|(_, r)| r)
        .unwrap_or_else(|| "agent disconnected".to_owned());
    session.end(EndCode::AgentGone, &reason);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    let why = match outcome {
        LoopEnd::Disconnected(why) => Some(why),
        LoopEnd::Ended => None,
    };
    crate::sessions::close(&state, &session, why).await;
}

async fn release_unbound_code(state: &AppState, credential: &AgentCredential) {
    if let AgentCredential::Code { code, session_id } = credential {
        let _ = state.store.end_code(&code.code).await;
        let _ = state
            .store
            .end_session(
                session_id,
                "agent never bound",
                state.clock.now_millis(),
                None,
            )
            .await;
    }
}

async fn write_loop(
    connection: tokio_util::sync::CancellationToken,
    mut ws_tx: futures_util::stream::SplitSink<WebSocket, Message>,
    mut agent_rx: mpsc::Receiver<Message>,
    session: Arc<LiveSession>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    loop {
        tokio::select! {
            biased;
            () = connection.cancelled() => {
                if !session.cancel.is_cancelled() {
                    // Only this connection is over (the agent went away): nothing to tell it.
                    break;
                }
                let (code, reason) = session.end_reason().unwrap_or((close::NORMAL, "session ended".into()));
                if let Some(end) = session.end_message() {
                    let _ = ws_tx.send(end).await;
                }
                let _ = ws_tx.send(close_message(code, &reason)).await;
                break;
            }
            () = shutdown.cancelled() => {
                let _ = ws_tx.send(close_message(close::GOING_AWAY, "server shutting down")).await;
                break;
            }
            msg = agent_rx.recv() => match msg {
                Some(msg) => if ws_tx.send(msg).await.is_err() { break },
                None => break,
            },
            _ = ping.tick() => if ws_tx.send(Message::Ping(bytes::Bytes::new())).await.is_err() { break },
        }
    }
}

/// How an agent connection's read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopEnd {
    /// The session was ended (by either side, a policy, or the server).
    Ended,
    /// The agent went away without ending the session.
    Disconnected(&'static str),
}

async fn read_loop(
    state: &AppState,
    session: &Arc<LiveSession>,
    mut ws_rx: futures_util::stream::SplitStream<WebSocket>,
    mut consent_deadline: Option<Instant>,
) -> LoopEnd {
    let mut last_seen = Instant::now();
    let mut last_refresh: Option<Instant> = None;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    loop {
        let consent_wait = async {
            match consent_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = session.cancel.cancelled() => return LoopEnd::Ended,
            () = state.shutdown.cancelled() => { session.end_with(close::GOING_AWAY, EndCode::ServerGoingAway, "server shutting down"); return LoopEnd::Ended }
            () = consent_wait => {
                Audit::new("consent.timeout").agent(&session.agent_id).session(&session.id).record_quietly(state).await;
                session.end(EndCode::Ended, "consent timed out");
                return LoopEnd::Ended;
            }
            _ = heartbeat.tick() => {
                if last_seen.elapsed() > DEAD_PEER_AFTER {
                    return LoopEnd::Disconnected("agent heartbeat lost");
                }
                // A recording gets a keyframe every few seconds, so a seek decodes little.
                if session.streaming_codec().is_some() && session.recorder().is_some_and(|r| r.keyframe_due()) {
                    last_refresh = Some(Instant::now());
                    session.try_send_to_agent(message(Payload::RefreshRequest(proto::RefreshRequest {})));
                }
            }
            msg = ws_rx.next() => {
                let bytes = match msg {
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Close(_))) | None => return LoopEnd::Disconnected("agent disconnected"),
                    Some(Ok(Message::Text(_))) => { last_seen = Instant::now(); state.metrics.ignored_message("text"); continue }
                    Some(Ok(_)) => { last_seen = Instant::now(); continue }
                    Some(Err(e)) => {
                        // A broken frame ends the session with its close code; a dropped
                        // connection only takes the agent offline.
                        if let Some((code, reason)) = read_error_close(&e) {
                            session.end_with(code, EndCode::Protocol, reason);
                            return LoopEnd::Ended;
                        }
                        return LoopEnd::Disconnected("agent disconnected");
                    }
                };
                last_seen = Instant::now();
                let Ok(envelope) = decode(&bytes) else {
                    Audit::new("relay.malformed_message").agent(&session.agent_id).session(&session.id).details(json!({ "plane": "agent" })).record_quietly(state).await;
                    session.end_with(close::INVALID_PAYLOAD, EndCode::Protocol, "malformed message");
                    return LoopEnd::Ended;
                };
                if handle(state, session, envelope, &bytes, &mut consent_deadline, &mut last_refresh).await.is_break() {
                    return LoopEnd::Ended;
                }
            }
        }
    }
}
