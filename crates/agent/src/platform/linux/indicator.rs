//! The session indicator: a small X11 window in the top-right corner, titled
//! [`WINDOW_TITLE`] (tests find it with `xdotool search --name`), in the style of the
//! consent prompt. It says that remote support is active, lists who is connected and
//! whether they control or only watch ([`indicator_lines`]), and has an "End session"
//! button at [`END_BUTTON`].
//!
//! It stays on top: it asks window managers for `_NET_WM_STATE_ABOVE`, and without one it
//! raises itself when another window covers it. It never takes the keyboard focus. A
//! window manager's close is ignored: the window stays while the session is active, and
//! ending the session is the button's job. The text drawn is also kept in the `_GURUCONNECT_TEXT` property (UTF-8,
//! one line each) so tests and assistive tools can read what the person sees.

use std::time::{Duration, Instant};

use x11rb::connection::Connection as _;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    self, ConfigureWindowAux, ConnectionExt as _, EventMask, PropMode, StackMode, Visibility,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::chat::latin1;
use super::window::{self, FixedWindow, Place, Spec, button, set_colours};
use crate::platform::ui::inside;
pub use crate::platform::ui::{
    END_BUTTON, INDICATOR_HEIGHT as HEIGHT, INDICATOR_TITLE as WINDOW_TITLE,
    INDICATOR_WIDTH as WIDTH, indicator_lines,
};
use crate::platform::{PlatformError, PlatformResult, SessionIndicator, Watcher};

/// The property holding the text drawn.
pub const TEXT_PROPERTY: &str = "_GURUCONNECT_TEXT";
/// Least time between two self-raises (two always-on-top windows must not fight).
const RAISE_SPACING: Duration = Duration::from_millis(500);

const BLACK: u32 = 0x0000_0000;
const RED: u32 = 0x00c6_2828;
const PALE: u32 = 0x00ff_f3e0;

fn request_error(e: impl std::fmt::Display) -> PlatformError {
    PlatformError::Request(e.to_string())
}

/// The X11 session indicator.
#[derive(Debug)]
pub struct X11Indicator {
    conn: RustConnection,
    window: FixedWindow,
    text_atom: xproto::Atom,
    utf8: xproto::Atom,
    lines: Vec<String>,
    mapped: bool,
    last_raise: Option<Instant>,
}

impl X11Indicator {
    /// Creates the (still hidden) window on `$DISPLAY`.
    pub fn open() -> PlatformResult<Self> {
        let (conn, window) = FixedWindow::open(&Spec {
            title: WINDOW_TITLE,
            width: WIDTH,
            height: HEIGHT,
            // Top right: clear of the consent prompt (centre) and the chat window (bottom
            // right).
            place: Place::TopRight { right: 20, top: 20 },
            foreground: BLACK,
            background: PALE,
            border: RED,
            extra_events: EventMask::VISIBILITY_CHANGE,
            // Never takes the keyboard focus.
            takes_focus: Some(false),
            keep_above: true,
        })?;
        let intern = |name: &[u8]| window::intern(&conn, name).map_err(request_error);
        let (text_atom, utf8) = (intern(TEXT_PROPERTY.as_bytes())?, intern(b"UTF8_STRING")?);
        Ok(Self {
            conn,
            window,
            text_atom,
            utf8,
            lines: Vec::new(),
            mapped: false,
            last_raise: None,
        })
    }

    fn draw(&self) -> anyhow::Result<()> {
        if !self.mapped {
            return Ok(());
        }
        let conn = &self.conn;
        conn.clear_area(false, self.window.id, 0, 0, 0, 0)?;
        set_colours(conn, self.window.gc, BLACK, PALE)?;
        for (i, line) in self.lines.iter().enumerate() {
            let y = 24 + 16 * i16::try_from(i)?;
            conn.image_text8(self.window.id, self.window.gc, 10, y, &latin1(line))?;
        }
        button(
            conn,
            self.window.id,
            self.window.gc,
            END_BUTTON,
            RED,
            "End session",
        )?;
        conn.flush()?;
        Ok(())
    }

    fn raise(&mut self) -> anyhow::Result<()> {
        if self.last_raise.is_some_and(|t| t.elapsed() < RAISE_SPACING) {
            return Ok(());
        }
        self.last_raise = Some(Instant::now());
        self.conn.configure_window(
            self.window.id,
            &ConfigureWindowAux::new().stack_mode(StackMode::ABOVE),
        )?;
        self.conn.flush()?;
        Ok(())
    }

    /// Handles one X event; true when "End session" was clicked.
    fn event(&mut self, event: Event) -> anyhow::Result<bool> {
        match event {
            Event::Expose(e) if e.count == 0 => self.draw()?,
            Event::ButtonPress(e) if e.event == self.window.id && e.detail == 1 => {
                return Ok(inside(END_BUTTON, e.event_x.into(), e.event_y.into()));
            }
            // Covered by another window: back on top (a window manager honours
            // _NET_WM_STATE_ABOVE itself; without one nobody else does it).
            Event::VisibilityNotify(e)
                if e.window == self.window.id && e.state != Visibility::UNOBSCURED =>
            {
                self.raise()?;
            }
            Event::UnmapNotify(e) if e.window == self.window.id => self.mapped = false,
            Event::MapNotify(e) if e.window == self.window.id => {
                self.mapped = true;
                self.draw()?;
            }
            _ => {}
        }
        Ok(false)
    }
}

impl SessionIndicator for X11Indicator {
    fn show(&mut self, watchers: &[Watcher]) -> PlatformResult<()> {
        self.lines = indicator_lines(watchers);
        let text = self.lines.join("\n");
        let mut update = || -> anyhow::Result<()> {
            self.conn.change_property8(
                PropMode::REPLACE,
                self.window.id,
                self.text_atom,
                self.utf8,
                text.as_bytes(),
            )?;
            self.conn.map_window(self.window.id)?;
            self.last_raise = None;
            self.raise()?;
            self.draw()
        };
        update().map_err(request_error)
    }

    fn hide(&mut self) -> PlatformResult<()> {
        self.conn
            .unmap_window(self.window.id)
            .map_err(request_error)?;
        self.conn.flush().map_err(request_error)?;
        Ok(())
    }

    fn end_clicked(&mut self) -> PlatformResult<bool> {
        let mut clicked = false;
        while let Some(event) = self.conn.poll_for_event().map_err(request_error)? {
            clicked |= self.event(event).map_err(request_error)?;
        }
        Ok(clicked)
    }
}

impl Drop for X11Indicator {
    fn drop(&mut self) {
        self.window.destroy(&self.conn);
    }
}
