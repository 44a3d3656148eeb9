//! The server under test: in-process (its own runtime on its own threads), a spawned
//! `guruconnect-server` child process (for RSS measurements), or an external URL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use guruconnect_server::Config;
use guruconnect_server::config::SharedKeyMode;
use secrecy::SecretString;

/// Admin password of the servers the bench starts itself.
pub const BENCH_ADMIN_PASSWORD: &str = "relay-bench-admin-password";
/// Shared agent key of the servers the bench starts itself.
pub const BENCH_SHARED_KEY: &str = "relay-bench-shared-agent-key-0123456789";

/// How [`Target::child_with`] starts the server.
#[derive(Debug, Default)]
pub struct ChildOptions {
    /// Soft open-file limit to start it under (via `prlimit`; hard limit unchanged).
    pub soft_nofile: Option<u64>,
    /// `RUST_LOG` for it (default `warn,sqlx=warn`).
    pub rust_log: Option<String>,
    /// More environment variables for it (a cluster member's database, bus and secret).
    pub env: Vec<(String, String)>,
}

/// A running server and how to reach it.
pub struct Target {
    /// `http://host:port`.
    pub base: String,
    /// Password of `admin`.
    pub admin_password: String,
    /// Shared agent key, if the server accepts one.
    pub shared_key: Option<String>,
    /// Process whose RSS is the server's (a child, or a given external pid).
    pub pid: Option<u32>,
    kind: Kind,
}

enum Kind {
    External,
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        _dir: tempfile::TempDir,
    },
    Child {
        child: Child,
        _dir: tempfile::TempDir,
    },
}

