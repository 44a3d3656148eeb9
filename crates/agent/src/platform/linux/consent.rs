//! The consent prompt for attended sessions: a plain X11 window, centred on the screen,
//! titled [`WINDOW_TITLE`] (so tests find it with `xdotool search --name`), naming the
//! technician, with an "Allow" and a "Deny" button at the fixed positions
//! [`ALLOW_BUTTON`] and [`DENY_BUTTON`].
//!
//! It fails closed: only a left click on "Allow" grants. Deny, closing the window, the
//! timeout from the request, losing the display, or not being able to open it at all deny.
//! The same window, titled [`TRANSFER_TITLE`], asks about each file transfer in a
//! support-code session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use guruconnect_proto::ConsentRequest;
use x11rb::connection::Connection as _;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{ConnectionExt as _, EventMask, Gcontext};
use x11rb::rust_connection::RustConnection;

use super::window::{FixedWindow, Place, Spec, button};
use crate::platform::ConsentPrompt;

pub use crate::platform::ui::TRANSFER_TITLE;
pub use crate::platform::ui::{
    ALLOW_BUTTON, CONSENT_HEIGHT as HEIGHT, CONSENT_TITLE as WINDOW_TITLE, CONSENT_WIDTH as WIDTH,
    DENY_BUTTON, center,
};
use crate::platform::ui::{CONSENT_TIMEOUT as DEFAULT_TIMEOUT, TRANSFER_TIMEOUT, inside};

/// Latin-1-safe, bounded text for core-font drawing.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

/// The X11 consent prompt.
#[derive(Debug, Default, Clone, Copy)]
pub struct X11Consent;

impl ConsentPrompt for X11Consent {
    fn ask(&self, request: &ConsentRequest, cancel: &AtomicBool) -> bool {
        crate::platform::fail_closed(prompt(request, cancel))
    }

    fn asks_transfers(&self) -> bool {
        true
    }

    fn ask_transfer(&self, lines: &[String], cancel: &AtomicBool) -> bool {
        let mut all = vec![TRANSFER_TITLE.to_owned()];
        all.extend(lines.iter().map(|l| printable(l, 60)));
        crate::platform::fail_closed(show(TRANSFER_TITLE, all, TRANSFER_TIMEOUT, cancel))
    }
}

struct Prompt<'a> {
    conn: &'a RustConnection,
    window: FixedWindow,
    button_gc: Gcontext,
    lines: Vec<String>,
}

const WHITE: u32 = 0x00ff_ffff;
const BLACK: u32 = 0x0000_0000;
const GREEN: u32 = 0x002e_7d32;
const GREY: u32 = 0x0075_7575;

impl Prompt<'_> {
    fn draw(&self) -> anyhow::Result<()> {
        let (conn, id) = (self.conn, self.window.id);
        for (i, line) in self.lines.iter().enumerate() {
            let y = 30 + 22 * i16::try_from(i)?;
            conn.image_text8(id, self.window.gc, 20, y, line.as_bytes())?;
        }
        for (rect, colour, label) in [(ALLOW_BUTTON, GREEN, "Allow"), (DENY_BUTTON, GREY, "Deny")] {
            button(conn, id, self.button_gc, rect, colour, label)?;
        }
        conn.flush()?;
        Ok(())
    }
}

fn prompt(request: &ConsentRequest, cancel: &AtomicBool) -> anyhow::Result<bool> {
    let technician = if request.technician.is_empty() {
        "A technician".to_owned()
    } else {
        format!("Technician \"{}\"", printable(&request.technician, 40))
    };
    let organization = if request.organization.is_empty() {
        String::new()
    } else {
        format!(" ({})", printable(&request.organization, 30))
    };
    let timeout = match request.timeout_seconds {
        0 => DEFAULT_TIMEOUT,
        s => Duration::from_secs(u64::from(s.clamp(1, 600))),
    };
    let lines = vec![
        WINDOW_TITLE.to_owned(),
        format!("{technician}{organization}"),
        "asks to view and control this computer.".to_owned(),
        format!(
            "Allow only if you expect it. (Denies in {} s.)",
            timeout.as_secs()
        ),
    ];
    show(WINDOW_TITLE, lines, timeout, cancel)
}

/// Shows the prompt window titled `title` with `lines` and waits for a click on Allow.
fn show(
    title: &str,
    lines: Vec<String>,
    timeout: Duration,
    cancel: &AtomicBool,
) -> anyhow::Result<bool> {
    let (conn, screen_num) = super::connect()?;
    let window = FixedWindow::create(
        &conn,
        screen_num,
        &Spec {
            title,
            width: WIDTH,
            height: HEIGHT,
            place: Place::Centre,
            foreground: BLACK,
            background: WHITE,
            border: BLACK,
            extra_events: EventMask::NO_EVENT,
            takes_focus: None,
            keep_above: false,
        },
    )?;
    let button_gc = window.create_gc(&conn, WHITE, GREEN)?;
    conn.map_window(window.id)?;
    conn.flush()?;
    let view = Prompt {
        conn: &conn,
        window,
        button_gc,
        lines,
    };
    let deadline = Instant::now() + timeout;
    let answer = loop {
        if cancel.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break false;
        }
        match conn.poll_for_event()? {
            Some(Event::Expose(e)) if e.count == 0 => view.draw()?,
            Some(Event::ButtonPress(e)) if e.detail == 1 => {
                if inside(ALLOW_BUTTON, e.event_x.into(), e.event_y.into()) {
                    break true;
                }
                if inside(DENY_BUTTON, e.event_x.into(), e.event_y.into()) {
                    break false;
                }
            }
            // Any close request denies (fail closed).
            Some(Event::ClientMessage(e)) if e.type_ == view.window.close.wm_protocols => {
                break false;
            }
            Some(Event::DestroyNotify(_)) => break false,
            Some(Event::UnmapNotify(_)) => break false,
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    view.window.destroy(&conn);
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buttons_do_not_overlap_and_fit_the_window() {
        let (ax, _) = center(ALLOW_BUTTON);
        let (dx, _) = center(DENY_BUTTON);
        assert!(inside(ALLOW_BUTTON, 71, 131));
        assert!(!inside(DENY_BUTTON, 71, 131));
        assert!(ax < dx);
        for b in [ALLOW_BUTTON, DENY_BUTTON] {
            assert!(i32::from(b.0) + i32::from(b.2) <= i32::from(WIDTH));
            assert!(i32::from(b.1) + i32::from(b.3) <= i32::from(HEIGHT));
        }
    }

    #[test]
    fn text_is_sanitised() {
        assert_eq!(printable("héllo\n", 10), "h?llo?");
        assert_eq!(printable("abcdef", 3), "abc");
    }
}
