//! `install`, `uninstall` and `configure` on Windows.
//!
//! - `configure --server URL --site-code CODE --enrollment-key KEY [labels]` writes the
//!   managed agent's configuration only: `%ProgramData%\GuruConnect` with the private DACL,
//!   `agent.toml` (server, key file, site code, labels; never a secret) and the enrollment
//!   key DPAPI-protected in `enroll.key`. An existing per-agent key (`agent.key`) is kept, so
//!   a reinstall or an upgrade keeps the machine's row on the server; the enrollment key may
//!   then be left out (empty) and the one already stored, if any, is kept. It never
//!   registers, starts or stops the service (the MSI's `ServiceInstall`/`ServiceControl` do),
//!   but sets the recovery actions when the service already exists. Exit codes
//!   ([`SetupError::exit_code`]): 0 done, 1 bad input (nothing written), 4 cannot write.
//! - `install [--server …]` registers `GuruConnectAgent` (LocalSystem, automatic start,
//!   `"<this exe>" service`; the binary stays where it is), sets its description and
//!   recovery actions (restart after 5 s, 10 s, 30 s; failure count reset after a day; also
//!   on a non-crash failure), writes the configuration when `--server` is given (as
//!   `configure` does) and starts it (restarting it when it was running). Over an existing
//!   service it updates it.
//! - `uninstall [--purge]` stops and deletes the service (a missing one is reported, not an
//!   error); `--purge` also removes `%ProgramData%\GuruConnect` (keys, configuration, log).
//!
//! Under Wine, `install` registers a service that `wine sc query GuruConnectAgent` shows and
//! `wine net start` starts; `uninstall` removes it; `configure` writes the protected files.
//! The recovery actions are UNVERIFIED: Wine's service manager refuses
//! `SERVICE_CONFIG_FAILURE_ACTIONS` (`ERROR_INVALID_LEVEL`, reported as a warning, not an
//! error) and does not restart failed services.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceErrorControl, ServiceFailureActions,
    ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceType,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use super::keystore::{self, data_dir};
use super::service::{DESCRIPTION, DISPLAY_NAME, SERVICE_ARGUMENT, SERVICE_NAME, config_path};
use crate::config::{AgentConfig, ENROLLMENT_KEY_FILE, Labels};

/// What `configure` (and `install --server`) write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteOptions {
    /// Server base URL.
    pub server: Option<String>,
    /// The site's code.
    pub site_code: Option<String>,
    /// The site's enrollment key (`gce_…`).
    pub enrollment_key: Option<String>,
    /// Labels sent with the enrollment (empty strings mean unset).
    pub labels: Labels,
    /// The release public key updates are verified with (`gcrelpub1:…`; empty: none).
    pub release_public_key: Option<String>,
}

/// Why `configure` or `install` failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The arguments are wrong; nothing was written.
    #[error("{0}")]
    BadInput(String),
    /// The configuration or a key could not be written.
    #[error("{0}")]
    Write(String),
    /// The Service Control Manager refused something.
    #[error("{0}")]
    Service(String),
}

impl SetupError {
    /// The process exit code: 1 bad input, 4 cannot write, 1 for a service failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadInput(_) | Self::Service(_) => 1,
            Self::Write(_) => 4,
        }
    }
}

fn present(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Trims labels; empty strings (what the MSI passes for unset properties) become unset,
/// and tags may come comma-separated.
pub fn normalize_labels(labels: &Labels) -> Labels {
    let mut tags: Vec<String> = Vec::new();
    for tag in labels.tags.iter().flat_map(|t| t.split(',')) {
        let tag = tag.trim();
        if !tag.is_empty() && !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_owned());
        }
    }
    Labels {
        company: present(labels.company.as_deref()),
        department: present(labels.department.as_deref()),
        device_type: present(labels.device_type.as_deref()),
        tags,
    }
}

