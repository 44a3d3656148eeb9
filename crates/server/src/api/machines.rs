//! Machines and their per-agent keys.
//!
//! A per-agent key is `cak_` + 256 bits from the OS CSPRNG (base64url), stored only as a
//! SHA-256 hash, shown once. Key management is admin-only and checked before any change.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use guruconnect_store::{
    AgentKey, DEFAULT_TENANT, Machine, MachineLabels, MachineSearch, MachineStatus, MachineUpsert,
    StoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::audit::Audit;
use crate::auth::{AdminUser, AuthUser, Permission};
use crate::error::{ApiError, ApiJson, ApiResult, parse_json_body};
use crate::middleware::ClientIp;

/// `/api/machines*`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/machines", get(list))
        .route("/api/machines/bulk-remove", post(bulk_remove))
        .route(
            "/api/machines/{agent_id}",
            get(show).patch(update_labels).delete(remove),
        )
        .route("/api/machines/{agent_id}/approve", post(approve))
        .route(
            "/api/machines/{agent_id}/keys",
            get(list_keys).post(create_key),
        )
        .route("/api/machines/{agent_id}/keys/{key_id}", delete(revoke_key))
}

/// Host name of a machine pre-provisioned before its first connect.
pub const NOT_CONNECTED_YET: &str = "(not connected yet)";

/// Most ids one bulk removal accepts.
pub const BULK_REMOVE_MAX: usize = 500;

/// A machine with its live state.
#[derive(Debug, Serialize)]
pub struct MachineView {
    #[serde(flatten)]
    machine: Machine,
    online: bool,
    session_id: Option<String>,
}

fn view_with(
    presence: &std::collections::HashMap<String, crate::sessions::Presence>,
    machine: Machine,
) -> MachineView {
    let live = presence.get(&machine.agent_id);
    MachineView {
        online: live.is_some_and(|p| p.online),
        session_id: live.map(|p| p.session_id.clone()),
        machine,
    }
}

/// One machine with its live session, wherever in the cluster it is held.
async fn view(state: &AppState, machine: Machine) -> MachineView {
    view_with(&crate::sessions::presence(state).await, machine)
}

/// Paging parameters.
#[derive(Debug, Deserialize)]
pub struct Page {
    /// Search: terms AND-ed, field-scoped terms such as `os:linux` or `site:"New York"`.
    q: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(page): Query<Page>,
) -> ApiResult<Json<serde_json::Value>> {
    auth.require(Permission::View)?;
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let offset = page.offset.unwrap_or(0).max(0);
    let query = page.q.unwrap_or_default();
    if query.len() > 500 {
        return Err(ApiError::Validation(
            "q must be at most 500 characters".into(),
        ));
    }
    let presence = crate::sessions::presence(&state).await;
    let online_ids = presence
        .iter()
        .filter(|(_, p)| p.online)
        .map(|(agent_id, _)| agent_id.clone())
        .collect();
    let (machines, total) = state
        .store
        .search_machines(&MachineSearch {
            tenant_id: DEFAULT_TENANT.to_owned(),
            query: query.trim().to_owned(),
            limit,
            offset,
            online_ids: Some(online_ids),
        })
        .await?;
    let items: Vec<MachineView> = machines
        .into_iter()
        .map(|m| view_with(&presence, m))
        .collect();
    Ok(Json(
        json!({ "items": items, "total": total, "limit": limit, "offset": offset }),
    ))
}

async fn load(state: &AppState, agent_id: &str) -> ApiResult<Machine> {
    match state.store.get_machine(agent_id).await {
        Ok(m) if m.tenant_id == DEFAULT_TENANT => Ok(m),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::NotFound("no such machine")),
        Err(e) => Err(e.into()),
    }
}

