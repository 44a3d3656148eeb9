//! The agent plane, `/ws/agent`.
//!
//! The credential (`Authorization: Bearer …`) is checked before the upgrade: a per-agent
//! key (`cak_…`), a support code (consumed atomically here), or the legacy shared key.
//! Anything else, a user JWT included, is answered 401 without upgrading (SPEC §4.1).
//! After the upgrade the agent sends `AgentHello`; an agent that authenticated with a key
//! is that key's machine whatever it claims (SPEC §4.13).

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
use guruconnect_proto::{self as proto, Codec, Envelope, Payload};
use guruconnect_store::{
    AgentKey, DEFAULT_TENANT, MachineUpsert, SessionRecord, StoreError, SupportCode,
};
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{DEAD_PEER_AFTER, PING_INTERVAL, close, decode, read_error_close};
use crate::AppState;
use crate::api::codes::normalize_code;
use crate::audit::Audit;
use crate::config::SharedKeyMode;
use crate::error::{ApiError, ApiResult};
use crate::middleware::ClientIp;
use crate::recording::format::RecordType;
use crate::secrets::sha256_hex;
use crate::sessions::registry::{
    Channel, EndCode, LiveSession, NewLive, Phase, SessionKind, close_message, message,
};

/// Time an agent has to send its hello after the upgrade.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Minimum spacing of refresh requests the relay sends on behalf of slow viewers.
const REFRESH_SPACING: Duration = Duration::from_millis(250);
/// Socket read buffer per agent connection.
const AGENT_READ_BUFFER: usize = 8 * 1024;
/// Write batching threshold per agent connection (messages to agents are small).
const AGENT_WRITE_BUFFER: usize = 8 * 1024;
/// Prefix of per-agent keys.
pub const AGENT_KEY_PREFIX: &str = "cak_";
/// The end reason viewers and the session record get when the person at the machine
/// clicks "End session".
pub const ENDED_BY_CUSTOMER: &str = "ended by the person at the machine";

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
    if credential.starts_with(AGENT_KEY_PREFIX) {
        let key = state
            .store
            .find_active_key_by_hash(&sha256_hex(credential.as_bytes()))
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
    // server); large frames are simply read in more pieces.
    ws.max_message_size(proto::MAX_AGENT_MESSAGE)
        .max_frame_size(proto::MAX_AGENT_MESSAGE)
        .read_buffer_size(AGENT_READ_BUFFER)
        .write_buffer_size(AGENT_WRITE_BUFFER)
        .on_upgrade(move |socket| run(state, socket, credential, ip))
}

