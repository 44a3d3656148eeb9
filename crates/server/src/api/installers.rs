//! Per-site installers (admin): `GET /api/sites/:id/installer?platform=linux|windows`.
//!
//! - Linux: a POSIX shell script that downloads the agent from `/download/guruconnect-agent`
//!   (`agent_binary_path`), writes the site configuration and enables the systemd service.
//! - Windows: the MSI configured as `agent_windows_msi_path` (built by
//!   `scripts/windows/build-msi.sh`) with `SERVER_URL`, `SITE_CODE` and the labels set in
//!   its Property table, re-signed when `installer_signing_pkcs12` is configured.
//!
//! Both carry the server URL, the site code and the labels chosen in the console's installer
//! builder, never the enrollment key (only its hash is stored): the script takes it as its
//! argument, the MSI as `ENROLLMENT_KEY=…` on msiexec's command line.
//! `GET /api/installers` says which artifacts this server can serve and, when one is
//! missing, what to configure.

use std::path::Path as FsPath;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::api::sites::load;
use crate::auth::AdminUser;
use crate::error::{ApiError, ApiResult};

/// `/api/installers` and `/api/sites/{id}/installer`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/installers", get(availability))
        .route("/api/sites/{id}/installer", get(installer))
}

/// What to configure when the server has no Linux agent to serve.
pub const LINUX_MISSING: &str = "this server has no Linux agent binary to serve: build it \
     (cargo build --release -p guruconnect-agent) and set agent_binary_path \
     (GURUCONNECT_AGENT_BINARY_PATH) to its path; until then the script needs \
     GURUCONNECT_AGENT_BIN=/path/to/guruconnect-agent";
/// What to configure when the server has no Windows MSI to serve.
pub const WINDOWS_MISSING: &str = "this server has no Windows agent MSI: build it \
     (scripts/windows/build-agent.sh --release && scripts/windows/build-msi.sh --release) \
     and set agent_windows_msi_path (GURUCONNECT_AGENT_WINDOWS_MSI_PATH) to its path";

/// One platform's installer as the console shows it.
#[derive(Debug, Serialize)]
struct Availability {
    /// The installer can be downloaded.
    available: bool,
    /// The artifact the installer carries or downloads is served by this server.
    agent_served: bool,
    /// What an administrator must configure, when something is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'static str>,
    /// The downloaded installer is Authenticode-signed (Windows).
    #[serde(skip_serializing_if = "Option::is_none")]
    signed: Option<bool>,
}

/// `GET /api/installers`.
async fn availability(State(state): State<AppState>, _admin: AdminUser) -> Json<serde_json::Value> {
    let linux_served = is_file(state.config.agent_binary_path.as_deref());
    let msi = is_file(state.config.agent_windows_msi_path.as_deref());
    let signing = state.config.installer_signing_pkcs12.is_some();
    let windows_hint = if !msi {
        Some(WINDOWS_MISSING)
    } else if state.config.require_signed_installers && !signing {
        Some(SIGNING_MISSING)
    } else {
        None
    };
    Json(serde_json::json!({
        "linux": Availability {
            available: true,
            agent_served: linux_served,
            hint: (!linux_served).then_some(LINUX_MISSING),
            signed: None,
        },
        "windows": Availability {
            available: windows_hint.is_none(),
            agent_served: msi,
            hint: windows_hint,
            signed: Some(signing),
        },
    }))
}

/// Whether a configured artifact path names a file.
pub(crate) fn is_file(path: Option<&FsPath>) -> bool {
    path.is_some_and(|p| p.is_file())
}

/// Installer query: the platform and the labels built in.
#[derive(Debug, Default, Deserialize)]
pub struct InstallerQuery {
    /// `linux` (default) or `windows`.
    platform: Option<String>,
    company: Option<String>,
    department: Option<String>,
    device_type: Option<String>,
    /// Comma-separated.
    tags: Option<String>,
}

/// Labels checked for what an installer can carry.
#[derive(Debug, Default, PartialEq)]
struct BuiltInLabels {
    company: String,
    department: String,
    device_type: String,
    tags: Vec<String>,
}

const MAX_LABEL: usize = 128;

