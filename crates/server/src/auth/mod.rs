//! Authentication and authorization: passwords, tokens, roles, and the extractors that
//! run before a handler body (`AuthUser`, `AdminUser`).

pub mod password;
pub mod roles;
pub mod tokens;
pub mod totp;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use guruconnect_store::{TokenKind, User};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
pub use roles::{Permission, Role};
use tokens::{Claims, Purpose};

/// The bearer credential of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A signed-in user: a valid, unrevoked login token of an enabled user.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user, freshly read from the store.
    pub user: User,
    /// The token's claims.
    pub claims: Claims,
    /// The user's role.
    pub role: Role,
}

impl AuthUser {
    /// Fails with 403 unless the user's role grants `permission`.
    pub fn require(&self, permission: Permission) -> ApiResult<()> {
        if self.role.has(permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("your role does not allow this"))
        }
    }
}

/// Verifies a login token completely: signature, purpose, revocation, user state.
pub async fn authenticate_login(state: &AppState, token: &str) -> ApiResult<AuthUser> {
    authenticate(state, token, &[Purpose::Login]).await
}

/// Verifies a recorded user token of one of `purposes`: signature, purpose, revocation,
/// user state.
pub async fn authenticate(
    state: &AppState,
    token: &str,
    purposes: &[Purpose],
) -> ApiResult<AuthUser> {
    let unauthorized = || {
        state.metrics.auth_failure("user");
        ApiError::Unauthorized("invalid or expired token")
    };
    let claims = state.tokens.verify(token).ok_or_else(unauthorized)?;
    if !purposes.contains(&claims.purpose) {
        return Err(unauthorized());
    }
    let record = state.store.get_token(&claims.jti).await?;
    let active = record.is_some_and(|r| {
        r.kind == TokenKind::Login && r.revoked_at.is_none() && r.user_id == claims.sub
    });
    if !active {
        return Err(unauthorized());
    }
    let user = match state.store.get_user(&claims.sub).await {
        Ok(user) if !user.disabled => user,
        Ok(_) | Err(guruconnect_store::StoreError::NotFound) => return Err(unauthorized()),
        Err(e) => return Err(e.into()),
    };
    let role = Role::parse(&user.role).ok_or_else(unauthorized)?;
    Ok(AuthUser { user, claims, role })
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let Some(token) = bearer(parts) else {
            state.metrics.auth_failure("user");
            return Err(ApiError::Unauthorized("authentication required"));
        };
        authenticate_login(state, token).await
    }
}

/// A signed-in user, or one signed in only to enrol the second factor their role
/// requires (an enrol-only token): for enrolment, `me` and logout.
#[derive(Debug, Clone)]
pub struct SignedInUser(pub AuthUser);

impl SignedInUser {
    /// Whether the token only allows enrolment.
    pub fn enrol_only(&self) -> bool {
        self.0.claims.purpose == Purpose::Enrol
    }
}

impl FromRequestParts<AppState> for SignedInUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let Some(token) = bearer(parts) else {
            state.metrics.auth_failure("user");
            return Err(ApiError::Unauthorized("authentication required"));
        };
        authenticate(state, token, &[Purpose::Login, Purpose::Enrol])
            .await
            .map(SignedInUser)
    }
}

/// An administrator; the check runs before the handler body (SPEC §4.16).
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::Forbidden("administrator role required"));
        }
        Ok(AdminUser(user))
    }
}
