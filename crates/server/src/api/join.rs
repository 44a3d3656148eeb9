//! The customer's side of a support code (public, no sign-in):
//!
//! - `GET /api/join/:code`: who is asking (the technician's display name, the code's note,
//!   the expiry) and which downloads this server offers; nothing else about the code.
//! - `GET /join/:code/guruconnect-support.sh`: a POSIX shell script with this server's URL
//!   and the code built in that downloads the agent and starts the support session.
//! - `GET /join/:code/windows`: the Windows agent (`agent_windows_exe_path`), unchanged
//!   and so still signed, under a file name that carries the server and the code
//!   ([`guruconnect_proto::support_file`]): double-clicked, it starts the session.
//! - `POST /api/join/:code/name`: the customer's name, shown to technicians in Live
//!   sessions.
//!
//! All preview the code without consuming it, under the same rate limit and per-address
//! lockout as `/api/codes/validate` ([`crate::api::codes::preview_code`]). The page itself
//! (`/join`, `/join/:code`) is the console's, served by [`crate::console`].

use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use guruconnect_proto::support_file;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::api::codes::{preview_code, redact_code};
use crate::api::installers::{LINUX_MISSING, is_file, public_url, shell_quote};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::middleware::ClientIp;

/// File name of the Linux support script.
pub const LINUX_SCRIPT: &str = "guruconnect-support.sh";

/// Why a Windows customer cannot download the agent: the server has none to serve.
pub const WINDOWS_MISSING: &str = "this server has no Windows agent to offer: its \
     administrator builds it (scripts/windows/build-agent.sh) and sets \
     agent_windows_exe_path (GURUCONNECT_AGENT_WINDOWS_EXE_PATH)";

/// Longest customer name, in characters.
const MAX_CUSTOMER_NAME: usize = 100;

/// `/api/join/{code}`, its `name`, and the downloads under `/join/{code}/`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/join/{code}", get(preview))
        .route("/api/join/{code}/name", post(set_name))
        .route(&format!("/join/{{code}}/{LINUX_SCRIPT}"), get(linux_script))
        .route("/join/{code}/windows", get(windows_agent))
}

/// A download as the join page offers it.
#[derive(Debug, Serialize)]
struct Download {
    available: bool,
    /// Path of the download on this server, when available.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// What is missing, when not available.
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'static str>,
}

/// The downloads per platform.
#[derive(Debug, Serialize)]
struct Downloads {
    linux: Download,
    windows: Download,
}

/// What the customer sees about a code.
#[derive(Debug, Serialize)]
struct JoinView {
    /// The technician's display name.
    technician: String,
    note: Option<String>,
    /// The name the customer already gave, if any.
    customer_name: Option<String>,
    expires_at: i64,
    downloads: Downloads,
}

/// `GET /api/join/:code`.
#[tracing::instrument(skip_all)]
async fn preview(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> ApiResult<Json<JoinView>> {
    let c = preview_code(&state, ip, &code).await?;
    let windows = match windows_file_name(&state, &headers, &c.code) {
        Ok(_) => Download {
            available: true,
            url: Some(format!("/join/{}/windows", c.code)),
            hint: None,
        },
        Err(hint) => Download {
            available: false,
            url: None,
            hint: Some(hint),
        },
    };
    let linux = if is_file(state.config.agent_binary_path.as_deref()) {
        Download {
            available: true,
            url: Some(format!("/join/{}/{LINUX_SCRIPT}", c.code)),
            hint: None,
        }
    } else {
        Download {
            available: false,
            url: None,
            hint: Some(LINUX_MISSING),
        }
    };
    Ok(Json(JoinView {
        technician: c.created_by_name,
        note: c.note,
        customer_name: c.customer_name,
        expires_at: c.expires_at,
        downloads: Downloads { linux, windows },
    }))
}

/// The Windows download's file name, or why there is none.
fn windows_file_name(
    state: &AppState,
    headers: &HeaderMap,
    code: &str,
) -> Result<String, &'static str> {
    if !is_file(state.config.agent_windows_exe_path.as_deref()) {
        return Err(WINDOWS_MISSING);
    }
    support_file::file_name(&public_url(state, headers), code).map_err(|e| e.0)
}