impl BuiltInLabels {
    fn from_query(q: &InstallerQuery) -> ApiResult<Self> {
        fn one(name: &str, value: &Option<String>) -> ApiResult<String> {
            let v = value.as_deref().unwrap_or("").trim();
            if v.chars().count() > MAX_LABEL {
                return Err(ApiError::Validation(format!(
                    "{name} is longer than {MAX_LABEL} characters"
                )));
            }
            if v.chars().any(char::is_control) {
                return Err(ApiError::Validation(format!(
                    "{name} contains a control character"
                )));
            }
            // MSI formatted strings treat [ and ] as property references.
            if v.contains(['[', ']', '"']) {
                return Err(ApiError::Validation(format!(
                    "{name} may not contain [, ] or \""
                )));
            }
            Ok(v.to_owned())
        }
        let tags_text = one("tags", &q.tags)?;
        let tags: Vec<String> = tags_text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Self {
            company: one("company", &q.company)?,
            department: one("department", &q.department)?,
            device_type: one("device_type", &q.device_type)?,
            tags,
        })
    }
}

/// `GET /api/sites/:id/installer?platform=linux|windows&company=…&department=…&device_type=…&tags=a,b`.
async fn installer(
    State(state): State<AppState>,
    _admin: AdminUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<InstallerQuery>,
) -> ApiResult<Response> {
    let platform = query.platform.as_deref().unwrap_or("linux");
    if !matches!(platform, "linux" | "windows") {
        return Err(ApiError::Validation(format!(
            "platform must be linux or windows, not {platform:?}"
        )));
    }
    let labels = BuiltInLabels::from_query(&query)?;
    let site = load(&state, &id).await?;
    let server = public_url(&state, &headers);
    if platform == "windows" {
        return windows_msi(&state, &server, &site.code, &labels).await;
    }
    let script = INSTALLER
        .replace("@SERVER@", &shell_quote(&server))
        .replace("@SITE_CODE@", &shell_quote(&site.code))
        .replace("@SITE_NAME@", &site.name.replace(['\n', '\r'], " "))
        .replace("@FINGERPRINT@", &site.key_fingerprint)
        .replace("@COMPANY@", &shell_quote(&labels.company))
        .replace("@DEPARTMENT@", &shell_quote(&labels.department))
        .replace("@DEVICE_TYPE@", &shell_quote(&labels.device_type))
        .replace("@TAGS@", &shell_quote(&labels.tags.join(",")))
        // Pinned at install: the agent verifies every update with it (SPEC §4.15).
        .replace(
            "@RELEASE_KEY@",
            &shell_quote(state.config.release_public_key.as_deref().unwrap_or("")),
        )
        .replace(
            "@AGENT_SERVED@",
            if is_file(state.config.agent_binary_path.as_deref()) {
                "yes"
            } else {
                "no"
            },
        );
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

/// What to configure when signed installers are required and no certificate is set.
pub const SIGNING_MISSING: &str = "require_signed_installers is set but no \
     installer_signing_pkcs12 is configured: per-site MSIs are not served unsigned";

async fn windows_msi(
    state: &AppState,
    server: &str,
    site_code: &str,
    labels: &BuiltInLabels,
) -> ApiResult<Response> {
    let Some(template) = state.config.agent_windows_msi_path.clone() else {
        return Err(ApiError::NotConfigured(WINDOWS_MISSING));
    };
    if state.config.require_signed_installers && state.config.installer_signing_pkcs12.is_none() {
        return Err(ApiError::NotConfigured(SIGNING_MISSING));
    }
    if !tokio::fs::metadata(&template)
        .await
        .is_ok_and(|m| m.is_file())
    {
        tracing::warn!(path = %template.display(), "agent_windows_msi_path is not a file");
        return Err(ApiError::NotConfigured(WINDOWS_MISSING));
    }
    let tags = labels.tags.join(",");
    let properties = [
        ("SERVER_URL", server),
        ("SITE_CODE", site_code),
        ("COMPANY", labels.company.as_str()),
        ("DEPARTMENT", labels.department.as_str()),
        ("DEVICE_TYPE", labels.device_type.as_str()),
        ("TAGS", tags.as_str()),
        // Pinned at install: the agent verifies every update with it (SPEC §4.15).
        (
            "RELEASE_PUBLIC_KEY",
            state.config.release_public_key.as_deref().unwrap_or(""),
        ),
    ];
    let signing = state.config.installer_signing_pkcs12.as_deref().map(|p12| {
        let password = state
            .config
            .installer_signing_password
            .as_ref()
            .map(|p| p.expose_secret().to_owned())
            .unwrap_or_default();
        (p12.to_path_buf(), password)
    });
    let msi = per_site_msi(&template, &properties, signing)
        .await
        .map_err(|e| match e {
            MsiError::ToolMissing(hint) => ApiError::NotConfigured(hint),
            MsiError::Failed(e) => ApiError::internal(e.context("making the per-site MSI")),
        })?;
    let disposition = format!("attachment; filename=\"guruconnect-{site_code}.msi\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-msi".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        msi,
    )
        .into_response())
}

