//! Releases and agent updates (SPEC §4.15, §8):
//!
//! - `POST /api/releases` (admin): a [`SignedRelease`] made offline by
//!   `guruconnect-release sign`; refused unless its Ed25519 signature verifies against
//!   `release_public_key` (the private key never reaches the server).
//! - `PUT /api/releases/:version/artifacts/:platform` (admin): the file, streamed to the
//!   data directory and kept only when its size and SHA-256 match the signed manifest.
//! - `GET /api/releases` (admin), `PATCH /api/releases/:version` (rollout percentage),
//!   `DELETE /api/releases/:version` (admin).
//! - `GET /api/version?platform=&channel=&agent_id=&current=` (public): the newest release
//!   an agent should install, with the signed manifest for it to verify itself.
//! - `GET /api/releases/:version/artifacts/:platform` (public): the file, with HTTP Range
//!   (resumable downloads).
//! - `GET /api/changelog`, `GET /api/changelog/:version` (public): the notes of the stable
//!   releases, which `guruconnect-release sign --notes-from-git` fills from conventional
//!   commits.
//! - `POST /api/machines/:id/update` and `POST /api/machines/update` (admin): tell
//!   connected agents to check now; they report progress as `UpdateStatus` messages.
//!
//! Without `release_public_key` updates are disabled: publishing is refused and
//! `/api/version` says so, so an agent keeps its version.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use guruconnect_proto::{self as proto, Payload};
use guruconnect_release::{Channel, Manifest, SignedRelease, VerifyingKey, is_newer};
use guruconnect_store::{Release, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tower::ServiceExt as _;

use crate::AppState;
use crate::audit::Audit;
use crate::auth::AdminUser;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::middleware::ClientIp;

/// Why updates are off when no public key is configured.
pub const UPDATES_DISABLED: &str = "updates are disabled: this server has no release public \
     key (set release_public_key to the key `guruconnect-release keygen` printed)";

/// `/api/releases*`, `/api/version`, `/api/changelog*`, and the update pushes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/releases", get(list).post(publish))
        .route(
            "/api/releases/{version}",
            get(show).patch(set_rollout).delete(remove),
        )
        .route(
            "/api/releases/{version}/artifacts/{platform}",
            put(upload)
                .get(download)
                // Artifacts are far larger than API bodies; `upload` enforces its own cap.
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/version", get(version))
        .route("/api/changelog", get(changelog))
        .route("/api/changelog/{version}", get(changelog_entry))
        .route("/api/machines/update", post(push_many))
        .route("/api/sites/{id}/update-channel", put(set_site_channel))
        .route("/api/machines/{agent_id}/update", post(push_one))
}

/// The configured public key, or why updates are off.
fn public_key(state: &AppState) -> Result<VerifyingKey, &'static str> {
    match state.config.release_public_key.as_deref() {
        // `Config::validate` checked it parses.
        Some(text) => guruconnect_release::parse_public_key(text).map_err(|_| UPDATES_DISABLED),
        None => Err(UPDATES_DISABLED),
    }
}

/// Where a release's artifact for `platform` is stored.
fn artifact_path(state: &AppState, version: &str, platform: &str, file: &str) -> PathBuf {
    state
        .config
        .data_dir
        .join("releases")
        .join(version)
        .join(platform)
        .join(file)
}

/// The stored release, parsed (its signature was checked when it was published).
fn manifest_of(release: &Release) -> ApiResult<Manifest> {
    Manifest::parse(&release.manifest).map_err(|e| {
        ApiError::internal(anyhow::anyhow!(
            "stored manifest of {} is invalid: {e}",
            release.version
        ))
    })
}

async fn load(state: &AppState, version: &str) -> ApiResult<Release> {
    match state.store.get_release(version).await {
        Err(StoreError::NotFound) => Err(ApiError::NotFound("no such release")),
        other => Ok(other?),
    }
}

/// An artifact as the API shows it.
#[derive(Debug, Serialize)]
struct ArtifactView {
    platform: String,
    file: String,
    size: u64,
    sha256: String,
    min_version: Option<String>,
    /// Whether the file has been uploaded (agents are offered only uploaded ones).
    uploaded: bool,
    url: String,
}

