//! `relay-bench`: benchmarks of the GuruConnect relay.
//!
//! Scenarios: `throughput` (1 agent → 1 viewer, 1 MiB frames), `latency` (added latency
//! of small and 64 KiB frames at 200/s), `fanout` (1 agent → 10 viewers at 60 fps with
//! one slow viewer), `idle` (server RSS per idle agent), `soak` (idle agents with
//! periodic fan-out bursts, server RSS over time), `flood` (idle and slow connections the
//! server must close, sign-in meanwhile), `record` (session recording's CPU and bytes
//! per minute), `seek` (seeking to the middle of a 30-minute recording), `cluster` (three
//! server processes on PostgreSQL and NATS: same- versus cross-instance throughput, latency
//! and fan-out) and `all` (all but `soak`, `flood`, `record`, `seek` and `cluster`). Each
//! prints markdown table rows. Run in release mode; see `docs/benchmarks.md`.

#![forbid(unsafe_code)]

mod cluster;
mod flood;
mod peers;
mod record;
mod report;
mod scenarios;
mod target;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};

use report::print_table;
use target::Target;

/// Which benchmark to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1 agent → 1 viewer, 1 MiB keyframes back to back for 5 s.
    Throughput,
    /// Added latency of 1 KiB and 64 KiB frames at 200 frames/s.
    Latency,
    /// 1 agent → 10 viewers (one slow), ~405 KiB frames at 60 fps for 10 s.
    Fanout,
    /// Server RSS per idle agent (spawns target/release/guruconnect-server).
    Idle,
    /// Idle agents with a fan-out burst every --burst-every-secs, RSS over time (spawns
    /// the server like `idle`); not part of `all`.
    Soak,
    /// Silent, slowloris, half-sent and refused-then-idle connections against a spawned
    /// server: time until it closes them, sign-in and `/health` latency meanwhile; not
    /// part of `all`.
    Flood,
    /// Session recording's cost: the same 1080p-sized stream with recording off and on,
    /// process CPU and recorded bytes per minute; not part of `all`.
    Record,
    /// Seeking to the middle of a synthetic 30-minute recording: indexing and the bytes a
    /// player reads, cold and warm page cache; not part of `all`.
    Seek,
    /// Three spawned server processes (A, B, C) on a fresh schema of --database-url and
    /// NATS at --nats-url: throughput and latency of 1 MiB and 64 KiB frames with the
    /// viewer on A (same instance as the agent) and on B (tunnelled over NATS), then 1 →
    /// 10 viewers over A, B, C with one that stops reading for 5 s (on A, then on B);
    /// not part of `all`.
    Cluster,
    /// All of the above but `soak`, `flood`, `record`, `seek` and `cluster`.
    All,
}

