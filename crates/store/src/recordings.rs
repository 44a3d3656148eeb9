//! Session recording rows; the recorded bytes are files the server writes.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{
    Millis, Recording, RecordingEnd, RecordingStatus, SessionKind, Store, StoreError, StoreResult,
    conflict, state_column,
};

const RECORDING_COLS: &str = "id, tenant_id, session_id, agent_id, hostname, kind, status, \
     started_at, ended_at, bytes, duration_ms, sha256, error";

fn recording_from_row(row: &AnyRow) -> StoreResult<Recording> {
    Ok(Recording {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        session_id: row.try_get("session_id")?,
        agent_id: row.try_get("agent_id")?,
        hostname: row.try_get("hostname")?,
        kind: state_column(row, "kind", "session kind", SessionKind::parse)?,
        status: state_column(row, "status", "recording status", RecordingStatus::parse)?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        bytes: row.try_get("bytes")?,
        duration_ms: row.try_get("duration_ms")?,
        sha256: row.try_get("sha256")?,
        error: row.try_get("error")?,
    })
}

impl Store {
    /// Stores a new recording; `Conflict("recording exists")` if the id is taken.
    pub async fn create_recording(&self, r: &Recording) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO recordings ({RECORDING_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(&r.id)
        .bind(&r.tenant_id)
        .bind(&r.session_id)
        .bind(&r.agent_id)
        .bind(&r.hostname)
        .bind(r.kind.as_str())
        .bind(r.status.as_str())
        .bind(r.started_at)
        .bind(r.ended_at)
        .bind(r.bytes)
        .bind(r.duration_ms)
        .bind(r.sha256.as_deref())
        .bind(r.error.as_deref())
        .execute(self.pool())
        .await
        .map_err(conflict("recording exists"))?;
        Ok(())
    }

    /// Closes a recording that is still `recording`; `NotFound` otherwise.
    pub async fn finish_recording(&self, id: &str, end: &RecordingEnd) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE recordings SET status = $1, ended_at = $2, bytes = $3, duration_ms = $4, \
             sha256 = $5, error = $6 WHERE id = $7 AND status = 'recording'",
        )
        .bind(end.status.as_str())
        .bind(end.ended_at)
        .bind(end.bytes)
        .bind(end.duration_ms)
        .bind(end.sha256.as_deref())
        .bind(end.error.as_deref())
        .bind(id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The tenant's recording; `NotFound` if missing or another tenant's.
    pub async fn get_recording(&self, tenant_id: &str, id: &str) -> StoreResult<Recording> {
        let row = sqlx::query(&format!(
            "SELECT {RECORDING_COLS} FROM recordings WHERE id = $1 AND tenant_id = $2"
        ))
        .bind(id)
        .bind(tenant_id)
        .fetch_one(self.pool())
        .await?;
        recording_from_row(&row)
    }

    /// The tenant's recordings, newest first, optionally of one machine; `limit` is
    /// clamped to `1..=1000`.
    pub async fn list_recordings(
        &self,
        tenant_id: &str,
        agent_id: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<Recording>> {
        // Placeholders numbered in the order they are bound.
        let (filter, limit_arg) = match agent_id {
            Some(_) => (" AND agent_id = $2", "$3"),
            None => ("", "$2"),
        };
        let sql = format!(
            "SELECT {RECORDING_COLS} FROM recordings WHERE tenant_id = $1{filter} \
             ORDER BY started_at DESC, id LIMIT {limit_arg}"
        );
        let mut q = sqlx::query(&sql).bind(tenant_id);
        if let Some(agent_id) = agent_id {
            q = q.bind(agent_id);
        }
        let rows = q.bind(limit.clamp(1, 1000)).fetch_all(self.pool()).await?;
        rows.iter().map(recording_from_row).collect()
    }

    /// Closed recordings (any tenant) that started before `before`, oldest first.
    pub async fn recordings_started_before(
        &self,
        before: Millis,
        limit: i64,
    ) -> StoreResult<Vec<Recording>> {
        let rows = sqlx::query(&format!(
            "SELECT {RECORDING_COLS} FROM recordings WHERE started_at < $1 \
             AND status <> 'recording' ORDER BY started_at LIMIT $2"
        ))
        .bind(before)
        .bind(limit.clamp(1, 1000))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(recording_from_row).collect()
    }

    /// Recordings (any tenant) still marked `recording`, oldest first.
    pub async fn open_recordings(&self, limit: i64) -> StoreResult<Vec<Recording>> {
        let rows = sqlx::query(&format!(
            "SELECT {RECORDING_COLS} FROM recordings WHERE status = 'recording' \
             ORDER BY started_at LIMIT $1"
        ))
        .bind(limit.clamp(1, 1000))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(recording_from_row).collect()
    }

    /// Removes the tenant's recording row; `NotFound` if there was none.
    pub async fn delete_recording(&self, tenant_id: &str, id: &str) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM recordings WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant_id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
