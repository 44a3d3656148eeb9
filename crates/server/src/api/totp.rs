//! The TOTP second factor: enrolment, the second sign-in step, disabling it, and an
//! administrator's reset.
//!
//! `POST /api/auth/totp/setup` (signed in, or enrol-only) stores a pending secret and
//! returns it once with its `otpauth://` URI and QR code; `…/confirm {code}` enables it
//! and returns ten single-use recovery codes once (an enrol-only sign-in also gets a full
//! login token then); `…/disable {password, code}` removes it;
//! `POST /api/auth/login/totp {mfa_token, code | recovery_code}` completes a sign-in;
//! `POST /api/users/:id/totp/reset` (admin) removes a user's second factor.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use guruconnect_store::{DEFAULT_TENANT, StoreError, User};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::api::auth::{LoginResponse, UserView};
use crate::audit::Audit;
use crate::auth::tokens::{Purpose, now_millis, now_secs};
use crate::auth::{AdminUser, AuthUser, SignedInUser, password, totp};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::middleware::ClientIp;
use crate::rate_limit::Limit;

/// The second-factor routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/login/totp", post(login_totp))
        .route("/api/auth/totp/setup", post(setup))
        .route("/api/auth/totp/confirm", post(confirm))
        .route("/api/auth/totp/disable", post(disable))
        .route("/api/users/{id}/totp/reset", post(reset))
}

/// A new secret, shown once.
#[derive(Serialize)]
pub struct SetupResponse {
    secret: String,
    otpauth_uri: String,
    qr_svg_data_url: String,
}

#[tracing::instrument(skip_all, fields(user_id = %signed_in.0.user.id))]
async fn setup(
    State(state): State<AppState>,
    signed_in: SignedInUser,
) -> ApiResult<Json<SetupResponse>> {
    let user = &signed_in.0.user;
    let enrolment = totp::new_enrolment(&user.username)?;
    match state
        .store
        .begin_totp_setup(&user.id, enrolment.secret.expose_secret(), now_millis())
        .await
    {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict(
                "two-factor sign-in is already enabled; disable it first".into(),
            ));
        }
        other => other?,
    }
    Ok(Json(SetupResponse {
        secret: enrolment.secret.expose_secret().to_owned(),
        otpauth_uri: enrolment.otpauth_uri.expose_secret().to_owned(),
        qr_svg_data_url: enrolment.qr_svg_data_url.expose_secret().to_owned(),
    }))
}

/// A code from the authenticator app.
#[derive(Deserialize)]
pub struct ConfirmRequest {
    code: SecretString,
}

/// Enrolment done: recovery codes (shown once) and, for an enrol-only sign-in, a full
/// login.
#[derive(Serialize)]
pub struct ConfirmResponse {
    recovery_codes: Vec<String>,
    #[serde(flatten)]
    login: Option<LoginResponse>,
}

#[tracing::instrument(skip_all, fields(user_id = %signed_in.0.user.id))]
async fn confirm(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    signed_in: SignedInUser,
    ApiJson(req): ApiJson<ConfirmRequest>,
) -> ApiResult<Json<ConfirmResponse>> {
    limit_second_factor(&state, ip, &signed_in.0.user.id).await?;
    let user = &signed_in.0.user;
    let pending = state
        .store
        .get_totp(&user.id)
        .await?
        .filter(|t| !t.enabled)
        .ok_or_else(|| ApiError::Conflict("no two-factor setup is pending".into()))?;
    let step = totp::matching_step(&pending.secret, req.code.expose_secret(), now_secs())?;
    let Some(step) = step else {
        record_failure(&state, user, ip, "enrol").await?;
        return Err(ApiError::Validation("the code is not valid".into()));
    };
    let (codes, hashes) = totp::new_recovery_codes();
    let audit = Audit::new("totp.enrolled").user(user).ip(ip);
    let now = now_millis();
    if !state
        .store
        .confirm_totp(&user.id, step, &hashes, audit.event(), now)
        .await?
    {
        return Err(ApiError::Conflict("no two-factor setup is pending".into()));
    }
    tracing::info!("second factor enrolled");
    let login = if signed_in.enrol_only() {
        state
            .store
            .revoke_token(&signed_in.0.claims.jti, now)
            .await?;
        let user = state.store.get_user(&user.id).await?;
        let login = LoginResponse::signed_in(&state, &user).await?;
        Audit::new("auth.login_success")
            .user(&user)
            .ip(ip)
            .details(json!({ "second_factor": "totp", "enrolled": true }))
            .record(&state)
            .await?;
        Some(login)
    } else {
        None
    };
    Ok(Json(ConfirmResponse {
        recovery_codes: codes.iter().map(|c| c.expose_secret().to_owned()).collect(),
        login,
    }))
}

/// The second sign-in step: a TOTP code or a recovery code.
#[derive(Deserialize)]
pub struct LoginTotpRequest {
    mfa_token: SecretString,
    code: Option<SecretString>,
    recovery_code: Option<SecretString>,
}

