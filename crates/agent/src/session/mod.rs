//! One connection to the relay, from `AgentHello` to its end, on any [`Desktop`].
//!
//! This module is the async loop: it owns the socket and reacts to the relay. The desktop
//! work runs on plain threads because desktop APIs are synchronous and thread-affine:
//! [`capture`] (capture, encode, cursor), [`input`] (injection), [`clipboard`], [`chat`]
//! (started by the first chat message) and [`indicator`]. They talk to the loop over channels, and all of
//! them stop when the loop returns (their channels close). Nothing here names a platform:
//! everything desktop-specific comes from the [`Desktop`] the session runs on.
//!
//! In an attended (support-code) session nothing is captured and no input is injected until
//! the person at the machine clicked "Allow"; the relay enforces the same (SPEC §4.8).
//! Chat is shown to the person only after consent too; its text is never logged.
//!
//! The session indicator tells the person at the machine who is connected and lets them end
//! the session: in an attended session from consent to the end (even while no technician
//! is connected, so the person can always end it), in a managed session while at least one
//! technician is connected. "End session" sends `CustomerEnd`; the relay ends the session
//! for everyone, and this loop returns [`Outcome::Ended`]: a support agent exits, a
//! managed agent reconnects with nobody watching, as after a technician's end.

mod adapt;
mod capture;
mod chat;
mod clipboard;
pub mod files;
mod indicator;
mod input;
#[cfg(target_os = "linux")]
pub mod terminal;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guruconnect_client::{ClientError, Connection, Sender, connect_agent};
use guruconnect_proto::{
    self as proto, AgentHello, Codec, DisplayInfo, DisplayList, Envelope, Payload, SpecialKeyKind,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::encoding;
use crate::platform::ui::{MAX_CHAT_TEXT, transfer_lines, truncate};
use crate::platform::{Desktop, Identity, Watcher};
use crate::update::Updater;
use capture::{CaptureCmd, capture_thread};
use indicator::{IndicatorCmd, indicator_thread};
use input::{InputCmd, MAX_TYPED_TEXT, input_thread};

/// Inventory refresh period.
const STATUS_EVERY: Duration = Duration::from_secs(60);
/// Application-level ping period (the relay also pings at the WebSocket level).
const PING_EVERY: Duration = Duration::from_secs(20);
/// The outcome's reason when the person at the machine clicked "End session" (the relay
/// tells viewers the same).
pub const ENDED_HERE: &str = "ended by the person at the machine";
/// Largest frame the relay accepts, less room for the envelope.
const MAX_FRAME_BYTES: usize = guruconnect_proto::MAX_AGENT_MESSAGE - 4096;

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A GuruConnect server answered and refused the credential.
    #[error("the server refused the credential (HTTP {status})")]
    Rejected {
        /// HTTP status.
        status: u16,
    },
    /// The server URL is wrong in a way retrying cannot fix: no scheme, not a GuruConnect
    /// server, `https` against a plain-HTTP port. The text says which.
    #[error("{0}")]
    WrongServer(String),
    /// The server could not be reached (or failed): worth retrying.
    #[error("{0}")]
    Unreachable(String),
}

/// Dials the relay with `credential`.
pub async fn connect(server: &str, credential: &str) -> Result<Connection, ConnectError> {
    check_server_url(server)?;
    connect_agent(server, credential)
        .await
        .map_err(|e| classify(server, e))
}

/// Refuses a server URL without an `http://` or `https://` scheme before dialing.
pub fn check_server_url(server: &str) -> Result<(), ConnectError> {
    let lower = server.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(());
    }
    let host = server.split_once("://").map_or(server, |(_, rest)| rest);
    Err(ConnectError::WrongServer(format!(
        "the server URL \"{server}\" must start with https:// or http:// \
         (for example https://{host})"
    )))
}

