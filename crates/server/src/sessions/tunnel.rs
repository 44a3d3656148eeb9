//! A viewer whose socket is on one instance and whose session is on another.
//!
//! The viewer's instance authenticates it as usual, then sends a [`JoinRequest`] to the
//! instance holding the session, which joins the viewer to the session exactly like a local
//! one (same checks, throttle, audit, recording) but with a socket made of two NATS
//! subjects. The viewer's instance pumps messages both ways and keeps its own bounded
//! queues towards the browser, so a slow viewer only loses its own frames (and then waits
//! for a keyframe) while the holder and the bus never wait for it.
//!
//! When the holder dies (no heartbeat) or the agent of a managed session goes away, the
//! viewer's instance tells the viewer "agent offline" and follows the machine: as soon as
//! the machine's next session is live on any instance it joins it, and the viewer sees the
//! same machine again without joining anew.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use guruconnect_proto::{self as proto, Payload};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::bus::{JoinReply, JoinRequest, NatsBus};
use super::registry::{
    EndCode, LiveSession, SessionKind, VIEWER_CONTROL_QUEUE, VIEWER_FRAME_QUEUE, close_message,
    message,
};
use crate::AppState;
use crate::auth::roles::{Permission, Role};
use crate::auth::tokens::AccessMode;
use crate::error::ApiError;
use crate::relay::close;
use crate::relay::viewer::{self, ViewerGrant};

/// Minimum spacing of refresh requests for a viewer that dropped frames (as on the holder).
const REFRESH_SPACING: Duration = Duration::from_millis(250);
/// Largest piece of one tunnel message on NATS (its default `max_payload` is 1 MiB).
const CHUNK: usize = 512 * 1024;
/// Set on every piece of a message but the last.
const MORE: u8 = 0x80;
const BINARY: u8 = 0;
const TEXT: u8 = 1;
const PING: u8 = 2;
const PONG: u8 = 3;
const CLOSE: u8 = 4;

/// Publishes one WebSocket message on `subject`, in pieces of at most [`CHUNK`].
async fn publish(client: &async_nats::Client, subject: &str, msg: Message) -> Result<(), ()> {
    let (tag, body): (u8, Bytes) = match msg {
        Message::Binary(b) => (BINARY, b),
        Message::Text(t) => (TEXT, Bytes::copy_from_slice(t.as_str().as_bytes())),
        Message::Ping(b) => (PING, b),
        Message::Pong(b) => (PONG, b),
        Message::Close(frame) => {
            let mut b = BytesMut::new();
            if let Some(f) = frame {
                b.extend_from_slice(&f.code.to_be_bytes());
                b.extend_from_slice(f.reason.as_str().as_bytes());
            }
            (CLOSE, b.freeze())
        }
    };
    let mut rest = body;
    loop {
        let piece = rest.split_to(rest.len().min(CHUNK));
        let more = if rest.is_empty() { 0 } else { MORE };
        let mut out = BytesMut::with_capacity(piece.len() + 1);
        out.extend_from_slice(&[tag | more]);
        out.extend_from_slice(&piece);
        // A tunnel waits for NATS no longer than a request would.
        let sent = client.publish(subject.to_owned(), out.freeze());
        match tokio::time::timeout(super::bus::REQUEST_TIMEOUT, sent).await {
            Ok(Ok(())) => {}
            _ => return Err(()),
        }
        if rest.is_empty() {
            return Ok(());
        }
    }
}

/// Puts tunnel pieces back together; `limit` caps a whole message.
#[derive(Debug, Default)]
struct Reassembly {
    parts: BytesMut,
    tag: Option<u8>,
}