#[tracing::instrument(skip_all)]
async fn login_totp(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginTotpRequest>,
) -> ApiResult<Json<LoginResponse>> {
    if let Err(e) = state.limits.check(Limit::SecondFactor, ip).await {
        state.metrics.rate_limited(Limit::SecondFactor.name());
        return Err(e);
    }
    let pending = crate::auth::authenticate(&state, req.mfa_token.expose_secret(), &[Purpose::Mfa])
        .await
        .map_err(|e| match e {
            ApiError::Unauthorized(_) => ApiError::Unauthorized("sign-in expired; start again"),
            other => other,
        })?;
    let user = pending.user;
    limit_second_factor_user(&state, &user.id).await?;
    let now = now_millis();
    let second_factor = match (&req.code, &req.recovery_code) {
        (Some(code), None) => {
            let record = state.store.get_totp(&user.id).await?.filter(|t| t.enabled);
            let step = match &record {
                Some(r) => totp::matching_step(&r.secret, code.expose_secret(), now_secs())?,
                None => None,
            };
            let accepted = match step {
                Some(step) => state.store.accept_totp_step(&user.id, step).await?,
                None => false,
            };
            accepted.then_some("totp")
        }
        (None, Some(code)) if totp::looks_like_recovery_code(code) => {
            let audit = Audit::new("recovery_code.used").user(&user).ip(ip);
            let used = state
                .store
                .use_recovery_code(
                    &user.id,
                    &totp::recovery_code_hash(code.expose_secret()),
                    audit.event(),
                    now,
                )
                .await?;
            used.then_some("recovery_code")
        }
        (None, Some(_)) => None,
        _ => {
            return Err(ApiError::Validation(
                "send either code or recovery_code".into(),
            ));
        }
    };
    let Some(second_factor) = second_factor else {
        record_failure(&state, &user, ip, "sign_in").await?;
        return Err(ApiError::Unauthorized("the code is not valid"));
    };
    // The second-step token is single-use.
    state.store.revoke_token(&pending.claims.jti, now).await?;
    let response = LoginResponse::signed_in(&state, &user).await?;
    Audit::new("auth.login_success")
        .user(&user)
        .ip(ip)
        .details(json!({ "second_factor": second_factor }))
        .record(&state)
        .await?;
    tracing::info!(user_id = %user.id, second_factor, "signed in");
    Ok(Json(response))
}

/// Disabling needs the password and a current code (or a recovery code).
#[derive(Deserialize)]
pub struct DisableRequest {
    password: SecretString,
    code: SecretString,
}

#[tracing::instrument(skip_all, fields(user_id = %auth.user.id))]
async fn disable(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    auth: AuthUser,
    ApiJson(req): ApiJson<DisableRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    limit_second_factor(&state, ip, &auth.user.id).await?;
    let user = &auth.user;
    if state.config.totp_required_for(&user.role) {
        return Err(ApiError::Forbidden(
            "your role requires two-factor sign-in; an administrator can reset it",
        ));
    }
    let record = state
        .store
        .get_totp(&user.id)
        .await?
        .filter(|t| t.enabled)
        .ok_or_else(|| ApiError::Conflict("two-factor sign-in is not enabled".into()))?;
    if !password::verify(req.password, user.password_hash.clone()).await? {
        state.metrics.auth_failure("user");
        return Err(ApiError::Unauthorized("current password is wrong"));
    }
    let code_ok = if totp::looks_like_recovery_code(&req.code) {
        let audit = Audit::new("recovery_code.used").user(user).ip(ip);
        state
            .store
            .use_recovery_code(
                &user.id,
                &totp::recovery_code_hash(req.code.expose_secret()),
                audit.event(),
                now_millis(),
            )
            .await?
    } else {
        match totp::matching_step(&record.secret, req.code.expose_secret(), now_secs())? {
            Some(step) => state.store.accept_totp_step(&user.id, step).await?,
            None => false,
        }
    };
    if !code_ok {
        record_failure(&state, user, ip, "disable").await?;
        return Err(ApiError::Unauthorized("the code is not valid"));
    }
    let audit = Audit::new("totp.disabled").user(user).ip(ip);
    state
        .store
        .remove_totp(&user.id, audit.event(), now_millis())
        .await?;
    tracing::info!("second factor disabled");
    Ok(Json(json!({ "ok": true })))
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn reset(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult<Json<UserView>> {
    let target = match state.store.get_user(&id).await {
        Ok(user) if user.tenant_id == DEFAULT_TENANT => user,
        Ok(_) | Err(StoreError::NotFound) => return Err(ApiError::NotFound("no such user")),
        Err(e) => return Err(e.into()),
    };
    let audit = Audit::new("totp.reset")
        .user(&admin.0.user)
        .ip(ip)
        .details(json!({ "target_user_id": target.id, "target_username": target.username }));
    let was_enabled = state
        .store
        .remove_totp(&target.id, audit.event(), now_millis())
        .await?;
    tracing::info!(target_user_id = %target.id, was_enabled, "second factor reset");
    Ok(Json(UserView::from_user(
        &state.store.get_user(&target.id).await?,
    )))
}

/// Per address: every attempt counts; per user: failures count.
async fn limit_second_factor(
    state: &AppState,
    ip: std::net::IpAddr,
    user_id: &str,
) -> ApiResult<()> {
    if let Err(e) = state.limits.check(Limit::SecondFactor, ip).await {
        state.metrics.rate_limited(Limit::SecondFactor.name());
        return Err(e);
    }
    limit_second_factor_user(state, user_id).await
}

async fn limit_second_factor_user(state: &AppState, user_id: &str) -> ApiResult<()> {
    state
        .limits
        .check_second_factor_user(user_id)
        .await
        .inspect_err(|_| {
            state.metrics.rate_limited(Limit::SecondFactor.name());
        })
}

/// Counts a refused code towards the user's limit; `Err` only when the count could not
/// be stored (shared limits).
async fn record_failure(
    state: &AppState,
    user: &User,
    ip: std::net::IpAddr,
    step: &str,
) -> ApiResult<()> {
    state.metrics.auth_failure("user");
    tracing::info!(user_id = %user.id, step, "second-factor code refused");
    Audit::new("totp.failed")
        .user(user)
        .ip(ip)
        .details(json!({ "step": step }))
        .record_quietly(state)
        .await;
    state.limits.record_second_factor_failure(&user.id).await
}
