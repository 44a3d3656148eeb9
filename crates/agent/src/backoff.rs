//! Exponential backoff with jitter for reconnecting.

use std::time::Duration;

use rand::Rng as _;

/// Doubling delays from `base` up to `max`, each drawn uniformly from its upper half so
/// that many agents restarting together do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base`, capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(16);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        let half = ceiling / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    }

    /// Starts over (after a connection that worked for a while).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Records a connection that was accepted and then ended after `lasted`: one that
    /// held for [`STABLE_CONNECTION`] starts the delays over, one that ended at once
    /// (a server that accepts and drops) keeps them growing.
    pub fn connection_ended(&mut self, lasted: Duration) {
        if lasted >= STABLE_CONNECTION {
            self.reset();
        }
    }
}

/// How long a connection must hold for the next reconnect to start from the shortest
/// delay again.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        let second = b.next_delay();
        assert!(second >= Duration::from_secs(1) && second <= Duration::from_secs(2));
        let third = b.next_delay();
        assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
        for _ in 0..3 {
            b.next_delay();
        }
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(
                d <= Duration::from_secs(30) && d >= Duration::from_secs(15),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
        assert_eq!(b.attempts(), 1);
    }

    #[test]
    fn a_connection_that_held_starts_over_and_a_flapping_one_does_not() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..6 {
            b.next_delay();
        }
        b.connection_ended(Duration::from_secs(1));
        assert!(
            b.next_delay() >= Duration::from_secs(30),
            "a flap reset the delay"
        );
        b.connection_ended(STABLE_CONNECTION);
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
