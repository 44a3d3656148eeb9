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
    self, AtomEnum, ConfigureWindowAux, ConnectionExt as _, CreateGCAux, CreateWindowAux,
    EventMask, PropMode, Rectangle, StackMode, Visibility, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::chat::latin1;
pub use crate::platform::ui::{
    END_BUTTON, INDICATOR_HEIGHT as HEIGHT, INDICATOR_TITLE as WINDOW_TITLE,
    INDICATOR_WIDTH as WIDTH, indicator_lines,
};
use crate::platform::ui::{center, inside};
use crate::platform::{PlatformError, PlatformResult, SessionIndicator, Watcher};

/// The property holding the text drawn.
pub const TEXT_PROPERTY: &str = "_GURUCONNECT_TEXT";
/// Least time between two self-raises (two always-on-top windows must not fight).
const RAISE_SPACING: Duration = Duration::from_millis(500);

const WHITE: u32 = 0x00ff_ffff;
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
    id: xproto::Window,
    gc: xproto::Gcontext,
    text_atom: xproto::Atom,
    utf8: xproto::Atom,
    lines: Vec<String>,
    mapped: bool,
    last_raise: Option<Instant>,
}

impl X11Indicator {
    /// Creates the (still hidden) window on `$DISPLAY`.
    pub fn open() -> PlatformResult<Self> {
        let (conn, screen_num) = super::connect()?;
        Self::create(conn, screen_num).map_err(request_error)
    }

    fn create(conn: RustConnection, screen_num: usize) -> anyhow::Result<Self> {
        let screen = conn
            .setup()
            .roots
            .get(screen_num)
            .ok_or_else(|| anyhow::anyhow!("no X screen"))?
            .clone();
        let id = conn.generate_id()?;
        // Top right: clear of the consent prompt (centre) and the chat window (bottom right).
        let x = (i32::from(screen.width_in_pixels) - i32::from(WIDTH) - 20).max(0);
        let y = 20;
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            id,
            screen.root,
            i16::try_from(x)?,
            y,
            WIDTH,
            HEIGHT,
            1,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new()
                .background_pixel(PALE)
                .border_pixel(RED)
                .event_mask(
                    EventMask::EXPOSURE
                        | EventMask::BUTTON_PRESS
                        | EventMask::STRUCTURE_NOTIFY
                        | EventMask::VISIBILITY_CHANGE,
                ),
        )?;
        super::name_window(&conn, id, WINDOW_TITLE)?;
        let intern = |name: &[u8]| -> anyhow::Result<xproto::Atom> {
            Ok(conn.intern_atom(false, name)?.reply()?.atom)
        };
        let (net_wm_state, above, sticky) = (
            intern(b"_NET_WM_STATE")?,
            intern(b"_NET_WM_STATE_ABOVE")?,
            intern(b"_NET_WM_STATE_STICKY")?,
        );
        let (text_atom, utf8) = (intern(TEXT_PROPERTY.as_bytes())?, intern(b"UTF8_STRING")?);
        // Before mapping, so a window manager starts it on top and on every workspace.
        conn.change_property32(
            PropMode::REPLACE,
            id,
            net_wm_state,
            AtomEnum::ATOM,
            &[above, sticky],
        )?;
        // WM_HINTS: flags = InputHint, input = False (never takes the keyboard focus).
        conn.change_property32(
            PropMode::REPLACE,
            id,
            AtomEnum::WM_HINTS,
            AtomEnum::WM_HINTS,
            &[1, 0, 0, 0, 0, 0, 0, 0, 0],
        )?;
        let size_hints: [u32; 18] = {
            let mut h = [0u32; 18];
            h[0] = 1 | 2 | 4 | 8 | 16 | 32; // USPosition | USSize | PPosition | PSize | PMinSize | PMaxSize
            h[1] = u32::try_from(x)?;
            h[2] = u32::try_from(y)?;
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
                .background(PALE)
                .font(font),
        )?;
        conn.flush()?;
        Ok(Self {
            conn,
            id,
            gc,
            text_atom,
            utf8,
            lines: Vec::new(),
            mapped: false,
            last_raise: None,
        })
    }

    fn set_colours(&self, foreground: u32, background: u32) -> anyhow::Result<()> {
        self.conn.change_gc(
            self.gc,
            &xproto::ChangeGCAux::new()
                .foreground(foreground)
                .background(background),
        )?;
        Ok(())
    }

    fn draw(&self) -> anyhow::Result<()> {
        if !self.mapped {
            return Ok(());
        }
        let conn = &self.conn;
        conn.clear_area(false, self.id, 0, 0, 0, 0)?;
        self.set_colours(BLACK, PALE)?;
        for (i, line) in self.lines.iter().enumerate() {
            let y = 24 + 16 * i16::try_from(i)?;
            conn.image_text8(self.id, self.gc, 10, y, &latin1(line))?;
        }
        let (bx, by, bw, bh) = END_BUTTON;
        self.set_colours(RED, RED)?;
        conn.poly_fill_rectangle(
            self.id,
            self.gc,
            &[Rectangle {
                x: bx,
                y: by,
                width: bw,
                height: bh,
            }],
        )?;
        self.set_colours(WHITE, RED)?;
        let label = b"End session";
        let (cx, cy) = center(END_BUTTON);
        let tx = i16::try_from(cx - 3 * i32::try_from(label.len())?)?;
        conn.image_text8(self.id, self.gc, tx, i16::try_from(cy + 4)?, label)?;
        conn.flush()?;
        Ok(())
    }

    fn raise(&mut self) -> anyhow::Result<()> {
        if self.last_raise.is_some_and(|t| t.elapsed() < RAISE_SPACING) {
            return Ok(());
        }
        self.last_raise = Some(Instant::now());
        self.conn.configure_window(
            self.id,
            &ConfigureWindowAux::new().stack_mode(StackMode::ABOVE),
        )?;
        self.conn.flush()?;
        Ok(())
    }

    /// Handles one X event; true when "End session" was clicked.
    fn event(&mut self, event: Event) -> anyhow::Result<bool> {
        match event {
            Event::Expose(e) if e.count == 0 => self.draw()?,
            Event::ButtonPress(e) if e.event == self.id && e.detail == 1 => {
                return Ok(inside(END_BUTTON, e.event_x.into(), e.event_y.into()));
            }
            // Covered by another window: back on top (a window manager honours
            // _NET_WM_STATE_ABOVE itself; without one nobody else does it).
            Event::VisibilityNotify(e)
                if e.window == self.id && e.state != Visibility::UNOBSCURED =>
            {
                self.raise()?;
            }
            Event::UnmapNotify(e) if e.window == self.id => self.mapped = false,
            Event::MapNotify(e) if e.window == self.id => {
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
                self.id,
                self.text_atom,
                self.utf8,
                text.as_bytes(),
            )?;
            self.conn.map_window(self.id)?;
            self.last_raise = None;
            self.raise()?;
            self.draw()
        };
        update().map_err(request_error)
    }

    fn hide(&mut self) -> PlatformResult<()> {
        self.conn.unmap_window(self.id).map_err(request_error)?;
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
        let _ = self.conn.destroy_window(self.id);
        let _ = self.conn.flush();
    }
}
