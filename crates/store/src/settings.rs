//! Key/value settings (e.g. the JWT signing secret shared by all instances).

use sqlx::Row;

use crate::{Store, StoreResult};

impl Store {
    /// The stored value for `key`, if any.
    pub async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    /// Inserts or replaces `key`.
    pub async fn set_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Stores `value` only if `key` is absent, then returns whatever is stored: when
    /// several instances race, all of them get the single winner's value.
    pub async fn set_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<String> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(self.pool())
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get("value")?)
    }
}
