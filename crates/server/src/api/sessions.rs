//! Sessions: live and recorded, admin end, and viewer-token minting.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use guruconnect_store::{
    DEFAULT_TENANT, IssuedToken, MachineStatus, SessionRecord, SessionStatus, StoreError, TokenKind,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::audit::Audit;
use crate::auth::tokens::{AccessMode, Claims, ISSUER, Purpose, VIEWER_TTL_SECS, now_secs};
use crate::auth::{AdminUser, AuthUser, Permission};
use crate::error::{ApiError, ApiResult};
use crate::middleware::ClientIp;
use crate::sessions::bus::EndReply;
use crate::sessions::registry::EndCode;
use crate::sessions::registry::SessionSnapshot;

/// `/api/sessions*`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/sessions", get(list))
        .route("/api/sessions/{id}", get(show).delete(end))
        .route("/api/sessions/{id}/viewer-token", post(viewer_token))
        .route("/api/sessions/{id}/end", post(end_live))
}

/// A session record with its live state.
#[derive(Debug, Serialize)]
pub struct SessionView {
    #[serde(flatten)]
    record: SessionRecord,
    live: Option<SessionSnapshot>,
    /// Who the session is for: the name the customer gave on the join page, else the
    /// support code's note, if any.
    customer: Option<String>,
    /// The machine's host name, company and site, for naming and filtering.
    machine: Option<MachineLabels>,
}

/// The labels of a session's machine.
#[derive(Debug, Serialize)]
pub struct MachineLabels {
    hostname: String,
    company: Option<String>,
    site: Option<String>,
}

/// A record with its live state, customer and machine labels.
async fn view(state: &AppState, record: SessionRecord) -> ApiResult<SessionView> {
    let customer = match &record.code {
        // The name the customer typed on the join page, else the technician's note.
        Some(code) => state
            .store
            .get_code(code)
            .await?
            .and_then(|c| c.customer_name.or(c.note)),
        None => None,
    };
    let machine = match state.store.get_machine(&record.agent_id).await {
        Ok(m) => Some(MachineLabels {
            hostname: m.hostname,
            company: m.company,
            site: m.site,
        }),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(SessionView {
        live: if record.status == SessionStatus::Ended {
            None
        } else {
            crate::sessions::snapshot(state, &record.id).await
        },
        record: masked(record),
        customer,
        machine,
    })
}

/// List filter.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Include ended sessions.
    all: Option<bool>,
    /// Only this machine's sessions (its history on the machine page).
    agent_id: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<SessionView>>> {
    auth.require(Permission::View)?;
    let agent_id = q.agent_id.filter(|a| !a.is_empty());
    if agent_id.as_deref().is_some_and(|a| a.len() > 100) {
        return Err(ApiError::Validation(
            "agent_id must be at most 100 characters".into(),
        ));
    }
    let records = state
        .store
        .list_sessions_of(
            DEFAULT_TENANT,
            agent_id.as_deref(),
            !q.all.unwrap_or(false),
            q.limit.unwrap_or(200),
        )
        .await?;
    let mut views = Vec::with_capacity(records.len());
    for record in records {
        views.push(view(&state, record).await?);
    }
    Ok(Json(views))
}

/// Support codes are never returned in full after creation (SPEC §4.10).
fn masked(mut record: SessionRecord) -> SessionRecord {
    record.code = record.code.as_deref().map(crate::api::codes::mask_code);
    record
}

async fn load(state: &AppState, id: &str) -> ApiResult<SessionRecord> {
    match state.store.get_session(id).await {
        Ok(s) if s.tenant_id == DEFAULT_TENANT => Ok(s),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::NotFound("no such session")),
        Err(e) => Err(e.into()),
    }
}

