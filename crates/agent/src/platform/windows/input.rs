//! Synthetic input with `SendInput`.
//!
//! Keys go in as PC set-1 scancodes (`KEYEVENTF_SCANCODE`, plus `KEYEVENTF_EXTENDEDKEY` for
//! E0-prefixed keys), which is what the protocol carries, so the machine's keyboard layout
//! applies as for a physical keyboard. Only scancodes in [`SCANCODES`] (the keys a viewer
//! can send, the same set the X11 injector maps) are injected. The mouse moves with
//! absolute coordinates normalised to the virtual desktop
//! (`MOUSEEVENTF_ABSOLUTE | MOUSEEVENTF_VIRTUALDESK`); coordinates off the display are
//! ignored. Wheel deltas follow the X11 injector: one notch (`WHEEL_DELTA`, 120) per 120
//! units and at least one per non-zero delta, at most [`MAX_WHEEL_STEPS`]; a positive
//! `wheel_dy` scrolls down and a positive `wheel_dx` scrolls right.
//!
//! A key the viewer sends with its character (by-character mode, no Ctrl/Alt/Meta) is
//! typed as that character with `KEYEVENTF_UNICODE`, as the "type text" action is
//! (UNVERIFIED on real Windows and under Wine: the Wine end-to-end test covers scancodes and
//! typed text only).
//!
//! Ctrl+Alt+Del goes through `SendSAS` from `sas.dll`, loaded at run time (UNVERIFIED:
//! Wine has no `sas.dll`, and it only works for a service with the `SoftwareSASGeneration`
//! policy); otherwise the viewer gets a clear `Unsupported` error.

use std::collections::BTreeSet;

use guruconnect_proto::{
    DisplayInfo, KeyEvent, MouseAction, MouseButton, MouseEvent, SpecialKeyKind,
};
use windows_sys::Win32::Foundation::FreeLibrary;
use windows_sys::Win32::System::LibraryLoader::{GetProcAddress, LoadLibraryW};
use windows_sys::Win32::System::Registry::{HKEY_LOCAL_MACHINE, RRF_RT_REG_DWORD, RegGetValueW};
use windows_sys::Win32::System::Shutdown::LockWorkStation;
use windows_sys::Win32::UI::Input::KeyboardAndMouse::{
    INPUT, INPUT_0, INPUT_KEYBOARD, INPUT_MOUSE, KEYBDINPUT, KEYEVENTF_EXTENDEDKEY,
    KEYEVENTF_KEYUP, KEYEVENTF_SCANCODE, KEYEVENTF_UNICODE, MAPVK_VSC_TO_VK_EX,
    MOUSEEVENTF_ABSOLUTE, MOUSEEVENTF_HWHEEL, MOUSEEVENTF_LEFTDOWN, MOUSEEVENTF_LEFTUP,
    MOUSEEVENTF_MIDDLEDOWN, MOUSEEVENTF_MIDDLEUP, MOUSEEVENTF_MOVE, MOUSEEVENTF_RIGHTDOWN,
    MOUSEEVENTF_RIGHTUP, MOUSEEVENTF_VIRTUALDESK, MOUSEEVENTF_WHEEL, MOUSEEVENTF_XDOWN,
    MOUSEEVENTF_XUP, MOUSEINPUT, MapVirtualKeyW, SendInput, VK_SNAPSHOT,
};
use windows_sys::Win32::UI::WindowsAndMessaging::{XBUTTON1, XBUTTON2};

use super::{last_error, wide};
use crate::platform::{Injector, PlatformError, PlatformResult, typed_char};

/// Most wheel notches one event may produce.
pub const MAX_WHEEL_STEPS: i32 = 10;
/// Wheel units per notch (`WHEEL_DELTA`), also the unit of the protocol's deltas.
pub const WHEEL_DELTA: i32 = 120;
/// Longest text [`Injector::text`] types, in UTF-16 units.
pub const MAX_TEXT_UNITS: usize = 4096;

