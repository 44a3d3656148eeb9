//! One connection to the relay, from `AgentHello` to its end.
//!
//! The async loop owns the socket and reacts to the relay; the desktop work runs on plain
//! threads because x11rb is synchronous: the capture thread (capture, encode, cursor), the
//! input thread (XTEST), the clipboard thread and the chat thread (started by the first chat
//! message). They talk to the loop over channels, and all of them stop when the loop
//! returns (their channels close).
//!
//! In an attended (support-code) session nothing is captured and no input is injected until
//! the person at the machine clicked "Allow"; the relay enforces the same (SPEC §4.8).
//! Chat is shown to the person only after consent too; its text is never logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guruconnect_client::{ClientError, Connection, Sender, connect_agent};
use guruconnect_proto::{
    self as proto, AgentHello, Codec, DisplayInfo, DisplayList, Envelope, KeyEvent, MouseEvent,
    Payload, SpecialKeyKind,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::encoding::{self, FrameEncoder};
use crate::platform::linux::capture::X11Capturer;
use crate::platform::linux::chat::{self, X11Chat};
use crate::platform::linux::clipboard::X11Clipboard;
use crate::platform::linux::consent::X11Consent;
use crate::platform::linux::input::X11Injector;
use crate::platform::linux::{self as native, inventory, machine_uid};
use crate::platform::{
    Capturer, ChatWindow, ClipboardAccess, ConsentPrompt, CursorState, Injector,
};

/// Inventory refresh period.
const STATUS_EVERY: Duration = Duration::from_secs(60);
/// Application-level ping period (the relay also pings at the WebSocket level).
const PING_EVERY: Duration = Duration::from_secs(20);
/// Largest frame the relay accepts, less room for the envelope.
const MAX_FRAME_BYTES: usize = guruconnect_proto::MAX_AGENT_MESSAGE - 4096;
/// Clipboard polling period.
const CLIPBOARD_POLL: Duration = Duration::from_millis(500);
/// Largest clipboard text sent to viewers (bytes).
const MAX_CLIPBOARD: usize = 60 * 1024;
/// How often the chat thread looks at its window between incoming messages.
const CHAT_POLL: Duration = Duration::from_millis(25);

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server answered and refused the credential.
    #[error("the server refused the credential (HTTP {status})")]
    Rejected {
        /// HTTP status.
        status: u16,
    },
    /// The server could not be reached (or failed): worth retrying.
    #[error("{0}")]
    Unreachable(String),
}

