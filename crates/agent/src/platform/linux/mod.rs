//! Linux desktop support over X11 (x11rb, pure Rust): MIT-SHM capture with a GetImage
//! fallback, RandR monitors, XFixes cursor, XTest input, an X11 consent window, an X11 chat
//! window, CLIPBOARD text, and inventory from `/proc`, `/sys` and `/etc`.
//!
//! Wayland sessions are not supported (XWayland would show only X clients).

pub mod capture;
pub mod chat;
pub mod clipboard;
pub mod consent;
pub mod input;
pub mod inventory;
pub mod keymap;
pub mod machine_uid;

use super::{PlatformError, PlatformResult};
use x11rb::rust_connection::RustConnection;

/// Opens the X display named by `$DISPLAY`.
pub fn connect() -> PlatformResult<(RustConnection, usize)> {
    x11rb::connect(None).map_err(|e| PlatformError::NoDisplay {
        display: std::env::var("DISPLAY").unwrap_or_else(|_| "(DISPLAY is not set)".into()),
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
