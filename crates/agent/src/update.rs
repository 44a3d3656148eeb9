//! Self-update of the managed agent (SPEC §4.15): check, verify, download, self-test, swap,
//! restart, confirm or roll back. Support mode never updates.
//!
//! **When.** A few seconds after the relay accepted the hello ([`CHECK_AFTER_CONNECT`]),
//! then every [`CHECK_EVERY`] while connected, and when the relay pushes an
//! `UpdateCommand` (an administrator asked; the command only says "look now", nothing in
//! it is trusted).
//!
//! **What is trusted.** Only what the release key signed. The agent asks `GET
//! /api/version` (TLS verified, always; the same client setup as enrollment), verifies the
//! `SignedRelease` with the public key pinned in its configuration before it looks at
//! anything in it, then [`choose`]s: the release must be newer than this agent (an older
//! one only when an administrator forced exactly that version), carry this platform's
//! artifact, and allow updating from this version (`min_version`). The artifact URL the
//! server gives must be a path on the same server; the file is downloaded resumably into
//! `<exe>-<version>.partial` beside the agent's binary (HTTP Range from the partial file's
//! length), and its size and SHA-256 must be the signed ones. A download that is wrong
//! (hash, size, write error such as a full disk) is deleted; one that was only cut short
//! is kept for the next attempt to resume. Nothing is replaced until all of this passed.
//!
//! **Swap.** The new binary is started once as `NEW selftest`, with a deadline: it must
//! exit 0 and name the signed version, or the update is undone before anything was
//! replaced (ROLLED_BACK, "the new version exited at start (…)"). Then a marker
//! `<exe>.update.json` (`from`, `to`, deadline, request id) is written, the running binary
//! renamed to `<exe>.previous` and the new one renamed to `<exe>`, RESTARTING is reported,
//! and the agent exits with [`EXIT_RESTART`] so its service manager starts the new binary
//! (systemd: the unit's `Restart=always`; Windows: the service restarts its worker).
//!
//! **After the restart** ([`Updater::new`] reads the marker). The new version reports DONE
//! and deletes the marker and `.previous` once the relay accepted its hello; if that has
//! not happened by the marker's deadline it renames `.previous` back, notes why in the
//! marker and exits for a restart. The restored old version then reports ROLLED_BACK once
//! it is online again, deletes the marker, and remembers the version in `<exe>.update-skip`
//! so that periodic checks do not install it again (an administrator's push still may).
//!
//! Status messages travel as `UpdateStatus` over the agent's connection, with the request
//! id of the push that started the attempt (empty for periodic checks). Periodic checks
//! that find nothing to do stay quiet; failures are always reported.
//!
//! Windows: the same flow with `guruconnect-agent.new.exe`. A running `.exe` can be renamed
//! there but neither deleted nor replaced, so a binary that may be running is moved out of
//! the way first (`make_room`: the new version restoring the previous one over itself;
//! `.previous` while the service, which keeps running the old code until the next service
//! restart, runs from it) and deleted at a later start. The service relaunches its worker
//! from the same path. Tested end to end on Linux (`tests/update.rs`) and with the `.exe`
//! under Wine (`tests/e2e_wine.rs`: update, self-test refusals, the rollback over the
//! running `.exe`); the service restarting its worker from the new file is not run.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guruconnect_proto::{Payload, UpdateCommand, UpdateState, UpdateStatus};
use guruconnect_release::{Artifact, Manifest, SignedRelease, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{Notify, mpsc};

use crate::version::agent_version;

/// The exit status that asks the service manager for a restart into the new binary.
pub const EXIT_RESTART: u8 = 75;
/// The first check after the relay accepted the hello.
pub const CHECK_AFTER_CONNECT: Duration = Duration::from_secs(5);
/// Periodic checks while connected.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// How long a new version has to come online before the previous one is restored.
pub const ONLINE_DEADLINE: Duration = Duration::from_secs(300);
/// How long the new binary's self-test may take.
pub const SELFTEST_DEADLINE: Duration = Duration::from_secs(20);
/// The answer to an update command when no release key is configured.
pub const NO_KEY: &str = "no release public key is pinned in this agent's configuration";
/// The first line `guruconnect-agent selftest` prints, before its version.
pub const SELFTEST_BANNER: &str = "guruconnect-agent selftest";

const ASK_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long RESTARTING gets to reach the relay before the process exits.
const FLUSH_BEFORE_EXIT: Duration = Duration::from_millis(800);

// ------------------------------------------------------------------ files

/// The files an update uses, all beside the agent's binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The agent's binary.
    pub exe: PathBuf,
    /// The binary before the last swap.
    pub previous: PathBuf,
    /// A verified download waiting for its self-test and the swap.
    pub new: PathBuf,
    /// The marker of an update in progress.
    pub marker: PathBuf,
    /// The version periodic checks skip (it was rolled back).
    pub skip: PathBuf,
}

impl Paths {
    /// The files for the binary at `exe`, named as this system wants them.
    pub fn for_exe(exe: &Path) -> Paths {
        if cfg!(windows) {
            Self::for_windows_exe(exe)
        } else {
            Self::named(exe, with_suffix(exe, ".new"))
        }
    }

    /// The files a Windows agent at `exe` uses (the tests under Wine name them on Linux):
    /// the download is `<name>.new.exe`, as Windows runs only files it recognises as
    /// programs by their extension.
    pub fn for_windows_exe(exe: &Path) -> Paths {
        Self::named(exe, exe.with_extension("new.exe"))
    }

    fn named(exe: &Path, new: PathBuf) -> Paths {
        Paths {
            exe: exe.to_owned(),
            previous: with_suffix(exe, ".previous"),
            new,
            marker: with_suffix(exe, ".update.json"),
            skip: with_suffix(exe, ".update-skip"),
        }
    }