/// Sorts a failed dial into a refusal, a wrong URL or a transient failure. Only a
/// GuruConnect error envelope counts as a refusal; a foreign page is never printed whole.
fn classify(server: &str, e: ClientError) -> ConnectError {
    match e {
        ClientError::Rejected { status, body } => {
            // GuruConnect's error envelope: `{ "detail", "error_code", "status_code", … }`.
            let envelope = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .filter(|v| {
                    v.get("error_code")
                        .is_some_and(serde_json::Value::is_string)
                })
                .and_then(|v| v.get("detail")?.as_str().map(str::to_owned));
            match envelope {
                Some(_) if (400..500).contains(&status) => ConnectError::Rejected { status },
                Some(message) => ConnectError::Unreachable(format!(
                    "the server at {server} failed (HTTP {status}): {message}"
                )),
                // A proxy in front of a restarting server: try again.
                None if matches!(status, 502..=504) => ConnectError::Unreachable(format!(
                    "the server at {server} is not answering (HTTP {status} from a proxy in front of it)"
                )),
                None => ConnectError::WrongServer(format!(
                    "{server} is not a GuruConnect server (it answered HTTP {status} with no \
                     GuruConnect reply at /ws/agent); check the server URL"
                )),
            }
        }
        ClientError::Transport(t) => {
            let text = t.to_string();
            if text.contains("InvalidContentType") || text.contains("invalid content type") {
                ConnectError::WrongServer(format!(
                    "the server at {server} does not speak https on that port (it answered in \
                     plain text); use http:// or the server's https port"
                ))
            } else if matches!(t, guruconnect_client::tungstenite::Error::HttpFormat(_))
                && !server.to_ascii_lowercase().starts_with("https://")
            {
                ConnectError::WrongServer(format!(
                    "the server at {server} did not answer in HTTP ({text}); if it serves \
                     https, use an https:// URL"
                ))
            } else {
                ConnectError::Unreachable(text)
            }
        }
        ClientError::InvalidRequest(why) => {
            ConnectError::WrongServer(format!("cannot use the server URL {server}: {why}"))
        }
        other => ConnectError::Unreachable(other.to_string()),
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The relay (or a technician) ended the session.
    Ended(String),
    /// The person at the machine did not allow the session.
    ConsentDenied,
    /// The connection dropped.
    Lost(String),
    /// The desktop could not be used.
    Failed(String),
}

/// A notice for the technicians watching this session.
fn notice(level: proto::agent_notice::Level, text: String) -> Payload {
    Payload::AgentNotice(proto::AgentNotice {
        level: level as i32,
        text,
    })
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

// ------------------------------------------------------------------ the loop

/// Announced in support-code sessions where the person at the machine is asked about each
/// file transfer (the relay allows transfers there only then).
pub const FILE_CONSENT: &str = "file_consent";

/// The `AgentHello` for a machine with `identity` and `displays`.
pub fn hello(identity: Identity, displays: &[DisplayInfo]) -> AgentHello {
    let mut codecs = vec![Codec::RawZstd as i32];
    if encoding::h264_available() {
        codecs.push(Codec::H264 as i32);
    }
    AgentHello {
        protocol_version: guruconnect_proto::PROTOCOL_VERSION,
        agent_id: String::new(),
        machine_uid: identity.machine_uid,
        hostname: identity.hostname,
        os: identity.os.into(),
        os_version: identity.os_version,
        agent_version: crate::version::agent_version().into(),
        codecs,
        displays: displays.to_vec(),
        capabilities: [
            "consent",
            "input",
            "clipboard",
            "chat",
            "multi_display",
            "type_text",
            "files",
        ]
        .into_iter()
        .chain(cfg!(target_os = "linux").then_some("terminal"))
        .map(String::from)
        .collect(),
    }
}

/// How a session behaves.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// A support-code session: consent required before anything flows.
    pub attended: bool,
    /// Where a key the relay provisions (trust on first use) is stored; `None` ignores it.
    pub key_file: Option<PathBuf>,
    /// The managed agent's self-update (`None`: support mode, which never updates).
    pub updates: Option<Arc<Updater>>,
    /// The account remote terminals run as (`terminal_user`); see `terminal::ShellAccount`.
    pub terminal_user: Option<String>,
}

struct Session {
    desktop: Arc<dyn Desktop>,
    tx: Sender,
    attended: bool,
    key_file: Option<PathBuf>,
    updates: Option<Arc<Updater>>,
    /// Update commands for this session's update task, once the relay accepted the hello.
    update_commands: Option<mpsc::Sender<proto::UpdateCommand>>,
    granted: bool,
    codec: Codec,
    /// Further codecs every viewer decodes, and whether they acknowledge frames (from
    /// `StartStream`).
    fallback: Vec<Codec>,
    frame_acks: bool,
    streaming: bool,
    displays: Vec<DisplayInfo>,
    active: DisplayInfo,
    capture: std_mpsc::Sender<CaptureCmd>,
    input: std_mpsc::Sender<InputCmd>,
    clipboard: Option<std_mpsc::Sender<String>>,
    chat: Option<std_mpsc::Sender<proto::ChatMessage>>,
    indicator: Option<std_mpsc::Sender<IndicatorCmd>>,
    /// Technicians connected, by viewer id, in the order they joined.
    watchers: Vec<(String, Watcher)>,
    /// The person at the machine ended the session here.
    ended_here: bool,
    out: mpsc::Sender<Payload>,
    consent: Option<JoinHandle<bool>>,
    consent_cancel: Arc<AtomicBool>,
    #[cfg(target_os = "linux")]
    terminals: terminal::Terminals,
    files: files::Transfers,
}

enum Flow {
    Continue,
    Stop(Outcome),
}

impl Session {
    fn may_control(&self) -> bool {
        !self.attended || self.granted
    }

    async fn send(&mut self, payload: Payload) -> Result<(), Outcome> {
        self.tx
            .send(payload)
            .await
            .map_err(|e| Outcome::Lost(e.to_string()))
    }

    fn start_clipboard(&mut self) {
        if self.clipboard.is_none() {
            let (tx, rx) = std_mpsc::channel();
            let (desktop, out) = (self.desktop.clone(), self.out.clone());
            let _ = std::thread::Builder::new()
                .name("clipboard".into())
                .spawn(move || clipboard::clipboard_thread(desktop, rx, out));
            self.clipboard = Some(tx);
        }
    }

    fn start_chat(&mut self) {
        if self.chat.is_none() {
            let (tx, rx) = std_mpsc::channel();
            let (desktop, out) = (self.desktop.clone(), self.out.clone());
            let _ = std::thread::Builder::new()
                .name("chat".into())
                .spawn(move || chat::chat_thread(desktop, rx, out));
            self.chat = Some(tx);
        }
    }

    /// Shows the indicator with the current list when the session should show one, hides
    /// it otherwise (see the module doc).
    fn update_indicator(&mut self) {
        let show = if self.attended {
            self.granted
        } else {
            !self.watchers.is_empty()
        };
        if show && self.indicator.is_none() {
            let (tx, rx) = std_mpsc::channel();
            let (desktop, out) = (self.desktop.clone(), self.out.clone());
            let _ = std::thread::Builder::new()
                .name("indicator".into())
                .spawn(move || indicator_thread(desktop, rx, out));
            self.indicator = Some(tx);
        }
        if let Some(tx) = &self.indicator {
            let cmd = if show {
                IndicatorCmd::Show(self.watchers.iter().map(|(_, w)| w.clone()).collect())
            } else {
                IndicatorCmd::Hide
            };
            let _ = tx.send(cmd);
        }
    }

    /// Asks the person at the machine about one transfer, on a thread of its own. Allowed,
    /// the request comes back through `out` and starts (see [`Session::forward`]); refused
    /// (or unanswered), the technician gets a failed result and nothing is touched.
    fn ask_about_transfer(&self, request: Payload) {
        let (desktop, out, cancel) = (
            self.desktop.clone(),
            self.out.clone(),
            self.consent_cancel.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("transfer-prompt".into())
            .spawn(move || {
                let (id, lines) = match &request {
                    Payload::FileUpload(up) => (
                        up.transfer_id,
                        transfer_lines(true, &up.name, Some(up.size)),
                    ),
                    Payload::FileDownload(down) => (
                        down.transfer_id,
                        transfer_lines(
                            false,
                            &down.path,
                            std::fs::metadata(&down.path).ok().map(|m| m.len()),
                        ),
                    ),
                    _ => return,
                };
                let allowed = desktop.consent().ask_transfer(&lines, &cancel);
                tracing::info!(
                    transfer = id,
                    allowed,
                    "the person at the machine answered about a transfer"
                );
                let answer = if allowed {
                    request
                } else {
                    files::failed(id, "the person at the machine did not allow this transfer")
                };
                let _ = out.blocking_send(answer);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot ask about a transfer");
        }
    }

    /// Sends what a desktop thread produced; "End session" also ends this loop. A transfer
    /// request here is one the person at the machine has just allowed: it starts now.
    async fn forward(&mut self, payload: Payload) -> Result<Flow, Outcome> {
        if matches!(payload, Payload::FileUpload(_) | Payload::FileDownload(_)) {
            if let Some(answer) = self.start_transfer(payload) {
                self.send(answer).await?;
            }
            return Ok(Flow::Continue);
        }
        #[cfg(target_os = "linux")]
        if let Payload::TerminalExit(exit) = &payload {
            self.terminals.ended(exit.terminal_id);
        }
        if let Payload::FileResult(result) = &payload {
            self.files.finished(result.transfer_id);
        }
        let customer_end = matches!(payload, Payload::CustomerEnd(_));
        self.send(payload).await?;
        if customer_end {
            self.ended_here = true;
            return Ok(Flow::Stop(Outcome::Ended(ENDED_HERE.into())));
        }
        Ok(Flow::Continue)
    }

    /// Handles a file-transfer message; returns an answer to send.
    fn file(&mut self, payload: Payload) -> Option<Payload> {
        if !self.may_control() {
            // The relay never passes these before consent; nothing is touched if one comes.
            return None;
        }
        match payload {
            // In a support-code session the person at the machine decides about each one.
            Payload::FileUpload(_) | Payload::FileDownload(_) if self.attended => {
                self.ask_about_transfer(payload);
                None
            }
            Payload::FileUpload(_) | Payload::FileDownload(_) => self.start_transfer(payload),
            Payload::FileChunk(chunk) => self.files.chunk(chunk),
            Payload::FileDone(done) => self.files.done(&done),
            Payload::FileAck(ack) => {
                self.files.ack(&ack);
                None
            }
            Payload::FileCancel(cancel) => self.files.cancel(&cancel),
            _ => None,
        }
    }

    /// Starts an upload or a download; returns the answer to send.
    fn start_transfer(&mut self, request: Payload) -> Option<Payload> {
        match request {
            Payload::FileUpload(up) => Some(self.files.upload(&up)),
            Payload::FileDownload(down) => self.files.download(&down),
            _ => None,
        }
    }

    /// Handles a terminal message; returns an answer to send (a refusal).
    fn terminal(&mut self, payload: Payload) -> Option<Payload> {
        if !self.may_control() {
            return match payload {
                Payload::TerminalOpen(open) => Some(Payload::TerminalExit(proto::TerminalExit {
                    terminal_id: open.terminal_id,
                    exit_code: -1,
                    reason: "the person at the machine has not allowed the session".into(),
                })),
                _ => None,
            };
        }
        #[cfg(target_os = "linux")]
        match payload {
            Payload::TerminalOpen(open) => return self.terminals.open(&open),
            Payload::TerminalInput(input) => self.terminals.input(input),
            Payload::TerminalResize(resize) => self.terminals.resize(&resize),
            Payload::TerminalClose(close) => self.terminals.close(close.terminal_id),
            _ => {}
        }
        #[cfg(not(target_os = "linux"))]
        if let Payload::TerminalOpen(open) = payload {
            return Some(Payload::TerminalExit(proto::TerminalExit {
                terminal_id: open.terminal_id,
                exit_code: -1,
                reason: "remote terminals are not available on this platform yet".into(),
            }));
        }
        None
    }

    fn display_list(&self) -> Payload {
        Payload::DisplayList(DisplayList {
            displays: self.displays.clone(),
            active_display_id: self.active.id,
        })
    }

    async fn handle(&mut self, payload: Payload) -> Result<Flow, Outcome> {
        match payload {
            Payload::SessionInfo(info) => {
                tracing::info!(session_id = %info.session_id, agent_id = %info.agent_id, attended = info.attended, "session bound");
                // Online: the update task confirms a pending update and checks for new ones.
                if let Some(updater) = &self.updates
                    && self.update_commands.is_none()
                    && !self.attended
                {
                    let (tx, rx) = mpsc::channel(4);
                    tokio::spawn(updater.clone().serve(info.agent_id, self.out.clone(), rx));
                    self.update_commands = Some(tx);
                }
            }
            Payload::ConsentRequest(request) => {
                if self.granted || self.consent.is_some() {
                    return Ok(Flow::Continue);
                }
                tracing::info!(technician = %request.technician, "asking the user for consent");
                let cancel = self.consent_cancel.clone();
                let prompt = self.desktop.consent();
                self.consent = Some(tokio::task::spawn_blocking(move || {
                    prompt.ask(&request, &cancel)
                }));
            }
            Payload::StartStream(start) => {
                if !self.may_control() {
                    tracing::warn!("ignoring StartStream before consent");
                    return Ok(Flow::Continue);
                }
                // The stream shows the active display: the primary one until a technician
                // switches, then their choice, also for the next viewer after everyone left.
                // The relay's StartStream always names display 0, so it is not followed.
                self.streaming = true;
                self.codec = Codec::try_from(start.codec).unwrap_or(Codec::RawZstd);
                self.fallback = start
                    .fallback_codecs
                    .iter()
                    .filter_map(|&c| Codec::try_from(c).ok())
                    .collect();
                tracing::info!(codec = ?self.codec, fallback = ?self.fallback, "streaming started");
                self.frame_acks = start.frame_acks;
                let _ = self.capture.send(CaptureCmd::Start {
                    codec: self.codec,
                    fallback: self.fallback.clone(),
                    frame_acks: self.frame_acks,
                    display: self.active.clone(),
                    fps: start.max_fps,
                });
                self.start_clipboard();
                let list = self.display_list();
                self.send(list).await?;
            }
            Payload::StopStream(_) => {
                self.streaming = false;
                let _ = self.capture.send(CaptureCmd::Stop);
            }
            Payload::RefreshRequest(_) => {
                let _ = self.capture.send(CaptureCmd::Refresh);
            }
            Payload::SwitchDisplay(switch) => {
                let Some(display) = self
                    .displays
                    .iter()
                    .find(|d| d.id == switch.display_id)
                    .cloned()
                else {
                    tracing::debug!(
                        display_id = switch.display_id,
                        "ignoring a switch to an unknown display"
                    );
                    return Ok(Flow::Continue);
                };
                self.active = display;
                if self.streaming {
                    // Restarting with the current codec picks the new display and sends a
                    // keyframe.
                    let _ = self.capture.send(CaptureCmd::Start {
                        codec: self.codec,
                        fallback: self.fallback.clone(),
                        frame_acks: self.frame_acks,
                        display: self.active.clone(),
                        fps: 0,
                    });
                    self.send(self.display_list()).await?;
                }
            }
            Payload::QualitySettings(q) => {
                let _ = self.capture.send(CaptureCmd::Quality {
                    fps: q.max_fps,
                    quality: q.quality,
                });
            }
            Payload::MouseEvent(event) => {
                if self.may_control() {
                    let button = event.action != proto::MouseAction::Move as i32;
                    let _ = self.input.send(InputCmd::Mouse(event, self.active.clone()));
                    if button {
                        let _ = self.capture.send(CaptureCmd::Nudge);
                    }
                }
            }
            Payload::KeyEvent(event) => {
                if self.may_control() {
                    let press = event.down;
                    let _ = self.input.send(InputCmd::Key(event));
                    if press {
                        let _ = self.capture.send(CaptureCmd::Nudge);
                    }
                }
            }
            Payload::SpecialKey(special) => match SpecialKeyKind::try_from(special.kind) {
                Ok(kind) if self.may_control() => {
                    let _ = self.input.send(InputCmd::Special(kind));
                }
                _ => tracing::debug!(kind = special.kind, "ignoring a special key"),
            },
            Payload::TypeText(typed) => {
                if self.may_control() && !typed.text.is_empty() {
                    let text = truncate(&typed.text, MAX_TYPED_TEXT).to_owned();
                    tracing::info!(bytes = text.len(), "typing text from a technician");
                    let _ = self.input.send(InputCmd::Text(text));
                }
            }
            Payload::ReleaseModifiers(_) => {
                let _ = self.input.send(InputCmd::ReleaseAll);
            }
            Payload::Clipboard(clip) => {
                if self.may_control() {
                    self.start_clipboard();
                    if let Some(tx) = &self.clipboard {
                        let _ = tx.send(clip.text);
                    }
                }
            }
            Payload::Chat(mut message) => {
                // The agent is the chat's destination: the person at this machine reads it in
                // the chat window. Only the arrival is logged, never the text.
                if !self.may_control() {
                    tracing::warn!("ignoring a chat message before consent");
                    return Ok(Flow::Continue);
                }
                if message.text.trim().is_empty() {
                    return Ok(Flow::Continue);
                }
                tracing::info!("a chat message arrived");
                message.text = truncate(&message.text, MAX_CHAT_TEXT).to_owned();
                message.from = truncate(&message.from, 128).to_owned();
                self.start_chat();
                if let Some(tx) = &self.chat {
                    let _ = tx.send(message);
                }
            }
            Payload::Ping(ping) => {
                self.send(Payload::Pong(proto::Pong {
                    ping_timestamp_us: ping.timestamp_us,
                    timestamp_us: now_us(),
                }))
                .await?;
            }
            Payload::SessionEnd(end) => return Ok(Flow::Stop(Outcome::Ended(end.reason))),
            Payload::ViewerJoined(v) => {
                tracing::info!(viewer = %v.username, "a technician joined");
                // An older relay names no access mode: say "controlling" rather than
                // understate what the technician may do.
                let control = v.access_mode != proto::AccessMode::ViewOnly as i32;
                self.watchers.retain(|(id, _)| *id != v.viewer_id);
                self.watchers.push((
                    v.viewer_id,
                    Watcher {
                        name: v.username.clone(),
                        control,
                    },
                ));
                self.update_indicator();
                // The display list is otherwise sent only when the stream starts or switches:
                // a technician joining a running stream would never learn the monitors.
                if self.streaming {
                    self.send(self.display_list()).await?;
                }
            }
            Payload::ViewerLeft(v) => {
                tracing::info!(viewer = %v.username, "a technician left");
                self.watchers.retain(|(id, _)| *id != v.viewer_id);
                self.update_indicator();
            }
            Payload::KeyProvision(provision) => self.store_provisioned_key(&provision),
            Payload::FileUpload(_)
            | Payload::FileDownload(_)
            | Payload::FileChunk(_)
            | Payload::FileAck(_)
            | Payload::FileDone(_)
            | Payload::FileCancel(_) => {
                if let Some(answer) = self.file(payload) {
                    self.send(answer).await?;
                }
            }
            Payload::TerminalOpen(_)
            | Payload::TerminalInput(_)
            | Payload::TerminalResize(_)
            | Payload::TerminalClose(_) => {
                // The relay passes these only from a permitted viewer after consent; the
                // agent checks consent again (SPEC §4.8).
                if let Some(refusal) = self.terminal(payload) {
                    self.send(refusal).await?;
                }
            }
            Payload::UpdateCommand(command) => match &self.update_commands {
                Some(tx) => {
                    tracing::info!(version = %command.version, request_id = %command.request_id, "the relay asks for an update");
                    if tx.try_send(command.clone()).is_err() {
                        self.send(update_refused(&command, "an update is already queued"))
                            .await?;
                    }
                }
                None => {
                    self.send(update_refused(
                        &command,
                        "this agent does not update itself (a support session)",
                    ))
                    .await?;
                }
            },
            other => tracing::debug!(kind = other.kind(), "ignoring a message"),
        }
        Ok(Flow::Continue)
    }

    fn store_provisioned_key(&self, provision: &proto::KeyProvision) {
        let Some(path) = &self.key_file else {
            tracing::warn!("the relay provisioned a key, but this session does not keep one");
            return;
        };
        let plausible = provision.agent_key.starts_with("cak_")
            && !provision.agent_key.contains(char::is_whitespace);
        if !plausible {
            tracing::warn!("ignoring a malformed provisioned key");
            return;
        }
        match crate::config::store_key(path, &provision.agent_key) {
            Ok(()) => tracing::info!(
                key_id = %provision.key_id,
                key_file = %path.display(),
                "received this machine's per-agent key; it replaces the shared key from now on"
            ),
            Err(e) => tracing::error!(
                key_file = %path.display(),
                "cannot store the provisioned key: {e}"
            ),
        }
    }

    async fn consent_answer(&mut self, granted: bool) -> Result<Flow, Outcome> {
        self.consent = None;
        self.send(Payload::ConsentResponse(proto::ConsentResponse { granted }))
            .await?;
        if granted {
            tracing::info!("the user allowed the session");
            self.granted = true;
            self.update_indicator();
            Ok(Flow::Continue)
        } else {
            tracing::info!("the user did not allow the session");
            Ok(Flow::Stop(Outcome::ConsentDenied))
        }
    }
}

/// A `FAILED` answer to an update command.
fn update_refused(command: &proto::UpdateCommand, why: &str) -> Payload {
    Payload::UpdateStatus(proto::UpdateStatus {
        state: proto::UpdateState::Failed as i32,
        version: command.version.clone(),
        detail: why.into(),
        request_id: command.request_id.clone(),
    })
}

async fn join_consent(task: &mut Option<JoinHandle<bool>>) -> bool {
    match task {
        Some(handle) => handle.await.unwrap_or(false),
        None => std::future::pending().await,
    }
}

async fn status(desktop: &Arc<dyn Desktop>) -> Payload {
    let desktop = desktop.clone();
    let status = tokio::task::spawn_blocking(move || desktop.inventory())
        .await
        .unwrap_or_default();
    Payload::AgentStatus(status)
}

/// Runs one session on an established connection until it ends. `attended` is true for a
/// support-code session (consent required before anything flows).
pub async fn run(conn: Connection, attended: bool) -> Outcome {
    run_with(
        conn,
        SessionOptions {
            attended,
            key_file: None,
            updates: None,
            terminal_user: None,
        },
    )
    .await
}

/// [`run`] with every option, on this system's desktop.
pub async fn run_with(conn: Connection, options: SessionOptions) -> Outcome {
    run_on(crate::platform::native(), conn, options).await
}

/// [`run_with`] on a given desktop.
pub async fn run_on(
    desktop: Arc<dyn Desktop>,
    conn: Connection,
    options: SessionOptions,
) -> Outcome {
    let SessionOptions {
        attended,
        key_file,
        updates,
        terminal_user,
    } = options;
    #[cfg(not(target_os = "linux"))]
    let _ = terminal_user;
    let opened = {
        let desktop = desktop.clone();
        tokio::task::spawn_blocking(move || {
            Ok::<_, crate::platform::PlatformError>((
                desktop.capturer()?,
                desktop.injector()?,
                desktop.identity(),
            ))
        })
        .await
    };
    let (capturer, injector, identity) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return Outcome::Failed(e.to_string()),
        Err(e) => return Outcome::Failed(format!("cannot open the desktop: {e}")),
    };
    tracing::info!(capture = capturer.backend(), "desktop opened");
    let displays = capturer.displays();
    let active = displays
        .iter()
        .find(|d| d.primary)
        .or(displays.first())
        .cloned()
        .unwrap_or_default();
    let (mut tx, rx) = conn.split();
    let mut agent_hello = hello(identity, &displays);
    if attended && desktop.consent().asks_transfers() {
        agent_hello.capabilities.push(FILE_CONSENT.into());
    }
    if let Err(e) = tx.send(Payload::AgentHello(agent_hello)).await {
        return Outcome::Lost(e.to_string());
    }
    let (out_tx, mut out_rx) = mpsc::channel::<Payload>(4);
    let (capture_tx, capture_rx) = std_mpsc::channel();
    let (reader, mut rx) = read_relay(rx, capture_tx.clone());
    let (input_tx, input_rx) = std_mpsc::channel();
    let (capture_out, input_out) = (out_tx.clone(), out_tx.clone());
    let capture_self = capture_tx.clone();
    let spawned = std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || capture_thread(capturer, capture_rx, capture_self, capture_out))
        .and_then(|_| {
            std::thread::Builder::new()
                .name("input".into())
                .spawn(move || input_thread(injector, input_rx, input_out))
        });
    if let Err(e) = spawned {
        return Outcome::Failed(format!("cannot start a thread: {e}"));
    }
    let mut session = Session {
        desktop,
        tx,
        attended,
        key_file,
        updates,
        update_commands: None,
        granted: false,
        codec: Codec::RawZstd,
        fallback: Vec::new(),
        frame_acks: false,
        streaming: false,
        displays,
        active,
        capture: capture_tx,
        input: input_tx,
        clipboard: None,
        chat: None,
        indicator: None,
        watchers: Vec::new(),
        ended_here: false,
        #[cfg(target_os = "linux")]
        terminals: terminal::Terminals::new(
            {
                let (me, is_root) = terminal::current_account();
                terminal::ShellAccount::decide(terminal_user.as_deref(), &me, is_root)
            },
            out_tx.clone(),
        ),
        files: files::Transfers::new(out_tx.clone()),
        out: out_tx,
        consent: None,
        consent_cancel: Arc::new(AtomicBool::new(false)),
    };
    let outcome = drive(&mut session, &mut rx, &mut out_rx).await;
    session.consent_cancel.store(true, Ordering::Relaxed);
    if outcome == Outcome::ConsentDenied || session.ended_here {
        // Let the relay record the refusal or the end before the socket goes away.
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while rx.recv().await.is_some_and(|m| m.is_ok()) {}
        })
        .await;
    }
    reader.abort();
    let _ = session.tx.close().await;
    outcome
}

