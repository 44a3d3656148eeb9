//! The sessions service: a session's whole life in one place.
//!
//! - **open** ([`open`]): an agent that passed authentication registers its session;
//!   older sessions of the same machine and kind are superseded, here and on other
//!   instances, and the session answers the cluster's requests while it lives;
//! - **viewers** join through [`Sessions::join`] (the registry is the one chokepoint),
//!   locally or, for a session held by another instance, through a [`tunnel`];
//! - **agent gone** ([`agent_offline`]): a managed session stays for its viewers;
//! - **end** ([`close`] when the agent's task finishes, [`end`] from the API,
//!   [`end_by_key`], [`reap_offline`]): registry, metrics, store and audit together;
//! - **kick** ([`kick_user`]): a signed-out or removed user's viewers close everywhere.
//!
//! The doors (`relay/`, `api/`) call these functions; live state is in [`registry`],
//! cross-instance routing and presence in [`bus`].

pub mod bus;
pub mod registry;
pub mod tunnel;

use std::sync::Arc;

use futures_util::StreamExt;
use guruconnect_store::SessionStatus;
use serde_json::json;

use crate::AppState;
use crate::audit::Audit;
use crate::relay::close;
use bus::{Control, EndReply, EndRequest, JoinRequest, SessionBus};
pub use registry::EndCode;
use registry::{
    JoinError, LiveSession, NewLive, Phase, Registered, Registry, SessionKind, ViewerQueues,
};

/// Live sessions of this instance and the bus to the others.
#[derive(Debug)]
pub struct Sessions {
    registry: Registry,
    bus: SessionBus,
}

impl Sessions {
    /// A service over an empty registry.
    pub fn new(bus: SessionBus) -> Self {
        Self {
            registry: Registry::default(),
            bus,
        }
    }

    /// The bus to other instances.
    pub fn bus(&self) -> &SessionBus {
        &self.bus
    }

    /// The live session with that id, if this instance holds it.
    pub fn get(&self, session_id: &str) -> Option<Arc<LiveSession>> {
        self.registry.get(session_id)
    }

    /// The live session of a machine held here (its managed one first).
    pub fn by_agent(&self, agent_id: &str) -> Option<Arc<LiveSession>> {
        self.registry.by_agent(agent_id)
    }

    /// Every live session of a machine held here.
    pub fn all_of_agent(&self, agent_id: &str) -> Vec<Arc<LiveSession>> {
        self.registry.all_of_agent(agent_id)
    }

    /// Every live session held here.
    pub fn all(&self) -> Vec<Arc<LiveSession>> {
        self.registry.all()
    }

    /// The only way a viewer enters a session.
    pub fn join(
        &self,
        session_id: &str,
        viewer_id: &str,
        user_id: &str,
        username: &str,
        access: crate::auth::tokens::AccessMode,
        video: bool,
    ) -> Result<(Arc<LiveSession>, ViewerQueues), JoinError> {
        self.registry
            .join(session_id, viewer_id, user_id, username, access, video)
    }

    /// Removes a viewer; returns its access mode if it was present.
    pub fn leave(
        &self,
        session: &LiveSession,
        viewer_id: &str,
    ) -> Option<crate::auth::tokens::AccessMode> {
        self.registry.leave(session, viewer_id)
    }
}

/// A machine's connection as the API shows it: online (its agent connected) with the id
/// of its live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The machine's live session (its managed one first).
    pub session_id: String,
    /// Whether its agent is connected (not offline awaiting it).
    pub online: bool,
}

