//! Synthetic input through the XTEST extension.
//!
//! Every event is validated before it is injected: unknown actions, buttons or scancodes and
//! coordinates off the display are ignored (logged at debug level), never clamped into
//! something the viewer did not ask for. Keys and buttons held down are tracked so that
//! [`Injector::release_all`] can lift them when a viewer leaves.

use std::collections::BTreeSet;

use guruconnect_proto::{
    DisplayInfo, KeyEvent, MouseAction, MouseButton, MouseEvent, SpecialKeyKind,
};
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto;
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use super::keymap::{self, evdev_to_x_keycode, scancode_to_evdev};
use crate::platform::{Injector, PlatformError, PlatformResult};

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
        })
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
        self.flush()
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