/// The validated configuration to write, and the enrollment key when one was given.
fn validate(
    options: &SiteOptions,
    key_file: &Path,
) -> Result<(AgentConfig, Option<String>), SetupError> {
    let bad = |m: &str| Err(SetupError::BadInput(m.to_owned()));
    let Some(server) = present(options.server.as_deref()) else {
        return bad("give --server URL (e.g. https://support.example.com)");
    };
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"));
    match rest {
        None => return bad("--server must be an http:// or https:// URL"),
        Some(r) if r.is_empty() || r.starts_with('/') => {
            return bad("--server must name a host, e.g. https://support.example.com");
        }
        Some(_) if server.contains(char::is_whitespace) => {
            return bad("--server must not contain spaces");
        }
        Some(_) => {}
    }
    let Some(site_code) = present(options.site_code.as_deref()) else {
        return bad("give --site-code CODE (shown on the site's page in the console)");
    };
    if site_code
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
        || site_code.len() > 64
    {
        return bad("--site-code is not a site code");
    }
    let enrollment_key = present(options.enrollment_key.as_deref());
    match &enrollment_key {
        Some(k) if !k.starts_with("gce_") || k.contains(char::is_whitespace) => {
            return bad("--enrollment-key is not a GuruConnect enrollment key (gce_…)");
        }
        Some(_) => {}
        // An enrolled machine (an upgrade) may leave it out.
        None if key_file.exists() => {}
        None => {
            return bad(
                "give --enrollment-key KEY (the site's enrollment key, gce_…); it may be left \
                 out only when this machine is already enrolled",
            );
        }
    }
    let release_public_key = present(options.release_public_key.as_deref());
    if let Some(key) = &release_public_key
        && guruconnect_release::parse_public_key(key).is_err()
    {
        return bad("--release-public-key is not a GuruConnect release public key (gcrelpub1:…)");
    }
    let config = AgentConfig {
        server: server.trim_end_matches('/').to_owned(),
        key_file: key_file.to_owned(),
        site_code: Some(site_code),
        enrollment_key: None,
        shared_key: None,
        release_public_key,
        terminal_user: None,
        labels: normalize_labels(&options.labels),
    };
    Ok((config, enrollment_key))
}

/// Writes `text` to `path` atomically (a temporary file, then a rename).
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// `configure` into `dir` (normally [`data_dir`]); returns what was written, for messages.
pub fn configure_in(dir: &Path, options: &SiteOptions) -> Result<Vec<String>, SetupError> {
    let key_file = dir.join("agent.key");
    let (config, enrollment_key) = validate(options, &key_file)?;
    let write = |what: &Path, e: std::io::Error| {
        SetupError::Write(format!("cannot write {}: {e}", what.display()))
    };
    keystore::ensure_private_dir(dir).map_err(|e| write(dir, e))?;
    let mut done = Vec::new();
    if let Some(key) = &enrollment_key {
        let path = dir.join(ENROLLMENT_KEY_FILE);
        keystore::write_secret(&path, key).map_err(|e| write(&path, e))?;
        done.push(format!(
            "stored the enrollment key DPAPI-protected in {}",
            path.display()
        ));
    }
    let toml_path = dir.join("agent.toml");
    write_atomically(&toml_path, &config.to_toml()).map_err(|e| write(&toml_path, e))?;
    done.push(format!("wrote {}", toml_path.display()));
    if key_file.exists() {
        done.push(format!(
            "kept this machine's per-agent key {}",
            key_file.display()
        ));
    }
    Ok(done)
}

/// `guruconnect-agent configure`.
pub fn configure(options: &SiteOptions) -> Result<(), SetupError> {
    for line in configure_in(&data_dir(), options)? {
        println!("{line}");
    }
    // The MSI registers the service itself; give it the recovery actions when it exists.
    if let Ok(manager) = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        && let Ok(service) = manager.open_service(
            SERVICE_NAME,
            ServiceAccess::CHANGE_CONFIG | ServiceAccess::START,
        )
    {
        match set_recovery(&service) {
            Ok(()) => println!("set the {SERVICE_NAME} service's recovery actions"),
            Err(e) => eprintln!(
                "guruconnect-agent: cannot set the recovery actions: {}",
                describe(&e)
            ),
        }
    }
    Ok(())
}

fn scm_error(what: &str, e: windows_service::Error) -> SetupError {
    SetupError::Service(format!("{what}: {}", describe(&e)))
}

/// The error with its Win32 cause (the crate's own text omits it).
fn describe(e: &windows_service::Error) -> String {
    match e {
        windows_service::Error::Winapi(io) if io.raw_os_error() == Some(5) => {
            "access denied: run it from an elevated (administrator) prompt".to_owned()
        }
        windows_service::Error::Winapi(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// Restart after 5 s, 10 s and 30 s; the failure count resets after a day; a non-zero exit
/// (not only a crash) counts as a failure.
fn set_recovery(service: &windows_service::service::Service) -> windows_service::Result<()> {
    let restart = |secs| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    service.update_failure_actions(ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 60 * 60)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart(5), restart(10), restart(30)]),
    })?;
    service.set_failure_actions_on_non_crash_failures(true)
}

