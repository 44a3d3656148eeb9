//! The clipboard thread: sets the desktop's clipboard from a control viewer and sends the
//! desktop's later clipboard changes to the viewers. The clipboard object lives here
//! because some platforms must keep it alive while they own the selection.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use guruconnect_proto::{self as proto, Payload};
use tokio::sync::mpsc;

use crate::platform::Desktop;

/// Clipboard polling period.
const CLIPBOARD_POLL: Duration = Duration::from_millis(500);
/// Largest clipboard text sent to viewers (bytes).
const MAX_CLIPBOARD: usize = 60 * 1024;

/// Runs until the session drops its sender.
pub(super) fn clipboard_thread(
    desktop: Arc<dyn Desktop>,
    incoming: std_mpsc::Receiver<String>,
    out: mpsc::Sender<Payload>,
) {
    let mut clipboard = match desktop.clipboard() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "clipboard unavailable");
            return;
        }
    };
    // What is on the clipboard before the session is not sent; only later changes are.
    let mut last = clipboard.get_text();
    loop {
        match incoming.recv_timeout(CLIPBOARD_POLL) {
            Ok(text) => {
                if let Err(e) = clipboard.set_text(&text) {
                    tracing::warn!(error = %e, "could not set the clipboard");
                }
                last = Some(text);
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                let now = clipboard.get_text();
                if now.is_some() && now != last {
                    last.clone_from(&now);
                    if let Some(text) = now.filter(|t| t.len() <= MAX_CLIPBOARD) {
                        tracing::debug!(bytes = text.len(), "clipboard changed");
                        if out
                            .blocking_send(Payload::Clipboard(proto::ClipboardText { text }))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
