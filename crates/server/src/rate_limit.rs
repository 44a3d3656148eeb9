//! Per-client-IP rate limits (SPEC §4.9) plus the consecutive-failure lockout for
//! support codes, with two backends:
//!
//! - **local** (a single server, the default): `governor`'s keyed GCRA limiters and
//!   in-memory failure counts;
//! - **shared** (`[cluster]`): counters in the database that every instance updates with
//!   one conditional statement, so N instances do not multiply the limits by N.
//!
//! The shared counter is a sliding window over fixed one-minute windows: a hit passes
//! when the current window's count plus the previous window's, weighted by the share of
//! it still inside the last minute (rounded up), stays within the quota. Like GCRA it
//! never lets more than the quota through in any minute-long span up to rounding, and
//! refused hits do not count. The conditional upsert on the current window is the gate;
//! the previous window is closed (instance clocks are assumed NTP-synced), so reading it
//! apart does not let two instances both pass. Lockouts are rows keyed like the local
//! maps; failure counts untouched for a day are pruned.
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

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use guruconnect_store::Store;

use crate::clock::Clock;
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
    /// Metric label; also the prefix of the limit's keys in the shared backend.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Login => "login",
            Limit::ChangePassword => "change_password",
            Limit::CodeValidate => "code_validate",
            Limit::Enroll => "enroll",
            Limit::SecondFactor => "second_factor",
        }
    }

    /// Requests allowed per client IP and minute.
    pub fn per_minute(self) -> u32 {
        match self {
            Limit::Login => 8,
            Limit::ChangePassword => 5,
            Limit::CodeValidate => 15,
            Limit::Enroll => 10,
            Limit::SecondFactor => 5,
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

/// The shared backend's window: every limit is per minute.
const WINDOW_MS: i64 = 60_000;
/// The shared backend forgets failure counts (not lockouts) untouched for this long.
const IDLE_FAILURES_MS: i64 = 24 * 60 * 60 * 1000;

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Retry-After seconds for a wait, rounded up as governor's answer is.
fn retry_after(wait_ms: i64) -> ApiError {
    ApiError::RateLimited(u64::try_from(wait_ms.max(0) / 1000).unwrap_or(0) + 1)
}

/// The server's rate limits, local or shared (see the module doc).
#[derive(Debug)]
pub struct RateLimits {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Local(Box<LocalLimits>),
    Shared(SharedLimits),
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimits {
    /// In-process limits, as SPEC §4.9 sets them: the single-server default.
    pub fn new() -> Self {
        Self {
            backend: Backend::Local(Box::new(LocalLimits::new())),
        }
    }

    /// Limits counted in `store`, shared by every instance on the same database; `clock`
    /// dates the hits.
    pub fn shared(store: Store, clock: Clock) -> Self {
        Self {
            backend: Backend::Shared(SharedLimits { store, clock }),
        }
    }

    /// Whether the limits are counted in the database.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Shared(_))
    }

    /// Takes one request from `ip`'s quota for `limit`, or answers 429 with the wait.
    pub async fn check(&self, limit: Limit, ip: IpAddr) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Local(l) => l.check(limit, ip),
            Backend::Shared(s) => s.check(limit, ip).await,
        }
    }

    /// Refuses a second-factor attempt for `user_id` (from any address) once it has had
    /// [`SECOND_FACTOR_FAILURES`] failures in the last [`SECOND_FACTOR_WINDOW`].
    pub async fn check_second_factor_user(&self, user_id: &str) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Local(l) => l.check_second_factor_user(user_id),
            Backend::Shared(s) => s.check_second_factor_user(user_id).await,
        }
    }

    /// Counts a failed second-factor attempt for `user_id`.
    pub async fn record_second_factor_failure(&self, user_id: &str) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Local(l) => {
                l.record_second_factor_failure(user_id);
                Ok(())
            }
            Backend::Shared(s) => s.record_second_factor_failure(user_id).await,
        }
    }

    /// Refuses an IP that is locked out after repeated failed code attempts.
    pub async fn check_code_lockout(&self, ip: IpAddr) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Local(l) => l.check_code_lockout(ip),
            Backend::Shared(s) => s.check_lockouts(&[code_key(ip)]).await,
        }
    }

    /// Records the outcome of a code attempt (a validation, or an agent connecting with a
    /// code); the tenth consecutive failure starts a lockout, a success resets the count.
    pub async fn record_code_attempt(&self, ip: IpAddr, success: bool) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Local(l) => {
                l.record_code_attempt(ip, success);
                Ok(())
            }
            Backend::Shared(s) => s.record_outcome(&[code_key(ip)], success).await,
        }
    }

    /// Refuses an enrollment while its IP or its site code is locked out after repeated
    /// failures (keys: `ip:<addr>`, `site:<code>`).
    pub async fn check_enroll_lockout(&self, keys: &[String]) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Local(l) => l.check_enroll_lockout(keys),
            Backend::Shared(s) => s.check_lockouts(&enroll_keys(keys)).await,
        }
    }

    /// Records an enrollment outcome for each key; the tenth consecutive failure of a key
    /// locks it out for [`CODE_LOCKOUT`].
    pub async fn record_enroll(&self, keys: &[String], success: bool) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Local(l) => {
                l.record_enroll(keys, success);
                Ok(())
            }
            Backend::Shared(s) => s.record_outcome(&enroll_keys(keys), success).await,
        }
    }

    /// Drops idle state so memory (or the tables) stay bounded; called periodically.
    pub async fn prune(&self) {
        match &self.backend {
            Backend::Local(l) => l.prune(),
            Backend::Shared(s) => s.prune().await,
        }
    }
}

