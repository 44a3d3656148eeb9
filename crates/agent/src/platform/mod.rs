//! The platform layer: everything that touches the operating system's desktop sits behind
//! one seam, [`Desktop`], a factory for the small traits here (capture, input, consent,
//! clipboard, chat, session indicator) plus the machine's identity and inventory. The
//! session loop (`crate::session`) only sees these traits; [`native`] picks the
//! implementation for the system the agent was built for.
//!
//! Status:
//! - `linux` (X11): implemented and verified end to end (`tests/e2e_x11.rs`).
//! - `windows`: GDI capture, `SendInput`, the consent and chat windows, clipboard, monitors,
//!   identity and inventory are exercised under Wine on Xvfb (`tests/e2e_wine.rs`); DXGI
//!   Desktop Duplication, `SendSAS`, the secure desktop and session 0 are unverified on real
//!   Windows (see that module's doc).
//!   The session indicator (who is connected, "End session") is not implemented there yet:
//!   [`Desktop::indicator`]'s default refuses and the session goes on without it.
//! - Wayland and macOS are not implemented.
//!
//! [`ui`] holds the window layout both implementations draw, so tests click the same spots.

use guruconnect_codec::Image;
use guruconnect_proto::{
    AgentStatus, ConsentRequest, DisplayInfo, KeyEvent, KeyInputMode, MouseEvent, SpecialKeyKind,
};

pub mod clipboard;
#[cfg(target_os = "linux")]
pub mod linux;
pub mod net;
pub mod ui;
pub mod uid;
#[cfg(windows)]
pub mod windows;

/// Why a platform operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The desktop session cannot be reached (no display, refused connection, no
    /// interactive desktop).
    #[error("cannot open the {display}: {reason}")]
    NoDisplay {
        /// The desktop that was tried, named for people (`X display ":0"`, `interactive
        /// desktop WinSta0\Default`).
        display: String,
        /// What went wrong.
        reason: String,
    },
    /// A required capability is missing (an extension, a pixel format).
    #[error("unsupported desktop: {0}")]
    Unsupported(String),
    /// A request to the desktop failed.
    #[error("desktop request failed: {0}")]
    Request(String),
}

/// Result alias for platform calls.
pub type PlatformResult<T> = Result<T, PlatformError>;

/// The pointer, relative to the display being captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorState {
    /// Column in display pixels.
    pub x: i32,
    /// Row in display pixels.
    pub y: i32,
    /// Whether the pointer is over this display.
    pub visible: bool,
    /// Changes whenever the cursor image changes.
    pub serial: u32,
}

/// A cursor image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Hot spot column.
    pub hot_x: u32,
    /// Hot spot row.
    pub hot_y: u32,
    /// RGBA pixels (straight alpha).
    pub rgba: Vec<u8>,
    /// Serial of this image.
    pub serial: u32,
}

/// Screen capture of one desktop.
pub trait Capturer: Send {
    /// Which capture path is in use (`"shm"`, `"getimage"`, `"dxgi"`, `"gdi"`), for the log.
    fn backend(&self) -> &'static str;
    /// The monitors, in a stable order; ids are indices.
    fn displays(&self) -> Vec<DisplayInfo>;
    /// Captures one monitor as BGRA.
    fn capture(&mut self, display: &DisplayInfo) -> PlatformResult<Image>;
    /// The pointer relative to `display`.
    fn cursor(&mut self, display: &DisplayInfo) -> PlatformResult<CursorState>;
    /// The current cursor image (called when the serial changed).
    fn cursor_image(&mut self) -> PlatformResult<Option<CursorImage>>;
    /// Takes back a captured picture the session is done with, to capture into next.
    fn recycle(&mut self, image: Image) {
        let _ = image;
    }
    /// Starts telling `notify` (on a thread of its own) soon after anything on the screen
    /// was drawn; `notify` returns false to stop. `None`: this desktop cannot tell, and the
    /// session captures on its frame clock alone.
    fn watch_changes(&mut self, notify: ChangeNotify) -> Option<ChangeWatch> {
        let _ = notify;
        None
    }
}

/// Called after each change of the screen; returns false to stop watching.
pub type ChangeNotify = Box<dyn FnMut() -> bool + Send>;

/// A running screen-change watcher ([`Capturer::watch_changes`]); dropping it stops the
/// watcher.
#[derive(Debug)]
pub struct ChangeWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ChangeWatch {
    /// A watcher that stops once `stop` is set.
    pub fn new(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self { stop }
    }
}