/// `(scancode, extended)`: the keys a viewer can send (PC set 1).
pub const SCANCODES: &[(u16, bool)] = &[
    // Main block: Escape..F10, keypad, 102nd key, F11, F12.
    (0x01, false),
    (0x02, false),
    (0x03, false),
    (0x04, false),
    (0x05, false),
    (0x06, false),
    (0x07, false),
    (0x08, false),
    (0x09, false),
    (0x0a, false),
    (0x0b, false),
    (0x0c, false),
    (0x0d, false),
    (0x0e, false),
    (0x0f, false),
    (0x10, false),
    (0x11, false),
    (0x12, false),
    (0x13, false),
    (0x14, false),
    (0x15, false),
    (0x16, false),
    (0x17, false),
    (0x18, false),
    (0x19, false),
    (0x1a, false),
    (0x1b, false),
    (0x1c, false),
    (0x1d, false),
    (0x1e, false),
    (0x1f, false),
    (0x20, false),
    (0x21, false),
    (0x22, false),
    (0x23, false),
    (0x24, false),
    (0x25, false),
    (0x26, false),
    (0x27, false),
    (0x28, false),
    (0x29, false),
    (0x2a, false),
    (0x2b, false),
    (0x2c, false),
    (0x2d, false),
    (0x2e, false),
    (0x2f, false),
    (0x30, false),
    (0x31, false),
    (0x32, false),
    (0x33, false),
    (0x34, false),
    (0x35, false),
    (0x36, false),
    (0x37, false),
    (0x38, false),
    (0x39, false),
    (0x3a, false),
    (0x3b, false),
    (0x3c, false),
    (0x3d, false),
    (0x3e, false),
    (0x3f, false),
    (0x40, false),
    (0x41, false),
    (0x42, false),
    (0x43, false),
    (0x44, false),
    (0x45, false),
    (0x46, false),
    (0x47, false),
    (0x48, false),
    (0x49, false),
    (0x4a, false),
    (0x4b, false),
    (0x4c, false),
    (0x4d, false),
    (0x4e, false),
    (0x4f, false),
    (0x50, false),
    (0x51, false),
    (0x52, false),
    (0x53, false),
    (0x56, false),
    (0x57, false),
    (0x58, false),
    // Extended (E0-prefixed) keys.
    (0x1c, true), // Keypad Enter
    (0x1d, true), // Right Ctrl
    (0x35, true), // Keypad /
    (0x37, true), // Print Screen
    (0x38, true), // Right Alt (AltGr)
    (0x47, true), // Home
    (0x48, true), // Up
    (0x49, true), // Page Up
    (0x4b, true), // Left
    (0x4d, true), // Right
    (0x4f, true), // End
    (0x50, true), // Down
    (0x51, true), // Page Down
    (0x52, true), // Insert
    (0x53, true), // Delete
    (0x5b, true), // Left Windows
    (0x5c, true), // Right Windows
    (0x5d, true), // Menu
];

/// Left Alt.
const SC_LALT: (u16, bool) = (0x38, false);
/// Tab.
const SC_TAB: (u16, bool) = (0x0f, false);
/// F4.
const SC_F4: (u16, bool) = (0x3e, false);
/// Enter.
const SC_ENTER: (u16, bool) = (0x1c, false);
/// Left Windows.
const SC_LWIN: (u16, bool) = (0x5b, true);
/// Modifiers (released first by [`Injector::release_all`]).
const MODIFIERS: &[(u16, bool)] = &[
    (0x2a, false),
    (0x36, false),
    (0x1d, false),
    (0x1d, true),
    (0x38, false),
    (0x38, true),
    (0x5b, true),
    (0x5c, true),
];

/// The `(scancode, extended)` key of a protocol key event, if it is one a viewer may send.
/// The E0 prefix may also be written into the scancode (`0xE048` = extended 0x48).
pub fn scancode_key(scancode: u32, extended: bool) -> Option<(u16, bool)> {
    let (code, extended) = match scancode {
        0..=0xff => (scancode, extended),
        0xe000..=0xe0ff => (scancode & 0xff, true),
        _ => return None,
    };
    let key = (u16::try_from(code).ok()?, extended);
    SCANCODES.contains(&key).then_some(key)
}

/// The number of wheel notches for a delta (see the module doc).
pub fn wheel_steps(delta: i32) -> i32 {
    if delta == 0 {
        return 0;
    }
    let steps = (delta.unsigned_abs() / WHEEL_DELTA.unsigned_abs()).max(1);
    i32::try_from(steps)
        .unwrap_or(MAX_WHEEL_STEPS)
        .min(MAX_WHEEL_STEPS)
}

