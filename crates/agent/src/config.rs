//! Managed-mode configuration (`/etc/guruconnect/agent.toml`) and the per-agent key file.
//!
//! ```toml
//! server = "https://support.example.com"
//! key_file = "/etc/guruconnect/agent.key"
//! # Zero-touch enrollment (written by the site installer): with no key file yet, the
//! # agent enrolls with these and stores the per-agent key it is given.
//! site_code = "NEW-YORK"
//! enrollment_key = "gce_…"
//! [labels]
//! company = "Acme"
//! tags = ["front-desk"]
//! # Self-update: the release public key updates are verified with (none: no updates).
//! release_public_key = "gcrelpub1:…"
//! # Remote terminals run as this account (none: no terminal, as the agent runs as root).
//! terminal_user = "support"
//! ```
//!
//! The key file holds the `cak_…` key and must be readable by its owner only (mode 0600 or
//! stricter); the agent refuses to start otherwise (SPEC §6). A configuration that holds a
//! secret (`enrollment_key`, `shared_key`) must be owner-only as well.
//!
//! On Windows both live under `%ProgramData%\GuruConnect` (`C:\ProgramData\GuruConnect`),
//! a directory only SYSTEM and Administrators may open, and the keys are DPAPI-protected
//! there (`platform::windows::keystore`): [`store_key`] writes the protected format,
//! [`read_key`] reads it (and rewrites a key file in the old plain format protected), and
//! [`check_key_permissions`] (re)applies the private ACL instead of checking a file mode.
//! The enrollment key is not kept in `agent.toml` there: `guruconnect-agent configure`
//! writes it protected to [`ENROLLMENT_KEY_FILE`] beside the key file, [`AgentConfig::load`]
//! reads it back, and [`AgentConfig::forget_enrollment_key`] deletes it once the relay has
//! accepted the per-agent key. (A hand-written `agent.toml` with an inline `enrollment_key`
//! still works, with a warning.)

#[cfg(unix)]
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default configuration path.
#[cfg(not(windows))]
pub const DEFAULT_CONFIG: &str = "/etc/guruconnect/agent.toml";
/// Default key path.
#[cfg(not(windows))]
pub const DEFAULT_KEY_FILE: &str = "/etc/guruconnect/agent.key";
/// Default configuration path (`%ProgramData%\GuruConnect`).
#[cfg(windows)]
pub const DEFAULT_CONFIG: &str = r"C:\ProgramData\GuruConnect\agent.toml";
/// Default key path (`%ProgramData%\GuruConnect`).
#[cfg(windows)]
pub const DEFAULT_KEY_FILE: &str = r"C:\ProgramData\GuruConnect\agent.key";

/// The protected enrollment key's file name, beside the key file (Windows).
pub const ENROLLMENT_KEY_FILE: &str = "enroll.key";

/// The managed agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Server base URL (`https://…`).
    pub server: String,
    /// Path of the per-agent key file.
    pub key_file: PathBuf,
    /// Site code for zero-touch enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_code: Option<String>,
    /// The site's enrollment key (`gce_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_key: Option<String>,
    /// Legacy server-wide shared agent key: used only while there is no key file, and
    /// exchanged for a per-agent key on first contact (trust on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_key: Option<String>,
    /// The release public key (`gcrelpub1:…`) this agent verifies updates with (SPEC
    /// §4.15). Without it the agent never updates itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_public_key: Option<String>,
    /// The account a technician's remote terminal runs as. The managed agent runs as root,
    /// so without this no terminal starts; `root` must be named to allow a root shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_user: Option<String>,
    /// Labels sent with the enrollment.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// Labels an enrolling machine asks for; an administrator may change them later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    /// Company (customer) name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    /// Department.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    /// Device type (desktop, laptop, server…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Labels {
    /// True when no label is set.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
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
    /// A protected secret file cannot be decrypted (Windows: changed, or from another
    /// machine).
    #[error("the secret file {path} is unusable: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Why, for the person installing.
        reason: String,
    },
}