/// Benchmarks of the GuruConnect relay.
#[derive(Debug, Parser)]
#[command(name = "relay-bench", version = guruconnect_release::VERSION_LINE, about)]
struct Cli {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Use a running server (http://host:port) instead of starting one.
    #[arg(long)]
    server: Option<String>,
    /// Password of `admin` on the --server.
    #[arg(long, env = "GURUCONNECT_BENCH_ADMIN_PASSWORD")]
    admin_password: Option<String>,
    /// Shared agent key of the --server (mode `enabled`), for the idle scenario.
    #[arg(long, env = "GURUCONNECT_BENCH_SHARED_KEY")]
    shared_key: Option<String>,
    /// Process id of the --server, for the idle scenario's RSS readings.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Server binary the idle, soak, flood and cluster scenarios spawn (default:
    /// guruconnect-server next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Idle agents to connect.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Idle agents connecting at the same time.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Soak: fan-out bursts to run.
    #[arg(long, default_value_t = 3)]
    bursts: usize,
    /// Soak: seconds of idling before each burst (and after the last).
    #[arg(long, default_value_t = 600)]
    burst_every_secs: u64,
    /// Soak: seconds between RSS readings.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Flood: silent connections to open.
    #[arg(long, default_value_t = 8_000)]
    connections: usize,
    /// Flood: silent connections per source address (the server's default cap is 256).
    #[arg(long, default_value_t = 200)]
    per_address: usize,
    /// Flood: connections of each other kind (slowloris, half-sent, refused upgrades).
    #[arg(long, default_value_t = 20)]
    extras: usize,
    /// Flood: seconds to wait for the server to close everything.
    #[arg(long, default_value_t = 60)]
    flood_wait_secs: u64,
    /// Flood: start the server under this soft open-file limit (`prlimit`, hard limit
    /// unchanged), e.g. 1024.
    #[arg(long)]
    soft_nofile: Option<u64>,
    /// Record: seconds of streaming per run (one run with recording off, one on).
    #[arg(long, default_value_t = 60)]
    record_secs: u64,
    /// Seek: minutes of the synthetic recording.
    #[arg(long, default_value_t = 30)]
    seek_minutes: u64,
    /// Cluster: PostgreSQL database; the run creates a schema in it and drops it after.
    #[arg(
        long,
        env = "GURUCONNECT_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    database_url: String,
    /// Cluster: the NATS server the instances meet on.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
}

impl Cli {
    fn external(&self) -> Result<Option<Target>> {
        let Some(server) = &self.server else {
            return Ok(None);
        };
        let Some(password) = &self.admin_password else {
            bail!("--server needs --admin-password (or GURUCONNECT_BENCH_ADMIN_PASSWORD)");
        };
        Ok(Some(
            Target::external(server, password, self.shared_key.clone()).with_pid(self.server_pid),
        ))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let stream_scenarios: &[Scenario] = match cli.scenario {
        Scenario::All => &[Scenario::Throughput, Scenario::Latency, Scenario::Fanout],
        Scenario::Idle | Scenario::Soak | Scenario::Flood | Scenario::Seek | Scenario::Cluster => {
            &[]
        }
        ref one => std::slice::from_ref(one),
    };
    if !stream_scenarios.is_empty() {
        let target = match cli.external()? {
            Some(target) => target,
            None => Target::in_process()?,
        };
        println!("Server: {}", target.base);
        for scenario in stream_scenarios {
            let rows = match scenario {
                Scenario::Throughput => scenarios::throughput(&target).await?,
                Scenario::Latency => scenarios::latency(&target).await?,
                Scenario::Fanout => scenarios::fanout(&target).await?,
                Scenario::Record => {
                    let run = std::time::Duration::from_secs(cli.record_secs.max(1));
                    record::record(&target, run).await?
                }
                Scenario::Idle
                | Scenario::Soak
                | Scenario::Flood
                | Scenario::Seek
                | Scenario::Cluster
                | Scenario::All => continue,
            };
            print_table(&format!("{scenario:?}").to_lowercase(), &rows);
        }
        target.stop();
    }
    if cli.scenario == Scenario::Cluster {
        let params = cluster::ClusterParams {
            database_url: cli.database_url.clone(),
            nats_url: cli.nats_url.clone(),
        };
        let rows = cluster::cluster(cli.server_bin.as_deref(), &params).await?;
        print_table("cluster", &rows);
    }
    if cli.scenario == Scenario::Seek {
        print_table("seek", &record::seek(cli.seek_minutes.max(1))?);
    }
    if matches!(cli.scenario, Scenario::Idle | Scenario::All) {
        let target = match cli.external()? {
            Some(target) => target,
            None => Target::child(cli.server_bin.as_deref()).await?,
        };
        println!();
        println!("Server (idle): {} pid {:?}", target.base, target.pid);
        let rows = scenarios::idle(&target, cli.agents, cli.concurrency).await?;
        print_table("idle", &rows);
        target.stop();
    }
    if cli.scenario == Scenario::Soak {
        let target = match cli.external()? {
            Some(target) => target,
            None => Target::child(cli.server_bin.as_deref()).await?,
        };
        println!("Server (soak): {} pid {:?}", target.base, target.pid);
        let rows = scenarios::soak(
            &target,
            cli.agents,
            cli.concurrency,
            cli.bursts,
            std::time::Duration::from_secs(cli.burst_every_secs),
            std::time::Duration::from_secs(cli.sample_secs.max(1)),
        )
        .await?;
        print_table("soak", &rows);
        target.stop();
    }
    if cli.scenario == Scenario::Flood {
        // Before the spawn, so the server inherits it unless --soft-nofile says otherwise.
        let own = target::raise_own_open_files_limit();
        let target = match cli.external()? {
            Some(target) => target,
            None => {
                let options = target::ChildOptions {
                    soft_nofile: cli.soft_nofile,
                    // The start-up line with the open-file limit is logged at info.
                    rust_log: Some("warn,sqlx=warn,guruconnect_server::conn=info".to_owned()),
                    ..target::ChildOptions::default()
                };
                Target::child_with(cli.server_bin.as_deref(), &options).await?
            }
        };
        println!(
            "Server (flood): {} pid {:?}; bench open-file limit {own:?}",
            target.base, target.pid
        );
        let params = flood::FloodParams {
            connections: cli.connections,
            per_address: cli.per_address,
            extras: cli.extras,
            concurrency: cli.concurrency,
            wait: std::time::Duration::from_secs(cli.flood_wait_secs),
        };
        let rows = flood::flood(&target, &params).await?;
        print_table("flood", &rows);
        target.stop();
    }
    Ok(())
}
