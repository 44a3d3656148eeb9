//! Enrollment sites and their (hashed) enrollment keys.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::events::insert_event;
use crate::{Millis, NewEvent, Site, Store, StoreError, StoreResult};

const SITE_COLS: &str = "id, tenant_id, name, code, key_hash, key_version, key_fingerprint, \
     created_at, rotated_at";

fn site_from_row(row: &AnyRow) -> StoreResult<Site> {
    Ok(Site {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        code: row.try_get("code")?,
        key_hash: row.try_get("key_hash")?,
        key_version: row.try_get("key_version")?,
        key_fingerprint: row.try_get("key_fingerprint")?,
        created_at: row.try_get("created_at")?,
        rotated_at: row.try_get("rotated_at")?,
    })
}

impl Store {
    /// Stores a new site as given and returns it. `Conflict("site code taken")` if the
    /// tenant has a site with this code (compared case-insensitively);
    /// `Conflict("site exists")` if the id is taken. `audit` is recorded (at
    /// `created_at`) in the same transaction: both or neither.
    pub async fn create_site(&self, s: &Site, audit: &NewEvent) -> StoreResult<Site> {
        let mut tx = self.pool().begin().await?;
        insert_event(&mut tx, audit, s.created_at).await?;
        let res = sqlx::query(&format!(
            "INSERT INTO sites ({SITE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&s.id)
        .bind(&s.tenant_id)
        .bind(&s.name)
        .bind(&s.code)
        .bind(&s.key_hash)
        .bind(s.key_version)
        .bind(&s.key_fingerprint)
        .bind(s.created_at)
        .bind(s.rotated_at)
        .execute(&mut *tx)
        .await;
        if let Err(e) = res {
            // Rolled back first: PostgreSQL refuses reads in a failed transaction.
            tx.rollback().await?;
            let err = StoreError::from(e);
            if matches!(err, StoreError::Conflict(_)) {
                return Err(match self.get_site(&s.id).await {
                    Ok(_) => StoreError::Conflict("site exists"),
                    Err(StoreError::NotFound) => StoreError::Conflict("site code taken"),
                    Err(other) => other,
                });
            }
            return Err(err);
        }
        tx.commit().await?;
        self.get_site(&s.id).await
    }

    /// The tenant's sites ordered by name (case-insensitively, ASCII folding) then id.
    pub async fn list_sites(&self, tenant_id: &str) -> StoreResult<Vec<Site>> {
        let rows = sqlx::query(&format!(
            "SELECT {SITE_COLS} FROM sites WHERE tenant_id = $1 ORDER BY lower(name), id"
        ))
        .bind(tenant_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(site_from_row).collect()
    }

    /// The site with this id; `NotFound` if missing.
    pub async fn get_site(&self, id: &str) -> StoreResult<Site> {
        let row = sqlx::query(&format!("SELECT {SITE_COLS} FROM sites WHERE id = $1"))
            .bind(id)
            .fetch_one(self.pool())
            .await?;
        site_from_row(&row)
    }

    /// The tenant's site with this code (compared case-insensitively), if any.
    pub async fn find_site_by_code(
        &self,
        tenant_id: &str,
        code: &str,
    ) -> StoreResult<Option<Site>> {
        let row = sqlx::query(&format!(
            "SELECT {SITE_COLS} FROM sites WHERE tenant_id = $1 AND lower(code) = lower($2)"
        ))
        .bind(tenant_id)
        .bind(code)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(site_from_row).transpose()
    }

    /// Replaces the site's enrollment key with a new one of version `key_version`,
    /// provided the stored version is still `key_version - 1` (a conditional update, so
    /// two concurrent rotations cannot both win), sets `rotated_at = now` and returns the
    /// site. `NotFound` if the site is missing; `Conflict("site key changed")` if its
    /// version is not `key_version - 1` (rotated concurrently, or a stale caller).
    /// `audit` is recorded in the same transaction as the rotation.
    pub async fn rotate_site_key(
        &self,
        id: &str,
        key_hash: &str,
        key_version: i64,
        key_fingerprint: &str,
        now: Millis,
        audit: &NewEvent,
    ) -> StoreResult<Site> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(
            "UPDATE sites SET key_hash = $2, key_version = $3, key_fingerprint = $4, \
             rotated_at = $5 WHERE id = $1 AND key_version = $6",
        )
        .bind(id)
        .bind(key_hash)
        .bind(key_version)
        .bind(key_fingerprint)
        .bind(now)
        .bind(key_version.wrapping_sub(1))
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            // Missing → NotFound (from get_site); present → someone else rotated.
            self.get_site(id).await?;
            return Err(StoreError::Conflict("site key changed"));
        }
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        self.get_site(id).await
    }
}
