//! The platform layer: everything that touches the operating system's desktop sits behind
//! the small traits here, so the session loop is platform-neutral and other systems can be
//! added beside [`linux`].
//!
//! Status: Linux/X11 is implemented and verified end to end (`tests/e2e_x11.rs`). Wayland,
//! Windows and macOS are not implemented.

use guruconnect_codec::Image;
use guruconnect_proto::{ConsentRequest, DisplayInfo, KeyEvent, MouseEvent, SpecialKeyKind};

#[cfg(target_os = "linux")]
pub mod linux;

/// Why a platform operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The desktop session cannot be reached (no display, refused connection).
    #[error("cannot open the X display {display:?}: {reason}")]
    NoDisplay {
        /// The display that was tried (`$DISPLAY`).
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
    /// The monitors, in a stable order; ids are indices.
    fn displays(&self) -> Vec<DisplayInfo>;
    /// Captures one monitor as BGRA.
    fn capture(&mut self, display: &DisplayInfo) -> PlatformResult<Image>;
    /// The pointer relative to `display`.
    fn cursor(&mut self, display: &DisplayInfo) -> PlatformResult<CursorState>;
    /// The current cursor image (called when the serial changed).
    fn cursor_image(&mut self) -> PlatformResult<Option<CursorImage>>;
}

/// Synthetic input. Implementations validate everything: an event that does not make
/// sense (unknown action or key, coordinates off the display) is ignored, never injected.
pub trait Injector: Send {
    /// A mouse event in `display`'s coordinates.
    fn mouse(&mut self, event: &MouseEvent, display: &DisplayInfo) -> PlatformResult<()>;
    /// A key press or release by scancode.
    fn key(&mut self, event: &KeyEvent) -> PlatformResult<()>;
    /// A key combination the viewer cannot type itself.
    fn special(&mut self, kind: SpecialKeyKind) -> PlatformResult<()>;
    /// Releases every key and button this injector holds down.
    fn release_all(&mut self) -> PlatformResult<()>;
}

/// The attended-session consent prompt.
pub trait ConsentPrompt: Send {
    /// Shows the prompt and blocks until the user answers; anything but an explicit
    /// "allow" (deny, closing, timeout, an error, `cancel` becoming true) is `false`.
    fn ask(&self, request: &ConsentRequest, cancel: &std::sync::atomic::AtomicBool) -> bool;
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
