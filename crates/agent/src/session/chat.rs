//! The chat thread: shows the technicians' messages in the desktop's chat window and sends
//! the person's replies back. Started by the first message; chat text is never logged.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use guruconnect_proto::{self as proto, Payload};
use tokio::sync::mpsc;

use super::now_us;
use crate::platform::Desktop;
use crate::platform::ui::{MAX_CHAT_TEXT, truncate};

/// How often the chat thread looks at its window between incoming messages.
const CHAT_POLL: Duration = Duration::from_millis(25);

/// Runs until the session drops its sender (the window closes with it).
pub(super) fn chat_thread(
    desktop: Arc<dyn Desktop>,
    incoming: std_mpsc::Receiver<proto::ChatMessage>,
    out: mpsc::Sender<Payload>,
) {
    let mut window = match desktop.chat() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "the chat window cannot be opened");
            return;
        }
    };
    let me = desktop.local_user();
    loop {
        match incoming.recv_timeout(CHAT_POLL) {
            Ok(message) => {
                if let Err(e) = window.show(&message.from, &message.text) {
                    tracing::warn!(error = %e, "cannot show a chat message");
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            // The session is over; dropping the window closes it.
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let replies = match window.replies() {
            Ok(replies) => replies,
            Err(e) => {
                tracing::warn!(error = %e, "the chat window failed");
                return;
            }
        };
        for text in replies {
            let text = truncate(text.trim(), MAX_CHAT_TEXT).to_owned();
            if text.is_empty() {
                continue;
            }
            tracing::info!("the user sent a chat reply");
            let reply = Payload::Chat(proto::ChatMessage {
                from: me.clone(),
                text,
                sent_at_ms: now_us() / 1000,
            });
            if out.blocking_send(reply).is_err() {
                return;
            }
        }
    }
}