    /// A free name for a binary moved out of the way ([`make_room`]): `<exe>.old-<n>`.
    fn aside(&self) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        with_suffix(
            &self.exe,
            &format!(".{OLD_INFIX}{nanos}-{}", std::process::id()),
        )
    }

    /// Deletes the binaries `make_room` moved aside that no longer run.
    pub fn remove_old(&self) {
        let (Some(dir), Some(name)) = (self.exe.parent(), self.exe.file_name()) else {
            return;
        };
        let prefix = format!("{}.{OLD_INFIX}", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                // Still running (Windows): deleted at a later start.
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Where the download of `version` is collected.
    pub fn partial(&self, version: &str) -> PathBuf {
        let mut s = self.exe.as_os_str().to_owned();
        s.push(format!("-{version}.partial"));
        PathBuf::from(s)
    }

    /// Removes partial downloads of other versions.
    fn remove_stale_partials(&self, keep: &Path) {
        let (Some(dir), Some(name)) = (self.exe.parent(), self.exe.file_name()) else {
            return;
        };
        let prefix = format!("{}-", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(&prefix) && file.ends_with(".partial") && entry.path() != keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// `<exe>` with `suffix` appended to its name.
fn with_suffix(exe: &Path, suffix: &str) -> PathBuf {
    let mut s = exe.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The part of a moved-aside binary's name after `<exe>.`.
const OLD_INFIX: &str = "old-";

/// Frees the name `path` (a binary that may be running) for another file: deletes it, or,
/// where the system refuses to delete or replace a binary that runs, renames it out of the
/// way to `<exe>.old-…` ([`Paths::remove_old`] deletes those once they no longer run).
///
/// That is Windows (and Wine): a running `.exe` cannot be deleted or renamed over, but it
/// can be renamed. It happens when a new version that did not come online restores the
/// previous one over itself, and when the service, which keeps running the old code until
/// it is restarted, runs it from `.previous`.
///
/// Returns where the file went when it was moved aside.
fn make_room(paths: &Paths, path: &Path) -> std::io::Result<Option<PathBuf>> {
    make_room_with(paths, path, |p| std::fs::remove_file(p))
}

fn make_room_with(
    paths: &Paths,
    path: &Path,
    remove: impl Fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<Option<PathBuf>> {
    match remove(path) {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            let aside = paths.aside();
            std::fs::rename(path, &aside).map_err(|r| {
                std::io::Error::new(
                    r.kind(),
                    format!(
                        "cannot delete {} ({e}) nor move it aside ({r})",
                        path.display()
                    ),
                )
            })?;
            tracing::info!(
                file = %path.display(),
                aside = %aside.display(),
                "update: moved a binary that cannot be deleted (it runs) out of the way: {e}"
            );
            Ok(Some(aside))
        }
    }
}

/// The marker of an update in progress, written before the swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The version that was running.
    pub from: String,
    /// The version installed.
    pub to: String,
    /// Unix seconds by which `to` must be online.
    pub deadline: u64,
    /// The push that started it (empty: a periodic check).
    #[serde(default)]
    pub request_id: String,
    /// Why `to` was undone, once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
}

impl Marker {
    /// Reads a marker; `None` when there is none. An unreadable one is removed.
    pub fn read(path: &Path) -> Option<Marker> {
        let text = std::fs::read_to_string(path).ok()?;
        match serde_json::from_str(&text) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(marker = %path.display(), "removing an unreadable update marker: {e}");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// Writes the marker atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        sync_dir(path);
        Ok(())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Makes renames in `path`'s directory durable (best effort; Unix only).
fn sync_dir(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = path;
}

// ------------------------------------------------------------------ the decision

/// What an update attempt was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// A push: the relay sent an `UpdateCommand` (else a periodic check).
    pub pushed: bool,
    /// The version to install (empty: the newest of this agent's channel).
    pub version: String,
    /// An administrator forced `version` even if it is older.
    pub allow_downgrade: bool,
    /// The push's id, echoed in every status.
    pub request_id: String,
}

impl From<UpdateCommand> for Request {
    fn from(c: UpdateCommand) -> Self {
        Request {
            pushed: true,
            version: c.version.trim().to_owned(),
            allow_downgrade: c.allow_downgrade,
            request_id: c.request_id,
        }
    }
}

/// What to do with a verified manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// It is this agent's version.
    UpToDate,
    /// Install this artifact.
    Install(Artifact),
    /// Refused, and why.
    Refuse(String),
}

/// Decides on a **verified** manifest for an agent of version `current` on `platform`.
pub fn choose(manifest: &Manifest, current: &str, platform: &str, request: &Request) -> Choice {
    let offered = manifest.version.as_str();
    if !request.version.is_empty() && offered != request.version {
        return Choice::Refuse(format!(
            "the server offered version {offered}, not the requested {}",
            request.version
        ));
    }
    if offered == current {
        return Choice::UpToDate;
    }
    if !guruconnect_release::is_newer(offered, current) {
        let forced = request.allow_downgrade && request.version == offered;
        if !forced {
            return Choice::Refuse(format!(
                "version {offered} is not newer than this agent's {current}; a downgrade \
                 needs an administrator to force that version for this machine"
            ));
        }
    }
    let Some(artifact) = manifest.artifact(platform) else {
        return Choice::Refuse(format!("release {offered} has no artifact for {platform}"));
    };
    if let Some(min) = &artifact.min_version
        && guruconnect_release::is_newer(min, current)
    {
        return Choice::Refuse(format!(
            "release {offered} cannot be installed over {current}: it needs at least {min}"
        ));
    }
    Choice::Install(artifact.clone())
}

/// The server's answer to `GET /api/version` (only `release` is trusted, once verified).
#[derive(Debug, Clone, Deserialize)]
pub struct VersionAnswer {
    /// Whether a release is offered.
    pub available: bool,
    /// Why not, when not.
    #[serde(default)]
    pub reason: Option<String>,
    /// The signed release.
    #[serde(default)]
    pub release: Option<SignedRelease>,
    /// Where its artifact for this platform is.
    #[serde(default)]
    pub artifact_url: Option<String>,
}

/// The artifact URL on `server` for a path the server gave; anything but a path on the
/// same server is refused.
pub fn artifact_url(server: &str, path: &str) -> Result<String, String> {
    if !path.starts_with('/') || path.starts_with("//") || path.contains(['\\', '\r', '\n']) {
        return Err(format!(
            "the server gave an artifact URL that is not a path on it ({path:?})"
        ));
    }
    Ok(format!("{}{path}", server.trim_end_matches('/')))
}

// ------------------------------------------------------------------ the updater

/// Where a new version stands after the restart.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Nothing pending.
    Idle,
    /// This is the new version: confirm once online, else roll back at the deadline.
    Confirm(Marker),
    /// This is the restored old version: report the rollback once online.
    ReportRollback(Marker),
}

/// One outcome of an attempt, reported as an `UpdateStatus`.
struct Report {
    state: UpdateState,
    version: String,
    detail: String,
}

impl Report {
    fn new(state: UpdateState, version: &str, detail: impl Into<String>) -> Report {
        Report {
            state,
            version: version.to_owned(),
            detail: detail.into(),
        }
    }
}

/// Sends `UpdateStatus` messages for one attempt.
struct Reporter<'a> {
    out: &'a mpsc::Sender<Payload>,
    request_id: String,
}

impl Reporter<'_> {
    async fn send(&self, report: Report) {
        let level = match report.state {
            UpdateState::Failed | UpdateState::RolledBack => tracing::Level::WARN,
            _ => tracing::Level::INFO,
        };
        if level == tracing::Level::WARN {
            tracing::warn!(state = ?report.state, version = %report.version, request_id = %self.request_id, "update: {}", report.detail);
        } else {
            tracing::info!(state = ?report.state, version = %report.version, request_id = %self.request_id, "update: {}", report.detail);
        }
        let _ = self
            .out
            .send(Payload::UpdateStatus(UpdateStatus {
                state: report.state as i32,
                version: report.version,
                detail: report.detail,
                request_id: self.request_id.clone(),
            }))
            .await;
    }
}

/// The managed agent's updater: one per process, shared by its sessions.
pub struct Updater {
    server: String,
    key: Option<VerifyingKey>,
    paths: Option<Paths>,
    current: &'static str,
    phase: Mutex<Phase>,
    /// One attempt at a time, across sessions.
    busy: tokio::sync::Mutex<()>,
    restart: Notify,
    http: Option<reqwest::Client>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("server", &self.server)
            .field("key", &self.key.is_some())
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl Updater {
    /// The updater for a managed agent of `server`, verifying with `release_public_key`
    /// (already checked by the configuration), whose binary is `exe`. Reads the marker of
    /// an update in progress (see the module doc) and logs whether updates are enabled.
    pub fn new(server: &str, release_public_key: Option<&str>, exe: Option<PathBuf>) -> Updater {
        let key = release_public_key.and_then(|k| match guruconnect_release::parse_public_key(k) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::error!("release_public_key: {e}");
                None
            }
        });
        let current = agent_version();
        match &key {
            Some(k) => tracing::info!(
                version = current,
                key = %guruconnect_release::key_fingerprint(k),
                "self-update is enabled with the pinned release key"
            ),
            None => tracing::warn!(
                version = current,
                "self-update is disabled: {NO_KEY} (release_public_key)"
            ),
        }
        let paths = exe.map(|e| Paths::for_exe(&e));
        if let Some(p) = &paths {
            p.remove_old();
        }
        let phase = paths
            .as_ref()
            .map_or(Phase::Idle, |p| startup_phase(p, current));
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| tracing::error!("self-update cannot build its HTTP client: {e}"))
            .ok();
        Updater {
            server: server.to_owned(),
            key,
            paths,
            current,
            phase: Mutex::new(phase),
            busy: tokio::sync::Mutex::new(()),
            restart: Notify::new(),
            http,
        }
    }

    /// Resolves when the agent must exit with [`EXIT_RESTART`] (a new binary is in place,
    /// or the previous one was restored).
    pub async fn restart_requested(&self) {
        self.restart.notified().await;
    }

    /// Resolves if this is a new version that did not come online by its marker's deadline,
    /// after restoring the previous binary; never otherwise.
    pub async fn online_deadline(&self) {
        let deadline = match &*self.lock_phase() {
            Phase::Confirm(m) => Some(m.deadline),
            _ => None,
        };
        let Some(deadline) = deadline else {
            return std::future::pending().await;
        };
        let wait = deadline.saturating_sub(unix_now());
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let marker = {
            let mut phase = self.lock_phase();
            match std::mem::replace(&mut *phase, Phase::Idle) {
                Phase::Confirm(m) => Some(m),
                other => {
                    *phase = other;
                    None
                }
            }
        };
        let Some(marker) = marker else {
            return std::future::pending().await;
        };
        let Some(paths) = &self.paths else {
            return std::future::pending().await;
        };
        let why = format!(
            "version {} did not come online within {} s; version {} was restored",
            marker.to,
            ONLINE_DEADLINE.as_secs(),
            marker.from
        );
        match restore_previous(paths, &marker, &why) {
            Ok(()) => {
                tracing::error!("update: {why}; restarting");
                // The caller exits for the restart.
            }
            Err(e) => {
                tracing::error!(
                    "update: version {} did not come online in time, and the previous \
                     version cannot be restored: {e}; keeping this one",
                    marker.to
                );
                let _ = std::fs::remove_file(&paths.marker);
                std::future::pending::<()>().await;
            }
        }
    }

    fn lock_phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs beside one session once the relay accepted the hello (the agent is online):
    /// confirms or reports a pending update, then checks after [`CHECK_AFTER_CONNECT`],
    /// every [`CHECK_EVERY`], and on each command from `commands`. Returns when the
    /// session ends (`commands` closes).
    pub async fn serve(
        self: std::sync::Arc<Self>,
        agent_id: String,
        out: mpsc::Sender<Payload>,
        mut commands: mpsc::Receiver<UpdateCommand>,
    ) {
        self.online(&out).await;
        let mut next = tokio::time::Instant::now() + CHECK_AFTER_CONNECT;
        loop {
            let request = tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => Request::from(c),
                    None => return,
                },
                () = tokio::time::sleep_until(next) => {
                    next = tokio::time::Instant::now() + CHECK_EVERY;
                    Request::default()
                }
            };
            if self.attempt(&agent_id, &request, &out).await {
                tokio::time::sleep(FLUSH_BEFORE_EXIT).await;
                self.restart.notify_one();
                return;
            }
        }
    }

    /// The relay accepted this agent's hello: a pending new version is confirmed, a
    /// restored old one reports the rollback.
    async fn online(&self, out: &mpsc::Sender<Payload>) {
        let phase = std::mem::replace(&mut *self.lock_phase(), Phase::Idle);
        let Some(paths) = &self.paths else { return };
        match phase {
            Phase::Idle => {}
            Phase::Confirm(marker) => {
                let _ = std::fs::remove_file(&paths.marker);
                if let Err(e) = make_room(paths, &paths.previous) {
                    tracing::warn!("update: cannot remove the previous version: {e}");
                }
                sync_dir(&paths.marker);
                let reporter = Reporter {
                    out,
                    request_id: marker.request_id.clone(),
                };
                reporter
                    .send(Report::new(
                        UpdateState::Done,
                        &marker.to,
                        format!("updated from {} to {}", marker.from, marker.to),
                    ))
                    .await;
            }
            Phase::ReportRollback(marker) => {
                let _ = std::fs::remove_file(&paths.marker);
                let _ = make_room(paths, &paths.previous);
                remember_skip(paths, &marker.to);
                let detail = marker.rolled_back.clone().unwrap_or_else(|| {
                    format!(
                        "version {} did not start or come online; version {} was restored",
                        marker.to, marker.from
                    )
                });
                let reporter = Reporter {
                    out,
                    request_id: marker.request_id.clone(),
                };
                reporter
                    .send(Report::new(UpdateState::RolledBack, &marker.to, detail))
                    .await;
            }
        }
    }

    /// One attempt; true when the new binary is in place and the agent must restart.
    async fn attempt(
        &self,
        agent_id: &str,
        request: &Request,
        out: &mpsc::Sender<Payload>,
    ) -> bool {
        let reporter = Reporter {
            out,
            request_id: request.request_id.clone(),
        };
        // A push waits for an attempt in progress (another session's); a periodic check
        // does not.
        let _busy = if request.pushed {
            self.busy.lock().await
        } else {
            match self.busy.try_lock() {
                Ok(guard) => guard,
                Err(_) => return false,
            }
        };
        match self.try_update(agent_id, request, &reporter).await {
            Ok(Some(report)) => {
                let restart = report.state == UpdateState::Restarting;
                reporter.send(report).await;
                restart
            }
            Ok(None) => false,
            Err(report) => {
                reporter.send(report).await;
                false
            }
        }
    }

    /// The attempt's steps. `Ok(None)`: nothing to report (a quiet periodic check).
    async fn try_update(
        &self,
        agent_id: &str,
        request: &Request,
        reporter: &Reporter<'_>,
    ) -> Result<Option<Report>, Report> {
        let wanted = request.version.as_str();
        let fail = |detail: String| Report::new(UpdateState::Failed, wanted, detail);
        let Some(key) = &self.key else {
            return if request.pushed {
                Err(fail(NO_KEY.into()))
            } else {
                Ok(None)
            };
        };
        let (Some(paths), Some(http)) = (&self.paths, &self.http) else {
            return Err(fail(
                "this agent cannot locate its own binary or start its HTTP client".into(),
            ));
        };
        if request.pushed {
            reporter
                .send(Report::new(
                    UpdateState::Checking,
                    wanted,
                    "asking the server for the release",
                ))
                .await;
        }
        let platform = guruconnect_release::current_platform();
        let answer = self
            .ask(http, agent_id, &platform, request)
            .await
            .map_err(fail)?;
        if !answer.available {
            let reason = answer
                .reason
                .unwrap_or_else(|| "the server offers no release".into());
            return if !request.version.is_empty() {
                Err(fail(format!(
                    "the server offers no update to {}: {reason}",
                    request.version
                )))
            } else if request.pushed {
                Ok(Some(Report::new(
                    UpdateState::UpToDate,
                    self.current,
                    reason,
                )))
            } else {
                tracing::info!("update check: {reason}");
                Ok(None)
            };
        }
        let Some(release) = answer.release else {
            return Err(fail(
                "the server offered a release without its signed manifest".into(),
            ));
        };
        // Nothing in the manifest is looked at before its signature verified.
        let manifest = release.verify(key).map_err(|e| {
            fail(format!(
                "refused the release the server offered: {e} (pinned key {})",
                guruconnect_release::key_fingerprint(key)
            ))
        })?;
        let version = manifest.version.clone();
        let fail = |detail: String| Report::new(UpdateState::Failed, &version, detail);
        let artifact = match choose(&manifest, self.current, &platform, request) {
            Choice::UpToDate if request.pushed => {
                return Ok(Some(Report::new(
                    UpdateState::UpToDate,
                    self.current,
                    format!("version {} is the newest for this machine", self.current),
                )));
            }
            Choice::UpToDate => return Ok(None),
            Choice::Refuse(why) => return Err(fail(why)),
            Choice::Install(a) => a,
        };
        if !request.pushed && skipped(paths).as_deref() == Some(version.as_str()) {
            tracing::info!(
                version,
                "update check: version {version} was rolled back on this machine; it is \
                 installed again only when an administrator pushes it"
            );
            return Ok(None);
        }
        let path = answer
            .artifact_url
            .ok_or_else(|| "the server offered a release without an artifact URL".to_owned())
            .and_then(|p| artifact_url(&self.server, &p))
            .map_err(fail)?;
        reporter
            .send(Report::new(
                UpdateState::Downloading,
                &version,
                format!("downloading {} bytes", artifact.size),
            ))
            .await;
        let partial = paths.partial(&version);
        paths.remove_stale_partials(&partial);
        download(http, &path, &artifact, &partial)
            .await
            .map_err(fail)?;
        reporter
            .send(Report::new(
                UpdateState::Verifying,
                &version,
                "size and SHA-256 match the signed release; testing the new binary",
            ))
            .await;
        let _ = std::fs::remove_file(&paths.new);
        std::fs::rename(&partial, &paths.new)
            .map_err(|e| fail(format!("cannot move the download into place: {e}")))?;
        make_executable(&paths.exe, &paths.new)
            .map_err(|e| fail(format!("cannot make the new binary executable: {e}")))?;
        if let Err(why) = self_test(&paths.new, &version).await {
            let _ = std::fs::remove_file(&paths.new);
            remember_skip(paths, &version);
            return Err(Report::new(
                UpdateState::RolledBack,
                &version,
                format!(
                    "the new version exited at start ({why}); version {} keeps running",
                    self.current
                ),
            ));
        }
        let marker = Marker {
            from: self.current.to_owned(),
            to: version.clone(),
            deadline: unix_now() + ONLINE_DEADLINE.as_secs(),
            request_id: request.request_id.clone(),
            rolled_back: None,
        };
        swap(paths, &marker).map_err(|e| {
            let _ = std::fs::remove_file(&paths.new);
            fail(format!(
                "cannot replace the binary: {e}; nothing was replaced"
            ))
        })?;
        Ok(Some(Report::new(
            UpdateState::Restarting,
            &version,
            format!("version {version} is in place; restarting into it"),
        )))
    }

    async fn ask(
        &self,
        http: &reqwest::Client,
        agent_id: &str,
        platform: &str,
        request: &Request,
    ) -> Result<VersionAnswer, String> {
        let url = format!("{}/api/version", self.server.trim_end_matches('/'));
        let mut query = vec![
            ("platform", platform),
            ("agent_id", agent_id),
            ("current", self.current),
        ];
        if !request.version.is_empty() {
            query.push(("version", &request.version));
            if request.allow_downgrade {
                query.push(("allow_downgrade", "true"));
            }
        }
        let response = http
            .get(&url)
            .query(&query)
            .timeout(ASK_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("cannot ask {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the server answered HTTP {status} at {url}"));
        }
        response
            .json::<VersionAnswer>()
            .await
            .map_err(|e| format!("unexpected answer from {url}: {e}"))
    }
}

