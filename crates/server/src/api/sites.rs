//! Sites and their enrollment keys (admin). The per-site installers are in `installers`.
//!
//! An enrollment key is `gce_` + 256 bits from the OS CSPRNG (base64url), stored only as an
//! Argon2id hash and shown once, at creation or rotation. Its public fingerprint is
//! `vN (XXXX)`: the key version and the first four hex digits of its SHA-256. Rotation bumps
//! the version: installers holding the old key can no longer enroll new machines, while
//! machines already enrolled keep their own per-agent keys and keep working.

use axum::extract::{Path, State};
use axum::http::StatusCode;

use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use guruconnect_store::{DEFAULT_TENANT, Site, StoreError};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::audit::Audit;
use crate::auth::{AdminUser, password};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::middleware::ClientIp;
use crate::secrets::{random_bytes, sha256_hex};

/// Prefix of enrollment keys.
pub const ENROLLMENT_KEY_PREFIX: &str = "gce_";

/// `/api/sites*`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/sites", get(list).post(create))
        .route("/api/sites/{id}/rotate-key", post(rotate))
}

/// A site as the API shows it (never the key hash).
#[derive(Debug, Serialize)]
pub struct SiteView {
    id: String,
    name: String,
    code: String,
    key_version: i64,
    key_fingerprint: String,
    created_at: i64,
    rotated_at: Option<i64>,
}

impl From<Site> for SiteView {
    fn from(s: Site) -> Self {
        Self {
            id: s.id,
            name: s.name,
            code: s.code,
            key_version: s.key_version,
            key_fingerprint: s.key_fingerprint,
            created_at: s.created_at,
            rotated_at: s.rotated_at,
        }
    }
}

/// The one response that carries an enrollment key in plaintext.
#[derive(Debug, Serialize)]
pub struct SiteWithKey {
    #[serde(flatten)]
    site: SiteView,
    /// Shown once.
    enrollment_key: String,
}

/// `vN (XXXX)`.
pub fn fingerprint(version: i64, key: &str) -> String {
    format!(
        "v{version} ({})",
        sha256_hex(key.as_bytes())[..4].to_uppercase()
    )
}

fn mint_enrollment_key() -> String {
    let bytes = random_bytes::<32>();
    format!(
        "{ENROLLMENT_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Create-site request.
#[derive(Debug, Deserialize)]
pub struct CreateSite {
    name: String,
    /// Short public code used by installers; derived from the name when absent.
    code: Option<String>,
}

fn derive_code(name: &str) -> String {
    let mut code: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '-'
            }
        })
        .collect();
    while code.contains("--") {
        code = code.replace("--", "-");
    }
    code.trim_matches('-').chars().take(32).collect()
}

fn validate_code(code: &str) -> ApiResult<()> {
    let ok = (2..=32).contains(&code.len())
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::Validation(
            "site code must be 2-32 letters, digits, '-' or '_'".into(),
        ))
    }
}

/// A site in the list, with its update channel, which the console's Sites page shows and
/// edits (`null`: not set; a machine without its own channel then follows its agent's, else
/// stable).
#[derive(Debug, Serialize)]
struct SiteListItem {
    #[serde(flatten)]
    site: SiteView,
    update_channel: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
) -> ApiResult<Json<Vec<SiteListItem>>> {
    let sites = state.store.list_sites(DEFAULT_TENANT).await?;
    let mut channels = state.store.site_update_channels(DEFAULT_TENANT).await?;
    let items = sites
        .into_iter()
        .map(|site| SiteListItem {
            update_channel: channels.remove(&site.id),
            site: SiteView::from(site),
        })
        .collect();
    Ok(Json(items))
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn create(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<CreateSite>,
) -> ApiResult<(StatusCode, Json<SiteWithKey>)> {
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::Validation(
            "site name must be 1-100 characters".into(),
        ));
    }
    let code = req
        .code
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|| derive_code(&name));
    validate_code(&code)?;
    let key = mint_enrollment_key();
    let key_hash = password::hash(SecretString::from(key.clone())).await?;
    let now = state.clock.now_millis();
    let site = Site {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: DEFAULT_TENANT.to_owned(),
        name,
        code,
        key_hash,
        key_version: 1,
        key_fingerprint: fingerprint(1, &key),
        created_at: now,
        rotated_at: None,
    };
    let audit = Audit::new("site.created")
        .user(&admin.0.user)
        .ip(ip)
        .details(
            json!({ "site_id": site.id, "code": site.code, "fingerprint": site.key_fingerprint }),
        );
    let site = match state.store.create_site(&site, audit.event()).await {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict(
                "a site with that code already exists".into(),
            ));
        }
        other => other?,
    };
    Ok((
        StatusCode::CREATED,
        Json(SiteWithKey {
            site: site.into(),
            enrollment_key: key,
        }),
    ))
}

pub(crate) async fn load(state: &AppState, id: &str) -> ApiResult<Site> {
    match state.store.get_site(id).await {
        Ok(site) if site.tenant_id == DEFAULT_TENANT => Ok(site),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::NotFound("no such site")),
        Err(e) => Err(e.into()),
    }
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user.id))]
async fn rotate(
    State(state): State<AppState>,
    admin: AdminUser,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult<Json<SiteWithKey>> {
    let site = load(&state, &id).await?;
    let key = mint_enrollment_key();
    let key_hash = password::hash(SecretString::from(key.clone())).await?;
    let version = site.key_version + 1;
    let new_fingerprint = fingerprint(version, &key);
    let audit = Audit::new("site.key_rotated")
        .user(&admin.0.user)
        .ip(ip)
        .details(json!({
            "site_id": id,
            "old_fingerprint": site.key_fingerprint,
            "new_fingerprint": new_fingerprint,
        }));
    let rotated = match state
        .store
        .rotate_site_key(
            &id,
            &key_hash,
            version,
            &new_fingerprint,
            state.clock.now_millis(),
            audit.event(),
        )
        .await
    {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict(
                "the key was rotated concurrently; try again".into(),
            ));
        }
        other => other?,
    };
    Ok(Json(SiteWithKey {
        site: rotated.into(),
        enrollment_key: key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_have_the_documented_shape() {
        let fp = fingerprint(3, "gce_example");
        assert!(fp.starts_with("v3 ("), "{fp}");
        assert_eq!(fp.len(), "v3 (ABCD)".len());
    }

    #[test]
    fn enrollment_keys_carry_256_bits() {
        let key = mint_enrollment_key();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key.trim_start_matches(ENROLLMENT_KEY_PREFIX))
            .expect("base64url");
        assert_eq!(raw.len(), 32);
        assert_ne!(key, mint_enrollment_key());
    }

    #[test]
    fn site_codes_derive_from_names() {
        assert_eq!(derive_code("New York — 5th Ave"), "NEW-YORK-5TH-AVE");
        assert!(validate_code(&derive_code("x")).is_err());
    }
}