fn wait_for(
    service: &windows_service::service::Service,
    state: ServiceState,
    within: Duration,
) -> Result<(), SetupError> {
    let deadline = Instant::now() + within;
    loop {
        let now = service
            .query_status()
            .map_err(|e| scm_error("cannot query the service", e))?
            .current_state;
        if now == state {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SetupError::Service(format!(
                "the {SERVICE_NAME} service is {now:?}, not {state:?}, after {} s",
                within.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `guruconnect-agent install`.
pub fn install(options: &SiteOptions) -> Result<(), SetupError> {
    let configuring = [&options.server, &options.site_code, &options.enrollment_key]
        .iter()
        .any(|o| o.is_some());
    if configuring {
        configure_in(&data_dir(), options).map(|lines| {
            for line in lines {
                println!("{line}");
            }
        })?;
    } else {
        AgentConfig::load(&config_path()).map_err(|e| {
            SetupError::BadInput(format!(
                "give --server URL --site-code CODE --enrollment-key KEY, or run \
                 `guruconnect-agent configure` first ({e})"
            ))
        })?;
    }
    let exe = std::env::current_exe()
        .map_err(|e| SetupError::Service(format!("cannot locate this program: {e}")))?;
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(|e| scm_error("cannot open the Service Control Manager", e))?;
    let info = ServiceInfo {
        name: OsString::from(SERVICE_NAME),
        display_name: OsString::from(DISPLAY_NAME),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe,
        launch_arguments: vec![OsString::from(SERVICE_ARGUMENT)],
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let access = ServiceAccess::QUERY_STATUS
        | ServiceAccess::START
        | ServiceAccess::STOP
        | ServiceAccess::CHANGE_CONFIG
        | ServiceAccess::QUERY_CONFIG;
    let (service, existed) = match manager.open_service(SERVICE_NAME, access) {
        Ok(service) => {
            service
                .change_config(&info)
                .map_err(|e| scm_error("cannot update the service", e))?;
            (service, true)
        }
        Err(_) => (
            manager
                .create_service(&info, access)
                .map_err(|e| scm_error("cannot register the service", e))?,
            false,
        ),
    };
    println!(
        "{} the {SERVICE_NAME} service ({})",
        if existed { "updated" } else { "registered" },
        info.executable_path.display()
    );
    if let Err(e) = service.set_description(DESCRIPTION) {
        eprintln!("guruconnect-agent: cannot set the service's description: {e}");
    }
    // Not fatal: the service works without them (Wine's service manager answers
    // ERROR_INVALID_LEVEL to SERVICE_CONFIG_FAILURE_ACTIONS).
    match set_recovery(&service) {
        Ok(()) => println!("set the recovery actions: restart after 5 s, 10 s, 30 s"),
        Err(e) => eprintln!(
            "guruconnect-agent: cannot set the recovery actions: {}",
            describe(&e)
        ),
    }
    let state = service
        .query_status()
        .map_err(|e| scm_error("cannot query the service", e))?
        .current_state;
    if state != ServiceState::Stopped {
        // Restart so the new configuration and binary are used.
        let _ = service.stop();
        wait_for(&service, ServiceState::Stopped, Duration::from_secs(30))?;
    }
    service
        .start::<&str>(&[])
        .map_err(|e| scm_error("cannot start the service", e))?;
    wait_for(&service, ServiceState::Running, Duration::from_secs(30))?;
    println!(
        "started the {SERVICE_NAME} service; it logs to {}",
        super::service::log_path().display()
    );
    Ok(())
}

/// `guruconnect-agent uninstall [--purge]`.
pub fn uninstall(purge: bool) -> Result<(), SetupError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| scm_error("cannot open the Service Control Manager", e))?;
    match manager.open_service(
        SERVICE_NAME,
        ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
    ) {
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error()
                == Some(windows_sys::Win32::Foundation::ERROR_SERVICE_DOES_NOT_EXIST as i32) =>
        {
            println!("the {SERVICE_NAME} service is not installed");
        }
        Err(e) => return Err(scm_error("cannot open the service", e)),
        Ok(service) => {
            let state = service
                .query_status()
                .map_err(|e| scm_error("cannot query the service", e))?
                .current_state;
            if state != ServiceState::Stopped {
                service
                    .stop()
                    .map_err(|e| scm_error("cannot stop the service", e))?;
                wait_for(&service, ServiceState::Stopped, Duration::from_secs(30))?;
                println!("stopped the {SERVICE_NAME} service");
            }
            service
                .delete()
                .map_err(|e| scm_error("cannot delete the service", e))?;
            println!("removed the {SERVICE_NAME} service");
        }
    }
    if purge {
        let dir = data_dir();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => println!("removed {}", dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SetupError::Write(format!(
                    "cannot remove {}: {e}",
                    dir.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(server: &str, code: &str, key: &str) -> SiteOptions {
        SiteOptions {
            server: Some(server.into()),
            site_code: Some(code.into()),
            enrollment_key: Some(key.into()),
            labels: Labels::default(),
            release_public_key: None,
        }
    }

    #[test]
    fn configure_writes_a_config_without_secrets_and_a_protected_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("GuruConnect");
        let mut options = site("https://relay.example/", "HQ", "gce_secret_value");
        options.labels = Labels {
            company: Some(" Acme ".into()),
            department: Some(String::new()),
            device_type: Some("laptop".into()),
            tags: vec!["a, b".into(), "".into(), "b".into(), "c".into()],
        };
        configure_in(&data, &options).expect("configure");
        let text = std::fs::read_to_string(data.join("agent.toml")).expect("toml");
        assert!(!text.contains("gce_"), "{text}");
        let enroll = std::fs::read(data.join(ENROLLMENT_KEY_FILE)).expect("enroll.key");
        assert!(enroll.starts_with(keystore::MAGIC));
        assert!(!enroll.windows(6).any(|w| w == b"secret"));
        let config = AgentConfig::load(&data.join("agent.toml")).expect("load");
        assert_eq!(config.server, "https://relay.example");
        assert_eq!(config.site_code.as_deref(), Some("HQ"));
        assert_eq!(config.enrollment_key.as_deref(), Some("gce_secret_value"));
        assert!(config.can_enroll());
        assert_eq!(config.key_file, data.join("agent.key"));
        assert_eq!(config.labels.company.as_deref(), Some("Acme"));
        assert_eq!(config.labels.department, None);
        assert_eq!(config.labels.tags, ["a", "b", "c"]);
    }

    #[test]
    fn a_reconfigure_keeps_the_agent_key_and_updates_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("GuruConnect");
        configure_in(&data, &site("http://one.example", "HQ", "gce_one")).expect("first");
        crate::config::store_key(&data.join("agent.key"), "cak_machine").expect("enrolled");
        let config = AgentConfig::load(&data.join("agent.toml")).expect("load");
        config.forget_enrollment_key();
        assert!(!data.join(ENROLLMENT_KEY_FILE).exists());
        // The upgrade: a new server, no enrollment key.
        let mut upgrade = site("https://two.example", "NY", "");
        upgrade.labels.company = Some("Beta".into());
        configure_in(&data, &upgrade).expect("upgrade");
        assert_eq!(
            crate::config::read_key(&data.join("agent.key")).expect("key"),
            "cak_machine"
        );
        let config = AgentConfig::load(&data.join("agent.toml")).expect("load");
        assert_eq!(config.server, "https://two.example");
        assert_eq!(config.site_code.as_deref(), Some("NY"));
        assert_eq!(config.enrollment_key, None);
        assert_eq!(config.labels.company.as_deref(), Some("Beta"));
    }

    #[test]
    fn bad_input_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("GuruConnect");
        let cases = [
            (site("", "HQ", "gce_x"), "--server"),
            (site("relay.example", "HQ", "gce_x"), "http://"),
            (site("ftp://relay.example", "HQ", "gce_x"), "http://"),
            (site("https://", "HQ", "gce_x"), "host"),
            (site("https://relay.example", "", "gce_x"), "--site-code"),
            (site("https://relay.example", "H Q", "gce_x"), "--site-code"),
            (site("https://relay.example", "HQ", ""), "--enrollment-key"),
            (site("https://relay.example", "HQ", "cak_x"), "gce_"),
            (SiteOptions::default(), "--server"),
        ];
        for (options, expected) in cases {
            let err = configure_in(&data, &options).expect_err("must refuse");
            assert!(matches!(err, SetupError::BadInput(_)), "{err}");
            assert_eq!(err.exit_code(), 1);
            assert!(err.to_string().contains(expected), "{err} / {expected}");
            assert!(!data.exists(), "nothing is written for {options:?}");
        }
    }

    #[test]
    fn write_failures_exit_4() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A file where the directory should be.
        let data = dir.path().join("GuruConnect");
        std::fs::write(&data, "not a directory").expect("write");
        let err = configure_in(&data, &site("https://r.example", "HQ", "gce_x"))
            .expect_err("cannot write");
        assert_eq!(err.exit_code(), 4, "{err}");
    }
}
