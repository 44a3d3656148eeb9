//! PC/AT set-1 scancodes (what viewers send, as in the browsers' USB HID → scancode
//! tables) to Linux evdev key codes. An X server using the evdev keycode set (Xorg,
//! Xvfb, XWayland) numbers keys `evdev + 8`.
//!
//! Only keys in the table are injected; an unknown scancode is ignored.

/// `(scancode, extended, evdev)`: the keys a viewer can send.
const TABLE: &[(u16, bool, u16)] = &[
    // Main block, row by row. Set-1 codes 0x01..=0x58 equal the evdev codes.
    (0x01, false, 1),  // Escape
    (0x02, false, 2),  // 1
    (0x03, false, 3),  // 2
    (0x04, false, 4),  // 3
    (0x05, false, 5),  // 4
    (0x06, false, 6),  // 5
    (0x07, false, 7),  // 6
    (0x08, false, 8),  // 7
    (0x09, false, 9),  // 8
    (0x0a, false, 10), // 9
    (0x0b, false, 11), // 0
    (0x0c, false, 12), // -
    (0x0d, false, 13), // =
    (0x0e, false, 14), // Backspace
    (0x0f, false, 15), // Tab
    (0x10, false, 16), // Q
    (0x11, false, 17), // W
    (0x12, false, 18), // E
    (0x13, false, 19), // R
    (0x14, false, 20), // T
    (0x15, false, 21), // Y
    (0x16, false, 22), // U
    (0x17, false, 23), // I
    (0x18, false, 24), // O
    (0x19, false, 25), // P
    (0x1a, false, 26), // [
    (0x1b, false, 27), // ]
    (0x1c, false, 28), // Enter
    (0x1d, false, 29), // Left Ctrl
    (0x1e, false, 30), // A
    (0x1f, false, 31), // S
    (0x20, false, 32), // D
    (0x21, false, 33), // F
    (0x22, false, 34), // G
    (0x23, false, 35), // H
    (0x24, false, 36), // J
    (0x25, false, 37), // K
    (0x26, false, 38), // L
    (0x27, false, 39), // ;
    (0x28, false, 40), // '
    (0x29, false, 41), // `
    (0x2a, false, 42), // Left Shift
    (0x2b, false, 43), // backslash
    (0x2c, false, 44), // Z
    (0x2d, false, 45), // X
    (0x2e, false, 46), // C
    (0x2f, false, 47), // V
    (0x30, false, 48), // B
    (0x31, false, 49), // N
    (0x32, false, 50), // M
    (0x33, false, 51), // ,
    (0x34, false, 52), // .
    (0x35, false, 53), // /
    (0x36, false, 54), // Right Shift
    (0x37, false, 55), // Keypad *
    (0x38, false, 56), // Left Alt
    (0x39, false, 57), // Space
    (0x3a, false, 58), // Caps Lock
    (0x3b, false, 59), // F1
    (0x3c, false, 60), // F2
    (0x3d, false, 61), // F3
    (0x3e, false, 62), // F4
    (0x3f, false, 63), // F5
    (0x40, false, 64), // F6
    (0x41, false, 65), // F7
    (0x42, false, 66), // F8
    (0x43, false, 67), // F9
    (0x44, false, 68), // F10
    (0x45, false, 69), // Num Lock
    (0x46, false, 70), // Scroll Lock
    (0x47, false, 71), // Keypad 7
    (0x48, false, 72), // Keypad 8
    (0x49, false, 73), // Keypad 9
    (0x4a, false, 74), // Keypad -
    (0x4b, false, 75), // Keypad 4
    (0x4c, false, 76), // Keypad 5
    (0x4d, false, 77), // Keypad 6
    (0x4e, false, 78), // Keypad +
    (0x4f, false, 79), // Keypad 1
    (0x50, false, 80), // Keypad 2
    (0x51, false, 81), // Keypad 3
    (0x52, false, 82), // Keypad 0
    (0x53, false, 83), // Keypad .
    (0x56, false, 86), // 102nd key (<> on ISO keyboards)
    (0x57, false, 87), // F11
    (0x58, false, 88), // F12
    // Extended (E0-prefixed) keys.
    (0x1c, true, 96),  // Keypad Enter
    (0x1d, true, 97),  // Right Ctrl
    (0x35, true, 98),  // Keypad /
    (0x37, true, 99),  // Print Screen / SysRq
    (0x38, true, 100), // Right Alt (AltGr)
    (0x47, true, 102), // Home
    (0x48, true, 103), // Up
    (0x49, true, 104), // Page Up
    (0x4b, true, 105), // Left
    (0x4d, true, 106), // Right
    (0x4f, true, 107), // End
    (0x50, true, 108), // Down
    (0x51, true, 109), // Page Down
    (0x52, true, 110), // Insert
    (0x53, true, 111), // Delete
    (0x5b, true, 125), // Left Super (Windows)
    (0x5c, true, 126), // Right Super
    (0x5d, true, 127), // Menu (Compose)
];

