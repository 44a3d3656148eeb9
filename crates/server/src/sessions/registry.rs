//! The live-session registry: the single chokepoint through which agents register
//! sessions and viewers join them. Live state (sockets' queues, viewers, phase) lives here;
//! durable records live in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use axum::extract::ws::{CloseFrame, Message};
use bytes::Bytes;
pub use guruconnect_proto::EndCode;
use guruconnect_proto::{Codec, Envelope, Payload};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::tokens::AccessMode;
use crate::recording::Recorder;

/// Frames queued per viewer before the relay starts dropping for it.
pub const VIEWER_FRAME_QUEUE: usize = 8;
/// Control messages queued per viewer; a viewer that cannot take these is disconnected.
pub const VIEWER_CONTROL_QUEUE: usize = 64;
/// Messages queued towards an agent (input, commands); excess input is dropped.
pub const AGENT_QUEUE: usize = 256;
/// Remote terminals, or file transfers, one viewer may have open at once (the agent
/// allows 4 terminals and 8 transfers per session).
pub const CHANNELS_PER_VIEWER: usize = 4;

/// The store's session kind, re-exported so the relay and the store share one type.
pub use guruconnect_store::SessionKind;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Attended, waiting for the end user's answer; nothing flows.
    WaitingConsent,
    /// Frames and input flow.
    Active,
    /// Managed session whose agent dropped; viewers stay attached until it returns (its
    /// new connection supersedes this session) or the reaper removes the session.
    AgentOffline,
    /// Over.
    Ended,
}

/// A viewer's slot in a session.
#[derive(Debug)]
struct ViewerSlot {
    user_id: String,
    username: String,
    access: AccessMode,
    codecs: Vec<i32>,
    /// Lossless tiles preferred while the link carries them.
    prefer_lossless: bool,
    frames: mpsc::Sender<Bytes>,
    control: mpsc::Sender<Message>,
    awaiting_keyframe: bool,
    cancel: CancellationToken,
    /// False for a viewer that wants no picture (a terminal only, `video=0`).
    video: bool,
}

/// A per-viewer stream between a viewer and the agent that the relay numbers and routes:
/// a remote terminal or a file transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A remote terminal.
    Terminal,
    /// A file transfer.
    File,
}

/// Where a channel's messages from the agent go: the viewer that opened it, under that
/// viewer's number.
#[derive(Debug, Clone)]
struct Route {
    viewer_id: String,
    viewer_number: u32,
}

/// The open channels of one kind in a session, by the number the agent sees.
#[derive(Debug, Default)]
struct Routes {
    open: HashMap<u32, Route>,
    next: u32,
}

/// Why a channel could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// The agent did not announce the capability.
    Unsupported,
    /// The viewer already uses this number.
    Duplicate,
    /// The viewer has [`CHANNELS_PER_VIEWER`] open.
    TooMany,
    /// The viewer left.
    NoViewer,
}

impl ChannelError {
    /// For the technician.
    pub fn reason(self, channel: Channel) -> &'static str {
        match (self, channel) {
            (ChannelError::Unsupported, Channel::Terminal) => {
                "this agent has no remote terminal (update it)"
            }
            (ChannelError::Unsupported, Channel::File) => {
                "this agent cannot transfer files (update it)"
            }
            (ChannelError::Duplicate, _) => "this number is already in use",
            (ChannelError::TooMany, Channel::Terminal) => {
                "at most 4 terminals per viewer may be open at once"
            }
            (ChannelError::TooMany, Channel::File) => {
                "at most 4 transfers per viewer may run at once"
            }
            (ChannelError::NoViewer, _) => "the viewer left",
        }
    }
}

