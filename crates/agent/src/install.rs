//! `install` / `uninstall`: the systemd service for managed mode.
//!
//! `install` copies this binary to `--bin` (default `/usr/local/bin/guruconnect-agent`),
//! writes the configuration (`--config`, default `/etc/guruconnect/agent.toml`) when
//! `--server` is given or keeps the one already there (the site installer writes it), and
//! writes `/etc/systemd/system/guruconnect-agent.service`, then runs `systemctl
//! daemon-reload` and `systemctl enable --now`. With `--root DIR` every path is under `DIR`
//! and systemctl is not run (packaging and tests). `uninstall` reads the paths back from
//! the unit.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{AgentConfig, DEFAULT_CONFIG, DEFAULT_KEY_FILE, Labels, check_key_permissions};

/// Unit path (relative to the root).
pub const UNIT_PATH: &str = "etc/systemd/system/guruconnect-agent.service";
/// Default installed binary path.
pub const DEFAULT_BIN: &str = "/usr/local/bin/guruconnect-agent";
/// Service name.
pub const SERVICE: &str = "guruconnect-agent.service";

/// What to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Server URL: write a fresh configuration for it. `None` keeps the configuration
    /// already at `config` (it must exist).
    pub server: Option<String>,
    /// Key file path written into a fresh configuration.
    pub key_file: PathBuf,
    /// Configuration path (as seen on the target system).
    pub config: PathBuf,
    /// Installed binary path (as seen on the target system).
    pub bin: PathBuf,
    /// Install under this directory instead of `/` (no systemctl).
    pub root: Option<PathBuf>,
    /// X display the service captures.
    pub display: String,
    /// X authority file for that display (`XAUTHORITY`), when the X server requires one.
    pub xauthority: Option<PathBuf>,
    /// Release public key written into a fresh configuration (self-update verification).
    pub release_public_key: Option<String>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            server: None,
            key_file: DEFAULT_KEY_FILE.into(),
            config: DEFAULT_CONFIG.into(),
            bin: DEFAULT_BIN.into(),
            root: None,
            display: ":0".into(),
            xauthority: None,
            release_public_key: None,
        }
    }
}

fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The unit file text.
pub fn unit_text(bin: &Path, config: &Path, display: &str, xauthority: Option<&Path>) -> String {
    let xauthority = xauthority
        .map(|p| format!("Environment=XAUTHORITY={}\n", p.display()))
        .unwrap_or_default();
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
         {xauthority}\
         ExecStart={} run --config {}\n\
         Restart=always\n\
         RestartSec=10\n\
         UMask=0077\n\
         \n\
         [Install]\n\
         WantedBy=graphical.target\n",
        bin.display(),
        config.display(),
    )
}

/// The binary and configuration paths of an installed unit.
fn paths_from_unit(unit: &str) -> Option<(PathBuf, PathBuf)> {
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart="))?;
    let words: Vec<&str> = exec.split_whitespace().collect();
    match words.as_slice() {
        [bin, "run", "--config", config] => Some((bin.into(), config.into())),
        _ => None,
    }
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

fn check_paths(options: &InstallOptions) -> anyhow::Result<()> {
    let mut paths = vec![("--config", &options.config), ("--bin", &options.bin)];
    if let Some(xauthority) = &options.xauthority {
        paths.push(("--xauthority", xauthority));
    }
    for (what, path) in paths {
        anyhow::ensure!(
            path.is_absolute(),
            "{what} must be an absolute path, not {}",
            path.display()
        );
        anyhow::ensure!(
            !path.to_string_lossy().contains(char::is_whitespace),
            "{what} must not contain spaces: {}",
            path.display()
        );
    }
    Ok(())
}

/// Installs the service.
pub fn install(options: &InstallOptions) -> anyhow::Result<()> {
    check_paths(options)?;
    let root = options.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let config_path = under(&root, &options.config);
    let release_public_key = options
        .release_public_key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty());
    if let Some(key) = release_public_key {
        guruconnect_release::parse_public_key(key)
            .context("--release-public-key is not a GuruConnect release public key")?;
    }
    let config = match &options.server {
        Some(server) => AgentConfig {
            server: server.clone(),
            key_file: options.key_file.clone(),
            site_code: None,
            enrollment_key: None,
            shared_key: None,
            release_public_key: release_public_key.map(str::to_owned),
            terminal_user: None,
            labels: Labels::default(),
        },
        None => AgentConfig::load(&config_path).with_context(|| {
            format!(
                "give --server URL, or write the configuration to {} first",
                config_path.display()
            )
        })?,
    };
    let key_on_disk = under(&root, &config.key_file);
    if key_on_disk.exists() {
        check_key_permissions(&key_on_disk)?;
    } else if config.can_enroll() || config.shared_key.is_some() {
        println!(
            "the agent enrolls on its first start and stores its key in {}",
            config.key_file.display()
        );
    } else {
        tracing::warn!(path = %config.key_file.display(), "the key file does not exist yet; write the per-agent key there (mode 0600) before the service starts");
    }
    let unit_path = root.join(UNIT_PATH);
    let bin_path = under(&root, &options.bin);
    for path in [&config_path, &unit_path, &bin_path] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    if exe.canonicalize().ok() != bin_path.canonicalize().ok() {
        // Copy beside the target and rename: a running copy of the agent keeps working.
        let staged = bin_path.with_extension("new");
        std::fs::copy(&exe, &staged)
            .and_then(|_| std::fs::rename(&staged, &bin_path))
            .with_context(|| format!("copying the agent to {}", bin_path.display()))?;
    }
    if options.server.is_some() {
        std::fs::write(&config_path, config.to_toml())
            .with_context(|| format!("writing {}", config_path.display()))?;
        println!("wrote {}", config_path.display());
    }
    std::fs::write(
        &unit_path,
        unit_text(
            &options.bin,
            &options.config,
            &options.display,
            options.xauthority.as_deref(),
        ),
    )
    .with_context(|| format!("writing {}", unit_path.display()))?;
    println!("installed {}", unit_path.display());
    if options.root.is_none() {
        if have_systemctl() {
            systemctl(&["daemon-reload"])?;
            systemctl(&["enable", "--now", SERVICE])?;
            println!("enabled and started {SERVICE}");
        } else {
            println!(
                "systemctl not found: start `{} run --config {}` yourself",
                options.bin.display(),
                options.config.display()
            );
        }
    }
    Ok(())
}