async fn read_hello(socket: &mut WebSocket) -> Result<proto::AgentHello, (u16, &'static str)> {
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

/// Identity of a connection that is not key-bound.
struct UnkeyedIdentity {
    agent_id: String,
    /// The machine_uid to record (None when it belongs to another machine).
    machine_uid: Option<String>,
    /// Why the machine must wait for an admin's approval, if it must.
    collision: Option<String>,
    /// The claimed uid and host name are those of a machine holding an active per-agent
    /// key: that machine should use its key.
    claims_keyed_machine: bool,
}

/// Resolves an unkeyed agent by its claimed machine_uid: the same endpoint (same uid, same
/// host name, no per-agent key) reuses its row; a uid held by a keyed machine or by a
/// different host is a collision and never takes that row over (SPEC §4.13, §7). An
/// `attended` (support-code) session from the same endpoint as a keyed machine is that
/// machine asking for help: it is listed under the machine's row, next to its managed
/// session, and gets no more than any code session (consent still gates it).
async fn unkeyed_identity(
    state: &AppState,
    hello: &proto::AgentHello,
    attended: bool,
) -> ApiResult<UnkeyedIdentity> {
    let uid = truncate(&hello.machine_uid, 128);
    let fresh = |machine_uid, collision| UnkeyedIdentity {
        agent_id: uuid::Uuid::new_v4().to_string(),
        machine_uid,
        collision,
        claims_keyed_machine: false,
    };
    if uid.is_empty() {
        return Ok(fresh(None, None));
    }
    let Some(machine) = state
        .store
        .find_machine_by_uid(DEFAULT_TENANT, &uid)
        .await?
    else {
        return Ok(fresh(Some(uid), None));
    };
    let keyed = state.store.count_active_keys(&machine.agent_id).await? > 0;
    let same_host = machine.hostname.eq_ignore_ascii_case(&hello.hostname);
    if same_host && (!keyed || attended) {
        return Ok(UnkeyedIdentity {
            agent_id: machine.agent_id,
            machine_uid: Some(uid),
            collision: None,
            claims_keyed_machine: false,
        });
    }
    let reason = format!(
        "machine_uid collides with {} ({})",
        machine.hostname, machine.agent_id
    );
    Ok(UnkeyedIdentity {
        claims_keyed_machine: keyed && same_host,
        ..fresh(None, Some(reason))
    })
}

/// At most `max` characters of an agent-supplied string, without NUL (which PostgreSQL
/// cannot store in text).
fn truncate(s: &str, max: usize) -> String {
    s.chars().filter(|&c| c != '\0').take(max).collect()
}

/// Everything needed once the agent said hello.
struct Bound {
    session: Arc<LiveSession>,
    agent_rx: mpsc::Receiver<Message>,
    technician: String,
}

async fn bind(
    state: &AppState,
    credential: &AgentCredential,
    hello: &proto::AgentHello,
    ip: IpAddr,
) -> Result<Bound, (u16, &'static str)> {
    let internal = |e: ApiError| {
        if matches!(e, ApiError::StorageFull) {
            tracing::error!("agent refused: database storage is full");
            return (close::GOING_AWAY, "server storage full; try again later");
        }
        tracing::error!(error = %e, "binding an agent failed");
        (close::GOING_AWAY, "server error")
    };
    let unkeyed = match credential {
        AgentCredential::Key(_) => None,
        AgentCredential::Code { .. } => Some(
            unkeyed_identity(state, hello, true)
                .await
                .map_err(internal)?,
        ),
        AgentCredential::SharedKey => Some(
            unkeyed_identity(state, hello, false)
                .await
                .map_err(internal)?,
        ),
    };
    let (agent_id, kind, key_id, code, session_id, technician) = match credential {
        AgentCredential::Key(key) => (
            key.agent_id.clone(),
            SessionKind::Managed,
            Some(key.id.clone()),
            None,
            uuid::Uuid::new_v4().to_string(),
            String::new(),
        ),
        AgentCredential::Code { code, session_id } => (
            unkeyed
                .as_ref()
                .map(|u| u.agent_id.clone())
                .unwrap_or_default(),
            SessionKind::Attended,
            None,
            Some(code.code.clone()),
            session_id.clone(),
            code.created_by_name.clone(),
        ),
        AgentCredential::SharedKey => {
            let agent_id = unkeyed
                .as_ref()
                .map(|u| u.agent_id.clone())
                .unwrap_or_default();
            // The resolved row never holds a key (a keyed machine's uid resolves to a
            // fresh collision row), so the check is on the machine the agent claims. In
            // both modes a machine that has its own key must use it: otherwise an agent
            // that ignores its provisioned key would add a pending row on every reconnect.
            let claims_keyed = unkeyed.as_ref().is_some_and(|u| u.claims_keyed_machine);
            if claims_keyed
                || (state.config.shared_agent_key_mode == SharedKeyMode::EnrollmentOnly
                    && state
                        .store
                        .count_active_keys(&agent_id)
                        .await
                        .map_err(|e| internal(e.into()))?
                        > 0)
            {
                return Err((close::POLICY, "this machine has a per-agent key; use it"));
            }
            (
                agent_id,
                SessionKind::Managed,
                None,
                None,
                uuid::Uuid::new_v4().to_string(),
                String::new(),
            )
        }
    };
    let now = state.clock.now_millis();
    let upsert = MachineUpsert {
        agent_id: agent_id.clone(),
        tenant_id: DEFAULT_TENANT.to_owned(),
        // A keyed agent's claimed machine_uid is ignored (SPEC §4.13).
        machine_uid: unkeyed.as_ref().and_then(|u| u.machine_uid.clone()),
        hostname: truncate(&hello.hostname, 255),
        os: truncate(&hello.os, 64),
        os_version: truncate(&hello.os_version, 128),
        agent_version: truncate(&hello.agent_version, 64),
        external_ip: Some(ip.to_string()),
        seen_at: now,
    };
    match state.store.upsert_machine(&upsert).await {
        Ok(_) => {}
        Err(StoreError::NotFound) => return Err((close::POLICY, "this machine was removed")),
        Err(e) => return Err(internal(e.into())),
    }
    if let AgentCredential::Key(key) = credential {
        let _ = state.store.touch_agent_key(&key.id, now).await;
    }
    if let Some(reason) = unkeyed.as_ref().and_then(|u| u.collision.clone()) {
        // Managed agents on a colliding uid wait for an admin; support sessions are
        // attended by the end user and proceed on their own row.
        if kind == SessionKind::Managed {
            state
                .store
                .set_machine_pending(&agent_id, Some(&reason), now, None)
                .await
                .map_err(|e| internal(e.into()))?;
            crate::alerts::raise(
                state,
                "machine_collision",
                Audit::new("alert.machine_collision")
                    .agent(&agent_id)
                    .ip(ip),
                json!({ "agent_id": agent_id, "hostname": hello.hostname, "reason": reason }),
            )
            .await;
        }
    }
    let record = SessionRecord {
        id: session_id.clone(),
        tenant_id: DEFAULT_TENANT.to_owned(),
        agent_id: agent_id.clone(),
        kind: kind.as_str().to_owned(),
        code: code.clone(),
        status: match kind {
            SessionKind::Attended => "waiting_consent",
            SessionKind::Managed => "active",
        }
        .to_owned(),
        created_at: now,
        ended_at: None,
        end_reason: None,
    };
    let mut audit = Audit::new("session.created")
        .agent(&agent_id)
        .session(&session_id)
        .ip(ip)
        .details(json!({ "kind": kind.as_str(), "hostname": upsert.hostname, "credential": match credential {
            AgentCredential::Key(_) => "agent_key",
            AgentCredential::Code { .. } => "support_code",
            AgentCredential::SharedKey => "shared_key",
        }}));
    if let AgentCredential::Code { code, .. } = credential {
        audit = audit.details(json!({ "kind": "attended", "hostname": upsert.hostname, "credential": "support_code", "code_created_by": code.created_by }));
    }
    state
        .store
        .create_session(&record, audit.event())
        .await
        .map_err(|e| internal(e.into()))?;
    let mut codecs: Vec<i32> = hello.codecs.clone();
    if !codecs.contains(&(Codec::RawZstd as i32)) {
        codecs.push(Codec::RawZstd as i32);
    }
    let crate::sessions::registry::Registered {
        session, agent_rx, ..
    } = crate::sessions::open(
        state,
        NewLive {
            id: session_id.clone(),
            agent_id: agent_id.clone(),
            kind,
            code: code.clone(),
            key_id,
            hostname: upsert.hostname.clone(),
            codecs,
            capabilities: hello.capabilities.clone(),
            started_at: now,
        },
    )
    .await;
    if let AgentCredential::Code { code, .. } = credential {
        Audit::new("code.consumed")
            .agent(&agent_id)
            .session(&session_id)
            .ip(ip)
            .details(json!({ "code_suffix": &code.code[code.code.len().saturating_sub(3)..] }))
            .record_quietly(state)
            .await;
    }
    if matches!(credential, AgentCredential::SharedKey) {
        provision_key(state, &session, ip).await;
    }
    crate::recording::start_if_due(state, &session, &upsert.hostname).await;
    Ok(Bound {
        session,
        agent_rx,
        technician,
    })
}

/// Trust on first use: an agent on the legacy shared key whose machine has no active
/// per-agent key receives one, once, and uses it from then on. Never re-issued while an
/// active key exists.
async fn provision_key(state: &AppState, session: &LiveSession, ip: IpAddr) {
    // Check and issue as one step, so two connections of one machine racing here cannot
    // both see "no key" (provisioning is rare; one lock for the process is enough).
    static PROVISIONING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = PROVISIONING.lock().await;
    match state.store.count_active_keys(&session.agent_id).await {
        Ok(0) => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = ?e, "could not check the machine's keys");
            return;
        }
    }
    let plaintext = crate::api::machines::mint_agent_key();
    let key = AgentKey {
        id: uuid::Uuid::new_v4().to_string(),
        agent_id: session.agent_id.clone(),
        key_hash: sha256_hex(plaintext.as_bytes()),
        prefix: plaintext.chars().take(10).collect(),
        label: Some("provisioned on first use".to_owned()),
        created_by: None,
        created_at: state.clock.now_millis(),
        last_used_at: None,
        revoked_at: None,
    };
    let audit = Audit::new("key.issued")
        .agent(&session.agent_id)
        .session(&session.id)
        .ip(ip)
        .details(json!({ "key_id": key.id, "prefix": key.prefix, "trust_on_first_use": true }));
    if let Err(e) = state.store.create_agent_key(&key, audit.event()).await {
        tracing::warn!(error = ?e, "could not provision an agent key");
        return;
    }
    session.try_send_to_agent(message(Payload::KeyProvision(proto::KeyProvision {
        agent_key: plaintext,
        key_id: key.id.clone(),
    })));
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

