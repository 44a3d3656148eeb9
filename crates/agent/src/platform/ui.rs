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
/// The per-transfer prompt's title in support-code sessions (same size and buttons as the
/// consent prompt).
pub const TRANSFER_TITLE: &str = "GuruConnect file transfer";
/// How long the per-transfer prompt waits; then it refuses.
pub const TRANSFER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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

/// The session indicator's title (tests find the window by it).
pub const INDICATOR_TITLE: &str = "GuruConnect session";
/// Session indicator client width.
pub const INDICATOR_WIDTH: u16 = 340;
/// Session indicator client height.
pub const INDICATOR_HEIGHT: u16 = 180;
/// The indicator's "End session" button.
pub const END_BUTTON: (i16, i16, u16, u16) = (100, 126, 140, 40);
/// Technicians listed by name; the rest are counted ("and 2 more").
pub const INDICATOR_MAX_LISTED: usize = 4;

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

/// A size for people: `1.5 MB`, `820 KB`, `12 bytes`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// What the per-transfer prompt says: the direction, the file and its size.
pub fn transfer_lines(upload: bool, name: &str, size: Option<u64>) -> [String; 3] {
    let name = truncate(name.trim(), 48);
    let size = size.map_or_else(|| "size unknown".to_owned(), human_size);
    [
        if upload {
            "The technician wants to copy a file TO this computer:".to_owned()
        } else {
            "The technician wants to copy a file FROM this computer:".to_owned()
        },
        format!("{name} ({size})"),
        "Allow this transfer?".to_owned(),
    ]
}

/// What the session indicator says, one line each: that a session is active, then who is
/// connected and whether they control or only watch (at most [`INDICATOR_MAX_LISTED`]
/// names, then a count).
pub fn indicator_lines(watchers: &[super::Watcher]) -> Vec<String> {
    let mut lines = vec!["Remote support is active on this computer.".to_owned()];
    if watchers.is_empty() {
        lines.push("No technician is connected right now.".to_owned());
    }
    for w in watchers.iter().take(INDICATOR_MAX_LISTED) {
        let name = truncate(w.name.trim(), 32);
        let name = if name.is_empty() {
            "A technician"
        } else {
            name
        };
        let how = if w.control {
            "is controlling"
        } else {
            "is watching"
        };
        lines.push(format!("{name} {how}"));
    }
    if watchers.len() > INDICATOR_MAX_LISTED {
        lines.push(format!(
            "and {} more",
            watchers.len() - INDICATOR_MAX_LISTED
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transfer_prompt_names_the_direction_the_file_and_its_size() {
        let up = transfer_lines(true, "report.pdf", Some(1_500_000));
        assert!(up[0].contains("TO this computer"), "{up:?}");
        assert_eq!(up[1], "report.pdf (1.5 MB)");
        let down = transfer_lines(false, "/home/u/a.txt", None);
        assert!(down[0].contains("FROM this computer"), "{down:?}");
        assert_eq!(down[1], "/home/u/a.txt (size unknown)");
        assert_eq!(human_size(999), "999 bytes");
        assert_eq!(human_size(2_500_000_000), "2.5 GB");
        assert_eq!(
            transfer_lines(true, &"x".repeat(200), Some(1))[1].len(),
            48 + " (1 bytes)".len()
        );
    }

    #[test]
    fn the_indicator_lists_who_controls_and_who_watches_and_fits() {
        use super::super::Watcher;
        let w = |name: &str, control| Watcher {
            name: name.into(),
            control,
        };
        assert_eq!(
            indicator_lines(&[w("alice", true), w("bob", false)])[1..],
            ["alice is controlling", "bob is watching"]
        );
        assert!(indicator_lines(&[])[1].starts_with("No technician"));
        let many: Vec<Watcher> = (0..7).map(|i| w(&format!("t{i}"), false)).collect();
        let lines = indicator_lines(&many);
        assert_eq!(lines.len(), 1 + INDICATOR_MAX_LISTED + 1);
        assert_eq!(lines.last().map(String::as_str), Some("and 3 more"));
        // Every line fits above the button in the 6x13 core font (16 px a line from y 24).
        let long = indicator_lines(&[w(&"x".repeat(100), true)]);
        assert!(
            long.iter()
                .all(|l| 20 + 6 * l.len() <= usize::from(INDICATOR_WIDTH))
        );
        assert!(24 + 16 * (lines.len() as i16 - 1) + 8 < END_BUTTON.1);
        assert!(i32::from(END_BUTTON.0) + i32::from(END_BUTTON.2) <= i32::from(INDICATOR_WIDTH));
        assert!(i32::from(END_BUTTON.1) + i32::from(END_BUTTON.3) <= i32::from(INDICATOR_HEIGHT));
    }

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
