//! The indicator thread: keeps the desktop's session indicator showing who is connected,
//! and turns a click on "End session" into a `CustomerEnd` for the relay. Started when the
//! indicator is first shown; the window closes when the session drops its sender.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use guruconnect_proto::{self as proto, Payload};
use tokio::sync::mpsc;

use crate::platform::{Desktop, Watcher};

/// How often the thread looks at its window between updates.
const INDICATOR_POLL: Duration = Duration::from_millis(25);

/// What the session asks of the indicator.
#[derive(Debug)]
pub(super) enum IndicatorCmd {
    /// Show the window with this list.
    Show(Vec<Watcher>),
    /// Hide it (a managed session nobody watches any more).
    Hide,
}

/// Runs until the session drops its sender.
pub(super) fn indicator_thread(
    desktop: Arc<dyn Desktop>,
    incoming: std_mpsc::Receiver<IndicatorCmd>,
    out: mpsc::Sender<Payload>,
) {
    let mut window = match desktop.indicator() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "the session indicator cannot be shown");
            return;
        }
    };
    let mut ended = false;
    loop {
        let shown = match incoming.recv_timeout(INDICATOR_POLL) {
            // Once the end is sent, later updates must not show the window again.
            Ok(_) if ended => Ok(()),
            Ok(IndicatorCmd::Show(watchers)) => window.show(&watchers),
            Ok(IndicatorCmd::Hide) => window.hide(),
            Err(std_mpsc::RecvTimeoutError::Timeout) => Ok(()),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if let Err(e) = shown {
            tracing::warn!(error = %e, "cannot update the session indicator");
        }
        match window.end_clicked() {
            Ok(true) if !ended => {
                tracing::info!("the person at the machine ended the session");
                ended = true;
                let _ = window.hide();
                if out
                    .blocking_send(Payload::CustomerEnd(proto::CustomerEnd {}))
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the session indicator failed");
                return;
            }
        }
    }
}
