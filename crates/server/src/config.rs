//! Layered configuration: built-in defaults, then a TOML file, then `GURUCONNECT_*`
//! environment variables, then command-line flags (applied by the binary).
//!
//! Secrets live in [`SecretString`] so `Debug` output never shows them, and each has a
//! `*_file` variant for Docker/systemd secret files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Minimum signing-secret length in bytes (SPEC §4.12).
pub const MIN_SIGNING_SECRET_BYTES: usize = 32;

/// How the legacy server-wide shared agent key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SharedKeyMode {
    /// The shared key is refused.
    #[default]
    Disabled,
    /// Only agents that do not yet have a per-agent key may use it (to obtain one).
    EnrollmentOnly,
    /// Accepted like a per-agent key, with a deprecation warning.
    Enabled,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The server's whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address the HTTP server binds.
    pub bind: SocketAddr,
    /// Directory for the embedded database and generated secrets.
    pub data_dir: PathBuf,
    /// `postgres://…` for PostgreSQL; empty means embedded SQLite in `data_dir`.
    #[serde(skip_serializing)]
    pub database_url: Option<SecretString>,
    /// File holding `database_url`.
    pub database_url_file: Option<PathBuf>,
    /// JWT signing secret (≥ 32 bytes). Generated and persisted when absent.
    #[serde(skip_serializing)]
    pub signing_secret: Option<SecretString>,
    /// File holding `signing_secret`.
    pub signing_secret_file: Option<PathBuf>,
    /// Password for the `admin` user created on first start; generated and printed once
    /// when absent.
    #[serde(skip_serializing)]
    pub admin_password: Option<SecretString>,
    /// File holding `admin_password`.
    pub admin_password_file: Option<PathBuf>,
    /// Proxies whose `X-Forwarded-For` is trusted (IPs or CIDR networks).
    pub trusted_proxies: Vec<IpNet>,
    /// Largest accepted HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// Lifetime of an unused support code, in seconds.
    pub code_ttl_secs: u64,
    /// A finished support code (used, expired or cancelled) is deleted this many seconds
    /// after its expiry.
    pub code_retention_secs: u64,
    /// Seconds an attended session waits for the end user's consent.
    pub consent_timeout_secs: u64,
    /// Legacy shared agent key (deprecated).
    #[serde(skip_serializing)]
    pub shared_agent_key: Option<SecretString>,
    /// File holding `shared_agent_key`.
    pub shared_agent_key_file: Option<PathBuf>,
    /// What the shared key may do.
    pub shared_agent_key_mode: SharedKeyMode,
    /// Serve `/metrics` without authentication.
    pub metrics_public: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Serve the web console from this directory instead of the embedded copy.
    pub console_dir: Option<PathBuf>,
    /// Alerts (new enrollment, site move, machine-uid collision) are POSTed here.
    pub alert_webhook_url: Option<String>,
    /// HMAC-SHA256 key for the `X-GuruConnect-Signature` header of alert webhooks.
    #[serde(skip_serializing)]
    pub alert_webhook_secret: Option<SecretString>,
    /// File holding `alert_webhook_secret`.
    pub alert_webhook_secret_file: Option<PathBuf>,
    /// An offline managed session with no viewers is reaped after this many seconds.
    pub offline_session_ttl_secs: u64,
    /// Path of the Linux agent binary that site installers download from
    /// `/download/guruconnect-agent` (unset: the installer expects it next to the script).
    pub agent_binary_path: Option<PathBuf>,
    /// Windows agent MSI (`scripts/windows/build-msi.sh`) from which
    /// `/api/sites/:id/installer?platform=windows` makes per-site MSIs.
    pub agent_windows_msi_path: Option<PathBuf>,
    /// Ed25519 public key (`gcrelpub1:…`, from `guruconnect-release keygen`) that every
    /// published release must be signed with; unset: updates are disabled.
    pub release_public_key: Option<String>,
    /// File holding `release_public_key`.
    pub release_public_key_file: Option<PathBuf>,
    /// Largest release artifact accepted, in bytes.
    pub max_release_artifact_bytes: u64,
    /// Largest file a technician may upload to or download from a machine, in bytes.
    pub max_file_transfer_bytes: u64,
    /// Where session recordings are written; `<data_dir>/recordings` when unset.
    pub recordings_dir: Option<PathBuf>,
    /// Windows agent executable (`scripts/windows/build-agent.sh`) that the join page
    /// offers customers, named so that it runs the support session with no flags.
    pub agent_windows_exe_path: Option<PathBuf>,
    /// PKCS#12 certificate with which per-site MSIs are Authenticode-signed (osslsigncode).
    pub installer_signing_pkcs12: Option<PathBuf>,
    /// Password of `installer_signing_pkcs12`.
    #[serde(skip_serializing)]
    pub installer_signing_password: Option<SecretString>,
    /// File holding `installer_signing_password`.
    pub installer_signing_password_file: Option<PathBuf>,
    /// Refuse to serve a Windows installer that cannot be signed.
    pub require_signed_installers: bool,
    /// Public base URL of this server for installers (default: from the request's Host).
    pub public_url: Option<String>,
    /// Roles whose users must sign in with a TOTP second factor. A user of such a role
    /// without one gets an enrol-only sign-in (it can enrol, read `me` and sign out).
    pub require_totp_roles: Vec<String>,
    /// A request head (the first on a connection, or the next on a kept-alive one) must
    /// arrive complete within this many seconds, or the connection is closed.
    pub header_read_timeout_secs: u64,
    /// Plain-HTTP connections allowed at once per source address (0: no cap); a
    /// WebSocket no longer counts once upgraded. Trusted proxies are exempt.
    pub max_connections_per_address: usize,
    /// Several instances on one database (`[cluster]`); unset: a single server.
    pub cluster: ClusterConfig,
}

