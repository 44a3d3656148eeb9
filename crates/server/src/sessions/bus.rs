//! The `SessionBus`: how instances of one cluster reach each other's sessions.
//!
//! A single server needs nothing here ([`SessionBus::InProcess`]): agents and viewers meet
//! in its registry. With `cluster.nats_url` set ([`SessionBus::Nats`]) a viewer may land on
//! an instance that does not hold its session; that instance tunnels the viewer's socket to
//! the one that does (see [`super::tunnel`]), which runs it like a local viewer. Beside the
//! tunnels the bus carries:
//! - presence: each instance publishes a heartbeat every [`HEARTBEAT`]; one silent for
//!   [`PEER_DEAD_AFTER`] is dead, and the others end the sessions it held;
//! - control: a revoked key, a signed-out or removed user and a machine's new session
//!   (superseding its old one) take effect on every instance at once;
//! - requests to a session (`join`, `end`) answered by the instance that holds it.
//!
//! Subjects, under the cluster's name (`cluster.name`, default `guruconnect`): `.presence`,
//! `.ctl`, `.sess.<session>.<verb>`, `.mach.<machine>.{join,send}`, `.tun.<viewer>.{up,down}`.
//! Everything is JSON except tunnel traffic; a message that
//! does not decode is dropped and counted (`guruconnect_bus_dropped`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::registry::SessionKind;
use crate::AppState;
use crate::auth::tokens::AccessMode;

/// How often an instance announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Silence after which a peer instance is taken for dead (noticed within 10 s).
pub const PEER_DEAD_AFTER: Duration = Duration::from_secs(7);
/// How long a request to another instance may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Subject prefix when `cluster.name` is unset.
pub const DEFAULT_CLUSTER_NAME: &str = "guruconnect";

/// The bus of this instance.
#[derive(Debug, Clone)]
pub enum SessionBus {
    /// One server: nothing crosses instances.
    InProcess,
    /// A cluster member on NATS.
    Nats(Arc<NatsBus>),
}

/// What one instance tells the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// An agent key was revoked: sessions that authenticated with it end.
    EndByKey {
        /// The key.
        key_id: String,
        /// For the agent and the viewers.
        reason: String,
    },
    /// A user signed out or was removed: that user's viewers are closed.
    KickUser {
        /// The user.
        user_id: String,
        /// For the viewer.
        reason: String,
    },
    /// A machine was removed: its sessions end.
    EndMachine {
        /// The machine.
        agent_id: String,
        /// For the agent and the viewers.
        reason: String,
    },
    /// A machine connected again (here): its older sessions of that kind elsewhere end.
    Superseded {
        /// The machine.
        agent_id: String,
        /// Managed or attended.
        kind: SessionKind,
        /// The new session, which stays.
        session_id: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct ControlEnvelope {
    from: String,
    control: Control,
}

/// A viewer on one instance asks to watch a session held by another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The viewer's id for this attachment (tunnel subjects are named after it).
    pub viewer_id: String,
    /// The signed-in user.
    pub user_id: String,
    /// The viewer token's id, checked for revocation by the holder.
    pub token_jti: String,
    /// What the token grants.
    pub access: AccessMode,
    /// False for a terminal-only viewer.
    pub video: bool,
    /// The viewer's address, for the audit log.
    pub ip: IpAddr,
    /// The instance the viewer's socket is on.
    pub from: String,
}

/// The holder's answer to a [`JoinRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum JoinReply {
    /// Joined; the tunnel is open.
    Joined {
        /// The session joined.
        session_id: String,
        /// Its machine.
        agent_id: String,
        /// Its kind.
        kind: SessionKind,
        /// The instance holding it (its heartbeat is watched).
        instance: String,
    },
    /// Refused, with the HTTP status and reason the viewer's instance answers with.
    Refused {
        /// 403, 404 or 409.
        status: u16,
        /// For the technician.
        error: String,
    },
}

/// A request to end a session held by another instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndRequest {
    /// Close code for the agent.
    pub close: u16,
    /// `EndCode` for viewers.
    pub code: i32,
    /// Why.
    pub reason: String,
    /// Only if this user is controlling the session (a technician's end); `None`: an
    /// administrator's.
    pub controller: Option<String>,
}

/// The holder's answer to an [`EndRequest`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EndReply {
    /// Ended (an offline session is also recorded as ended).
    Ended,
    /// Ended, and it was offline (no agent task records its end).
    EndedOffline,
    /// Not held here.
    NotLive,
    /// The user is not controlling it.
    Forbidden,
}

/// A cluster member's connection to NATS and what it knows of its peers.
#[derive(Debug)]
pub struct NatsBus {
    client: async_nats::Client,
    instance: String,
    /// Subject prefix (the cluster's name).
    prefix: String,
    /// Last heartbeat heard from each instance (this one included).
    peers: Mutex<HashMap<String, Instant>>,
    /// Since when the connection to NATS has been up (`None` while it is down).
    connected_since: Arc<Mutex<Option<Instant>>>,
}

