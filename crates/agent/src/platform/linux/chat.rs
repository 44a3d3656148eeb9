//! The chat window: a plain X11 window titled [`WINDOW_TITLE`] (so tests find it with
//! `xdotool search --name`), in the style of the consent prompt.
//!
//! It lists the last messages as `from: text` lines (sanitised to Latin-1 and wrapped) and
//! has a one-line reply field at the bottom. Clicking the window gives it the keyboard focus
//! (it never takes the focus by itself, so it does not steal the keys of whoever is typing);
//! the user types there, BackSpace deletes, Escape clears the field and Return sends it.
//! Closing the window only hides it: the next incoming message shows it again.
//!
//! The window is created when the first message arrives (the session starts the chat thread
//! lazily) and is destroyed with its X connection when the session's chat thread ends.

use std::collections::VecDeque;

use x11rb::connection::Connection as _;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    ConfigureWindowAux, ConnectionExt as _, EventMask, InputFocus, KeyButMask, Mapping, Rectangle,
    StackMode,
};
use x11rb::rust_connection::RustConnection;

use super::window::{FixedWindow, Place, Spec, set_colours};
use crate::platform::{ChatWindow, PlatformError, PlatformResult};

pub use crate::platform::ui::{
    CHAT_HEIGHT as HEIGHT, CHAT_TITLE as WINDOW_TITLE, CHAT_WIDTH as WIDTH,
    MAX_CHAT_TEXT as MAX_TEXT, REPLY_FIELD, truncate,
};
/// Messages kept for display.
const MAX_HISTORY: usize = 50;
/// Lines one message may take on screen (the rest is cut).
const MAX_LINES_PER_MESSAGE: usize = 8;
/// Width and height of a character of the `fixed` core font (6x13).
const CHAR_W: i16 = 6;
/// Distance between two text lines.
const LINE_H: i16 = 15;
/// Top of the history's first baseline.
const TOP: i16 = 22;
/// Left margin.
const LEFT: i16 = 10;

const WHITE: u32 = 0x00ff_ffff;
const BLACK: u32 = 0x0000_0000;
const GREY: u32 = 0x0075_7575;
const FIELD: u32 = 0x00ee_eeee;

/// Characters that fit on one history line.
fn columns() -> usize {
    usize::try_from((i16::try_from(WIDTH).unwrap_or(i16::MAX) - 2 * LEFT) / CHAR_W).unwrap_or(1)
}

/// History lines that fit above the reply field.
fn rows() -> usize {
    usize::try_from((REPLY_FIELD.1 - 6 - TOP) / LINE_H + 1).unwrap_or(1)
}

/// Text the core font can draw: Latin-1 bytes, control and other characters replaced.
pub fn latin1(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match u32::from(c) {
            0x20..=0x7e | 0xa0..=0xff => u8::try_from(u32::from(c)).unwrap_or(b'?'),
            // Tabs and line breaks read as spaces; everything else is visibly replaced.
            0x09 | 0x0a | 0x0d => b' ',
            _ => b'?',
        })
        .collect()
}

/// Wraps `line` to `width` columns (at a space when there is one), at most `max` lines.
pub fn wrap(line: &[u8], width: usize, max: usize) -> Vec<Vec<u8>> {
    let width = width.max(1);
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() && out.len() < max {
        if rest.len() <= width {
            out.push(rest.to_vec());
            break;
        }
        let cut = rest[..=width]
            .iter()
            .rposition(|&b| b == b' ')
            .filter(|&i| i > 0)
            .unwrap_or(width);
        out.push(rest[..cut].to_vec());
        rest = &rest[cut..];
        while rest.first() == Some(&b' ') {
            rest = &rest[1..];
        }
    }
    out
}

/// What a key press does to the reply field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    /// Append a character.
    Insert(char),
    /// Delete the last character.
    Backspace,
    /// Send the field.
    Send,
    /// Clear the field.
    Clear,
    /// Nothing.
    Ignore,
}