/// A channel message for a viewer, with the queue it goes into.
#[derive(Debug)]
pub struct Delivery {
    /// The number the viewer knows the channel by.
    pub viewer_number: u32,
    /// The viewer.
    pub viewer_id: String,
    /// The viewer's user id.
    pub user_id: String,
    /// The viewer's control queue.
    pub control: mpsc::Sender<Message>,
    /// Cancels the viewer (one that cannot keep up is disconnected).
    pub cancel: CancellationToken,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    viewers: HashMap<String, ViewerSlot>,
    agent_codecs: Vec<i32>,
    streaming: Option<i32>,
    /// Codecs the agent may switch to from `streaming` (every viewer decodes them).
    streaming_fallback: Vec<i32>,
    hostname: String,
    end_reason: Option<String>,
    close_code: u16,
    end_code: EndCode,
    offline_since: Option<i64>,
    /// The capabilities the agent announced (`terminal`, `files`).
    agent_capabilities: Vec<String>,
    terminals: Routes,
    transfers: Routes,
}

impl Inner {
    fn routes(&mut self, channel: Channel) -> &mut Routes {
        match channel {
            Channel::Terminal => &mut self.terminals,
            Channel::File => &mut self.transfers,
        }
    }
}

/// One live session: an agent and its viewers.
#[derive(Debug)]
pub struct LiveSession {
    /// Session id.
    pub id: String,
    /// Machine.
    pub agent_id: String,
    /// Attended or managed.
    pub kind: SessionKind,
    /// Support code, for attended sessions.
    pub code: Option<String>,
    /// Per-agent key the agent authenticated with, if any.
    pub key_id: Option<String>,
    /// Start time (ms).
    pub started_at: i64,
    /// Cancelled when the session ends; the agent task and every viewer task watch it.
    pub cancel: CancellationToken,
    agent_tx: mpsc::Sender<Message>,
    inner: Mutex<Inner>,
    /// Set when the recording policy records this session.
    recorder: OnceLock<Recorder>,
}

/// What a viewer receives from the session.
#[derive(Debug)]
pub struct ViewerQueues {
    /// Video and cursor frames, bounded.
    pub frames: mpsc::Receiver<Bytes>,
    /// Everything else towards the viewer.
    pub control: mpsc::Receiver<Message>,
    /// Cancelled to disconnect this viewer.
    pub cancel: CancellationToken,
    /// Sender into this viewer's own control queue (replies such as pongs).
    pub control_tx: mpsc::Sender<Message>,
}

/// Public snapshot of a session for the API.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SessionSnapshot {
    /// Session id.
    pub id: String,
    /// Machine.
    pub agent_id: String,
    /// Machine host name.
    pub hostname: String,
    /// Kind.
    pub kind: SessionKind,
    /// Phase.
    pub phase: Phase,
    /// Start time (ms).
    pub started_at: i64,
    /// Viewers watching.
    pub viewers: Vec<ViewerSnapshot>,
}

/// Public snapshot of a viewer.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ViewerSnapshot {
    /// Viewer connection id.
    pub viewer_id: String,
    /// User.
    pub username: String,
    /// Access mode.
    pub access_mode: AccessMode,
}

/// Outcome of offering a frame to the viewers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FanOut {
    /// Viewers the frame was queued for.
    pub delivered: usize,
    /// Viewers whose queue was full (they now wait for a keyframe).
    pub dropped: usize,
    /// Bytes queued in total.
    pub bytes: usize,
    /// Viewers still waiting for a keyframe (they need the agent to send a refresh).
    pub waiting: usize,
}

/// Encodes a payload as one binary WebSocket message.
pub fn message(payload: Payload) -> Message {
    Message::Binary(Envelope::new(payload).to_bytes())
}

/// A close message with a code and reason.
pub fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

impl LiveSession {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches the session's recorder; false if it already has one.
    pub fn set_recorder(&self, recorder: Recorder) -> bool {
        self.recorder.set(recorder).is_ok()
    }