/// Whether `s` can be one subject token (ids are UUIDs; anything else is refused).
fn token_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decodes a bus message, counting and dropping one that does not decode.
pub fn decode<T: DeserializeOwned>(state: &AppState, payload: &[u8]) -> Option<T> {
    match serde_json::from_slice(payload) {
        Ok(v) => Some(v),
        Err(e) => {
            state.metrics.bus_dropped.inc();
            tracing::warn!(error = %e, "dropped a session-bus message that does not decode");
            None
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

impl SessionBus {
    /// Connects to NATS when the configuration names a cluster; refuses to start when it
    /// cannot be reached.
    pub async fn connect(config: &crate::Config) -> anyhow::Result<Self> {
        let Some(url) = config.cluster.nats_url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(SessionBus::InProcess);
        };
        let instance =
            config.cluster.instance_id.clone().unwrap_or_else(|| {
                format!("gc-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
            });
        // Set from the start and from every reconnect: presence is judged only after a
        // whole heartbeat window of being connected.
        let connected_since = Arc::new(Mutex::new(Some(Instant::now())));
        let since = connected_since.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("guruconnect-{instance}"))
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .ping_interval(Duration::from_secs(5))
            // Messages queued towards NATS: a tunnel publishing faster than the socket drains
            // waits here (and its viewer's queue on the holder drops frames) instead of the
            // default 2048 frames piling up in memory.
            .client_capacity(128)
            // Back within a second or two once NATS is back.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(250 * u64::try_from(attempts.min(8)).unwrap_or(8))
            })
            .event_callback(move |event| {
                let since = since.clone();
                async move {
                    let mut since = since.lock().unwrap_or_else(|e| e.into_inner());
                    match event {
                        async_nats::Event::Connected => {
                            *since = Some(Instant::now());
                            tracing::info!("session bus: connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            *since = None;
                            tracing::warn!(
                                "session bus: lost NATS; cross-instance viewers wait for it"
                            );
                        }
                        other => tracing::warn!(event = %other, "session bus"),
                    }
                }
            })
            .connect(url)
            .await
            .with_context(|| {
                format!(
                    "cannot reach NATS at cluster.nats_url ({url}); a cluster member needs it \
                     to start (unset cluster.nats_url to run a single server)"
                )
            })?;
        tracing::info!(instance = %instance, "joined the cluster");
        Ok(SessionBus::Nats(Arc::new(NatsBus {
            client,
            instance,
            prefix: config
                .cluster
                .name
                .clone()
                .unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_owned()),
            peers: Mutex::new(HashMap::new()),
            connected_since,
        })))
    }

    /// This instance's name on the bus, when clustered.
    pub fn instance(&self) -> Option<&str> {
        match self {
            SessionBus::InProcess => None,
            SessionBus::Nats(bus) => Some(&bus.instance),
        }
    }

    /// The NATS side, when clustered.
    pub fn nats(&self) -> Option<&Arc<NatsBus>> {
        match self {
            SessionBus::InProcess => None,
            SessionBus::Nats(bus) => Some(bus),
        }
    }

    /// Tells every other instance; nothing to do on a single server.
    pub async fn broadcast(&self, control: Control) {
        if let SessionBus::Nats(bus) = self {
            let envelope = ControlEnvelope {
                from: bus.instance.clone(),
                control,
            };
            if let Err(e) = bus
                .client
                .publish(bus.control_subject(), encode(&envelope))
                .await
            {
                tracing::warn!(error = %e, "session bus: could not broadcast");
            }
        }
    }
}

impl NatsBus {
    fn control_subject(&self) -> String {
        format!("{}.ctl", self.prefix)
    }

    fn presence_subject(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    /// Subject of a request to a session.
    pub fn session_subject(&self, session_id: &str, verb: &str) -> Option<String> {
        token_ok(session_id).then(|| format!("{}.sess.{session_id}.{verb}", self.prefix))
    }

    /// Subject on which the holder of a machine's managed session answers `verb` (`join`
    /// a viewer, `send` a command to the agent; `*` for all).
    pub fn machine_subject(&self, agent_id: &str, verb: &str) -> Option<String> {
        token_ok(agent_id).then(|| format!("{}.mach.{agent_id}.{verb}", self.prefix))
    }

    /// Whether a request arrived on a machine's subject (not a session's).
    pub fn is_machine_subject(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with(".mach."))
    }

