//! The input thread: injects the technicians' mouse, keyboard, special keys and typed text,
//! and releases everything it pressed when the session ends.

use std::sync::mpsc as std_mpsc;

use guruconnect_proto::{
    self as proto, DisplayInfo, KeyEvent, MouseEvent, Payload, SpecialKeyKind,
};
use tokio::sync::mpsc;

use super::notice;
use crate::platform::{Injector, PlatformError};

/// Longest text typed in one request, in bytes.
pub(super) const MAX_TYPED_TEXT: usize = 4096;

/// What the session asks of the input thread.
pub(super) enum InputCmd {
    Mouse(MouseEvent, DisplayInfo),
    Key(KeyEvent),
    Special(SpecialKeyKind),
    Text(String),
    ReleaseAll,
}

fn special_name(kind: SpecialKeyKind) -> &'static str {
    match kind {
        SpecialKeyKind::SpecialKeyCtrlAltDel => "Ctrl+Alt+Del",
        SpecialKeyKind::SpecialKeyWin => "the Windows key",
        SpecialKeyKind::SpecialKeyAltTab => "Alt+Tab",
        SpecialKeyKind::SpecialKeyLockScreen => "Lock screen",
        SpecialKeyKind::SpecialKeyPrintScreen => "Print Screen",
        SpecialKeyKind::SpecialKeyAltF4 => "Alt+F4",
        SpecialKeyKind::SpecialKeyUnspecified => "a special key",
    }
}

/// The platform's own words, without the error kind's prefix.
fn detail(e: &PlatformError) -> String {
    match e {
        PlatformError::Unsupported(m) | PlatformError::Request(m) => m.clone(),
        PlatformError::NoDisplay { .. } => e.to_string(),
    }
}

/// Runs until the session drops its command channel.
pub(super) fn input_thread(
    mut injector: Box<dyn Injector>,
    cmds: std_mpsc::Receiver<InputCmd>,
    out: mpsc::Sender<Payload>,
) {
    while let Ok(cmd) = cmds.recv() {
        let result = match &cmd {
            InputCmd::Mouse(event, display) => injector.mouse(event, display),
            InputCmd::Key(event) => injector.key(event),
            InputCmd::Special(kind) => injector.special(*kind),
            InputCmd::Text(text) => injector.text(text),
            InputCmd::ReleaseAll => injector.release_all(),
        };
        let Err(e) = result else { continue };
        tracing::warn!(error = %e, "input injection failed");
        // What the technician asked for explicitly and did not happen is said to them;
        // a failed mouse move is only logged (there would be hundreds).
        let told = match (&cmd, &e) {
            (InputCmd::Special(kind), _) => Some(format!(
                "{} was not sent. {}",
                special_name(*kind),
                detail(&e)
            )),
            (InputCmd::Text(_), _) => Some(format!("The text was not typed. {}", detail(&e))),
            (_, PlatformError::NoDisplay { .. }) => Some(format!("Input is not possible: {e}")),
            _ => None,
        };
        if let Some(text) = told {
            let _ = out.try_send(notice(proto::agent_notice::Level::Warning, text));
        }
    }
    // The session is over: nothing may stay pressed.
    let _ = injector.release_all();
}