/// A release as the API shows it.
#[derive(Debug, Serialize)]
struct ReleaseView {
    version: String,
    channel: String,
    notes: String,
    rollout_percent: i64,
    created_by: String,
    created_at: i64,
    artifacts: Vec<ArtifactView>,
}

fn view(state: &AppState, release: &Release) -> ApiResult<ReleaseView> {
    let manifest = manifest_of(release)?;
    Ok(ReleaseView {
        version: release.version.clone(),
        channel: release.channel.clone(),
        notes: release.notes.clone(),
        rollout_percent: release.rollout_percent,
        created_by: release.created_by.clone(),
        created_at: release.created_at,
        artifacts: manifest
            .artifacts
            .iter()
            .map(|a| ArtifactView {
                platform: a.platform.clone(),
                file: a.file.clone(),
                size: a.size,
                sha256: a.sha256.clone(),
                min_version: a.min_version.clone(),
                uploaded: artifact_path(state, &release.version, &a.platform, &a.file).is_file(),
                url: artifact_url(&release.version, &a.platform),
            })
            .collect(),
    })
}

/// Highest semantic version first (a prerelease below its final release).
fn sort_newest_version_first(releases: &mut [Release]) {
    releases.sort_by_cached_key(|r| {
        std::cmp::Reverse(guruconnect_release::Version::parse(&r.version).ok())
    });
}

fn artifact_url(version: &str, platform: &str) -> String {
    guruconnect_release::artifact_path(version, platform)
}

/// `GET /api/releases`: every release, newest version first, and whether updates are on.
async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
) -> ApiResult<Json<serde_json::Value>> {
    let mut releases = state.store.list_releases().await?;
    sort_newest_version_first(&mut releases);
    let items = releases
        .iter()
        .map(|r| view(&state, r))
        .collect::<ApiResult<Vec<_>>>()?;
    let key = public_key(&state);
    Ok(Json(json!({
        "items": items,
        "updates_enabled": key.is_ok(),
        "key_fingerprint": key.as_ref().ok().map(guruconnect_release::key_fingerprint),
        "reason": key.err(),
    })))
}

async fn show(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(version): Path<String>,
) -> ApiResult<Json<ReleaseView>> {
    Ok(Json(view(&state, &load(&state, &version).await?)?))
}

/// `POST /api/releases`: a signed release; the signature is checked against the
/// configured public key before anything is stored.
#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn publish(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    ApiJson(signed): ApiJson<SignedRelease>,
) -> ApiResult<(StatusCode, Json<ReleaseView>)> {
    let key = public_key(&state).map_err(ApiError::NotConfigured)?;
    let manifest = signed.verify(&key).map_err(|e| match e {
        guruconnect_release::ReleaseError::BadSignature => ApiError::Validation(format!(
            "{e} (fingerprint {})",
            guruconnect_release::key_fingerprint(&key)
        )),
        other => ApiError::Validation(other.to_string()),
    })?;
    let release = Release {
        version: manifest.version.clone(),
        channel: manifest.channel.as_str().to_owned(),
        manifest: signed.manifest,
        signature: signed.signature,
        notes: manifest.notes.clone(),
        rollout_percent: 100,
        created_by: admin.0.user.username.clone(),
        created_at: state.clock.now_millis(),
    };
    let audit = Audit::new("release.published")
        .user(&admin.0.user)
        .ip(ip)
        .details(json!({
            "version": release.version,
            "channel": release.channel,
            "platforms": manifest.artifacts.iter().map(|a| &a.platform).collect::<Vec<_>>(),
        }));
    match state.store.create_release(&release, audit.event()).await {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict(format!(
                "release {} exists; publish a new version",
                release.version
            )));
        }
        other => other?,
    }
    tracing::info!(version = %release.version, channel = %release.channel, "release published");
    Ok((StatusCode::CREATED, Json(view(&state, &release)?)))
}

/// Rollout change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutPatch {
    rollout_percent: i64,
}