/// `mouseData` for a vertical (`MOUSEEVENTF_WHEEL`) and a horizontal (`MOUSEEVENTF_HWHEEL`)
/// wheel delta: Windows scrolls up for positive values, the protocol down.
pub fn wheel_data(wheel_dx: i32, wheel_dy: i32) -> (i32, i32) {
    let signed = |delta: i32| delta.signum() * wheel_steps(delta) * WHEEL_DELTA;
    (signed(wheel_dx), -signed(wheel_dy))
}

/// Virtual-desktop coordinates of a point in `display`, or `None` when it is off it.
pub fn to_desktop(display: &DisplayInfo, x: i32, y: i32) -> Option<(i32, i32)> {
    if x < 0
        || y < 0
        || i64::from(x) >= i64::from(display.width)
        || i64::from(y) >= i64::from(display.height)
    {
        return None;
    }
    Some((display.x.checked_add(x)?, display.y.checked_add(y)?))
}

/// `SendInput`'s 0..=65535 absolute coordinate of pixel `p` on an axis of the virtual
/// desktop starting at `origin` and `size` pixels long: the centre of the pixel, so either
/// rounding Windows applies lands on it.
pub fn normalise(p: i32, origin: i32, size: i32) -> Option<i32> {
    if size <= 0 {
        return None;
    }
    let offset = i64::from(p) - i64::from(origin);
    if offset < 0 || offset >= i64::from(size) {
        return None;
    }
    i32::try_from(((2 * offset + 1) * 65536) / (2 * i64::from(size))).ok()
}

/// A mouse button's down and up flags and its `mouseData`.
fn button_flags(button: i32) -> Option<(u32, u32, u32)> {
    Some(match MouseButton::try_from(button).ok()? {
        MouseButton::None => return None,
        MouseButton::Left => (MOUSEEVENTF_LEFTDOWN, MOUSEEVENTF_LEFTUP, 0),
        MouseButton::Right => (MOUSEEVENTF_RIGHTDOWN, MOUSEEVENTF_RIGHTUP, 0),
        MouseButton::Middle => (MOUSEEVENTF_MIDDLEDOWN, MOUSEEVENTF_MIDDLEUP, 0),
        MouseButton::Back => (MOUSEEVENTF_XDOWN, MOUSEEVENTF_XUP, u32::from(XBUTTON1)),
        MouseButton::Forward => (MOUSEEVENTF_XDOWN, MOUSEEVENTF_XUP, u32::from(XBUTTON2)),
    })
}

fn mouse_input(dx: i32, dy: i32, data: u32, flags: u32) -> INPUT {
    INPUT {
        r#type: INPUT_MOUSE,
        Anonymous: INPUT_0 {
            mi: MOUSEINPUT {
                dx,
                dy,
                mouseData: data,
                dwFlags: flags,
                time: 0,
                dwExtraInfo: 0,
            },
        },
    }
}

fn key_input(vk: u16, scan: u16, flags: u32) -> INPUT {
    INPUT {
        r#type: INPUT_KEYBOARD,
        Anonymous: INPUT_0 {
            ki: KEYBDINPUT {
                wVk: vk,
                wScan: scan,
                dwFlags: flags,
                time: 0,
                dwExtraInfo: 0,
            },
        },
    }
}

/// A press and release of `c` as `KEYEVENTF_UNICODE` (one pair per UTF-16 unit).
fn unicode_tap(c: char) -> Vec<INPUT> {
    let mut buf = [0u16; 2];
    let mut inputs = Vec::new();
    for &unit in c.encode_utf16(&mut buf).iter() {
        inputs.push(key_input(0, unit, KEYEVENTF_UNICODE));
        inputs.push(key_input(0, unit, KEYEVENTF_UNICODE | KEYEVENTF_KEYUP));
    }
    inputs
}