impl Reassembly {
    /// `Ok(Some(msg))` when a message is complete; `Err` for a piece that does not fit.
    fn push(&mut self, piece: &[u8], limit: usize) -> Result<Option<Message>, ()> {
        let (&first, body) = piece.split_first().ok_or(())?;
        let tag = first & !MORE;
        if self.tag.is_some_and(|t| t != tag) || self.parts.len() + body.len() > limit {
            return Err(());
        }
        self.tag = Some(tag);
        self.parts.extend_from_slice(body);
        if first & MORE != 0 {
            return Ok(None);
        }
        self.tag = None;
        let whole = self.parts.split().freeze();
        Ok(Some(match tag {
            BINARY => Message::Binary(whole),
            TEXT => Message::Text(String::from_utf8(whole.to_vec()).map_err(|_| ())?.into()),
            PING => Message::Ping(whole),
            PONG => Message::Pong(whole),
            CLOSE if whole.len() >= 2 => Message::Close(Some(CloseFrame {
                code: u16::from_be_bytes([whole[0], whole[1]]),
                reason: String::from_utf8_lossy(&whole[2..]).into_owned().into(),
            })),
            CLOSE => Message::Close(None),
            _ => return Err(()),
        }))
    }
}

/// Holder side: joins a viewer that arrived on another instance and runs it over the bus.
pub async fn accept(
    state: &AppState,
    bus: &Arc<NatsBus>,
    session: Arc<LiveSession>,
    req: JoinRequest,
) -> JoinReply {
    let refused = |status: u16, error: &str| JoinReply::Refused {
        status,
        error: error.to_owned(),
    };
    // The viewer's instance checked the token; the holder checks what may have changed since.
    let token_ok = matches!(
        state.store.get_token(&req.token_jti).await,
        Ok(Some(t)) if t.revoked_at.is_none() && t.user_id == req.user_id
    );
    let user = match state.store.get_user(&req.user_id).await {
        Ok(user) if token_ok && !user.disabled => user,
        _ => return refused(401, "invalid or expired viewer token"),
    };
    let role = Role::parse(&user.role);
    let access = match (req.access, role) {
        (AccessMode::Control, Some(r)) if r.has(Permission::Control) => AccessMode::Control,
        (_, Some(r)) if r.has(Permission::View) => AccessMode::ViewOnly,
        _ => return refused(403, "your role may not view sessions"),
    };
    match state.store.get_machine(&session.agent_id).await {
        Ok(m) if m.status == guruconnect_store::MachineStatus::Pending => {
            return refused(409, "the machine is pending an administrator's approval");
        }
        Ok(_) => {}
        Err(_) => return refused(404, "the machine was removed"),
    }
    bus.touch(&req.from);
    let (up, down) = bus.tunnel_subjects(&req.viewer_id);
    let Ok(mut incoming) = bus.client().subscribe(up).await else {
        return refused(503, "the cluster bus is unavailable");
    };
    let Ok((joined, queues)) = state.sessions.join(
        &session.id,
        &req.viewer_id,
        &user.id,
        &user.username,
        access,
        req.video,
    ) else {
        return refused(
            404,
            "the session is not live (agent offline or session ended)",
        );
    };
    let reply = JoinReply::Joined {
        session_id: session.id.clone(),
        agent_id: session.agent_id.clone(),
        kind: session.kind,
        instance: bus.instance().to_owned(),
    };

    // Viewer → holder: the pieces from the bus, until the viewer's instance goes silent.
    let (tx, mut rx) = mpsc::channel::<Result<Message, axum::Error>>(64);
    let watch = bus.clone();
    let from = req.from.clone();
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        let mut reassembly = Reassembly::default();
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = check.tick() => if !watch.is_alive(&from) { return },
                piece = incoming.next() => {
                    let Some(piece) = piece else { return };
                    match reassembly.push(&piece.payload, proto::MAX_VIEWER_MESSAGE) {
                        Ok(Some(msg)) => {
                            let last = matches!(msg, Message::Close(_));
                            if tx.send(Ok(msg)).await.is_err() || last { return }
                        }
                        Ok(None) => {}
                        Err(()) => { metrics.bus_dropped.inc(); return }
                    }
                }
            }
        }
    });
    let client = bus.client().clone();
    let sink =
        futures_util::sink::unfold((client, down), |(client, down), msg: Message| async move {
            publish(&client, &down, msg)
                .await
                .map_err(|()| axum::Error::new(std::io::Error::other("cluster bus lost")))?;
            Ok::<_, axum::Error>((client, down))
        });
    let grant = ViewerGrant {
        token_jti: req.token_jti,
        user,
        access,
    };
    let state = state.clone();
    state.tasks.clone().spawn(async move {
        viewer::serve(
            state,
            Box::pin(sink),
            futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
            grant,
            joined,
            queues,
            req.viewer_id,
            req.ip,
        )
        .await;
    });
    reply
}