async fn show(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<MachineView>> {
    auth.require(Permission::View)?;
    Ok(Json(view(&state, load(&state, &agent_id).await?).await))
}

async fn list_keys(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Vec<AgentKey>>> {
    load(&state, &agent_id).await?;
    Ok(Json(state.store.list_agent_keys(&agent_id).await?))
}

/// Create-key request.
#[derive(Debug, Default, Deserialize)]
pub struct CreateKey {
    label: Option<String>,
    /// Host name for a machine that has not connected yet (pre-provisioning).
    hostname: Option<String>,
}

/// The one response that ever carries a key in plaintext.
#[derive(Debug, Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    key: AgentKey,
    /// The key itself; shown once.
    agent_key: String,
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn create_key(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(agent_id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let req: CreateKey = if body.iter().all(u8::is_ascii_whitespace) {
        CreateKey::default()
    } else {
        parse_json_body(&body)?
    };
    if uuid::Uuid::parse_str(&agent_id).is_err() {
        return Err(ApiError::Validation("agent_id must be a UUID".into()));
    }
    let now = state.clock.now_millis();
    match state.store.get_machine(&agent_id).await {
        Ok(_) => {}
        Err(StoreError::NotFound) => {
            // Pre-provision a machine that will connect with this key for the first time.
            state
                .store
                .upsert_machine(&MachineUpsert {
                    agent_id: agent_id.clone(),
                    tenant_id: DEFAULT_TENANT.to_owned(),
                    hostname: req
                        .hostname
                        .clone()
                        .unwrap_or_else(|| NOT_CONNECTED_YET.to_owned()),
                    seen_at: now,
                    ..MachineUpsert::default()
                })
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    let (plaintext, key) =
        crate::fleet::new_key(&agent_id, req.label.as_deref(), Some(&admin.0.user.id), now);
    let audit = Audit::new("key.issued")
        .user(&admin.0.user)
        .ip(ip)
        .agent(&agent_id)
        .details(json!({ "key_id": key.id, "prefix": key.prefix }));
    state.store.create_agent_key(&key, audit.event()).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key,
            agent_key: plaintext,
        }),
    ))
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn revoke_key(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path((agent_id, key_id)): Path<(String, String)>,
) -> ApiResult<Json<AgentKey>> {
    let audit = Audit::new("key.revoked")
        .user(&admin.0.user)
        .ip(ip)
        .agent(&agent_id)
        .details(json!({ "key_id": key_id }));
    let key = match state
        .store
        .revoke_agent_key(&agent_id, &key_id, state.clock.now_millis(), audit.event())
        .await
    {
        Err(StoreError::NotFound) => {
            return Err(ApiError::NotFound("no such key for this machine"));
        }
        other => other?,
    };
    // A live connection made with the key ends now.
    let closed = crate::sessions::end_by_key(&state, &key_id, "agent key revoked").await;
    tracing::info!(key_id, live_sessions_closed = closed, "agent key revoked");
    Ok(Json(key))
}

/// Deserializes a present field (even `null`) as `Some`, so `null` can mean "clear".
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Label update: absent fields are kept, `null` clears.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsPatch {
    #[serde(default, deserialize_with = "present")]
    company: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    site: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    department: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    device_type: Option<Option<String>>,
    tags: Option<Vec<String>>,
    /// Technicians' notes: free text, `null` or empty clears.
    #[serde(default, deserialize_with = "present")]
    notes: Option<Option<String>>,
    /// Update channel (`stable`, `beta`); `null` inherits the site's.
    #[serde(default, deserialize_with = "present")]
    update_channel: Option<Option<String>>,
}

fn update_channel(value: Option<Option<String>>) -> ApiResult<Option<Option<String>>> {
    match value {
        Some(Some(c)) => match c.parse::<guruconnect_release::Channel>() {
            Ok(c) => Ok(Some(Some(c.as_str().to_owned()))),
            Err(e) => Err(ApiError::Validation(format!("update_channel: {e}"))),
        },
        other => Ok(other),
    }
}

/// Longest machine note, in characters.
const MAX_NOTES_CHARS: usize = 10_000;

fn notes(value: Option<Option<String>>) -> ApiResult<Option<Option<String>>> {
    match value {
        Some(Some(v)) if v.chars().count() > MAX_NOTES_CHARS => Err(ApiError::Validation(format!(
            "notes must be at most {MAX_NOTES_CHARS} characters"
        ))),
        // Line breaks and tabs are kept; other control characters are not text.
        Some(Some(v))
            if v.chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            Err(ApiError::Validation(
                "notes must not contain control characters".into(),
            ))
        }
        Some(Some(v)) => Ok(Some(Some(v.trim().to_owned()).filter(|v| !v.is_empty()))),
        other => Ok(other),
    }
}

fn label(value: Option<Option<String>>) -> ApiResult<Option<Option<String>>> {
    match value {
        Some(Some(v)) if v.chars().count() > 100 => Err(ApiError::Validation(
            "labels must be at most 100 characters".into(),
        )),
        Some(Some(v)) => Ok(Some(Some(v.trim().to_owned()).filter(|v| !v.is_empty()))),
        other => Ok(other),
    }
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn update_labels(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(agent_id): Path<String>,
    ApiJson(req): ApiJson<LabelsPatch>,
) -> ApiResult<Json<MachineView>> {
    let before = load(&state, &agent_id).await?;
    let tags = match req.tags {
        Some(tags) if tags.len() > 32 || tags.iter().any(|t| t.chars().count() > 64) => {
            return Err(ApiError::Validation(
                "at most 32 tags of at most 64 characters".into(),
            ));
        }
        Some(tags) => Some(
            tags.into_iter()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
        ),
        None => None,
    };
    let labels = MachineLabels {
        company: label(req.company)?,
        site: label(req.site)?,
        department: label(req.department)?,
        device_type: label(req.device_type)?,
        tags,
        notes: notes(req.notes)?,
        update_channel: update_channel(req.update_channel)?,
    };
    // Which fields change, never their content (notes may hold anything).
    let differs = |new: &Option<Option<String>>, old: &Option<String>| {
        new.as_ref().is_some_and(|new| new != old)
    };
    let fields: Vec<&str> = [
        ("company", differs(&labels.company, &before.company)),
        ("site", differs(&labels.site, &before.site)),
        (
            "department",
            differs(&labels.department, &before.department),
        ),
        (
            "device_type",
            differs(&labels.device_type, &before.device_type),
        ),
        (
            "tags",
            labels.tags.as_ref().is_some_and(|t| *t != before.tags),
        ),
        ("notes", differs(&labels.notes, &before.notes)),
        (
            "update_channel",
            differs(&labels.update_channel, &before.update_channel),
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect();
    let audit = Audit::new("machine.labels_changed")
        .user(&admin.0.user)
        .ip(ip)
        .agent(&agent_id)
        .details(json!({ "fields": fields }));
    let machine = state
        .store
        .update_machine_labels(
            &agent_id,
            &labels,
            state.clock.now_millis(),
            Some(audit.event()),
        )
        .await?;
    Ok(Json(view(&state, machine).await))
}

/// Soft-removes one machine: its row is kept for the audit trail, its keys stop working
/// and a live session ends.
async fn remove_one(
    state: &AppState,
    admin: &AdminUser,
    ip: std::net::IpAddr,
    agent_id: &str,
) -> ApiResult<()> {
    if uuid::Uuid::parse_str(agent_id).is_err() {
        return Err(ApiError::Validation("agent_id must be a UUID".into()));
    }
    load(state, agent_id).await?;
    let now = state.clock.now_millis();
    let audit = Audit::new("machine.removed")
        .user(&admin.0.user)
        .ip(ip)
        .agent(agent_id);
    state
        .store
        .soft_delete_machine(agent_id, now, audit.event())
        .await?;
    crate::sessions::end_machine(state, agent_id, "machine removed").await;
    Ok(())
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn remove(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(agent_id): Path<String>,
) -> ApiResult<StatusCode> {
    remove_one(&state, &admin, ip, &agent_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Bulk removal request.
#[derive(Debug, Deserialize)]
pub struct BulkRemove {
    agent_ids: Vec<String>,
}

/// Per-id outcome of a bulk removal.
#[derive(Debug, Serialize)]
pub struct BulkOutcome {
    agent_id: String,
    removed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn bulk_remove(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<BulkRemove>,
) -> ApiResult<Json<serde_json::Value>> {
    if req.agent_ids.is_empty() || req.agent_ids.len() > BULK_REMOVE_MAX {
        return Err(ApiError::Validation(format!(
            "agent_ids must hold 1 to {BULK_REMOVE_MAX} ids"
        )));
    }
    let mut results = Vec::with_capacity(req.agent_ids.len());
    let mut seen = std::collections::HashSet::new();
    for agent_id in req.agent_ids {
        if !seen.insert(agent_id.clone()) {
            continue;
        }
        // Failures are isolated: one bad id never stops the others.
        let outcome = match remove_one(&state, &admin, ip, &agent_id).await {
            Ok(()) => BulkOutcome {
                agent_id,
                removed: true,
                error_code: None,
                detail: None,
            },
            Err(ApiError::Unavailable) => return Err(ApiError::Unavailable),
            Err(e) => BulkOutcome {
                agent_id,
                removed: false,
                error_code: Some(e.code()),
                detail: Some(match e {
                    ApiError::Internal(_) => "internal error".to_owned(),
                    other => other.to_string(),
                }),
            },
        };
        results.push(outcome);
    }
    let removed = results.iter().filter(|r| r.removed).count();
    Ok(Json(
        json!({ "removed": removed, "failed": results.len() - removed, "results": results }),
    ))
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn approve(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<MachineView>> {
    let machine = load(&state, &agent_id).await?;
    if machine.status != MachineStatus::Pending {
        return Err(ApiError::Conflict(
            "the machine is not pending approval".into(),
        ));
    }
    let audit = Audit::new("machine.approved")
        .user(&admin.0.user)
        .ip(ip)
        .agent(&agent_id)
        .details(json!({ "pending_reason": machine.pending_reason }));
    state
        .store
        .set_machine_pending(
            &agent_id,
            None,
            state.clock.now_millis(),
            Some(audit.event()),
        )
        .await?;
    Ok(Json(view(&state, load(&state, &agent_id).await?).await))
}