/// The phase after a start, from the marker (if any) and this binary's version.
fn startup_phase(paths: &Paths, current: &str) -> Phase {
    let Some(marker) = Marker::read(&paths.marker) else {
        return Phase::Idle;
    };
    if current == marker.to && marker.rolled_back.is_none() {
        tracing::info!(
            from = %marker.from,
            "update: this is the new version {current}; it must come online by the deadline"
        );
        Phase::Confirm(marker)
    } else if current == marker.from {
        tracing::warn!(
            to = %marker.to,
            "update: version {} was undone; this is version {current} again", marker.to
        );
        Phase::ReportRollback(marker)
    } else {
        tracing::warn!(
            "update: removing a marker from {} to {} that does not match this version {current}",
            marker.from,
            marker.to
        );
        let _ = std::fs::remove_file(&paths.marker);
        Phase::Idle
    }
}

/// Puts `.previous` back in place of the binary and notes `why` in the marker.
fn restore_previous(paths: &Paths, marker: &Marker, why: &str) -> std::io::Result<()> {
    if !paths.previous.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is missing", paths.previous.display()),
        ));
    }
    let mut noted = marker.clone();
    noted.rolled_back = Some(why.to_owned());
    noted.write(&paths.marker)?;
    // The binary in place is the one running now: Windows renames it, never over it.
    let aside = make_room(paths, &paths.exe)?;
    if let Err(e) = std::fs::rename(&paths.previous, &paths.exe) {
        if let Some(aside) = aside {
            let _ = std::fs::rename(aside, &paths.exe);
        }
        return Err(e);
    }
    sync_dir(&paths.exe);
    Ok(())
}