async fn set_rollout(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(version): Path<String>,
    ApiJson(req): ApiJson<RolloutPatch>,
) -> ApiResult<Json<ReleaseView>> {
    if !(0..=100).contains(&req.rollout_percent) {
        return Err(ApiError::Validation(
            "rollout_percent must be 0 to 100".into(),
        ));
    }
    let audit = Audit::new("release.rollout_changed")
        .user(&admin.0.user)
        .ip(ip)
        .details(json!({ "version": version, "rollout_percent": req.rollout_percent }));
    let release = match state
        .store
        .set_release_rollout(
            &version,
            req.rollout_percent,
            audit.event(),
            state.clock.now_millis(),
        )
        .await
    {
        Err(StoreError::NotFound) => return Err(ApiError::NotFound("no such release")),
        other => other?,
    };
    Ok(Json(view(&state, &release)?))
}

async fn remove(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(version): Path<String>,
) -> ApiResult<StatusCode> {
    let audit = Audit::new("release.deleted")
        .user(&admin.0.user)
        .ip(ip)
        .details(json!({ "version": version }));
    match state
        .store
        .delete_release(&version, audit.event(), state.clock.now_millis())
        .await
    {
        Err(StoreError::NotFound) => return Err(ApiError::NotFound("no such release")),
        other => other?,
    }
    let dir = state.config.data_dir.join("releases").join(&version);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove the release's files");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT …/artifacts/:platform`: streams the body to a temporary file beside its place,
/// hashing as it goes; kept (renamed into place) only when size and SHA-256 match.
#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn upload(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path((version, platform)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Json<ReleaseView>> {
    let release = load(&state, &version).await?;
    let manifest = manifest_of(&release)?;
    let Some(artifact) = manifest.artifact(&platform) else {
        return Err(ApiError::NotFound(
            "the release has no artifact for this platform",
        ));
    };
    let cap = state.config.max_release_artifact_bytes;
    if artifact.size > cap {
        return Err(ApiError::Validation(format!(
            "the artifact is {} bytes; max_release_artifact_bytes is {cap}",
            artifact.size
        )));
    }
    let path = artifact_path(&state, &version, &platform, &artifact.file);
    let dir = path.parent().map(ToOwned::to_owned).unwrap_or_default();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("creating {}: {e}", dir.display())))?;
    let partial = dir.join(format!(".{}.upload", artifact.file));
    let result = receive(body, &partial, artifact.size).await;
    let refused = |why: String| {
        Audit::new("release.artifact_refused")
            .user(&admin.0.user)
            .ip(ip)
            .details(json!({ "version": version, "platform": platform, "reason": why }))
    };
    let (size, sha256) = match result {
        Ok(got) => got,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            if let ApiError::Validation(why) = &e {
                refused(why.clone()).record_quietly(&state).await;
            }
            return Err(e);
        }
    };
    if size != artifact.size || sha256 != artifact.sha256.to_ascii_lowercase() {
        let _ = tokio::fs::remove_file(&partial).await;
        let why = format!(
            "the file does not match the signed manifest: {size} bytes with SHA-256 {sha256}, \
             expected {} bytes with {}",
            artifact.size, artifact.sha256
        );
        refused(why.clone()).record_quietly(&state).await;
        return Err(ApiError::Validation(why));
    }
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("storing {}: {e}", path.display())))?;
    Audit::new("release.artifact_uploaded")
        .user(&admin.0.user)
        .ip(ip)
        .details(
            json!({ "version": version, "platform": platform, "size": size, "sha256": sha256 }),
        )
        .record(&state)
        .await?;
    Ok(Json(view(&state, &release)?))
}