    /// The session's recorder, while the policy records it.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.recorder.get()
    }

    /// Whether the agent announced `capability` in its hello.
    pub fn has_capability(&self, capability: &str) -> bool {
        self.lock()
            .agent_capabilities
            .iter()
            .any(|c| c == capability)
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// Whether the agent is connected (the session is neither offline nor over).
    pub fn is_agent_connected(&self) -> bool {
        matches!(self.phase(), Phase::WaitingConsent | Phase::Active)
    }

    /// Marks a managed session's agent as gone, keeping the session for its viewers.
    pub fn go_offline(&self, now: i64) {
        let mut inner = self.lock();
        if inner.phase != Phase::Ended {
            inner.phase = Phase::AgentOffline;
            inner.offline_since = Some(now);
            inner.streaming = None;
        }
    }

    /// Whether frames and input may flow (SPEC §4.8).
    pub fn is_active(&self) -> bool {
        self.phase() == Phase::Active
    }

    /// Sets the phase.
    pub fn set_phase(&self, phase: Phase) {
        self.lock().phase = phase;
    }

    /// Records why the session ends and cancels it (close code 1000).
    pub fn end(&self, code: EndCode, reason: &str) {
        self.end_with(1000, code, reason);
    }

    /// Ends the session; the agent socket closes with `close`, viewers learn `code`. The
    /// first reason wins.
    pub fn end_with(&self, close: u16, code: EndCode, reason: &str) {
        {
            let mut inner = self.lock();
            inner.phase = Phase::Ended;
            if inner.end_reason.is_none() {
                inner.end_reason = Some(reason.to_owned());
                inner.close_code = close;
                inner.end_code = code;
            }
        }
        self.cancel.cancel();
    }

    /// Why the session ended and the close code for the agent, once it did.
    pub fn end_reason(&self) -> Option<(u16, String)> {
        let inner = self.lock();
        inner.end_reason.clone().map(|r| (inner.close_code, r))
    }

    /// The `SessionEnd` message for viewers and the agent, once the session ended.
    pub fn end_message(&self) -> Option<Message> {
        let inner = self.lock();
        let reason = inner.end_reason.clone()?;
        Some(message(Payload::SessionEnd(
            guruconnect_proto::SessionEnd {
                reason,
                code: inner.end_code as i32,
            },
        )))
    }

    /// Queues a message to the agent without waiting; false if the queue is full.
    pub fn try_send_to_agent(&self, msg: Message) -> bool {
        self.agent_tx.try_send(msg).is_ok()
    }

    /// Offers a frame (already encoded bytes) to every viewer without blocking.
    /// A viewer whose queue is full loses this frame and then skips frames until the next
    /// keyframe, so its picture never shows a partial update.
    pub fn fan_out_frame(&self, bytes: &Bytes, keyframe: bool) -> FanOut {
        let mut out = FanOut::default();
        let mut inner = self.lock();
        for slot in inner.viewers.values_mut().filter(|v| v.video) {
            if slot.awaiting_keyframe && !keyframe {
                out.waiting += 1;
                continue;
            }
            match slot.frames.try_send(bytes.clone()) {
                Ok(()) => {
                    slot.awaiting_keyframe = false;
                    out.delivered += 1;
                    out.bytes += bytes.len();
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.awaiting_keyframe = true;
                    out.dropped += 1;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        out
    }

    /// Offers a small stream message (cursor) to every viewer that has room; it never
    /// changes a viewer's keyframe state.
    pub fn fan_out_aux(&self, bytes: &Bytes) {
        let inner = self.lock();
        for slot in inner.viewers.values().filter(|v| v.video) {
            if !slot.awaiting_keyframe {
                let _ = slot.frames.try_send(bytes.clone());
            }
        }
    }

    /// Sends a control message to viewers (optionally only controlling ones, optionally
    /// not to `except`). A viewer that cannot take it is disconnected.
    pub fn broadcast(&self, msg: &Message, only_control: bool, except: Option<&str>) {
        let inner = self.lock();
        for (id, slot) in &inner.viewers {
            if except == Some(id.as_str()) || (only_control && slot.access != AccessMode::Control) {
                continue;
            }
            if slot.control.try_send(msg.clone()).is_err() {
                slot.cancel.cancel();
            }
        }
    }

    /// Whether `user_id` is watching with control right now (may end the session).
    pub fn has_controlling_viewer(&self, user_id: &str) -> bool {
        self.lock()
            .viewers
            .values()
            .any(|v| v.user_id == user_id && v.access == AccessMode::Control)
    }

    /// Number of viewers.
    pub fn viewer_count(&self) -> usize {
        self.lock().viewers.len()
    }

    /// Sets the agent's host name and codecs (from its hello).
    pub fn set_agent_info(&self, hostname: &str, codecs: Vec<i32>) {
        let mut inner = self.lock();
        inner.hostname = hostname.to_owned();
        inner.agent_codecs = codecs;
    }

    /// Records the codecs a viewer can decode, and whether it prefers lossless tiles.
    pub fn set_viewer_codecs(&self, viewer_id: &str, codecs: Vec<i32>, prefer_lossless: bool) {
        if let Some(slot) = self.lock().viewers.get_mut(viewer_id) {
            slot.codecs = codecs;
            slot.prefer_lossless = prefer_lossless;
        }
    }

    /// The stream the agent should be sending now: `Some((codec, fallback))` while the
    /// session is active and watched. The codec is the best one the agent and every viewer
    /// share (lossless tiles are the guaranteed fallback); where they all share H.264 but a
    /// viewer prefers lossless, the stream is lossless with H.264 as the fallback the
    /// agent may switch to on a slow link.
    fn desired_stream(inner: &Inner) -> Option<(i32, Vec<i32>)> {
        let mut watching = inner.viewers.values().filter(|v| v.video).peekable();
        if inner.phase != Phase::Active || watching.peek().is_none() {
            return None;
        }
        let h264 = Codec::H264 as i32;
        let raw = Codec::RawZstd as i32;
        let mut prefer_lossless = false;
        let all_h264 = inner.agent_codecs.contains(&h264)
            && watching.all(|v| {
                prefer_lossless |= v.prefer_lossless;
                v.codecs.contains(&h264)
            });
        Some(match (all_h264, prefer_lossless) {
            (true, false) => (h264, Vec::new()),
            (true, true) => (raw, vec![h264]),
            (false, _) => (raw, Vec::new()),
        })
    }

    /// Tells the agent to start, switch or stop streaming when the desired stream changed.
    pub fn update_stream(&self) {
        let mut inner = self.lock();
        let desired = Self::desired_stream(&inner);
        let current = inner
            .streaming
            .map(|codec| (codec, inner.streaming_fallback.clone()));
        if desired == current {
            return;
        }
        inner.streaming = desired.as_ref().map(|(codec, _)| *codec);
        inner.streaming_fallback = desired
            .as_ref()
            .map(|(_, fallback)| fallback.clone())
            .unwrap_or_default();
        drop(inner);
        let msg = match desired {
            Some((codec, fallback_codecs)) => {
                message(Payload::StartStream(guruconnect_proto::StartStream {
                    codec,
                    display_id: 0,
                    max_fps: 30,
                    fallback_codecs,
                    frame_acks: true,
                }))
            }
            None => message(Payload::StopStream(guruconnect_proto::StopStream {})),
        };
        self.try_send_to_agent(msg);
    }

    /// The codec currently streamed, if any.
    pub fn streaming_codec(&self) -> Option<i32> {
        self.lock().streaming
    }

    /// Snapshot for the API.
    pub fn snapshot(&self) -> SessionSnapshot {
        let inner = self.lock();
        SessionSnapshot {
            id: self.id.clone(),
            agent_id: self.agent_id.clone(),
            hostname: inner.hostname.clone(),
            kind: self.kind,
            phase: inner.phase,
            started_at: self.started_at,
            viewers: inner
                .viewers
                .iter()
                .map(|(id, v)| ViewerSnapshot {
                    viewer_id: id.clone(),
                    username: v.username.clone(),
                    access_mode: v.access,
                })
                .collect(),
        }
    }

    /// Numbers a new channel of `viewer_id` (known to it as `viewer_number`); the returned
    /// number is the one the agent sees.
    pub fn open_channel(
        &self,
        channel: Channel,
        viewer_id: &str,
        viewer_number: u32,
    ) -> Result<u32, ChannelError> {
        let mut inner = self.lock();
        let capability = match channel {
            Channel::Terminal => "terminal",
            Channel::File => "files",
        };
        if !inner.agent_capabilities.iter().any(|c| c == capability) {
            return Err(ChannelError::Unsupported);
        }
        if !inner.viewers.contains_key(viewer_id) {
            return Err(ChannelError::NoViewer);
        }
        let routes = inner.routes(channel);
        let mut count = 0;
        for route in routes.open.values().filter(|r| r.viewer_id == viewer_id) {
            if route.viewer_number == viewer_number {
                return Err(ChannelError::Duplicate);
            }
            count += 1;
        }
        if count >= CHANNELS_PER_VIEWER {
            return Err(ChannelError::TooMany);
        }
        routes.next = routes.next.wrapping_add(1).max(1);
        let id = routes.next;
        routes.open.insert(
            id,
            Route {
                viewer_id: viewer_id.to_owned(),
                viewer_number,
            },
        );
        Ok(id)
    }

    /// The agent's number of `viewer_id`'s channel `viewer_number`, if it is open.
    pub fn channel_of(&self, channel: Channel, viewer_id: &str, viewer_number: u32) -> Option<u32> {
        self.lock()
            .routes(channel)
            .open
            .iter()
            .find(|(_, r)| r.viewer_id == viewer_id && r.viewer_number == viewer_number)
            .map(|(id, _)| *id)
    }

    /// Where the agent's channel `number` goes; `forget` drops the route (its end).
    pub fn delivery(&self, channel: Channel, number: u32, forget: bool) -> Option<Delivery> {
        let mut inner = self.lock();
        let routes = inner.routes(channel);
        let route = if forget {
            routes.open.remove(&number)?
        } else {
            routes.open.get(&number)?.clone()
        };
        let slot = inner.viewers.get(&route.viewer_id)?;
        Some(Delivery {
            viewer_number: route.viewer_number,
            viewer_id: route.viewer_id,
            user_id: slot.user_id.clone(),
            control: slot.control.clone(),
            cancel: slot.cancel.clone(),
        })
    }

    /// Forgets the channels of a viewer that left; returns the agent's numbers, to close.
    pub fn drop_channels_of(&self, channel: Channel, viewer_id: &str) -> Vec<u32> {
        let mut inner = self.lock();
        let routes = inner.routes(channel);
        let ids: Vec<u32> = routes
            .open
            .iter()
            .filter(|(_, r)| r.viewer_id == viewer_id)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            routes.open.remove(id);
        }
        ids
    }

    /// Disconnects every viewer of `user_id` (signed out, removed), telling it why.
    pub fn kick_user(&self, user_id: &str, reason: &str) {
        for slot in self.lock().viewers.values() {
            if slot.user_id == user_id {
                let _ = slot.control.try_send(message(Payload::SessionEnd(
                    guruconnect_proto::SessionEnd {
                        reason: reason.to_owned(),
                        code: EndCode::Revoked as i32,
                    },
                )));
                let _ = slot.control.try_send(close_message(1008, reason));
                slot.cancel.cancel();
            }
        }
    }
}

/// Why a viewer could not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// No live session with that id (agent offline or session over).
    NotLive,
}

/// Kicks `user_id`'s viewers from every session (see [`LiveSession::kick_user`]).
impl Registry {
    /// Disconnects `user_id`'s viewers in every session held here.
    pub fn kick_user(&self, user_id: &str, reason: &str) {
        for session in self.all() {
            session.kick_user(user_id, reason);
        }
    }
}

/// All live sessions of this instance.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<LiveSession>>>,
}

