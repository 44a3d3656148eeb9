//! Console users.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::events::insert_event;
use crate::{Millis, NewEvent, NewUser, Store, StoreError, StoreResult, User, UserPatch, conflict};

const USER_COLS: &str = "id, tenant_id, username, password_hash, role, disabled, \
     created_at, updated_at, (SELECT COUNT(*) FROM user_totp t \
     WHERE t.user_id = users.id AND t.enabled = 1) AS totp_enabled";

fn user_from_row(row: &AnyRow) -> StoreResult<User> {
    Ok(User {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        role: row.try_get("role")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        totp_enabled: row.try_get::<i64, _>("totp_enabled")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Creates a user; `Conflict("username taken")` if the tenant already has that
    /// username, compared case-insensitively. `audit` is recorded in the same
    /// transaction.
    pub async fn create_user(
        &self,
        new: &NewUser,
        now: Millis,
        audit: &NewEvent,
    ) -> StoreResult<User> {
        let mut tx = self.pool().begin().await?;
        insert_event(&mut tx, audit, now).await?;
        sqlx::query(
            "INSERT INTO users (id, tenant_id, username, password_hash, role, disabled, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $6)",
        )
        .bind(&new.id)
        .bind(&new.tenant_id)
        .bind(&new.username)
        .bind(&new.password_hash)
        .bind(&new.role)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(conflict("username taken"))?;
        tx.commit().await?;
        self.get_user(&new.id).await
    }

    /// The user with this id, or `NotFound`.
    pub async fn get_user(&self, id: &str) -> StoreResult<User> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_one(self.pool())
            .await?;
        user_from_row(&row)
    }

    /// The tenant's user with this username (case-insensitive), if any.
    pub async fn find_user_by_username(
        &self,
        tenant_id: &str,
        username: &str,
    ) -> StoreResult<Option<User>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE tenant_id = $1 AND lower(username) = lower($2)"
        ))
        .bind(tenant_id)
        .bind(username)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// All users of a tenant, ordered by username (case-insensitively).
    pub async fn list_users(&self, tenant_id: &str) -> StoreResult<Vec<User>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE tenant_id = $1 ORDER BY lower(username), id"
        ))
        .bind(tenant_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Applies a partial update and returns the updated user; `NotFound` if missing.
    /// `audit` is recorded in the same transaction.
    pub async fn update_user(
        &self,
        id: &str,
        patch: &UserPatch,
        now: Millis,
        audit: &NewEvent,
    ) -> StoreResult<User> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(
            "UPDATE users SET role = COALESCE($2, role), \
             password_hash = COALESCE($3, password_hash), \
             disabled = COALESCE($4, disabled), updated_at = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(patch.role.as_deref())
        .bind(patch.password_hash.as_deref())
        .bind(patch.disabled.map(i64::from))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        }
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        self.get_user(id).await
    }

    /// Deletes a user; `NotFound` if missing. The user's token rows are left in place
    /// (revoke them first with [`Store::revoke_user_tokens_except`]).
    pub async fn delete_user(&self, id: &str) -> StoreResult<()> {
        let res = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Number of users in a tenant.
    pub async fn count_users(&self, tenant_id: &str) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Number of enabled users with role `admin` in a tenant (guards "last admin").
    pub async fn count_active_admins(&self, tenant_id: &str) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM users WHERE tenant_id = $1 AND role = 'admin' \
             AND disabled = 0",
        )
        .bind(tenant_id)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Applies `patch`, or deletes the user when `patch` is `None`, unless that would leave
    /// the user's tenant without an enabled administrator (`Conflict("last admin")`).
    /// Check and change happen in one transaction that holds the tenant's admin rows
    /// (PostgreSQL `FOR UPDATE`; SQLite's single writer lock, taken by the first write),
    /// so two administrators demoting each other at once cannot both succeed. `audit` is
    /// recorded in the same transaction.
    pub async fn change_user_keeping_an_admin(
        &self,
        id: &str,
        patch: Option<&UserPatch>,
        now: Millis,
        audit: &NewEvent,
    ) -> StoreResult<Option<User>> {
        let mut tx = self.pool().begin().await?;
        let touched = sqlx::query("UPDATE users SET updated_at = updated_at WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if touched.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        }
        let tenant: String = sqlx::query("SELECT tenant_id FROM users WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("tenant_id")?;
        if self.backend() == crate::Backend::Postgres {
            sqlx::query("SELECT id FROM users WHERE tenant_id = $1 AND role = 'admin' FOR UPDATE")
                .bind(&tenant)
                .fetch_all(&mut *tx)
                .await?;
        }
        match patch {
            Some(patch) => {
                sqlx::query(
                    "UPDATE users SET role = COALESCE($2, role), \
                     password_hash = COALESCE($3, password_hash), \
                     disabled = COALESCE($4, disabled), updated_at = $5 WHERE id = $1",
                )
                .bind(id)
                .bind(patch.role.as_deref())
                .bind(patch.password_hash.as_deref())
                .bind(patch.disabled.map(i64::from))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                for sql in [
                    "DELETE FROM users WHERE id = $1",
                    "DELETE FROM user_totp WHERE user_id = $1",
                    "DELETE FROM totp_recovery_codes WHERE user_id = $1",
                ] {
                    sqlx::query(sql).bind(id).execute(&mut *tx).await?;
                }
            }
        }
        let admins: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM users WHERE tenant_id = $1 AND role = 'admin' \
             AND disabled = 0",
        )
        .bind(&tenant)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if admins == 0 {
            tx.rollback().await?;
            return Err(StoreError::Conflict("last admin"));
        }
        let user = match patch {
            Some(_) => Some(user_from_row(
                &sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?,
            )?),
            None => None,
        };
        insert_event(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(user)
    }
}
