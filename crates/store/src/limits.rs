//! Rate-limit counters and failure lockouts shared by the instances of a cluster
//! (SPEC §4.9): each operation is one statement, so concurrent instances cannot both
//! pass a limit.
//!
//! Keys are chosen by the server (limit name plus client IP, user id or site code).
//! Hits are counted per fixed window; the caller picks the window (`window_start`) and
//! weighs the previous one into a sliding estimate.

use sqlx::Row;

use crate::{Millis, Store, StoreResult};

impl Store {
    /// Counts one hit for `key` in the window starting at `window_start`, unless the window
    /// already holds `max` hits. Returns the window's count including this hit, or `None`
    /// when the window was full (nothing is written, so refused hits do not count).
    pub async fn count_rate_hit(
        &self,
        key: &str,
        window_start: Millis,
        max: i64,
    ) -> StoreResult<Option<i64>> {
        if max < 1 {
            return Ok(None);
        }
        // The conditional DO UPDATE runs on the locked, latest row: exact under concurrency.
        let row = sqlx::query(
            "INSERT INTO rate_hits (key, window_start, hits) VALUES ($1, $2, 1) \
             ON CONFLICT (key, window_start) DO UPDATE SET hits = rate_hits.hits + 1 \
             WHERE rate_hits.hits < $3 \
             RETURNING hits",
        )
        .bind(key)
        .bind(window_start)
        .bind(max)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.try_get("hits")).transpose()?)
    }

    /// Hits counted for `key` in the window starting at `window_start` (0 if none).
    pub async fn rate_hits(&self, key: &str, window_start: Millis) -> StoreResult<i64> {
        let row = sqlx::query("SELECT hits FROM rate_hits WHERE key = $1 AND window_start = $2")
            .bind(key)
            .bind(window_start)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.try_get("hits")).transpose()?.unwrap_or(0))
    }

    /// Records a failure for `key` at `now`. The `threshold`-th consecutive failure (and
    /// every one after it) locks the key until `now + lock_ms`, which is returned; an
    /// expired lockout starts the count again.
    pub async fn record_limit_failure(
        &self,
        key: &str,
        now: Millis,
        threshold: i64,
        lock_ms: i64,
    ) -> StoreResult<Option<Millis>> {
        let row = sqlx::query(
            "INSERT INTO failure_locks (key, failures, locked_until, updated_at) \
             VALUES ($1, 1, CASE WHEN $3 <= 1 THEN $2 + $4 END, $2) \
             ON CONFLICT (key) DO UPDATE SET \
               failures = CASE WHEN failure_locks.locked_until <= $2 THEN 1 \
                               ELSE failure_locks.failures + 1 END, \
               locked_until = CASE WHEN (CASE WHEN failure_locks.locked_until <= $2 THEN 1 \
                                              ELSE failure_locks.failures + 1 END) >= $3 \
                                   THEN $2 + $4 END, \
               updated_at = $2 \
             RETURNING locked_until",
        )
        .bind(key)
        .bind(now)
        .bind(threshold)
        .bind(lock_ms)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("locked_until")?)
    }

    /// Records a success for `key`: its failure count (and any lockout) is cleared.
    pub async fn clear_limit_failures(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM failure_locks WHERE key = $1")
            .bind(key)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Until when `key` is locked out, if it still is at `now`.
    pub async fn limit_locked_until(&self, key: &str, now: Millis) -> StoreResult<Option<Millis>> {
        let row = sqlx::query(
            "SELECT locked_until FROM failure_locks WHERE key = $1 AND locked_until > $2",
        )
        .bind(key)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.try_get("locked_until")).transpose()?)
    }

    /// Deletes hit windows that started before `windows_before`, lockouts that ended by
    /// `now` and failure counts last touched before `idle_before`. Returns how many rows
    /// went.
    pub async fn prune_limits(
        &self,
        windows_before: Millis,
        now: Millis,
        idle_before: Millis,
    ) -> StoreResult<u64> {
        let hits = sqlx::query("DELETE FROM rate_hits WHERE window_start < $1")
            .bind(windows_before)
            .execute(self.pool())
            .await?;
        let locks = sqlx::query(
            "DELETE FROM failure_locks WHERE locked_until <= $1 \
             OR (locked_until IS NULL AND updated_at < $2)",
        )
        .bind(now)
        .bind(idle_before)
        .execute(self.pool())
        .await?;
        Ok(hits.rows_affected() + locks.rows_affected())
    }
}