/// A registered session.
#[derive(Debug)]
pub struct Registered {
    /// The new session.
    pub session: Arc<LiveSession>,
    /// What the agent's writer sends.
    pub agent_rx: mpsc::Receiver<Message>,
    /// Offline sessions of the same machine that this one superseded.
    pub superseded_offline: Vec<String>,
}

/// Parameters of a new live session.
#[derive(Debug)]
pub struct NewLive {
    /// Session id.
    pub id: String,
    /// Machine.
    pub agent_id: String,
    /// Kind.
    pub kind: SessionKind,
    /// Support code.
    pub code: Option<String>,
    /// Key used by the agent.
    pub key_id: Option<String>,
    /// Host name.
    pub hostname: String,
    /// Agent codecs.
    pub codecs: Vec<i32>,
    /// The capabilities the agent announced in its hello.
    pub capabilities: Vec<String>,
    /// Start time.
    pub started_at: i64,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<LiveSession>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session and returns it with the receiver of the agent's queue.
    /// A live session of the same machine and kind is superseded (ended) by the new one:
    /// a machine's support-code session and its managed session live side by side.
    pub fn register(&self, new: NewLive) -> Registered {
        let (agent_tx, agent_rx) = mpsc::channel(AGENT_QUEUE);
        let phase = match new.kind {
            SessionKind::Attended => Phase::WaitingConsent,
            SessionKind::Managed => Phase::Active,
        };
        let session = Arc::new(LiveSession {
            id: new.id.clone(),
            agent_id: new.agent_id.clone(),
            kind: new.kind,
            code: new.code,
            key_id: new.key_id,
            started_at: new.started_at,
            cancel: CancellationToken::new(),
            agent_tx,
            inner: Mutex::new(Inner {
                phase,
                viewers: HashMap::new(),
                agent_codecs: new.codecs,
                streaming: None,
                streaming_fallback: Vec::new(),
                hostname: new.hostname,
                end_reason: None,
                close_code: 1000,
                end_code: EndCode::Unspecified,
                offline_since: None,
                agent_capabilities: new.capabilities,
                terminals: Routes::default(),
                transfers: Routes::default(),
            }),
            recorder: OnceLock::new(),
        });
        let superseded: Vec<Arc<LiveSession>> = {
            let mut map = self.lock();
            let old: Vec<String> = map
                .values()
                .filter(|s| s.agent_id == new.agent_id && s.kind == new.kind)
                .map(|s| s.id.clone())
                .collect();
            let removed = old.iter().filter_map(|id| map.remove(id)).collect();
            map.insert(new.id, session.clone());
            removed
        };
        let mut superseded_offline = Vec::new();
        for old in superseded {
            // An offline session has no agent task left to record its end: the caller does.
            if old.phase() == Phase::AgentOffline {
                superseded_offline.push(old.id.clone());
            }
            old.end(
                EndCode::AgentGone,
                "superseded by a new connection of the same machine",
            );
        }
        Registered {
            session,
            agent_rx,
            superseded_offline,
        }
    }

