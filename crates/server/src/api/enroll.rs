//! `POST /api/enroll`: zero-touch self-registration of a machine with its site's
//! enrollment key (public; rate-limited per IP, with a lockout per IP and per site code).
//!
//! A machine is found by `(tenant, machine_uid)`: a reinstall reuses its row. A uid that
//! matches a machine with a different host name looks like a different endpoint (a cloned
//! image, a spoof): it gets its own row in the *pending* state and an alert; an admin must
//! approve it before anyone can join it. Every enrollment mints a fresh per-agent key,
//! returned once, and revokes the machine's previous keys; the machine row, the keys and
//! their audit events commit in one transaction ([`guruconnect_store::Store::enroll`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use guruconnect_store::{
    AgentKey, DEFAULT_TENANT, Enrollment, MachineLabels, MachineStatus, NewMachine, StoreError,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::alerts;
use crate::audit::Audit;
use crate::auth::password;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::middleware::ClientIp;
use crate::rate_limit::Limit;

/// `/api/enroll`.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/enroll", post(enroll))
}

/// Labels an installer may set.
#[derive(Debug, Default, Deserialize)]
pub struct EnrollLabels {
    company: Option<String>,
    department: Option<String>,
    device_type: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// Enrollment request.
#[derive(Deserialize)]
pub struct EnrollRequest {
    site_code: String,
    enrollment_key: SecretString,
    machine_uid: String,
    hostname: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    os_version: String,
    #[serde(default)]
    agent_version: String,
    #[serde(default)]
    labels: EnrollLabels,
}

/// Enrollment response: the per-agent key, shown once.
#[derive(Debug, Serialize)]
pub struct EnrollResponse {
    agent_id: String,
    key_id: String,
    agent_key: String,
    site_id: String,
    /// `active`, or `pending` when an admin must approve the machine first.
    status: MachineStatus,
}

fn clip(s: &str, max: usize) -> String {
    s.trim().chars().take(max).collect()
}

fn opt(s: Option<String>, max: usize) -> Option<String> {
    s.map(|v| clip(&v, max)).filter(|v| !v.is_empty())
}

#[tracing::instrument(skip_all)]
async fn enroll(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    let site_code = clip(&req.site_code, 64);
    let lock_keys = [
        format!("ip:{ip}"),
        format!("site:{}", site_code.to_ascii_lowercase()),
    ];
    let allowed = match state.limits.check_enroll_lockout(&lock_keys).await {
        Ok(()) => state.limits.check(Limit::Enroll, ip).await,
        Err(e) => Err(e),
    };
    if let Err(e) = allowed {
        state.metrics.rate_limited(Limit::Enroll.name());
        return Err(e);
    }
    let machine_uid = clip(&req.machine_uid, 128);
    let hostname = clip(&req.hostname, 255);
    if machine_uid.is_empty() || hostname.is_empty() {
        return Err(ApiError::Validation(
            "machine_uid and hostname are required".into(),
        ));
    }
    let site = state
        .store
        .find_site_by_code(DEFAULT_TENANT, &site_code)
        .await?;
    let phc = site
        .as_ref()
        .map_or_else(|| password::dummy_hash().to_owned(), |s| s.key_hash.clone());
    let key_ok = password::verify(req.enrollment_key, phc).await?;
    let Some(site) = site.filter(|_| key_ok) else {
        state.limits.record_enroll(&lock_keys, false).await?;
        state.metrics.auth_failure("enroll");
        Audit::new("enroll.failure")
            .ip(ip)
            .details(json!({ "site_code": site_code }))
            .record_quietly(&state)
            .await;
        return Err(ApiError::Unauthorized(
            "invalid site code or enrollment key",
        ));
    };
    state.limits.record_enroll(&lock_keys, true).await?;
    let now = state.clock.now_millis();
    let labels = MachineLabels {
        company: req.labels.company.map(|c| opt(Some(c), 100)),
        site: Some(Some(site.name.clone())),
        department: req.labels.department.map(|d| opt(Some(d), 100)),
        device_type: req.labels.device_type.map(|d| opt(Some(d), 100)),
        tags: (!req.labels.tags.is_empty()).then(|| {
            req.labels
                .tags
                .iter()
                .map(|t| clip(t, 64))
                .filter(|t| !t.is_empty())
                .take(32)
                .collect()
        }),
        // A re-enrollment keeps what technicians wrote.
        notes: None,
        update_channel: None,
    };

    let existing = state
        .store
        .find_machine_by_uid(DEFAULT_TENANT, &machine_uid)
        .await?;
    let fields = req_fields(&hostname, &req.os, &req.os_version, &req.agent_version);
    let (new_machine, agent_id, outcome) = match &existing {
        Some(m)
            if !m.hostname.eq_ignore_ascii_case(&hostname)
                && m.hostname != crate::api::machines::NOT_CONNECTED_YET =>
        {
            // Same hardware id, different endpoint: quarantine until an admin approves.
            let reason = format!("machine_uid collides with {} ({})", m.hostname, m.agent_id);
            let pending = new_machine(
                &fields,
                None,
                Some(&machine_uid),
                &site.id,
                Some(reason),
                now,
            );
            let agent_id = pending.agent_id.clone();
            (Some(pending), agent_id, "pending")
        }
        Some(m) => (None, m.agent_id.clone(), "reused"),
        None => {
            let created = new_machine(&fields, Some(&machine_uid), None, &site.id, None, now);
            let agent_id = created.agent_id.clone();
            (Some(created), agent_id, "created")
        }
    };
    let label = format!("enrolled via site {}", site.code);
    let (plaintext, key) = crate::fleet::new_key(&agent_id, Some(&label), None, now);
    let event = Audit::new("machine.enrolled")
        .agent(&agent_id)
        .ip(ip)
        .details(json!({ "site_id": site.id, "outcome": outcome, "key_id": key.id, "key_version": site.key_version }));
    let enrollment = Enrollment {
        new_machine,
        site_id: site.id.clone(),
        labels,
        key,
        event: event.event().clone(),
    };
    // The machine, its fresh key and the revocation of its earlier keys commit together
    // with their events; a crash leaves all or none of them.
    let revoked_event = |old: &AgentKey| {
        Audit::new("key.revoked")
            .agent(&old.agent_id)
            .ip(ip)
            .details(json!({ "key_id": old.id, "reason": "re-enrolled" }))
            .event()
            .clone()
    };
    let (machine, revoked) = match state.store.enroll(&enrollment, revoked_event).await {
        Err(StoreError::Conflict("machine exists" | "machine uid taken")) => {
            return Err(ApiError::Conflict(
                "this machine is already enrolled; retry".into(),
            ));
        }
        other => other?,
    };
    let key = enrollment.key;
    for old in &revoked {
        crate::sessions::end_by_key(&state, &old.id, "re-enrolled with a new key").await;
    }
    // Alerts follow the committed enrollment.
    match (outcome, &existing) {
        ("pending", Some(m)) => {
            alerts::raise(
                &state,
                "machine_collision",
                Audit::new("alert.machine_collision").agent(&machine.agent_id).ip(ip),
                json!({ "agent_id": machine.agent_id, "hostname": hostname, "collides_with": m.agent_id, "existing_hostname": m.hostname, "site_id": site.id }),
            )
            .await;
        }
        ("reused", Some(m)) if m.site_id.as_deref().is_some_and(|old| old != site.id) => {
            alerts::raise(
                &state,
                "site_move",
                Audit::new("alert.site_move").agent(&m.agent_id).ip(ip),
                json!({ "agent_id": m.agent_id, "hostname": hostname, "from_site_id": m.site_id, "to_site_id": site.id }),
            )
            .await;
        }
        ("created", _) => {
            alerts::raise(
                &state,
                "machine_enrolled",
                Audit::new("alert.machine_enrolled")
                    .agent(&machine.agent_id)
                    .ip(ip),
                json!({ "agent_id": machine.agent_id, "hostname": hostname, "site_id": site.id }),
            )
            .await;
        }
        _ => {}
    }
    let status = if outcome == "created" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(EnrollResponse {
            agent_id: machine.agent_id,
            key_id: key.id,
            agent_key: plaintext,
            site_id: site.id,
            status: machine.status,
        }),
    ))
}