/// `(scancode, virtual key)` of the extended keys, which do not depend on the layout.
const EXTENDED_VK: &[(u16, u16)] = &[
    (0x1c, 0x0d), // Keypad Enter: VK_RETURN
    (0x1d, 0xa3), // VK_RCONTROL
    (0x35, 0x6f), // VK_DIVIDE
    (0x37, 0x2c), // VK_SNAPSHOT
    (0x38, 0xa5), // VK_RMENU
    (0x47, 0x24), // VK_HOME
    (0x48, 0x26), // VK_UP
    (0x49, 0x21), // VK_PRIOR
    (0x4b, 0x25), // VK_LEFT
    (0x4d, 0x27), // VK_RIGHT
    (0x4f, 0x23), // VK_END
    (0x50, 0x28), // VK_DOWN
    (0x51, 0x22), // VK_NEXT
    (0x52, 0x2d), // VK_INSERT
    (0x53, 0x2e), // VK_DELETE
    (0x5b, 0x5b), // VK_LWIN
    (0x5c, 0x5c), // VK_RWIN
    (0x5d, 0x5d), // VK_APPS
];

/// The virtual key of a scancode: fixed for extended keys, from the current keyboard
/// layout otherwise (0 when it has none).
fn scancode_vk((scan, extended): (u16, bool)) -> u16 {
    if extended {
        return EXTENDED_VK
            .iter()
            .find(|(s, _)| *s == scan)
            .map_or(0, |(_, vk)| *vk);
    }
    // SAFETY: MapVirtualKeyW takes no pointers.
    let vk = unsafe { MapVirtualKeyW(u32::from(scan), MAPVK_VSC_TO_VK_EX) };
    u16::try_from(vk).unwrap_or(0)
}

/// A key event by scancode. Windows ignores `wVk` with `KEYEVENTF_SCANCODE`; it is filled
/// in anyway because Wine 8 derives the key from it.
fn scancode_input(key: (u16, bool), down: bool) -> INPUT {
    let mut flags = KEYEVENTF_SCANCODE;
    if key.1 {
        flags |= KEYEVENTF_EXTENDEDKEY;
    }
    if !down {
        flags |= KEYEVENTF_KEYUP;
    }
    key_input(scancode_vk(key), key.0, flags)
}

/// Sends `inputs` in one `SendInput` call (so they are not interleaved with other input).
fn send(inputs: &[INPUT]) -> PlatformResult<()> {
    if inputs.is_empty() {
        return Ok(());
    }
    let count = u32::try_from(inputs.len())
        .map_err(|_| PlatformError::Request("too many input events".into()))?;
    // SAFETY: `inputs` is a valid slice of fully initialised INPUT structs and the size
    // passed is that of one INPUT.
    let sent = unsafe { SendInput(count, inputs.as_ptr(), std::mem::size_of::<INPUT>() as i32) };
    if sent != count {
        // Blocked by UIPI (a higher-integrity window has the focus) or the secure desktop.
        return Err(PlatformError::Request(format!(
            "SendInput injected {sent} of {count} events: {}",
            last_error()
        )));
    }
    Ok(())
}

/// What `SendSAS` needs that is missing, if anything (the error shown to the viewer).
fn sas_unavailable_reason() -> Option<String> {
    const HELP: &str =
        "(needs the agent running as a service with the SoftwareSASGeneration policy)";
    if super::session_id() != Some(0) {
        return Some(format!(
            "Ctrl+Alt+Del: SendSAS is not available to an agent running in a user session {HELP}"
        ));
    }
    let key = wide(r"SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System");
    let name = wide("SoftwareSASGeneration");
    let mut value = 0u32;
    let mut size = std::mem::size_of::<u32>() as u32;
    // SAFETY: the strings are NUL-terminated and outlive the call; `value` has `size` bytes.
    let status = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            key.as_ptr(),
            name.as_ptr(),
            RRF_RT_REG_DWORD,
            std::ptr::null_mut(),
            (&mut value as *mut u32).cast(),
            &mut size,
        )
    };
    // 1 = services, 3 = services and Ease of Access applications.
    if status != 0 || value & 1 == 0 {
        return Some(format!(
            "Ctrl+Alt+Del: SendSAS is refused: the SoftwareSASGeneration policy does not allow services {HELP}"
        ));
    }
    None
}

