//! Synthetic input through the XTEST extension.
//!
//! Every event is validated before it is injected: unknown actions, buttons or scancodes and
//! coordinates off the display are ignored (logged at debug level), never clamped into
//! something the viewer did not ask for. Keys and buttons held down are tracked so that
//! [`Injector::release_all`] can lift them when a viewer leaves.
//!
//! Text goes in by character: the character's keysym is looked up in the server's current
//! keyboard mapping and its key is tapped with the Shift/AltGr it needs (modifiers the
//! technician holds are lifted around it), so it arrives whatever the remote layout. A
//! character no key produces is bound to a spare keycode (`ChangeKeyboardMapping`). The
//! binding stays until the viewers leave (`release_all`) or the injector is dropped, not just
//! for the tap: clients look the keycode up when they handle the event, later than we tap.

use std::collections::BTreeSet;

use guruconnect_proto::{
    DisplayInfo, KeyEvent, MouseAction, MouseButton, MouseEvent, SpecialKeyKind,
};
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use super::chars::{self, Keymap, Level};
use super::keymap::{self, evdev_to_x_keycode, scancode_to_evdev};
use crate::platform::{Injector, PlatformError, PlatformResult, typed_char};

/// Most wheel clicks one event may produce.
const MAX_WHEEL_STEPS: i32 = 10;
/// Wheel units per click when a viewer sends browser-style deltas.
const WHEEL_UNIT: i32 = 120;

fn request_error(e: impl std::fmt::Display) -> PlatformError {
    PlatformError::Request(e.to_string())
}

/// XTEST input injector.
pub struct X11Injector {
    conn: RustConnection,
    root: xproto::Window,
    held_keys: BTreeSet<u8>,
    held_buttons: BTreeSet<u8>,
    /// Keys (scancode, extended) whose press was typed as a character: their release is
    /// dropped, as nothing was held.
    typed: BTreeSet<(u32, bool)>,
    /// Spare keycodes we bound to a keysym, least recently bound first.
    borrowed: Vec<u8>,
}

impl std::fmt::Debug for X11Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X11Injector")
            .field("held_keys", &self.held_keys)
            .field("held_buttons", &self.held_buttons)
            .finish_non_exhaustive()
    }
}

/// The number of wheel clicks for a delta: one click per [`WHEEL_UNIT`] (at least one for
/// any non-zero delta), at most [`MAX_WHEEL_STEPS`].
pub fn wheel_steps(delta: i32) -> i32 {
    if delta == 0 {
        return 0;
    }
    let steps = (delta.unsigned_abs() / WHEEL_UNIT.unsigned_abs()).max(1);
    i32::try_from(steps)
        .unwrap_or(MAX_WHEEL_STEPS)
        .min(MAX_WHEEL_STEPS)
}

/// X button number for a protocol button (`None` for `MOUSE_BUTTON_NONE` or unknown values).
pub fn x_button(button: i32) -> Option<u8> {
    match MouseButton::try_from(button).ok()? {
        MouseButton::None => None,
        MouseButton::Left => Some(1),
        MouseButton::Middle => Some(2),
        MouseButton::Right => Some(3),
        MouseButton::Back => Some(8),
        MouseButton::Forward => Some(9),
    }
}

/// Root coordinates for a point in `display`, or `None` when it is off the display.
pub fn to_root(display: &DisplayInfo, x: i32, y: i32) -> Option<(i16, i16)> {
    if x < 0
        || y < 0
        || i64::from(x) >= i64::from(display.width)
        || i64::from(y) >= i64::from(display.height)
    {
        return None;
    }
    let rx = i16::try_from(display.x.checked_add(x)?).ok()?;
    let ry = i16::try_from(display.y.checked_add(y)?).ok()?;
    Some((rx, ry))
}

impl X11Injector {
    /// Connects to `$DISPLAY` and checks for XTEST.
    pub fn open() -> PlatformResult<Self> {
        let (conn, screen) = super::connect()?;
        let root = conn
            .setup()
            .roots
            .get(screen)
            .map(|s| s.root)
            .ok_or_else(|| PlatformError::Unsupported("no X screen".into()))?;
        conn.xtest_get_version(2, 2)
            .map_err(request_error)?
            .reply()
            .map_err(|_| PlatformError::Unsupported("the XTEST extension is missing".into()))?;
        Ok(Self {
            conn,
            root,
            held_keys: BTreeSet::new(),
            held_buttons: BTreeSet::new(),
            typed: BTreeSet::new(),
            borrowed: Vec::new(),
        })
    }