/// evdev code of Left Ctrl.
pub const EVDEV_LEFT_CTRL: u16 = 29;
/// evdev code of Left Alt.
pub const EVDEV_LEFT_ALT: u16 = 56;
/// evdev code of Delete.
pub const EVDEV_DELETE: u16 = 111;
/// evdev code of Tab.
pub const EVDEV_TAB: u16 = 15;
/// evdev code of Left Super.
pub const EVDEV_LEFT_SUPER: u16 = 125;
/// evdev code of L.
pub const EVDEV_L: u16 = 38;
/// evdev code of F4.
pub const EVDEV_F4: u16 = 62;
/// evdev code of Print Screen.
pub const EVDEV_PRINT: u16 = 99;

/// Modifier keys (evdev): shifts, controls, alts, supers.
pub const MODIFIERS: &[u16] = &[42, 54, 29, 97, 56, 100, 125, 126];

/// Maps a set-1 scancode to an evdev code. A scancode may also carry the E0 prefix in its
/// high byte (`0xE048` = extended 0x48), as some scancode tables write it.
pub fn scancode_to_evdev(scancode: u32, extended: bool) -> Option<u16> {
    let (code, extended) = match scancode {
        0..=0xff => (scancode, extended),
        0xe000..=0xe0ff => (scancode & 0xff, true),
        _ => return None,
    };
    let code = u16::try_from(code).ok()?;
    TABLE
        .iter()
        .find(|(s, e, _)| *s == code && *e == extended)
        .map(|(_, _, evdev)| *evdev)
}

/// The X keycode of an evdev code (`evdev + 8`), if it fits the 8-bit X keycode.
pub fn evdev_to_x_keycode(evdev: u16) -> Option<u8> {
    u8::try_from(evdev.checked_add(8)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_keys_map_to_evdev() {
        assert_eq!(scancode_to_evdev(0x1e, false), Some(30)); // A
        assert_eq!(scancode_to_evdev(0x02, false), Some(2)); // 1
        assert_eq!(scancode_to_evdev(0x3b, false), Some(59)); // F1
        assert_eq!(scancode_to_evdev(0x58, false), Some(88)); // F12
        assert_eq!(scancode_to_evdev(0x1c, false), Some(28)); // Enter
        assert_eq!(scancode_to_evdev(0x01, false), Some(1)); // Esc
        assert_eq!(scancode_to_evdev(0x0f, false), Some(15)); // Tab
        assert_eq!(scancode_to_evdev(0x0e, false), Some(14)); // Backspace
        assert_eq!(scancode_to_evdev(0x39, false), Some(57)); // Space
    }

    #[test]
    fn extended_keys_differ_from_their_base_keys() {
        assert_eq!(scancode_to_evdev(0x48, true), Some(103)); // Up
        assert_eq!(scancode_to_evdev(0x48, false), Some(72)); // Keypad 8
        assert_eq!(scancode_to_evdev(0x1d, true), Some(97)); // Right Ctrl
        assert_eq!(scancode_to_evdev(0x38, true), Some(100)); // Right Alt
        assert_eq!(scancode_to_evdev(0x53, true), Some(111)); // Delete
        assert_eq!(scancode_to_evdev(0x52, true), Some(110)); // Insert
        assert_eq!(scancode_to_evdev(0x47, true), Some(102)); // Home
        assert_eq!(scancode_to_evdev(0x4f, true), Some(107)); // End
        assert_eq!(scancode_to_evdev(0x49, true), Some(104)); // Page Up
        assert_eq!(scancode_to_evdev(0x51, true), Some(109)); // Page Down
        assert_eq!(scancode_to_evdev(0x5b, true), Some(125)); // Left Super
        assert_eq!(scancode_to_evdev(0x5c, true), Some(126)); // Right Super
        // The E0 prefix written into the scancode means the same key.
        assert_eq!(scancode_to_evdev(0xe048, false), Some(103));
    }

    #[test]
    fn unknown_or_out_of_range_scancodes_are_refused() {
        assert_eq!(scancode_to_evdev(0, false), None);
        assert_eq!(scancode_to_evdev(0x5b, false), None);
        assert_eq!(scancode_to_evdev(0x7f, true), None);
        assert_eq!(scancode_to_evdev(0x1_0000, false), None);
        assert_eq!(scancode_to_evdev(u32::MAX, true), None);
    }

    #[test]
    fn table_has_no_duplicates_and_all_keycodes_fit() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert!(!(a.0 == b.0 && a.1 == b.1), "duplicate {a:?}");
                assert_ne!(a.2, b.2, "two scancodes map to evdev {}", a.2);
            }
            assert!(evdev_to_x_keycode(a.2).is_some());
        }
        assert_eq!(evdev_to_x_keycode(30), Some(38));
        assert_eq!(evdev_to_x_keycode(300), None);
    }
}