/// Calls `SendSAS(FALSE)` from `sas.dll`. UNVERIFIED on real Windows.
fn send_sas() -> PlatformResult<()> {
    if let Some(reason) = sas_unavailable_reason() {
        return Err(PlatformError::Unsupported(reason));
    }
    let dll = wide("sas.dll");
    // SAFETY: NUL-terminated name; the module is freed below.
    let module = unsafe { LoadLibraryW(dll.as_ptr()) };
    if module.is_null() {
        return Err(PlatformError::Unsupported(format!(
            "Ctrl+Alt+Del: SendSAS is not available: sas.dll cannot be loaded: {} (needs Windows 7 or later)",
            last_error()
        )));
    }
    // SAFETY: `module` is a loaded module; the name is a NUL-terminated ANSI string.
    let proc = unsafe { GetProcAddress(module, c"SendSAS".as_ptr().cast()) };
    let result = match proc {
        Some(proc) => {
            // SAFETY: SendSAS has the signature `VOID WINAPI SendSAS(BOOL AsUser)`.
            let send_sas: unsafe extern "system" fn(i32) =
                unsafe { std::mem::transmute::<unsafe extern "system" fn() -> isize, _>(proc) };
            // SAFETY: calling the function just resolved, with a BOOL argument.
            unsafe { send_sas(0) };
            tracing::info!("Ctrl+Alt+Del sent with SendSAS");
            Ok(())
        }
        None => Err(PlatformError::Unsupported(
            "Ctrl+Alt+Del: SendSAS is not available: sas.dll has no SendSAS".into(),
        )),
    };
    // SAFETY: the module was loaded above and is not used after this.
    unsafe { FreeLibrary(module) };
    result
}

/// `SendInput` injector.
#[derive(Debug, Default)]
pub struct SendInputInjector {
    held_keys: BTreeSet<(u16, bool)>,
    /// Held buttons as their `(up flag, mouseData)`.
    held_buttons: BTreeSet<(u32, u32)>,
    /// Keys (scancode, extended) whose press was typed as a character: their release is
    /// dropped.
    typed: BTreeSet<(u32, bool)>,
}

impl SendInputInjector {
    /// Creates the injector (`SendInput` needs no set-up).
    pub fn open() -> PlatformResult<Self> {
        Ok(Self::default())
    }

    /// The absolute-move input for a virtual-desktop point, if it is on the desktop.
    fn move_input(x: i32, y: i32, extra_flags: u32, data: u32) -> Option<INPUT> {
        let (vx, vy, vw, vh) = super::capture::virtual_screen();
        let nx = normalise(x, vx, vw)?;
        let ny = normalise(y, vy, vh)?;
        Some(mouse_input(
            nx,
            ny,
            data,
            MOUSEEVENTF_MOVE | MOUSEEVENTF_ABSOLUTE | MOUSEEVENTF_VIRTUALDESK | extra_flags,
        ))
    }

    fn keys(&mut self, keys: &[(u16, bool)], down: bool) -> Vec<INPUT> {
        keys.iter()
            .map(|&key| {
                if down {
                    self.held_keys.insert(key);
                } else {
                    self.held_keys.remove(&key);
                }
                scancode_input(key, down)
            })
            .collect()
    }

    /// Presses the keys in order, then releases them in reverse order.
    fn chord(&mut self, keys: &[(u16, bool)]) -> PlatformResult<()> {
        let mut inputs = self.keys(keys, true);
        let reversed: Vec<(u16, bool)> = keys.iter().rev().copied().collect();
        inputs.extend(self.keys(&reversed, false));
        send(&inputs)
    }
}