/// Every machine with a live session, wherever in the cluster it is held: this instance's
/// registry, and on a cluster the open session rows the other instances keep.
pub async fn presence(state: &AppState) -> std::collections::HashMap<String, Presence> {
    let mut out = std::collections::HashMap::new();
    if let SessionBus::Nats(bus) = &state.sessions.bus {
        match state.store.open_sessions().await {
            Ok(rows) => {
                for row in rows {
                    let online = matches!(
                        row.status,
                        SessionStatus::Active | SessionStatus::WaitingConsent
                    );
                    let managed = row.kind == SessionKind::Managed;
                    // The managed session wins over a support-code one of the same machine.
                    if managed || !out.contains_key(&row.agent_id) {
                        out.insert(
                            row.agent_id,
                            Presence {
                                session_id: row.id,
                                online,
                            },
                        );
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = ?e, instance = bus.instance(), "cannot list the cluster's sessions")
            }
        }
    }
    for session in state.sessions.registry.all() {
        let managed = session.kind == SessionKind::Managed;
        if managed || !out.contains_key(&session.agent_id) {
            out.insert(
                session.agent_id.clone(),
                Presence {
                    session_id: session.id.clone(),
                    online: session.is_agent_connected(),
                },
            );
        }
    }
    out
}

const SUPERSEDED: &str = "superseded by a new connection of the same machine";

/// Registers an agent's session (its store row already written) and supersedes the
/// machine's older sessions of the same kind, wherever they are.
pub async fn open(state: &AppState, new: NewLive) -> Registered {
    let now = new.started_at;
    let registered = state.sessions.registry.register(new);
    let session = registered.session.clone();
    state.metrics.sessions.inc();
    for old in &registered.superseded_offline {
        // An offline session has no agent task left to record its end.
        state.metrics.sessions.dec();
        let _ = state.store.end_session(old, SUPERSEDED, now, None).await;
    }
    if let SessionBus::Nats(bus) = &state.sessions.bus {
        let _ = state
            .store
            .set_session_instance(&session.id, bus.instance())
            .await;
        // Rows of this machine's older sessions (perhaps of a dead instance) end now;
        // live ones on other instances end when they hear of it.
        let _ = state
            .store
            .end_other_open_sessions(
                &session.agent_id,
                session.kind,
                &session.id,
                SUPERSEDED,
                now,
            )
            .await;
        state
            .sessions
            .bus
            .broadcast(Control::Superseded {
                agent_id: session.agent_id.clone(),
                kind: session.kind,
                session_id: session.id.clone(),
            })
            .await;
        spawn_responder(state.clone(), bus.clone(), session);
    }
    registered
}

/// Answers the cluster's requests to a session while it lives: viewers joining from other
/// instances (by session, or by machine for its managed session) and ends.
fn spawn_responder(state: AppState, bus: Arc<bus::NatsBus>, session: Arc<LiveSession>) {
    tokio::spawn(async move {
        let client = bus.client().clone();
        let Some(sess_subject) = bus.session_subject(&session.id, "*") else {
            return;
        };
        let subscribe = tokio::time::timeout(bus::REQUEST_TIMEOUT, client.subscribe(sess_subject));
        let Ok(Ok(mut by_session)) = subscribe.await else {
            tracing::warn!(session_id = %session.id, "session bus: cannot answer for this session");
            return;
        };
        let mut by_machine = match (session.kind, bus.machine_subject(&session.agent_id, "*")) {
            (SessionKind::Managed, Some(subject)) => {
                tokio::time::timeout(bus::REQUEST_TIMEOUT, client.subscribe(subject))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            _ => None,
        };
        loop {
            let machine_next = async {
                match by_machine.as_mut() {
                    Some(sub) => sub.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = session.cancel.cancelled() => break,
                msg = by_session.next() => {
                    let Some(msg) = msg else { break };
                    if msg.subject.ends_with(".join") {
                        answer_join(&state, &bus, &session, &msg).await;
                    } else if msg.subject.ends_with(".snapshot") {
                        bus.reply(&msg, &session.snapshot()).await;
                    } else if msg.subject.ends_with(".controls") {
                        if let Some(user) = bus::decode::<String>(&state, &msg.payload) {
                            bus.reply(&msg, &session.has_controlling_viewer(&user)).await;
                        }
                    } else if msg.subject.ends_with(".end") {
                        if let Some(req) = bus::decode::<EndRequest>(&state, &msg.payload) {
                            let reply = end_here(&state, &session, &req).await;
                            bus.reply(&msg, &reply).await;
                        }
                    } else {
                        state.metrics.bus_dropped.inc();
                    }
                }
                msg = machine_next => {
                    let Some(msg) = msg else { break };
                    if msg.subject.ends_with(".send") {
                        let sent = forward_command(&state, &session, &msg.payload);
                        bus.reply(&msg, &sent).await;
                    } else {
                        answer_join(&state, &bus, &session, &msg).await;
                    }
                }
            }
        }
    });
}

async fn answer_join(
    state: &AppState,
    bus: &Arc<bus::NatsBus>,
    session: &Arc<LiveSession>,
    msg: &async_nats::Message,
) {
    let Some(req) = bus::decode::<JoinRequest>(state, &msg.payload) else {
        return;
    };
    // A machine's offline session is no place to follow it to: wait for its next one.
    if bus.is_machine_subject(&msg.subject) && !session.is_agent_connected() {
        return;
    }
    let reply = tunnel::accept(state, bus, session.clone(), req).await;
    bus.reply(msg, &reply).await;
}

/// Passes a command from another instance's API to this machine's agent: only the
/// commands the API sends (an update), never anything a viewer could.
fn forward_command(state: &AppState, session: &LiveSession, bytes: &[u8]) -> bool {
    let bytes = bytes::Bytes::copy_from_slice(bytes);
    match crate::relay::decode(&bytes).map(|e| e.payload) {
        Ok(Some(guruconnect_proto::Payload::UpdateCommand(_))) if session.is_agent_connected() => {
            session.try_send_to_agent(axum::extract::ws::Message::Binary(bytes))
        }
        Ok(_) => false,
        Err(_) => {
            state.metrics.bus_dropped.inc();
            false
        }
    }
}

/// Sends a command to a machine's connected agent wherever it is held; false when it is
/// not connected (or its queue is full).
pub async fn send_to_machine(
    state: &AppState,
    agent_id: &str,
    payload: guruconnect_proto::Payload,
) -> bool {
    if let Some(session) = state
        .sessions
        .registry
        .by_agent(agent_id)
        .filter(|s| s.is_agent_connected())
    {
        return session.try_send_to_agent(registry::message(payload));
    }
    let SessionBus::Nats(bus) = &state.sessions.bus else {
        return false;
    };
    let Some(subject) = bus.machine_subject(agent_id, "send") else {
        return false;
    };
    let bytes = guruconnect_proto::Envelope::new(payload).to_bytes();
    match tokio::time::timeout(bus::REQUEST_TIMEOUT, bus.client().request(subject, bytes)).await {
        Ok(Ok(reply)) => bus::decode::<bool>(state, &reply.payload).unwrap_or(false),
        _ => false,
    }
}

/// Applies what another instance announced.
pub(crate) async fn apply_control(state: &AppState, control: Control) {
    match control {
        Control::EndByKey { key_id, reason } => {
            state.sessions.registry.end_by_key(&key_id, &reason);
        }
        Control::EndMachine { agent_id, reason } => {
            end_machine_here(state, &agent_id, &reason).await;
        }
        Control::KickUser { user_id, reason } => {
            state.sessions.registry.kick_user(&user_id, &reason);
        }
        Control::Superseded {
            agent_id,
            kind,
            session_id,
        } => {
            for old in state.sessions.registry.all_of_agent(&agent_id) {
                if old.kind != kind || old.id == session_id {
                    continue;
                }
                end_local(
                    state,
                    &old,
                    close::NORMAL,
                    EndCode::AgentGone,
                    SUPERSEDED,
                    state.clock.now_millis(),
                )
                .await;
            }
        }
    }
}

/// A managed session's agent went away (`why`): the session stays for its viewers until
/// the machine reconnects or the reaper removes it.
pub async fn agent_offline(state: &AppState, session: &Arc<LiveSession>, why: &str) {
    let now = state.clock.now_millis();
    session.go_offline(now);
    state.metrics.agents.dec();
    session.broadcast(
        &crate::relay::viewer::state_message(session, None, None),
        false,
        None,
    );
    let _ = state
        .store
        .set_session_status(&session.id, SessionStatus::Offline)
        .await;
    let _ = state.store.touch_machine(&session.agent_id, now).await;
    Audit::new("session.agent_offline")
        .agent(&session.agent_id)
        .session(&session.id)
        .details(json!({ "reason": why }))
        .record_quietly(state)
        .await;
    tracing::info!(session_id = %session.id, reason = why, "managed agent went offline");
}

/// The agent's task is over and so is the session: `reason` (or the recorded one) goes to
/// the store with the `session.ended` event; a support code is spent.
/// The agent task has already ended the session (so its writer sent the close).
pub async fn close(state: &AppState, session: &Arc<LiveSession>, reason: Option<&str>) {
    let recorded = session
        .end_reason()
        .map(|(_, r)| r)
        .unwrap_or_else(|| "agent disconnected".to_owned());
    state.sessions.registry.remove(&session.id);
    state.metrics.agents.dec();
    state.metrics.sessions.dec();
    let reason = reason.map_or(recorded, str::to_owned);
    let now = state.clock.now_millis();
    let audit = Audit::new("session.ended")
        .agent(&session.agent_id)
        .session(&session.id)
        .details(json!({ "reason": reason }));
    if let Err(e) = state
        .store
        .end_session(&session.id, &reason, now, Some(audit.event()))
        .await
    {
        tracing::warn!(error = ?e, "could not record the end of a session");
    }
    if let Some(code) = &session.code {
        // A code is good for one session, whatever the outcome.
        let _ = state.store.end_code(code).await;
    }
    let _ = state.store.touch_machine(&session.agent_id, now).await;
    tracing::info!(session_id = %session.id, reason = %reason, "agent session ended");
}

/// Ends a session held here: an offline one is taken out and recorded now (no agent task
/// is left to do it); a connected one is cancelled and its agent task records the end.
/// Returns whether it was offline.
async fn end_local(
    state: &AppState,
    session: &LiveSession,
    close_code: u16,
    code: EndCode,
    reason: &str,
    now: i64,
) -> bool {
    if state
        .sessions
        .registry
        .end_offline(&session.id, close_code, code, reason)
    {
        state.metrics.sessions.dec();
        let _ = state
            .store
            .end_session(&session.id, reason, now, None)
            .await;
        true
    } else {
        session.end_with(close_code, code, reason);
        false
    }
}

async fn end_here(state: &AppState, session: &LiveSession, req: &EndRequest) -> EndReply {
    if session.phase() == Phase::Ended {
        return EndReply::NotLive;
    }
    if let Some(user) = &req.controller
        && !session.has_controlling_viewer(user)
    {
        return EndReply::Forbidden;
    }
    let code = EndCode::try_from(req.code).unwrap_or(EndCode::Ended);
    let now = state.clock.now_millis();
    if end_local(state, session, req.close, code, &req.reason, now).await {
        EndReply::EndedOffline
    } else {
        EndReply::Ended
    }
}

/// Ends a live session wherever it is held (`controller`: only if that user is controlling
/// it). An offline session's end is recorded here; a connected one's by its agent task.
pub async fn end(
    state: &AppState,
    session_id: &str,
    close_code: u16,
    code: EndCode,
    reason: &str,
    controller: Option<&str>,
) -> EndReply {
    let req = EndRequest {
        close: close_code,
        code: code as i32,
        reason: reason.to_owned(),
        controller: controller.map(str::to_owned),
    };
    if let Some(live) = state.sessions.registry.get(session_id) {
        return end_here(state, &live, &req).await;
    }
    let SessionBus::Nats(bus) = &state.sessions.bus else {
        return EndReply::NotLive;
    };
    match bus.session_subject(session_id, "end") {
        Some(subject) => bus
            .request(state, subject, &req)
            .await
            .unwrap_or(EndReply::NotLive),
        None => EndReply::NotLive,
    }
}

/// The live state of a session wherever it is held; `None` when it is not live.
pub async fn snapshot(state: &AppState, session_id: &str) -> Option<registry::SessionSnapshot> {
    if let Some(live) = state.sessions.registry.get(session_id) {
        return Some(live.snapshot());
    }
    let SessionBus::Nats(bus) = &state.sessions.bus else {
        return None;
    };
    bus.request(state, bus.session_subject(session_id, "snapshot")?, &())
        .await
}

/// Whether `user_id` is controlling the live session `session_id` wherever it is held;
/// `None` when it is not live.
pub async fn controls(state: &AppState, session_id: &str, user_id: &str) -> Option<bool> {
    if let Some(live) = state.sessions.registry.get(session_id) {
        return Some(live.has_controlling_viewer(user_id));
    }
    let SessionBus::Nats(bus) = &state.sessions.bus else {
        return None;
    };
    bus.request(
        state,
        bus.session_subject(session_id, "controls")?,
        &user_id,
    )
    .await
}

async fn end_machine_here(state: &AppState, agent_id: &str, reason: &str) {
    let now = state.clock.now_millis();
    for live in state.sessions.registry.all_of_agent(agent_id) {
        end_local(state, &live, close::POLICY, EndCode::Revoked, reason, now).await;
    }
}

/// Ends every session of a removed machine, on every instance.
pub async fn end_machine(state: &AppState, agent_id: &str, reason: &str) {
    end_machine_here(state, agent_id, reason).await;
    state
        .sessions
        .bus
        .broadcast(Control::EndMachine {
            agent_id: agent_id.to_owned(),
            reason: reason.to_owned(),
        })
        .await;
}

/// Ends, on every instance, the sessions of agents that authenticated with `key_id`;
/// returns how many were live here.
pub async fn end_by_key(state: &AppState, key_id: &str, reason: &str) -> usize {
    let here = state.sessions.registry.end_by_key(key_id, reason);
    state
        .sessions
        .bus
        .broadcast(Control::EndByKey {
            key_id: key_id.to_owned(),
            reason: reason.to_owned(),
        })
        .await;
    here
}

/// Closes, on every instance, the viewers of `user_id` (signed out, removed, disabled).
pub async fn kick_user(state: &AppState, user_id: &str, reason: &str) {
    state.sessions.registry.kick_user(user_id, reason);
    state
        .sessions
        .bus
        .broadcast(Control::KickUser {
            user_id: user_id.to_owned(),
            reason: reason.to_owned(),
        })
        .await;
}

/// Removes offline managed sessions with no viewers past `offline_session_ttl_secs`
/// and records their end. Called periodically; tests call it directly.
pub async fn reap_offline(state: &AppState) -> usize {
    let now = state.clock.now_millis();
    let ttl_ms = i64::try_from(state.config.offline_session_ttl_secs.saturating_mul(1000))
        .unwrap_or(i64::MAX);
    let reaped = state.sessions.registry.reap_offline(now, ttl_ms);
    for session in &reaped {
        state.metrics.sessions.dec();
        let audit = Audit::new("session.reaped")
            .agent(&session.agent_id)
            .session(&session.id);
        if let Err(e) = state
            .store
            .end_session(
                &session.id,
                "reaped: agent offline",
                now,
                Some(audit.event()),
            )
            .await
        {
            tracing::warn!(error = ?e, "could not record the end of a reaped session");
        }
    }
    reaped.len()
}
