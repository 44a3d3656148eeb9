//! Support codes for attended sessions; consuming one is the cross-instance
//! single-use gate (SPEC §4.14).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Millis, Store, StoreResult, SupportCode, conflict};

const CODE_COLS: &str = "code, tenant_id, status, created_by, created_by_name, note, \
     created_at, expires_at, consumed_at, session_id";

fn code_from_row(row: &AnyRow) -> StoreResult<SupportCode> {
    Ok(SupportCode {
        code: row.try_get("code")?,
        tenant_id: row.try_get("tenant_id")?,
        status: row.try_get("status")?,
        created_by: row.try_get("created_by")?,
        created_by_name: row.try_get("created_by_name")?,
        note: row.try_get("note")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        consumed_at: row.try_get("consumed_at")?,
        session_id: row.try_get("session_id")?,
    })
}

impl Store {
    /// Stores a new code; `Conflict("code exists")` if the code is already stored.
    pub async fn create_code(&self, c: &SupportCode) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO support_codes ({CODE_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&c.code)
        .bind(&c.tenant_id)
        .bind(&c.status)
        .bind(&c.created_by)
        .bind(&c.created_by_name)
        .bind(c.note.as_deref())
        .bind(c.created_at)
        .bind(c.expires_at)
        .bind(c.consumed_at)
        .bind(c.session_id.as_deref())
        .execute(self.pool())
        .await
        .map_err(conflict("code exists"))?;
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

    /// The tenant's codes, newest first; without `include_finished` only `pending`
    /// ones (expiry is not checked here: the caller filters by time).
    pub async fn list_codes(
        &self,
        tenant_id: &str,
        include_finished: bool,
    ) -> StoreResult<Vec<SupportCode>> {
        let filter = if include_finished {
            ""
        } else {
            " AND status = 'pending'"
        };
        let rows = sqlx::query(&format!(
            "SELECT {CODE_COLS} FROM support_codes WHERE tenant_id = $1{filter} \
             ORDER BY created_at DESC, code DESC"
        ))
        .bind(tenant_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(code_from_row).collect()
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

    /// Cancels a pending code; `true` if it was pending. `now` is accepted for symmetry
    /// and future auditing; no timestamp column records cancellation.
    pub async fn cancel_code(&self, code: &str, _now: Millis) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE support_codes SET status = 'cancelled' WHERE code = $1 AND status = 'pending'",
        )
        .bind(code)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Marks a consumed code as ended (its session finished); `true` if it changed.
    pub async fn end_code(&self, code: &str) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE support_codes SET status = 'ended' WHERE code = $1 AND status = 'consumed'",
        )
        .bind(code)
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
