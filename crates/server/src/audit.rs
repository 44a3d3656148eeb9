//! Audit-event helpers: a small builder over `NewEvent` so call sites stay one line.
//! Details never carry secrets: lengths and ids only.

use std::net::IpAddr;

use guruconnect_store::{DEFAULT_TENANT, NewEvent, User};

use crate::AppState;
use crate::auth::tokens::now_millis;
use crate::error::ApiResult;

/// Builder for one audit event.
#[derive(Debug, Clone)]
pub struct Audit(NewEvent);

impl Audit {
    /// A new event of `event_type` in the default tenant.
    pub fn new(event_type: &str) -> Self {
        Audit(NewEvent {
            tenant_id: DEFAULT_TENANT.to_owned(),
            event_type: event_type.to_owned(),
            details: serde_json::Value::Object(Default::default()),
            ..NewEvent::default()
        })
    }

    /// Sets the acting user.
    pub fn user(mut self, user: &User) -> Self {
        self.0.user_id = Some(user.id.clone());
        self.0.username = Some(user.username.clone());
        self.0.tenant_id = user.tenant_id.clone();
        self
    }

    /// Sets the acting username only (e.g. a failed login for an unknown user).
    pub fn username(mut self, username: &str) -> Self {
        self.0.username = Some(username.chars().take(64).collect());
        self
    }

    /// Sets the client IP.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.0.client_ip = Some(ip.to_string());
        self
    }

    /// Sets the machine.
    pub fn agent(mut self, agent_id: &str) -> Self {
        self.0.agent_id = Some(agent_id.to_owned());
        self
    }

    /// Sets the session.
    pub fn session(mut self, session_id: &str) -> Self {
        self.0.session_id = Some(session_id.to_owned());
        self
    }

    /// Sets JSON details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.0.details = details;
        self
    }

    /// The event, for a store call that records it in the same transaction as the
    /// change it describes.
    pub fn event(&self) -> &NewEvent {
        &self.0
    }

    /// Records the event.
    pub async fn record(self, state: &AppState) -> ApiResult<()> {
        state.store.record_event(&self.0, now_millis()).await?;
        Ok(())
    }

    /// Records the event on its own task (quietly), for hot loops that must not wait on
    /// the database, such as a relay read loop.
    pub fn record_in_background(self, state: &AppState) {
        let state = state.clone();
        tokio::spawn(async move { self.record_quietly(&state).await });
    }

    /// Records the event; a failure is logged, never surfaced (for paths that must not
    /// fail because auditing did, such as a socket closing).
    pub async fn record_quietly(self, state: &AppState) {
        let event_type = self.0.event_type.clone();
        if let Err(e) = state.store.record_event(&self.0, now_millis()).await {
            tracing::error!(event_type, error = ?e, "could not record audit event");
        }
    }
}