    /// The server's current core keyboard mapping.
    fn keymap(&self) -> PlatformResult<Keymap> {
        let setup = self.conn.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let reply = self
            .conn
            .get_keyboard_mapping(min, max.saturating_sub(min).saturating_add(1))
            .map_err(request_error)?
            .reply()
            .map_err(request_error)?;
        Ok(Keymap {
            min_keycode: min,
            per: usize::from(reply.keysyms_per_keycode),
            syms: reply.keysyms,
        })
    }

    /// Whether Caps Lock is on.
    fn caps_lock(&self) -> PlatformResult<bool> {
        let reply = self
            .conn
            .query_pointer(self.root)
            .map_err(request_error)?
            .reply()
            .map_err(request_error)?;
        Ok(reply.mask.contains(xproto::KeyButMask::LOCK))
    }

    /// Binds a spare keycode (or the least recently bound one) to `keysym`.
    fn borrow(&mut self, map: &mut Keymap, keysym: u32) -> PlatformResult<u8> {
        let code = match map.spare().into_iter().find(|c| !self.borrowed.contains(c)) {
            Some(code) => code,
            None if !self.borrowed.is_empty() => self.borrowed.remove(0),
            None => {
                return Err(PlatformError::Unsupported(
                    "no spare key to type a character the keyboard layout lacks".into(),
                ));
            }
        };
        self.bind(code, keysym, map.per)?;
        map.set(code, keysym);
        self.borrowed.push(code);
        Ok(code)
    }

    fn bind(&self, code: u8, keysym: u32, per: usize) -> PlatformResult<()> {
        let per = per.max(1);
        self.conn
            .change_keyboard_mapping(
                1,
                code,
                u8::try_from(per).unwrap_or(u8::MAX),
                &vec![keysym; per],
            )
            .map_err(request_error)?;
        Ok(())
    }

    /// Gives the borrowed keycodes back their empty mapping.
    fn unbind_all(&mut self) -> PlatformResult<()> {
        if self.borrowed.is_empty() {
            return Ok(());
        }
        let per = self.keymap()?.per;
        for code in std::mem::take(&mut self.borrowed) {
            self.bind(code, 0, per)?;
        }
        self.flush()
    }

    /// Taps the key producing `c`, with the Shift and AltGr it needs and nothing else.
    fn type_char(&mut self, c: char, map: &mut Keymap, caps: bool) -> PlatformResult<()> {
        let Some(keysym) = chars::keysym_for_char(c) else {
            return Ok(());
        };
        let level3_key = map.keycode_of(chars::XK_ISO_LEVEL3_SHIFT);
        let (code, mut level) = match map.find(keysym, level3_key.is_some()) {
            Some(found) => found,
            None => (self.borrow(map, keysym)?, Level::default()),
        };
        if caps && chars::is_cased_pair(map.syms_of(code)) && !level.level3 {
            level.shift = !level.shift;
        }
        let shift_key = map
            .keycode_of(chars::XK_SHIFT_L)
            .or_else(|| evdev_to_x_keycode(42));
        // Held modifiers the character does not want are lifted for the tap; a held Shift
        // or AltGr it does want stays held.
        let modifiers: BTreeSet<u8> = keymap::MODIFIERS
            .iter()
            .filter_map(|k| evdev_to_x_keycode(*k))
            .chain(level3_key)
            .collect();
        let mut lifted = Vec::new();
        let (mut shift_held, mut level3_held) = (false, false);
        for held in self.held_keys.clone() {
            if !modifiers.contains(&held) {
                continue;
            }
            let sym = map.syms_of(held).first().copied().unwrap_or(0);
            if level.shift && (sym == chars::XK_SHIFT_L || sym == chars::XK_SHIFT_R) {
                shift_held = true;
            } else if level.level3 && sym == chars::XK_ISO_LEVEL3_SHIFT {
                level3_held = true;
            } else {
                self.keycode(held, false)?;
                lifted.push(held);
            }
        }
        let mut pressed = Vec::new();
        if level.shift && !shift_held {
            pressed.extend(shift_key);
        }
        if level.level3 && !level3_held {
            pressed.extend(level3_key);
        }
        for key in pressed.iter().chain([&code]) {
            self.keycode(*key, true)?;
        }
        for key in [&code].into_iter().chain(pressed.iter().rev()) {
            self.keycode(*key, false)?;
        }
        for key in lifted {
            self.keycode(key, true)?;
        }
        Ok(())
    }