/// Writes the marker, then moves the running binary to `.previous` and the new one in.
fn swap(paths: &Paths, marker: &Marker) -> std::io::Result<()> {
    marker.write(&paths.marker)?;
    if let Err(e) = make_room(paths, &paths.previous) {
        let _ = std::fs::remove_file(&paths.marker);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&paths.exe, &paths.previous) {
        let _ = std::fs::remove_file(&paths.marker);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&paths.new, &paths.exe) {
        let _ = std::fs::rename(&paths.previous, &paths.exe);
        let _ = std::fs::remove_file(&paths.marker);
        return Err(e);
    }
    sync_dir(&paths.exe);
    Ok(())
}

fn skipped(paths: &Paths) -> Option<String> {
    std::fs::read_to_string(&paths.skip)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn remember_skip(paths: &Paths, version: &str) {
    if let Err(e) = std::fs::write(&paths.skip, format!("{version}\n")) {
        tracing::warn!("cannot note that version {version} was rolled back: {e}");
    }
}

/// Gives `new` the permissions of `exe` (Unix: executable).
fn make_executable(exe: &Path, new: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(exe).map_or(0o755, |m| m.permissions().mode() & 0o7777);
        std::fs::set_permissions(new, std::fs::Permissions::from_mode(mode | 0o500))
    }
    #[cfg(not(unix))]
    {
        let _ = (exe, new);
        Ok(())
    }
}