impl AgentConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        #[allow(unused_mut)] // Windows fills in the protected enrollment key.
        let mut config: Self = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            reason: e.message().to_owned(),
        })?;
        #[cfg(windows)]
        let inline_secret = config.enrollment_key.is_some() || config.shared_key.is_some();
        #[cfg(windows)]
        if config.site_code.is_some() && config.enrollment_key.is_none() {
            config.enrollment_key = read_enrollment_key(&config.enrollment_key_file())?;
        }
        let invalid = |reason: &str| ConfigError::Invalid {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if !(config.server.starts_with("https://") || config.server.starts_with("http://")) {
            return Err(invalid("server must be an http:// or https:// URL"));
        }
        // On Windows a site code without an enrollment key is an enrolled machine whose
        // `enroll.key` was deleted once it had its own key.
        let orphan_site_code = cfg!(windows) && config.site_code.is_some();
        if config.site_code.is_some() != config.enrollment_key.is_some() && !orphan_site_code {
            return Err(invalid(
                "site_code and enrollment_key go together: set both or neither",
            ));
        }
        if config
            .enrollment_key
            .as_deref()
            .is_some_and(|k| !k.starts_with("gce_"))
        {
            return Err(invalid(
                "enrollment_key is not a GuruConnect enrollment key (gce_…)",
            ));
        }
        if let Some(key) = &config.release_public_key
            && let Err(e) = guruconnect_release::parse_public_key(key)
        {
            return Err(invalid(&format!("release_public_key: {e}")));
        }
        #[cfg(not(windows))]
        if config.enrollment_key.is_some() || config.shared_key.is_some() {
            // The file carries a secret: same rule as the key file.
            check_key_permissions(path)?;
        }
        #[cfg(windows)]
        if inline_secret {
            tracing::warn!(
                config = %path.display(),
                "this configuration holds a secret in plain text; `guruconnect-agent \
                 configure` stores the enrollment key DPAPI-protected instead"
            );
        }
        Ok(config)
    }

    /// Where the protected enrollment key lives: [`ENROLLMENT_KEY_FILE`] beside the key
    /// file (Windows; elsewhere the key stays in the configuration).
    pub fn enrollment_key_file(&self) -> PathBuf {
        self.key_file.with_file_name(ENROLLMENT_KEY_FILE)
    }

    /// Called once the relay has accepted the per-agent key: on Windows the protected
    /// enrollment key is no longer needed and is deleted. Elsewhere it does nothing (the
    /// enrollment key is part of the configuration there).
    pub fn forget_enrollment_key(&self) {
        #[cfg(windows)]
        {
            let path = self.enrollment_key_file();
            if path.exists() {
                match crate::platform::windows::keystore::remove_secret(&path) {
                    Ok(()) => tracing::info!(
                        file = %path.display(),
                        "this machine has its own key; removed the enrollment key"
                    ),
                    Err(e) => tracing::warn!(
                        file = %path.display(),
                        "cannot remove the enrollment key, no longer needed: {e}"
                    ),
                }
            }
        }
    }

    /// True when the configuration can enroll this machine.
    pub fn can_enroll(&self) -> bool {
        self.site_code.is_some() && self.enrollment_key.is_some()
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// Reads the protected enrollment key (Windows): `None` when the file is missing.
#[cfg(windows)]
fn read_enrollment_key(path: &Path) -> Result<Option<String>, ConfigError> {
    use crate::platform::windows::keystore::{self, Secret, SecretError};
    match keystore::read_secret(path) {
        Ok(Secret::Protected(key)) => Ok(Some(key)),
        Ok(Secret::Plain(_)) => Err(ConfigError::Damaged {
            path: path.to_owned(),
            reason: "it is not DPAPI-protected; run `guruconnect-agent configure` again".into(),
        }),
        Err(SecretError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(SecretError::Io(source)) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
        Err(e) => Err(ConfigError::Damaged {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Writes a per-agent key atomically, readable by its owner only, creating the directory
/// (owner-only too) when it is missing. On Windows: DPAPI-protected, with a DACL for
/// SYSTEM and Administrators only.
pub fn store_key(path: &Path, key: &str) -> std::io::Result<()> {
    #[cfg(windows)]
    {
        crate::platform::windows::keystore::write_secret(path, key)
    }
    #[cfg(not(windows))]
    store_plain_key(path, key)
}

#[cfg(not(windows))]
fn store_plain_key(path: &Path, key: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        builder.mode(0o700);
        builder.create(dir)?;
    }
    let tmp = path.with_extension("key.new");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(key.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Checks that `path` is readable by its owner only. On Windows: that it exists, and its
/// DACL is (re)set to SYSTEM and Administrators only (a failure to set it is logged: Wine,
/// or a file on a share).
pub fn check_key_permissions(path: &Path) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    #[cfg(windows)]
    {
        let _ = meta;
        if let Err(e) = crate::platform::windows::keystore::restrict(path) {
            tracing::warn!("{e}");
        }
        Ok(())
    }
    #[cfg(not(windows))]
    check_mode(path, &meta)
}

#[cfg(not(windows))]
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), ConfigError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::KeyTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn plausible_key(key: &str) -> bool {
    key.starts_with("cak_") && key.len() >= 8 && !key.contains(char::is_whitespace)
}

/// Reads the per-agent key after checking the file's permissions. On Windows the file is
/// DPAPI-protected; one in the old plain format is accepted once and rewritten protected.
#[cfg(windows)]
pub fn read_key(path: &Path) -> Result<String, ConfigError> {
    use crate::platform::windows::keystore::{self, Secret, SecretError};
    let secret = keystore::read_secret(path).map_err(|e| match e {
        SecretError::Io(source) => ConfigError::Read {
            path: path.to_owned(),
            source,
        },
        other => ConfigError::Damaged {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })?;
    let (key, plain) = match secret {
        Secret::Protected(key) => (key, false),
        Secret::Plain(key) => (key, true),
    };
    if !plausible_key(&key) {
        return Err(ConfigError::BadKey {
            path: path.to_owned(),
        });
    }
    if plain {
        match keystore::write_secret(path, &key) {
            Ok(()) => tracing::info!(
                key_file = %path.display(),
                "the key file was in the old plain-text format; it is now DPAPI-protected"
            ),
            Err(e) => tracing::warn!(
                key_file = %path.display(),
                "the key file is in plain text and cannot be rewritten protected: {e}"
            ),
        }
    } else {
        check_key_permissions(path)?;
    }
    Ok(key)
}

/// Reads the per-agent key after checking the file's permissions.
#[cfg(not(windows))]
pub fn read_key(path: &Path) -> Result<String, ConfigError> {
    check_key_permissions(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let key = text.trim();
    if !plausible_key(key) {
        return Err(ConfigError::BadKey {
            path: path.to_owned(),
        });
    }
    Ok(key.to_owned())
}

#[cfg(all(test, unix))]
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
            site_code: None,
            enrollment_key: None,
            shared_key: None,
            release_public_key: None,
            terminal_user: None,
            labels: Labels::default(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config.to_toml()).expect("write");
        assert_eq!(AgentConfig::load(&path).expect("load"), config);
        std::fs::write(&path, "server = \"ftp://x\"\nkey_file = \"/k\"\n").expect("write");
        assert!(AgentConfig::load(&path).is_err());
    }

    #[test]
    fn a_release_public_key_must_be_one() {
        let key = guruconnect_release::generate_key();
        let public = guruconnect_release::public_key_text(&key.verifying_key());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        let text = format!(
            "server = \"https://r\"\nkey_file = \"/k\"\nrelease_public_key = \"{public}\"\n"
        );
        std::fs::write(&path, text).expect("write");
        let config = AgentConfig::load(&path).expect("load");
        assert_eq!(config.release_public_key.as_deref(), Some(public.as_str()));
        let private = guruconnect_release::private_key_text(&key);
        let text = format!(
            "server = \"https://r\"\nkey_file = \"/k\"\nrelease_public_key = \"{private}\"\n"
        );
        std::fs::write(&path, text).expect("write");
        let err = AgentConfig::load(&path).expect_err("a private key is not a public key");
        assert!(err.to_string().contains("release_public_key"), "{err}");
    }

    fn write_config(mode: u32, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn site_configuration_from_the_installer_loads() {
        // The shape the site installer writes, labels table included.
        let text = "server = \"http://127.0.0.1:3002\"\nsite_code = \"HQ\"\n\
                    enrollment_key = \"gce_abc\"\nkey_file = \"/etc/guruconnect/agent.key\"\n\
                    [labels]\ncompany = \"Acme\"\ntags = [\"a\", \"b\"]\n";
        let (_d, path) = write_config(0o600, text);
        let config = AgentConfig::load(&path).expect("load");
        assert!(config.can_enroll());
        assert_eq!(config.labels.company.as_deref(), Some("Acme"));
        assert_eq!(config.labels.tags, ["a", "b"]);
        assert_eq!(AgentConfig::load(&path).expect("reload"), config);
        // An empty [labels] table is what the installer writes when no label is given.
        let (_d, path) = write_config(
            0o600,
            "server = \"http://h\"\nsite_code = \"HQ\"\nenrollment_key = \"gce_x\"\nkey_file = \"/k\"\n[labels]\n",
        );
        assert!(AgentConfig::load(&path).expect("load").labels.is_empty());
    }

    #[test]
    fn a_configuration_with_a_secret_must_be_owner_only() {
        let text = "server = \"http://h\"\nsite_code = \"HQ\"\nenrollment_key = \"gce_x\"\nkey_file = \"/k\"\n";
        let (_d, path) = write_config(0o644, text);
        assert!(matches!(
            AgentConfig::load(&path),
            Err(ConfigError::KeyTooOpen { .. })
        ));
        // Without a secret the file may be world-readable.
        let (_d, path) = write_config(0o644, "server = \"http://h\"\nkey_file = \"/k\"\n");
        assert!(AgentConfig::load(&path).is_ok());
    }

    #[test]
    fn half_an_enrollment_or_a_foreign_key_is_refused() {
        for text in [
            "server = \"http://h\"\nsite_code = \"HQ\"\nkey_file = \"/k\"\n",
            "server = \"http://h\"\nsite_code = \"HQ\"\nenrollment_key = \"cak_x\"\nkey_file = \"/k\"\n",
        ] {
            let (_d, path) = write_config(0o600, text);
            assert!(
                matches!(AgentConfig::load(&path), Err(ConfigError::Invalid { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn stored_keys_are_owner_only_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("etc/guruconnect/agent.key");
        store_key(&path, "cak_first").expect("store");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("parent"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(read_key(&path).expect("read"), "cak_first");
        store_key(&path, "cak_second").expect("replace");
        assert_eq!(read_key(&path).expect("read"), "cak_second");
    }
}

#[cfg(all(test, windows))]
mod windows_tests {
    use super::*;
    use crate::platform::windows::keystore::MAGIC;

    const KEY: &str = "cak_0123456789abcdef0123456789abcdef";

    #[test]
    fn stored_keys_are_protected_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("GuruConnect").join("agent.key");
        store_key(&path, KEY).expect("store");
        let bytes = std::fs::read(&path).expect("read");
        assert!(bytes.starts_with(MAGIC));
        assert!(!bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()));
        check_key_permissions(&path).expect("permissions");
        assert_eq!(read_key(&path).expect("read"), KEY);
    }

    #[test]
    fn a_plain_key_file_is_read_once_and_rewritten_protected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.key");
        std::fs::write(&path, format!("{KEY}\n")).expect("write");
        assert_eq!(read_key(&path).expect("read"), KEY);
        let bytes = std::fs::read(&path).expect("read");
        assert!(bytes.starts_with(MAGIC), "rewritten protected");
        assert_eq!(read_key(&path).expect("read again"), KEY);
        // A plain file that is not a key is still refused.
        std::fs::write(&path, "not a key").expect("write");
        assert!(matches!(read_key(&path), Err(ConfigError::BadKey { .. })));
    }

    #[test]
    fn a_changed_key_file_is_refused_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.key");
        store_key(&path, KEY).expect("store");
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let err = read_key(&path).expect_err("refused");
        assert!(matches!(err, ConfigError::Damaged { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("agent.key"), "{text}");
        assert!(text.contains("cannot be decrypted"), "{text}");
        assert!(!text.contains(KEY), "{text}");
    }

    #[test]
    fn the_enrollment_key_comes_from_its_protected_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("agent.key");
        let config_path = dir.path().join("agent.toml");
        let config = AgentConfig {
            server: "https://relay.example".into(),
            key_file: key_file.clone(),
            site_code: Some("HQ".into()),
            enrollment_key: None,
            shared_key: None,
            release_public_key: None,
            terminal_user: None,
            labels: Labels::default(),
        };
        std::fs::write(&config_path, config.to_toml()).expect("write");
        // No enroll.key: an enrolled machine; it loads, and cannot enroll again.
        let loaded = AgentConfig::load(&config_path).expect("load");
        assert!(!loaded.can_enroll());
        crate::platform::windows::keystore::write_secret(
            &config.enrollment_key_file(),
            "gce_site_key",
        )
        .expect("store");
        let loaded = AgentConfig::load(&config_path).expect("load");
        assert_eq!(loaded.enrollment_key.as_deref(), Some("gce_site_key"));
        assert!(loaded.can_enroll());
        loaded.forget_enrollment_key();
        assert!(!config.enrollment_key_file().exists());
        // A plain enroll.key is refused with a message that says what to do.
        std::fs::write(config.enrollment_key_file(), "gce_plain").expect("write");
        let err = AgentConfig::load(&config_path).expect_err("plain");
        assert!(err.to_string().contains("configure"), "{err}");
    }
}
