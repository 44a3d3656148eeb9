//! TOTP second factors and their single-use recovery codes. Every change that is audited
//! commits together with its event.

use sqlx::Row;

use crate::events::insert_event;
use crate::{Millis, NewEvent, Store, StoreError, StoreResult, TotpRecord};

impl Store {
    /// Stores a new pending secret for `user_id`, replacing an earlier pending one;
    /// `Conflict("totp enabled")` if the user already has a confirmed second factor.
    pub async fn begin_totp_setup(
        &self,
        user_id: &str,
        secret: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let res = sqlx::query(
            "INSERT INTO user_totp (user_id, secret, enabled, last_step, created_at) \
             VALUES ($1, $2, 0, 0, $3) \
             ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, last_step = 0, \
             created_at = excluded.created_at WHERE user_totp.enabled = 0",
        )
        .bind(user_id)
        .bind(secret)
        .bind(now)
        .execute(self.pool())
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict("totp enabled"));
        }
        Ok(())
    }

    /// The user's second factor, pending or enabled, if any.
    pub async fn get_totp(&self, user_id: &str) -> StoreResult<Option<TotpRecord>> {
        let row = sqlx::query(
            "SELECT user_id, secret, enabled, last_step FROM user_totp WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            Ok(TotpRecord {
                user_id: row.try_get("user_id")?,
                secret: row.try_get("secret")?,
                enabled: row.try_get::<i64, _>("enabled")? != 0,
                last_step: row.try_get("last_step")?,
            })
        })
        .transpose()
    }

    /// Enables a pending second factor whose code for `step` was just verified, replaces
    /// the recovery codes with `recovery_hashes` and records `audit`, in one transaction.
    /// `false` (nothing changed) if there is no pending secret or `step` is not newer
    /// than the last one accepted.
    pub async fn confirm_totp(
        &self,
        user_id: &str,
        step: i64,
        recovery_hashes: &[String],
        audit: &NewEvent,
        now: Millis,
    ) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(
            "UPDATE user_totp SET enabled = 1, enabled_at = $3, last_step = $2 \
             WHERE user_id = $1 AND enabled = 0 AND last_step < $2",
        )
        .bind(user_id)
        .bind(step)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("DELETE FROM totp_recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for hash in recovery_hashes {
            sqlx::query(
                "INSERT INTO totp_recovery_codes (user_id, code_hash, used_at) \
                 VALUES ($1, $2, NULL)",
            )
            .bind(user_id)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        }
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Accepts `step` for an enabled second factor if it is newer than the last accepted
    /// one (a conditional update, so a code is used once across instances); `true` if
    /// accepted.
    pub async fn accept_totp_step(&self, user_id: &str, step: i64) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE user_totp SET last_step = $2 \
             WHERE user_id = $1 AND enabled = 1 AND last_step < $2",
        )
        .bind(user_id)
        .bind(step)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Marks an unused recovery code used and records `audit`, in one transaction;
    /// `false` if the code is unknown or already used.
    pub async fn use_recovery_code(
        &self,
        user_id: &str,
        code_hash: &str,
        audit: &NewEvent,
        now: Millis,
    ) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(
            "UPDATE totp_recovery_codes SET used_at = $3 \
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL \
             AND EXISTS (SELECT 1 FROM user_totp t WHERE t.user_id = $1 AND t.enabled = 1)",
        )
        .bind(user_id)
        .bind(code_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// How many unused recovery codes the user has left.
    pub async fn recovery_codes_left(&self, user_id: &str) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM totp_recovery_codes \
             WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Removes the user's second factor (pending or enabled) and recovery codes, and
    /// records `audit` if an enabled one was removed, in one transaction. Returns whether
    /// an enabled second factor was removed.
    pub async fn remove_totp(
        &self,
        user_id: &str,
        audit: &NewEvent,
        now: Millis,
    ) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        let enabled = sqlx::query("DELETE FROM user_totp WHERE user_id = $1 AND enabled = 1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        for sql in [
            "DELETE FROM user_totp WHERE user_id = $1",
            "DELETE FROM totp_recovery_codes WHERE user_id = $1",
        ] {
            sqlx::query(sql).bind(user_id).execute(&mut *tx).await?;
        }
        if enabled {
            insert_event(&mut tx, audit, now).await?;
        }
        tx.commit().await?;
        Ok(enabled)
    }
}