/// The action of a keysym.
pub fn key_action(keysym: u32) -> KeyAction {
    match keysym {
        0xff08 => KeyAction::Backspace,
        0xff0d | 0xff8d => KeyAction::Send, // Return, KP_Enter
        0xff1b => KeyAction::Clear,         // Escape
        0xff80 => KeyAction::Insert(' '),   // KP_Space
        0xffb0..=0xffb9 => char::from_u32(keysym - 0xffb0 + u32::from('0'))
            .map_or(KeyAction::Ignore, KeyAction::Insert), // KP_0..KP_9
        // Latin-1 keysyms equal their code points.
        0x20..=0x7e | 0xa0..=0xff => {
            char::from_u32(keysym).map_or(KeyAction::Ignore, KeyAction::Insert)
        }
        _ => KeyAction::Ignore,
    }
}

/// The core keyboard mapping (keycode → keysyms).
#[derive(Debug, Default, Clone)]
pub struct Keymap {
    min_keycode: u8,
    per_keycode: u8,
    keysyms: Vec<u32>,
}

impl Keymap {
    /// A mapping from its parts (as `GetKeyboardMapping` returns them).
    pub fn new(min_keycode: u8, per_keycode: u8, keysyms: Vec<u32>) -> Self {
        Self {
            min_keycode,
            per_keycode,
            keysyms,
        }
    }

    /// The keysym of `keycode` with the modifier `state` (Shift and Lock; the core
    /// protocol's rules for a missing shifted symbol).
    pub fn keysym(&self, keycode: u8, state: u16) -> u32 {
        let per = usize::from(self.per_keycode);
        let Some(index) = keycode.checked_sub(self.min_keycode) else {
            return 0;
        };
        let start = usize::from(index) * per;
        let Some(syms) = self.keysyms.get(start..start + per) else {
            return 0;
        };
        let lower = syms.first().copied().unwrap_or(0);
        let upper = match syms.get(1).copied().unwrap_or(0) {
            0 => latin1_upper(lower),
            s => s,
        };
        let shift = state & u16::from(KeyButMask::SHIFT) != 0;
        let lock = state & u16::from(KeyButMask::LOCK) != 0;
        let letter = latin1_upper(lower) != lower;
        if shift != (lock && letter) {
            upper
        } else {
            lower
        }
    }
}

/// The upper-case form of a Latin-1 keysym (itself when there is none).
fn latin1_upper(keysym: u32) -> u32 {
    match keysym {
        0x61..=0x7a | 0xe0..=0xf6 | 0xf8..=0xfe => keysym - 0x20,
        _ => keysym,
    }
}

fn request_error(e: impl std::fmt::Display) -> PlatformError {
    PlatformError::Request(e.to_string())
}

/// The X11 chat window.
pub struct X11Chat {
    conn: RustConnection,
    window: FixedWindow,
    mapped: bool,
    keymap: Keymap,
    history: VecDeque<Vec<u8>>,
    reply: String,
}

impl std::fmt::Debug for X11Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the content: chat text stays out of logs.
        f.debug_struct("X11Chat")
            .field("window", &self.window.id)
            .field("mapped", &self.mapped)
            .field("messages", &self.history.len())
            .finish_non_exhaustive()
    }
}

impl X11Chat {
    /// Creates the (still hidden) window on `$DISPLAY`.
    pub fn open() -> PlatformResult<Self> {
        let (conn, window) = FixedWindow::open(&Spec {
            title: WINDOW_TITLE,
            width: WIDTH,
            height: HEIGHT,
            // Bottom right, clear of the centre where the consent prompt appears.
            place: Place::BottomRight {
                right: 20,
                bottom: 40,
            },
            foreground: BLACK,
            background: WHITE,
            border: BLACK,
            extra_events: EventMask::KEY_PRESS,
            // The window takes keyboard input.
            takes_focus: Some(true),
            keep_above: false,
        })?;
        let keymap = load_keymap(&conn).map_err(request_error)?;
        Ok(Self {
            conn,
            window,
            mapped: false,
            keymap,
            history: VecDeque::new(),
            reply: String::new(),
        })
    }

    fn push(&mut self, from: &str, text: &str) {
        let mut line = latin1(from.trim());
        line.extend_from_slice(b": ");
        line.extend(latin1(truncate(text, MAX_TEXT)));
        self.history.push_back(line);
        while self.history.len() > MAX_HISTORY {
            self.history.pop_front();
        }
    }

