//! What the relay does with each message an agent sends: consent, frames and cursor to
//! the viewers, channel traffic to the viewer that opened the channel, status to the store.

use std::sync::Arc;

use axum::extract::ws::Message;
use guruconnect_proto::{self as proto, Envelope, Payload};
use serde_json::json;
use tokio::time::Instant;

use super::{ENDED_BY_CUSTOMER, REFRESH_SPACING};
use crate::AppState;
use crate::audit::Audit;
use crate::recording::format::RecordType;
use crate::sessions::registry::{Channel, EndCode, LiveSession, Phase, message};

pub(super) async fn handle(
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
        Payload::AgentNotice(_) | Payload::StreamMode(_) => {
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
                let _ = state
                    .store
                    .set_session_status(&session.id, guruconnect_store::SessionStatus::Active)
                    .await;
                Audit::new("consent.granted")
                    .agent(&session.agent_id)
                    .session(&session.id)
                    .record_quietly(state)
                    .await;
                session.broadcast(
                    &crate::relay::viewer::state_message(session, None, None),
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
pub(crate) fn record(session: &LiveSession, kind: RecordType, bytes: &bytes::Bytes) {
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
pub(crate) fn file_refusal(transfer_id: u32, error: &str) -> Payload {
    Payload::FileResult(proto::FileResult {
        transfer_id,
        ok: false,
        error: error.to_owned(),
        ..proto::FileResult::default()
    })
}

/// Why a file of `size` bytes may not cross this relay.
pub(crate) fn too_big_error(size: u64, limit: u64) -> String {
    format!(
        "the file ({size} bytes) is larger than the server's limit of {limit} bytes \
         (max_file_transfer_bytes)"
    )
}
