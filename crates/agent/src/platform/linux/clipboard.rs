//! CLIPBOARD text through `arboard` (which speaks X11 selections with x11rb). The
//! `arboard::Clipboard` must stay alive while it owns the selection, so the session keeps
//! one in a dedicated thread (see `crate::session`).

use crate::platform::{ClipboardAccess, PlatformError, PlatformResult};

/// The X11 CLIPBOARD selection.
pub struct X11Clipboard {
    inner: arboard::Clipboard,
}

impl std::fmt::Debug for X11Clipboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("X11Clipboard")
    }
}

impl X11Clipboard {
    /// Opens the clipboard of `$DISPLAY`.
    pub fn open() -> PlatformResult<Self> {
        arboard::Clipboard::new()
            .map(|inner| Self { inner })
            .map_err(|e| PlatformError::Unsupported(format!("clipboard: {e}")))
    }
}

impl ClipboardAccess for X11Clipboard {
    fn get_text(&mut self) -> Option<String> {
        self.inner.get_text().ok()
    }

    fn set_text(&mut self, text: &str) -> PlatformResult<()> {
        self.inner
            .set_text(text)
            .map_err(|e| PlatformError::Request(format!("clipboard: {e}")))
    }
}
