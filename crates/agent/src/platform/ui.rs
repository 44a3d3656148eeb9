//! The layout of the agent's own windows, shared by every platform so the person at the
//! machine sees the same prompt everywhere and tests click the same spots on X11 and under
//! Wine. Rectangles are `(x, y, width, height)` in client-area pixels.

/// The consent prompt's title (tests find the window by it).
pub const CONSENT_TITLE: &str = "GuruConnect remote support";
/// Consent prompt client width.
pub const CONSENT_WIDTH: u16 = 460;
/// Consent prompt client height.
pub const CONSENT_HEIGHT: u16 = 200;
/// The "Allow" button.
pub const ALLOW_BUTTON: (i16, i16, u16, u16) = (70, 130, 140, 44);
/// The "Deny" button.
pub const DENY_BUTTON: (i16, i16, u16, u16) = (250, 130, 140, 44);
/// How long the prompt waits when the request names no timeout; then it denies.
pub const CONSENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The chat window's title.
pub const CHAT_TITLE: &str = "GuruConnect chat";
/// Chat window client width.
pub const CHAT_WIDTH: u16 = 480;
/// Chat window client height.
pub const CHAT_HEIGHT: u16 = 300;
/// The chat window's one-line reply field.
pub const REPLY_FIELD: (i16, i16, u16, u16) = (10, 262, 460, 28);
/// Longest chat message kept or reply accepted, in bytes.
pub const MAX_CHAT_TEXT: usize = 4096;

/// Centre of a rectangle, for tests that click it.
pub fn center(rect: (i16, i16, u16, u16)) -> (i32, i32) {
    (
        i32::from(rect.0) + i32::from(rect.2) / 2,
        i32::from(rect.1) + i32::from(rect.3) / 2,
    )
}

/// Whether `(x, y)` lies inside `rect`.
pub fn inside(rect: (i16, i16, u16, u16), x: i32, y: i32) -> bool {
    x >= i32::from(rect.0)
        && y >= i32::from(rect.1)
        && x < i32::from(rect.0) + i32::from(rect.2)
        && y < i32::from(rect.1) + i32::from(rect.3)
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What the consent prompt says, one line each: who asks, and what allowing means.
pub fn consent_lines(product: &str, technician: &str) -> [String; 2] {
    let technician = truncate(technician.trim(), 64);
    let technician = if technician.is_empty() {
        "A technician"
    } else {
        technician
    };
    [
        format!("{technician} ({product}) asks to view and control"),
        "this computer. Allow remote support?".to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn buttons_do_not_overlap_and_fit_the_prompt() {
        let (ax, ay) = center(ALLOW_BUTTON);
        assert!(inside(ALLOW_BUTTON, ax, ay) && !inside(DENY_BUTTON, ax, ay));
        for b in [ALLOW_BUTTON, DENY_BUTTON] {
            assert!(i32::from(b.0) + i32::from(b.2) <= i32::from(CONSENT_WIDTH));
            assert!(i32::from(b.1) + i32::from(b.3) <= i32::from(CONSENT_HEIGHT));
        }
    }

    #[test]
    fn consent_names_the_technician_or_a_placeholder() {
        assert!(consent_lines("GuruConnect", "alice")[0].starts_with("alice (GuruConnect)"));
        assert!(consent_lines("GuruConnect", "  ")[0].starts_with("A technician"));
    }
}
