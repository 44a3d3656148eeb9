//! Support codes for attended sessions; consuming one is the cross-instance
//! single-use gate (SPEC §4.14).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::events::insert_event;
use crate::{
    CodeStatus, Millis, NewEvent, Store, StoreResult, SupportCode, conflict, state_column,
};

const CODE_COLS: &str = "code, tenant_id, status, created_by, created_by_name, note, \
     created_at, expires_at, consumed_at, session_id, customer_name";

fn code_from_row(row: &AnyRow) -> StoreResult<SupportCode> {
    Ok(SupportCode {
        code: row.try_get("code")?,
        tenant_id: row.try_get("tenant_id")?,
        status: state_column(row, "status", "code status", CodeStatus::parse)?,
        created_by: row.try_get("created_by")?,
        created_by_name: row.try_get("created_by_name")?,
        note: row.try_get("note")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        consumed_at: row.try_get("consumed_at")?,
        session_id: row.try_get("session_id")?,
        customer_name: row.try_get("customer_name")?,
    })
}

impl Store {
    /// Stores a new code and its audit event (recorded at the code's `created_at`) in one
    /// transaction: both or neither. `Conflict("code exists")` if the code is already
    /// stored.
    pub async fn create_code(&self, c: &SupportCode, audit: &NewEvent) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        insert_event(&mut tx, audit, c.created_at).await?;
        sqlx::query(&format!(
            "INSERT INTO support_codes ({CODE_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&c.code)
        .bind(&c.tenant_id)
        .bind(c.status.as_str())
        .bind(&c.created_by)
        .bind(&c.created_by_name)
        .bind(c.note.as_deref())
        .bind(c.created_at)
        .bind(c.expires_at)
        .bind(c.consumed_at)
        .bind(c.session_id.as_deref())
        .bind(c.customer_name.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(conflict("code exists"))?;
        tx.commit().await?;
        Ok(())
    }

    /// The code, if stored.
    pub async fn get_code(&self, code: &str) -> StoreResult<Option<SupportCode>> {
        let row = sqlx::query(&format!(
            "SELECT {CODE_COLS} FROM support_codes WHERE code = $1"
        ))
        .bind(code)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(code_from_row).transpose()
    }

    /// The tenant's `pending` codes, newest first (expiry is not checked here: the caller
    /// filters by time). Bounded by [`Store::prune_codes`]: pending codes are removed once
    /// expired for the retention period.
    pub async fn list_pending_codes(&self, tenant_id: &str) -> StoreResult<Vec<SupportCode>> {
        let rows = sqlx::query(&format!(
            "SELECT {CODE_COLS} FROM support_codes WHERE tenant_id = $1 AND status = 'pending' \
             ORDER BY created_at DESC, code DESC"
        ))
        .bind(tenant_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(code_from_row).collect()
    }

    /// One page of the tenant's codes in every status, newest first, and how many there
    /// are in all.
    pub async fn list_codes_page(
        &self,
        tenant_id: &str,
        limit: i64,
        offset: i64,
    ) -> StoreResult<(Vec<SupportCode>, i64)> {
        let rows = sqlx::query(&format!(
            "SELECT {CODE_COLS} FROM support_codes WHERE tenant_id = $1 \
             ORDER BY created_at DESC, code DESC LIMIT $2 OFFSET $3"
        ))
        .bind(tenant_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await?;
        let total: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM support_codes WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_one(self.pool())
                .await?
                .try_get("n")?;
        let codes = rows.iter().map(code_from_row).collect::<StoreResult<_>>()?;
        Ok((codes, total))
    }

    /// Deletes every code that expired at or before `expired_before` and can no longer
    /// be used: pending (expired), cancelled, ended, or consumed by a session that is over
    /// (or gone). A code whose session is still open is kept. Returns how many went.
    pub async fn prune_codes(&self, expired_before: Millis) -> StoreResult<u64> {
        let res = sqlx::query(
            "DELETE FROM support_codes WHERE expires_at <= $1 AND (status <> 'consumed' \
             OR NOT EXISTS (SELECT 1 FROM sessions s \
                            WHERE s.id = support_codes.session_id AND s.status <> 'ended'))",
        )
        .bind(expired_before)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected())
    }

    /// Atomically binds a pending, unexpired code to `session_id`. Exactly one caller
    /// among any number of concurrent ones (across instances) gets `true`.
    pub async fn consume_code(
        &self,
        code: &str,
        session_id: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE support_codes SET status = 'consumed', consumed_at = $3, session_id = $2 \
             WHERE code = $1 AND status = 'pending' AND expires_at > $3",
        )
        .bind(code)
        .bind(session_id)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Cancels a pending code and records its audit event at `now`, in one transaction;
    /// `true` if it was pending (otherwise nothing changes and no event is recorded).
    pub async fn cancel_code(
        &self,
        code: &str,
        audit: &NewEvent,
        now: Millis,
    ) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(
            "UPDATE support_codes SET status = 'cancelled' WHERE code = $1 AND status = 'pending'",
        )
        .bind(code)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records the name the customer gave on the join page, while the code is still
    /// pending and unexpired; `true` if it was stored (the newest name wins).
    pub async fn set_code_customer_name(
        &self,
        code: &str,
        name: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE support_codes SET customer_name = $2 \
             WHERE code = $1 AND status = 'pending' AND expires_at > $3",
        )
        .bind(code)
        .bind(name)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Marks a consumed code as ended (its session finished); `true` if it changed.
    pub async fn end_code(&self, code: &str) -> StoreResult<bool> {
        self.finish_code(code, CodeStatus::Ended).await
    }

    /// Marks a consumed code as denied (the customer refused consent); `true` if it
    /// changed. A later [`Store::end_code`] leaves it denied.
    pub async fn deny_code(&self, code: &str) -> StoreResult<bool> {
        self.finish_code(code, CodeStatus::Denied).await
    }

    async fn finish_code(&self, code: &str, status: CodeStatus) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE support_codes SET status = $2 WHERE code = $1 AND status = 'consumed'",
        )
        .bind(code)
        .bind(status.as_str())
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Returns a code consumed for `session_id` to `pending` (the bind never happened, e.g.
    /// the request was not a WebSocket upgrade); `true` if it changed.
    pub async fn release_code(&self, code: &str, session_id: &str) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE support_codes SET status = 'pending', consumed_at = NULL, session_id = NULL \
             WHERE code = $1 AND status = 'consumed' AND session_id = $2",
        )
        .bind(code)
        .bind(session_id)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }
}