impl Injector for SendInputInjector {
    fn mouse(&mut self, event: &MouseEvent, display: &DisplayInfo) -> PlatformResult<()> {
        let Ok(action) = MouseAction::try_from(event.action) else {
            tracing::debug!(
                action = event.action,
                "ignoring a mouse event with an unknown action"
            );
            return Ok(());
        };
        let at = to_desktop(display, event.x, event.y);
        match action {
            MouseAction::Move => match at.and_then(|(x, y)| Self::move_input(x, y, 0, 0)) {
                Some(input) => send(&[input]),
                None => {
                    tracing::debug!("ignoring a pointer move off the display");
                    Ok(())
                }
            },
            MouseAction::Down | MouseAction::Up => {
                let (Some((x, y)), Some((down, up, data))) = (at, button_flags(event.button))
                else {
                    tracing::debug!("ignoring a button event off the display or with no button");
                    return Ok(());
                };
                let pressed = action == MouseAction::Down;
                let flag = if pressed { down } else { up };
                let Some(input) = Self::move_input(x, y, flag, data) else {
                    tracing::debug!("ignoring a button event off the virtual desktop");
                    return Ok(());
                };
                if pressed {
                    self.held_buttons.insert((up, data));
                } else {
                    self.held_buttons.remove(&(up, data));
                }
                send(&[input])
            }
            MouseAction::Wheel => {
                let mut inputs = Vec::new();
                if let Some(input) = at.and_then(|(x, y)| Self::move_input(x, y, 0, 0)) {
                    inputs.push(input);
                }
                let (h, v) = wheel_data(event.wheel_dx, event.wheel_dy);
                if v != 0 {
                    inputs.push(mouse_input(0, 0, v as u32, MOUSEEVENTF_WHEEL));
                }
                if h != 0 {
                    inputs.push(mouse_input(0, 0, h as u32, MOUSEEVENTF_HWHEEL));
                }
                send(&inputs)
            }
        }
    }

    fn key(&mut self, event: &KeyEvent) -> PlatformResult<()> {
        let id = (event.scancode, event.extended);
        if let Some(c) = typed_char(event) {
            // By character (KEYEVENTF_UNICODE): the release was part of the tap.
            if event.down {
                self.typed.insert(id);
                return send(&unicode_tap(c));
            }
            if self.typed.remove(&id) {
                return Ok(());
            }
        } else if !event.down && self.typed.remove(&id) {
            return Ok(());
        }
        let Some(key) = scancode_key(event.scancode, event.extended) else {
            tracing::debug!(
                scancode = event.scancode,
                extended = event.extended,
                "ignoring an unknown scancode"
            );
            return Ok(());
        };
        let inputs = self.keys(&[key], event.down);
        send(&inputs)
    }

    fn special(&mut self, kind: SpecialKeyKind) -> PlatformResult<()> {
        match kind {
            SpecialKeyKind::SpecialKeyUnspecified => Ok(()),
            SpecialKeyKind::SpecialKeyCtrlAltDel => send_sas(),
            SpecialKeyKind::SpecialKeyWin => self.chord(&[SC_LWIN]),
            SpecialKeyKind::SpecialKeyAltTab => self.chord(&[SC_LALT, SC_TAB]),
            SpecialKeyKind::SpecialKeyAltF4 => self.chord(&[SC_LALT, SC_F4]),
            SpecialKeyKind::SpecialKeyLockScreen => {
                // SAFETY: LockWorkStation takes no arguments.
                if unsafe { LockWorkStation() } == 0 {
                    return Err(PlatformError::Request(format!(
                        "LockWorkStation failed: {}",
                        last_error()
                    )));
                }
                Ok(())
            }
            SpecialKeyKind::SpecialKeyPrintScreen => {
                // By virtual key: Print Screen's scancode sequence (E0 2A E0 37) varies.
                send(&[
                    key_input(VK_SNAPSHOT, 0x37, KEYEVENTF_EXTENDEDKEY),
                    key_input(VK_SNAPSHOT, 0x37, KEYEVENTF_EXTENDEDKEY | KEYEVENTF_KEYUP),
                ])
            }
        }
    }

    fn text(&mut self, text: &str) -> PlatformResult<()> {
        let mut inputs = Vec::new();
        let mut units = 0usize;
        let mut previous = '\0';
        for c in text.chars() {
            match c {
                // Line breaks as Enter (CR LF counts once), tabs as Tab: applications react
                // to the keys, not to the characters.
                '\n' if previous == '\r' => {}
                '\r' | '\n' => {
                    inputs.push(scancode_input(SC_ENTER, true));
                    inputs.push(scancode_input(SC_ENTER, false));
                }
                '\t' => {
                    inputs.push(scancode_input(SC_TAB, true));
                    inputs.push(scancode_input(SC_TAB, false));
                }
                c if c.is_control() => {}
                c => inputs.extend(unicode_tap(c)),
            }
            previous = c;
            units += c.len_utf16();
            if units > MAX_TEXT_UNITS {
                return Err(PlatformError::Request(format!(
                    "text longer than {MAX_TEXT_UNITS} characters"
                )));
            }
        }
        send(&inputs)
    }

