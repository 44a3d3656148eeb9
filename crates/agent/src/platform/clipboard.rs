//! Clipboard text through `arboard`, the same on every platform: X11 selections (with
//! x11rb) on Linux, `OpenClipboard`/`CF_UNICODETEXT` (clipboard-win) on Windows. The
//! `arboard::Clipboard` must stay alive while it owns the X selection, so the session keeps
//! one in a dedicated thread (see `crate::session`).

use crate::platform::{ClipboardAccess, PlatformError, PlatformResult};

/// The desktop's clipboard (text).
pub struct TextClipboard {
    inner: arboard::Clipboard,
}

impl std::fmt::Debug for TextClipboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the content.
        f.write_str("TextClipboard")
    }
}

impl TextClipboard {
    /// Opens the clipboard of the current desktop (`$DISPLAY` on X11).
    pub fn open() -> PlatformResult<Self> {
        arboard::Clipboard::new()
            .map(|inner| Self { inner })
            .map_err(|e| PlatformError::Unsupported(format!("clipboard: {e}")))
    }
}

impl ClipboardAccess for TextClipboard {
    fn get_text(&mut self) -> Option<String> {
        self.inner.get_text().ok()
    }

    fn set_text(&mut self, text: &str) -> PlatformResult<()> {
        self.inner
            .set_text(text)
            .map_err(|e| PlatformError::Request(format!("clipboard: {e}")))
    }
}

// Under Wine (scripts/windows/test.sh); on Linux the end-to-end tests cover it on Xvfb.
#[cfg(all(test, windows))]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        let mut clipboard = TextClipboard::open().expect("open");
        clipboard.set_text("GuruConnect ✓ clipboard").expect("set");
        assert_eq!(
            clipboard.get_text().as_deref(),
            Some("GuruConnect ✓ clipboard")
        );
        // A second handle sees the same clipboard.
        let mut other = TextClipboard::open().expect("open");
        assert_eq!(other.get_text().as_deref(), Some("GuruConnect ✓ clipboard"));
    }
}