/// Dials the relay with `credential`.
pub async fn connect(server: &str, credential: &str) -> Result<Connection, ConnectError> {
    match connect_agent(server, credential).await {
        Ok(conn) => Ok(conn),
        Err(ClientError::Rejected { status, .. }) if (400..500).contains(&status) => {
            Err(ConnectError::Rejected { status })
        }
        Err(e) => Err(ConnectError::Unreachable(e.to_string())),
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

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

// ------------------------------------------------------------------ capture thread

enum CaptureCmd {
    Start {
        codec: Codec,
        display: DisplayInfo,
        fps: u32,
    },
    Stop,
    Refresh,
    Quality {
        fps: u32,
        quality: u32,
    },
}

struct Stream {
    encoder: FrameEncoder,
    display: DisplayInfo,
    interval: Duration,
    next_at: Instant,
    force_keyframe: bool,
}

fn frame_interval(fps: u32) -> Duration {
    let fps = if fps == 0 { 30 } else { fps.clamp(1, 60) };
    Duration::from_secs(1) / fps
}

fn capture_thread(
    mut capturer: Box<dyn Capturer>,
    cmds: std_mpsc::Receiver<CaptureCmd>,
    out: mpsc::Sender<Payload>,
) {
    let mut stream: Option<Stream> = None;
    let mut sequence: u64 = 0;
    let mut last_cursor: Option<CursorState> = None;
    let mut last_serial: Option<u32> = None;
    let mut failures: u32 = 0;
    loop {
        let cmd = match &stream {
            None => match cmds.recv() {
                Ok(cmd) => Some(cmd),
                Err(_) => return,
            },
            Some(s) => {
                match cmds.recv_timeout(s.next_at.saturating_duration_since(Instant::now())) {
                    Ok(cmd) => Some(cmd),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        if let Some(cmd) = cmd {
            match cmd {
                CaptureCmd::Start {
                    codec,
                    display,
                    fps,
                } => {
                    let reuse = stream
                        .take()
                        .filter(|s| s.encoder.requested() == codec && s.display == display);
                    let encoder = match reuse {
                        Some(s) => s.encoder,
                        None => FrameEncoder::new(codec),
                    };
                    let display_id = display.id;
                    tracing::info!(codec = ?encoder.codec(), display_id, fps, "streaming");
                    stream = Some(Stream {
                        encoder,
                        display,
                        interval: frame_interval(fps),
                        next_at: Instant::now(),
                        force_keyframe: true,
                    });
                    last_cursor = None;
                    last_serial = None;
                }
                CaptureCmd::Stop => {
                    tracing::info!("streaming stopped");
                    stream = None;
                }
                CaptureCmd::Refresh => {
                    if let Some(s) = &mut stream {
                        s.force_keyframe = true;
                        s.next_at = Instant::now();
                    }
                }
                CaptureCmd::Quality { fps, quality } => {
                    if let Some(s) = &mut stream {
                        if fps > 0 {
                            s.interval = frame_interval(fps);
                        }
                        if (1..=100).contains(&quality) {
                            s.encoder.set_quality(quality);
                        }
                    }
                }
            }
            // Keep capturing even under a flood of commands.
            if stream.as_ref().is_none_or(|s| Instant::now() < s.next_at) {
                continue;
            }
        }
        let Some(s) = &mut stream else { continue };
        s.next_at = (s.next_at + s.interval).max(Instant::now());
        let captured_at = now_us();
        let image = match capturer.capture(&s.display) {
            Ok(image) => {
                failures = 0;
                image
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "screen capture failed");
                }
                s.next_at = Instant::now() + Duration::from_millis(500);
                continue;
            }
        };
        if let Some(frame) = s.encoder.encode(&image, s.force_keyframe) {
            let keyframe = frame.keyframe;
            let parts = if frame.data.len() > MAX_FRAME_BYTES {
                // Incompressible content (photos, noise): send the whole picture as
                // lossless bands that each fit the relay's message cap.
                lossless_bands(&image, keyframe)
            } else {
                vec![frame]
            };
            for part in parts {
                let video = part.to_video_frame(s.display.id, sequence, captured_at);
                if video.data.len() > MAX_FRAME_BYTES {
                    tracing::warn!(
                        bytes = video.data.len(),
                        "a frame band exceeds the relay's message cap; dropped"
                    );
                    continue;
                }
                sequence += 1;
                if out.blocking_send(Payload::VideoFrame(video)).is_err() {
                    return;
                }
            }
            if keyframe {
                s.force_keyframe = false;
            }
        }
        if let Ok(cursor) = capturer.cursor(&s.display)
            && last_cursor != Some(cursor)
        {
            if last_serial != Some(cursor.serial) {
                last_serial = Some(cursor.serial);
                if let Ok(Some(shape)) = capturer.cursor_image() {
                    let _ = out.try_send(Payload::CursorShape(proto::CursorShape {
                        width: shape.width,
                        height: shape.height,
                        hot_x: shape.hot_x,
                        hot_y: shape.hot_y,
                        rgba: shape.rgba.into(),
                        serial: u64::from(shape.serial),
                    }));
                }
            }
            let moved = last_cursor
                .is_none_or(|c| (c.x, c.y, c.visible) != (cursor.x, cursor.y, cursor.visible));
            last_cursor = Some(cursor);
            if moved {
                let _ = out.try_send(Payload::CursorPosition(proto::CursorPosition {
                    x: cursor.x,
                    y: cursor.y,
                    visible: cursor.visible,
                }));
            }
        }
    }
}

// ------------------------------------------------------------------ input thread

enum InputCmd {
    Mouse(MouseEvent, DisplayInfo),
    Key(KeyEvent),
    Special(SpecialKeyKind),
    ReleaseAll,
}

fn input_thread(mut injector: Box<dyn Injector>, cmds: std_mpsc::Receiver<InputCmd>) {
    while let Ok(cmd) = cmds.recv() {
        let result = match &cmd {
            InputCmd::Mouse(event, display) => injector.mouse(event, display),
            InputCmd::Key(event) => injector.key(event),
            InputCmd::Special(kind) => injector.special(*kind),
            InputCmd::ReleaseAll => injector.release_all(),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "input injection failed");
        }
    }
    // The session is over: nothing may stay pressed.
    let _ = injector.release_all();
}

// ------------------------------------------------------------------ clipboard thread

fn clipboard_thread(incoming: std_mpsc::Receiver<String>, out: mpsc::Sender<Payload>) {
    let mut clipboard = match X11Clipboard::open() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "clipboard unavailable");
            return;
        }
    };
    // What is on the clipboard before the session is not sent; only later changes are.
    let mut last = clipboard.get_text();
    loop {
        match incoming.recv_timeout(CLIPBOARD_POLL) {
            Ok(text) => {
                if let Err(e) = clipboard.set_text(&text) {
                    tracing::warn!(error = %e, "could not set the clipboard");
                }
                last = Some(text);
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                let now = clipboard.get_text();
                if now.is_some() && now != last {
                    last.clone_from(&now);
                    if let Some(text) = now.filter(|t| t.len() <= MAX_CLIPBOARD) {
                        tracing::debug!(bytes = text.len(), "clipboard changed");
                        if out
                            .blocking_send(Payload::Clipboard(proto::ClipboardText { text }))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

// ------------------------------------------------------------------ chat thread

/// The name the person at the machine chats under: the local user, else "user".
fn local_user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(|name| name.trim().chars().take(64).collect::<String>())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "user".into())
}

fn chat_thread(incoming: std_mpsc::Receiver<proto::ChatMessage>, out: mpsc::Sender<Payload>) {
    let mut window = match X11Chat::open() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "the chat window cannot be opened");
            return;
        }
    };
    let me = local_user();
    loop {
        match incoming.recv_timeout(CHAT_POLL) {
            Ok(message) => {
                if let Err(e) = window.show(&message.from, &message.text) {
                    tracing::warn!(error = %e, "cannot show a chat message");
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            // The session is over; dropping the window closes it.
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let replies = match window.replies() {
            Ok(replies) => replies,
            Err(e) => {
                tracing::warn!(error = %e, "the chat window failed");
                return;
            }
        };
        for text in replies {
            let text = chat::truncate(text.trim(), chat::MAX_TEXT).to_owned();
            if text.is_empty() {
                continue;
            }
            tracing::info!("the user sent a chat reply");
            let reply = Payload::Chat(proto::ChatMessage {
                from: me.clone(),
                text,
                sent_at_ms: now_us() / 1000,
            });
            if out.blocking_send(reply).is_err() {
                return;
            }
        }
    }
}

// ------------------------------------------------------------------ the loop

/// The `AgentHello` for this machine.
pub fn hello(displays: &[DisplayInfo]) -> AgentHello {
    let mut codecs = vec![Codec::RawZstd as i32];
    if encoding::h264_available() {
        codecs.push(Codec::H264 as i32);
    }
    AgentHello {
        protocol_version: guruconnect_proto::PROTOCOL_VERSION,
        agent_id: String::new(),
        machine_uid: machine_uid::machine_uid(),
        hostname: inventory::hostname(),
        os: "linux".into(),
        os_version: inventory::os_version(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        codecs,
        displays: displays.to_vec(),
        capabilities: ["consent", "input", "clipboard", "chat", "multi_display"]
            .map(String::from)
            .to_vec(),
    }
}

/// How a session behaves.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// A support-code session: consent required before anything flows.
    pub attended: bool,
    /// Where a key the relay provisions (trust on first use) is stored; `None` ignores it.
    pub key_file: Option<PathBuf>,
}

struct Session {
    tx: Sender,
    attended: bool,
    key_file: Option<PathBuf>,
    granted: bool,
    codec: Codec,
    streaming: bool,
    displays: Vec<DisplayInfo>,
    active: DisplayInfo,
    capture: std_mpsc::Sender<CaptureCmd>,
    input: std_mpsc::Sender<InputCmd>,
    clipboard: Option<std_mpsc::Sender<String>>,
    chat: Option<std_mpsc::Sender<proto::ChatMessage>>,
    out: mpsc::Sender<Payload>,
    consent: Option<JoinHandle<bool>>,
    consent_cancel: Arc<AtomicBool>,
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
            let out = self.out.clone();
            let _ = std::thread::Builder::new()
                .name("clipboard".into())
                .spawn(move || clipboard_thread(rx, out));
            self.clipboard = Some(tx);
        }
    }

    fn start_chat(&mut self) {
        if self.chat.is_none() {
            let (tx, rx) = std_mpsc::channel();
            let out = self.out.clone();
            let _ = std::thread::Builder::new()
                .name("chat".into())
                .spawn(move || chat_thread(rx, out));
            self.chat = Some(tx);
        }
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
            }
            Payload::ConsentRequest(request) => {
                if self.granted || self.consent.is_some() {
                    return Ok(Flow::Continue);
                }
                tracing::info!(technician = %request.technician, "asking the user for consent");
                let cancel = self.consent_cancel.clone();
                self.consent = Some(tokio::task::spawn_blocking(move || {
                    X11Consent.ask(&request, &cancel)
                }));
            }
            Payload::StartStream(start) => {
                if !self.may_control() {
                    tracing::warn!("ignoring StartStream before consent");
                    return Ok(Flow::Continue);
                }
                // The display named here picks where a stream starts. A StartStream while one
                // runs only changes the codec (the relay always names display 0): the display
                // a technician switched to stays.
                if !self.streaming
                    && let Some(d) = self.displays.iter().find(|d| d.id == start.display_id)
                {
                    self.active = d.clone();
                }
                self.streaming = true;
                self.codec = Codec::try_from(start.codec).unwrap_or(Codec::RawZstd);
                let _ = self.capture.send(CaptureCmd::Start {
                    codec: self.codec,
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
                    let _ = self.input.send(InputCmd::Mouse(event, self.active.clone()));
                }
            }
            Payload::KeyEvent(event) => {
                if self.may_control() {
                    let _ = self.input.send(InputCmd::Key(event));
                }
            }
            Payload::SpecialKey(special) => match SpecialKeyKind::try_from(special.kind) {
                Ok(kind) if self.may_control() => {
                    let _ = self.input.send(InputCmd::Special(kind));
                }
                _ => tracing::debug!(kind = special.kind, "ignoring a special key"),
            },
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
                message.text = chat::truncate(&message.text, chat::MAX_TEXT).to_owned();
                message.from = chat::truncate(&message.from, 128).to_owned();
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
                // The display list is otherwise sent only when the stream starts or switches:
                // a technician joining a running stream would never learn the monitors.
                if self.streaming {
                    self.send(self.display_list()).await?;
                }
            }
            Payload::ViewerLeft(v) => tracing::info!(viewer = %v.username, "a technician left"),
            Payload::KeyProvision(provision) => self.store_provisioned_key(&provision),
            Payload::UpdateCommand(_) => {
                tracing::warn!(
                    kind = payload.kind(),
                    "not supported by this agent yet; ignored"
                );
            }
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
            Ok(Flow::Continue)
        } else {
            tracing::info!("the user did not allow the session");
            Ok(Flow::Stop(Outcome::ConsentDenied))
        }
    }
}

