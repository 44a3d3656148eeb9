//! Per-client-IP rate limits (SPEC §4.9), built on `governor`'s keyed GCRA limiters, plus
//! the consecutive-failure lockout for support codes.
//!
//! The code lockout is one per address for every door a code opens: `/api/codes/validate`
//! and a code presented on `/ws/agent` count towards it and are both refused while it
//! lasts. Per-agent keys are not codes and are never locked out by code failures, so a
//! managed machine behind the same NAT as a code guesser keeps its connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// Which limit a request falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `POST /api/auth/login`: 8 per minute.
    Login,
    /// `POST /api/auth/change-password`: 5 per minute.
    ChangePassword,
    /// `POST /api/codes/validate`: 15 per minute.
    CodeValidate,
    /// `POST /api/enroll`: 10 per minute.
    Enroll,
    /// A second-factor code (`POST /api/auth/login/totp`, confirming and disabling TOTP):
    /// 5 per minute per IP; per user, 5 failures a minute (see
    /// [`RateLimits::check_second_factor_user`]).
    SecondFactor,
}

impl Limit {
    /// Metric label.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Login => "login",
            Limit::ChangePassword => "change_password",
            Limit::CodeValidate => "code_validate",
            Limit::Enroll => "enroll",
            Limit::SecondFactor => "second_factor",
        }
    }
}

/// Consecutive failed code attempts (validations and agent connects) that lock an IP out.
pub const CODE_FAILURE_LOCKOUT_THRESHOLD: u32 = 10;
/// How long the lockout lasts.
pub const CODE_LOCKOUT: Duration = Duration::from_secs(15 * 60);