/// Writes `body` to `path` (at most `expected + 1` bytes are taken, so an oversized body
/// is refused without filling the disk); returns its size and SHA-256.
async fn receive(body: Body, path: &std::path::Path, expected: u64) -> ApiResult<(u64, String)> {
    let io = |e: std::io::Error| match e.raw_os_error() {
        Some(28) => ApiError::StorageFull,
        _ => ApiError::internal(anyhow::anyhow!("writing the upload: {e}")),
    };
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::BadRequest("the upload was interrupted".into()))?;
        size += chunk.len() as u64;
        if size > expected {
            return Err(ApiError::Validation(format!(
                "the file is larger than the signed manifest's {expected} bytes"
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// `GET …/artifacts/:platform`: the stored file, with Range support.
async fn download(
    State(state): State<AppState>,
    Path((version, platform)): Path<(String, String)>,
    request: Request,
) -> ApiResult<Response> {
    let release = load(&state, &version).await?;
    let manifest = manifest_of(&release)?;
    let Some(artifact) = manifest.artifact(&platform) else {
        return Err(ApiError::NotFound(
            "the release has no artifact for this platform",
        ));
    };
    let path = artifact_path(&state, &version, &platform, &artifact.file);
    if !path.is_file() {
        return Err(ApiError::NotFound(
            "this artifact has not been uploaded yet",
        ));
    }
    let response = tower_http::services::ServeFile::new(&path)
        .oneshot(request)
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("serving {}: {e}", path.display())))?;
    Ok(response.map(Body::new).into_response())
}

/// `GET /api/version` query.
#[derive(Debug, Deserialize)]
struct VersionQuery {
    platform: Option<String>,
    channel: Option<String>,
    agent_id: Option<String>,
    current: Option<String>,
    /// A specific version (an administrator's push).
    version: Option<String>,
    /// With `version`: install it even when it is older (an administrator forced it).
    #[serde(default)]
    allow_downgrade: bool,
}

/// `GET /api/version`: the release an agent should install now, signed, or why none.
async fn version(
    State(state): State<AppState>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let none = |reason: &str| Ok(Json(json!({ "available": false, "reason": reason })));
    if public_key(&state).is_err() {
        return none(UPDATES_DISABLED);
    }
    let platform = q
        .platform
        .clone()
        .unwrap_or_else(guruconnect_release::current_platform);
    let channel = match effective_channel(&state, q.agent_id.as_deref(), q.channel.as_deref()).await
    {
        Ok(c) => c,
        Err(e) => return Err(e),
    };
    let current = q.current.as_deref().unwrap_or("0.0.0");
    let releases = state.store.list_releases().await?;
    let mut best: Option<(guruconnect_release::Version, &Release)> = None;
    for release in &releases {
        let manifest = manifest_of(release)?;
        let Some(artifact) = manifest.artifact(&platform) else {
            continue;
        };
        if !artifact_path(&state, &release.version, &platform, &artifact.file).is_file() {
            continue;
        }
        if let Some(wanted) = &q.version {
            if &release.version != wanted {
                continue;
            }
        } else {
            if !channel.accepts(manifest.channel) {
                continue;
            }
            if !in_rollout(release, q.agent_id.as_deref()) {
                continue;
            }
        }
        // An agent too old for this release needs an intermediate one first.
        if let Some(min) = &artifact.min_version
            && is_newer(min, current)
        {
            continue;
        }
        let v = manifest.semver();
        if best.as_ref().is_none_or(|(b, _)| v > *b) {
            best = Some((v, release));
        }
    }
    let Some((_, release)) = best else {
        return none(match &q.version {
            Some(_) => "no such release for this platform",
            None => "no release for this platform and channel",
        });
    };
    let downgrade_allowed = q.version.is_some() && q.allow_downgrade;
    if !downgrade_allowed && !is_newer(&release.version, current) {
        return Ok(Json(json!({
            "available": false,
            "reason": "up to date",
            "version": release.version,
        })));
    }
    Ok(Json(json!({
        "available": true,
        "version": release.version,
        "channel": release.channel,
        "release": { "manifest": release.manifest, "signature": release.signature },
        "artifact_url": artifact_url(&release.version, &platform),
    })))
}

/// The channel for an agent: the machine's, else its site's, else the asked one, else
/// stable.
async fn effective_channel(
    state: &AppState,
    agent_id: Option<&str>,
    asked: Option<&str>,
) -> ApiResult<Channel> {
    let parse = |s: &str| {
        s.parse::<Channel>()
            .map_err(|e| ApiError::Validation(e.to_string()))
    };
    if let Some(agent_id) = agent_id
        && let Ok(machine) = state.store.get_machine(agent_id).await
    {
        if let Some(c) = machine.update_channel.as_deref() {
            return parse(c);
        }
        if let Some(site_id) = machine.site_id.as_deref()
            && let Ok(Some(c)) = state.store.site_update_channel(site_id).await
        {
            return parse(&c);
        }
    }
    match asked {
        Some(c) => parse(c),
        None => Ok(Channel::Stable),
    }
}

/// Staged rollout: a stable release below 100 % reaches the agents whose id hashes (with
/// the version) under the percentage; an unknown agent waits for 100 %.
fn in_rollout(release: &Release, agent_id: Option<&str>) -> bool {
    if release.rollout_percent >= 100 {
        return true;
    }
    let Some(agent_id) = agent_id else {
        return false;
    };
    let digest = Sha256::digest(format!("{}:{agent_id}", release.version));
    let bucket = u16::from_be_bytes([digest[0], digest[1]]) % 100;
    i64::from(bucket) < release.rollout_percent
}

/// `GET /api/changelog`: the notes of every stable release, newest first.
async fn changelog(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let mut releases: Vec<Release> = state
        .store
        .list_releases()
        .await?
        .into_iter()
        .filter(|r| r.channel == "stable")
        .collect();
    sort_newest_version_first(&mut releases);
    let items: Vec<_> = releases.iter().map(changelog_item).collect();
    Ok(Json(json!({ "items": items })))
}

fn changelog_item(r: &Release) -> serde_json::Value {
    json!({ "version": r.version, "date": r.created_at, "notes": r.notes })
}

async fn changelog_entry(
    State(state): State<AppState>,
    Path(version): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let release = load(&state, &version).await?;
    if release.channel != "stable" {
        return Err(ApiError::NotFound("betas have no changelog entry"));
    }
    Ok(Json(changelog_item(&release)))
}

/// An update push.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    /// A specific version; none: the newest of the machine's channel.
    version: Option<String>,
    /// Install `version` even when it is older than the agent's.
    #[serde(default)]
    allow_downgrade: bool,
}

/// A bulk push: machines by id, or every machine of a site.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushManyRequest {
    #[serde(default)]
    agent_ids: Vec<String>,
    site_id: Option<String>,
    version: Option<String>,
    #[serde(default)]
    allow_downgrade: bool,
}