/// `[cluster]`: instances that share one PostgreSQL database and a NATS server.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `nats://host:4222`: the session bus and presence; unset: no cluster.
    pub nats_url: Option<String>,
    /// This instance's name on the bus (default: a random one per start). Letters,
    /// digits, `-` and `_` only.
    pub instance_id: Option<String>,
    /// The cluster's name: the prefix of its NATS subjects, so that two clusters (say
    /// staging and production) can share one NATS server. Same on every instance.
    pub name: Option<String>,
}

impl ClusterConfig {
    /// Whether instances are clustered (a NATS URL is set).
    pub fn enabled(&self) -> bool {
        self.nats_url.as_deref().is_some_and(|u| !u.is_empty())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 3002)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_url_file: None,
            signing_secret: None,
            signing_secret_file: None,
            admin_password: None,
            admin_password_file: None,
            trusted_proxies: Vec::new(),
            max_body_bytes: 1024 * 1024,
            code_ttl_secs: 600,
            code_retention_secs: 30 * 24 * 3600,
            consent_timeout_secs: 60,
            shared_agent_key: None,
            shared_agent_key_file: None,
            shared_agent_key_mode: SharedKeyMode::Disabled,
            metrics_public: true,
            log_format: LogFormat::Text,
            console_dir: None,
            alert_webhook_url: None,
            alert_webhook_secret: None,
            alert_webhook_secret_file: None,
            offline_session_ttl_secs: 300,
            agent_binary_path: None,
            agent_windows_msi_path: None,
            agent_windows_exe_path: None,
            release_public_key: None,
            release_public_key_file: None,
            max_release_artifact_bytes: 512 * 1024 * 1024,
            max_file_transfer_bytes: 2 * 1024 * 1024 * 1024,
            recordings_dir: None,
            installer_signing_pkcs12: None,
            installer_signing_password: None,
            installer_signing_password_file: None,
            require_signed_installers: false,
            public_url: None,
            require_totp_roles: Vec::new(),
            header_read_timeout_secs: 15,
            max_connections_per_address: 256,
            cluster: ClusterConfig::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment did not parse.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A `*_file` secret could not be read.
    #[error("cannot read {field} from {path}: {source}")]
    SecretFile {
        /// Field name.
        field: &'static str,
        /// Path tried.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The signing secret is too short.
    #[error(
        "signing_secret is {0} bytes; at least {MIN_SIGNING_SECRET_BYTES} are required \
         (generate one with: openssl rand -hex 32)"
    )]
    WeakSigningSecret(usize),
}