impl Target {
    /// An already running server.
    pub fn external(base: &str, admin_password: &str, shared_key: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            admin_password: admin_password.to_owned(),
            shared_key,
            pid: None,
            kind: Kind::External,
        }
    }

    /// Sets the pid whose RSS the idle scenario reads.
    pub fn with_pid(mut self, pid: Option<u32>) -> Self {
        self.pid = pid;
        self
    }

    /// Starts the real server in this process, on 127.0.0.1:0, with embedded SQLite in
    /// a temporary directory. It runs on a runtime of its own (2 worker threads) so the
    /// bench's clients do not share worker threads with it.
    pub fn in_process() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().to_path_buf(),
            admin_password: Some(SecretString::from(BENCH_ADMIN_PASSWORD.to_owned())),
            shared_agent_key: Some(SecretString::from(BENCH_SHARED_KEY.to_owned())),
            shared_agent_key_mode: SharedKeyMode::Enabled,
            ..Config::default()
        };
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                let report = addr_tx.clone();
                let run = || -> Result<()> {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .thread_name("server-worker")
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let state = guruconnect_server::build_state(config).await?;
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        let _ = addr_tx.send(Ok(listener.local_addr()?));
                        guruconnect_server::serve_state(state, listener, async move {
                            let _ = stop_rx.await;
                        })
                        .await
                    })
                };
                if let Err(e) = run() {
                    let _ = report.send(Err(e));
                }
            })?;
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .context("the in-process server did not start")??;
        Ok(Self {
            base: format!("http://{addr}"),
            admin_password: BENCH_ADMIN_PASSWORD.to_owned(),
            shared_key: Some(BENCH_SHARED_KEY.to_owned()),
            pid: None,
            kind: Kind::InProcess {
                stop: Some(stop_tx),
                _dir: dir,
            },
        })
    }

    /// Spawns `guruconnect-server` as a child process (embedded SQLite in a temporary
    /// directory, shared key enabled) and waits until `/health` answers.
    pub async fn child(server_bin: Option<&Path>) -> Result<Self> {
        Self::child_with(server_bin, &ChildOptions::default()).await
    }

    /// Like [`Target::child`], with a soft open-file limit and log filter of choice.
    pub async fn child_with(server_bin: Option<&Path>, options: &ChildOptions) -> Result<Self> {
        let bin = match server_bin {
            Some(path) => path.to_path_buf(),
            None => default_server_bin()?,
        };
        let dir = tempfile::tempdir()?;
        // Pick a free port; the tiny window before the child binds it is acceptable here.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let bind = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        // prlimit execs the server in place, so the child's pid stays the server's.
        let mut command = match options.soft_nofile {
            Some(soft) => {
                let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                    .maximum
                    .map_or_else(|| "unlimited".to_owned(), |h| h.to_string());
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:{hard}")).arg("--").arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            .env("GURUCONNECT_BIND", &bind)
            .env("GURUCONNECT_DATA_DIR", dir.path())
            .env("GURUCONNECT_ADMIN_PASSWORD", BENCH_ADMIN_PASSWORD)
            .env("GURUCONNECT_SHARED_AGENT_KEY", BENCH_SHARED_KEY)
            .env("GURUCONNECT_SHARED_AGENT_KEY_MODE", "enabled")
            .env(
                "RUST_LOG",
                options.rust_log.as_deref().unwrap_or("warn,sqlx=warn"),
            )
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        let mut target = Self {
            base: format!("http://{bind}"),
            admin_password: BENCH_ADMIN_PASSWORD.to_owned(),
            shared_key: Some(BENCH_SHARED_KEY.to_owned()),
            pid: Some(pid),
            kind: Kind::Child { child, _dir: dir },
        };
        target.wait_healthy(Duration::from_secs(60)).await?;
        Ok(target)
    }

    /// What a spawned server has logged so far (empty for other kinds).
    pub fn log(&self) -> String {
        match &self.kind {
            Kind::Child { _dir: dir, .. } => {
                std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
            }
            _ => String::new(),
        }
    }

    async fn wait_healthy(&mut self, within: Duration) -> Result<()> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        let started = Instant::now();
        loop {
            if let Kind::Child { child, _dir: dir } = &mut self.kind
                && let Some(status) = child.try_wait()?
            {
                let log =
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                bail!("the server exited during start-up ({status}):\n{log}");
            }
            if let Ok(resp) = http.get(format!("{}/health", self.base)).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!("the server at {} did not become healthy", self.base);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops a server the bench started.
    pub fn stop(mut self) {
        match &mut self.kind {
            Kind::External => {}
            Kind::InProcess { stop, .. } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
            }
            Kind::Child { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Kind::Child { child, .. } = &mut self.kind {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `guruconnect-server` next to this executable (both built by
/// `cargo build --release -p guruconnect-server -p guruconnect-bench`).
fn default_server_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("the bench executable has no parent directory"))?;
    let bin = dir.join("guruconnect-server");
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p guruconnect-server -p \
             guruconnect-bench`, or pass --server-bin PATH",
            bin.display()
        );
    }
    Ok(bin)
}

/// Resident set size of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// The soft limit on open files of this process (`/proc/self/limits`).
pub fn open_files_limit() -> Option<u64> {
    open_files_limit_of("self")
}

/// The soft limit on open files of process `pid` ("self" for this one).
pub fn open_files_limit_of(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Descriptors process `pid` holds open (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Lifts this process's soft open-file limit to its hard limit (the flood holds one end
/// of every connection); returns the soft limit now in force.
pub fn raise_own_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        limit.current = Some(hard);
        let _ = setrlimit(Resource::Nofile, limit);
    }
    open_files_limit()
}

/// CPU time (user + system) the server under test has used so far, in seconds: for a
/// server in this process, summed over its runtime's threads (`server-worker`, which also
/// names its blocking pool, and `bench-server`, which drives `block_on`), read from
/// `/proc/self/task/*/stat`; for a child or external server with a known pid, the
/// whole process from `/proc/<pid>/stat`. `None` for an external server without a pid.
/// Resolution is one clock tick (10 ms); threads that exited during the run are missed.
pub fn server_cpu_secs(target: &Target) -> Option<f64> {
    const TICKS_PER_SEC: f64 = 100.0; // USER_HZ, fixed in the /proc ABI
    let ticks = match (&target.kind, target.pid) {
        (Kind::InProcess { .. }, _) => {
            let mut total = 0u64;
            for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
                let dir = entry.path();
                let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                if matches!(comm.trim_end(), "server-worker" | "bench-server") {
                    total += stat_cpu_ticks(&dir.join("stat")).unwrap_or(0);
                }
            }
            total
        }
        (_, Some(pid)) => stat_cpu_ticks(Path::new(&format!("/proc/{pid}/stat")))?,
        (_, None) => return None,
    };
    Some(ticks as f64 / TICKS_PER_SEC)
}

/// utime + stime (fields 14 and 15) of a `/proc/.../stat` file, in clock ticks.
fn stat_cpu_ticks(path: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field 14 is index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