// ------------------------------------------------------------------ download and test

/// Downloads `artifact` from `url` into `partial`, resuming what is there, and checks size
/// and SHA-256. A wrong file is deleted; a download that was only cut short is kept.
pub async fn download(
    http: &reqwest::Client,
    url: &str,
    artifact: &Artifact,
    partial: &Path,
) -> Result<(), String> {
    let discard = |why: String| {
        let _ = std::fs::remove_file(partial);
        why
    };
    let mut have = std::fs::metadata(partial).map_or(0, |m| m.len());
    if have > artifact.size {
        let _ = std::fs::remove_file(partial);
        have = 0;
    }
    if have < artifact.size {
        let mut req = http.get(url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut response = req
            .send()
            .await
            .map_err(|e| format!("cannot download {url}: {e}"))?;
        let status = response.status();
        let append = match status.as_u16() {
            206 if have > 0 => true,
            200 => false,
            416 => {
                return Err(discard(format!(
                    "the server refused to resume the download at byte {have} (HTTP 416); \
                     it starts over next time"
                )));
            }
            _ => return Err(format!("the server answered HTTP {status} for {url}")),
        };
        if !append {
            have = 0;
            if let Some(len) = response.content_length()
                && len != artifact.size
            {
                let _ = std::fs::remove_file(partial);
                return Err(format!(
                    "the artifact is {len} bytes, the signed release says {}; refused",
                    artifact.size
                ));
            }
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .await
            .map_err(|e| discard(format!("cannot write {}: {e}", partial.display())))?;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    let _ = file.flush().await;
                    return Err(format!(
                        "the download stopped after {have} of {} bytes ({e}); it resumes next time",
                        artifact.size
                    ));
                }
            };
            have += chunk.len() as u64;
            if have > artifact.size {
                drop(file);
                return Err(discard(format!(
                    "the artifact is larger than the {} bytes the signed release says; refused",
                    artifact.size
                )));
            }
            if let Err(e) = file.write_all(&chunk).await {
                drop(file);
                return Err(discard(format!("cannot write {}: {e}", partial.display())));
            }
        }
        if let Err(e) = file.sync_all().await {
            drop(file);
            return Err(discard(format!("cannot write {}: {e}", partial.display())));
        }
        if have < artifact.size {
            return Err(format!(
                "the download ended after {have} of {} bytes; it resumes next time",
                artifact.size
            ));
        }
    }
    let path = partial.to_owned();
    let digest = tokio::task::spawn_blocking(move || sha256_file(&path))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|e| discard(format!("cannot read the download back: {e}")))?;
    if !digest.eq_ignore_ascii_case(&artifact.sha256) {
        return Err(discard(format!(
            "the download's SHA-256 ({digest}) is not the signed release's ({}); discarded",
            artifact.sha256
        )));
    }
    Ok(())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Runs `new selftest` with a deadline; it must exit 0 and print [`SELFTEST_BANNER`] and
