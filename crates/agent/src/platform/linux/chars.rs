//! Characters to X keysyms and keys: which keycode, with which of Shift and AltGr
//! (ISO_Level3_Shift), produces a character in the server's current core keyboard mapping.
//!
//! The core mapping of an XKB server lists, per keycode, group 1 levels 1 and 2, group 2
//! levels 1 and 2, then group 1 levels 3 and 4; only group 1 is used here.

/// `ISO_Level3_Shift` (AltGr on most layouts).
pub const XK_ISO_LEVEL3_SHIFT: u32 = 0xfe03;
/// `Shift_L`.
pub const XK_SHIFT_L: u32 = 0xffe1;
/// `Shift_R`.
pub const XK_SHIFT_R: u32 = 0xffe2;
/// `Return`.
pub const XK_RETURN: u32 = 0xff0d;

/// The keysym of a character: Latin-1 characters are their own keysyms, anything else is
/// the Unicode keysym `0x01000000 + code point`. Control characters have none.
pub fn keysym_for_char(c: char) -> Option<u32> {
    let cp = u32::from(c);
    match cp {
        0x20..=0x7e | 0xa0..=0xff => Some(cp),
        _ if c.is_control() => None,
        _ => Some(0x0100_0000 + cp),
    }
}

/// The character of a keysym, the inverse of [`keysym_for_char`] (tests decode with it).
pub fn char_for_keysym(keysym: u32) -> Option<char> {
    match keysym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        0x0100_0000..=0x0110_ffff => char::from_u32(keysym - 0x0100_0000),
        _ => None,
    }
}

/// Which modifiers a key needs to produce a keysym.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Level {
    /// Shift held.
    pub shift: bool,
    /// ISO_Level3_Shift (AltGr) held.
    pub level3: bool,
}

/// A snapshot of the core keyboard mapping (`GetKeyboardMapping`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keymap {
    /// The first keycode listed.
    pub min_keycode: u8,
    /// Keysyms per keycode.
    pub per: usize,
    /// `per` keysyms for each keycode from `min_keycode` on (0 is NoSymbol).
    pub syms: Vec<u32>,
}

impl Keymap {
    fn keycodes(&self) -> impl Iterator<Item = (u8, &[u32])> {
        let per = self.per.max(1);
        self.syms
            .chunks(per)
            .zip(self.min_keycode..=u8::MAX)
            .map(|(syms, code)| (code, syms))
    }

    /// The keysyms of `keycode` (empty when it is out of range).
    pub fn syms_of(&self, keycode: u8) -> &[u32] {
        self.keycodes()
            .find(|(c, _)| *c == keycode)
            .map_or(&[], |(_, s)| s)
    }

    /// The first keycode whose unshifted keysym is `keysym` (a modifier key).
    pub fn keycode_of(&self, keysym: u32) -> Option<u8> {
        self.keycodes()
            .find(|(_, s)| s.first() == Some(&keysym))
            .map(|(c, _)| c)
    }

    /// A key and level producing `keysym`: levels 1 and 2 on any key first, then levels 3
    /// and 4 when `level3` says the layout has an AltGr key to reach them.
    pub fn find(&self, keysym: u32, level3: bool) -> Option<(u8, Level)> {
        let mut slots = vec![
            (0, Level::default()),
            (
                1,
                Level {
                    shift: true,
                    level3: false,
                },
            ),
        ];
        if level3 {
            slots.push((
                4,
                Level {
                    shift: false,
                    level3: true,
                },
            ));
            slots.push((
                5,
                Level {
                    shift: true,
                    level3: true,
                },
            ));
        }
        for (index, level) in slots {
            for (code, syms) in self.keycodes() {
                if syms.get(index) == Some(&keysym) {
                    return Some((code, level));
                }
            }
        }
        None
    }

    /// Keycodes with no keysym at all: spare keys that may be bound to a missing character.
    pub fn spare(&self) -> Vec<u8> {
        self.keycodes()
            .filter(|(_, s)| s.iter().all(|k| *k == 0))
            .map(|(c, _)| c)
            .collect()
    }