fn code_key(ip: IpAddr) -> String {
    format!("code_lockout:{ip}")
}

fn enroll_keys(keys: &[String]) -> Vec<String> {
    keys.iter().map(|k| format!("enroll_lockout:{k}")).collect()
}

/// Hits the previous window still carries into the sliding minute, `elapsed` ms into the
/// current window (rounded up, so the estimate never undercounts).
fn carried(prev: i64, elapsed: i64) -> i64 {
    let share = prev.saturating_mul(WINDOW_MS - elapsed);
    share.saturating_add(WINDOW_MS - 1) / WINDOW_MS
}

/// Milliseconds until one more hit fits under `quota` with `prev` hits in the previous
/// window and `cur` in the current one, `elapsed` ms into it, if no other hit comes;
/// 0 when one fits now.
fn sliding_wait_ms(prev: i64, cur: i64, elapsed: i64, quota: i64) -> i64 {
    let room = quota - 1 - cur;
    if room >= 0 {
        if carried(prev, elapsed) <= room {
            return 0;
        }
        // carried(prev, e) <= room  ⇔  e >= W - room·W/prev (floor: a little late, never early)
        let at = WINDOW_MS - room.saturating_mul(WINDOW_MS) / prev.max(1);
        return (at - elapsed).max(1);
    }
    // The current window alone is full: wait into the next one, where it is the previous.
    let at = WINDOW_MS - (quota - 1).max(0).saturating_mul(WINDOW_MS) / cur.max(1);
    (WINDOW_MS - elapsed) + at
}

/// Counters in the database (see the module doc).
#[derive(Debug)]
struct SharedLimits {
    store: Store,
    clock: Clock,
}

impl SharedLimits {
    /// Now, the start of the current window and how far into it.
    fn window(&self) -> (i64, i64, i64) {
        let now = self.clock.now_millis();
        let elapsed = now.rem_euclid(WINDOW_MS);
        (now, now - elapsed, elapsed)
    }

    async fn check(&self, limit: Limit, ip: IpAddr) -> Result<(), ApiError> {
        let key = format!("{}:{ip}", limit.name());
        let (_, start, elapsed) = self.window();
        let quota = i64::from(limit.per_minute());
        let prev = self.store.rate_hits(&key, start - WINDOW_MS).await?;
        let max = quota - carried(prev, elapsed);
        if self.store.count_rate_hit(&key, start, max).await?.is_some() {
            return Ok(());
        }
        // Refused: the window holds as many as fit now (none when the previous one fills
        // the quota by itself).
        let cur = max.max(0);
        Err(retry_after(sliding_wait_ms(prev, cur, elapsed, quota)))
    }

    async fn check_second_factor_user(&self, user_id: &str) -> Result<(), ApiError> {
        let key = format!("second_factor_user:{user_id}");
        let (_, start, elapsed) = self.window();
        let prev = self.store.rate_hits(&key, start - WINDOW_MS).await?;
        let cur = self.store.rate_hits(&key, start).await?;
        let quota = i64::try_from(SECOND_FACTOR_FAILURES).unwrap_or(i64::MAX);
        match sliding_wait_ms(prev, cur, elapsed, quota) {
            0 => Ok(()),
            wait => Err(retry_after(wait)),
        }
    }

    async fn record_second_factor_failure(&self, user_id: &str) -> Result<(), ApiError> {
        let key = format!("second_factor_user:{user_id}");
        let (_, start, _) = self.window();
        self.store.count_rate_hit(&key, start, i64::MAX).await?;
        Ok(())
    }

    async fn check_lockouts(&self, keys: &[String]) -> Result<(), ApiError> {
        let (now, _, _) = self.window();
        for key in keys {
            if let Some(until) = self.store.limit_locked_until(key, now).await? {
                return Err(retry_after(until - now));
            }
        }
        Ok(())
    }

