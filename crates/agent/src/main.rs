//! `guruconnect-agent`: the endpoint agent's command line.
//!
//! - `guruconnect-agent --server URL --code XXX-XXX-XXX`: one attended support session;
//! - `guruconnect-agent run [--config PATH]`: the managed agent (enrolls when it has no key
//!   yet, then reconnects forever);
//! - `guruconnect-agent install …` / `uninstall`: the systemd service (Linux; on Windows
//!   they answer that the service is not implemented yet).
//!
//! Exit codes: 0 done (including a denied consent), 1 failure, 2 support code refused,
//! 3 no desktop (no X display, no interactive Windows desktop).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use guruconnect_agent::backoff::Backoff;
use guruconnect_agent::config::{AgentConfig, DEFAULT_CONFIG, DEFAULT_KEY_FILE};
use guruconnect_agent::enroll::{self, Credential};
#[cfg(target_os = "linux")]
use guruconnect_agent::install::{self, InstallOptions};
use guruconnect_agent::session::{self, ConnectError, Outcome, SessionOptions};

/// Exit status when the support code is refused.
const EXIT_CODE_REFUSED: u8 = 2;
/// Exit status when the desktop (X display, interactive Windows desktop) cannot be opened.
const EXIT_NO_DISPLAY: u8 = 3;
/// How long support mode keeps trying to reach the server.
const SUPPORT_RETRY_FOR: Duration = Duration::from_secs(60);
/// Message for a refused support code.
const CODE_REFUSED: &str = "the support code is invalid, expired or already used";

#[derive(Debug, Parser)]
#[command(
    name = "guruconnect-agent",
    version,
    about = "GuruConnect remote support agent"
)]
struct Cli {
    /// Server base URL, e.g. https://support.example.com (support mode).
    #[arg(long, env = "GURUCONNECT_SERVER", global = true)]
    server: Option<String>,
    /// One-time support code from the technician (XXX-XXX-XXX).
    #[arg(long)]
    code: Option<String>,
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
    },
    /// Installs the systemd service (and, with --server, its configuration). Linux only.
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
    },
    /// Stops and removes the systemd service and its configuration. Linux only.
    Uninstall {
        /// Remove from under this directory instead of / (does not run systemctl).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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

/// `XXX-XXX-XXX` (dashes and case optional) over the code alphabet.
fn plausible_code(code: &str) -> bool {
    let chars: Vec<char> = code.chars().filter(|c| *c != '-' && *c != ' ').collect();
    chars.len() == 9 && chars.iter().all(char::is_ascii_alphanumeric)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}"), 1),
    };
    match cli.command {
        Some(Command::Run { config }) => runtime.block_on(managed(config)),
        #[cfg(target_os = "linux")]
        Some(Command::Install {
            key_file,
            config,
            bin,
            root,
            display,
            xauthority,
        }) => {
            let options = InstallOptions {
                server: cli.server,
                key_file,
                config,
                bin,
                root,
                display,
                xauthority,
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
        #[cfg(not(target_os = "linux"))]
        Some(Command::Install { .. } | Command::Uninstall { .. }) => fail(
            "installing as a service is not implemented on this system yet; run \
             `guruconnect-agent run --config PATH` in the foreground",
            1,
        ),
        None => match (cli.server, cli.code) {
            (Some(server), Some(code)) => runtime.block_on(support(server, code)),
            _ => fail(
                "give --server URL --code XXX-XXX-XXX for a support session, or a subcommand (see --help)",
                1,
            ),
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
async fn support(server: String, code: String) -> ExitCode {
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
        outcome = session::run(conn, true) => outcome,
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

/// Managed mode: get a credential (stored key, enrollment, or the shared key), then
/// reconnect forever with backoff.
async fn managed(config_path: PathBuf) -> ExitCode {
    let config = match AgentConfig::load(&config_path) {
        Ok(c) => c,
        Err(e) => return fail(e, 1),
    };
    if let Err(code) = check_display() {
        return code;
    }
    let server = config.server.clone();
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
                            let started = Instant::now();
                            let options = SessionOptions {
                                attended: false,
                                key_file: Some(config.key_file.clone()),
                            };
                            let outcome = session::run_with(conn, options).await;
                            tracing::warn!(?outcome, "session ended");
                            if started.elapsed() > Duration::from_secs(60) {
                                backoff.reset();
                            }
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