async fn show(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionView>> {
    auth.require(Permission::View)?;
    let record = load(&state, &id).await?;
    Ok(Json(view(&state, record).await?))
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn end(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let record = load(&state, &id).await?;
    crate::sessions::end(
        &state,
        &id,
        crate::relay::close::NORMAL,
        EndCode::Ended,
        "ended by an administrator",
        None,
    )
    .await;
    let now = state.clock.now_millis();
    state
        .store
        .end_session(&id, "ended by an administrator", now, None)
        .await?;
    let audit = Audit::new("session.removed")
        .user(&admin.0.user)
        .ip(ip)
        .agent(&record.agent_id)
        .session(&id);
    state
        .store
        .soft_delete_session(&id, now, audit.event())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/sessions/{id}/end`: ends a live session for everyone (the record stays,
/// unlike `DELETE`). An administrator may end any; a technician only one they are
/// controlling at this moment.
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id))]
async fn end_live(
    State(state): State<AppState>,
    auth: AuthUser,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Permission::Control)?;
    let record = load(&state, &id).await?;
    let admin = auth.role == crate::auth::Role::Admin;
    let reason = format!("ended by {}", auth.user.username);
    let controller = (!admin).then_some(auth.user.id.as_str());
    // Audited first: whoever sees the session end can already find who ended it. Only the
    // holder knows whether the technician controls it, so a refusal is unaudited again.
    let audit = Audit::new("session.ended_by_user")
        .user(&auth.user)
        .ip(ip)
        .agent(&record.agent_id)
        .session(&id);
    // A technician may end only a session they control: checked before the audit.
    if let Some(user) = controller {
        match crate::sessions::controls(&state, &id, user).await {
            Some(true) => {}
            Some(false) => return Err(forbidden_end()),
            None => return Err(ApiError::Conflict("the session is not live".into())),
        }
    }
    audit.record(&state).await?;
    let ended = crate::sessions::end(
        &state,
        &id,
        crate::relay::close::NORMAL,
        EndCode::Ended,
        &reason,
        controller,
    )
    .await;
    match ended {
        EndReply::Ended => Ok(StatusCode::NO_CONTENT),
        EndReply::EndedOffline => {
            state
                .store
                .end_session(&id, &reason, state.clock.now_millis(), None)
                .await?;
            Ok(StatusCode::NO_CONTENT)
        }
        EndReply::NotLive => Err(ApiError::Conflict("the session is not live".into())),
        EndReply::Forbidden => Err(forbidden_end()),
    }
}

fn forbidden_end() -> ApiError {
    ApiError::Forbidden(
        "only a technician controlling this session (or an administrator) may end it",
    )
}

/// The minted token and where to use it.
#[derive(Debug, Serialize)]
pub struct ViewerTokenResponse {
    token: String,
    session_id: String,
    access_mode: AccessMode,
    expires_at: i64,
    /// Relative WebSocket URL, with the token, for the browser viewer.
    ws_path: String,
}

#[tracing::instrument(skip_all, fields(user_id = %auth.user.id))]
async fn viewer_token(
    State(state): State<AppState>,
    auth: AuthUser,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult<Json<ViewerTokenResponse>> {
    let access = if auth.role.has(Permission::Control) {
        AccessMode::Control
    } else if auth.role.has(Permission::View) {
        AccessMode::ViewOnly
    } else {
        return Err(ApiError::Forbidden("your role may not view sessions"));
    };
    let record = load(&state, &id).await?;
    if record.status == SessionStatus::Ended {
        return Err(ApiError::Conflict("the session has ended".into()));
    }
    if state.store.get_machine(&record.agent_id).await?.status == MachineStatus::Pending {
        return Err(ApiError::Conflict(
            "the machine is pending an administrator's approval".into(),
        ));
    }
    let iat = now_secs();
    let claims = Claims {
        sub: auth.user.id.clone(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat,
        exp: iat + VIEWER_TTL_SECS,
        iss: ISSUER.to_owned(),
        purpose: Purpose::Viewer,
        tenant_id: record.tenant_id.clone(),
        username: auth.user.username.clone(),
        session_id: Some(id.clone()),
        access_mode: Some(access),
    };
    state
        .store
        .record_token(&IssuedToken {
            jti: claims.jti.clone(),
            user_id: auth.user.id.clone(),
            kind: TokenKind::Viewer,
            parent_jti: Some(auth.claims.jti.clone()),
            issued_at: iat * 1000,
            expires_at: claims.exp * 1000,
            revoked_at: None,
        })
        .await?;
    let token = state.tokens.sign(&claims)?;
    Audit::new("session.viewer_token_minted")
        .user(&auth.user)
        .ip(ip)
        .agent(&record.agent_id)
        .session(&id)
        .details(json!({ "access_mode": access }))
        .record(&state)
        .await?;
    Ok(Json(ViewerTokenResponse {
        ws_path: format!("/ws/viewer?session_id={id}&token={token}"),
        token,
        session_id: id,
        access_mode: access,
        expires_at: claims.exp,
    }))
}