async fn join_consent(task: &mut Option<JoinHandle<bool>>) -> bool {
    match task {
        Some(handle) => handle.await.unwrap_or(false),
        None => std::future::pending().await,
    }
}

async fn status() -> Payload {
    let status = tokio::task::spawn_blocking(|| inventory::collect(native::idle_seconds()))
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
        },
    )
    .await
}

/// [`run`] with every option.
pub async fn run_with(conn: Connection, options: SessionOptions) -> Outcome {
    let SessionOptions { attended, key_file } = options;
    let capturer = match X11Capturer::open() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let injector = match X11Injector::open() {
        Ok(i) => i,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    tracing::info!(shm = capturer.uses_shm(), "X display opened");
    let displays = capturer.displays();
    let active = displays
        .iter()
        .find(|d| d.primary)
        .or(displays.first())
        .cloned()
        .unwrap_or_default();
    let (mut tx, mut rx) = conn.split();
    if let Err(e) = tx.send(Payload::AgentHello(hello(&displays))).await {
        return Outcome::Lost(e.to_string());
    }
    let (out_tx, mut out_rx) = mpsc::channel::<Payload>(4);
    let (capture_tx, capture_rx) = std_mpsc::channel();
    let (input_tx, input_rx) = std_mpsc::channel();
    let capture_out = out_tx.clone();
    let spawned = std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || capture_thread(Box::new(capturer), capture_rx, capture_out))
        .and_then(|_| {
            std::thread::Builder::new()
                .name("input".into())
                .spawn(move || input_thread(Box::new(injector), input_rx))
        });
    if let Err(e) = spawned {
        return Outcome::Failed(format!("cannot start a thread: {e}"));
    }
    let mut session = Session {
        tx,
        attended,
        key_file,
        granted: false,
        codec: Codec::RawZstd,
        streaming: false,
        displays,
        active,
        capture: capture_tx,
        input: input_tx,
        clipboard: None,
        chat: None,
        out: out_tx,
        consent: None,
        consent_cancel: Arc::new(AtomicBool::new(false)),
    };
    let outcome = drive(&mut session, &mut rx, &mut out_rx).await;
    session.consent_cancel.store(true, Ordering::Relaxed);
    if outcome == Outcome::ConsentDenied {
        // Let the relay record the refusal before the socket goes away.
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while rx.recv().await.is_ok() {}
        })
        .await;
    }
    let _ = session.tx.close().await;
    outcome
}

