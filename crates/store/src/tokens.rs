//! Issued JWTs, tracked by `jti` for revocation.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{IssuedToken, Millis, Store, StoreResult, TokenKind, conflict, state_column};

fn token_from_row(row: &AnyRow) -> StoreResult<IssuedToken> {
    Ok(IssuedToken {
        jti: row.try_get("jti")?,
        user_id: row.try_get("user_id")?,
        kind: state_column(row, "kind", "token kind", TokenKind::parse)?,
        parent_jti: row.try_get("parent_jti")?,
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    /// Records an issued token; `Conflict("token exists")` if the `jti` is known.
    pub async fn record_token(&self, token: &IssuedToken) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO issued_tokens (jti, user_id, kind, parent_jti, issued_at, expires_at, \
             revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.jti)
        .bind(&token.user_id)
        .bind(token.kind.as_str())
        .bind(token.parent_jti.as_deref())
        .bind(token.issued_at)
        .bind(token.expires_at)
        .bind(token.revoked_at)
        .execute(self.pool())
        .await
        .map_err(conflict("token exists"))?;
        Ok(())
    }

    /// The token record for `jti`, if any.
    pub async fn get_token(&self, jti: &str) -> StoreResult<Option<IssuedToken>> {
        let row = sqlx::query(
            "SELECT jti, user_id, kind, parent_jti, issued_at, expires_at, revoked_at \
             FROM issued_tokens WHERE jti = $1",
        )
        .bind(jti)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Revokes one token; `true` if it existed and was not yet revoked.
    pub async fn revoke_token(&self, jti: &str, now: Millis) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE issued_tokens SET revoked_at = $2 WHERE jti = $1 AND revoked_at IS NULL",
        )
        .bind(jti)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Revokes every not-yet-revoked token (login and viewer) of a user except
    /// `keep_jti`; returns how many were revoked.
    pub async fn revoke_user_tokens_except(
        &self,
        user_id: &str,
        keep_jti: Option<&str>,
        now: Millis,
    ) -> StoreResult<u64> {
        let res = match keep_jti {
            Some(keep) => {
                sqlx::query(
                    "UPDATE issued_tokens SET revoked_at = $2 \
                     WHERE user_id = $1 AND revoked_at IS NULL AND jti <> $3",
                )
                .bind(user_id)
                .bind(now)
                .bind(keep)
                .execute(self.pool())
                .await?
            }
            None => {
                sqlx::query(
                    "UPDATE issued_tokens SET revoked_at = $2 \
                     WHERE user_id = $1 AND revoked_at IS NULL",
                )
                .bind(user_id)
                .bind(now)
                .execute(self.pool())
                .await?
            }
        };
        Ok(res.rows_affected())
    }

    /// Revokes the viewer tokens minted by login token `parent_jti`.
    pub async fn revoke_child_tokens(&self, parent_jti: &str, now: Millis) -> StoreResult<u64> {
        let res = sqlx::query(
            "UPDATE issued_tokens SET revoked_at = $2 \
             WHERE parent_jti = $1 AND revoked_at IS NULL",
        )
        .bind(parent_jti)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected())
    }

    /// Revokes all of a user's viewer tokens.
    pub async fn revoke_user_viewer_tokens(&self, user_id: &str, now: Millis) -> StoreResult<u64> {
        let res = sqlx::query(
            "UPDATE issued_tokens SET revoked_at = $2 \
             WHERE user_id = $1 AND kind = 'viewer' AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected())
    }

    /// Deletes token rows that expired before `now`; returns how many.
    pub async fn prune_expired_tokens(&self, now: Millis) -> StoreResult<u64> {
        let res = sqlx::query("DELETE FROM issued_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(res.rows_affected())
    }
}