struct Fields<'a> {
    hostname: &'a str,
    os: String,
    os_version: String,
    agent_version: String,
}

fn req_fields<'a>(
    hostname: &'a str,
    os: &str,
    os_version: &str,
    agent_version: &str,
) -> Fields<'a> {
    Fields {
        hostname,
        os: clip(os, 64),
        os_version: clip(os_version, 128),
        agent_version: clip(agent_version, 64),
    }
}

/// The row of a machine enrolled into `site_id`: pending (with the uid it claimed, not
/// owning it) when `pending_reason` is set.
fn new_machine(
    f: &Fields<'_>,
    machine_uid: Option<&str>,
    claimed_uid: Option<&str>,
    site_id: &str,
    pending_reason: Option<String>,
    now: i64,
) -> NewMachine {
    NewMachine {
        agent_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: DEFAULT_TENANT.to_owned(),
        machine_uid: machine_uid.map(str::to_owned),
        hostname: f.hostname.to_owned(),
        os: f.os.clone(),
        os_version: f.os_version.clone(),
        agent_version: f.agent_version.clone(),
        site_id: Some(site_id.to_owned()),
        claimed_machine_uid: claimed_uid.map(str::to_owned),
        status: if pending_reason.is_some() {
            MachineStatus::Pending
        } else {
            MachineStatus::Active
        },
        pending_reason,
        created_at: now,
        ..NewMachine::default()
    }
}
