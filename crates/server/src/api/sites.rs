//! Sites and their enrollment keys (admin), and the per-site Linux installer.
//!
//! An enrollment key is `gce_` + 256 bits from the OS CSPRNG (base64url), stored only as an
//! Argon2id hash and shown once, at creation or rotation. Its public fingerprint is
//! `vN (XXXX)`: the key version and the first four hex digits of its SHA-256. Rotation bumps
//! the version: installers holding the old key can no longer enroll new machines, while
//! machines already enrolled keep their own per-agent keys and keep working.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
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
        .route("/api/sites/{id}/installer", get(installer))
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

async fn list(State(state): State<AppState>, _admin: AdminUser) -> ApiResult<Json<Vec<SiteView>>> {
    let sites = state.store.list_sites(DEFAULT_TENANT).await?;
    Ok(Json(sites.into_iter().map(SiteView::from).collect()))
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

async fn load(state: &AppState, id: &str) -> ApiResult<Site> {
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

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The server's public base URL: configured, or from the request's Host header.
fn public_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("127.0.0.1:3002");
    format!("http://{host}")
}

/// `GET /api/sites/:id/installer`: a POSIX shell script that installs the agent, writes
/// the site configuration and enables the systemd service. The enrollment key is not in
/// it (only its hash is stored): the script takes it as its argument or from
/// `GURUCONNECT_ENROLLMENT_KEY`.
async fn installer(
    State(state): State<AppState>,
    _admin: AdminUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let site = load(&state, &id).await?;
    let script = INSTALLER
        .replace("@SERVER@", &shell_quote(&public_url(&state, &headers)))
        .replace("@SITE_CODE@", &shell_quote(&site.code))
        .replace("@SITE_NAME@", &site.name.replace(['\n', '\r'], " "))
        .replace("@FINGERPRINT@", &site.key_fingerprint);
    let disposition = format!(
        "attachment; filename=\"guruconnect-install-{}.sh\"",
        site.code
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/x-shellscript; charset=utf-8".to_owned(),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        script,
    )
        .into_response())
}

const INSTALLER: &str = r##"#!/bin/sh
# GuruConnect agent installer for site "@SITE_NAME@" (enrollment key @FINGERPRINT@).
# Usage: sudo sh install.sh <enrollment-key>     (or GURUCONNECT_ENROLLMENT_KEY=… sudo -E sh install.sh)
# Options (environment): GURUCONNECT_PREFIX=/opt/guruconnect GURUCONNECT_ETC=/etc/guruconnect
#   GURUCONNECT_AGENT_BIN=./guruconnect-agent (use a local binary instead of downloading)
#   GURUCONNECT_ROOT=/ (install into another root, for testing; skips systemctl)
#   GURUCONNECT_COMPANY / _DEPARTMENT / _DEVICE_TYPE / _TAGS (comma-separated) labels
#   GURUCONNECT_DISPLAY=:0 GURUCONNECT_XAUTHORITY=/run/user/1000/gdm/Xauthority (the desktop)
set -eu
SERVER=@SERVER@
SITE_CODE=@SITE_CODE@
KEY="${1:-${GURUCONNECT_ENROLLMENT_KEY:-}}"
ROOT="${GURUCONNECT_ROOT:-}"
PREFIX="${GURUCONNECT_PREFIX:-/opt/guruconnect}"
ETC="${GURUCONNECT_ETC:-/etc/guruconnect}"

die() { echo "guruconnect-install: $*" >&2; exit 2; }
[ -n "$KEY" ] || die "the site enrollment key is required: sh install.sh <enrollment-key>"
case "$KEY" in gce_*) ;; *) die "that does not look like a GuruConnect enrollment key (gce_…)";; esac
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then die "run as root (sudo)"; fi

mkdir -p "$ROOT$PREFIX" "$ROOT$ETC"
chmod 0755 "$ROOT$PREFIX"
chmod 0700 "$ROOT$ETC"
BIN="$ROOT$PREFIX/guruconnect-agent"
if [ -n "${GURUCONNECT_AGENT_BIN:-}" ]; then
  cp "$GURUCONNECT_AGENT_BIN" "$BIN.new"
elif command -v curl >/dev/null 2>&1; then
  curl -fsSL "$SERVER/download/guruconnect-agent" -o "$BIN.new" || die "cannot download the agent from $SERVER"
elif command -v wget >/dev/null 2>&1; then
  wget -qO "$BIN.new" "$SERVER/download/guruconnect-agent" || die "cannot download the agent from $SERVER"
else
  die "need curl or wget, or GURUCONNECT_AGENT_BIN=/path/to/guruconnect-agent"
fi
chmod 0755 "$BIN.new"
mv "$BIN.new" "$BIN"

toml_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
umask 077
{
  echo "# GuruConnect agent site configuration (written by the site installer)."
  echo "server = $(toml_str "$SERVER")"
  echo "site_code = $(toml_str "$SITE_CODE")"
  echo "enrollment_key = $(toml_str "$KEY")"
  echo "key_file = $(toml_str "$ETC/agent.key")"
  echo "[labels]"
  [ -n "${GURUCONNECT_COMPANY:-}" ] && echo "company = $(toml_str "$GURUCONNECT_COMPANY")"
  [ -n "${GURUCONNECT_DEPARTMENT:-}" ] && echo "department = $(toml_str "$GURUCONNECT_DEPARTMENT")"
  [ -n "${GURUCONNECT_DEVICE_TYPE:-}" ] && echo "device_type = $(toml_str "$GURUCONNECT_DEVICE_TYPE")"
  if [ -n "${GURUCONNECT_TAGS:-}" ]; then
    printf 'tags = ['
    first=1
    OLDIFS=$IFS; IFS=','
    for t in $GURUCONNECT_TAGS; do
      [ $first = 1 ] || printf ', '
      first=0
      printf '%s' "$(toml_str "$t")"
    done
    IFS=$OLDIFS
    echo ']'
  fi
  true
} > "$ROOT$ETC/agent.toml"
chmod 0600 "$ROOT$ETC/agent.toml"

# The X display the service captures, and its authority file when the X server needs one.
set --
if [ -n "${GURUCONNECT_DISPLAY:-}" ]; then set -- "$@" --display "$GURUCONNECT_DISPLAY"; fi
if [ -n "${GURUCONNECT_XAUTHORITY:-}" ]; then set -- "$@" --xauthority "$GURUCONNECT_XAUTHORITY"; fi
if [ -n "$ROOT" ]; then
  "$BIN" install --root "$ROOT" --config "$ETC/agent.toml" --bin "$PREFIX/guruconnect-agent" "$@"
else
  "$BIN" install --config "$ETC/agent.toml" --bin "$PREFIX/guruconnect-agent" "$@"
fi
echo "GuruConnect agent installed for site $SITE_CODE; it enrolls on its first start."
"##;

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
