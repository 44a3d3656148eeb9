//! Support codes: `XXX-XXX-XXX` over a 31-character alphabet without 0/O/1/I/L, drawn
//! from the OS CSPRNG with rejection sampling (9 × log2(31) ≈ 44.6 bits). Single use:
//! the agent bind consumes a code through one conditional update in the store.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use guruconnect_store::{CodeStatus, DEFAULT_TENANT, StoreError, SupportCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::audit::Audit;
use crate::auth::{AuthUser, Permission};
use crate::error::{ApiError, ApiJson, ApiResult, parse_json_body};
use crate::middleware::ClientIp;
use crate::rate_limit::Limit;
use crate::secrets::random_below;

/// The code alphabet: digits and letters without 0, O, 1, I and L.
pub const CODE_ALPHABET: &[u8; 31] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";

/// `/api/codes*`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/codes", get(list).post(create))
        .route("/api/codes/validate", post(validate))
        .route("/api/codes/{code}", delete(cancel))
}

/// A fresh code.
pub fn generate_code() -> String {
    let chars: Vec<char> = (0..9)
        .map(|_| char::from(CODE_ALPHABET[usize::from(random_below(31))]))
        .collect();
    format!(
        "{}-{}-{}",
        chars[0..3].iter().collect::<String>(),
        chars[3..6].iter().collect::<String>(),
        chars[6..9].iter().collect::<String>()
    )
}

/// Canonical form of user-typed input (`abc def ghj`, `ABCDEFGHJ`), or `None` when it
/// cannot be a code.
pub fn normalize_code(input: &str) -> Option<String> {
    let compact: String = input
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if compact.len() != 9 || !compact.bytes().all(|b| CODE_ALPHABET.contains(&b)) {
        return None;
    }
    Some(format!(
        "{}-{}-{}",
        &compact[0..3],
        &compact[3..6],
        &compact[6..9]
    ))
}

/// Stable public id of a code (its full text is shown only once, at creation).
pub fn code_id(code: &str) -> String {
    crate::secrets::sha256_hex(code.as_bytes())[..16].to_owned()
}

/// The code with all but its last group hidden, e.g. `•••-•••-XYZ`.
pub fn mask_code(code: &str) -> String {
    format!("•••-•••-{}", &code[code.len().saturating_sub(3)..])
}

/// The code as logs may show it: its last group only, e.g. `***-***-XYZ` (SPEC §4.10).
pub fn redact_code(code: &str) -> String {
    let tail = code
        .char_indices()
        .rev()
        .nth(2)
        .map_or("", |(at, _)| &code[at..]);
    format!("***-***-{tail}")
}

/// A code as the API shows it.
#[derive(Debug, Serialize)]
pub struct CodeView {
    /// Stable id (use it to cancel).
    id: String,
    /// The full code on creation; masked everywhere else (SPEC §4.10).
    code: String,
    /// The stored status, or `expired` for a pending code past its expiry.
    status: &'static str,
    note: Option<String>,
    /// The name the customer gave on the join page.
    customer_name: Option<String>,
    created_by: String,
    created_at: i64,
    expires_at: i64,
    session_id: Option<String>,
}

impl CodeView {
    fn from_code(c: SupportCode, now: i64, reveal: bool) -> Self {
        let status = if c.status == CodeStatus::Pending && c.expires_at <= now {
            "expired"
        } else {
            c.status.as_str()
        };
        Self {
            id: code_id(&c.code),
            code: if reveal { c.code } else { mask_code(&c.code) },
            status,
            note: c.note,
            customer_name: c.customer_name,
            created_by: c.created_by_name,
            created_at: c.created_at,
            expires_at: c.expires_at,
            session_id: c.session_id,
        }
    }
}

/// Create-code request.
#[derive(Debug, Default, Deserialize)]
pub struct CreateCode {
    note: Option<String>,
    /// Lifetime in seconds (default from configuration, at most one day).
    ttl_secs: Option<u64>,
}