/// `GET /join/:code/windows`.
#[tracing::instrument(skip_all)]
async fn windows_agent(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> ApiResult<Response> {
    let c = preview_code(&state, ip, &code).await?;
    let name = windows_file_name(&state, &headers, &c.code).map_err(ApiError::NotFound)?;
    let path = state
        .config
        .agent_windows_exe_path
        .clone()
        .ok_or(ApiError::NotFound(WINDOWS_MISSING))?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        ApiError::internal(anyhow::anyhow!(
            "reading agent_windows_exe_path {}: {e}",
            path.display()
        ))
    })?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.microsoft.portable-executable".to_owned(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        bytes,
    )
        .into_response())
}

/// The customer's name from the join page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerName {
    name: String,
}

/// `POST /api/join/:code/name`: 204, or the error envelope.
#[tracing::instrument(skip_all)]
async fn set_name(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(code): Path<String>,
    ApiJson(req): ApiJson<CustomerName>,
) -> ApiResult<axum::http::StatusCode> {
    let c = preview_code(&state, ip, &code).await?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > MAX_CUSTOMER_NAME {
        return Err(ApiError::Validation(format!(
            "name must be 1 to {MAX_CUSTOMER_NAME} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::Validation(
            "name must not contain control characters".into(),
        ));
    }
    // The code may have been used or expired since the preview: same answer as preview.
    if !state
        .store
        .set_code_customer_name(&c.code, name, state.clock.now_millis())
        .await?
    {
        return Err(ApiError::NotFound("invalid or expired code"));
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// `GET /join/:code/guruconnect-support.sh`.
#[tracing::instrument(skip_all)]
async fn linux_script(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> ApiResult<Response> {
    let c = preview_code(&state, ip, &code).await?;
    let server = public_url(&state, &headers);
    let served = is_file(state.config.agent_binary_path.as_deref());
    let script = SCRIPT
        .replace("@SERVER@", &shell_quote(&server))
        .replace("@CODE@", &shell_quote(&c.code))
        .replace("@CODE_TAIL@", &redact_code(&c.code))
        .replace(
            "@TECHNICIAN@",
            &c.created_by_name.replace(|ch: char| ch.is_control(), " "),
        )
        .replace("@AGENT_SERVED@", if served { "yes" } else { "no" });
    Ok((
        [
            (header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"guruconnect-support.sh\"",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        script,
    )
        .into_response())
}

/// The support script. It runs as the signed-in desktop user (no root): the agent is
/// downloaded into a private temporary directory, run in the foreground and removed after.
const SCRIPT: &str = r##"#!/bin/sh
# GuruConnect remote support with @TECHNICIAN@ (code @CODE_TAIL@).
# Run it on the computer to be supported, as the signed-in user: sh guruconnect-support.sh
# You are asked on screen before anyone can see it. Close the agent (Ctrl+C) to end.
# Options (environment): GURUCONNECT_AGENT_BIN=/path/to/guruconnect-agent (no download)
set -eu
SERVER=@SERVER@
CODE=@CODE@

die() { echo "guruconnect-support: $*" >&2; exit 2; }
DIR=$(mktemp -d "${TMPDIR:-/tmp}/guruconnect.XXXXXX") || die "cannot create a temporary directory"
trap 'rm -rf "$DIR"' EXIT
trap 'exit 130' INT TERM HUP
BIN="$DIR/guruconnect-agent"
if [ -n "${GURUCONNECT_AGENT_BIN:-}" ]; then
  cp "$GURUCONNECT_AGENT_BIN" "$BIN" || die "cannot copy $GURUCONNECT_AGENT_BIN"
elif [ "@AGENT_SERVED@" != yes ]; then
  die "this server has no Linux agent to download (its administrator sets agent_binary_path)"
elif command -v curl >/dev/null 2>&1; then
  curl -fsSL "$SERVER/download/guruconnect-agent" -o "$BIN" || die "cannot download the agent from $SERVER"
elif command -v wget >/dev/null 2>&1; then
  wget -qO "$BIN" "$SERVER/download/guruconnect-agent" || die "cannot download the agent from $SERVER"
else
  die "need curl or wget to download the agent"
fi
chmod 0700 "$BIN"
echo "Connecting to $SERVER ..."
status=0
"$BIN" --server "$SERVER" --code "$CODE" || status=$?
exit "$status"
"##;
