//! Token bucket for viewer → agent input (SPEC §4.7): 200 events/s, excess dropped.

use std::time::Instant;

/// Input events allowed per second per viewer.
pub const INPUT_EVENTS_PER_SEC: f64 = 200.0;

/// Frame acknowledgements allowed per second per viewer (issue 16).
pub const FRAME_ACKS_PER_SEC: f64 = 120.0;

/// A token bucket; `try_take` never waits and never queues.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second up to `capacity`.
    pub fn new(rate: f64, capacity: f64) -> Self {
        Self {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// The viewer input bucket.
    pub fn for_input() -> Self {
        Self::new(INPUT_EVENTS_PER_SEC, INPUT_EVENTS_PER_SEC)
    }

    /// The bucket for a viewer's frame acknowledgements: more than the agent's 60 fps cap,
    /// so that none is lost to it.
    pub fn for_frame_acks() -> Self {
        Self::new(FRAME_ACKS_PER_SEC, FRAME_ACKS_PER_SEC)
    }

    /// Takes one token if available.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// Takes one token at a given instant (for tests).
    pub fn try_take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(200.0, 200.0);
        bucket.last = start;
        let burst = (0..1000).filter(|_| bucket.try_take_at(start)).count();
        assert_eq!(burst, 200);
        // One more second refills 200 tokens, not more.
        let later = start + Duration::from_secs(1);
        let refilled = (0..1000).filter(|_| bucket.try_take_at(later)).count();
        assert_eq!(refilled, 200);
    }
}