/// `version`.
pub async fn self_test(new: &Path, version: &str) -> Result<(), String> {
    let mut command = tokio::process::Command::new(new);
    command
        .arg("selftest")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let output = match tokio::time::timeout(SELFTEST_DEADLINE, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("cannot wait for it: {e}")),
        Err(_) => {
            return Err(format!(
                "it did not finish its self-test within {} s",
                SELFTEST_DEADLINE.as_secs()
            ));
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let last: String = last.chars().take(200).collect();
        return Err(format!(
            "{}{}{last}",
            output.status,
            if last.is_empty() { "" } else { ": " }
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said = stdout
        .lines()
        .find_map(|l| l.strip_prefix(SELFTEST_BANNER))
        .map(str::trim);
    match said {
        Some(v) if v == version => Ok(()),
        Some(v) => Err(format!(
            "it says it is version {v}, the release says {version}"
        )),
        None => Err("it did not answer the self-test".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guruconnect_release::Channel;

    fn manifest(version: &str, min: Option<&str>) -> Manifest {
        Manifest {
            version: version.into(),
            channel: Channel::Stable,
            notes: String::new(),
            artifacts: vec![Artifact {
                platform: "linux-x86_64".into(),
                file: "guruconnect-agent".into(),
                size: 3,
                sha256: guruconnect_release::sha256_hex(b"abc"),
                min_version: min.map(str::to_owned),
                path: None,
            }],
        }
    }

    fn push(version: &str, allow_downgrade: bool) -> Request {
        Request {
            pushed: true,
            version: version.into(),
            allow_downgrade,
            request_id: "r1".into(),
        }
    }

    #[test]
    fn only_a_newer_release_for_this_platform_and_version_is_installed() {
        let periodic = Request::default();
        let p = "linux-x86_64";
        assert!(matches!(
            choose(&manifest("1.2.0", None), "1.1.0", p, &periodic),
            Choice::Install(_)
        ));
        assert_eq!(
            choose(&manifest("1.1.0", None), "1.1.0", p, &periodic),
            Choice::UpToDate
        );
        // Older, or a prerelease of the same version: never without a forced downgrade.
        for (offered, current) in [("1.0.0", "1.1.0"), ("1.1.0-beta.2", "1.1.0")] {
            let Choice::Refuse(why) = choose(&manifest(offered, None), current, p, &periodic)
            else {
                panic!("{offered} over {current} must be refused");
            };
            assert!(why.contains("not newer"), "{why}");
        }
        // Forced for exactly that version: yes; forced for another one: no.
        assert!(matches!(
            choose(&manifest("1.0.0", None), "1.1.0", p, &push("1.0.0", true)),
            Choice::Install(_)
        ));
        assert!(matches!(
            choose(&manifest("1.0.0", None), "1.1.0", p, &push("1.0.0", false)),
            Choice::Refuse(_)
        ));
        assert!(matches!(
            choose(&manifest("1.0.0", None), "1.1.0", p, &push("", true)),
            Choice::Refuse(_)
        ));
        assert!(matches!(
            choose(&manifest("1.3.0", None), "1.1.0", p, &push("1.2.0", false)),
            Choice::Refuse(_)
        ));
        // Another platform, or too old to update from.
        assert!(matches!(
            choose(
                &manifest("1.2.0", None),
                "1.1.0",
                "windows-x86_64",
                &periodic
            ),
            Choice::Refuse(_)
        ));
        let Choice::Refuse(why) = choose(&manifest("2.0.0", Some("1.5.0")), "1.1.0", p, &periodic)
        else {
            panic!("min_version");
        };
        assert!(why.contains("at least 1.5.0"), "{why}");
        assert!(matches!(
            choose(&manifest("2.0.0", Some("1.1.0")), "1.1.0", p, &periodic),
            Choice::Install(_)
        ));
    }

    #[test]
    fn the_artifact_url_must_be_a_path_on_the_same_server() {
        assert_eq!(
            artifact_url(
                "https://r.example/",
                "/api/releases/1.2.0/artifacts/linux-x86_64"
            ),
            Ok("https://r.example/api/releases/1.2.0/artifacts/linux-x86_64".into())
        );
        for bad in [
            "https://evil.example/x",
            "//evil.example/x",
            "api/x",
            "/a\r\nb",
        ] {
            assert!(artifact_url("https://r.example", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_marker_decides_what_a_start_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::for_exe(&dir.path().join("guruconnect-agent"));
        assert_eq!(startup_phase(&paths, "1.0.0"), Phase::Idle);
        let marker = Marker {
            from: "1.0.0".into(),
            to: "1.1.0".into(),
            deadline: unix_now() + 60,
            request_id: "r1".into(),
            rolled_back: None,
        };
        marker.write(&paths.marker).expect("write");
        assert_eq!(Marker::read(&paths.marker), Some(marker.clone()));
        assert_eq!(
            startup_phase(&paths, "1.1.0"),
            Phase::Confirm(marker.clone())
        );
        assert_eq!(
            startup_phase(&paths, "1.0.0"),
            Phase::ReportRollback(marker.clone())
        );
        // Neither version: the marker is stale and removed.
        assert_eq!(startup_phase(&paths, "0.9.0"), Phase::Idle);
        assert!(!paths.marker.exists());
        // Garbage: removed.
        std::fs::write(&paths.marker, "{").expect("write");
        assert_eq!(startup_phase(&paths, "1.0.0"), Phase::Idle);
        assert!(!paths.marker.exists());
    }

    #[test]
    fn swap_and_restore_move_the_binaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::for_exe(&dir.path().join("guruconnect-agent"));
        std::fs::write(&paths.exe, "old").expect("write");
        std::fs::write(&paths.new, "new").expect("write");
        let marker = Marker {
            from: "1.0.0".into(),
            to: "1.1.0".into(),
            deadline: 0,
            request_id: String::new(),
            rolled_back: None,
        };
        swap(&paths, &marker).expect("swap");
        assert_eq!(std::fs::read_to_string(&paths.exe).expect("exe"), "new");
        assert_eq!(
            std::fs::read_to_string(&paths.previous).expect("prev"),
            "old"
        );
        assert!(!paths.new.exists());
        restore_previous(&paths, &marker, "it did not come online").expect("restore");
        assert_eq!(std::fs::read_to_string(&paths.exe).expect("exe"), "old");
        assert!(!paths.previous.exists());
        let noted = Marker::read(&paths.marker).expect("marker");
        assert_eq!(noted.rolled_back.as_deref(), Some("it did not come online"));
        // The restored old version reports the rollback, the new one no longer confirms.
        assert!(matches!(
            startup_phase(&paths, "1.0.0"),
            Phase::ReportRollback(_)
        ));
        assert_eq!(startup_phase(&paths, "1.1.0"), Phase::Idle);
        // A second restore has nothing to restore.
        assert!(restore_previous(&paths, &marker, "again").is_err());
    }

    /// A one-shot HTTP server per request: `answer` gets the request's Range header (if
    /// any) and returns the raw response bytes; the connection closes after them.
    async fn serve_raw(
        answer: impl Fn(Option<String>) -> Vec<u8> + Send + Sync + 'static,
    ) -> (
        String,
        std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
    ) {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/artifact", listener.local_addr().expect("addr"));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let range = text
                    .lines()
                    .find_map(|l| l.strip_prefix("range: "))
                    .map(|r| r.trim().to_owned());
                log.lock().expect("log").push(range.clone());
                let _ = socket.write_all(&answer(range)).await;
                let _ = socket.shutdown().await;
            }
        });
        (url, seen)
    }

    fn artifact_of(bytes: &[u8]) -> Artifact {
        Artifact {
            platform: "linux-x86_64".into(),
            file: "guruconnect-agent".into(),
            size: bytes.len() as u64,
            sha256: guruconnect_release::sha256_hex(bytes),
            min_version: None,
            path: None,
        }
    }

    #[tokio::test]
    async fn a_cut_download_resumes_with_a_range_and_a_wrong_one_is_deleted() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let served = body.clone();
        // First answer: the whole length announced, the connection closed after 30,000
        // bytes. Then the rest, as a 206 for the Range asked.
        let (url, seen) = serve_raw(move |range| match range {
            None => {
                let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", served.len())
                    .into_bytes();
                r.extend_from_slice(&served[..30_000]);
                r
            }
            Some(range) => {
                let from: usize = range
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .expect("range");
                let mut r = format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {from}-{}/{}\r\n\r\n",
                    served.len() - from,
                    served.len() - 1,
                    served.len()
                )
                .into_bytes();
                r.extend_from_slice(&served[from..]);
                r
            }
        })
        .await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let dir = tempfile::tempdir().expect("tempdir");
        let partial = dir.path().join("agent-1.2.0.partial");
        let artifact = artifact_of(&body);

        let cut = download(&http, &url, &artifact, &partial)
            .await
            .expect_err("cut short");
        assert!(cut.contains("resumes next time"), "{cut}");
        assert_eq!(std::fs::metadata(&partial).expect("kept").len(), 30_000);
        download(&http, &url, &artifact, &partial)
            .await
            .expect("resumed");
        assert_eq!(std::fs::read(&partial).expect("read"), body);
        assert_eq!(
            *seen.lock().expect("seen"),
            vec![None, Some("bytes=30000-".to_owned())]
        );

        // The same bytes against a manifest with another hash: deleted.
        std::fs::remove_file(&partial).expect("rm");
        let mut other = artifact.clone();
        other.sha256 = guruconnect_release::sha256_hex(b"something else");
        let _ = download(&http, &url, &artifact, &partial).await;
        let wrong = download(&http, &url, &other, &partial)
            .await
            .expect_err("wrong hash");
        assert!(wrong.contains("SHA-256"), "{wrong}");
        assert!(!partial.exists(), "a wrong download is deleted");

        // Nobody listening: a clear error, nothing written.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let unreachable = download(&http, &format!("http://{closed}/x"), &artifact, &partial)
            .await
            .expect_err("unreachable");
        assert!(unreachable.contains("cannot download"), "{unreachable}");
        assert!(!partial.exists());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_self_test_must_exit_0_and_name_the_signed_version() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let script = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            path
        };
        let good = script(
            "good",
            &format!("#!/bin/sh\necho '{SELFTEST_BANNER} 1.2.0'\n"),
        );
        assert_eq!(self_test(&good, "1.2.0").await, Ok(()));
        let why = self_test(&good, "1.3.0").await.expect_err("other version");
        assert!(why.contains("1.2.0"), "{why}");
        let failing = script("failing", "#!/bin/sh\necho 'no display' >&2\nexit 4\n");
        let why = self_test(&failing, "1.2.0").await.expect_err("exit 4");
        assert!(why.contains("no display"), "{why}");
        let silent = script("silent", "#!/bin/sh\nexit 0\n");
        assert!(self_test(&silent, "1.2.0").await.is_err());
        let not_a_program = dir.path().join("data");
        std::fs::write(&not_a_program, [0u8; 64]).expect("write");
        assert!(self_test(&not_a_program, "1.2.0").await.is_err());
    }

    #[test]
    fn a_binary_that_cannot_be_deleted_is_moved_aside_and_deleted_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::for_exe(&dir.path().join("guruconnect-agent"));
        std::fs::write(&paths.previous, "old").expect("write");
        // As Windows answers for a running binary: it cannot be deleted, but renamed.
        let running = |p: &Path| -> std::io::Result<()> {
            if p.exists() {
                Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            } else {
                std::fs::remove_file(p)
            }
        };
        let aside = make_room_with(&paths, &paths.previous, running)
            .expect("moved")
            .expect("aside");
        assert!(!paths.previous.exists());
        assert_eq!(std::fs::read_to_string(&aside).expect("aside"), "old");
        let name = aside
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("guruconnect-agent.old-"), "{name}");
        // Nothing there: nothing to do.
        assert_eq!(
            make_room_with(&paths, &paths.previous, running).expect("ok"),
            None
        );
        // Once it no longer runs, a later start deletes it (and only it).
        std::fs::write(&paths.exe, "agent").expect("write");
        paths.remove_old();
        assert!(!aside.exists());
        assert!(paths.exe.exists());
    }

    #[test]
    fn paths_sit_beside_the_binary() {
        let paths = Paths::for_exe(Path::new("/opt/gc/guruconnect-agent"));
        assert_eq!(
            paths.previous,
            Path::new("/opt/gc/guruconnect-agent.previous")
        );
        assert_eq!(
            paths.marker,
            Path::new("/opt/gc/guruconnect-agent.update.json")
        );
        assert_eq!(
            paths.partial("1.2.0"),
            Path::new("/opt/gc/guruconnect-agent-1.2.0.partial")
        );
        let windows = Paths::for_windows_exe(Path::new("/opt/gc/guruconnect-agent.exe"));
        assert_eq!(windows.new, Path::new("/opt/gc/guruconnect-agent.new.exe"));
        assert_eq!(
            windows.previous,
            Path::new("/opt/gc/guruconnect-agent.exe.previous")
        );
    }
}