impl Config {
    /// Loads defaults, then `file` (if it exists), then `GURUCONNECT_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        // Variables meant for tests or other tools are not config keys; skip them.
        // `GURUCONNECT_CLUSTER__NATS_URL` sets `cluster.nats_url`.
        let env = Env::prefixed("GURUCONNECT_")
            .filter(|key| !key.as_str().starts_with("test_") && key.as_str() != "config")
            .split("__");
        figment = figment.merge(env);
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.resolve_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        // Not a secret, but read the same way.
        if self.release_public_key.is_none()
            && let Some(path) = &self.release_public_key_file
        {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                field: "release_public_key",
                path: path.clone(),
                source,
            })?;
            self.release_public_key = Some(text.trim().to_owned());
        }
        fn read(
            field: &'static str,
            value: &mut Option<SecretString>,
            file: &Option<PathBuf>,
        ) -> Result<(), ConfigError> {
            if value.is_none()
                && let Some(path) = file
            {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                        field,
                        path: path.clone(),
                        source,
                    })?;
                *value = Some(SecretString::from(
                    text.trim_end_matches(['\n', '\r']).to_owned(),
                ));
            }
            Ok(())
        }
        read(
            "database_url",
            &mut self.database_url,
            &self.database_url_file,
        )?;
        read(
            "signing_secret",
            &mut self.signing_secret,
            &self.signing_secret_file,
        )?;
        read(
            "admin_password",
            &mut self.admin_password,
            &self.admin_password_file,
        )?;
        read(
            "shared_agent_key",
            &mut self.shared_agent_key,
            &self.shared_agent_key_file,
        )?;
        read(
            "alert_webhook_secret",
            &mut self.alert_webhook_secret,
            &self.alert_webhook_secret_file,
        )?;
        read(
            "installer_signing_password",
            &mut self.installer_signing_password,
            &self.installer_signing_password_file,
        )?;
        Ok(())
    }

    /// Checks invariants that make a configuration unusable (SPEC §4.12).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.signing_secret {
            let len = secret.expose_secret().len();
            if len < MIN_SIGNING_SECRET_BYTES {
                return Err(ConfigError::WeakSigningSecret(len));
            }
        }
        if let Some(bad) = self
            .require_totp_roles
            .iter()
            .find(|r| crate::auth::Role::parse(r).is_none())
        {
            return Err(ConfigError::Invalid(format!(
                "require_totp_roles: unknown role {bad:?} (expected admin, technician or viewer)"
            )));
        }
        if self.header_read_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "header_read_timeout_secs must be positive".into(),
            ));
        }
        if let Some(key) = &self.release_public_key
            && let Err(e) = guruconnect_release::parse_public_key(key)
        {
            return Err(ConfigError::Invalid(format!("release_public_key: {e}")));
        }
        for (key, value) in [
            ("cluster.instance_id", &self.cluster.instance_id),
            ("cluster.name", &self.cluster.name),
        ] {
            if let Some(id) = value
                && (id.is_empty()
                    || id.len() > 64
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            {
                return Err(ConfigError::Invalid(format!(
                    "{key} {id:?}: use 1-64 letters, digits, '-' or '_'"
                )));
            }
        }
        if self.cluster.enabled()
            && !self
                .database_url()
                .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid(
                "cluster.nats_url is set but database_url is not PostgreSQL: the instances of \
                 a cluster share one PostgreSQL database"
                    .into(),
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_body_bytes must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Whether users of `role` must sign in with a second factor.
    pub fn totp_required_for(&self, role: &str) -> bool {
        self.require_totp_roles.iter().any(|r| r == role)
    }

    /// The database URL to open: the configured one, or SQLite in the data directory.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url
            .as_ref()
            .map(|s| s.expose_secret())
            .filter(|s| !s.is_empty())
    }
}

/// A commented default configuration, printed by `guruconnect-server config`.
pub const DEFAULT_CONFIG_TOML: &str = r#"# GuruConnect server configuration.
# Precedence: built-in defaults < this file < GURUCONNECT_* environment variables
# (e.g. GURUCONNECT_BIND) < command-line flags. Every secret also has a *_file variant
# (e.g. GURUCONNECT_SIGNING_SECRET_FILE=/run/secrets/gc_signing).

# Address the HTTP server (API, WebSockets, console) listens on.
bind = "127.0.0.1:3002"

# Directory for the embedded SQLite database and the generated signing secret.
data_dir = "./data"

# PostgreSQL instead of the embedded database, e.g. "postgres://user:pass@db/guruconnect".
# database_url = ""

# JWT signing secret, at least 32 bytes. Generated into data_dir on first start when unset;
# set the same value on every instance of a cluster.
# signing_secret = ""

# Password of the `admin` user created on first start (printed once when unset).
# admin_password = ""

# Reverse proxies whose X-Forwarded-For header is trusted, as IPs or CIDR networks.
trusted_proxies = []

# Largest accepted HTTP request body, in bytes.
max_body_bytes = 1048576

# Lifetime of an unused support code, and the wait for the end user's consent, in seconds.
code_ttl_secs = 600
consent_timeout_secs = 60

# Finished support codes (used, expired or cancelled) are deleted this many seconds after
# they expire (default 30 days); the console lists codes a page at a time.
code_retention_secs = 2592000

# Legacy server-wide agent key (deprecated; every use is logged).
# Mode: "disabled", "enrollment_only" or "enabled".
# shared_agent_key = ""
shared_agent_key_mode = "disabled"

# Serve /metrics without authentication.
metrics_public = true

# "text" or "json".
log_format = "text"

# Serve the web console from a directory (development) instead of the embedded build.
# console_dir = "dashboard/dist"

