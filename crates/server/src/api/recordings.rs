//! Session recordings (docs/recordings.md): the policy, the list, one recording's index,
//! its file (with HTTP ranges, so a player starts at a keyframe), and deletion.

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use guruconnect_store::{DEFAULT_TENANT, Recording, RecordingStatus, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::AppState;
use crate::audit::Audit;
use crate::auth::{AdminUser, AuthUser, Permission};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::middleware::ClientIp;
use crate::recording::{self, Policy, format};

/// `/api/recordings*` and `/api/settings/recording`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/settings/recording", get(show_policy).put(set_policy))
        .route("/api/recordings", get(list))
        .route("/api/recordings/{id}", get(show).delete(delete))
        .route("/api/recordings/{id}/file", get(file))
}

async fn show_policy(State(state): State<AppState>, auth: AuthUser) -> ApiResult<Json<Policy>> {
    auth.require(Permission::Recordings)?;
    Ok(Json(recording::policy(&state).await))
}

async fn set_policy(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    ApiJson(policy): ApiJson<Policy>,
) -> ApiResult<Json<Policy>> {
    if let Some(problem) = policy.problem() {
        return Err(ApiError::Validation(problem.into()));
    }
    for site in &policy.sites {
        match state.store.get_site(site).await {
            Ok(s) if s.tenant_id == DEFAULT_TENANT => {}
            Ok(_) | Err(StoreError::NotFound) => {
                return Err(ApiError::Validation(format!("no such site: {site}")));
            }
            Err(e) => return Err(e.into()),
        }
    }
    recording::set_policy(&state, &policy).await?;
    Audit::new("recording.policy_changed")
        .user(&admin.0.user)
        .ip(ip)
        .details(json!(policy))
        .record(&state)
        .await?;
    Ok(Json(policy))
}

/// List filter.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Only this machine's recordings.
    machine: Option<String>,
    limit: Option<i64>,
}

/// The list.
#[derive(Debug, Serialize)]
pub struct RecordingList {
    recordings: Vec<Recording>,
}

async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<RecordingList>> {
    auth.require(Permission::Recordings)?;
    let machine = q.machine.filter(|m| !m.is_empty());
    if machine.as_deref().is_some_and(|m| m.len() > 100) {
        return Err(ApiError::Validation(
            "machine must be at most 100 characters".into(),
        ));
    }
    let recordings = state
        .store
        .list_recordings(DEFAULT_TENANT, machine.as_deref(), q.limit.unwrap_or(200))
        .await?;
    Ok(Json(RecordingList { recordings }))
}

async fn load(state: &AppState, id: &str) -> ApiResult<Recording> {
    match state.store.get_recording(DEFAULT_TENANT, id).await {
        Ok(r) => Ok(r),
        Err(StoreError::NotFound) => Err(ApiError::NotFound("no such recording")),
        Err(e) => Err(e.into()),
    }
}

/// A recording with the index a player needs.
#[derive(Debug, Serialize)]
pub struct RecordingView {
    #[serde(flatten)]
    recording: Recording,
    #[serde(flatten)]
    index: format::Index,
}

async fn show(
    State(state): State<AppState>,
    auth: AuthUser,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult<Json<RecordingView>> {
    auth.require(Permission::Recordings)?;
    let recording = load(&state, &id).await?;
    let path =
        recording::file_of(&state, &recording.id).ok_or(ApiError::NotFound("no such recording"))?;
    let closed = recording.status != RecordingStatus::Recording;
    let index = tokio::task::spawn_blocking(move || recording::load_index(&path, closed))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::NotFound("the recording's file is missing"),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                ApiError::Conflict(format!("the recording's file cannot be read: {e}"))
            }
            _ => ApiError::Internal(e.into()),
        })?;
    Audit::new("recording.viewed")
        .user(&auth.user)
        .ip(ip)
        .agent(&recording.agent_id)
        .session(&recording.session_id)
        .record_in_background(&state);
    Ok(Json(RecordingView { recording, index }))
}

async fn file(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    auth.require(Permission::Recordings)?;
    let recording = load(&state, &id).await?;
    let path =
        recording::file_of(&state, &recording.id).ok_or(ApiError::NotFound("no such recording"))?;
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Err(ApiError::NotFound("the recording's file is missing"));
    }
    let response = ServeFile::new_with_mime(&path, &mime_guess::mime::APPLICATION_OCTET_STREAM)
        .oneshot(request)
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("serving {}: {e}", path.display())))?;
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(Response::from_parts(parts, Body::new(body)))
}

async fn delete(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let recording = load(&state, &id).await?;
    if recording.status == RecordingStatus::Recording {
        return Err(ApiError::Conflict(
            "the session is still being recorded; end it first".into(),
        ));
    }
    recording::remove(&state, &recording).await?;
    Audit::new("recording.deleted")
        .user(&admin.0.user)
        .ip(ip)
        .agent(&recording.agent_id)
        .session(&recording.session_id)
        .details(json!({ "bytes": recording.bytes, "sha256": recording.sha256 }))
        .record(&state)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