    /// Removes offline sessions with no viewers whose agent has been gone for `ttl_ms`.
    /// The predicate is evaluated under both the registry lock and the session's lock, so
    /// a viewer joining at the same moment either wins (the session stays) or finds the
    /// session ended; online or watched sessions are never reaped.
    pub fn reap_offline(&self, now: i64, ttl_ms: i64) -> Vec<Arc<LiveSession>> {
        let mut map = self.lock();
        let mut reaped = Vec::new();
        map.retain(|_, session| {
            let mut inner = session.lock();
            let stale = inner.phase == Phase::AgentOffline
                && inner.viewers.is_empty()
                && inner.offline_since.is_some_and(|t| now - t >= ttl_ms);
            if stale {
                inner.phase = Phase::Ended;
                inner.end_reason = Some("reaped: agent offline".to_owned());
                inner.end_code = EndCode::AgentGone;
                reaped.push(session.clone());
            }
            !stale
        });
        drop(map);
        for session in &reaped {
            session.cancel.cancel();
        }
        reaped
    }

    /// Ends and removes a session whose agent is offline, which has no agent task left to
    /// clean up after it; the caller records the end. Checked and done under the locks,
    /// like [`Registry::reap_offline`]. False (nothing done) if it is not offline.
    pub fn end_offline(&self, session_id: &str, code: u16, end: EndCode, reason: &str) -> bool {
        let mut map = self.lock();
        let Some(session) = map.get(session_id).cloned() else {
            return false;
        };
        {
            let mut inner = session.lock();
            if inner.phase != Phase::AgentOffline {
                return false;
            }
            inner.phase = Phase::Ended;
            inner.end_reason = Some(reason.to_owned());
            inner.close_code = code;
            inner.end_code = end;
        }
        map.remove(session_id);
        drop(map);
        // Viewers still attached see the end.
        session.cancel.cancel();
        true
    }