    /// Taps a key by evdev code (Enter and Tab in typed text).
    fn tap_evdev(&mut self, evdev: u16) -> PlatformResult<()> {
        if let Some(code) = evdev_to_x_keycode(evdev) {
            self.keycode(code, true)?;
            self.keycode(code, false)?;
        }
        Ok(())
    }

    fn fake(&self, kind: u8, detail: u8, x: i16, y: i16) -> PlatformResult<()> {
        self.conn
            .xtest_fake_input(kind, detail, x11rb::CURRENT_TIME, self.root, x, y, 0)
            .map_err(request_error)?;
        Ok(())
    }

    fn move_to(&self, x: i16, y: i16) -> PlatformResult<()> {
        self.fake(xproto::MOTION_NOTIFY_EVENT, 0, x, y)
    }

    fn button(&mut self, button: u8, down: bool) -> PlatformResult<()> {
        if down {
            self.held_buttons.insert(button);
            self.fake(xproto::BUTTON_PRESS_EVENT, button, 0, 0)
        } else {
            self.held_buttons.remove(&button);
            self.fake(xproto::BUTTON_RELEASE_EVENT, button, 0, 0)
        }
    }

    fn keycode(&mut self, keycode: u8, down: bool) -> PlatformResult<()> {
        if down {
            self.held_keys.insert(keycode);
            self.fake(xproto::KEY_PRESS_EVENT, keycode, 0, 0)
        } else {
            self.held_keys.remove(&keycode);
            self.fake(xproto::KEY_RELEASE_EVENT, keycode, 0, 0)
        }
    }

    /// Presses the evdev keys in order, then releases them in reverse order.
    fn chord(&mut self, keys: &[u16]) -> PlatformResult<()> {
        let codes: Vec<u8> = keys.iter().filter_map(|k| evdev_to_x_keycode(*k)).collect();
        for code in &codes {
            self.keycode(*code, true)?;
        }
        for code in codes.iter().rev() {
            self.keycode(*code, false)?;
        }
        self.flush()
    }

    fn flush(&self) -> PlatformResult<()> {
        self.conn.flush().map_err(request_error)
    }
}

impl Injector for X11Injector {
    fn mouse(&mut self, event: &MouseEvent, display: &DisplayInfo) -> PlatformResult<()> {
        let Ok(action) = MouseAction::try_from(event.action) else {
            tracing::debug!(
                action = event.action,
                "ignoring a mouse event with an unknown action"
            );
            return Ok(());
        };
        let at = to_root(display, event.x, event.y);
        match action {
            MouseAction::Move => match at {
                Some((x, y)) => self.move_to(x, y)?,
                None => tracing::debug!("ignoring a pointer move off the display"),
            },
            MouseAction::Down | MouseAction::Up => {
                let (Some((x, y)), Some(button)) = (at, x_button(event.button)) else {
                    tracing::debug!("ignoring a button event off the display or with no button");
                    return Ok(());
                };
                self.move_to(x, y)?;
                self.button(button, action == MouseAction::Down)?;
            }
            MouseAction::Wheel => {
                if let Some((x, y)) = at {
                    self.move_to(x, y)?;
                }
                // X wheel buttons: 4 up, 5 down, 6 left, 7 right.
                for (delta, negative, positive) in
                    [(event.wheel_dy, 4u8, 5u8), (event.wheel_dx, 6, 7)]
                {
                    let button = if delta < 0 { negative } else { positive };
                    for _ in 0..wheel_steps(delta) {
                        self.fake(xproto::BUTTON_PRESS_EVENT, button, 0, 0)?;
                        self.fake(xproto::BUTTON_RELEASE_EVENT, button, 0, 0)?;
                    }
                }
            }
        }
        self.flush()
    }

    fn key(&mut self, event: &KeyEvent) -> PlatformResult<()> {
        let id = (event.scancode, event.extended);
        if let Some(c) = typed_char(event) {
            if event.down {
                let mut map = self.keymap()?;
                let caps = self.caps_lock()?;
                self.typed.insert(id);
                self.type_char(c, &mut map, caps)?;
                return self.flush();
            }
            if self.typed.remove(&id) {
                return Ok(());
            }
        } else if !event.down && self.typed.remove(&id) {
            return Ok(());
        }
        let Some(code) =
            scancode_to_evdev(event.scancode, event.extended).and_then(evdev_to_x_keycode)
        else {
            tracing::debug!(
                scancode = event.scancode,
                extended = event.extended,
                "ignoring an unknown scancode"
            );
            return Ok(());
        };
        if !event.down && !self.held_keys.contains(&code) {
            // A release for a key we never pressed is harmless but pointless.
            tracing::trace!(code, "release of a key that is not held");
        }
        self.keycode(code, event.down)?;
        self.flush()
    }

