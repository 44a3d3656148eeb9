//! The customer's side of a support code (public, no sign-in):
//!
//! - `GET /api/join/:code`: who is asking (the technician's display name, the code's note,
//!   the expiry) and which downloads this server offers; nothing else about the code.
//! - `GET /join/:code/guruconnect-support.sh`: a POSIX shell script with this server's URL
//!   and the code built in that downloads the agent and starts the support session.
//!
//! Both preview the code without consuming it, under the same rate limit and per-address
//! lockout as `/api/codes/validate` ([`crate::api::codes::preview_code`]). The page itself
//! (`/join`, `/join/:code`) is the console's, served by [`crate::console`].

use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::AppState;
use crate::api::codes::{preview_code, redact_code};
use crate::api::installers::{LINUX_MISSING, is_file, public_url, shell_quote};
use crate::error::ApiResult;
use crate::middleware::ClientIp;

/// File name of the Linux support script.
pub const LINUX_SCRIPT: &str = "guruconnect-support.sh";

/// Why a Windows customer cannot download anything yet.
pub const WINDOWS_UNAVAILABLE: &str = "the Windows agent for support sessions is not \
     available yet; ask your technician for another way to connect";

/// `/api/join/{code}` and `/join/{code}/guruconnect-support.sh`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/join/{code}", get(preview))
        .route(&format!("/join/{{code}}/{LINUX_SCRIPT}"), get(linux_script))
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
    expires_at: i64,
    downloads: Downloads,
}

/// `GET /api/join/:code`.
#[tracing::instrument(skip_all)]
async fn preview(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(code): Path<String>,
) -> ApiResult<Json<JoinView>> {
    let c = preview_code(&state, ip, &code).await?;
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
        expires_at: c.expires_at,
        downloads: Downloads {
            linux,
            // No Windows support-mode agent is served yet (the MSI is for site installs).
            windows: Download {
                available: false,
                url: None,
                hint: Some(WINDOWS_UNAVAILABLE),
            },
        },
    }))
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