async fn handle(
    state: &AppState,
    session: &Arc<LiveSession>,
    envelope: Envelope,
    bytes: &bytes::Bytes,
    consent_deadline: &mut Option<Instant>,
    last_refresh: &mut Option<Instant>,
) -> std::ops::ControlFlow<()> {
    use std::ops::ControlFlow::{Break, Continue};
    let Some(payload) = envelope.payload else {
        state.metrics.ignored_message("unknown");
        return Continue(());
    };
    match payload {
        Payload::VideoFrame(frame) => {
            if !session.is_active() {
                // Nothing crosses the relay before consent (SPEC §4.8).
                state.metrics.frames_dropped.inc();
                return Continue(());
            }
            let out = session.fan_out_frame(bytes, frame.keyframe);
            state.metrics.frames_relayed.inc_by(out.delivered as u64);
            state.metrics.bytes_relayed.inc_by(out.bytes as u64);
            state.metrics.frames_dropped.inc_by(out.dropped as u64);
            let recorder_waits = session
                .recorder()
                .is_some_and(|r| r.frame(bytes, frame.keyframe));
            // A viewer (or the recorder) that lost frames, or still waits for a full
            // picture, needs a keyframe; ask again (spaced) until every one has one.
            if (out.dropped > 0 || out.waiting > 0 || recorder_waits)
                && last_refresh.is_none_or(|t| t.elapsed() >= REFRESH_SPACING)
            {
                *last_refresh = Some(Instant::now());
                session
                    .try_send_to_agent(message(Payload::RefreshRequest(proto::RefreshRequest {})));
            }
        }
        Payload::CursorShape(_) | Payload::CursorPosition(_) => {
            if session.is_active() {
                session.fan_out_aux(bytes);
                record(session, RecordType::Stream, bytes);
            }
        }
        Payload::DisplayList(_) => {
            if session.is_active() {
                session.broadcast(&Message::Binary(bytes.clone()), false, None);
                record(session, RecordType::Stream, bytes);
            }
        }
        Payload::AgentNotice(_) => {
            if session.is_active() {
                session.broadcast(&Message::Binary(bytes.clone()), false, None);
            }
        }
        // Audited by who and how long, never by content.
        Payload::Chat(chat) => {
            if session.is_active() {
                session.broadcast(&Message::Binary(bytes.clone()), false, None);
                record(session, RecordType::Chat, bytes);
                Audit::new("chat.sent")
                    .agent(&session.agent_id)
                    .session(&session.id)
                    .details(json!({ "from": "machine", "chars": chat.text.chars().count() }))
                    .record_in_background(state);
            }
        }
        Payload::Clipboard(clip) => {
            if session.is_active() {
                session.broadcast(&Message::Binary(bytes.clone()), true, None);
                Audit::new("clipboard.sent")
                    .agent(&session.agent_id)
                    .session(&session.id)
                    .details(json!({ "to": "technicians", "chars": clip.text.chars().count() }))
                    .record_in_background(state);
            }
        }
        Payload::TerminalOutput(_) => {
            record(session, RecordType::Terminal, bytes);
            deliver(session, Channel::Terminal, payload, false);
        }
        Payload::TerminalExit(ref exit) => {
            let details = json!({ "terminal": exit.terminal_id, "exit_code": exit.exit_code, "reason": exit.reason });
            deliver_end(
                state,
                session,
                Channel::Terminal,
                payload,
                "terminal.closed",
                details,
            );
        }
        Payload::FileInfo(ref info) => {
            let (id, limit) = (info.transfer_id, state.config.max_file_transfer_bytes);
            if info.size > limit {
                let refusal = file_refusal(id, &too_big_error(info.size, limit));
                if deliver(session, Channel::File, refusal, true).is_some() {
                    session.try_send_to_agent(message(Payload::FileCancel(proto::FileCancel {
                        transfer_id: id,
                        reason: "larger than the server's limit".into(),
                        cut_off: false,
                    })));
                }
            } else {
                deliver(session, Channel::File, payload, false);
            }
        }
        Payload::FileChunk(_) | Payload::FileAck(_) => {
            deliver(session, Channel::File, payload, false);
        }
        Payload::FileResult(ref result) => {
            let details = json!({
                "transfer": result.transfer_id, "ok": result.ok, "error": result.error,
                "path": result.path, "bytes": result.bytes, "sha256": result.sha256,
            });
            deliver_end(
                state,
                session,
                Channel::File,
                payload,
                "file.transferred",
                details,
            );
        }
        Payload::ConsentResponse(answer) => {
            if session.phase() != Phase::WaitingConsent {
                return Continue(());
            }
            *consent_deadline = None;
            if let Some(recorder) = session.recorder() {
                recorder.event(json!({ "type": "consent", "granted": answer.granted }));
            }
            if answer.granted {
                session.set_phase(Phase::Active);
                let _ = state.store.set_session_status(&session.id, "active").await;
                Audit::new("consent.granted")
                    .agent(&session.agent_id)
                    .session(&session.id)
                    .record_quietly(state)
                    .await;
                session.broadcast(
                    &super::viewer::state_message(session, None, None),
                    false,
                    None,
                );
                session.update_stream();
                session
                    .try_send_to_agent(message(Payload::RefreshRequest(proto::RefreshRequest {})));
            } else {
                Audit::new("consent.denied")
                    .agent(&session.agent_id)
                    .session(&session.id)
                    .record_quietly(state)
                    .await;
                if let Some(code) = &session.code {
                    let _ = state.store.deny_code(code).await;
                }
                session.end(EndCode::Ended, "consent denied");
                return Break(());
            }
        }
        Payload::AgentStatus(status) => {
            let inventory = inventory_json(&status);
            let now = state.clock.now_millis();
            if let Err(e) = state
                .store
                .set_machine_inventory(&session.agent_id, &inventory, now)
                .await
            {
                tracing::warn!(error = ?e, "could not store inventory");
            }
        }
        Payload::Ping(ping) => {
            session.try_send_to_agent(message(Payload::Pong(proto::Pong {
                ping_timestamp_us: ping.timestamp_us,
                timestamp_us: u64::try_from(state.clock.now_millis()).unwrap_or_default() * 1000,
            })));
        }
        Payload::Pong(_) | Payload::AgentHello(_) => {}
        Payload::SessionEnd(_) => {
            session.end(EndCode::Ended, "ended on the remote machine");
            return Break(());
        }
        // The person at the machine clicked "End session" in the indicator. Before consent
        // there is no indicator (the prompt's Deny is the way out), so it is ignored then.
        // Managed sessions end too: the agent reconnects idle, as after a technician's end.
        Payload::CustomerEnd(_) => {
            if !session.is_active() {
                state.metrics.ignored_message("customer_end");
                return Continue(());
            }
            Audit::new("session.ended_by_customer")
                .agent(&session.agent_id)
                .session(&session.id)
                .details(
                    json!({ "kind": session.kind.as_str(), "viewers": session.viewer_count() }),
                )
                .record_quietly(state)
                .await;
            session.end(EndCode::Ended, ENDED_BY_CUSTOMER);
            return Break(());
        }
        Payload::UpdateStatus(status) => {
            crate::api::releases::record_status(state, &session.agent_id, &status).await;
        }
        other => state.metrics.ignored_message(other.kind()),
    }
    Continue(())
}

