//! `guruconnect-server`: thin binary over the library's [`guruconnect_server::serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use guruconnect_server::config::{Config, DEFAULT_CONFIG_TOML, LogFormat};

/// GuruConnect relay server: API, WebSocket relay and web console.
#[derive(Parser, Debug)]
#[command(version, about)]
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
            "glibc malloc: fixed mmap threshold"
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

/// glibc's malloc setting for the size from which blocks are mmapped. Setting it to 131072
/// keeps the relay's memory flat after fan-out bursts at some cost in throughput
/// (`docs/benchmarks.md`, "Memory after bursts"); it is logged when set.
const MMAP_THRESHOLD_VAR: &str = "MALLOC_MMAP_THRESHOLD_";

async fn run(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.bind))?;
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
