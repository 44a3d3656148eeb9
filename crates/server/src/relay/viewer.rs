//! The viewer plane, `/ws/viewer?session_id=…&token=…`.
//!
//! Only a viewer token is accepted, and it is checked before the upgrade: signature,
//! expiry, `purpose = viewer` and revocation (401), then the session binding (403)
//! (SPEC §4.2–4.4). After the upgrade the relay forwards only the viewer → agent messages
//! listed in [`handle`], drops input of `view_only` viewers (§4.5) and throttles input
//! (§4.7); frames reach the viewer through a bounded queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use guruconnect_proto::{self as proto, Payload};
use guruconnect_store::{MachineStatus, TokenKind, User};
use serde_json::json;
use tokio::time::Instant;

use super::agent::record;
use super::throttle::TokenBucket;
use super::{DEAD_PEER_AFTER, PING_INTERVAL, close, decode, read_error_close};
use crate::AppState;
use crate::audit::Audit;
use crate::auth::roles::{Permission, Role};
use crate::auth::tokens::{AccessMode, Purpose};
use crate::error::{ApiError, ApiResult};
use crate::middleware::ClientIp;
use crate::recording::format::RecordType;
use crate::sessions::registry::{
    Channel, LiveSession, Phase, SessionKind, ViewerQueues, close_message, message,
};
use crate::sessions::tunnel;

/// A verified viewer token for one session.
#[derive(Debug, Clone)]
pub struct ViewerGrant {
    /// The token's id (checked for revocation again by another instance that holds the
    /// session).
    pub token_jti: String,
    /// The user it was minted for.
    pub user: User,
    /// Access mode.
    pub access: AccessMode,
}

/// Verifies a viewer token for `session_id` (SPEC §4.2–4.4).
pub async fn authorize(state: &AppState, token: &str, session_id: &str) -> ApiResult<ViewerGrant> {
    let unauthorized = || {
        state.metrics.auth_failure("viewer");
        ApiError::Unauthorized("invalid or expired viewer token")
    };
    let claims = state.tokens.verify(token).ok_or_else(unauthorized)?;
    if claims.purpose != Purpose::Viewer {
        return Err(unauthorized());
    }
    let record = state.store.get_token(&claims.jti).await?;
    if !record.is_some_and(|r| {
        r.kind == TokenKind::Viewer && r.revoked_at.is_none() && r.user_id == claims.sub
    }) {
        return Err(unauthorized());
    }
    let access = claims.access_mode.ok_or_else(unauthorized)?;
    if claims.session_id.as_deref() != Some(session_id) {
        state.metrics.auth_failure("viewer");
        return Err(ApiError::Forbidden(
            "this viewer token is for another session",
        ));
    }
    let user = match state.store.get_user(&claims.sub).await {
        Ok(user) if !user.disabled => user,
        Ok(_) | Err(guruconnect_store::StoreError::NotFound) => return Err(unauthorized()),
        Err(e) => return Err(e.into()),
    };
    Ok(ViewerGrant {
        token_jti: claims.jti,
        user,
        access,
    })
}

