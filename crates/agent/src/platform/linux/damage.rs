//! Screen-change notifications from the X DAMAGE extension, so that the capture thread
//! captures when something was drawn instead of on a fixed clock.
//!
//! A `Damage` object on the root window (report level `NonEmpty`) sees drawing anywhere on
//! the screen, child windows included (the server keeps damage per screen pixmap and clips
//! it to the root's whole area). The server sends one `DamageNotify` when the damaged region
//! goes from empty to non-empty; we empty it again (`DamageSubtract`) right away, so every
//! burst of drawing gives one notification, and a busy screen at most one per [`MIN_GAP`].
//!
//! The watcher runs on its own thread with its own X connection: it blocks in `poll(2)` on
//! the connection's socket (waking every [`STOP_CHECK`] to see whether it should stop), so
//! it costs nothing while the screen is still.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use x11rb::connection::{Connection as _, RequestConnection as _};
use x11rb::protocol::Event;
use x11rb::protocol::damage::{self, ConnectionExt as _, ReportLevel};
use x11rb::protocol::xfixes::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use crate::platform::{ChangeNotify, ChangeWatch, PlatformError, PlatformResult};

/// How often a waiting watcher checks whether it was stopped.
const STOP_CHECK: Duration = Duration::from_millis(250);
/// Least time between two notifications: a program drawing thousands of times a second
/// gives at most this many wake-ups, and the capture thread paces itself anyway.
const MIN_GAP: Duration = Duration::from_millis(4);

/// Starts watching the screen named by `$DISPLAY`; `notify` runs on the watcher's thread
/// after each change, and returning false stops the watcher. Fails when the server has no
/// DAMAGE 1.1 (or XFixes 2, which it needs).
pub fn watch(mut notify: ChangeNotify) -> PlatformResult<ChangeWatch> {
    let (conn, screen_num) = super::connect()?;
    let unsupported = |what: &str| PlatformError::Unsupported(format!("no {what}"));
    conn.extension_information(damage::X11_EXTENSION_NAME)
        .map_err(|e| PlatformError::Request(e.to_string()))?
        .ok_or_else(|| unsupported("DAMAGE extension"))?;
    // DAMAGE needs XFixes regions; both must be initialised on this connection.
    conn.xfixes_query_version(2, 0)
        .ok()
        .and_then(|c| c.reply().ok())
        .ok_or_else(|| unsupported("XFixes 2"))?;
    conn.damage_query_version(1, 1)
        .ok()
        .and_then(|c| c.reply().ok())
        .ok_or_else(|| unsupported("DAMAGE 1.1"))?;
    let root = conn.setup().roots[screen_num].root;
    let object = conn
        .generate_id()
        .map_err(|e| PlatformError::Request(e.to_string()))?;
    conn.damage_create(object, root, ReportLevel::NON_EMPTY)
        .map_err(|e| PlatformError::Request(e.to_string()))?
        .check()
        .map_err(|e| PlatformError::Request(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("damage".into())
        .spawn(move || {
            if let Err(e) = run(&conn, object, &stopped, &mut notify) {
                tracing::warn!(error = %e, "screen-change watcher stopped");
            }
            let _ = conn.damage_destroy(object);
            let _ = conn.flush();
        })
        .map_err(|e| PlatformError::Request(format!("cannot start a thread: {e}")))?;
    Ok(ChangeWatch::new(stop))
}

fn run(
    conn: &RustConnection,
    object: damage::Damage,
    stop: &AtomicBool,
    notify: &mut ChangeNotify,
) -> Result<(), Box<dyn std::error::Error>> {
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: i64::try_from(STOP_CHECK.as_nanos()).unwrap_or(250_000_000),
    };
    loop {
        let mut changed = false;
        while let Some(event) = conn.poll_for_event()? {
            if let Event::DamageNotify(_) = event {
                changed = true;
            }
        }
        if changed {
            // Empty the region first, so drawing from here on gives the next notification.
            conn.damage_subtract(object, x11rb::NONE, x11rb::NONE)?;
            conn.flush()?;
            if !notify() {
                return Ok(());
            }
            std::thread::sleep(MIN_GAP);
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut fds = [rustix::event::PollFd::new(
            conn.stream(),
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