    fn text(&mut self, text: &str) -> PlatformResult<()> {
        let mut map = self.keymap()?;
        let caps = self.caps_lock()?;
        let mut previous = '\0';
        for c in text.chars() {
            match c {
                // Line breaks as Enter (CR LF once), tabs as Tab, like the Windows injector.
                '\n' if previous == '\r' => {}
                '\r' | '\n' => self.tap_evdev(28)?,
                '\t' => self.tap_evdev(keymap::EVDEV_TAB)?,
                c => self.type_char(c, &mut map, caps)?,
            }
            previous = c;
        }
        self.flush()
    }

    fn special(&mut self, kind: SpecialKeyKind) -> PlatformResult<()> {
        use keymap::*;
        match kind {
            SpecialKeyKind::SpecialKeyUnspecified => Ok(()),
            // X has no secure attention sequence; the desktop decides what Ctrl+Alt+Del does.
            SpecialKeyKind::SpecialKeyCtrlAltDel => {
                self.chord(&[EVDEV_LEFT_CTRL, EVDEV_LEFT_ALT, EVDEV_DELETE])
            }
            SpecialKeyKind::SpecialKeyWin => self.chord(&[EVDEV_LEFT_SUPER]),
            SpecialKeyKind::SpecialKeyAltTab => self.chord(&[EVDEV_LEFT_ALT, EVDEV_TAB]),
            SpecialKeyKind::SpecialKeyLockScreen => self.chord(&[EVDEV_LEFT_SUPER, EVDEV_L]),
            SpecialKeyKind::SpecialKeyPrintScreen => self.chord(&[EVDEV_PRINT]),
            SpecialKeyKind::SpecialKeyAltF4 => self.chord(&[EVDEV_LEFT_ALT, EVDEV_F4]),
        }
    }

    fn release_all(&mut self) -> PlatformResult<()> {
        // Modifiers first, then anything else still down.
        let modifiers: BTreeSet<u8> = keymap::MODIFIERS
            .iter()
            .filter_map(|k| evdev_to_x_keycode(*k))
            .collect();
        let held: Vec<u8> = self.held_keys.iter().copied().collect();
        let (mods, others): (Vec<u8>, Vec<u8>) =
            held.into_iter().partition(|k| modifiers.contains(k));
        for code in mods.into_iter().chain(others) {
            self.keycode(code, false)?;
        }
        let buttons: Vec<u8> = self.held_buttons.iter().copied().collect();
        for button in buttons {
            self.button(button, false)?;
        }
        self.typed.clear();
        self.flush()?;
        self.unbind_all()
    }
}

impl Drop for X11Injector {
    fn drop(&mut self) {
        // A borrowed key must not outlive the agent with a stray character on it.
        let _ = self.unbind_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn display() -> DisplayInfo {
        DisplayInfo {
            id: 1,
            x: 1920,
            y: 0,
            width: 1280,
            height: 720,
            ..DisplayInfo::default()
        }
    }

    #[test]
    fn coordinates_are_offset_and_validated() {
        assert_eq!(to_root(&display(), 0, 0), Some((1920, 0)));
        assert_eq!(to_root(&display(), 1279, 719), Some((3199, 719)));
        assert_eq!(to_root(&display(), 1280, 0), None);
        assert_eq!(to_root(&display(), -1, 5), None);
        assert_eq!(to_root(&display(), i32::MAX, i32::MAX), None);
    }

    #[test]
    fn buttons_and_wheel_steps() {
        assert_eq!(x_button(MouseButton::Left as i32), Some(1));
        assert_eq!(x_button(MouseButton::Right as i32), Some(3));
        assert_eq!(x_button(MouseButton::Back as i32), Some(8));
        assert_eq!(x_button(MouseButton::None as i32), None);
        assert_eq!(x_button(99), None);
        assert_eq!(wheel_steps(0), 0);
        assert_eq!(wheel_steps(1), 1);
        assert_eq!(wheel_steps(-240), 2);
        assert_eq!(wheel_steps(i32::MIN), MAX_WHEEL_STEPS);
    }
}