/// Tells one connected agent to update now; `Ok(false)` when it is not connected.
async fn push(
    state: &AppState,
    admin: &AdminUser,
    ip: std::net::IpAddr,
    agent_id: &str,
    req: &PushRequest,
) -> ApiResult<Option<String>> {
    if req.allow_downgrade && req.version.is_none() {
        return Err(ApiError::Validation(
            "allow_downgrade needs the version to install".into(),
        ));
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let command = Payload::UpdateCommand(proto::UpdateCommand {
        version: req.version.clone().unwrap_or_default(),
        allow_downgrade: req.allow_downgrade,
        request_id: request_id.clone(),
    });
    let sent = crate::sessions::send_to_machine(state, agent_id, command).await;
    if !sent {
        return Ok(None);
    }
    let status = json!({
        "state": "queued",
        "version": req.version,
        "request_id": request_id,
        "at": state.clock.now_millis(),
    });
    state
        .store
        .set_machine_update_status(agent_id, &status)
        .await?;
    Audit::new("update.pushed")
        .user(&admin.0.user)
        .ip(ip)
        .agent(agent_id)
        .details(json!({
            "version": req.version,
            "allow_downgrade": req.allow_downgrade,
            "request_id": request_id,
        }))
        .record(state)
        .await?;
    Ok(Some(request_id))
}

/// `POST /api/machines/:id/update`: 202 with the request id, 409 when offline.
#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn push_one(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(agent_id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let req: PushRequest = if body.is_empty() {
        PushRequest::default()
    } else {
        crate::error::parse_json_body(&body)?
    };
    match state.store.get_machine(&agent_id).await {
        Err(StoreError::NotFound) => return Err(ApiError::NotFound("no such machine")),
        other => {
            other?;
        }
    }
    public_key(&state).map_err(ApiError::NotConfigured)?;
    match push(&state, &admin, ip, &agent_id, &req).await? {
        Some(request_id) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "agent_id": agent_id, "state": "queued", "request_id": request_id })),
        )),
        None => Err(ApiError::Conflict(
            "the machine is offline; it checks for updates when it reconnects".into(),
        )),
    }
}