/// Viewer side: the holder's answer to this instance's first join.
#[derive(Debug)]
pub struct Attached {
    viewer_id: String,
    down: async_nats::Subscriber,
    agent_id: String,
    kind: SessionKind,
    holder: String,
    session_id: String,
}

/// Asks the cluster for `session_id` (or, with `machine`, for the machine's live managed
/// session) on behalf of a viewer of this instance. `Ok(None)`: nobody holds it.
pub async fn attach(
    state: &AppState,
    bus: &Arc<NatsBus>,
    grant: &ViewerGrant,
    target: Target<'_>,
    ip: IpAddr,
    video: bool,
) -> Result<Option<Attached>, ApiError> {
    let subject = match target {
        Target::Session(id) => bus.session_subject(id, "join"),
        Target::Machine(id) => bus.machine_subject(id, "join"),
    };
    let Some(subject) = subject else {
        return Ok(None);
    };
    let viewer_id = uuid::Uuid::new_v4().to_string();
    let (_, down_subject) = bus.tunnel_subjects(&viewer_id);
    // Subscribed before asking, so nothing the holder sends first is missed.
    let subscribe = bus.client().subscribe(down_subject);
    let down = match tokio::time::timeout(super::bus::REQUEST_TIMEOUT, subscribe).await {
        Ok(Ok(down)) => down,
        _ => return Err(ApiError::Unavailable),
    };
    let request = JoinRequest {
        viewer_id: viewer_id.clone(),
        user_id: grant.user.id.clone(),
        token_jti: grant.token_jti.clone(),
        access: grant.access,
        video,
        ip,
        from: bus.instance().to_owned(),
    };
    match bus.request::<_, JoinReply>(state, subject, &request).await {
        None => Ok(None),
        Some(JoinReply::Refused { status, error }) => Err(match status {
            401 => ApiError::Unauthorized("invalid or expired viewer token"),
            403 => ApiError::Forbidden("your role may not view sessions"),
            409 => ApiError::Conflict(error),
            503 => ApiError::Unavailable,
            _ => return Ok(None),
        }),
        Some(JoinReply::Joined {
            session_id,
            agent_id,
            kind,
            instance,
        }) => {
            bus.touch(&instance);
            Ok(Some(Attached {
                viewer_id,
                down,
                agent_id,
                kind,
                holder: instance,
                session_id,
            }))
        }
    }
}

