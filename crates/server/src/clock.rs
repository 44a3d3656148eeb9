//! The server's wall clock for expiries (support codes, consent). Tests advance it instead
//! of sleeping, so TTL behaviour is checked deterministically.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::auth::tokens::now_millis;

/// Wall clock with a test offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Milliseconds since the Unix epoch, plus any test offset.
    pub fn now_millis(&self) -> i64 {
        now_millis() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves this clock forward (tests only; production never calls it).
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}
