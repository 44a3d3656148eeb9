//! Zero-touch enrollment and the managed agent's credential.
//!
//! A managed agent's credential comes from, in order: the stored per-agent key; an
//! enrollment with the site code and enrollment key of its configuration (`POST
//! /api/enroll`), whose key is stored owner-only before it is used; the legacy shared key,
//! which the relay exchanges for a per-agent key on first contact (see
//! [`crate::session::SessionOptions::key_file`]). A stored key the relay refuses (revoked)
//! is skipped on the next attempt, so the agent falls back to enrollment.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{AgentConfig, ConfigError, Labels, read_key, store_key};

/// How long one enrollment request may take.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a managed agent connects with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Its per-agent key (stored or just enrolled).
    Key(String),
    /// The legacy shared key (the relay provisions a per-agent key).
    SharedKey(String),
}

impl Credential {
    /// The secret sent to the relay.
    pub fn secret(&self) -> &str {
        match self {
            Self::Key(k) | Self::SharedKey(k) => k,
        }
    }
}

/// Why no credential could be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Nothing to connect with: a configuration problem, not worth retrying.
    #[error(
        "no per-agent key at {key_file} and no way to get one: add site_code and \
         enrollment_key (or shared_key) to the configuration, or write the key there"
    )]
    NoCredential {
        /// The expected key file.
        key_file: String,
    },
    /// The key file or configuration is unusable (permissions, content).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The enrollment failed; retry later.
    #[error("enrollment failed: {0}")]
    Enroll(#[from] EnrollError),
    /// The key could not be stored.
    #[error("cannot store the per-agent key in {path}: {source}")]
    Store {
        /// The key file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl CredentialError {
    /// True when waiting and trying again may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Enroll(_) | Self::Store { .. })
    }
}

/// Why an enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The server refused (bad site code or key, rotated key, lockout).
    #[error(
        "the server refused the enrollment (HTTP {status}): {detail}; check the site code \
         and the enrollment key (a rotated key no longer enrolls new machines)"
    )]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's `detail`, when it sent the error envelope.
        detail: String,
    },
    /// The server could not be reached or answered something unexpected.
    #[error("{0}")]
    Unreachable(String),
}

#[derive(Serialize)]
struct EnrollRequest<'a> {
    site_code: &'a str,
    enrollment_key: &'a str,
    machine_uid: String,
    hostname: String,
    os: &'static str,
    os_version: String,
    agent_version: &'static str,
    labels: &'a Labels,
}

/// The server's answer to an enrollment.
#[derive(Debug, Clone, Deserialize)]
pub struct Enrolled {
    /// The machine's id.
    pub agent_id: String,
    /// The new key's id.
    pub key_id: String,
    /// The per-agent key (shown once).
    pub agent_key: String,
    /// `active`, or `pending` until an administrator approves the machine.
    pub status: String,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    detail: String,
}

/// Enrolls this machine with the site credentials of `config` (which must
/// [`can_enroll`](AgentConfig::can_enroll)).
pub async fn enroll(config: &AgentConfig) -> Result<Enrolled, EnrollError> {
    let (Some(site_code), Some(enrollment_key)) = (&config.site_code, &config.enrollment_key)
    else {
        return Err(EnrollError::Unreachable(
            "the configuration has no site_code/enrollment_key".into(),
        ));
    };
    let identity = tokio::task::spawn_blocking(|| crate::platform::native().identity())
        .await
        .map_err(|e| {
            EnrollError::Unreachable(format!("cannot read this machine's identity: {e}"))
        })?;
    let body = EnrollRequest {
        site_code,
        enrollment_key,
        machine_uid: identity.machine_uid,
        hostname: identity.hostname,
        os: identity.os,
        os_version: identity.os_version,
        agent_version: crate::version::agent_version(),
        labels: &config.labels,
    };
    let url = format!("{}/api/enroll", config.server.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(ENROLL_TIMEOUT)
        .build()
        .map_err(|e| EnrollError::Unreachable(e.to_string()))?;
    let response = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| EnrollError::Unreachable(format!("cannot reach {url}: {e}")))?;
    let status = response.status();
    if status.is_success() {
        return response
            .json::<Enrolled>()
            .await
            .map_err(|e| EnrollError::Unreachable(format!("unexpected enrollment answer: {e}")));
    }
    let detail = response
        .json::<ErrorEnvelope>()
        .await
        .map_or_else(|_| status.to_string(), |e| e.detail);
    if status.is_client_error() {
        Err(EnrollError::Refused {
            status: status.as_u16(),
            detail,
        })
    } else {
        Err(EnrollError::Unreachable(format!(
            "the server failed (HTTP {status}): {detail}"
        )))
    }
}

/// Finds the credential to connect with; enrolls (and stores the key) when there is no
/// usable stored key. `skip_stored` is set after the relay refused the stored key.
pub async fn credential(
    config: &AgentConfig,
    skip_stored: bool,
) -> Result<Credential, CredentialError> {
    let stored = config.key_file.exists();
    if stored && !skip_stored {
        return Ok(Credential::Key(read_key(&config.key_file)?));
    }
    if config.can_enroll() {
        let enrolled = enroll(config).await?;
        store_key(&config.key_file, &enrolled.agent_key).map_err(|source| {
            CredentialError::Store {
                path: config.key_file.display().to_string(),
                source,
            }
        })?;
        tracing::info!(
            agent_id = %enrolled.agent_id,
            key_id = %enrolled.key_id,
            status = %enrolled.status,
            key_file = %config.key_file.display(),
            "enrolled; the per-agent key is stored"
        );
        if enrolled.status == "pending" {
            tracing::warn!(
                "this machine waits for an administrator's approval before anyone can join it"
            );
        }
        return Ok(Credential::Key(enrolled.agent_key));
    }
    if let Some(shared) = &config.shared_key {
        return Ok(Credential::SharedKey(shared.clone()));
    }
    if stored {
        // Refused and nothing to fall back to: keep trying the stored key (it may be a
        // transient refusal, or an administrator may restore it).
        return Ok(Credential::Key(read_key(&config.key_file)?));
    }
    Err(CredentialError::NoCredential {
        key_file: config.key_file.display().to_string(),
    })
}