/// What the server runs to make a per-site MSI (Debian: `msitools`, `osslsigncode`).
pub const MSITOOLS_MISSING: &str = "making per-site MSIs needs msitools on the server \
     (msiinfo, msibuild: apt-get install msitools)";
/// What the server runs to sign a per-site MSI.
pub const OSSLSIGNCODE_MISSING: &str = "signing per-site MSIs needs osslsigncode on the server \
     (apt-get install osslsigncode)";

/// Why a per-site MSI could not be made.
#[derive(Debug)]
pub enum MsiError {
    /// A tool is not installed; the text says which.
    ToolMissing(&'static str),
    /// A tool failed.
    Failed(anyhow::Error),
}

impl From<std::io::Error> for MsiError {
    fn from(e: std::io::Error) -> Self {
        MsiError::Failed(e.into())
    }
}

/// Runs a tool, mapping "not installed" to `missing` and a failure to its stderr.
async fn run_tool(
    cmd: &mut tokio::process::Command,
    missing: &'static str,
) -> Result<Vec<u8>, MsiError> {
    let out = match cmd.output().await {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MsiError::ToolMissing(missing));
        }
        Err(e) => return Err(e.into()),
    };
    if !out.status.success() {
        return Err(MsiError::Failed(anyhow::anyhow!(
            "{:?} failed: {}",
            cmd.as_std().get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Sets (or, for an empty value, removes) rows of a Property table exported by `msiinfo`
/// (the IDT format: three header lines, then `name<TAB>value` rows).
pub fn set_idt_properties(idt: &str, properties: &[(&str, &str)]) -> String {
    let mut lines: Vec<String> = idt.lines().map(str::to_owned).collect();
    let header = lines.len().min(3);
    let mut rows: Vec<String> = lines.split_off(header);
    rows.retain(|row| {
        let name = row.split('\t').next().unwrap_or_default();
        !properties.iter().any(|(p, _)| *p == name)
    });
    rows.extend(
        properties
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(p, v)| format!("{p}\t{v}")),
    );
    lines.extend(rows);
    let mut text = lines.join("\r\n");
    text.push_str("\r\n");
    text
}

/// Copies `template`, sets `properties` in its Property table (libmsi, through msitools),
/// and signs it when a certificate is given; a signature the template had is dropped
/// first, since the change invalidates it.
pub async fn per_site_msi(
    template: &FsPath,
    properties: &[(&str, &str)],
    signing: Option<(std::path::PathBuf, String)>,
) -> Result<Vec<u8>, MsiError> {
    use tokio::process::Command;
    let dir = tempfile::tempdir()?;
    let msi = dir.path().join("site.msi");
    let stripped = Command::new("osslsigncode")
        .arg("remove-signature")
        .arg("-in")
        .arg(template)
        .arg("-out")
        .arg(&msi)
        .output()
        .await;
    if !matches!(stripped, Ok(ref out) if out.status.success()) {
        // Unsigned (or no osslsigncode): the template as it is.
        tokio::fs::copy(template, &msi).await?;
    }
    let idt = run_tool(
        Command::new("msiinfo")
            .arg("export")
            .arg(&msi)
            .arg("Property"),
        MSITOOLS_MISSING,
    )
    .await?;
    let idt = String::from_utf8_lossy(&idt);
    let table = dir.path().join("Property.idt");
    tokio::fs::write(&table, set_idt_properties(&idt, properties)).await?;
    run_tool(
        Command::new("msibuild").arg(&msi).arg("-i").arg(&table),
        MSITOOLS_MISSING,
    )
    .await?;
    let Some((pkcs12, password)) = signing else {
        return Ok(tokio::fs::read(&msi).await?);
    };
    let signed = dir.path().join("signed.msi");
    let pass_file = dir.path().join("pass");
    tokio::fs::write(&pass_file, password).await?;
    run_tool(
        Command::new("osslsigncode")
            .arg("sign")
            .arg("-pkcs12")
            .arg(&pkcs12)
            .arg("-readpass")
            .arg(&pass_file)
            .args(["-h", "sha256", "-n", "GuruConnect Agent", "-in"])
            .arg(&msi)
            .arg("-out")
            .arg(&signed),
        OSSLSIGNCODE_MISSING,
    )
    .await?;
    Ok(tokio::fs::read(&signed).await?)
}

/// `s` as one single-quoted POSIX shell word.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The server's public base URL: configured, or from the request's Host header.
pub(crate) fn public_url(state: &AppState, headers: &HeaderMap) -> String {
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
# The public key agent updates must be signed with (empty: this server publishes none).
RELEASE_KEY=@RELEASE_KEY@
# Labels built in by the console's installer builder; the environment overrides them.
BUILTIN_COMPANY=@COMPANY@
BUILTIN_DEPARTMENT=@DEPARTMENT@
BUILTIN_DEVICE_TYPE=@DEVICE_TYPE@
BUILTIN_TAGS=@TAGS@
COMPANY="${GURUCONNECT_COMPANY-$BUILTIN_COMPANY}"
DEPARTMENT="${GURUCONNECT_DEPARTMENT-$BUILTIN_DEPARTMENT}"
DEVICE_TYPE="${GURUCONNECT_DEVICE_TYPE-$BUILTIN_DEVICE_TYPE}"
TAGS="${GURUCONNECT_TAGS-$BUILTIN_TAGS}"
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
elif [ "@AGENT_SERVED@" != yes ]; then
  die "this server has no Linux agent to download (its administrator sets agent_binary_path); \
give a local binary: GURUCONNECT_AGENT_BIN=/path/to/guruconnect-agent sh install.sh <enrollment-key>"
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
  [ -n "$RELEASE_KEY" ] && echo "release_public_key = $(toml_str "$RELEASE_KEY")"
  echo "[labels]"
  [ -n "$COMPANY" ] && echo "company = $(toml_str "$COMPANY")"
  [ -n "$DEPARTMENT" ] && echo "department = $(toml_str "$DEPARTMENT")"
  [ -n "$DEVICE_TYPE" ] && echo "device_type = $(toml_str "$DEVICE_TYPE")"
  if [ -n "$TAGS" ]; then
    printf 'tags = ['
    first=1
    OLDIFS=$IFS; IFS=','
    for t in $TAGS; do
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
    fn idt_rows_are_replaced_added_and_removed() {
        let idt = "Property\tValue\r\ns72\tl0\r\nProperty\tProperty\r\n\
                   ProductName\tGuruConnect Agent\r\nSITE_CODE\tOLD\r\nTAGS\tx\r\n";
        let out = set_idt_properties(
            idt,
            &[
                ("SITE_CODE", "HQ"),
                ("TAGS", ""),
                ("COMPANY", "Acme & Sons"),
            ],
        );
        let rows: Vec<&str> = out.lines().collect();
        assert_eq!(
            &rows[..3],
            &["Property\tValue", "s72\tl0", "Property\tProperty"]
        );
        assert!(rows.contains(&"ProductName\tGuruConnect Agent"));
        assert!(rows.contains(&"SITE_CODE\tHQ"));
        assert!(rows.contains(&"COMPANY\tAcme & Sons"));
        assert!(!out.contains("OLD") && !out.contains("TAGS"), "{out}");
    }
}