/// `GET /ws/viewer`.
pub async fn upgrade(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let token = params
        .get("token")
        .map(String::as_str)
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .unwrap_or_default();
    let Some(session_id) = params.get("session_id").filter(|s| !s.is_empty()).cloned() else {
        return ApiError::BadRequest("session_id is required".into()).into_response();
    };
    // `video=0`: a viewer for terminals only; the agent streams nothing for it.
    let video = match params.get("video").map(String::as_str) {
        None | Some("1" | "true") => true,
        Some("0" | "false") => false,
        Some(_) => {
            return ApiError::BadRequest("video must be 0 or 1".into()).into_response();
        }
    };
    let grant = match authorize(&state, token, &session_id).await {
        Ok(grant) => grant,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let ws = ws
        .max_message_size(proto::MAX_VIEWER_MESSAGE)
        .max_frame_size(proto::MAX_VIEWER_MESSAGE)
        .read_buffer_size(8 * 1024);
    let Some(live) = state.sessions.get(&session_id) else {
        // Perhaps another instance of the cluster holds it: tunnel there.
        if let Some(bus) = state.sessions.bus().nats().cloned() {
            let target = tunnel::Target::Session(&session_id);
            match tunnel::attach(&state, &bus, &grant, target, ip, video).await {
                Ok(Some(attached)) => {
                    return ws.on_upgrade(move |socket| {
                        let tasks = state.tasks.clone();
                        tasks.track_future(tunnel::pump(
                            state, bus, socket, grant, attached, ip, video,
                        ))
                    });
                }
                Ok(None) => {}
                Err(e) => return e.into_response(),
            }
        }
        return ApiError::NotFound("the session is not live (agent offline or session ended)")
            .into_response();
    };
    match state.store.get_machine(&live.agent_id).await {
        Ok(machine) if machine.status == MachineStatus::Pending => {
            return ApiError::Conflict("the machine is pending an administrator's approval".into())
                .into_response();
        }
        Ok(_) => {}
        Err(e) => return ApiError::from(e).into_response(),
    }
    ws.on_upgrade(move |socket| {
        let tasks = state.tasks.clone();
        tasks.track_future(run(state, socket, grant, session_id, ip, video))
    })
}

/// The `SessionState` message for a viewer (or, with no viewer, for all of them).
pub fn state_message(
    session: &LiveSession,
    viewer_id: Option<&str>,
    access: Option<AccessMode>,
) -> Message {
    let phase = match session.phase() {
        Phase::WaitingConsent => proto::SessionPhase::WaitingForConsent,
        Phase::Active => proto::SessionPhase::Active,
        Phase::AgentOffline | Phase::Ended => proto::SessionPhase::AgentOffline,
    };
    let access_mode = match access {
        Some(AccessMode::Control) => proto::AccessMode::Control,
        Some(AccessMode::ViewOnly) => proto::AccessMode::ViewOnly,
        None => proto::AccessMode::Unspecified,
    };
    message(Payload::SessionState(proto::SessionState {
        session_id: session.id.clone(),
        phase: phase as i32,
        access_mode: access_mode as i32,
        viewer_id: viewer_id.unwrap_or_default().to_owned(),
        codec: session.streaming_codec().unwrap_or_default(),
    }))
}

async fn run(
    state: AppState,
    mut socket: WebSocket,
    grant: ViewerGrant,
    session_id: String,
    ip: IpAddr,
    video: bool,
) {
    let viewer_id = uuid::Uuid::new_v4().to_string();
    let (session, queues) = match state.sessions.join(
        &session_id,
        &viewer_id,
        &grant.user.id,
        &grant.user.username,
        grant.access,
        video,
    ) {
        Ok(joined) => joined,
        Err(_) => {
            let _ = socket
                .send(close_message(close::NORMAL, "session is not live"))
                .await;
            return;
        }
    };
    let (ws_tx, ws_rx) = socket.split();
    serve(state, ws_tx, ws_rx, grant, session, queues, viewer_id, ip).await;
}

/// Runs a viewer that joined `session` over any socket (a WebSocket here, or a tunnel from
/// another instance of the cluster) until it leaves.
#[allow(clippy::too_many_arguments)]
pub async fn serve<Tx, Rx>(
    state: AppState,
    ws_tx: Tx,
    ws_rx: Rx,
    grant: ViewerGrant,
    session: Arc<LiveSession>,
    queues: ViewerQueues,
    viewer_id: String,
    ip: IpAddr,
) where
    Tx: Sink<Message> + Unpin + Send + 'static,
    Rx: Stream<Item = Result<Message, axum::Error>> + Unpin + Send,
{
    let user = &grant.user;
    state.metrics.viewers.inc();
    let access_name = match grant.access {
        AccessMode::Control => "control",
        AccessMode::ViewOnly => "view_only",
    };
    Audit::new("viewer.joined")
        .user(user)
        .ip(ip)
        .agent(&session.agent_id)
        .session(&session.id)
        .details(json!({ "viewer_id": viewer_id, "access_mode": access_name }))
        .record_quietly(&state)
        .await;
    tracing::info!(session_id = %session.id, viewer_id = %viewer_id, user_id = %user.id, access = access_name, "viewer joined");
    if let Some(recorder) = session.recorder() {
        recorder
            .event(json!({ "type": "viewer_joined", "user": user.username, "mode": access_name }));
    }

    let ViewerQueues {
        frames,
        control,
        cancel,
        control_tx,
    } = queues;
    let _ = control_tx.try_send(state_message(
        &session,
        Some(&viewer_id),
        Some(grant.access),
    ));
    session.try_send_to_agent(message(Payload::ViewerJoined(proto::ViewerJoined {
        viewer_id: viewer_id.clone(),
        username: user.username.clone(),
        access_mode: match grant.access {
            AccessMode::Control => proto::AccessMode::Control,
            AccessMode::ViewOnly => proto::AccessMode::ViewOnly,
        } as i32,
    })));
    session.update_stream();
    if session.is_active() {
        // The joining viewer needs a full picture.
        session.try_send_to_agent(message(Payload::RefreshRequest(proto::RefreshRequest {})));
    }

    let writer = tokio::spawn(write_loop(
        state.clone(),
        ws_tx,
        frames,
        control,
        cancel.clone(),
        session.clone(),
    ));
    let ctx = ViewerCtx {
        state: &state,
        session: &session,
        user,
        ip,
        viewer_id: &viewer_id,
        access: grant.access,
        control_tx,
    };
    let (code, reason) = read_loop(&ctx, ws_rx, &cancel).await;
    if let Some(code) = code {
        // Queue the close before cancelling so the writer sends this code, not 1000.
        let _ = ctx.control_tx.try_send(close_message(code, &reason));
    }
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;

    // The viewer's shells and transfers end with it.
    for terminal in session.drop_channels_of(Channel::Terminal, &viewer_id) {
        session.try_send_to_agent(message(Payload::TerminalClose(proto::TerminalClose {
            terminal_id: terminal,
        })));
    }
    for transfer in session.drop_channels_of(Channel::File, &viewer_id) {
        session.try_send_to_agent(message(Payload::FileCancel(proto::FileCancel {
            transfer_id: transfer,
            reason: "the technician left".into(),
            cut_off: true,
        })));
    }
    let left = state.sessions.leave(&session, &viewer_id);
    state.metrics.viewers.dec();
    if left == Some(AccessMode::Control) {
        // Keys the viewer held must not stay pressed on the remote machine.
        session.try_send_to_agent(message(Payload::ReleaseModifiers(
            proto::ReleaseModifiers {},
        )));
    }
    session.try_send_to_agent(message(Payload::ViewerLeft(proto::ViewerLeft {
        viewer_id: viewer_id.clone(),
        username: user.username.clone(),
    })));
    session.update_stream();
    if let Some(recorder) = session.recorder() {
        recorder.event(json!({ "type": "viewer_left", "user": user.username }));
    }
    Audit::new("viewer.left")
        .user(user)
        .ip(ip)
        .agent(&session.agent_id)
        .session(&session.id)
        .details(json!({ "viewer_id": viewer_id, "reason": reason }))
        .record_quietly(&state)
        .await;
}

async fn write_loop<Tx: Sink<Message> + Unpin>(
    state: AppState,
    mut ws_tx: Tx,
    mut frames: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    mut control: tokio::sync::mpsc::Receiver<Message>,
    cancel: tokio_util::sync::CancellationToken,
    session: Arc<LiveSession>,
) {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    loop {
        tokio::select! {
            biased;
            msg = control.recv() => match msg {
                Some(msg) => {
                    let is_close = matches!(msg, Message::Close(_));
                    if ws_tx.send(msg).await.is_err() || is_close { return }
                }
                None => return,
            },
            () = cancel.cancelled() => {
                // Drain what is queued for this viewer (a final close, a chat) first.
                while let Ok(msg) = control.try_recv() {
                    let is_close = matches!(msg, Message::Close(_));
                    if ws_tx.send(msg).await.is_err() || is_close { return }
                }
                let reason = session.end_reason().map_or_else(|| "disconnected".to_owned(), |(_, r)| r);
                if session.cancel.is_cancelled()
                    && let Some(end) = session.end_message()
                {
                    let _ = ws_tx.send(end).await;
                }
                let _ = ws_tx.send(close_message(close::NORMAL, &reason)).await;
                return;
            }
            frame = frames.recv() => match frame {
                Some(bytes) => {
                    if ws_tx.send(Message::Binary(bytes)).await.is_err() { return }
                }
                None => return,
            },
            _ = ping.tick() => if ws_tx.send(Message::Ping(bytes::Bytes::new())).await.is_err() { return },
            () = state.shutdown.cancelled() => {
                let _ = ws_tx.send(close_message(close::GOING_AWAY, "server shutting down")).await;
                return;
            }
        }
    }
}

struct ViewerCtx<'a> {
    state: &'a AppState,
    session: &'a Arc<LiveSession>,
    user: &'a User,
    ip: IpAddr,
    viewer_id: &'a str,
    access: AccessMode,
    control_tx: tokio::sync::mpsc::Sender<Message>,
}

