//! User management (admin only; the role check runs in the extractor, before any change).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use guruconnect_store::{DEFAULT_TENANT, NewUser, StoreError, User, UserPatch};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::api::auth::UserView;
use crate::audit::Audit;
use crate::auth::tokens::now_millis;
use crate::auth::{AdminUser, Role, password};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::middleware::ClientIp;

/// `/api/users` and `/api/users/:id`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users", get(list).post(create))
        .route("/api/users/{id}", get(show).patch(update).delete(remove))
}

/// Create-user request.
#[derive(Deserialize)]
pub struct CreateUser {
    username: String,
    password: SecretString,
    role: String,
}

/// Update-user request; absent fields are left alone.
#[derive(Deserialize)]
pub struct UpdateUser {
    role: Option<String>,
    password: Option<SecretString>,
    disabled: Option<bool>,
}

fn validate_username(name: &str) -> ApiResult<()> {
    let ok = (2..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::Validation(
            "username must be 2-64 characters of letters, digits, '.', '_', '-' or '@'".into(),
        ))
    }
}

fn parse_role(name: &str) -> ApiResult<Role> {
    Role::parse(name)
        .ok_or_else(|| ApiError::Validation("role must be admin, technician or viewer".into()))
}

async fn list(State(state): State<AppState>, _admin: AdminUser) -> ApiResult<Json<Vec<UserView>>> {
    let users = state.store.list_users(DEFAULT_TENANT).await?;
    Ok(Json(users.iter().map(UserView::from_user).collect()))
}

async fn show(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(UserView::from_user(&load(&state, &id).await?)))
}

async fn load(state: &AppState, id: &str) -> ApiResult<User> {
    match state.store.get_user(id).await {
        Ok(user) if user.tenant_id == DEFAULT_TENANT => Ok(user),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::NotFound("no such user")),
        Err(e) => Err(e.into()),
    }
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn create(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let username = req.username.trim().to_owned();
    validate_username(&username)?;
    let role = parse_role(&req.role)?;
    password::validate_new(req.password.expose_secret())?;
    let hash = password::hash(req.password).await?;
    let new = NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: DEFAULT_TENANT.to_owned(),
        username,
        password_hash: hash,
        role: role.as_str().to_owned(),
    };
    let audit = Audit::new("user.created")
        .user(&admin.0.user)
        .ip(ip)
        .details(
            json!({ "target_user_id": new.id, "target_username": new.username, "role": new.role }),
        );
    let user = match state
        .store
        .create_user(&new, now_millis(), audit.event())
        .await
    {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict(
                "a user with that username already exists".into(),
            ));
        }
        other => other?,
    };
    Ok((StatusCode::CREATED, Json(UserView::from_user(&user))))
}

const LAST_ADMIN: &str = "the last administrator cannot be removed, demoted or disabled";

/// Applies a change (or, with no patch, the deletion) and records `audit`, atomically
/// with the last-administrator check.
async fn change_keeping_an_admin(
    state: &AppState,
    id: &str,
    patch: Option<&UserPatch>,
    audit: &Audit,
) -> ApiResult<Option<User>> {
    match state
        .store
        .change_user_keeping_an_admin(id, patch, now_millis(), audit.event())
        .await
    {
        Err(StoreError::Conflict(_)) => Err(ApiError::Conflict(LAST_ADMIN.into())),
        Err(StoreError::NotFound) => Err(ApiError::NotFound("no such user")),
        other => Ok(other?),
    }
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn update(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<UserView>> {
    let target = load(&state, &id).await?;
    let role = req.role.as_deref().map(parse_role).transpose()?;
    let role_changed = role.is_some_and(|r| r.as_str() != target.role);
    let password_hash = match req.password {
        Some(p) => {
            password::validate_new(p.expose_secret())?;
            Some(password::hash(p).await?)
        }
        None => None,
    };
    let password_reset = password_hash.is_some();
    let patch = UserPatch {
        role: role.map(|r| r.as_str().to_owned()),
        password_hash,
        disabled: req.disabled,
    };
    let now = now_millis();
    let audit = Audit::new("user.updated")
        .user(&admin.0.user)
        .ip(ip)
        .details(json!({
            "target_user_id": id,
            "role": patch.role,
            "password_reset": password_reset,
            "disabled": req.disabled,
        }));
    let user = change_keeping_an_admin(&state, &id, Some(&patch), &audit)
        .await?
        .ok_or(ApiError::NotFound("no such user"))?;
    if password_reset || req.disabled == Some(true) || role_changed {
        // Sessions signed in under the old credentials or role end now.
        state
            .store
            .revoke_user_tokens_except(&id, None, now)
            .await?;
        crate::sessions::kick_user(&state, &id, "your account was changed by an administrator")
            .await;
    }
    Ok(Json(UserView::from_user(&user)))
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn remove(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let target = load(&state, &id).await?;
    let audit = Audit::new("user.deleted")
        .user(&admin.0.user)
        .ip(ip)
        .details(json!({ "target_user_id": target.id, "target_username": target.username }));
    change_keeping_an_admin(&state, &id, None, &audit).await?;
    state
        .store
        .revoke_user_tokens_except(&id, None, now_millis())
        .await?;
    crate::sessions::kick_user(&state, &id, "your account was removed").await;
    Ok(StatusCode::NO_CONTENT)
}
