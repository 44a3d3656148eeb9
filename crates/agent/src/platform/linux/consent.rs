//! The consent prompt for attended sessions: a plain X11 window, centred on the screen,
//! titled [`WINDOW_TITLE`] (so tests find it with `xdotool search --name`), naming the
//! technician, with an "Allow" and a "Deny" button at the fixed positions
//! [`ALLOW_BUTTON`] and [`DENY_BUTTON`].
//!
//! It fails closed: only a left click on "Allow" grants. Deny, closing the window, the
//! timeout from the request, losing the display, or not being able to open it at all deny.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use guruconnect_proto::ConsentRequest;
use x11rb::connection::Connection as _;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    self, AtomEnum, ConnectionExt as _, CreateGCAux, CreateWindowAux, EventMask, PropMode,
    Rectangle, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use crate::platform::ConsentPrompt;

pub use crate::platform::ui::{
    ALLOW_BUTTON, CONSENT_HEIGHT as HEIGHT, CONSENT_TITLE as WINDOW_TITLE, CONSENT_WIDTH as WIDTH,
    DENY_BUTTON, center,
};
use crate::platform::ui::{CONSENT_TIMEOUT as DEFAULT_TIMEOUT, inside};

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
}

struct Window<'a> {
    conn: &'a RustConnection,
    id: xproto::Window,
    gc: xproto::Gcontext,
    button_gc: xproto::Gcontext,
    lines: Vec<String>,
}

const WHITE: u32 = 0x00ff_ffff;
const BLACK: u32 = 0x0000_0000;
const GREEN: u32 = 0x002e_7d32;
const GREY: u32 = 0x0075_7575;

impl Window<'_> {
    fn draw(&self) -> anyhow::Result<()> {
        let conn = self.conn;
        for (i, line) in self.lines.iter().enumerate() {
            let y = 30 + 22 * i16::try_from(i)?;
            conn.image_text8(self.id, self.gc, 20, y, line.as_bytes())?;
        }
        for (button, colour, label) in [(ALLOW_BUTTON, GREEN, "Allow"), (DENY_BUTTON, GREY, "Deny")]
        {
            conn.change_gc(
                self.button_gc,
                &xproto::ChangeGCAux::new()
                    .foreground(colour)
                    .background(colour),
            )?;
            conn.poly_fill_rectangle(
                self.id,
                self.button_gc,
                &[Rectangle {
                    x: button.0,
                    y: button.1,
                    width: button.2,
                    height: button.3,
                }],
            )?;
            conn.change_gc(
                self.button_gc,
                &xproto::ChangeGCAux::new()
                    .foreground(WHITE)
                    .background(colour),
            )?;
            let (cx, cy) = center(button);
            let tx = i16::try_from(cx - 3 * i32::try_from(label.len())?)?;
            conn.image_text8(
                self.id,
                self.button_gc,
                tx,
                i16::try_from(cy + 4)?,
                label.as_bytes(),
            )?;
        }
        conn.flush()?;
        Ok(())
    }
}

fn prompt(request: &ConsentRequest, cancel: &AtomicBool) -> anyhow::Result<bool> {
    let (conn, screen_num) = super::connect()?;
    let screen = conn
        .setup()
        .roots
        .get(screen_num)
        .ok_or_else(|| anyhow::anyhow!("no X screen"))?
        .clone();
    let id = conn.generate_id()?;
    let x = (i32::from(screen.width_in_pixels) - i32::from(WIDTH)) / 2;
    let y = (i32::from(screen.height_in_pixels) - i32::from(HEIGHT)) / 2;
    conn.create_window(
        x11rb::COPY_DEPTH_FROM_PARENT,
        id,
        screen.root,
        i16::try_from(x.max(0))?,
        i16::try_from(y.max(0))?,
        WIDTH,
        HEIGHT,
        1,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new()
            .background_pixel(WHITE)
            .border_pixel(BLACK)
            .event_mask(
                EventMask::EXPOSURE | EventMask::BUTTON_PRESS | EventMask::STRUCTURE_NOTIFY,
            ),
    )?;
    let super::CloseProtocol {
        wm_protocols,
        wm_delete: _,
    } = super::name_window(&conn, id, WINDOW_TITLE)?;
    // Ask window managers to keep the requested position and size.
    let size_hints: [u32; 18] = {
        let mut h = [0u32; 18];
        h[0] = 1 | 2 | 4 | 8 | 16 | 32; // USPosition | USSize | PPosition | PSize | PMinSize | PMaxSize
        h[1] = u32::try_from(x.max(0))?;
        h[2] = u32::try_from(y.max(0))?;
        h[3] = u32::from(WIDTH);
        h[4] = u32::from(HEIGHT);
        h[5] = u32::from(WIDTH);
        h[6] = u32::from(HEIGHT);
        h[7] = u32::from(WIDTH);
        h[8] = u32::from(HEIGHT);
        h
    };
    conn.change_property32(
        PropMode::REPLACE,
        id,
        AtomEnum::WM_NORMAL_HINTS,
        AtomEnum::WM_SIZE_HINTS,
        &size_hints,
    )?;

    let font = conn.generate_id()?;
    conn.open_font(font, b"fixed")?;
    let gc = conn.generate_id()?;
    conn.create_gc(
        gc,
        id,
        &CreateGCAux::new()
            .foreground(BLACK)
            .background(WHITE)
            .font(font),
    )?;
    let button_gc = conn.generate_id()?;
    conn.create_gc(
        button_gc,
        id,
        &CreateGCAux::new()
            .foreground(WHITE)
            .background(GREEN)
            .font(font),
    )?;
    conn.map_window(id)?;
    conn.flush()?;

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
    let window = Window {
        conn: &conn,
        id,
        gc,
        button_gc,
        lines: vec![
            WINDOW_TITLE.to_owned(),
            format!("{technician}{organization}"),
            "asks to view and control this computer.".to_owned(),
            format!(
                "Allow only if you expect it. (Denies in {} s.)",
                timeout.as_secs()
            ),
        ],
    };
    let deadline = Instant::now() + timeout;
    let answer = loop {
        if cancel.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break false;
        }
        match conn.poll_for_event()? {
            Some(Event::Expose(e)) if e.count == 0 => window.draw()?,
            Some(Event::ButtonPress(e)) if e.detail == 1 => {
                if inside(ALLOW_BUTTON, e.event_x.into(), e.event_y.into()) {
                    break true;
                }
                if inside(DENY_BUTTON, e.event_x.into(), e.event_y.into()) {
                    break false;
                }
            }
            Some(Event::ClientMessage(e)) if e.type_ == wm_protocols => break false,
            Some(Event::DestroyNotify(_)) => break false,
            Some(Event::UnmapNotify(_)) => break false,
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let _ = conn.destroy_window(id);
    let _ = conn.flush();
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