    fn set_colours(&self, foreground: u32, background: u32) -> anyhow::Result<()> {
        set_colours(&self.conn, self.window.gc, foreground, background)
    }

    fn draw(&self) -> anyhow::Result<()> {
        if !self.mapped {
            return Ok(());
        }
        let conn = &self.conn;
        conn.clear_area(false, self.window.id, 0, 0, 0, 0)?;
        self.set_colours(BLACK, WHITE)?;
        let lines: Vec<Vec<u8>> = self
            .history
            .iter()
            .flat_map(|m| wrap(m, columns(), MAX_LINES_PER_MESSAGE))
            .collect();
        let shown = &lines[lines.len().saturating_sub(rows())..];
        for (i, line) in shown.iter().enumerate() {
            let y = TOP + LINE_H * i16::try_from(i)?;
            conn.image_text8(self.window.id, self.window.gc, LEFT, y, line)?;
        }
        // The reply field.
        let (fx, fy, fw, fh) = REPLY_FIELD;
        self.set_colours(FIELD, FIELD)?;
        conn.poly_fill_rectangle(
            self.window.id,
            self.window.gc,
            &[Rectangle {
                x: fx,
                y: fy,
                width: fw,
                height: fh,
            }],
        )?;
        let baseline = fy + i16::try_from(fh)? / 2 + 4;
        if self.reply.is_empty() {
            self.set_colours(GREY, FIELD)?;
            conn.image_text8(
                self.window.id,
                self.window.gc,
                fx + 6,
                baseline,
                b"Click here, type a reply, press Enter to send",
            )?;
        } else {
            self.set_colours(BLACK, FIELD)?;
            let mut text = latin1(&self.reply);
            text.push(b'_');
            // The field shows the end of a long reply.
            let fits = usize::try_from((i16::try_from(fw)? - 12) / CHAR_W)?;
            let start = text.len().saturating_sub(fits);
            conn.image_text8(
                self.window.id,
                self.window.gc,
                fx + 6,
                baseline,
                &text[start..],
            )?;
        }
        conn.flush()?;
        Ok(())
    }

    /// Handles one X event; returns a reply when the user sent one.
    fn event(&mut self, event: Event) -> anyhow::Result<Option<String>> {
        match event {
            Event::Expose(e) if e.count == 0 => self.draw()?,
            Event::ButtonPress(e) if e.event == self.window.id => {
                // Click to type: without a window manager nobody else gives the focus.
                self.conn.set_input_focus(
                    InputFocus::PARENT,
                    self.window.id,
                    x11rb::CURRENT_TIME,
                )?;
                self.conn.flush()?;
            }
            Event::KeyPress(e) if e.event == self.window.id => {
                let state = u16::from(e.state);
                let chord = u16::from(KeyButMask::CONTROL) | u16::from(KeyButMask::MOD1);
                if state & chord != 0 {
                    return Ok(None);
                }
                match key_action(self.keymap.keysym(e.detail, state)) {
                    KeyAction::Insert(c) => {
                        if self.reply.len() + c.len_utf8() <= MAX_TEXT {
                            self.reply.push(c);
                        }
                    }
                    KeyAction::Backspace => {
                        self.reply.pop();
                    }
                    KeyAction::Clear => self.reply.clear(),
                    KeyAction::Send => {
                        let reply = std::mem::take(&mut self.reply);
                        let reply = reply.trim();
                        if !reply.is_empty() {
                            self.push("You", reply);
                            self.draw()?;
                            return Ok(Some(reply.to_owned()));
                        }
                    }
                    KeyAction::Ignore => return Ok(None),
                }
                self.draw()?;
            }
            Event::MappingNotify(e) if e.request == Mapping::KEYBOARD => {
                self.keymap = load_keymap(&self.conn)?;
            }
            Event::ClientMessage(e) if self.window.is_close_request(&e) => {
                // Closing only hides the window until the next message.
                self.conn.unmap_window(self.window.id)?;
                self.conn.flush()?;
                self.mapped = false;
            }
            Event::UnmapNotify(e) if e.window == self.window.id => self.mapped = false,
            Event::MapNotify(e) if e.window == self.window.id => self.mapped = true,
            _ => {}
        }
        Ok(None)
    }
}