impl Drop for ChangeWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Synthetic input. Implementations validate everything: an event that does not make
/// sense (unknown action or key, coordinates off the display) is ignored, never injected.
pub trait Injector: Send {
    /// A mouse event in `display`'s coordinates.
    fn mouse(&mut self, event: &MouseEvent, display: &DisplayInfo) -> PlatformResult<()>;
    /// A key press or release: by character when [`typed_char`] says so (the press types
    /// the character, the release is dropped), otherwise by scancode.
    fn key(&mut self, event: &KeyEvent) -> PlatformResult<()>;
    /// A key combination the viewer cannot type itself. An error is shown to the viewer
    /// (e.g. Ctrl+Alt+Del refused by policy).
    fn special(&mut self, kind: SpecialKeyKind) -> PlatformResult<()>;
    /// Types `text` as characters, whatever the keyboard layout (the viewer's "type text").
    fn text(&mut self, text: &str) -> PlatformResult<()> {
        let _ = text;
        Err(PlatformError::Unsupported(
            "typing text is not supported on this desktop yet".into(),
        ))
    }
    /// Releases every key and button this injector holds down.
    fn release_all(&mut self) -> PlatformResult<()>;
}

/// The character a key event should type, when it goes by character: the viewer is not in
/// by-position mode, the key produced exactly one printable character, and no Ctrl, Alt or
/// Meta is held (those make it a shortcut, which goes by position).
pub fn typed_char(event: &KeyEvent) -> Option<char> {
    if event.mode == KeyInputMode::ByPosition as i32 {
        return None;
    }
    let mut chars = event.text.chars();
    let c = chars.next()?;
    if chars.next().is_some() || c.is_control() {
        return None;
    }
    let shortcut = event
        .modifiers
        .as_ref()
        .is_some_and(|m| m.ctrl || m.alt || m.meta);
    (!shortcut).then_some(c)
}

/// The attended-session consent prompt.
pub trait ConsentPrompt: Send + Sync {
    /// Shows the prompt and blocks until the user answers; anything but an explicit
    /// "allow" (deny, closing, timeout, an error, `cancel` becoming true) is `false`.
    fn ask(&self, request: &ConsentRequest, cancel: &std::sync::atomic::AtomicBool) -> bool;

    /// Whether this platform can ask about single file transfers (the agent then offers
    /// transfers in support-code sessions).
    fn asks_transfers(&self) -> bool {
        false
    }

    /// Asks the person at the machine to allow one file transfer; `lines` say what. The
    /// same rules as [`ConsentPrompt::ask`]; where there is no such prompt, refuses.
    fn ask_transfer(&self, _lines: &[String], _cancel: &std::sync::atomic::AtomicBool) -> bool {
        false
    }
}

/// The answer of a consent prompt that failed closed: only an explicit "allow" grants; a
/// prompt that could not be shown, or broke, denies (and says why in the log).
pub fn fail_closed<E: std::fmt::Display>(answer: Result<bool, E>) -> bool {
    answer.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the consent prompt failed; denying");
        false
    })
}

/// The desktop clipboard (text).
pub trait ClipboardAccess: Send {
    /// The clipboard text, if there is text.
    fn get_text(&mut self) -> Option<String>;
    /// Replaces the clipboard text.
    fn set_text(&mut self, text: &str) -> PlatformResult<()>;
}

/// The chat window of the person at the machine: technicians' messages are shown there and
/// the person's replies come back from it.
pub trait ChatWindow: Send {
    /// Shows an incoming message (showing the window again if it was closed).
    fn show(&mut self, from: &str, text: &str) -> PlatformResult<()>;
    /// Handles pending window events; returns the replies the person sent since the last call.
    fn replies(&mut self) -> PlatformResult<Vec<String>>;
}

/// A technician in the session, as the person at the machine is told about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// The technician's user name.
    pub name: String,
    /// Whether they may control the machine (otherwise they only watch).
    pub control: bool,
}

/// The always-on-top window that tells the person at the machine a session is active, who
/// is connected and how, with an "End session" button (layout in [`ui`]).
pub trait SessionIndicator: Send {
    /// Shows (and raises) the window listing `watchers`, replacing the previous list.
    fn show(&mut self, watchers: &[Watcher]) -> PlatformResult<()>;
    /// Hides the window.
    fn hide(&mut self) -> PlatformResult<()>;
    /// Handles pending window events; true when "End session" was clicked since the last
    /// call.
    fn end_clicked(&mut self) -> PlatformResult<bool>;
}

