//! `guruconnect-agent`: the endpoint agent's command line.
//!
//! - `guruconnect-agent --server URL --code XXX-XXX-XXX`: one attended support session;
//!   with no arguments at all, the server and code come from the program's own file name
//!   when it is a join page's download (`GuruConnect-Support_<CODE>_<host>….exe`);
//! - `guruconnect-agent run [--config PATH]`: the managed agent (enrolls when it has no key
//!   yet, then reconnects forever);
//! - `guruconnect-agent install …` / `uninstall`: the systemd service (Linux), or the
//!   `GuruConnectAgent` Windows service (`platform::windows::setup`);
//! - Windows only: `configure …` writes the configuration and the protected enrollment key
//!   (the MSI's custom action), and `service` is what the Service Control Manager starts
//!   (`platform::windows::service`), which runs `run --control-pipe NAME --log-file PATH`
//!   in the console session.
//!
//! - `guruconnect-agent selftest`: prints the version and exits 0; a self-update starts a
//!   downloaded binary this way before it replaces the running one (`update`).
//!
//! Exit codes: 0 done (including a denied consent), 1 failure, 2 support code refused,
//! 3 no desktop (no X display, no interactive Windows desktop), 4 (`configure`) the
//! configuration cannot be written, 75 (`run`) restart me: a self-update put a new binary
//! in place, or restored the previous one (`update::EXIT_RESTART`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use guruconnect_agent::backoff::Backoff;
#[cfg(not(windows))]
use guruconnect_agent::config::DEFAULT_KEY_FILE;
use guruconnect_agent::config::{AgentConfig, DEFAULT_CONFIG};
use guruconnect_agent::enroll::{self, Credential};
#[cfg(target_os = "linux")]
use guruconnect_agent::install::{self, InstallOptions};
use guruconnect_agent::session::{self, ConnectError, Outcome, SessionOptions};
use guruconnect_agent::update::{self, Updater};
use guruconnect_agent::version::agent_version;

/// Exit status when the support code is refused.
const EXIT_CODE_REFUSED: u8 = 2;
/// Exit status when the desktop (X display, interactive Windows desktop) cannot be opened.
const EXIT_NO_DISPLAY: u8 = 3;
/// Exit status when the server URL cannot be right (no scheme, not GuruConnect, TLS
/// against plain HTTP): retrying would not help.
const EXIT_WRONG_SERVER: u8 = 4;
/// How long support mode keeps trying to reach the server.
const SUPPORT_RETRY_FOR: Duration = Duration::from_secs(60);
/// What to give when nothing says what to do.
const USAGE: &str =
    "give --server URL --code XXX-XXX-XXX for a support session, or a subcommand (see --help)";
/// Message for a refused support code.
const CODE_REFUSED: &str = "the support code is invalid, expired or already used";