/// Reads the relay's messages on a task of its own, so that frame acknowledgements reach
/// the capture thread when they arrive, not after the session's loop has finished writing
/// a large frame to a slow link; everything else is handed on in order.
fn read_relay(
    mut rx: guruconnect_client::Receiver,
    capture: std_mpsc::Sender<CaptureCmd>,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::Receiver<Result<Envelope, ClientError>>,
) {
    let (tx, messages) = mpsc::channel(256);
    let task = tokio::spawn(async move {
        loop {
            let msg = rx.recv().await;
            if let Ok(Envelope {
                payload: Some(Payload::FrameAck(ack)),
                ..
            }) = &msg
            {
                let at = std::time::Instant::now();
                let _ = capture.send(CaptureCmd::Ack {
                    sequence: ack.sequence,
                    at,
                });
                continue;
            }
            let last = matches!(&msg, Err(e) if !matches!(e, ClientError::Malformed(_)));
            if tx.send(msg).await.is_err() || last {
                return;
            }
        }
    });
    (task, messages)
}

async fn drive(
    session: &mut Session,
    rx: &mut mpsc::Receiver<Result<Envelope, ClientError>>,
    out_rx: &mut mpsc::Receiver<Payload>,
) -> Outcome {
    if let Err(o) = session.send(status(&session.desktop).await).await {
        return o;
    }
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    status_tick.tick().await;
    let mut ping_tick = tokio::time::interval(PING_EVERY);
    ping_tick.tick().await;
    loop {
        let step = tokio::select! {
            msg = rx.recv() => match msg {
                Some(Ok(Envelope { payload: Some(payload), .. })) => session.handle(payload).await,
                Some(Ok(_)) => Ok(Flow::Continue),
                Some(Err(ClientError::Malformed(_))) => {
                    tracing::warn!("ignoring a malformed message from the relay");
                    Ok(Flow::Continue)
                }
                Some(Err(ClientError::Closed { code, reason })) => {
                    Err(Outcome::Lost(format!("closed by the server ({code}: {reason})")))
                }
                Some(Err(e)) => Err(Outcome::Lost(e.to_string())),
                None => Err(Outcome::Lost("the connection ended".into())),
            },
            Some(payload) = out_rx.recv() => session.forward(payload).await,
            granted = join_consent(&mut session.consent) => session.consent_answer(granted).await,
            _ = status_tick.tick() => {
                let status = status(&session.desktop).await;
                session.send(status).await.map(|()| Flow::Continue)
            }
            _ = ping_tick.tick() => session
                .send(Payload::Ping(proto::Ping { timestamp_us: now_us() }))
                .await
                .map(|()| Flow::Continue),
        };
        match step {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop(outcome)) | Err(outcome) => return outcome,
        }
    }
}
