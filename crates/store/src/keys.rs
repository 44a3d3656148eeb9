//! Per-agent keys (only the SHA-256 hash of the key is stored).

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::events::insert_event;
use crate::{AgentKey, Millis, NewEvent, Store, StoreError, StoreResult, conflict};

const KEY_COLS: &str = "k.id, k.agent_id, k.key_hash, k.prefix, k.label, k.created_by, \
     k.created_at, k.last_used_at, k.revoked_at";

fn key_from_row(row: &AnyRow) -> StoreResult<AgentKey> {
    Ok(AgentKey {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        key_hash: row.try_get("key_hash")?,
        prefix: row.try_get("prefix")?,
        label: row.try_get("label")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Inserts `key` on `conn`; `Conflict("key exists")` if its id or hash is taken.
pub(crate) async fn insert_key(conn: &mut AnyConnection, key: &AgentKey) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO agent_keys (id, agent_id, key_hash, prefix, label, created_by, \
         created_at, last_used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&key.id)
    .bind(&key.agent_id)
    .bind(&key.key_hash)
    .bind(&key.prefix)
    .bind(key.label.as_deref())
    .bind(key.created_by.as_deref())
    .bind(key.created_at)
    .bind(key.last_used_at)
    .bind(key.revoked_at)
    .execute(&mut *conn)
    .await
    .map_err(conflict("key exists"))?;
    Ok(())
}

/// All keys of a machine (revoked ones included), newest first, read on `conn`.
pub(crate) async fn keys_of(
    conn: &mut AnyConnection,
    agent_id: &str,
) -> StoreResult<Vec<AgentKey>> {
    let rows = sqlx::query(&format!(
        "SELECT {KEY_COLS} FROM agent_keys k WHERE k.agent_id = $1 \
         ORDER BY k.created_at DESC, k.id DESC"
    ))
    .bind(agent_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(key_from_row).collect()
}

/// Revokes a key of `agent_id` on `conn` (an already revoked key keeps its first
/// `revoked_at`) and returns it; `None` if that agent has no such key.
pub(crate) async fn revoke_key(
    conn: &mut AnyConnection,
    agent_id: &str,
    key_id: &str,
    now: Millis,
) -> StoreResult<Option<AgentKey>> {
    sqlx::query(
        "UPDATE agent_keys SET revoked_at = COALESCE(revoked_at, $3) \
         WHERE id = $1 AND agent_id = $2",
    )
    .bind(key_id)
    .bind(agent_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query(&format!(
        "SELECT {KEY_COLS} FROM agent_keys k WHERE k.id = $1 AND k.agent_id = $2"
    ))
    .bind(key_id)
    .bind(agent_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(key_from_row).transpose()
}

impl Store {
    /// Stores a new key; `Conflict("key exists")` if its id or hash is already stored.
    /// `audit` is recorded (at `created_at`) in the same transaction.
    pub async fn create_agent_key(&self, key: &AgentKey, audit: &NewEvent) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        insert_event(&mut tx, audit, key.created_at).await?;
        insert_key(&mut tx, key).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The unrevoked key with this hash whose machine is not soft-deleted (a key whose
    /// machine row does not exist yet is still found), if any.
    pub async fn find_active_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<AgentKey>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM agent_keys k \
             LEFT JOIN machines m ON m.agent_id = k.agent_id \
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND m.deleted_at IS NULL"
        ))
        .bind(key_hash)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// All keys of a machine (revoked ones included), newest first.
    pub async fn list_agent_keys(&self, agent_id: &str) -> StoreResult<Vec<AgentKey>> {
        let mut conn = self.pool().acquire().await?;
        keys_of(&mut conn, agent_id).await
    }

    /// Revokes a key of `agent_id` and returns it; `NotFound` if that agent has no such
    /// key. Idempotent: an already revoked key keeps its first `revoked_at`. `audit` is
    /// recorded in the same transaction, also on a repeated revoke (someone asked).
    pub async fn revoke_agent_key(
        &self,
        agent_id: &str,
        key_id: &str,
        now: Millis,
        audit: &NewEvent,
    ) -> StoreResult<AgentKey> {
        let mut tx = self.pool().begin().await?;
        let Some(key) = revoke_key(&mut tx, agent_id, key_id, now).await? else {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        };
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Records a successful use of a key; `NotFound` if missing.
    pub async fn touch_agent_key(&self, key_id: &str, now: Millis) -> StoreResult<()> {
        let res = sqlx::query("UPDATE agent_keys SET last_used_at = $2 WHERE id = $1")
            .bind(key_id)
            .bind(now)
            .execute(self.pool())
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Number of unrevoked keys of a machine.
    pub async fn count_active_keys(&self, agent_id: &str) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM agent_keys WHERE agent_id = $1 AND revoked_at IS NULL",
        )
        .bind(agent_id)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("n")?)
    }
}
