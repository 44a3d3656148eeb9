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
use crate::auth::tokens::{
    Claims, ENROL_TTL_SECS, ISSUER, LOGIN_TTL_SECS, MFA_TTL_SECS, Purpose, now_millis, now_secs,
};
use crate::auth::{AuthUser, Permission, Role, SignedInUser, password};
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
    /// Sign-in asks for a TOTP code after the password.
    pub totp_enabled: bool,
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
            totp_enabled: user.totp_enabled,
            created_at: user.created_at,
        }
    }
}

/// Sign-in response: signed in, or the second step still to come.
#[derive(Serialize)]
#[serde(untagged)]
pub enum LoginResponse {
    /// Signed in. `totp_enrollment_required` marks an enrol-only token: the user's role
    /// requires a second factor they have not enrolled yet.
    SignedIn {
        /// Bearer token.
        token: String,
        /// Expiry (seconds).
        expires_at: i64,
        /// The user.
        user: UserView,
        /// Present (true) only for an enrol-only sign-in.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        totp_enrollment_required: bool,
        /// Present (true) while the account still has the password the server generated
        /// at first start: the console asks for a new one first.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        password_change_required: bool,
    },
    /// The password was right; `POST /api/auth/login/totp` with this token and a code.
    MfaRequired {
        /// Always true.
        mfa_required: bool,
        /// Single-purpose token for the second step.
        mfa_token: String,
        /// Its expiry (seconds).
        expires_at: i64,
    },
}

impl LoginResponse {
    /// A full sign-in for `user`.
    pub async fn signed_in(state: &AppState, user: &User) -> ApiResult<Self> {
        let (token, expires_at) = issue_login_token(state, user).await?;
        Ok(LoginResponse::SignedIn {
            token,
            expires_at,
            user: UserView::from_user(user),
            totp_enrollment_required: false,
            password_change_required: password_change_required(state, &user.id).await?,
        })
    }
}

/// The settings key that marks an account still on its generated password.
pub fn password_change_key(user_id: &str) -> String {
    format!("password_change_required:{user_id}")
}

/// Whether `user_id` still has the password the server generated for it.
async fn password_change_required(state: &AppState, user_id: &str) -> ApiResult<bool> {
    Ok(state
        .store
        .get_setting(&password_change_key(user_id))
        .await?
        .as_deref()
        == Some("1"))
}

/// Mints and records a login token for a user.
pub async fn issue_login_token(state: &AppState, user: &User) -> ApiResult<(String, i64)> {
    issue_user_token(state, user, Purpose::Login).await
}

/// Mints and records a token of a user-facing `purpose` (login, enrol-only or the
/// second-factor step); every one is revocable by `jti`.
pub async fn issue_user_token(
    state: &AppState,
    user: &User,
    purpose: Purpose,
) -> ApiResult<(String, i64)> {
    let iat = now_secs();
    let ttl = match purpose {
        Purpose::Mfa => MFA_TTL_SECS,
        Purpose::Enrol => ENROL_TTL_SECS,
        Purpose::Login | Purpose::Viewer => LOGIN_TTL_SECS,
    };
    let exp = iat + ttl;
    let claims = Claims {
        sub: user.id.clone(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat,
        exp,
        iss: ISSUER.to_owned(),
        purpose,
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
    if let Err(e) = state.limits.check(Limit::Login, ip).await {
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
    if user.totp_enabled {
        let (mfa_token, expires_at) = issue_user_token(&state, &user, Purpose::Mfa).await?;
        tracing::info!(user_id = %user.id, "password accepted; second factor required");
        return Ok(Json(LoginResponse::MfaRequired {
            mfa_required: true,
            mfa_token,
            expires_at,
        }));
    }
    if state.config.totp_required_for(&user.role) {
        let (token, expires_at) = issue_user_token(&state, &user, Purpose::Enrol).await?;
        Audit::new("auth.login_enrol_only")
            .user(&user)
            .ip(ip)
            .record(&state)
            .await?;
        tracing::info!(user_id = %user.id, "signed in to enrol a required second factor");
        return Ok(Json(LoginResponse::SignedIn {
            token,
            expires_at,
            user: UserView::from_user(&user),
            totp_enrollment_required: true,
            password_change_required: password_change_required(&state, &user.id).await?,
        }));
    }
    let response = LoginResponse::signed_in(&state, &user).await?;
    Audit::new("auth.login_success")
        .user(&user)
        .ip(ip)
        .record(&state)
        .await?;
    tracing::info!(user_id = %user.id, "signed in");
    Ok(Json(response))
}

#[tracing::instrument(skip_all, fields(user_id = %auth.user.id))]
async fn logout(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    SignedInUser(auth): SignedInUser,
) -> ApiResult<Json<serde_json::Value>> {
    let now = now_millis();
    state.store.revoke_token(&auth.claims.jti, now).await?;
    // Viewer tokens this user minted die with the sign-out (SPEC §3).
    let viewer_tokens = state
        .store
        .revoke_user_viewer_tokens(&auth.user.id, now)
        .await?;
    // …and so do the viewers open with them, on every instance.
    crate::sessions::kick_user(&state, &auth.user.id, "signed out").await;
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
    if let Err(e) = state.limits.check(Limit::ChangePassword, ip).await {
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
    // Other sign-ins end first, so the event recorded with the change can count them; a
    // failed change then only costs those sign-ins.
    let revoked = state
        .store
        .revoke_user_tokens_except(&auth.user.id, Some(&auth.claims.jti), now)
        .await?;
    let audit = Audit::new("auth.password_changed")
        .user(&auth.user)
        .ip(ip)
        .details(json!({ "other_tokens_revoked": revoked }));
    state
        .store
        .update_user(
            &auth.user.id,
            &UserPatch {
                password_hash: Some(hash),
                ..UserPatch::default()
            },
            now,
            audit.event(),
        )
        .await?;
    state
        .store
        .set_setting(&password_change_key(&auth.user.id), "0")
        .await?;
    Ok(Json(json!({ "ok": true, "other_tokens_revoked": revoked })))
}

/// `GET /api/auth/me`: the user, and whether their sign-in only allows enrolling the
/// second factor their role requires.
#[derive(Serialize)]
pub struct MeView {
    #[serde(flatten)]
    user: UserView,
    /// The user's role requires a second factor.
    totp_required: bool,
    /// This token only allows enrolment (and `me`, logout).
    totp_enrollment_required: bool,
    /// The account still has the password generated at first start.
    password_change_required: bool,
}

async fn me(State(state): State<AppState>, signed_in: SignedInUser) -> ApiResult<Json<MeView>> {
    let enrol_only = signed_in.enrol_only();
    let user = signed_in.0.user;
    Ok(Json(MeView {
        totp_required: state.config.totp_required_for(&user.role),
        totp_enrollment_required: enrol_only,
        password_change_required: password_change_required(&state, &user.id).await?,
        user: UserView::from_user(&user),
    }))
}