async fn drive(
    session: &mut Session,
    rx: &mut guruconnect_client::Receiver,
    out_rx: &mut mpsc::Receiver<Payload>,
) -> Outcome {
    if let Err(o) = session.send(status().await).await {
        return o;
    }
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    status_tick.tick().await;
    let mut ping_tick = tokio::time::interval(PING_EVERY);
    ping_tick.tick().await;
    loop {
        let step = tokio::select! {
            msg = rx.recv() => match msg {
                Ok(Envelope { payload: Some(payload), .. }) => session.handle(payload).await,
                Ok(_) => Ok(Flow::Continue),
                Err(ClientError::Malformed(_)) => {
                    tracing::warn!("ignoring a malformed message from the relay");
                    Ok(Flow::Continue)
                }
                Err(ClientError::Closed { code, reason }) => {
                    Err(Outcome::Lost(format!("closed by the server ({code}: {reason})")))
                }
                Err(e) => Err(Outcome::Lost(e.to_string())),
            },
            Some(payload) = out_rx.recv() => session.send(payload).await.map(|()| Flow::Continue),
            granted = join_consent(&mut session.consent) => session.consent_answer(granted).await,
            _ = status_tick.tick() => session.send(status().await).await.map(|()| Flow::Continue),
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

/// Splits a whole picture into horizontal lossless bands small enough for the relay's
/// message cap even when zstd cannot shrink them. Only the first band carries the
/// keyframe flag, so a viewer waiting for a full picture starts with it and then
/// receives the rest.
fn lossless_bands(
    image: &guruconnect_codec::Image,
    keyframe: bool,
) -> Vec<guruconnect_codec::EncodedFrame> {
    let row_bytes = (image.width as usize).max(1) * 4;
    // Leave generous room for zstd's worst-case expansion and the envelope.
    let rows_per_band = ((MAX_FRAME_BYTES * 3 / 4) / row_bytes).max(1);
    let mut bands = Vec::new();
    let mut y = 0usize;
    let height = image.height as usize;
    while y < height {
        let rows = rows_per_band.min(height - y);
        let band = guruconnect_codec::Image {
            width: image.width,
            height: u32::try_from(rows).unwrap_or(u32::MAX),
            data: image.data[y * row_bytes..(y + rows) * row_bytes].to_vec(),
        };
        let mut encoder = guruconnect_codec::Encoder::new(guruconnect_proto::Codec::RawZstd);
        if let Some(mut part) = encoder.encode(&band, true) {
            let offset = u32::try_from(y).unwrap_or(u32::MAX);
            for rect in &mut part.rects {
                rect.y += offset;
            }
            part.width = image.width;
            part.height = image.height;
            part.keyframe = keyframe && y == 0;
            bands.push(part);
        }
        y += rows;
    }
    bands
}

#[cfg(test)]
mod band_tests {
    use super::*;

    #[test]
    fn incompressible_pictures_split_into_bands_that_decode_exactly() {
        // Pseudo-random noise: zstd cannot compress it below the cap at 1920x1080.
        let (w, h) = (1920u32, 1080u32);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..w * h * 4)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let image = guruconnect_codec::Image {
            width: w,
            height: h,
            data,
        };
        let bands = lossless_bands(&image, true);
        assert!(bands.len() > 1);
        assert!(bands[0].keyframe && bands[1..].iter().all(|b| !b.keyframe));
        let mut decoder = guruconnect_codec::Decoder::new();
        for (i, band) in bands.iter().enumerate() {
            let video = band.to_video_frame(0, i as u64, 0);
            assert!(video.data.len() <= MAX_FRAME_BYTES);
            decoder.decode(&video).expect("band decodes");
        }
        assert_eq!(decoder.image(), &image);
    }
}
