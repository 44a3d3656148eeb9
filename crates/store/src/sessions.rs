//! Durable session records (live state lives in the relay's registry).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::events::insert_event;
use crate::{
    Millis, NewEvent, SessionKind, SessionRecord, SessionStatus, Store, StoreError, StoreResult,
    conflict, state_column,
};

const SESSION_COLS: &str =
    "id, tenant_id, agent_id, kind, code, status, created_at, ended_at, end_reason";

fn session_from_row(row: &AnyRow) -> StoreResult<SessionRecord> {
    Ok(SessionRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        agent_id: row.try_get("agent_id")?,
        kind: state_column(row, "kind", "session kind", SessionKind::parse)?,
        code: row.try_get("code")?,
        status: state_column(row, "status", "session status", SessionStatus::parse)?,
        created_at: row.try_get("created_at")?,
        ended_at: row.try_get("ended_at")?,
        end_reason: row.try_get("end_reason")?,
    })
}

impl Store {
    /// Stores a new session; `Conflict("session exists")` if the id is taken. `audit` is
    /// recorded (at `created_at`) in the same transaction.
    pub async fn create_session(&self, s: &SessionRecord, audit: &NewEvent) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        insert_event(&mut tx, audit, s.created_at).await?;
        sqlx::query(&format!(
            "INSERT INTO sessions ({SESSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&s.id)
        .bind(&s.tenant_id)
        .bind(&s.agent_id)
        .bind(s.kind.as_str())
        .bind(s.code.as_deref())
        .bind(s.status.as_str())
        .bind(s.created_at)
        .bind(s.ended_at)
        .bind(s.end_reason.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(conflict("session exists"))?;
        tx.commit().await?;
        Ok(())
    }

    /// The session; `NotFound` if missing or soft-deleted.
    pub async fn get_session(&self, id: &str) -> StoreResult<SessionRecord> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLS} FROM sessions WHERE id = $1 AND deleted_at IS NULL"
        ))
        .bind(id)
        .fetch_one(self.pool())
        .await?;
        session_from_row(&row)
    }

    /// The tenant's sessions, newest first, excluding soft-deleted ones; with
    /// `only_open` only those not `ended`. `limit` is clamped to `1..=1000`.
    pub async fn list_sessions(
        &self,
        tenant_id: &str,
        only_open: bool,
        limit: i64,
    ) -> StoreResult<Vec<SessionRecord>> {
        self.list_sessions_of(tenant_id, None, only_open, limit)
            .await
    }

    /// [`Store::list_sessions`], restricted to one machine when `agent_id` is given.
    pub async fn list_sessions_of(
        &self,
        tenant_id: &str,
        agent_id: Option<&str>,
        only_open: bool,
        limit: i64,
    ) -> StoreResult<Vec<SessionRecord>> {
        // Placeholders numbered in the order they appear and are bound.
        let mut filter = String::new();
        if agent_id.is_some() {
            filter.push_str(" AND agent_id = $2");
        }
        if only_open {
            filter.push_str(" AND status <> 'ended'");
        }
        let limit_arg = if agent_id.is_some() { "$3" } else { "$2" };
        let sql = format!(
            "SELECT {SESSION_COLS} FROM sessions \
             WHERE tenant_id = $1 AND deleted_at IS NULL{filter} \
             ORDER BY created_at DESC, id DESC LIMIT {limit_arg}"
        );
        let mut q = sqlx::query(&sql).bind(tenant_id);
        if let Some(agent_id) = agent_id {
            q = q.bind(agent_id);
        }
        let q = q.bind(limit.clamp(1, 1000));
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Sets the status of a live session; `NotFound` if missing or soft-deleted.
    pub async fn set_session_status(&self, id: &str, status: SessionStatus) -> StoreResult<()> {
        let res =
            sqlx::query("UPDATE sessions SET status = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .bind(status.as_str())
                .execute(self.pool())
                .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Ends a session (status `ended`, `ended_at`, `end_reason`); `true` if it was
    /// not ended yet. `audit`, if given, is recorded in the same transaction either way.
    pub async fn end_session(
        &self,
        id: &str,
        reason: &str,
        now: Millis,
        audit: Option<&NewEvent>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(
            "UPDATE sessions SET status = 'ended', ended_at = $3, end_reason = $2 \
             WHERE id = $1 AND status <> 'ended'",
        )
        .bind(id)
        .bind(reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(audit) = audit {
            insert_event(&mut tx, audit, now).await?;
        }
        tx.commit().await?;
        Ok(res.rows_affected() == 1)
    }

    /// Ends every session that is not ended yet (run at server start, when no session
    /// can still be live); returns how many.
    pub async fn end_open_sessions(&self, reason: &str, now: Millis) -> StoreResult<u64> {
        let res = sqlx::query(
            "UPDATE sessions SET status = 'ended', ended_at = $2, end_reason = $1 \
             WHERE status <> 'ended'",
        )
        .bind(reason)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected())
    }

    /// Sessions not ended yet (live on some instance, or offline awaiting their agent).
    pub async fn open_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLS} FROM sessions \
             WHERE status <> 'ended' AND deleted_at IS NULL ORDER BY created_at"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Notes which cluster instance holds the live session.
    pub async fn set_session_instance(&self, id: &str, instance: &str) -> StoreResult<()> {
        sqlx::query("UPDATE sessions SET instance_id = $2 WHERE id = $1")
            .bind(id)
            .bind(instance)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The instances that hold sessions not ended yet.
    pub async fn open_session_instances(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT instance_id FROM sessions \
             WHERE status <> 'ended' AND instance_id IS NOT NULL",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("instance_id").map_err(Into::into))
            .collect()
    }

    /// Ends the open sessions held by `instance` (it died or restarted); returns how many.
    pub async fn end_open_sessions_of_instance(
        &self,
        instance: &str,
        reason: &str,
        now: Millis,
    ) -> StoreResult<u64> {
        let res = sqlx::query(
            "UPDATE sessions SET status = 'ended', ended_at = $3, end_reason = $2 \
             WHERE status <> 'ended' AND instance_id = $1",
        )
        .bind(instance)
        .bind(reason)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected())
    }

    /// Ends the open sessions of `agent_id` and `kind` other than `except` (a new
    /// connection of the machine supersedes them, wherever they were); returns how many.
    pub async fn end_other_open_sessions(
        &self,
        agent_id: &str,
        kind: SessionKind,
        except: &str,
        reason: &str,
        now: Millis,
    ) -> StoreResult<u64> {
        let res = sqlx::query(
            "UPDATE sessions SET status = 'ended', ended_at = $5, end_reason = $4 \
             WHERE status <> 'ended' AND agent_id = $1 AND kind = $2 AND id <> $3",
        )
        .bind(agent_id)
        .bind(kind.as_str())
        .bind(except)
        .bind(reason)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected())
    }

    /// Soft-deletes a session; `NotFound` if missing or already deleted. `audit` is
    /// recorded in the same transaction.
    pub async fn soft_delete_session(
        &self,
        id: &str,
        now: Millis,
        audit: &NewEvent,
    ) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        let res =
            sqlx::query("UPDATE sessions SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        }
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }
}