/// Failed second-factor attempts per user that block further attempts…
pub const SECOND_FACTOR_FAILURES: usize = 5;
/// …within this window.
pub const SECOND_FACTOR_WINDOW: Duration = Duration::from_secs(60);

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// The server's rate limiters.
pub struct RateLimits {
    login: DefaultKeyedRateLimiter<IpAddr>,
    change_password: DefaultKeyedRateLimiter<IpAddr>,
    code_validate: DefaultKeyedRateLimiter<IpAddr>,
    enroll: DefaultKeyedRateLimiter<IpAddr>,
    second_factor: DefaultKeyedRateLimiter<IpAddr>,
    /// Failed second-factor attempts per user id, the last minute's.
    second_factor_failures: Mutex<HashMap<String, Vec<Instant>>>,
    code_failures: Mutex<HashMap<IpAddr, FailureState>>,
    /// Failed enrollments per client IP and per site code.
    enroll_failures: Mutex<HashMap<String, FailureState>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct FailureState {
    consecutive: u32,
    locked_until: Option<Instant>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimits {
    /// Limits as SPEC §4.9 sets them.
    pub fn new() -> Self {
        Self {
            login: RateLimiter::keyed(per_minute(8)),
            change_password: RateLimiter::keyed(per_minute(5)),
            code_validate: RateLimiter::keyed(per_minute(15)),
            enroll: RateLimiter::keyed(per_minute(10)),
            second_factor: RateLimiter::keyed(per_minute(5)),
            second_factor_failures: Mutex::new(HashMap::new()),
            code_failures: Mutex::new(HashMap::new()),
            enroll_failures: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `ip`'s bucket for `limit`, or answers 429 with the wait.
    pub fn check(&self, limit: Limit, ip: IpAddr) -> Result<(), ApiError> {
        let limiter = match limit {
            Limit::Login => &self.login,
            Limit::ChangePassword => &self.change_password,
            Limit::CodeValidate => &self.code_validate,
            Limit::Enroll => &self.enroll,
            Limit::SecondFactor => &self.second_factor,
        };
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited(wait.as_secs() + 1)
        })
    }

    /// Refuses a second-factor attempt for `user_id` (from any address) once it has had
    /// [`SECOND_FACTOR_FAILURES`] failures in the last [`SECOND_FACTOR_WINDOW`].
    pub fn check_second_factor_user(&self, user_id: &str) -> Result<(), ApiError> {
        let mut map = self
            .second_factor_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(failures) = map.get_mut(user_id) else {
            return Ok(());
        };
        let now = Instant::now();
        failures.retain(|t| now.duration_since(*t) < SECOND_FACTOR_WINDOW);
        match failures.first() {
            Some(oldest) if failures.len() >= SECOND_FACTOR_FAILURES => {
                let wait = SECOND_FACTOR_WINDOW.saturating_sub(now.duration_since(*oldest));
                Err(ApiError::RateLimited(wait.as_secs() + 1))
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed second-factor attempt for `user_id`.
    pub fn record_second_factor_failure(&self, user_id: &str) {
        let mut map = self
            .second_factor_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(user_id.to_owned())
            .or_default()
            .push(Instant::now());
    }

    /// Refuses an IP that is locked out after repeated failed code attempts.
    pub fn check_code_lockout(&self, ip: IpAddr) -> Result<(), ApiError> {
        let map = self.code_failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = map.get(&ip).and_then(|s| s.locked_until) {
            let now = Instant::now();
            if until > now {
                return Err(ApiError::RateLimited((until - now).as_secs() + 1));
            }
        }
        Ok(())
    }

    /// Records the outcome of a code attempt (a validation, or an agent connecting with a
    /// code); the tenth consecutive failure starts a lockout, a success resets the count.
    pub fn record_code_attempt(&self, ip: IpAddr, success: bool) {
        let mut map = self.code_failures.lock().unwrap_or_else(|e| e.into_inner());
        if success {
            map.remove(&ip);
            return;
        }
        let state = map.entry(ip).or_default();
        if state
            .locked_until
            .is_some_and(|until| until <= Instant::now())
        {
            *state = FailureState::default();
        }
        state.consecutive += 1;
        if state.consecutive >= CODE_FAILURE_LOCKOUT_THRESHOLD {
            state.locked_until = Some(Instant::now() + CODE_LOCKOUT);
        }
    }

    /// Refuses an enrollment while its IP or its site code is locked out after repeated
    /// failures (keys: `ip:<addr>`, `site:<code>`).
    pub fn check_enroll_lockout(&self, keys: &[String]) -> Result<(), ApiError> {
        let map = self
            .enroll_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for key in keys {
            if let Some(until) = map.get(key).and_then(|s| s.locked_until)
                && until > now
            {
                return Err(ApiError::RateLimited((until - now).as_secs() + 1));
            }
        }
        Ok(())
    }

    /// Records an enrollment outcome for each key; the tenth consecutive failure of a key
    /// locks it out for [`CODE_LOCKOUT`].
    pub fn record_enroll(&self, keys: &[String], success: bool) {
        let mut map = self
            .enroll_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if success {
                map.remove(key);
                continue;
            }
            let state = map.entry(key.clone()).or_default();
            if state
                .locked_until
                .is_some_and(|until| until <= Instant::now())
            {
                *state = FailureState::default();
            }
            state.consecutive += 1;
            if state.consecutive >= CODE_FAILURE_LOCKOUT_THRESHOLD {
                state.locked_until = Some(Instant::now() + CODE_LOCKOUT);
            }
        }
    }

    /// Drops idle state so memory stays bounded; called periodically.
    pub fn prune(&self) {
        self.login.retain_recent();
        self.change_password.retain_recent();
        self.code_validate.retain_recent();
        self.enroll.retain_recent();
        self.second_factor.retain_recent();
        let mut map = self
            .second_factor_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.retain(|_, failures| {
            failures.retain(|t| t.elapsed() < SECOND_FACTOR_WINDOW);
            !failures.is_empty()
        });
        drop(map);
        let now = Instant::now();
        let mut map = self.code_failures.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.locked_until.is_none_or(|until| until > now));
        drop(map);
        let mut map = self
            .enroll_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.locked_until.is_some_and(|until| until > now) || s.consecutive > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_allows_eight_per_minute_per_ip() {
        let limits = RateLimits::new();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..8 {
            limits.check(Limit::Login, a).expect("within quota");
        }
        assert!(matches!(limits.check(Limit::Login, a), Err(ApiError::RateLimited(s)) if s >= 1));
        limits.check(Limit::Login, b).expect("other IPs unaffected");
    }

    #[test]
    fn ten_consecutive_code_failures_lock_out() {
        let limits = RateLimits::new();
        let ip: IpAddr = "192.0.2.3".parse().expect("ip");
        for _ in 0..9 {
            limits.record_code_attempt(ip, false);
        }
        limits
            .check_code_lockout(ip)
            .expect("nine failures are not a lockout");
        limits.record_code_attempt(ip, false);
        assert!(limits.check_code_lockout(ip).is_err());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let limits = RateLimits::new();
        let ip: IpAddr = "192.0.2.4".parse().expect("ip");
        for _ in 0..9 {
            limits.record_code_attempt(ip, false);
        }
        limits.record_code_attempt(ip, true);
        limits.record_code_attempt(ip, false);
        limits.check_code_lockout(ip).expect("count restarted");
    }
}