    async fn record_outcome(&self, keys: &[String], success: bool) -> Result<(), ApiError> {
        let (now, _, _) = self.window();
        for key in keys {
            if success {
                self.store.clear_limit_failures(key).await?;
            } else {
                self.store
                    .record_limit_failure(
                        key,
                        now,
                        i64::from(CODE_FAILURE_LOCKOUT_THRESHOLD),
                        millis(CODE_LOCKOUT),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn prune(&self) {
        let (now, start, _) = self.window();
        // The previous window still counts towards the sliding minute.
        if let Err(e) = self
            .store
            .prune_limits(start - WINDOW_MS, now, now - IDLE_FAILURES_MS)
            .await
        {
            tracing::warn!(error = ?e, "pruning shared rate limits failed");
        }
    }
}

/// In-process limiters: the single-server backend.
struct LocalLimits {
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

impl std::fmt::Debug for LocalLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimits").finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct FailureState {
    consecutive: u32,
    locked_until: Option<Instant>,
}

impl LocalLimits {
    fn new() -> Self {
        Self {
            login: RateLimiter::keyed(per_minute(Limit::Login.per_minute())),
            change_password: RateLimiter::keyed(per_minute(Limit::ChangePassword.per_minute())),
            code_validate: RateLimiter::keyed(per_minute(Limit::CodeValidate.per_minute())),
            enroll: RateLimiter::keyed(per_minute(Limit::Enroll.per_minute())),
            second_factor: RateLimiter::keyed(per_minute(Limit::SecondFactor.per_minute())),
            second_factor_failures: Mutex::new(HashMap::new()),
            code_failures: Mutex::new(HashMap::new()),
            enroll_failures: Mutex::new(HashMap::new()),
        }
    }

    fn check(&self, limit: Limit, ip: IpAddr) -> Result<(), ApiError> {
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
    fn check_second_factor_user(&self, user_id: &str) -> Result<(), ApiError> {
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
    fn record_second_factor_failure(&self, user_id: &str) {
        let mut map = self
            .second_factor_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(user_id.to_owned())
            .or_default()
            .push(Instant::now());
    }

    /// Refuses an IP that is locked out after repeated failed code attempts.
    fn check_code_lockout(&self, ip: IpAddr) -> Result<(), ApiError> {
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
    fn record_code_attempt(&self, ip: IpAddr, success: bool) {
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
    fn check_enroll_lockout(&self, keys: &[String]) -> Result<(), ApiError> {
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
    fn record_enroll(&self, keys: &[String], success: bool) {
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
    fn prune(&self) {
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
        let limits = LocalLimits::new();
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
        let limits = LocalLimits::new();
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
        let limits = LocalLimits::new();
        let ip: IpAddr = "192.0.2.4".parse().expect("ip");
        for _ in 0..9 {
            limits.record_code_attempt(ip, false);
        }
        limits.record_code_attempt(ip, true);
        limits.record_code_attempt(ip, false);
        limits.check_code_lockout(ip).expect("count restarted");
    }

    #[test]
    fn carried_hits_fade_over_the_window() {
        assert_eq!(carried(8, 0), 8);
        assert_eq!(carried(8, 1), 8, "rounded up");
        assert_eq!(carried(8, 30_000), 4);
        assert_eq!(carried(8, 59_999), 1);
        assert_eq!(carried(0, 10), 0);
    }

    #[test]
    fn sliding_wait_is_zero_when_a_hit_fits() {
        assert_eq!(sliding_wait_ms(0, 0, 0, 8), 0);
        assert_eq!(sliding_wait_ms(0, 7, 0, 8), 0);
        assert_eq!(sliding_wait_ms(8, 0, 30_000, 8), 0);
        assert_eq!(sliding_wait_ms(8, 3, 30_000, 8), 0);
    }

    #[test]
    fn sliding_wait_reaches_the_moment_a_hit_fits() {
        // Eight hits in this window, none before: the next fits once the window turned
        // and an eighth of it passed (7 of 8 still carried).
        let wait = sliding_wait_ms(0, 8, 10_000, 8);
        assert_eq!(wait, 50_000 + 7_500);
        assert_eq!(carried(8, 7_500), 7);
        // Eight in the previous window, 4 now, at 30 s: 4 + 4 = 8; one fits at 37.5 s.
        let wait = sliding_wait_ms(8, 4, 30_000, 8);
        assert_eq!(wait, 7_500);
        assert!(carried(8, 37_500) <= 3);
        assert!(carried(8, 37_499) > 3);
        // Five failures a minute ago block until enough of them fade.
        assert!(sliding_wait_ms(5, 0, 1_000, 5) > 0);
        assert!(matches!(retry_after(7_500), ApiError::RateLimited(8)));
    }
}
