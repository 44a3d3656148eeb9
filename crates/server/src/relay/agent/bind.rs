//! Binding a hello'd agent to its machine and a new session.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::ws::Message;
use guruconnect_proto::{self as proto, Codec};
use guruconnect_store::{DEFAULT_TENANT, MachineUpsert, SessionRecord, SessionStatus, StoreError};
use serde_json::json;
use tokio::sync::mpsc;

use super::AgentCredential;
use super::close;
use crate::AppState;
use crate::audit::Audit;
use crate::config::SharedKeyMode;
use crate::error::ApiError;
use crate::fleet;
use crate::sessions::registry::{LiveSession, NewLive, SessionKind};

/// Everything needed once the agent said hello.
pub(super) struct Bound {
    /// The registered session.
    pub(super) session: Arc<LiveSession>,
    /// What the agent's writer sends.
    pub(super) agent_rx: mpsc::Receiver<Message>,
    /// Who the support code was made by (attended sessions), for the consent prompt.
    pub(super) technician: String,
}

pub(super) async fn bind(
    state: &AppState,
    credential: &AgentCredential,
    hello: &proto::AgentHello,
    ip: IpAddr,
) -> Result<Bound, (u16, &'static str)> {
    let internal = |e: ApiError| {
        if matches!(e, ApiError::StorageFull) {
            tracing::error!("agent refused: database storage is full");
            return (close::GOING_AWAY, "server storage full; try again later");
        }
        tracing::error!(error = %e, "binding an agent failed");
        (close::GOING_AWAY, "server error")
    };
    let unkeyed = match credential {
        AgentCredential::Key(_) => None,
        AgentCredential::Code { .. } => Some(
            fleet::unkeyed_identity(state, hello, true)
                .await
                .map_err(internal)?,
        ),
        AgentCredential::SharedKey => Some(
            fleet::unkeyed_identity(state, hello, false)
                .await
                .map_err(internal)?,
        ),
    };
    let (agent_id, kind, key_id, code, session_id, technician) = match credential {
        AgentCredential::Key(key) => (
            key.agent_id.clone(),
            SessionKind::Managed,
            Some(key.id.clone()),
            None,
            uuid::Uuid::new_v4().to_string(),
            String::new(),
        ),
        AgentCredential::Code { code, session_id } => (
            unkeyed
                .as_ref()
                .map(|u| u.agent_id.clone())
                .unwrap_or_default(),
            SessionKind::Attended,
            None,
            Some(code.code.clone()),
            session_id.clone(),
            code.created_by_name.clone(),
        ),
        AgentCredential::SharedKey => {
            let agent_id = unkeyed
                .as_ref()
                .map(|u| u.agent_id.clone())
                .unwrap_or_default();
            // The resolved row never holds a key (a keyed machine's uid resolves to a
            // fresh collision row), so the check is on the machine the agent claims. In
            // both modes a machine that has its own key must use it: otherwise an agent
            // that ignores its provisioned key would add a pending row on every reconnect.
            let claims_keyed = unkeyed.as_ref().is_some_and(|u| u.claims_keyed_machine);
            if claims_keyed
                || (state.config.shared_agent_key_mode == SharedKeyMode::EnrollmentOnly
                    && state
                        .store
                        .count_active_keys(&agent_id)
                        .await
                        .map_err(|e| internal(e.into()))?
                        > 0)
            {
                return Err((close::POLICY, "this machine has a per-agent key; use it"));
            }
            (
                agent_id,
                SessionKind::Managed,
                None,
                None,
                uuid::Uuid::new_v4().to_string(),
                String::new(),
            )
        }
    };
    let now = state.clock.now_millis();
    let upsert = MachineUpsert {
        agent_id: agent_id.clone(),
        tenant_id: DEFAULT_TENANT.to_owned(),
        // A keyed agent's claimed machine_uid is ignored (SPEC §4.13).
        machine_uid: unkeyed.as_ref().and_then(|u| u.machine_uid.clone()),
        hostname: fleet::truncate(&hello.hostname, 255),
        os: fleet::truncate(&hello.os, 64),
        os_version: fleet::truncate(&hello.os_version, 128),
        agent_version: fleet::truncate(&hello.agent_version, 64),
        external_ip: Some(ip.to_string()),
        seen_at: now,
    };
    match state.store.upsert_machine(&upsert).await {
        Ok(_) => {}
        Err(StoreError::NotFound) => return Err((close::POLICY, "this machine was removed")),
        Err(e) => return Err(internal(e.into())),
    }
    if let AgentCredential::Key(key) = credential {
        let _ = state.store.touch_agent_key(&key.id, now).await;
    }
    if let Some(reason) = unkeyed.as_ref().and_then(|u| u.collision.clone()) {
        // Managed agents on a colliding uid wait for an admin; support sessions are
        // attended by the end user and proceed on their own row.
        if kind == SessionKind::Managed {
            state
                .store
                .set_machine_pending(&agent_id, Some(&reason), now, None)
                .await
                .map_err(|e| internal(e.into()))?;
            crate::alerts::raise(
                state,
                "machine_collision",
                Audit::new("alert.machine_collision")
                    .agent(&agent_id)
                    .ip(ip),
                json!({ "agent_id": agent_id, "hostname": hello.hostname, "reason": reason }),
            )
            .await;
        }
    }
    let record = SessionRecord {
        id: session_id.clone(),
        tenant_id: DEFAULT_TENANT.to_owned(),
        agent_id: agent_id.clone(),
        kind,
        code: code.clone(),
        status: match kind {
            SessionKind::Attended => SessionStatus::WaitingConsent,
            SessionKind::Managed => SessionStatus::Active,
        },
        created_at: now,
        ended_at: None,
        end_reason: None,
    };
    let mut audit = Audit::new("session.created")
        .agent(&agent_id)
        .session(&session_id)
        .ip(ip)
        .details(json!({ "kind": kind.as_str(), "hostname": upsert.hostname, "credential": match credential {
            AgentCredential::Key(_) => "agent_key",
            AgentCredential::Code { .. } => "support_code",
            AgentCredential::SharedKey => "shared_key",
        }}));
    if let AgentCredential::Code { code, .. } = credential {
        audit = audit.details(json!({ "kind": SessionKind::Attended.as_str(), "hostname": upsert.hostname, "credential": "support_code", "code_created_by": code.created_by }));
    }
    state
        .store
        .create_session(&record, audit.event())
        .await
        .map_err(|e| internal(e.into()))?;
    let mut codecs: Vec<i32> = hello.codecs.clone();
    if !codecs.contains(&(Codec::RawZstd as i32)) {
        codecs.push(Codec::RawZstd as i32);
    }
    let crate::sessions::registry::Registered {
        session, agent_rx, ..
    } = crate::sessions::open(
        state,
        NewLive {
            id: session_id.clone(),
            agent_id: agent_id.clone(),
            kind,
            code: code.clone(),
            key_id,
            hostname: upsert.hostname.clone(),
            codecs,
            capabilities: hello.capabilities.clone(),
            started_at: now,
        },
    )
    .await;
    if let AgentCredential::Code { code, .. } = credential {
        Audit::new("code.consumed")
            .agent(&agent_id)
            .session(&session_id)
            .ip(ip)
            .details(json!({ "code_suffix": &code.code[code.code.len().saturating_sub(3)..] }))
            .record_quietly(state)
            .await;
    }
    if matches!(credential, AgentCredential::SharedKey) {
        fleet::provision_key(state, &session, ip).await;
    }
    crate::recording::start_if_due(state, &session, &upsert.hostname).await;
    Ok(Bound {
        session,
        agent_rx,
        technician,
    })
}