/// Reads until the viewer leaves; returns a close code to send (if the relay closes it)
/// and the reason.
async fn read_loop<Rx: Stream<Item = Result<Message, axum::Error>> + Unpin>(
    ctx: &ViewerCtx<'_>,
    mut ws_rx: Rx,
    cancel: &tokio_util::sync::CancellationToken,
) -> (Option<u16>, String) {
    let mut bucket = TokenBucket::for_input();
    let mut acks = TokenBucket::for_frame_acks();
    let mut last_seen = Instant::now();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return (None, "session ended".into()),
            _ = heartbeat.tick() => if last_seen.elapsed() > DEAD_PEER_AFTER {
                return (Some(close::POLICY), "heartbeat lost".into());
            },
            msg = ws_rx.next() => {
                let bytes = match msg {
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Close(_))) | None => return (None, "viewer left".into()),
                    Some(Ok(Message::Text(_))) => { last_seen = Instant::now(); ctx.state.metrics.ignored_message("text"); continue }
                    Some(Ok(_)) => { last_seen = Instant::now(); continue }
                    Some(Err(e)) => {
                        return match read_error_close(&e) {
                            Some((code, reason)) => (Some(code), reason.into()),
                            None => (None, "connection lost".into()),
                        };
                    }
                };
                last_seen = Instant::now();
                let Ok(envelope) = decode(&bytes) else {
                    Audit::new("relay.malformed_message")
                        .agent(&ctx.session.agent_id)
                        .session(&ctx.session.id)
                        .details(json!({ "plane": "viewer", "viewer_id": ctx.viewer_id }))
                        .record_quietly(ctx.state)
                        .await;
                    return (Some(close::INVALID_PAYLOAD), "malformed message".into());
                };
                handle(ctx, &mut bucket, &mut acks, envelope.payload, bytes);
            }
        }
    }
}

