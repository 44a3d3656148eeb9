//! Published releases (signed manifests) and the update settings and state of machines
//! and sites. The signature is checked by the server before [`Store::create_release`] and
//! by every agent again; the store only keeps the bytes.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::events::insert_event;
use crate::{Millis, NewEvent, Release, Store, StoreError, StoreResult, conflict};

const RELEASE_COLS: &str =
    "version, channel, manifest, signature, notes, rollout_percent, created_by, created_at";

fn release_from_row(row: &AnyRow) -> StoreResult<Release> {
    Ok(Release {
        version: row.try_get("version")?,
        channel: row.try_get("channel")?,
        manifest: row.try_get("manifest")?,
        signature: row.try_get("signature")?,
        notes: row.try_get("notes")?,
        rollout_percent: row.try_get("rollout_percent")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Stores a release and its audit event in one transaction. `Conflict("release
    /// exists")` if the version is taken.
    pub async fn create_release(&self, r: &Release, audit: &NewEvent) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        insert_event(&mut tx, audit, r.created_at).await?;
        sqlx::query(&format!(
            "INSERT INTO releases ({RELEASE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&r.version)
        .bind(&r.channel)
        .bind(&r.manifest)
        .bind(&r.signature)
        .bind(&r.notes)
        .bind(r.rollout_percent)
        .bind(&r.created_by)
        .bind(r.created_at)
        .execute(&mut *tx)
        .await
        .map_err(conflict("release exists"))?;
        tx.commit().await?;
        Ok(())
    }

    /// Every release, newest publication first.
    pub async fn list_releases(&self) -> StoreResult<Vec<Release>> {
        let rows = sqlx::query(&format!(
            "SELECT {RELEASE_COLS} FROM releases ORDER BY created_at DESC, version DESC"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(release_from_row).collect()
    }

    /// One release; `NotFound` if there is none of that version.
    pub async fn get_release(&self, version: &str) -> StoreResult<Release> {
        let row = sqlx::query(&format!(
            "SELECT {RELEASE_COLS} FROM releases WHERE version = $1"
        ))
        .bind(version)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(row) => release_from_row(&row),
            None => Err(StoreError::NotFound),
        }
    }

    /// Deletes a release and records `audit` at `now`, in one transaction; `NotFound` if
    /// there is none.
    pub async fn delete_release(
        &self,
        version: &str,
        audit: &NewEvent,
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query("DELETE FROM releases WHERE version = $1")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets a release's rollout percentage (the caller checks 0–100) and records
    /// `audit`; returns the release. `NotFound` if there is none.
    pub async fn set_release_rollout(
        &self,
        version: &str,
        percent: i64,
        audit: &NewEvent,
        now: Millis,
    ) -> StoreResult<Release> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query("UPDATE releases SET rollout_percent = $2 WHERE version = $1")
            .bind(version)
            .bind(percent)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        self.get_release(version).await
    }

    /// Records the agent's last update step (a JSON object) on its machine; `false` when
    /// there is no such live machine.
    pub async fn set_machine_update_status(
        &self,
        agent_id: &str,
        status: &serde_json::Value,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE machines SET update_status = $2 WHERE agent_id = $1 AND deleted_at IS NULL",
        )
        .bind(agent_id)
        .bind(status.to_string())
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// The update channel set on a site, if any; `NotFound` if there is no such site.
    pub async fn site_update_channel(&self, site_id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT update_channel FROM sites WHERE id = $1")
            .bind(site_id)
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(row) => Ok(row.try_get("update_channel")?),
            None => Err(StoreError::NotFound),
        }
    }

    /// The update channels set on a tenant's sites, by site id (sites without one are
    /// left out); one query for a whole list.
    pub async fn site_update_channels(
        &self,
        tenant_id: &str,
    ) -> StoreResult<std::collections::HashMap<String, String>> {
        let rows = sqlx::query(
            "SELECT id, update_channel FROM sites \
             WHERE tenant_id = $1 AND update_channel IS NOT NULL",
        )
        .bind(tenant_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("update_channel")?)))
            .collect()
    }

    /// Sets (or with `None` clears) a site's update channel and records `audit`;
    /// `NotFound` if there is no such site.
    pub async fn set_site_update_channel(
        &self,
        site_id: &str,
        channel: Option<&str>,
        audit: &NewEvent,
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query("UPDATE sites SET update_channel = $2 WHERE id = $1")
            .bind(site_id)
            .bind(channel)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The agent ids of a site's live machines.
    pub async fn machine_ids_of_site(&self, site_id: &str) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT agent_id FROM machines WHERE site_id = $1 AND deleted_at IS NULL \
             ORDER BY agent_id",
        )
        .bind(site_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| r.try_get("agent_id").map_err(Into::into))
            .collect()
    }
}