/// What a viewer asks the cluster for.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// One session.
    Session(&'a str),
    /// The live managed session of a machine.
    Machine(&'a str),
}

/// What became of the holder.
enum Outcome {
    /// The viewer left or the session ended for good: the socket is closed.
    Closed,
    /// The holder or the agent went away: follow the machine.
    Lost,
}

/// Viewer side: pumps a browser socket to and from the holder until the viewer leaves;
/// follows a managed machine to its next session when the holder or the agent goes away.
#[allow(clippy::too_many_arguments)]
pub async fn pump(
    state: AppState,
    bus: Arc<NatsBus>,
    socket: WebSocket,
    grant: ViewerGrant,
    mut attached: Attached,
    ip: IpAddr,
    video: bool,
) {
    state.metrics.viewers.inc();
    let (ws_tx, mut ws_rx) = socket.split();
    let (frames_tx, frames_rx) = mpsc::channel::<Bytes>(VIEWER_FRAME_QUEUE);
    let (control_tx, control_rx) = mpsc::channel::<Message>(VIEWER_CONTROL_QUEUE);
    let writer = tokio::spawn(write_loop(
        ws_tx,
        frames_rx,
        control_rx,
        state.shutdown.clone(),
    ));
    loop {
        let outcome = relay_attachment(
            &state,
            &bus,
            &mut ws_rx,
            &mut attached,
            &frames_tx,
            &control_tx,
        )
        .await;
        // The viewer's tunnel at the old holder ends with this attachment.
        let (up, _) = bus.tunnel_subjects(&attached.viewer_id);
        let _ = publish(
            bus.client(),
            &up,
            close_message(close::NORMAL, "viewer moved"),
        )
        .await;
        if matches!(outcome, Outcome::Closed) {
            break;
        }
        if attached.kind != SessionKind::Managed {
            end_viewer(
                &control_tx,
                EndCode::AgentGone,
                "the remote machine went away",
            );
            break;
        }
        let _ = control_tx.try_send(offline_state(&attached.session_id));
        match follow(
            &state,
            &bus,
            &mut ws_rx,
            &grant,
            &attached.agent_id,
            ip,
            video,
        )
        .await
        {
            Some(next) => {
                tracing::info!(viewer_id = %next.viewer_id, session_id = %next.session_id, holder = %next.holder, "viewer followed its machine to a new session");
                attached = next;
            }
            None => {
                end_viewer(
                    &control_tx,
                    EndCode::AgentGone,
                    "the remote machine did not come back",
                );
                break;
            }
        }
    }
    drop(frames_tx);
    drop(control_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    state.metrics.viewers.dec();
}

/// Queues a final `SessionEnd` and close for the viewer.
fn end_viewer(control: &mpsc::Sender<Message>, code: EndCode, reason: &str) {
    let _ = control.try_send(message(Payload::SessionEnd(proto::SessionEnd {
        reason: reason.to_owned(),
        code: code as i32,
    })));
    let _ = control.try_send(close_message(close::NORMAL, reason));
}

fn offline_state(session_id: &str) -> Message {
    message(Payload::SessionState(proto::SessionState {
        session_id: session_id.to_owned(),
        phase: proto::SessionPhase::AgentOffline as i32,
        ..Default::default()
    }))
}

/// Waits for the machine's next session on any instance, dropping the viewer's input
/// meanwhile; `None` when the viewer left or the machine stayed away.
#[allow(clippy::too_many_arguments)]
async fn follow(
    state: &AppState,
    bus: &Arc<NatsBus>,
    ws_rx: &mut futures_util::stream::SplitStream<WebSocket>,
    grant: &ViewerGrant,
    agent_id: &str,
    ip: IpAddr,
    video: bool,
) -> Option<Attached> {
    let deadline = Instant::now() + Duration::from_secs(state.config.offline_session_ttl_secs);
    let mut retry = tokio::time::interval(Duration::from_millis(500));
    while Instant::now() < deadline {
        tokio::select! {
            () = state.shutdown.cancelled() => return None,
            msg = ws_rx.next() => match msg {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                Some(Ok(_)) => {}
            },
            _ = retry.tick() => {
                match attach(state, bus, grant, Target::Machine(agent_id), ip, video).await {
                    Ok(Some(next)) => return Some(next),
                    // Not back yet, or the bus itself is away: keep waiting.
                    Ok(None) | Err(ApiError::Unavailable) => {}
                    // Access withdrawn meanwhile: stop following.
                    Err(_) => return None,
                }
            }
        }
    }
    None
}

/// Pumps one attachment until the viewer leaves, the session ends, or the holder is lost.
async fn relay_attachment(
    state: &AppState,
    bus: &Arc<NatsBus>,
    ws_rx: &mut futures_util::stream::SplitStream<WebSocket>,
    attached: &mut Attached,
    frames: &mpsc::Sender<Bytes>,
    control: &mpsc::Sender<Message>,
) -> Outcome {
    let (up, _) = bus.tunnel_subjects(&attached.viewer_id);
    let mut reassembly = Reassembly::default();
    let mut awaiting_keyframe = true;
    // Refreshes asked on the viewer's behalf, spaced as the holder spaces its own.
    let mut last_refresh: Option<Instant> = None;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut ended: Option<EndCode> = None;
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => {
                end_viewer(control, EndCode::ServerGoingAway, "server shutting down");
                return Outcome::Closed;
            }
            _ = check.tick() => if !bus.is_alive(&attached.holder) {
                tracing::warn!(holder = %attached.holder, "viewer's session holder is gone");
                return Outcome::Lost;
            },
            msg = ws_rx.next() => {
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    Some(Err(_)) | None => Message::Close(None),
                };
                let last = matches!(msg, Message::Close(_));
                if publish(bus.client(), &up, msg).await.is_err() {
                    return Outcome::Lost;
                }
                if last { return Outcome::Closed }
            }
            piece = attached.down.next() => {
                let Some(piece) = piece else { return Outcome::Lost };
                let msg = match reassembly.push(&piece.payload, proto::MAX_AGENT_MESSAGE) {
                    Ok(Some(msg)) => msg,
                    Ok(None) => continue,
                    Err(()) => { state.metrics.bus_dropped.inc(); return Outcome::Lost }
                };
                match msg {
                    Message::Binary(bytes) => {
                        let envelope = crate::relay::decode(&bytes).ok();
                        match envelope.and_then(|e| e.payload) {
                            Some(Payload::VideoFrame(frame)) => {
                                if awaiting_keyframe && !frame.keyframe { continue }
                                match frames.try_send(bytes) {
                                    Ok(()) => awaiting_keyframe = false,
                                    Err(mpsc::error::TrySendError::Full(_)) => {
                                        awaiting_keyframe = true;
                                        state.metrics.frames_dropped.inc();
                                        if last_refresh.is_none_or(|t| t.elapsed() >= REFRESH_SPACING) {
                                            last_refresh = Some(Instant::now());
                                            let refresh = message(Payload::RefreshRequest(proto::RefreshRequest {}));
                                            let _ = publish(bus.client(), &up, refresh).await;
                                        }
                                    }
                                    Err(mpsc::error::TrySendError::Closed(_)) => return Outcome::Closed,
                                }
                            }
                            Some(Payload::CursorShape(_) | Payload::CursorPosition(_)) => {
                                if !awaiting_keyframe { let _ = frames.try_send(bytes); }
                            }
                            Some(Payload::SessionEnd(end)) => {
                                let code = EndCode::try_from(end.code).unwrap_or(EndCode::Unspecified);
                                if matches!(code, EndCode::AgentGone | EndCode::ServerGoingAway) {
                                    // Held back: the viewer follows the machine instead.
                                    ended = Some(code);
                                } else if control.try_send(Message::Binary(bytes)).is_err() {
                                    return Outcome::Closed;
                                }
                            }
                            _ => if control.try_send(Message::Binary(bytes)).is_err() {
                                // A viewer that cannot take control messages is cut off, as on
                                // the holder.
                                return Outcome::Closed;
                            },
                        }
                    }
                    Message::Close(frame) => {
                        // The holder is shutting down (a rolling restart): follow too.
                        let going_away = frame.as_ref().is_some_and(|f| f.code == close::GOING_AWAY);
                        if ended.is_some() || going_away {
                            return Outcome::Lost;
                        }
                        let _ = control.try_send(Message::Close(frame));
                        return Outcome::Closed;
                    }
                    other => { let _ = control.try_send(other); }
                }
            }
        }
    }
}

/// Writes the viewer's queues to its socket (control first), pinging it.
async fn write_loop(
    mut ws_tx: futures_util::stream::SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<Bytes>,
    mut control: mpsc::Receiver<Message>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            msg = control.recv() => match msg {
                Some(msg) => {
                    let last = matches!(msg, Message::Close(_));
                    if ws_tx.send(msg).await.is_err() || last { return }
                }
                None => return,
            },
            frame = frames.recv() => match frame {
                Some(bytes) => if ws_tx.send(Message::Binary(bytes)).await.is_err() { return },
                None => return,
            },
            () = shutdown.cancelled() => {
                let _ = ws_tx.send(close_message(close::GOING_AWAY, "server shutting down")).await;
                return;
            }
        }
    }
}
