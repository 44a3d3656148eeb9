//! Managed-mode configuration (`/etc/guruconnect/agent.toml`) and the per-agent key file.
//!
//! ```toml
//! server = "https://support.example.com"
//! key_file = "/etc/guruconnect/agent.key"
//! ```
//!
//! The key file holds the `cak_…` key and must be readable by its owner only (mode 0600 or
//! stricter); the agent refuses to start otherwise (SPEC §6).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default configuration path.
pub const DEFAULT_CONFIG: &str = "/etc/guruconnect/agent.toml";
/// Default key path.
pub const DEFAULT_KEY_FILE: &str = "/etc/guruconnect/agent.key";

/// The managed agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Server base URL (`https://…`).
    pub server: String,
    /// Path of the per-agent key file.
    pub key_file: PathBuf,
}

/// Configuration and key-file problems, with messages meant for the person installing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is invalid.
    #[error("invalid configuration {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file is readable by group or others.
    #[error(
        "the key file {path} is readable by group or others (mode {mode:04o}); \
         refusing to start: run `chmod 600 {path}`"
    )]
    KeyTooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is empty or not a per-agent key.
    #[error("the key file {path} does not hold a per-agent key (cak_…)")]
    BadKey {
        /// The file.
        path: PathBuf,
    },
}

impl AgentConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            reason: e.message().to_owned(),
        })?;
        if !(config.server.starts_with("https://") || config.server.starts_with("http://")) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                reason: "server must be an http:// or https:// URL".into(),
            });
        }
        Ok(config)
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// Checks that `path` is readable by its owner only.
pub fn check_key_permissions(path: &Path) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::KeyTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Reads the per-agent key after checking the file's permissions.
pub fn read_key(path: &Path) -> Result<String, ConfigError> {
    check_key_permissions(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let key = text.trim();
    if !key.starts_with("cak_") || key.len() < 8 || key.contains(char::is_whitespace) {
        return Err(ConfigError::BadKey {
            path: path.to_owned(),
        });
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(mode: u32, content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.key");
        std::fs::write(&path, content).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn owner_only_key_is_accepted() {
        let (_d, path) = key_file(0o600, "cak_0123456789abcdef\n");
        assert_eq!(read_key(&path).expect("key"), "cak_0123456789abcdef");
        let (_d, path) = key_file(0o400, "cak_0123456789abcdef");
        assert!(read_key(&path).is_ok());
    }

    #[test]
    fn group_or_world_readable_key_is_refused() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606, 0o610] {
            let (_d, path) = key_file(mode, "cak_0123456789abcdef");
            let err = read_key(&path).expect_err("must refuse");
            assert!(matches!(err, ConfigError::KeyTooOpen { .. }), "{mode:o}");
            let text = err.to_string();
            assert!(text.contains("readable by group or others"), "{text}");
            assert!(text.contains("chmod 600"), "{text}");
        }
    }

    #[test]
    fn missing_or_bad_key_is_refused() {
        let (_d, path) = key_file(0o600, "not a key");
        assert!(matches!(read_key(&path), Err(ConfigError::BadKey { .. })));
        let (_d, path) = key_file(0o600, "");
        assert!(matches!(read_key(&path), Err(ConfigError::BadKey { .. })));
        assert!(matches!(
            read_key(Path::new("/nonexistent/agent.key")),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn config_round_trips() {
        let config = AgentConfig {
            server: "https://relay.example".into(),
            key_file: "/etc/guruconnect/agent.key".into(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config.to_toml()).expect("write");
        assert_eq!(AgentConfig::load(&path).expect("load"), config);
        std::fs::write(&path, "server = \"ftp://x\"\nkey_file = \"/k\"\n").expect("write");
        assert!(AgentConfig::load(&path).is_err());
    }
}