    /// Tunnel subjects of a viewer: (viewer → holder, holder → viewer).
    pub fn tunnel_subjects(&self, viewer_id: &str) -> (String, String) {
        (
            format!("{}.tun.{viewer_id}.up", self.prefix),
            format!("{}.tun.{viewer_id}.down", self.prefix),
        )
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether the bus is connected to NATS right now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Whether `instance` was heard within [`PEER_DEAD_AFTER`] (and the bus is up).
    pub fn is_alive(&self, instance: &str) -> bool {
        if !self.connected() {
            return false;
        }
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(instance)
            .is_some_and(|t| t.elapsed() < PEER_DEAD_AFTER)
    }

    /// Notes that `instance` was just heard from (it answered or sent a request), so a
    /// peer met before its first heartbeat arrived is not taken for dead.
    pub fn touch(&self, instance: &str) {
        if token_ok(instance) {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            peers.insert(instance.to_owned(), Instant::now());
        }
    }

    /// Whether this instance can judge its peers: connected long enough to have heard
    /// everyone (since its start or its last reconnect), and hearing itself.
    fn presence_trustworthy(&self) -> bool {
        let connected_for = self
            .connected_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed());
        connected_for.is_some_and(|d| d > PEER_DEAD_AFTER + HEARTBEAT)
            && self.is_alive(&self.instance)
    }

    /// Sends a JSON request and decodes the JSON answer; `None` when nobody answers.
    pub async fn request<Q: Serialize, A: DeserializeOwned>(
        &self,
        state: &AppState,
        subject: String,
        request: &Q,
    ) -> Option<A> {
        match self.client.request(subject, encode(request)).await {
            Ok(msg) => decode(state, &msg.payload),
            Err(e) => {
                if e.kind() != async_nats::RequestErrorKind::NoResponders {
                    tracing::warn!(error = %e, "session bus: request failed");
                }
                None
            }
        }
    }

    /// Answers a request message with JSON.
    pub async fn reply<A: Serialize>(&self, msg: &async_nats::Message, answer: &A) {
        if let Some(reply) = &msg.reply {
            let publish = self.client.publish(reply.clone(), encode(answer));
            if !matches!(
                tokio::time::timeout(REQUEST_TIMEOUT, publish).await,
                Ok(Ok(()))
            ) {
                tracing::warn!("session bus: could not reply");
            }
        }
    }

    /// Starts the heartbeat, the presence watch and the control listener.
    pub async fn start(self: &Arc<Self>, state: AppState) -> anyhow::Result<()> {
        let mut presence = self.client.subscribe(self.presence_subject()).await?;
        let mut control = self.client.subscribe(self.control_subject()).await?;
        let bus = self.clone();
        let shutdown = state.shutdown.clone();
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = beat.tick() => {
                        let beat = bus.client.publish(bus.presence_subject(), Bytes::from(bus.instance.clone()));
                        let _ = tokio::time::timeout(HEARTBEAT, beat).await;
                        bus.sweep(&state).await;
                    }
                    msg = presence.next() => match msg {
                        Some(msg) => match std::str::from_utf8(&msg.payload) {
                            Ok(id) if token_ok(id) => {
                                let mut peers = bus.peers.lock().unwrap_or_else(|e| e.into_inner());
                                if peers.insert(id.to_owned(), Instant::now()).is_none() && id != bus.instance {
                                    tracing::info!(peer = id, "cluster: instance joined");
                                }
                            }
                            _ => { state.metrics.bus_dropped.inc(); }
                        },
                        None => return,
                    },
                    msg = control.next() => match msg {
                        Some(msg) => {
                            if let Some(envelope) = decode::<ControlEnvelope>(&state, &msg.payload)
                                && envelope.from != bus.instance
                            {
                                super::apply_control(&state, envelope.control).await;
                            }
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(())
    }

    /// Forgets peers gone silent and ends the sessions recorded as theirs.
    async fn sweep(&self, state: &AppState) {
        let dead: Vec<String> = {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            let dead = peers
                .iter()
                .filter(|(id, t)| **id != self.instance && t.elapsed() >= PEER_DEAD_AFTER)
                .map(|(id, _)| id.clone())
                .collect::<Vec<_>>();
            for id in &dead {
                peers.remove(id);
            }
            let alive = peers
                .len()
                .saturating_sub(usize::from(peers.contains_key(&self.instance)));
            state
                .metrics
                .cluster_peers
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
            dead
        };
        for id in &dead {
            tracing::warn!(peer = %id, "cluster: instance lost (no heartbeat)");
        }
        if !self.presence_trustworthy() {
            return;
        }
        // Sessions held by an instance nobody hears (it died, perhaps before this one
        // started) are over; every instance may do this, the store ends each row once.
        let Ok(holders) = state.store.open_session_instances().await else {
            return;
        };
        for holder in holders {
            if holder == self.instance || self.is_alive(&holder) {
                continue;
            }
            let now = state.clock.now_millis();
            match state
                .store
                .end_open_sessions_of_instance(&holder, "server instance lost", now)
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(peer = %holder, sessions = n, "ended the sessions of a lost instance");
                    crate::audit::Audit::new("cluster.instance_lost")
                        .details(serde_json::json!({ "instance": holder, "sessions": n }))
                        .record_quietly(state)
                        .await;
                }
                Err(e) => tracing::warn!(error = ?e, "could not end a lost instance's sessions"),
            }
        }
    }
}
