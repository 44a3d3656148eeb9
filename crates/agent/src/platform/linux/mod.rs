//! Linux desktop support over X11 (x11rb, pure Rust): MIT-SHM capture with a GetImage
//! fallback, RandR monitors, XFixes cursor, XTest input, an X11 consent window, an X11 chat
//! window, the session indicator (the three built on [`window::FixedWindow`]), CLIPBOARD
//! text, and inventory from `/proc`, `/sys` and `/etc`.
//!
//! Wayland sessions are not supported (XWayland would show only X clients).

pub mod capture;
pub mod chars;
pub mod chat;
pub mod consent;
pub mod damage;
pub mod indicator;
pub mod input;
pub mod inventory;
pub mod keymap;
pub mod machine_uid;
pub mod window;

use super::{
    Capturer, ChatWindow, ClipboardAccess, ConsentPrompt, Desktop, Identity, Injector,
    PlatformError, PlatformResult, SessionIndicator,
};
use x11rb::rust_connection::RustConnection;

/// The X11 desktop named by `$DISPLAY`.
#[derive(Debug, Default, Clone, Copy)]
pub struct X11Desktop;

impl Desktop for X11Desktop {
    fn check(&self) -> PlatformResult<()> {
        check_display()
    }

    fn capturer(&self) -> PlatformResult<Box<dyn Capturer>> {
        Ok(Box::new(capture::X11Capturer::open()?))
    }

    fn injector(&self) -> PlatformResult<Box<dyn Injector>> {
        Ok(Box::new(input::X11Injector::open()?))
    }

    fn consent(&self) -> Box<dyn ConsentPrompt> {
        Box::new(consent::X11Consent)
    }

    fn clipboard(&self) -> PlatformResult<Box<dyn ClipboardAccess>> {
        Ok(Box::new(crate::platform::clipboard::TextClipboard::open()?))
    }

    fn chat(&self) -> PlatformResult<Box<dyn ChatWindow>> {
        Ok(Box::new(chat::X11Chat::open()?))
    }

    fn indicator(&self) -> PlatformResult<Box<dyn SessionIndicator>> {
        Ok(Box::new(indicator::X11Indicator::open()?))
    }

    fn identity(&self) -> Identity {
        Identity {
            machine_uid: machine_uid::machine_uid(),
            hostname: inventory::hostname(),
            os: "linux",
            os_version: inventory::os_version(),
        }
    }

    fn inventory(&self) -> guruconnect_proto::AgentStatus {
        inventory::collect(idle_seconds())
    }

    fn local_user(&self) -> String {
        ["USER", "LOGNAME"]
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .map(|name| name.trim().chars().take(64).collect::<String>())
            .find(|name| !name.is_empty())
            .unwrap_or_else(|| "user".into())
    }
}

/// Opens the X display named by `$DISPLAY`.
pub fn connect() -> PlatformResult<(RustConnection, usize)> {
    x11rb::connect(None).map_err(|e| PlatformError::NoDisplay {
        display: format!(
            "X display {:?}",
            std::env::var("DISPLAY").unwrap_or_else(|_| "(DISPLAY is not set)".into())
        ),
        reason: e.to_string(),
    })
}

/// Checks that the X display can be opened (start-up check, before any credential is used).
pub fn check_display() -> PlatformResult<()> {
    connect().map(|_| ())
}

/// Seconds since the last user input, from the MIT-SCREEN-SAVER extension (0 when it is
/// unavailable).
pub fn idle_seconds() -> u64 {
    use x11rb::connection::Connection as _;
    use x11rb::protocol::screensaver::ConnectionExt as _;
    let Ok((conn, screen)) = connect() else {
        return 0;
    };
    let Some(root) = conn.setup().roots.get(screen).map(|s| s.root) else {
        return 0;
    };
    conn.screensaver_query_info(root)
        .ok()
        .and_then(|c| c.reply().ok())
        .map_or(0, |r| u64::from(r.ms_since_user_input) / 1000)
}