/// Routes one viewer message. Only the types listed here ever reach the agent.
fn handle(
    ctx: &ViewerCtx<'_>,
    bucket: &mut TokenBucket,
    acks: &mut TokenBucket,
    payload: Option<Payload>,
    bytes: bytes::Bytes,
) {
    let metrics = &ctx.state.metrics;
    let Some(payload) = payload else {
        metrics.ignored_message("unknown");
        return;
    };
    let session = ctx.session;
    let forward = |bytes: bytes::Bytes| {
        if !session.try_send_to_agent(Message::Binary(bytes)) {
            metrics.input_dropped.inc();
        }
    };
    match payload {
        Payload::ViewerHello(hello) => {
            session.set_viewer_codecs(ctx.viewer_id, hello.codecs, hello.prefer_lossless);
            session.update_stream();
        }
        // The agent's measure of the link: any viewer (view-only too), after consent, under
        // a bucket of its own (acknowledgements come with every frame, not with input).
        Payload::FrameAck(_) => {
            if !session.is_active() || !acks.try_take() {
                metrics.input_dropped.inc();
                return;
            }
            forward(bytes);
        }
        Payload::Ping(ping) => {
            let _ = ctx.control_tx.try_send(message(Payload::Pong(proto::Pong {
                ping_timestamp_us: ping.timestamp_us,
                timestamp_us: u64::try_from(ctx.state.clock.now_millis()).unwrap_or_default()
                    * 1000,
            })));
        }
        // Control input: control mode only, after consent, under the throttle (§4.5, §4.7, §4.8).
        Payload::MouseEvent(_)
        | Payload::KeyEvent(_)
        | Payload::SpecialKey(_)
        | Payload::TypeText(_) => {
            if ctx.access != AccessMode::Control || !session.is_active() || !bucket.try_take() {
                metrics.input_dropped.inc();
                return;
            }
            record(session, RecordType::Input, &bytes);
            forward(bytes);
        }
        Payload::Clipboard(clip) => {
            if ctx.access != AccessMode::Control || !session.is_active() || !bucket.try_take() {
                metrics.input_dropped.inc();
                return;
            }
            forward(bytes);
            audit_use(
                ctx,
                "clipboard.sent",
                json!({ "to": "machine", "chars": clip.text.chars().count() }),
            );
        }
        // Viewing requests: any viewer, after consent, under the throttle.
        Payload::SwitchDisplay(_) | Payload::RefreshRequest(_) | Payload::QualitySettings(_) => {
            if !session.is_active() || !bucket.try_take() {
                metrics.input_dropped.inc();
                return;
            }
            forward(bytes);
        }
        Payload::Chat(chat) => {
            if !session.is_active() || !bucket.try_take() {
                metrics.input_dropped.inc();
                return;
            }
            session.broadcast(&Message::Binary(bytes.clone()), false, Some(ctx.viewer_id));
            record(session, RecordType::Chat, &bytes);
            forward(bytes);
            audit_use(
                ctx,
                "chat.sent",
                json!({ "from": "technician", "chars": chat.text.chars().count() }),
            );
        }
        Payload::TerminalOpen(ref open) => {
            let details = json!({ "cols": open.cols, "rows": open.rows });
            open_channel(
                ctx,
                bucket,
                Channel::Terminal,
                payload,
                None,
                "terminal.opened",
                details,
            );
        }
        Payload::FileUpload(ref up) => {
            let size = up.size;
            let details = json!({ "direction": "upload", "directory": up.directory, "name": up.name, "size": size });
            open_channel(
                ctx,
                bucket,
                Channel::File,
                payload,
                Some(size),
                "file.started",
                details,
            );
        }
        Payload::FileDownload(ref down) => {
            let details = json!({ "direction": "download", "path": down.path });
            open_channel(
                ctx,
                bucket,
                Channel::File,
                payload,
                None,
                "file.started",
                details,
            );
        }
        // Keystrokes, resizes and closes of a terminal this viewer opened, and the rest of
        // a transfer it started, renumbered for the agent; anything else is dropped. Only
        // terminal input is throttled: a transfer is bounded by the agent's window
        // (FILE_WINDOW bytes ahead of its acks).
        Payload::TerminalInput(_) | Payload::TerminalResize(_) | Payload::TerminalClose(_) => {
            if ctx.access != AccessMode::Control || !session.is_active() || !bucket.try_take() {
                metrics.input_dropped.inc();
                return;
            }
            renumber_and_forward(ctx, Channel::Terminal, payload);
        }
        Payload::FileChunk(_)
        | Payload::FileAck(_)
        | Payload::FileDone(_)
        | Payload::FileCancel(_) => {
            if ctx.access != AccessMode::Control || !session.is_active() {
                metrics.input_dropped.inc();
                return;
            }
            renumber_and_forward(ctx, Channel::File, payload);
        }
        other => metrics.ignored_message(other.kind()),
    }
}

