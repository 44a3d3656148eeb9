//! Machine identity and agent keys, with one set of rules for every door: the agent
//! plane (`/ws/agent`: key lookup, unkeyed identity by machine_uid, trust-on-first-use
//! provisioning), enrollment (`/api/enroll`) and the administrator's `POST …/keys`.
//!
//! A per-agent key is `cak_` + 256 bits from the OS CSPRNG (base64url), stored only as its
//! SHA-256 with a 10-character prefix for display (SPEC §4.13).

use std::net::IpAddr;

use base64::Engine;
use guruconnect_proto::{self as proto, Payload};
use guruconnect_store::{AgentKey, DEFAULT_TENANT};
use serde_json::json;

use crate::AppState;
use crate::audit::Audit;
use crate::error::ApiResult;
use crate::secrets::{random_bytes, sha256_hex};
use crate::sessions::registry::{LiveSession, message};

/// Prefix of per-agent keys.
pub const AGENT_KEY_PREFIX: &str = "cak_";
/// Longest key label kept.
const KEY_LABEL_CHARS: usize = 100;

/// Mints a key: 32 bytes from the OS CSPRNG.
pub fn mint_agent_key() -> String {
    let bytes = random_bytes::<32>();
    format!(
        "{AGENT_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A new key for `agent_id`: the plaintext (shown or sent once) and the record to store.
pub fn new_key(
    agent_id: &str,
    label: Option<&str>,
    created_by: Option<&str>,
    now: i64,
) -> (String, AgentKey) {
    let plaintext = mint_agent_key();
    let key = AgentKey {
        id: uuid::Uuid::new_v4().to_string(),
        agent_id: agent_id.to_owned(),
        key_hash: sha256_hex(plaintext.as_bytes()),
        prefix: plaintext.chars().take(10).collect(),
        label: label.map(|l| l.chars().take(KEY_LABEL_CHARS).collect()),
        created_by: created_by.map(str::to_owned),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    (plaintext, key)
}

/// The active key a credential is, if any.
pub async fn find_key(state: &AppState, credential: &str) -> ApiResult<Option<AgentKey>> {
    Ok(state
        .store
        .find_active_key_by_hash(&sha256_hex(credential.as_bytes()))
        .await?)
}

/// Identity of a connection that is not key-bound.
pub struct UnkeyedIdentity {
    /// The machine (a fresh id unless the claimed uid is this endpoint's).
    pub agent_id: String,
    /// The machine_uid to record (None when it belongs to another machine).
    pub machine_uid: Option<String>,
    /// Why the machine must wait for an admin's approval, if it must.
    pub collision: Option<String>,
    /// The claimed uid and host name are those of a machine holding an active per-agent
    /// key: that machine should use its key.
    pub claims_keyed_machine: bool,
}

/// Resolves an unkeyed agent by its claimed machine_uid: the same endpoint (same uid, same
/// host name, no per-agent key) reuses its row; a uid held by a keyed machine or by a
/// different host is a collision and never takes that row over (SPEC §4.13, §7). An
/// `attended` (support-code) session from the same endpoint as a keyed machine is that
/// machine asking for help: it is listed under the machine's row, next to its managed
/// session, and gets no more than any code session (consent still gates it).
pub async fn unkeyed_identity(
    state: &AppState,
    hello: &proto::AgentHello,
    attended: bool,
) -> ApiResult<UnkeyedIdentity> {
    let uid = truncate(&hello.machine_uid, 128);
    let fresh = |machine_uid, collision| UnkeyedIdentity {
        agent_id: uuid::Uuid::new_v4().to_string(),
        machine_uid,
        collision,
        claims_keyed_machine: false,
    };
    if uid.is_empty() {
        return Ok(fresh(None, None));
    }
    let Some(machine) = state
        .store
        .find_machine_by_uid(DEFAULT_TENANT, &uid)
        .await?
    else {
        return Ok(fresh(Some(uid), None));
    };
    let keyed = state.store.count_active_keys(&machine.agent_id).await? > 0;
    let same_host = machine.hostname.eq_ignore_ascii_case(&hello.hostname);
    if same_host && (!keyed || attended) {
        return Ok(UnkeyedIdentity {
            agent_id: machine.agent_id,
            machine_uid: Some(uid),
            collision: None,
            claims_keyed_machine: false,
        });
    }
    let reason = format!(
        "machine_uid collides with {} ({})",
        machine.hostname, machine.agent_id
    );
    Ok(UnkeyedIdentity {
        claims_keyed_machine: keyed && same_host,
        ..fresh(None, Some(reason))
    })
}

/// At most `max` characters of an agent-supplied string, without NUL (which PostgreSQL
/// cannot store in text).
pub fn truncate(s: &str, max: usize) -> String {
    s.chars().filter(|&c| c != '\0').take(max).collect()
}

/// Trust on first use: an agent on the legacy shared key whose machine has no active
/// per-agent key receives one, once, and uses it from then on. Never re-issued while an
/// active key exists.
pub async fn provision_key(state: &AppState, session: &LiveSession, ip: IpAddr) {
    // Check and issue as one step, so two connections of one machine racing here cannot
    // both see "no key" (provisioning is rare; one lock for the process is enough).
    static PROVISIONING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = PROVISIONING.lock().await;
    match state.store.count_active_keys(&session.agent_id).await {
        Ok(0) => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = ?e, "could not check the machine's keys");
            return;
        }
    }
    let (plaintext, key) = new_key(
        &session.agent_id,
        Some("provisioned on first use"),
        None,
        state.clock.now_millis(),
    );
    let audit = Audit::new("key.issued")
        .agent(&session.agent_id)
        .session(&session.id)
        .ip(ip)
        .details(json!({ "key_id": key.id, "prefix": key.prefix, "trust_on_first_use": true }));
    if let Err(e) = state.store.create_agent_key(&key, audit.event()).await {
        tracing::warn!(error = ?e, "could not provision an agent key");
        return;
    }
    session.try_send_to_agent(message(Payload::KeyProvision(proto::KeyProvision {
        agent_key: plaintext,
        key_id: key.id.clone(),
    })));
}
