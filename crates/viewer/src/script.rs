//! Scripted input for the headless viewer: one action per line.
//!
//! ```text
//! # comment
//! move 100 200          # pointer to (100, 200)
//! click 100 200 left    # press and release (left|middle|right; default left)
//! key 0x1e              # PC set-1 scancode, pressed and released (prefix e0 for extended: key e0:0x4b)
//! type hello 42         # letters, digits and spaces typed as scancodes
//! wheel -1              # wheel notches (negative = down)
//! cad                   # Ctrl+Alt+Del
//! sleep 250             # milliseconds
//! ```

use std::time::Duration;

use guruconnect_proto::{self as proto, Payload};

/// One scripted step.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send these payloads.
    Send(Vec<Payload>),
    /// Wait.
    Sleep(Duration),
}

/// Parses a script; errors name the line.
pub fn parse(text: &str) -> anyhow::Result<Vec<Action>> {
    let mut actions = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let bad = || anyhow::anyhow!("script line {}: cannot parse `{line}`", n + 1);
        let num = |i: usize| -> anyhow::Result<i32> {
            words.get(i).ok_or_else(bad)?.parse().map_err(|_| bad())
        };
        let action = match words[0] {
            "move" => Action::Send(vec![mouse(
                proto::MouseAction::Move,
                proto::MouseButton::None,
                num(1)?,
                num(2)?,
            )]),
            "click" => {
                let button = match words.get(3).copied().unwrap_or("left") {
                    "left" => proto::MouseButton::Left,
                    "middle" => proto::MouseButton::Middle,
                    "right" => proto::MouseButton::Right,
                    _ => return Err(bad()),
                };
                let (x, y) = (num(1)?, num(2)?);
                Action::Send(vec![
                    mouse(proto::MouseAction::Move, proto::MouseButton::None, x, y),
                    mouse(proto::MouseAction::Down, button, x, y),
                    mouse(proto::MouseAction::Up, button, x, y),
                ])
            }
            "wheel" => {
                let mut event = mouse(proto::MouseAction::Wheel, proto::MouseButton::None, 0, 0);
                if let Payload::MouseEvent(m) = &mut event {
                    m.wheel_dy = num(1)?;
                }
                Action::Send(vec![event])
            }
            "key" => {
                let spec = words.get(1).ok_or_else(bad)?;
                let (extended, code) = match spec.strip_prefix("e0:") {
                    Some(rest) => (true, rest),
                    None => (false, *spec),
                };
                let code = parse_u32(code).ok_or_else(bad)?;
                Action::Send(key_press(code, extended))
            }
            "type" => {
                let text = line.strip_prefix("type").unwrap_or_default().trim_start();
                let mut payloads = Vec::new();
                for c in text.chars() {
                    let code = scancode_for(c).ok_or_else(|| {
                        anyhow::anyhow!("script line {}: cannot type {c:?}", n + 1)
                    })?;
                    payloads.extend(key_press(code, false));
                }
                Action::Send(payloads)
            }
            "cad" => Action::Send(vec![Payload::SpecialKey(proto::SpecialKey {
                kind: proto::SpecialKeyKind::SpecialKeyCtrlAltDel as i32,
            })]),
            "sleep" => Action::Sleep(Duration::from_millis(
                u64::try_from(num(1)?).map_err(|_| bad())?,
            )),
            _ => return Err(bad()),
        };
        actions.push(action);
    }
    Ok(actions)
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn mouse(action: proto::MouseAction, button: proto::MouseButton, x: i32, y: i32) -> Payload {
    Payload::MouseEvent(proto::MouseEvent {
        action: action as i32,
        button: button as i32,
        x,
        y,
        ..Default::default()
    })
}

fn key_press(scancode: u32, extended: bool) -> Vec<Payload> {
    [true, false]
        .into_iter()
        .map(|down| {
            Payload::KeyEvent(proto::KeyEvent {
                scancode,
                extended,
                down,
                ..Default::default()
            })
        })
        .collect()
}

/// PC set-1 scancode of a lowercase letter, digit or space.
pub fn scancode_for(c: char) -> Option<u32> {
    const ROWS: [(&str, u32); 4] = [
        ("1234567890", 0x02),
        ("qwertyuiop", 0x10),
        ("asdfghjkl", 0x1e),
        ("zxcvbnm", 0x2c),
    ];
    if c == ' ' {
        return Some(0x39);
    }
    ROWS.iter().find_map(|(row, base)| {
        row.chars()
            .position(|r| r == c)
            .map(|i| base + u32::try_from(i).unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_action() {
        let script =
            "move 1 2\nclick 3 4 right\nkey e0:0x4b\ntype ab 1\nwheel -2\ncad\nsleep 5 # wait\n";
        let actions = parse(script).expect("parses");
        assert_eq!(actions.len(), 7);
        assert_eq!(actions[6], Action::Sleep(Duration::from_millis(5)));
        let Action::Send(typed) = &actions[3] else {
            panic!("type sends keys")
        };
        assert_eq!(typed.len(), 8, "a, b, space, 1: down and up each");
    }

    #[test]
    fn scancodes_match_the_pc_layout() {
        assert_eq!(scancode_for('a'), Some(0x1e));
        assert_eq!(scancode_for('q'), Some(0x10));
        assert_eq!(scancode_for('1'), Some(0x02));
        assert_eq!(scancode_for('0'), Some(0x0b));
        assert_eq!(scancode_for('m'), Some(0x32));
        assert_eq!(scancode_for('!'), None);
    }

    #[test]
    fn bad_lines_name_their_number() {
        let err = parse("move 1 2\njump 3").expect_err("unknown verb");
        assert!(err.to_string().contains("line 2"));
    }
}