/// `POST /api/machines/update`: pushes to each listed machine (or a site's); answers per
/// machine `queued` or `offline`.
#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn push_many(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<PushManyRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    public_key(&state).map_err(ApiError::NotConfigured)?;
    let mut agent_ids = req.agent_ids.clone();
    if let Some(site_id) = &req.site_id {
        let of_site = state.store.machine_ids_of_site(site_id).await?;
        if of_site.is_empty() && agent_ids.is_empty() {
            return Err(ApiError::Validation("the site has no machines".into()));
        }
        agent_ids.extend(of_site);
    }
    if agent_ids.is_empty() {
        return Err(ApiError::Validation("give agent_ids or a site_id".into()));
    }
    if agent_ids.len() > 1000 {
        return Err(ApiError::Validation("at most 1000 machines at once".into()));
    }
    agent_ids.sort();
    agent_ids.dedup();
    let one = PushRequest {
        version: req.version.clone(),
        allow_downgrade: req.allow_downgrade,
    };
    let mut results = Vec::with_capacity(agent_ids.len());
    for agent_id in &agent_ids {
        let state_text = match push(&state, &admin, ip, agent_id, &one).await? {
            Some(_) => "queued",
            None => "offline",
        };
        results.push(json!({ "agent_id": agent_id, "state": state_text }));
    }
    Ok(Json(json!({ "items": results })))
}

/// A site's update channel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteChannel {
    /// `stable`, `beta`, or `null` (stable).
    channel: Option<String>,
}

/// `PUT /api/sites/:id/update-channel`: the channel of the site's machines that have none
/// of their own.
async fn set_site_channel(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(site_id): Path<String>,
    ApiJson(req): ApiJson<SiteChannel>,
) -> ApiResult<Json<serde_json::Value>> {
    let channel = match req.channel.as_deref() {
        Some(c) => Some(
            c.parse::<Channel>()
                .map_err(|e| ApiError::Validation(e.to_string()))?,
        ),
        None => None,
    };
    let audit = Audit::new("site.update_channel_changed")
        .user(&admin.0.user)
        .ip(ip)
        .details(json!({ "site_id": site_id, "channel": channel.map(Channel::as_str) }));
    match state
        .store
        .set_site_update_channel(
            &site_id,
            channel.map(Channel::as_str),
            audit.event(),
            state.clock.now_millis(),
        )
        .await
    {
        Err(StoreError::NotFound) => return Err(ApiError::NotFound("no such site")),
        other => other?,
    }
    Ok(Json(
        json!({ "site_id": site_id, "channel": channel.map(Channel::as_str) }),
    ))
}

/// Records an agent's `UpdateStatus` on its machine; terminal states are audited.
pub async fn record_status(state: &AppState, agent_id: &str, status: &proto::UpdateStatus) {
    use proto::UpdateState as S;
    let (name, terminal) = match S::try_from(status.state).unwrap_or(S::Unspecified) {
        S::Checking => ("checking", false),
        S::UpToDate => ("up_to_date", false),
        S::Downloading => ("downloading", false),
        S::Verifying => ("verifying", false),
        S::Restarting => ("restarting", false),
        S::Done => ("done", true),
        S::RolledBack => ("rolled_back", true),
        S::Failed => ("failed", true),
        S::Unspecified => {
            state.metrics.ignored_message("update_status");
            return;
        }
    };
    let clip = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    let value = json!({
        "state": name,
        "version": clip(&status.version, 64),
        "detail": clip(&status.detail, 500),
        "request_id": clip(&status.request_id, 64),
        "at": state.clock.now_millis(),
    });
    if let Err(e) = state
        .store
        .set_machine_update_status(agent_id, &value)
        .await
    {
        tracing::warn!(error = ?e, "could not store the update status");
    }
    if terminal {
        Audit::new(&format!("update.{name}"))
            .agent(agent_id)
            .details(value)
            .record_quietly(state)
            .await;
    }
}