/// Passes a message of a channel this viewer opened to the agent under the agent's number;
/// one for a channel it does not have goes nowhere.
fn renumber_and_forward(ctx: &ViewerCtx<'_>, channel: Channel, mut payload: Payload) {
    let metrics = &ctx.state.metrics;
    let Some(number) = payload.channel_number_mut() else {
        return;
    };
    let Some(agent_number) = ctx.session.channel_of(channel, ctx.viewer_id, *number) else {
        metrics.ignored_message("channel_unknown");
        return;
    };
    *number = agent_number;
    if !ctx.session.try_send_to_agent(message(payload)) {
        metrics.input_dropped.inc();
    }
}

/// The capability of an agent that asks the person at the machine about each transfer.
pub const FILE_CONSENT: &str = "file_consent";

/// A viewer opens a terminal or starts a transfer (`request`): only with the permission
/// (`terminal`, `files`), in control mode, after consent (SPEC §4.8); transfers within
/// `max_file_transfer_bytes`, and in support-code sessions only with an agent that asks the
/// customer about each one ([`FILE_CONSENT`]). A refusal says why
/// (`TerminalExit`, failed `FileResult`); otherwise the request goes to the agent under the
/// agent's number and is audited as `event` with `details`.
fn open_channel(
    ctx: &ViewerCtx<'_>,
    bucket: &mut TokenBucket,
    channel: Channel,
    mut request: Payload,
    size: Option<u64>,
    event: &str,
    mut details: serde_json::Value,
) {
    let session = ctx.session;
    let Some(number) = request.channel_number_mut() else {
        return;
    };
    let viewer_number = *number;
    let (permission, what, key, refused) = match channel {
        Channel::Terminal => (
            Permission::Terminal,
            "open remote terminals (permission `terminal`)",
            "terminal",
            "terminal.refused",
        ),
        Channel::File => (
            Permission::Files,
            "transfer files (permission `files`)",
            "transfer",
            "file.refused",
        ),
    };
    let permitted = Role::parse(&ctx.user.role).is_some_and(|r| r.has(permission));
    let limit = ctx.state.config.max_file_transfer_bytes;
    let refusal = if !permitted {
        Some(format!("your role may not {what}"))
    } else if ctx.access != AccessMode::Control {
        Some(format!("a view-only viewer cannot {what}"))
    } else if !session.is_active() {
        Some("the session is not active (consent pending or the machine is offline)".into())
    } else if channel == Channel::File
        && session.kind == SessionKind::Attended
        && !session.has_capability(FILE_CONSENT)
    {
        Some(
            "this agent cannot ask the person at the machine to allow each transfer, \
             which support-code sessions need; update the agent or use a managed session"
                .into(),
        )
    } else if let Some(size) = size.filter(|&s| s > limit) {
        Some(super::agent::too_big_error(size, limit))
    } else if !bucket.try_take() {
        Some("too many requests; try again".into())
    } else {
        None
    };
    let outcome = match refusal {
        Some(why) => Err(why),
        None => session
            .open_channel(channel, ctx.viewer_id, viewer_number)
            .map_err(|e| e.reason(channel).to_owned()),
    };
    match outcome {
        Ok(agent_number) => {
            *number = agent_number;
            if !session.try_send_to_agent(message(request)) {
                ctx.state.metrics.input_dropped.inc();
            }
            details[key] = json!(agent_number);
            details["viewer_id"] = json!(ctx.viewer_id);
            audit_use(ctx, event, details);
        }
        Err(why) => {
            let answer = match channel {
                Channel::Terminal => Payload::TerminalExit(proto::TerminalExit {
                    terminal_id: viewer_number,
                    exit_code: -1,
                    reason: why.clone(),
                }),
                Channel::File => super::agent::file_refusal(viewer_number, &why),
            };
            let _ = ctx.control_tx.try_send(message(answer));
            if !permitted {
                audit_use(ctx, refused, json!({ "reason": why }));
            }
        }
    }
}

/// Audits a chat or clipboard use by this viewer (who, which way, how long; never the
/// text) without holding up the read loop.
fn audit_use(ctx: &ViewerCtx<'_>, event_type: &str, details: serde_json::Value) {
    Audit::new(event_type)
        .user(ctx.user)
        .ip(ctx.ip)
        .agent(&ctx.session.agent_id)
        .session(&ctx.session.id)
        .details(details)
        .record_in_background(ctx.state);
}