/// Removes the service, its configuration and the installed binary (the key file stays,
/// so a reinstall keeps the machine's identity and key).
pub fn uninstall(root: Option<&Path>) -> anyhow::Result<()> {
    if root.is_none() && have_systemctl() {
        // The unit may already be gone; disabling is best effort.
        let _ = systemctl(&["disable", "--now", SERVICE]);
    }
    let base = root.map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let unit_path = base.join(UNIT_PATH);
    let (bin, config) = std::fs::read_to_string(&unit_path)
        .ok()
        .and_then(|u| paths_from_unit(&u))
        .unwrap_or_else(|| (DEFAULT_BIN.into(), DEFAULT_CONFIG.into()));
    for path in [unit_path, under(&base, &config), under(&base, &bin)] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn install_under_root_writes_unit_config_and_binary_then_uninstall_removes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let release_key = guruconnect_release::public_key_text(
            &guruconnect_release::generate_key().verifying_key(),
        );
        let bad_key = InstallOptions {
            server: Some("https://relay.example".into()),
            root: Some(dir.path().to_owned()),
            release_public_key: Some("gcrelpub1:nope".into()),
            ..InstallOptions::default()
        };
        assert!(
            install(&bad_key).is_err(),
            "a malformed release key is refused"
        );
        let options = InstallOptions {
            server: Some("https://relay.example".into()),
            root: Some(dir.path().to_owned()),
            release_public_key: Some(release_key.clone()),
            ..InstallOptions::default()
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
        assert_eq!(config.release_public_key, Some(release_key));
        assert!(dir.path().join("usr/local/bin/guruconnect-agent").is_file());

        uninstall(Some(dir.path())).expect("uninstall");
        assert!(!dir.path().join(UNIT_PATH).exists());
        assert!(!dir.path().join("etc/guruconnect/agent.toml").exists());
        assert!(!dir.path().join("usr/local/bin/guruconnect-agent").exists());
    }

    #[test]
    fn install_keeps_a_site_configuration_and_uses_the_given_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("etc/gc");
        std::fs::create_dir_all(&etc).expect("mkdir");
        let site_config = "server = \"http://127.0.0.1:3002\"\nsite_code = \"HQ\"\n\
                           enrollment_key = \"gce_k\"\nkey_file = \"/etc/gc/agent.key\"\n";
        std::fs::write(etc.join("agent.toml"), site_config).expect("write");
        std::fs::set_permissions(
            etc.join("agent.toml"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        let options = InstallOptions {
            config: "/etc/gc/agent.toml".into(),
            bin: "/opt/gc/guruconnect-agent".into(),
            root: Some(dir.path().to_owned()),
            xauthority: Some("/run/user/1000/gdm/Xauthority".into()),
            ..InstallOptions::default()
        };
        install(&options).expect("install");
        let unit = std::fs::read_to_string(dir.path().join(UNIT_PATH)).expect("unit");
        assert!(
            unit.contains("Environment=XAUTHORITY=/run/user/1000/gdm/Xauthority\n"),
            "{unit}"
        );
        assert!(
            unit.contains("ExecStart=/opt/gc/guruconnect-agent run --config /etc/gc/agent.toml"),
            "{unit}"
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("agent.toml")).expect("config"),
            site_config,
            "the site configuration is kept as written"
        );
        assert!(dir.path().join("opt/gc/guruconnect-agent").is_file());
        uninstall(Some(dir.path())).expect("uninstall");
        assert!(!dir.path().join("opt/gc/guruconnect-agent").exists());
        assert!(!etc.join("agent.toml").exists());
    }

    #[test]
    fn install_without_server_needs_a_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = InstallOptions {
            root: Some(dir.path().to_owned()),
            ..InstallOptions::default()
        };
        let err = install(&options).expect_err("no configuration");
        assert!(format!("{err:#}").contains("give --server URL"), "{err:#}");
        let relative = InstallOptions {
            server: Some("http://h".into()),
            bin: "guruconnect-agent".into(),
            root: Some(dir.path().to_owned()),
            ..InstallOptions::default()
        };
        assert!(install(&relative).is_err());
    }

    #[test]
    fn install_refuses_an_open_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("etc/guruconnect/agent.key");
        std::fs::create_dir_all(key.parent().expect("parent")).expect("mkdir");
        std::fs::write(&key, "cak_0123456789").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let options = InstallOptions {
            server: Some("https://relay.example".into()),
            root: Some(dir.path().to_owned()),
            ..InstallOptions::default()
        };
        let err = install(&options).expect_err("must refuse");
        assert!(
            err.to_string().contains("readable by group or others"),
            "{err}"
        );
        assert!(!dir.path().join(UNIT_PATH).exists());
    }
}