# Alerts (new enrollment, site move, machine-uid collision) are recorded in the audit log
# and, when set, POSTed as JSON signed with HMAC-SHA256 (X-GuruConnect-Signature header).
# alert_webhook_url = "https://hooks.example.com/guruconnect"
# alert_webhook_secret = ""

# An offline managed session with no viewers is reaped after this many seconds.
offline_session_ttl_secs = 300

# Linux agent binary served to site installers at /download/guruconnect-agent.
# agent_binary_path = "/opt/guruconnect/guruconnect-agent"

# Windows agent MSI (scripts/windows/build-msi.sh) from which per-site MSIs are made, and
# the certificate that signs them (osslsigncode must be installed). With
# require_signed_installers, a Windows installer that cannot be signed is not served.
# agent_windows_msi_path = "/opt/guruconnect/guruconnect.msi"
# Agent updates: the public key of the offline release key pair (guruconnect-release
# keygen). Every release published here must be signed with it; unset disables updates.
# release_public_key = "gcrelpub1:…"
max_release_artifact_bytes = 536870912

# Largest file a technician may upload to or download from a machine (bytes).
max_file_transfer_bytes = 2147483648

# Where session recordings go (the policy is set in the console: Recordings); a volume of
# its own keeps a full disk from stopping the database. Default: <data_dir>/recordings.
# recordings_dir = "/var/lib/guruconnect/recordings"

# Windows agent .exe (scripts/windows/build-agent.sh; sign it first) that the join page
# offers customers for a support session; the download's name carries server and code.
# agent_windows_exe_path = "/opt/guruconnect/guruconnect-agent.exe"
# installer_signing_pkcs12 = "/etc/guruconnect/codesign.p12"
# installer_signing_password_file = "/etc/guruconnect/codesign.pass"
require_signed_installers = false

# Public URL of this server written into installers (default: taken from the request).
# public_url = "https://support.example.com"

# Roles whose users must sign in with a TOTP second factor, e.g. ["admin"]. A user of such
# a role who has not enrolled one gets a sign-in that can only enrol it (then sign in
# fully); an administrator can reset a user's second factor.
require_totp_roles = []

# Connections: a request head must arrive complete within header_read_timeout_secs
# (silent, slow and idle kept-alive connections are closed), and one address may hold at
# most max_connections_per_address plain-HTTP connections at once (0: no cap; upgraded
# WebSockets and trusted proxies do not count). At start the soft open-file limit is
# raised to the hard limit.
header_read_timeout_secs = 15
max_connections_per_address = 256

# Several instances behind a load balancer (docs/cluster.md): all share database_url
# (PostgreSQL) and signing_secret, and meet on one NATS server.
# [cluster]
# nats_url = "nats://127.0.0.1:4222"
# instance_id = "gc-a"
# name = "guruconnect"    # prefix of the NATS subjects; the same on every instance
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_needs_postgresql_and_plain_names() {
        let cluster = |db: Option<&str>, name: Option<&str>| Config {
            database_url: db.map(|d| SecretString::from(d.to_owned())),
            cluster: ClusterConfig {
                nats_url: Some("nats://127.0.0.1:4222".into()),
                instance_id: Some("gc-a".into()),
                name: name.map(str::to_owned),
            },
            ..Config::default()
        };
        let err = |c: Config| {
            c.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(cluster(None, None)).contains("PostgreSQL"));
        assert!(err(cluster(Some("sqlite://x.db"), None)).contains("PostgreSQL"));
        assert!(cluster(Some("postgres://db/gc"), None).validate().is_ok());
        assert!(err(cluster(Some("postgres://db/gc"), Some("a.b"))).contains("cluster.name"));
        // Without a NATS URL the section is inert.
        assert!(
            Config {
                cluster: ClusterConfig {
                    nats_url: None,
                    ..ClusterConfig::default()
                },
                ..Config::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn weak_signing_secret_is_refused() {
        let config = Config {
            signing_secret: Some(SecretString::from("too-short".to_owned())),
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::WeakSigningSecret(9))
        ));
    }

    #[test]
    fn default_config_text_parses_to_the_defaults() {
        let parsed: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(DEFAULT_CONFIG_TOML))
            .extract()
            .expect("default config parses");
        assert_eq!(parsed.bind, Config::default().bind);
        assert_eq!(parsed.code_ttl_secs, 600);
        assert_eq!(
            parsed.code_retention_secs,
            Config::default().code_retention_secs
        );
        assert_eq!(parsed.shared_agent_key_mode, SharedKeyMode::Disabled);
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let config = Config {
            signing_secret: Some(SecretString::from("x".repeat(40))),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains(&"x".repeat(40)));
    }
}