/// Copies a relayed message into the session's recording, if it has one.
pub(super) fn record(session: &LiveSession, kind: RecordType, bytes: &bytes::Bytes) {
    if let Some(recorder) = session.recorder() {
        recorder.record(kind, bytes);
    }
}

fn inventory_json(s: &proto::AgentStatus) -> serde_json::Value {
    json!({
        "hostname": s.hostname,
        "os": s.os,
        "os_version": s.os_version,
        "agent_version": s.agent_version,
        "cpu_model": s.cpu_model,
        "cpu_count": s.cpu_count,
        "ram_bytes": s.ram_bytes,
        "serial": s.serial,
        "interfaces": s.interfaces.iter().map(|i| json!({ "name": i.name, "mac": i.mac, "addresses": i.addresses })).collect::<Vec<_>>(),
        "logged_on_user": s.logged_on_user,
        "idle_seconds": s.idle_seconds,
        "time_zone": s.time_zone,
        "uptime_seconds": s.uptime_seconds,
    })
}

/// Passes a terminal or file message from the agent to the viewer that opened the channel,
/// under that viewer's number; `last` forgets the channel. A viewer whose queue is full is
/// disconnected (its channels then close), as for every control message: terminal output
/// and file chunks are never dropped. Returns the viewer's id and user id.
fn deliver(
    session: &LiveSession,
    channel: Channel,
    mut payload: Payload,
    last: bool,
) -> Option<(String, String)> {
    let number = payload.channel_number_mut()?;
    let to = session.delivery(channel, *number, last)?;
    *number = to.viewer_number;
    if to.control.try_send(message(payload)).is_err() {
        tracing::warn!(session_id = %session.id, viewer_id = %to.viewer_id, ?channel, "a viewer could not keep up; disconnecting it");
        to.cancel.cancel();
    }
    Some((to.viewer_id, to.user_id))
}

/// Delivers a channel's last message (a shell's exit, a transfer's result) and audits the
/// end as `event`, naming the viewer and user it was for.
fn deliver_end(
    state: &AppState,
    session: &LiveSession,
    channel: Channel,
    payload: Payload,
    event: &str,
    mut details: serde_json::Value,
) {
    if let Some((viewer_id, user_id)) = deliver(session, channel, payload, true) {
        details["viewer_id"] = json!(viewer_id);
        details["user_id"] = json!(user_id);
        Audit::new(event)
            .agent(&session.agent_id)
            .session(&session.id)
            .details(details)
            .record_in_background(state);
    }
}

/// A failed `FileResult` for a transfer the relay refuses or stops.
pub(super) fn file_refusal(transfer_id: u32, error: &str) -> Payload {
    Payload::FileResult(proto::FileResult {
        transfer_id,
        ok: false,
        error: error.to_owned(),
        ..proto::FileResult::default()
    })
}

/// Why a file of `size` bytes may not cross this relay.
pub(super) fn too_big_error(size: u64, limit: u64) -> String {
    format!(
        "the file ({size} bytes) is larger than the server's limit of {limit} bytes \
         (max_file_transfer_bytes)"
    )
}
