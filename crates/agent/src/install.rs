//! `install` / `uninstall`: the systemd service for managed mode.
//!
//! `install` copies this binary to `/usr/local/bin/guruconnect-agent`, writes
//! `/etc/guruconnect/agent.toml` and `/etc/systemd/system/guruconnect-agent.service`, then
//! runs `systemctl daemon-reload` and `systemctl enable --now`. With `--root DIR` every path
//! is under `DIR` and systemctl is not run (packaging and tests).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{AgentConfig, DEFAULT_CONFIG, DEFAULT_KEY_FILE, check_key_permissions};

/// Unit path (relative to the root).
pub const UNIT_PATH: &str = "etc/systemd/system/guruconnect-agent.service";
/// Installed binary path (relative to the root).
pub const BIN_PATH: &str = "usr/local/bin/guruconnect-agent";
/// Service name.
pub const SERVICE: &str = "guruconnect-agent.service";

/// What to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Server URL.
    pub server: String,
    /// Key file path (as seen on the target system).
    pub key_file: PathBuf,
    /// Install under this directory instead of `/` (no systemctl).
    pub root: Option<PathBuf>,
    /// X display the service captures.
    pub display: String,
}

fn under(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

/// The unit file text.
pub fn unit_text(display: &str) -> String {
    format!(
        "# Installed by guruconnect-agent install; removed by guruconnect-agent uninstall.\n\
         [Unit]\n\
         Description=GuruConnect remote support agent\n\
         Wants=network-online.target\n\
         After=network-online.target graphical.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         Environment=DISPLAY={display}\n\
         ExecStart=/{BIN_PATH} run --config {DEFAULT_CONFIG}\n\
         Restart=always\n\
         RestartSec=10\n\
         UMask=0077\n\
         \n\
         [Install]\n\
         WantedBy=graphical.target\n"
    )
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("running systemctl {}", args.join(" ")))?;
    anyhow::ensure!(
        status.success(),
        "systemctl {} failed: {status}",
        args.join(" ")
    );
    Ok(())
}

fn have_systemctl() -> bool {
    std::process::Command::new("systemctl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the service.
pub fn install(options: &InstallOptions) -> anyhow::Result<()> {
    let root = options.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let key_on_disk = match &options.root {
        Some(_) => under(&root, &options.key_file.to_string_lossy()),
        None => options.key_file.clone(),
    };
    if key_on_disk.exists() {
        check_key_permissions(&key_on_disk)?;
    } else {
        tracing::warn!(path = %options.key_file.display(), "the key file does not exist yet; write the per-agent key there (mode 0600) before the service starts");
    }
    let config = AgentConfig {
        server: options.server.clone(),
        key_file: options.key_file.clone(),
    };
    let config_path = under(&root, DEFAULT_CONFIG);
    let unit_path = root.join(UNIT_PATH);
    let bin_path = root.join(BIN_PATH);
    for path in [&config_path, &unit_path, &bin_path] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    if exe.canonicalize().ok() != bin_path.canonicalize().ok() {
        std::fs::copy(&exe, &bin_path)
            .with_context(|| format!("copying the agent to {}", bin_path.display()))?;
    }
    std::fs::write(&config_path, config.to_toml())
        .with_context(|| format!("writing {}", config_path.display()))?;
    std::fs::write(&unit_path, unit_text(&options.display))
        .with_context(|| format!("writing {}", unit_path.display()))?;
    println!("installed {}", unit_path.display());
    println!("wrote {}", config_path.display());
    if options.root.is_none() {
        if have_systemctl() {
            systemctl(&["daemon-reload"])?;
            systemctl(&["enable", "--now", SERVICE])?;
            println!("enabled and started {SERVICE}");
        } else {
            println!(
                "systemctl not found: start `{} run` yourself",
                bin_path.display()
            );
        }
    }
    Ok(())
}

/// Removes the service, its configuration and the installed binary (the key file stays).
pub fn uninstall(root: Option<&Path>) -> anyhow::Result<()> {
    if root.is_none() && have_systemctl() {
        // The unit may already be gone; disabling is best effort.
        let _ = systemctl(&["disable", "--now", SERVICE]);
    }
    let base = root.map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    for path in [
        base.join(UNIT_PATH),
        under(&base, DEFAULT_CONFIG),
        base.join(BIN_PATH),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    if root.is_none() && have_systemctl() {
        let _ = systemctl(&["daemon-reload"]);
    }
    Ok(())
}

/// Default key file (for the CLI).
pub fn default_key_file() -> PathBuf {
    PathBuf::from(DEFAULT_KEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn install_under_root_writes_unit_config_and_binary_then_uninstall_removes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = InstallOptions {
            server: "https://relay.example".into(),
            key_file: "/etc/guruconnect/agent.key".into(),
            root: Some(dir.path().to_owned()),
            display: ":0".into(),
        };
        install(&options).expect("install");
        let unit = std::fs::read_to_string(dir.path().join(UNIT_PATH)).expect("unit");
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/guruconnect-agent run --config /etc/guruconnect/agent.toml"
        ));
        assert!(unit.contains("Restart=always"));
        assert!(unit.contains("Environment=DISPLAY=:0"));
        assert!(unit.contains("WantedBy="));
        let config =
            AgentConfig::load(&dir.path().join("etc/guruconnect/agent.toml")).expect("config");
        assert_eq!(config.server, "https://relay.example");
        assert_eq!(config.key_file, PathBuf::from("/etc/guruconnect/agent.key"));
        assert!(dir.path().join(BIN_PATH).is_file());

        uninstall(Some(dir.path())).expect("uninstall");
        assert!(!dir.path().join(UNIT_PATH).exists());
        assert!(!dir.path().join("etc/guruconnect/agent.toml").exists());
        assert!(!dir.path().join(BIN_PATH).exists());
    }

    #[test]
    fn install_refuses_an_open_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("etc/guruconnect/agent.key");
        std::fs::create_dir_all(key.parent().expect("parent")).expect("mkdir");
        std::fs::write(&key, "cak_0123456789").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let options = InstallOptions {
            server: "https://relay.example".into(),
            key_file: "/etc/guruconnect/agent.key".into(),
            root: Some(dir.path().to_owned()),
            display: ":0".into(),
        };
        let err = install(&options).expect_err("must refuse");
        assert!(
            err.to_string().contains("readable by group or others"),
            "{err}"
        );
        assert!(!dir.path().join(UNIT_PATH).exists());
    }
}