    /// Removes a session (when its agent task ends).
    pub fn remove(&self, session_id: &str) {
        let mut map = self.lock();
        if map
            .get(session_id)
            .is_some_and(|s| s.cancel.is_cancelled() || s.phase() == Phase::Ended)
        {
            map.remove(session_id);
        } else if let Some(s) = map.remove(session_id) {
            drop(map);
            s.end(EndCode::AgentGone, "agent disconnected");
        }
    }

    /// The live session with that id.
    pub fn get(&self, session_id: &str) -> Option<Arc<LiveSession>> {
        self.lock().get(session_id).cloned()
    }

    /// The live session of a machine.
    pub fn by_agent(&self, agent_id: &str) -> Option<Arc<LiveSession>> {
        let map = self.lock();
        let mut sessions = map.values().filter(|s| s.agent_id == agent_id);
        let first = sessions.next()?;
        if first.kind == SessionKind::Managed {
            return Some(first.clone());
        }
        // The managed session, when the machine also has a support-code one.
        Some(
            sessions
                .find(|s| s.kind == SessionKind::Managed)
                .unwrap_or(first)
                .clone(),
        )
    }

    /// Every live session of one machine (its managed one and a support-code one).
    pub fn all_of_agent(&self, agent_id: &str) -> Vec<Arc<LiveSession>> {
        self.lock()
            .values()
            .filter(|s| s.agent_id == agent_id)
            .cloned()
            .collect()
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<LiveSession>> {
        self.lock().values().cloned().collect()
    }

    /// Ends the sessions of agents that authenticated with `key_id` (key revoked).
    pub fn end_by_key(&self, key_id: &str, reason: &str) -> usize {
        let hits: Vec<Arc<LiveSession>> = self
            .lock()
            .values()
            .filter(|s| s.key_id.as_deref() == Some(key_id))
            .cloned()
            .collect();
        for s in &hits {
            s.end_with(1008, EndCode::Revoked, reason);
        }
        hits.len()
    }

    /// The only way a viewer enters a session.
    pub fn join(
        &self,
        session_id: &str,
        viewer_id: &str,
        user_id: &str,
        username: &str,
        access: AccessMode,
        video: bool,
    ) -> Result<(Arc<LiveSession>, ViewerQueues), JoinError> {
        let session = self.get(session_id).ok_or(JoinError::NotLive)?;
        let (frames_tx, frames_rx) = mpsc::channel(VIEWER_FRAME_QUEUE);
        let (control_tx, control_rx) = mpsc::channel(VIEWER_CONTROL_QUEUE);
        let cancel = session.cancel.child_token();
        {
            let mut inner = session.lock();
            if inner.phase == Phase::Ended {
                return Err(JoinError::NotLive);
            }
            inner.viewers.insert(
                viewer_id.to_owned(),
                ViewerSlot {
                    user_id: user_id.to_owned(),
                    username: username.to_owned(),
                    access,
                    codecs: vec![Codec::RawZstd as i32],
                    prefer_lossless: false,
                    frames: frames_tx,
                    control: control_tx.clone(),
                    // A joining viewer needs a full picture first.
                    awaiting_keyframe: true,
                    cancel: cancel.clone(),
                    video,
                },
            );
        }
        Ok((
            session,
            ViewerQueues {
                frames: frames_rx,
                control: control_rx,
                cancel,
                control_tx,
            },
        ))
    }

    /// Removes a viewer; returns its access mode if it was present.
    pub fn leave(&self, session: &LiveSession, viewer_id: &str) -> Option<AccessMode> {
        session.lock().viewers.remove(viewer_id).map(|v| v.access)
    }
}