/// Who this machine is: what the agent says in its hello and at enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable hardware-derived id (see each platform's `machine_uid`).
    pub machine_uid: String,
    /// Host name.
    pub hostname: String,
    /// Operating system family: `"linux"` or `"windows"`.
    pub os: &'static str,
    /// Human-readable OS name and version ("Debian GNU/Linux 12", "Windows 10 Pro 22H2
    /// (build 19045)").
    pub os_version: String,
}

/// One operating system's desktop: the factory the session uses for everything it does on
/// the machine. Methods that open something are called on the thread that will use it
/// (desktop APIs such as Win32 windows and X11 connections are thread-affine).
pub trait Desktop: Send + Sync + 'static {
    /// Checks that the interactive desktop can be reached; run at start-up, before any
    /// credential is used, so a support code is never burned by an agent that cannot ask.
    fn check(&self) -> PlatformResult<()>;
    /// Opens screen capture.
    fn capturer(&self) -> PlatformResult<Box<dyn Capturer>>;
    /// Opens input injection.
    fn injector(&self) -> PlatformResult<Box<dyn Injector>>;
    /// The consent prompt (fails closed where none can be shown).
    fn consent(&self) -> Box<dyn ConsentPrompt>;
    /// Opens the clipboard.
    fn clipboard(&self) -> PlatformResult<Box<dyn ClipboardAccess>>;
    /// Opens the chat window (hidden until the first message is shown).
    fn chat(&self) -> PlatformResult<Box<dyn ChatWindow>>;
    /// Opens the session indicator (hidden until shown). Where none is implemented the
    /// session goes on without one (and says so in the log).
    fn indicator(&self) -> PlatformResult<Box<dyn SessionIndicator>> {
        Err(PlatformError::Unsupported(
            "the session indicator is not implemented on this desktop".into(),
        ))
    }
    /// This machine's identity.
    fn identity(&self) -> Identity;
    /// Status and inventory (blocking: it may read files and query the system).
    fn inventory(&self) -> AgentStatus;
    /// The name the person at the machine chats under.
    fn local_user(&self) -> String;
}

/// The desktop of the system this agent was built for.
#[cfg(target_os = "linux")]
pub fn native() -> std::sync::Arc<dyn Desktop> {
    std::sync::Arc::new(linux::X11Desktop)
}

/// The desktop of the system this agent was built for.
#[cfg(windows)]
pub fn native() -> std::sync::Arc<dyn Desktop> {
    std::sync::Arc::new(windows::WindowsDesktop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guruconnect_proto::Modifiers;

    fn key(text: &str, mode: KeyInputMode, modifiers: Modifiers) -> KeyEvent {
        KeyEvent {
            scancode: 0x15,
            down: true,
            text: text.into(),
            mode: mode as i32,
            modifiers: Some(modifiers),
            ..KeyEvent::default()
        }
    }

    #[test]
    fn text_goes_by_character_and_shortcuts_by_position() {
        let none = Modifiers::default;
        let shift = Modifiers {
            shift: true,
            ..Modifiers::default()
        };
        let ctrl = Modifiers {
            ctrl: true,
            ..Modifiers::default()
        };
        assert_eq!(
            typed_char(&key("y", KeyInputMode::Unspecified, none())),
            Some('y')
        );
        assert_eq!(
            typed_char(&key("Y", KeyInputMode::ByCharacter, shift)),
            Some('Y')
        );
        assert_eq!(
            typed_char(&key("€", KeyInputMode::ByCharacter, none())),
            Some('€')
        );
        assert_eq!(
            typed_char(&key("y", KeyInputMode::ByPosition, none())),
            None
        );
        assert_eq!(typed_char(&key("y", KeyInputMode::ByCharacter, ctrl)), None);
        assert_eq!(
            typed_char(&key("", KeyInputMode::ByCharacter, none())),
            None
        );
        assert_eq!(
            typed_char(&key("Enter", KeyInputMode::ByCharacter, none())),
            None
        );
        assert_eq!(
            typed_char(&key("\r", KeyInputMode::ByCharacter, none())),
            None
        );
        // An old viewer: no text, no mode.
        assert_eq!(typed_char(&KeyEvent::default()), None);
    }
}