#[tracing::instrument(skip_all, fields(user_id = %auth.user.id))]
async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    ClientIp(ip): ClientIp,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<CodeView>)> {
    auth.require(Permission::ManageCodes)?;
    // The body is optional: an empty POST creates a code with the defaults.
    let req: CreateCode = if body.iter().all(u8::is_ascii_whitespace) {
        CreateCode::default()
    } else {
        parse_json_body(&body)?
    };
    let ttl = req.ttl_secs.unwrap_or(state.config.code_ttl_secs);
    if !(30..=86_400).contains(&ttl) {
        return Err(ApiError::Validation(
            "ttl_secs must be between 30 and 86400".into(),
        ));
    }
    let note = req
        .note
        .map(|n| n.trim().chars().take(200).collect::<String>())
        .filter(|n| !n.is_empty());
    let now = state.clock.now_millis();
    let ttl_ms = i64::try_from(ttl).unwrap_or(86_400) * 1000;
    // A collision in a 44-bit space is rare; retry a few times rather than fail.
    for _ in 0..5 {
        let code = SupportCode {
            code: generate_code(),
            tenant_id: DEFAULT_TENANT.to_owned(),
            status: CodeStatus::Pending,
            created_by: auth.user.id.clone(),
            created_by_name: auth.user.username.clone(),
            note: note.clone(),
            created_at: now,
            expires_at: now + ttl_ms,
            consumed_at: None,
            session_id: None,
            customer_name: None,
        };
        let audit = Audit::new("code.created")
            .user(&auth.user)
            .ip(ip)
            .details(json!({ "code_suffix": &code.code[8..], "expires_at": code.expires_at }));
        // The code and its audit event commit together.
        match state.store.create_code(&code, audit.event()).await {
            Ok(()) => {
                return Ok((
                    StatusCode::CREATED,
                    Json(CodeView::from_code(code, now, true)),
                ));
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal(anyhow::anyhow!(
        "could not generate a unique support code"
    )))
}

/// Paging parameters, as for the other lists.
#[derive(Debug, Deserialize)]
pub struct Page {
    limit: Option<i64>,
    offset: Option<i64>,
}

/// One page of codes, newest first.
#[derive(Debug, Serialize)]
pub struct CodePage {
    items: Vec<CodeView>,
    /// Codes in all (finished ones are pruned after `code_retention_secs`).
    total: i64,
    limit: i64,
    offset: i64,
}

#[tracing::instrument(skip_all, fields(user_id = %auth.user.id))]
async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(page): Query<Page>,
) -> ApiResult<Json<CodePage>> {
    auth.require(Permission::ManageCodes)?;
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let offset = page.offset.unwrap_or(0).max(0);
    let now = state.clock.now_millis();
    let (codes, total) = state
        .store
        .list_codes_page(&auth.user.tenant_id, limit, offset)
        .await?;
    Ok(Json(CodePage {
        items: codes
            .into_iter()
            .map(|c| CodeView::from_code(c, now, false))
            .collect(),
        total,
        limit,
        offset,
    }))
}

#[tracing::instrument(skip_all, fields(user_id = %auth.user.id))]
async fn cancel(
    State(state): State<AppState>,
    auth: AuthUser,
    ClientIp(ip): ClientIp,
    Path(code): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Permission::ManageCodes)?;
    // The path holds the code itself or its id (lists show only the id and a masked code);
    // only a pending code can be cancelled, so an id is looked for among those.
    let row = match normalize_code(&code) {
        Some(code) => state.store.get_code(&code).await?,
        None => state
            .store
            .list_pending_codes(&auth.user.tenant_id)
            .await?
            .into_iter()
            .find(|c| code_id(&c.code) == code),
    }
    .ok_or(ApiError::NotFound("no such code"))?;
    let code = row.code.clone();
    if row.tenant_id != auth.user.tenant_id {
        return Err(ApiError::NotFound("no such code"));
    }
    let audit = Audit::new("code.cancelled")
        .user(&auth.user)
        .ip(ip)
        .details(json!({ "code_suffix": &code[8..] }));
    if !state
        .store
        .cancel_code(&code, audit.event(), state.clock.now_millis())
        .await?
    {
        return Err(ApiError::Conflict("the code is no longer pending".into()));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Validate request.
#[derive(Debug, Deserialize)]
pub struct ValidateCode {
    code: String,
}

/// Public preview of a code; never consumes it.
#[tracing::instrument(skip_all)]
async fn validate(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<ValidateCode>,
) -> ApiResult<Json<serde_json::Value>> {
    let c = preview_code(&state, ip, &req.code).await?;
    Ok(Json(
        json!({ "valid": true, "technician": c.created_by_name, "expires_at": c.expires_at }),
    ))
}

/// Looks up a pending, unexpired code for a public caller without consuming it, under the
/// code-validate rate limit and the per-address code lockout; every public door that
/// previews a code goes through here so that they share one failure count (SPEC §4.9).
pub(crate) async fn preview_code(
    state: &AppState,
    ip: std::net::IpAddr,
    input: &str,
) -> ApiResult<SupportCode> {
    let allowed = match state.limits.check_code_lockout(ip).await {
        Ok(()) => state.limits.check(Limit::CodeValidate, ip).await,
        Err(e) => Err(e),
    };
    if let Err(e) = allowed {
        state.metrics.rate_limited(Limit::CodeValidate.name());
        return Err(e);
    }
    let now = state.clock.now_millis();
    let found = match normalize_code(input) {
        Some(code) => state.store.get_code(&code).await?,
        None => None,
    };
    match found {
        Some(c) if c.status == CodeStatus::Pending && c.expires_at > now => {
            state.limits.record_code_attempt(ip, true).await?;
            Ok(c)
        }
        _ => {
            state.limits.record_code_attempt(ip, false).await?;
            state.metrics.auth_failure("code");
            Err(ApiError::NotFound("invalid or expired code"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_have_the_format_and_alphabet() {
        for _ in 0..200 {
            let code = generate_code();
            assert_eq!(code.len(), 11);
            assert_eq!(normalize_code(&code).as_deref(), Some(code.as_str()));
            assert!(!code.contains(['0', 'O', '1', 'I', 'L']));
        }
    }

    #[test]
    fn normalization_accepts_typing_variants_and_rejects_others() {
        assert_eq!(
            normalize_code("abc def ghj").as_deref(),
            Some("ABC-DEF-GHJ")
        );
        assert_eq!(normalize_code("ABCDEFGHJ").as_deref(), Some("ABC-DEF-GHJ"));
        assert_eq!(normalize_code("ABC-DEF-GH0"), None);
        assert_eq!(normalize_code("eyJhbGciOiJIUzI1NiJ9"), None);
    }
}