    /// Binds every level of `keycode` to `keysym` (or NoSymbol for 0) in this snapshot.
    pub fn set(&mut self, keycode: u8, keysym: u32) {
        let per = self.per.max(1);
        let Some(i) = keycode.checked_sub(self.min_keycode) else {
            return;
        };
        let start = usize::from(i) * per;
        if let Some(slot) = self.syms.get_mut(start..start + per) {
            slot.fill(keysym);
        }
    }
}

/// Whether a key's levels 1 and 2 are the two cases of one letter, so Caps Lock flips them.
pub fn is_cased_pair(syms: &[u32]) -> bool {
    let (Some(lower), Some(upper)) = (
        syms.first().copied().and_then(char_for_keysym),
        syms.get(1).copied().and_then(char_for_keysym),
    ) else {
        return false;
    };
    lower != upper && lower.to_uppercase().eq(std::iter::once(upper))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three keys of a German layout (z, q with @ on AltGr, 1 with !) and one spare key.
    fn german() -> Keymap {
        let per = 6;
        let mut syms = vec![0u32; per * 5];
        syms[0..6].copy_from_slice(&[0x7a, 0x5a, 0x7a, 0x5a, 0, 0]); // 10: z Z
        syms[6..12].copy_from_slice(&[0x71, 0x51, 0x71, 0x51, 0x40, 0]); // 11: q Q … @
        syms[12..18].copy_from_slice(&[0x31, 0x21, 0x31, 0x21, 0xb9, 0xa1]); // 12: 1 !
        syms[24..30].copy_from_slice(&[XK_ISO_LEVEL3_SHIFT, 0, 0, 0, 0, 0]); // 14
        Keymap {
            min_keycode: 10,
            per,
            syms,
        }
    }

    #[test]
    fn keysyms_follow_latin1_then_unicode() {
        assert_eq!(keysym_for_char('a'), Some(0x61));
        assert_eq!(keysym_for_char('ß'), Some(0xdf));
        assert_eq!(keysym_for_char('€'), Some(0x0100_20ac));
        assert_eq!(keysym_for_char('\n'), None);
        assert_eq!(keysym_for_char('\u{85}'), None);
        for c in ['a', '@', 'ñ', 'Ω', '😀'] {
            assert_eq!(keysym_for_char(c).and_then(char_for_keysym), Some(c));
        }
        assert_eq!(char_for_keysym(XK_RETURN), None);
    }

    #[test]
    fn keys_and_levels_are_found() {
        let map = german();
        let plain = Level::default();
        let shift = Level {
            shift: true,
            level3: false,
        };
        let altgr = Level {
            shift: false,
            level3: true,
        };
        assert_eq!(map.find(0x7a, true), Some((10, plain)));
        assert_eq!(map.find(0x5a, true), Some((10, shift)));
        assert_eq!(map.find(0x21, true), Some((12, shift)));
        assert_eq!(map.find(0x40, true), Some((11, altgr)));
        assert_eq!(
            map.find(0xa1, true),
            Some((
                12,
                Level {
                    shift: true,
                    level3: true
                }
            ))
        );
        // No AltGr key: level 3 is out of reach.
        assert_eq!(map.find(0x40, false), None);
        assert_eq!(map.find(0x0100_00f1, true), None);
        assert_eq!(map.keycode_of(XK_ISO_LEVEL3_SHIFT), Some(14));
    }

    #[test]
    fn a_spare_key_is_bound_and_found() {
        let mut map = german();
        assert_eq!(map.spare(), vec![13]);
        map.set(13, 0xf1);
        assert_eq!(map.syms_of(13), &[0xf1; 6]);
        assert_eq!(map.find(0xf1, true), Some((13, Level::default())));
        assert!(map.spare().is_empty());
        map.set(13, 0);
        assert_eq!(map.spare(), vec![13]);
        map.set(9, 0x61); // below the range: ignored
        assert_eq!(map.syms_of(9), &[] as &[u32]);
    }

    #[test]
    fn caps_lock_flips_only_letters() {
        assert!(is_cased_pair(&[0x7a, 0x5a]));
        assert!(is_cased_pair(&[0xe4, 0xc4])); // ä Ä
        assert!(!is_cased_pair(&[0x31, 0x21]));
        assert!(!is_cased_pair(&[0x20]));
    }
}
