//! `guruconnect-server`: thin binary over the library's [`guruconnect_server::serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use guruconnect_server::config::{Config, DEFAULT_CONFIG_TOML, LogFormat};

/// GuruConnect relay server: API, WebSocket relay and web console.
#[derive(Parser, Debug)]
#[command(version = guruconnect_release::VERSION_LINE, about)]
struct Cli {
    /// TOML configuration file (default: ./guruconnect.toml when it exists).
    #[arg(long, env = "GURUCONNECT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides the file and environment).
    #[arg(long, global = true)]
    bind: Option<SocketAddr>,
    /// Data directory for the embedded database and generated secrets.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Print a commented default configuration file.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Config)) {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fix_malloc_mmap_threshold();
    let file = cli.config.clone().or_else(|| {
        let default = PathBuf::from("guruconnect.toml");
        default.exists().then_some(default)
    });
    let mut config = match Config::load(file.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("guruconnect-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(bind) = cli.bind {
        config.bind = bind;
    }
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    init_tracing(config.log_format);
    if let Some(value) = std::env::var_os(MMAP_THRESHOLD_VAR) {
        tracing::info!(
            threshold = %value.to_string_lossy(),
            "glibc malloc: fixed mmap threshold (set {MMAP_THRESHOLD_VAR} to choose another)"
        );
    }
    guruconnect_server::conn::raise_open_file_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("guruconnect-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guruconnect-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's malloc setting for the size from which blocks are mmapped. Fixed at
/// [`DEFAULT_MMAP_THRESHOLD`], frame buffers and Argon2's 19 MiB blocks go back to the
/// system when freed; glibc's own sliding threshold keeps them in per-thread heaps, and the
/// relay's memory grew after fan-out bursts and sign-ins (`docs/benchmarks.md`, "Memory
/// after bursts", "One-hour soak"). It is logged.
const MMAP_THRESHOLD_VAR: &str = "MALLOC_MMAP_THRESHOLD_";
/// The threshold the server runs with unless the operator chose one: glibc's initial 128 KiB.
const DEFAULT_MMAP_THRESHOLD: &str = "131072";

/// glibc reads its malloc settings once, before `main`: the server restarts itself once
/// with the threshold set (same pid, arguments and environment otherwise). An operator's
/// own `MALLOC_MMAP_THRESHOLD_` is kept, e.g. 33554432 for more throughput and less
/// predictable memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_malloc_mmap_threshold() {
    use std::os::unix::process::CommandExt as _;
    if std::env::var_os(MMAP_THRESHOLD_VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(MMAP_THRESHOLD_VAR, DEFAULT_MMAP_THRESHOLD)
        .exec();
    // Only returns when the exec failed: run with glibc's defaults.
    eprintln!(
        "guruconnect-server: cannot restart with a fixed malloc mmap threshold ({err}); going on without it"
    );
}

/// Pending connections the kernel queues for accept. Tokio's default of 1,024 overflowed in
/// the 8,000-connection flood: dropped SYNs were retried a second later, stalling sign-ins.
/// The kernel caps it at `net.core.somaxconn` (4,096 on current Linux).
const LISTEN_BACKLOG: u32 = 4096;

async fn run(config: Config) -> anyhow::Result<()> {
    let cannot = |e: std::io::Error| anyhow::anyhow!("cannot listen on {}: {e}", config.bind);
    let socket = if config.bind.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(cannot)?;
    // As tokio's `TcpListener::bind` does: a restart must not wait for TIME_WAIT.
    socket.set_reuseaddr(true).map_err(cannot)?;
    socket.bind(config.bind).map_err(cannot)?;
    let listener = socket.listen(LISTEN_BACKLOG).map_err(cannot)?;
    guruconnect_server::serve(config, listener, shutdown_signal()).await
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
