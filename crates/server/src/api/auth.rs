//! Sign-in, sign-out, password change and the current user.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use guruconnect_store::{DEFAULT_TENANT, IssuedToken, TokenKind, User, UserPatch};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::audit::Audit;
use crate::auth::tokens::{Claims, ISSUER, LOGIN_TTL_SECS, Purpose, now_millis, now_secs};
use crate::auth::{AuthUser, Permission, Role, password};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::middleware::ClientIp;
use crate::rate_limit::Limit;

/// `/api/auth/*`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/login", post(login))
        .route("/api/auth/logout", post(logout))
        .route("/api/auth/change-password", post(change_password))
        .route("/api/auth/me", get(me))
}

/// Sign-in request.
#[derive(Deserialize)]
pub struct LoginRequest {
    username: String,
    password: SecretString,
}

/// A user as the API shows it.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct UserView {
    /// Id.
    pub id: String,
    /// Username.
    pub username: String,
    /// Role name.
    pub role: String,
    /// Permissions the role grants.
    pub permissions: Vec<Permission>,
    /// Disabled users cannot sign in.
    pub disabled: bool,
    /// Creation time (ms).
    pub created_at: i64,
}

impl UserView {
    /// Projects a stored user.
    pub fn from_user(user: &User) -> Self {
        let permissions = Role::parse(&user.role)
            .map(|r| r.permissions().to_vec())
            .unwrap_or_default();
        Self {
            id: user.id.clone(),
            username: user.username.clone(),
            role: user.role.clone(),
            permissions,
            disabled: user.disabled,
            created_at: user.created_at,
        }
    }
}

/// Sign-in response.
#[derive(Serialize)]
pub struct LoginResponse {
    token: String,
    expires_at: i64,
    user: UserView,
}

/// Mints and records a login token for a user.
pub async fn issue_login_token(state: &AppState, user: &User) -> ApiResult<(String, i64)> {
    let iat = now_secs();
    let exp = iat + LOGIN_TTL_SECS;
    let claims = Claims {
        sub: user.id.clone(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat,
        exp,
        iss: ISSUER.to_owned(),
        purpose: Purpose::Login,
        tenant_id: user.tenant_id.clone(),
        username: user.username.clone(),
        session_id: None,
        access_mode: None,
    };
    state
        .store
        .record_token(&IssuedToken {
            jti: claims.jti.clone(),
            user_id: user.id.clone(),
            kind: TokenKind::Login,
            parent_jti: None,
            issued_at: iat * 1000,
            expires_at: exp * 1000,
            revoked_at: None,
        })
        .await?;
    Ok((state.tokens.sign(&claims)?, exp))
}

#[tracing::instrument(skip_all)]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    if let Err(e) = state.limits.check(Limit::Login, ip) {
        state.metrics.rate_limited(Limit::Login.name());
        return Err(e);
    }
    let username = req.username.trim();
    let user = state
        .store
        .find_user_by_username(DEFAULT_TENANT, username)
        .await?;
    // Verify against a dummy hash for unknown users so timing does not reveal them.
    let phc = user.as_ref().map_or_else(
        || password::dummy_hash().to_owned(),
        |u| u.password_hash.clone(),
    );
    let password_ok = password::verify(req.password, phc).await?;
    let user = match user {
        Some(user) if password_ok && !user.disabled => user,
        _ => {
            state.metrics.auth_failure("user");
            tracing::info!(username_len = username.len(), "sign-in failed");
            Audit::new("auth.login_failure")
                .username(username)
                .ip(ip)
                .record_quietly(&state)
                .await;
            return Err(ApiError::Unauthorized("invalid username or password"));
        }
    };
    let (token, expires_at) = issue_login_token(&state, &user).await?;
    Audit::new("auth.login_success")
        .user(&user)
        .ip(ip)
        .record(&state)
        .await?;
    tracing::info!(user_id = %user.id, "signed in");
    Ok(Json(LoginResponse {
        token,
        expires_at,
        user: UserView::from_user(&user),
    }))
}

#[tracing::instrument(skip_all, fields(user_id = %auth.user.id))]
async fn logout(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    auth: AuthUser,
) -> ApiResult<Json<serde_json::Value>> {
    let now = now_millis();
    state.store.revoke_token(&auth.claims.jti, now).await?;
    // Viewer tokens this user minted die with the sign-out (SPEC §3).
    let viewer_tokens = state
        .store
        .revoke_user_viewer_tokens(&auth.user.id, now)
        .await?;
    Audit::new("auth.logout")
        .user(&auth.user)
        .ip(ip)
        .details(json!({ "viewer_tokens_revoked": viewer_tokens }))
        .record(&state)
        .await?;
    Ok(Json(json!({ "ok": true })))
}

/// Password change request.
#[derive(Deserialize)]
pub struct ChangePasswordRequest {
    current_password: SecretString,
    new_password: SecretString,
}

#[tracing::instrument(skip_all, fields(user_id = %auth.user.id))]
async fn change_password(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    auth: AuthUser,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    if let Err(e) = state.limits.check(Limit::ChangePassword, ip) {
        state.metrics.rate_limited(Limit::ChangePassword.name());
        return Err(e);
    }
    if !password::verify(req.current_password, auth.user.password_hash.clone()).await? {
        state.metrics.auth_failure("user");
        return Err(ApiError::Unauthorized("current password is wrong"));
    }
    password::validate_new(req.new_password.expose_secret())?;
    let hash = password::hash(req.new_password).await?;
    let now = now_millis();
    state
        .store
        .update_user(
            &auth.user.id,
            &UserPatch {
                password_hash: Some(hash),
                ..UserPatch::default()
            },
            now,
        )
        .await?;
    let revoked = state
        .store
        .revoke_user_tokens_except(&auth.user.id, Some(&auth.claims.jti), now)
        .await?;
    Audit::new("auth.password_changed")
        .user(&auth.user)
        .ip(ip)
        .details(json!({ "other_tokens_revoked": revoked }))
        .record(&state)
        .await?;
    Ok(Json(json!({ "ok": true, "other_tokens_revoked": revoked })))
}

async fn me(auth: AuthUser) -> Json<UserView> {
    Json(UserView::from_user(&auth.user))
}