fn load_keymap(conn: &RustConnection) -> anyhow::Result<Keymap> {
    let setup = conn.setup();
    let (min, max) = (setup.min_keycode, setup.max_keycode);
    let reply = conn
        .get_keyboard_mapping(min, max.saturating_sub(min).saturating_add(1))?
        .reply()?;
    Ok(Keymap::new(min, reply.keysyms_per_keycode, reply.keysyms))
}

impl ChatWindow for X11Chat {
    fn show(&mut self, from: &str, text: &str) -> PlatformResult<()> {
        let from = if from.trim().is_empty() {
            "Technician"
        } else {
            from
        };
        self.push(from, text);
        let conn = &self.conn;
        let raise = || -> anyhow::Result<()> {
            conn.configure_window(
                self.window.id,
                &ConfigureWindowAux::new().stack_mode(StackMode::ABOVE),
            )?;
            conn.map_window(self.window.id)?;
            conn.flush()?;
            Ok(())
        };
        raise().map_err(request_error)?;
        if self.mapped {
            self.draw().map_err(request_error)?;
        }
        Ok(())
    }

    fn replies(&mut self) -> PlatformResult<Vec<String>> {
        let mut replies = Vec::new();
        while let Some(event) = self.conn.poll_for_event().map_err(request_error)? {
            if let Some(reply) = self.event(event).map_err(request_error)? {
                replies.push(reply);
            }
        }
        Ok(replies)
    }
}

impl Drop for X11Chat {
    fn drop(&mut self) {
        self.window.destroy(&self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_sanitised_to_latin1() {
        assert_eq!(latin1("héllo\n\u{7}€"), b"h\xe9llo ??".to_vec());
    }

    #[test]
    fn long_lines_wrap_at_spaces_and_are_bounded() {
        let lines = wrap(b"aaa bbb cccccccc", 7, 10);
        assert_eq!(
            lines,
            vec![b"aaa bbb".to_vec(), b"ccccccc".to_vec(), b"c".to_vec()]
        );
        assert_eq!(wrap(&[b'x'; 100], 10, 3).len(), 3);
        assert!(wrap(b"", 10, 3).is_empty());
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn keysyms_follow_shift_and_caps_lock() {
        // keycode 10: a/A, keycode 11: 1/!, keycode 12: only 'b'.
        let map = Keymap::new(10, 2, vec![0x61, 0x41, 0x31, 0x21, 0x62, 0]);
        let shift = u16::from(KeyButMask::SHIFT);
        let lock = u16::from(KeyButMask::LOCK);
        assert_eq!(map.keysym(10, 0), 0x61);
        assert_eq!(map.keysym(10, shift), 0x41);
        assert_eq!(map.keysym(10, lock), 0x41);
        assert_eq!(map.keysym(10, shift | lock), 0x61);
        assert_eq!(map.keysym(11, lock), 0x31);
        assert_eq!(map.keysym(11, shift), 0x21);
        assert_eq!(map.keysym(12, shift), 0x42);
        assert_eq!(map.keysym(9, 0), 0);
        assert_eq!(map.keysym(200, 0), 0);
    }

    #[test]
    fn keys_map_to_field_actions() {
        assert_eq!(key_action(0x41), KeyAction::Insert('A'));
        assert_eq!(key_action(0xe9), KeyAction::Insert('é'));
        assert_eq!(key_action(0xff0d), KeyAction::Send);
        assert_eq!(key_action(0xff08), KeyAction::Backspace);
        assert_eq!(key_action(0xff1b), KeyAction::Clear);
        assert_eq!(key_action(0xffe1), KeyAction::Ignore); // Shift_L
        assert_eq!(key_action(0xffb7), KeyAction::Insert('7'));
    }

    #[test]
    fn the_layout_fits() {
        assert!(i32::from(REPLY_FIELD.0) + i32::from(REPLY_FIELD.2) <= i32::from(WIDTH));
        assert!(i32::from(REPLY_FIELD.1) + i32::from(REPLY_FIELD.3) <= i32::from(HEIGHT));
        assert!(rows() >= 10 && columns() >= 60);
    }
}