#[derive(Debug, Parser)]
#[command(
    name = "guruconnect-agent",
    version = guruconnect_release::VERSION_LINE,
    about = "GuruConnect remote support agent"
)]
struct Cli {
    /// Server base URL, e.g. https://support.example.com (support mode).
    #[arg(long, env = "GURUCONNECT_SERVER", global = true)]
    server: Option<String>,
    /// One-time support code from the technician (XXX-XXX-XXX).
    #[arg(long)]
    code: Option<String>,
    /// Support mode: the account a technician's remote terminal runs as. Needed only when
    /// the agent runs as root (a shell as root must be asked for by name: `root`).
    #[arg(long, value_name = "USER")]
    terminal_user: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the managed agent with its per-agent key (enrolling first when it has none).
    Run {
        /// Configuration file (TOML with `server`, `key_file`, and for enrollment
        /// `site_code` and `enrollment_key`).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Named pipe on which the service asks this agent to stop (`stop`).
        #[cfg(windows)]
        #[arg(long, value_name = "NAME")]
        control_pipe: Option<String>,
        /// Append the log to this file (rotated past a few MB) instead of stderr.
        #[cfg(windows)]
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
    },
    /// Registers and starts the GuruConnectAgent service (with --server, after writing the
    /// configuration as `configure` does). Run it elevated.
    #[cfg(windows)]
    Install {
        #[command(flatten)]
        site: SiteArgs,
    },
    /// Stops and removes the GuruConnectAgent service.
    #[cfg(windows)]
    Uninstall {
        /// Also remove %ProgramData%\GuruConnect (configuration, keys, log).
        #[arg(long)]
        purge: bool,
    },
    /// Writes the configuration and the DPAPI-protected enrollment key to
    /// %ProgramData%\GuruConnect, keeping this machine's key; does not touch the service.
    /// Exit codes: 0 done, 1 bad input (nothing written), 4 cannot write.
    #[cfg(windows)]
    Configure {
        #[command(flatten)]
        site: SiteArgs,
    },
    /// The service entry point, started by the Service Control Manager.
    #[cfg(windows)]
    Service,
    /// Prints the version and exits 0 (a self-update's check of a downloaded binary).
    #[command(hide = true)]
    Selftest,
    /// Installs the systemd service (and, with --server, its configuration). Linux only.
    #[cfg(not(windows))]
    Install {
        /// Per-agent key file written into a new configuration (owner-only).
        #[arg(long, default_value = DEFAULT_KEY_FILE)]
        key_file: PathBuf,
        /// Configuration path; without --server, the configuration already there is used.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Where to install this binary.
        #[arg(long, default_value = "/usr/local/bin/guruconnect-agent")]
        bin: PathBuf,
        /// Install under this directory instead of / (does not run systemctl).
        #[arg(long)]
        root: Option<PathBuf>,
        /// X display the service captures.
        #[arg(long, default_value = ":0")]
        display: String,
        /// X authority file of that display, when its X server requires one
        /// (e.g. /run/user/1000/gdm/Xauthority).
        #[arg(long)]
        xauthority: Option<PathBuf>,
        /// The release public key (gcrelpub1:…) every self-update must be signed with,
        /// written into a new configuration.
        #[arg(long, env = "GURUCONNECT_RELEASE_PUBLIC_KEY")]
        release_public_key: Option<String>,
    },
    /// Stops and removes the systemd service and its configuration. Linux only.
    #[cfg(not(windows))]
    Uninstall {
        /// Remove from under this directory instead of / (does not run systemctl).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

/// The site and labels of `configure` and `install` (Windows). The server is the global
/// `--server`.
#[cfg(windows)]
#[derive(Debug, clap::Args)]
struct SiteArgs {
    /// The site's code (shown on the site's page in the console).
    #[arg(long)]
    site_code: Option<String>,
    /// The site's enrollment key (gce_…); stored DPAPI-protected, never in agent.toml.
    #[arg(long, env = "GURUCONNECT_ENROLLMENT_KEY", hide_env_values = true)]
    enrollment_key: Option<String>,
    /// Company (customer) label.
    #[arg(long)]
    company: Option<String>,
    /// Department label.
    #[arg(long)]
    department: Option<String>,
    /// Device type label (desktop, laptop, server…).
    #[arg(long)]
    device_type: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    tag: Vec<String>,
    /// Tags, comma-separated.
    #[arg(long)]
    tags: Option<String>,
    /// The release public key (gcrelpub1:…) every self-update must be signed with.
    #[arg(long, env = "GURUCONNECT_RELEASE_PUBLIC_KEY")]
    release_public_key: Option<String>,
}

#[cfg(windows)]
impl SiteArgs {
    fn options(
        self,
        server: Option<String>,
    ) -> guruconnect_agent::platform::windows::setup::SiteOptions {
        let mut tags = self.tag;
        tags.extend(self.tags);
        guruconnect_agent::platform::windows::setup::SiteOptions {
            server,
            site_code: self.site_code,
            enrollment_key: self.enrollment_key,
            labels: guruconnect_agent::config::Labels {
                company: self.company,
                department: self.department,
                device_type: self.device_type,
                tags,
            },
            release_public_key: self.release_public_key,
        }
    }
}

fn init_logging(log_file: Option<&Path>) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    #[cfg(windows)]
    if let Some(path) = log_file {
        use guruconnect_agent::platform::windows::keystore;
        match path.parent() {
            // The data directory is made private when this creates it.
            Some(dir) if dir == keystore::data_dir() && !dir.is_dir() => {
                let _ = keystore::ensure_private_dir(dir);
            }
            Some(dir) => {
                let _ = std::fs::create_dir_all(dir);
            }
            None => {}
        }
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(guruconnect_agent::platform::windows::service::LogFile::new(
                path,
            ))
            .with_ansi(false)
            .init();
        return;
    }
    #[cfg(not(windows))]
    let _ = log_file;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Where this command logs: a file for the Windows service and its worker, else stderr.
#[cfg(windows)]
fn log_file_of(command: Option<&Command>) -> Option<PathBuf> {
    match command {
        Some(Command::Run { log_file, .. }) => log_file.clone(),
        Some(Command::Service) => Some(guruconnect_agent::platform::windows::service::log_path()),
        _ => None,
    }
}

/// Where this command logs: stderr.
#[cfg(not(windows))]
fn log_file_of(_command: Option<&Command>) -> Option<PathBuf> {
    None
}

fn fail(message: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("guruconnect-agent: {message}");
    ExitCode::from(code)
}

fn check_display() -> Result<(), ExitCode> {
    guruconnect_agent::platform::native()
        .check()
        .map_err(|e| fail(e, EXIT_NO_DISPLAY))
}

/// The server and code carried by this program's file name, when it was downloaded from
/// a join page (`GuruConnect-Support_<CODE>_<host>….exe`, see
/// `guruconnect_proto::support_file`).
fn support_from_own_name() -> Option<(String, String)> {
    let exe = std::env::current_exe().ok()?;
    let name = exe.file_name()?.to_str()?;
    let found = guruconnect_proto::support_file::parse(name);
    if let Some((server, _)) = &found {
        eprintln!("guruconnect-agent: support session with {server} (from this file's name)");
    }
    found
}

/// Waits for Enter when a person started the program in a console of its own (Windows
/// closes that console as soon as the program exits).
fn pause_if_interactive() {
    use std::io::IsTerminal as _;
    if cfg!(windows) && std::io::stdin().is_terminal() {
        eprintln!("Press Enter to close this window.");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
}

/// `XXX-XXX-XXX` (dashes and case optional) over the code alphabet.
fn plausible_code(code: &str) -> bool {
    let chars: Vec<char> = code.chars().filter(|c| *c != '-' && *c != ' ').collect();
    chars.len() == 9 && chars.iter().all(char::is_ascii_alphanumeric)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Selftest)) {
        // Nothing else: no logging set-up, no runtime, no desktop, no configuration.
        println!("{} {}", update::SELFTEST_BANNER, agent_version());
        return ExitCode::SUCCESS;
    }
    init_logging(log_file_of(cli.command.as_ref()).as_deref());
    #[cfg(windows)]
    match cli.command {
        Some(Command::Service) => {
            return match guruconnect_agent::platform::windows::service::run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e, 1),
            };
        }
        Some(Command::Configure { site }) => {
            let options = site.options(cli.server);
            return match guruconnect_agent::platform::windows::setup::configure(&options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("configure failed: {e}"), e.exit_code()),
            };
        }
        Some(Command::Install { site }) => {
            let options = site.options(cli.server);
            return match guruconnect_agent::platform::windows::setup::install(&options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("install failed: {e}"), e.exit_code()),
            };
        }
        Some(Command::Uninstall { purge }) => {
            return match guruconnect_agent::platform::windows::setup::uninstall(purge) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("uninstall failed: {e}"), e.exit_code()),
            };
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}"), 1),
    };
    match cli.command {
        #[cfg(not(windows))]
        Some(Command::Run { config }) => runtime.block_on(managed(config, None)),
        #[cfg(windows)]
        Some(Command::Run {
            config,
            control_pipe,
            ..
        }) => runtime.block_on(managed(config, control_pipe)),
        #[cfg(target_os = "linux")]
        Some(Command::Install {
            key_file,
            config,
            bin,
            root,
            display,
            xauthority,
            release_public_key,
        }) => {
            let options = InstallOptions {
                server: cli.server,
                key_file,
                config,
                bin,
                root,
                display,
                xauthority,
                release_public_key,
            };
            match install::install(&options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("install failed: {e:#}"), 1),
            }
        }
        #[cfg(target_os = "linux")]
        Some(Command::Uninstall { root }) => match install::uninstall(root.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("uninstall failed: {e:#}"), 1),
        },
        #[cfg(windows)]
        Some(
            Command::Install { .. }
            | Command::Uninstall { .. }
            | Command::Configure { .. }
            | Command::Service,
        ) => unreachable!("handled before the runtime starts"),
        Some(Command::Selftest) => unreachable!("handled before the runtime starts"),
        #[cfg(not(any(target_os = "linux", windows)))]
        Some(Command::Install { .. } | Command::Uninstall { .. }) => fail(
            "installing as a service is not implemented on this system yet; run \
             `guruconnect-agent run --config PATH` in the foreground",
            1,
        ),
        None => match (cli.server, cli.code) {
            (Some(server), Some(code)) => {
                runtime.block_on(support(server, code, cli.terminal_user))
            }
            (None, None) => match support_from_own_name() {
                Some((server, code)) => {
                    // Double-clicked: keep the window open long enough to read the outcome.
                    let status = runtime.block_on(support(server, code, None));
                    pause_if_interactive();
                    status
                }
                None => fail(USAGE, 1),
            },
            _ => fail(USAGE, 1),
        },
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(windows)]
    let term = async {
        match tokio::signal::windows::ctrl_close() {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Support mode: one attended session with a one-time code.
async fn support(server: String, code: String, terminal_user: Option<String>) -> ExitCode {
    if !plausible_code(&code) {
        return fail(CODE_REFUSED, EXIT_CODE_REFUSED);
    }
    // Check the desktop first: a code must not be burned by an agent that cannot show the
    // consent prompt.
    if let Err(code) = check_display() {
        return code;
    }
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    let conn = loop {
        match session::connect(&server, &code).await {
            Ok(conn) => break conn,
            Err(ConnectError::Rejected { .. }) => return fail(CODE_REFUSED, EXIT_CODE_REFUSED),
            Err(ConnectError::WrongServer(why)) => return fail(why, EXIT_WRONG_SERVER),
            Err(ConnectError::Unreachable(e)) => {
                let delay = backoff.next_delay();
                if started.elapsed() + delay > SUPPORT_RETRY_FOR {
                    return fail(
                        format!(
                            "cannot reach the server at {server} after {} attempts: {e}",
                            backoff.attempts()
                        ),
                        1,
                    );
                }
                tracing::warn!(
                    attempt = backoff.attempts(),
                    "cannot reach the server at {server}: {e}; retrying in {:.1} s",
                    delay.as_secs_f32()
                );
                tokio::time::sleep(delay).await;
            }
        }
    };
    tracing::info!("connected to {server}");
    let outcome = tokio::select! {
        outcome = session::run_with(conn, SessionOptions {
            attended: true,
            terminal_user,
            ..SessionOptions::default()
        }) => outcome,
        () = shutdown_signal() => Outcome::Ended("stopped on this computer".into()),
    };
    match outcome {
        Outcome::ConsentDenied => {
            eprintln!(
                "guruconnect-agent: remote support was not allowed on this computer; exiting"
            );
            ExitCode::SUCCESS
        }
        Outcome::Ended(reason) => {
            eprintln!("guruconnect-agent: the support session ended ({reason})");
            ExitCode::SUCCESS
        }
        Outcome::Lost(reason) => fail(
            format!("the connection to the server was lost: {reason}"),
            1,
        ),
        Outcome::Failed(reason) => fail(reason, 1),
    }
}

/// Resolves when the Windows service asks this agent to stop over `pipe`; never without
/// a pipe (or when it cannot be served: that is logged).
async fn stop_requested(pipe: Option<String>) {
    #[cfg(windows)]
    if let Some(name) = pipe {
        match guruconnect_agent::platform::windows::service::wait_for_stop(&name).await {
            Ok(()) => {
                tracing::info!("the service asked this agent to stop");
                return;
            }
            Err(e) => tracing::error!("cannot serve the control pipe {name}: {e}"),
        }
    }
    #[cfg(not(windows))]
    let _ = pipe;
    std::future::pending::<()>().await;
}

/// Managed mode: get a credential (stored key, enrollment, or the shared key), then
/// reconnect forever with backoff. `control_pipe` (Windows service): stop on its `stop`.
async fn managed(config_path: PathBuf, control_pipe: Option<String>) -> ExitCode {
    let config = match AgentConfig::load(&config_path) {
        Ok(c) => c,
        Err(e) => return fail(e, 1),
    };
    if let Err(code) = check_display() {
        return code;
    }
    let server = config.server.clone();
    let exe = match std::env::current_exe() {
        Ok(exe) => Some(exe),
        Err(e) => {
            tracing::error!("self-update cannot locate this binary: {e}");
            None
        }
    };
    let updater = Arc::new(Updater::new(
        &server,
        config.release_public_key.as_deref(),
        exe,
    ));
    let forever = async {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut skip_stored = false;
        loop {
            match enroll::credential(&config, skip_stored).await {
                Ok(credential) => {
                    skip_stored = false;
                    match session::connect(&server, credential.secret()).await {
                        Ok(conn) => {
                            tracing::info!("connected to {server}");
                            if matches!(credential, Credential::Key(_)) {
                                config.forget_enrollment_key();
                            }
                            let started = Instant::now();
                            let options = SessionOptions {
                                attended: false,
                                key_file: Some(config.key_file.clone()),
                                updates: Some(updater.clone()),
                                terminal_user: config.terminal_user.clone(),
                            };
                            let outcome = session::run_with(conn, options).await;
                            tracing::warn!(?outcome, "session ended");
                            backoff.connection_ended(started.elapsed());
                        }
                        Err(ConnectError::Rejected { status }) => {
                            let fallback = config.can_enroll() || config.shared_key.is_some();
                            match credential {
                                Credential::Key(_) => tracing::error!(
                                    fallback,
                                    "the server refused this machine's key (HTTP {status}); \
                                     it may have been revoked"
                                ),
                                Credential::SharedKey(_) => tracing::error!(
                                    "the server refused the shared key (HTTP {status})"
                                ),
                            }
                            skip_stored = fallback && matches!(credential, Credential::Key(_));
                        }
                        Err(ConnectError::WrongServer(why)) => {
                            // The configuration may be fixed while the service keeps running.
                            tracing::error!("{why}");
                        }
                        Err(ConnectError::Unreachable(e)) => {
                            tracing::warn!("cannot reach the server at {server}: {e}");
                        }
                    }
                }
                Err(e) if e.is_transient() => tracing::warn!("{e}"),
                Err(e) => return fail(e, 1),
            }
            let delay = backoff.next_delay();
            tracing::info!(
                attempt = backoff.attempts(),
                "reconnecting in {:.1} s",
                delay.as_secs_f32()
            );
            tokio::time::sleep(delay).await;
        }
    };
    tokio::select! {
        code = forever => code,
        () = shutdown_signal() => {
            tracing::info!("stopping");
            ExitCode::SUCCESS
        }
        () = stop_requested(control_pipe) => ExitCode::SUCCESS,
        () = updater.restart_requested() => {
            tracing::info!("exiting for the service manager to start the new binary");
            ExitCode::from(update::EXIT_RESTART)
        }
        () = updater.online_deadline() => {
            tracing::info!("exiting for the service manager to start the restored binary");
            ExitCode::from(update::EXIT_RESTART)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_shape() {
        assert!(plausible_code("ABC-DEF-GHJ"));
        assert!(plausible_code("abcdefghj"));
        assert!(!plausible_code("ABC-DEF"));
        assert!(!plausible_code("ABC-DEF-GH!"));
    }
}