    fn release_all(&mut self) -> PlatformResult<()> {
        let held: Vec<(u16, bool)> = self.held_keys.iter().copied().collect();
        let (mods, others): (Vec<_>, Vec<_>) =
            held.into_iter().partition(|k| MODIFIERS.contains(k));
        let mut inputs = self.keys(&mods, false);
        inputs.extend(self.keys(&others, false));
        for (up, data) in std::mem::take(&mut self.held_buttons) {
            inputs.push(mouse_input(0, 0, data, up));
        }
        self.typed.clear();
        send(&inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use windows_sys::Win32::Foundation::POINT;
    use windows_sys::Win32::UI::Input::KeyboardAndMouse::GetAsyncKeyState;
    use windows_sys::Win32::UI::WindowsAndMessaging::GetCursorPos;

    fn display() -> DisplayInfo {
        DisplayInfo {
            id: 1,
            x: 1920,
            y: -200,
            width: 1280,
            height: 720,
            ..DisplayInfo::default()
        }
    }

    #[test]
    fn scancodes_are_validated() {
        assert_eq!(scancode_key(0x1e, false), Some((0x1e, false))); // A
        assert_eq!(scancode_key(0x48, true), Some((0x48, true))); // Up
        assert_eq!(scancode_key(0x48, false), Some((0x48, false))); // Keypad 8
        assert_eq!(scancode_key(0xe048, false), Some((0x48, true))); // E0 written in
        assert_eq!(scancode_key(0x5b, true), Some((0x5b, true))); // Left Windows
        assert_eq!(scancode_key(0x5b, false), None);
        assert_eq!(scancode_key(0, false), None);
        assert_eq!(scancode_key(0x7f, true), None);
        assert_eq!(scancode_key(0x1_0000, false), None);
        assert_eq!(scancode_key(u32::MAX, true), None);
        for (i, a) in SCANCODES.iter().enumerate() {
            assert!(!SCANCODES[i + 1..].contains(a), "duplicate {a:?}");
        }
        for m in MODIFIERS {
            assert!(SCANCODES.contains(m));
        }
        for &(scan, extended) in SCANCODES.iter().filter(|k| k.1) {
            assert_ne!(scancode_vk((scan, extended)), 0, "{scan:#x}");
        }
    }

    #[test]
    fn coordinates_are_offset_validated_and_normalised() {
        assert_eq!(to_desktop(&display(), 0, 0), Some((1920, -200)));
        assert_eq!(to_desktop(&display(), 1279, 719), Some((3199, 519)));
        assert_eq!(to_desktop(&display(), 1280, 0), None);
        assert_eq!(to_desktop(&display(), -1, 5), None);
        assert_eq!(to_desktop(&display(), i32::MAX, i32::MAX), None);
        // Pixel centres, so both floor(n*w/65536) and round(n*(w-1)/65535) land on them.
        for size in [640, 1280, 1920, 3200, 7680] {
            for p in [0, 1, size / 2, size - 2, size - 1] {
                let n = normalise(p, 0, size).expect("on screen");
                assert!((0..=65535).contains(&n));
                assert_eq!(
                    i64::from(n) * i64::from(size) / 65536,
                    i64::from(p),
                    "{size} {p}"
                );
            }
        }
        assert_eq!(normalise(-1, 0, 100), None);
        assert_eq!(normalise(100, 0, 100), None);
        assert_eq!(
            normalise(-50, -100, 200),
            Some(normalise(50, 0, 200).expect("p"))
        );
    }

    #[test]
    fn wheel_directions_and_steps() {
        assert_eq!(wheel_steps(0), 0);
        assert_eq!(wheel_steps(1), 1);
        assert_eq!(wheel_steps(-240), 2);
        assert_eq!(wheel_steps(i32::MIN), MAX_WHEEL_STEPS);
        // Positive dy scrolls down (negative on Windows), positive dx scrolls right.
        assert_eq!(wheel_data(0, 120), (0, -120));
        assert_eq!(wheel_data(0, -360), (0, 360));
        assert_eq!(wheel_data(240, 0), (240, 0));
        assert_eq!(wheel_data(-1, 0), (-120, 0));
    }

    #[test]
    fn buttons_map_to_flags() {
        assert_eq!(
            button_flags(MouseButton::Left as i32),
            Some((MOUSEEVENTF_LEFTDOWN, MOUSEEVENTF_LEFTUP, 0))
        );
        assert_eq!(
            button_flags(MouseButton::Forward as i32),
            Some((MOUSEEVENTF_XDOWN, MOUSEEVENTF_XUP, 2))
        );
        assert_eq!(button_flags(MouseButton::None as i32), None);
        assert_eq!(button_flags(99), None);
    }

    fn cursor_pos() -> (i32, i32) {
        let mut p = POINT { x: 0, y: 0 };
        // SAFETY: `p` is a valid out pointer.
        unsafe { GetCursorPos(&mut p) };
        (p.x, p.y)
    }

    #[test]
    fn sendinput_moves_the_pointer() {
        let primary = super::super::capture::list_monitors()
            .into_iter()
            .find(|d| d.primary)
            .expect("primary");
        let mut injector = SendInputInjector::open().expect("open");
        for (x, y) in [
            (123, 77),
            (1, 1),
            (primary.width as i32 - 1, primary.height as i32 - 1),
            (640, 400),
        ] {
            let event = MouseEvent {
                action: MouseAction::Move as i32,
                x,
                y,
                ..MouseEvent::default()
            };
            injector.mouse(&event, &primary).expect("move");
            let want = (primary.x + x, primary.y + y);
            let mut got = cursor_pos();
            for _ in 0..50 {
                if got == want {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                got = cursor_pos();
            }
            assert_eq!(got, want);
        }
        // Off the display: ignored, the pointer stays.
        let before = cursor_pos();
        let off = MouseEvent {
            action: MouseAction::Move as i32,
            x: primary.width as i32 + 5,
            y: 3,
            ..MouseEvent::default()
        };
        injector.mouse(&off, &primary).expect("ignored");
        assert_eq!(cursor_pos(), before);
    }

    #[test]
    fn keys_are_tracked_and_released() {
        let mut injector = SendInputInjector::open().expect("open");
        // Left Shift down: tracked; release_all lifts it.
        injector
            .key(&KeyEvent {
                scancode: 0x2a,
                down: true,
                ..KeyEvent::default()
            })
            .expect("shift down");
        assert!(injector.held_keys.contains(&(0x2a, false)));
        // SAFETY: GetAsyncKeyState takes a virtual-key code only.
        let shift = unsafe { GetAsyncKeyState(0x10) };
        assert_ne!(shift as u16 & 0x8000, 0, "Shift by scancode is not down");
        injector.release_all().expect("release");
        assert!(injector.held_keys.is_empty());
        // SAFETY: GetAsyncKeyState takes a virtual-key code only.
        let shift = unsafe { GetAsyncKeyState(0x10) };
        assert_eq!(shift as u16 & 0x8000, 0, "Shift still down");
        // Unknown scancodes are ignored, not errors.
        injector
            .key(&KeyEvent {
                scancode: 0x7f,
                extended: true,
                down: true,
                ..KeyEvent::default()
            })
            .expect("ignored");
        assert!(injector.held_keys.is_empty());
    }

    #[test]
    fn scancodes_map_to_the_expected_virtual_keys() {
        assert_eq!(scancode_vk((0x1e, false)), 0x41); // A
        assert_eq!(scancode_vk((0x2a, false)), 0xa0); // Left Shift
        assert_eq!(scancode_vk((0x1c, false)), 0x0d); // Enter
        assert_eq!(scancode_vk((0x48, true)), 0x26); // Up
        assert_eq!(scancode_vk((0x53, true)), 0x2e); // Delete
    }

    #[test]
    fn ctrl_alt_del_is_a_clear_error_without_sendsas() {
        let mut injector = SendInputInjector::open().expect("open");
        match injector.special(SpecialKeyKind::SpecialKeyCtrlAltDel) {
            Err(PlatformError::Unsupported(message)) => {
                assert!(message.contains("SendSAS"), "{message}");
                assert!(message.contains("SoftwareSASGeneration"), "{message}");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}
