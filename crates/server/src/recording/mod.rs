//! Session recording (docs/recordings.md): when the policy says so, the relay copies what
//! it relays into one append-only file per session. A writer thread owns the file, so the
//! relay only ever queues (never waits on the disk); a full queue skips to the next
//! keyframe, a failing disk stops the recording with an alert while the session goes on.

pub mod format;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use guruconnect_store::{DEFAULT_TENANT, Recording, RecordingEnd, RecordingStatus, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use self::format::{Header, RecordType, encode_header, encode_record_header};
use crate::AppState;
use crate::audit::Audit;
use crate::error::{ApiError, ApiResult};
use crate::sessions::registry::LiveSession;

/// The settings key that holds the policy.
const POLICY_KEY: &str = "recording_policy";
/// While recording, the relay asks for a keyframe when the last one is older than this,
/// so a seek decodes at most a few seconds of frames. The relay checks on its 5 s agent
/// heartbeat, so 4 s here means a keyframe every 5 s.
pub const KEYFRAME_EVERY: Duration = Duration::from_secs(4);
/// Records queued for the writer; beyond this the recorder skips to the next keyframe.
const QUEUE: usize = 512;
/// Bytes queued for the writer at most (a slow disk must not hold frames in memory
/// without bound); beyond this the recorder skips to the next keyframe too.
const QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// The writer's buffer.
const WRITE_BUFFER: usize = 256 * 1024;
/// How many expired recordings one sweep removes.
const EXPIRE_BATCH: i64 = 200;

/// Which sessions are recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// None.
    #[default]
    Off,
    /// Every session.
    All,
    /// Sessions of machines in the policy's sites.
    Sites,
}

/// The recording policy (settings key `recording_policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Which sessions.
    pub mode: Mode,
    /// Site ids, for [`Mode::Sites`].
    #[serde(default)]
    pub sites: Vec<String>,
    /// Recordings older than this many days are removed.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
}

fn default_retention_days() -> u32 {
    30
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            mode: Mode::Off,
            sites: Vec::new(),
            retention_days: default_retention_days(),
        }
    }
}

impl Policy {
    /// Why the policy cannot be used, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        if !(1..=3650).contains(&self.retention_days) {
            return Some("retention_days must be between 1 and 3650");
        }
        if self.mode == Mode::Sites && self.sites.is_empty() {
            return Some("mode 'sites' needs at least one site");
        }
        if self.sites.len() > 1000 || self.sites.iter().any(|s| s.is_empty() || s.len() > 64) {
            return Some("sites must be at most 1000 site ids");
        }
        None
    }
}

/// The stored policy (the default, off, when none is stored or it does not parse).
pub async fn policy(state: &AppState) -> Policy {
    match state.store.get_setting(POLICY_KEY).await {
        Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::error!(error = %e, "stored recording policy does not parse; recording is off");
            Policy::default()
        }),
        Ok(None) => Policy::default(),
        Err(e) => {
            tracing::error!(error = ?e, "cannot read the recording policy; recording is off");
            Policy::default()
        }
    }
}

/// Stores the policy.
pub async fn set_policy(state: &AppState, policy: &Policy) -> Result<(), StoreError> {
    let text = serde_json::to_string(policy).unwrap_or_default();
    state.store.set_setting(POLICY_KEY, &text).await
}

/// The directory recordings are written to.
pub fn dir(state: &AppState) -> PathBuf {
    state
        .config
        .recordings_dir
        .clone()
        .unwrap_or_else(|| state.config.data_dir.join("recordings"))
}

/// A recording's file. Ids are session UUIDs; anything else never names a file.
pub fn file_of(state: &AppState, id: &str) -> Option<PathBuf> {
    uuid::Uuid::parse_str(id)
        .ok()
        .map(|u| dir(state).join(format!("{}.gcrec", u.hyphenated())))
}

/// The saved index beside a recording's file.
fn sidecar_of(path: &Path) -> PathBuf {
    path.with_extension("gcidx")
}

/// A recording's index: from its sidecar when that matches the file's length, else by
/// scanning the file; a closed recording's scan is saved as the sidecar (a seek in a long
/// recording then reads a few kilobytes instead of every record header). Blocking.
pub fn load_index(path: &Path, closed: bool) -> std::io::Result<format::Index> {
    let file_len = std::fs::metadata(path)?.len();
    let sidecar = sidecar_of(path);
    if closed
        && let Ok(text) = std::fs::read(&sidecar)
        && let Ok(saved) = serde_json::from_slice::<format::Sidecar>(&text)
        && saved.file_len == file_len
    {
        return Ok(saved.index);
    }
    let file = File::open(path)?;
    let index = format::read_index(std::io::BufReader::with_capacity(16 * 1024, file))?;
    if closed {
        let saved = format::Sidecar {
            file_len,
            index: index.clone(),
        };
        if let Err(e) = std::fs::write(&sidecar, serde_json::to_vec(&saved).unwrap_or_default()) {
            tracing::warn!(error = %e, path = %sidecar.display(), "cannot save a recording's index");
        }
    }
    Ok(index)
}

/// One record on its way to the writer.
enum Entry {
    Record(RecordType, u32, Bytes),
    End,
}

#[derive(Debug)]
struct Pacing {
    /// Frames are skipped until the next keyframe (the queue was full).
    awaiting_keyframe: bool,
    last_keyframe: Option<Instant>,
}

/// A session's recorder: the relay hands it what it relays.
#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Entry>,
    started: Instant,
    pacing: Mutex<Pacing>,
    /// Bytes in the queue (the writer takes off what it wrote).
    queued: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Record(kind, t, bytes) => write!(f, "{kind:?}@{t} ({} bytes)", bytes.len()),
            Entry::End => f.write_str("End"),
        }
    }
}

impl Recorder {
    fn t_ms(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX)
    }

    fn pacing(&self) -> std::sync::MutexGuard<'_, Pacing> {
        self.pacing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a video frame; returns true when the recorder needs a keyframe (it lost a
    /// frame and now waits for one).
    pub fn frame(&self, bytes: &Bytes, keyframe: bool) -> bool {
        let mut pacing = self.pacing();
        if pacing.awaiting_keyframe && !keyframe {
            return true;
        }
        let kind = if keyframe {
            RecordType::Keyframe
        } else {
            RecordType::Frame
        };
        if self.queued.load(Ordering::Relaxed) + bytes.len() > QUEUE_BYTES {
            pacing.awaiting_keyframe = true;
            return true;
        }
        match self.try_queue(kind, bytes) {
            Ok(()) => {
                pacing.awaiting_keyframe = false;
                if keyframe {
                    pacing.last_keyframe = Some(Instant::now());
                }
                false
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                pacing.awaiting_keyframe = true;
                true
            }
            // The recording stopped (disk full): nothing more to ask for.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether the last keyframe is older than [`KEYFRAME_EVERY`] (or there was none yet).
    pub fn keyframe_due(&self) -> bool {
        !self.tx.is_closed()
            && self
                .pacing()
                .last_keyframe
                .is_none_or(|t| t.elapsed() >= KEYFRAME_EVERY)
    }

    /// Queues any other record; one that does not fit is dropped (they are small and
    /// never needed to decode the picture).
    pub fn record(&self, kind: RecordType, bytes: &Bytes) {
        if self.queued.load(Ordering::Relaxed) + bytes.len() <= QUEUE_BYTES {
            let _ = self.try_queue(kind, bytes);
        }
    }

    fn try_queue(
        &self,
        kind: RecordType,
        bytes: &Bytes,
    ) -> Result<(), mpsc::error::TrySendError<Entry>> {
        self.tx
            .try_send(Entry::Record(kind, self.t_ms(), bytes.clone()))?;
        self.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Queues a JSON event.
    pub fn event(&self, event: Value) {
        let bytes = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
        self.record(RecordType::Event, &bytes);
    }
}

/// Whether `policy` records sessions of `agent_id`.
async fn applies(state: &AppState, policy: &Policy, agent_id: &str) -> bool {
    match policy.mode {
        Mode::Off => false,
        Mode::All => true,
        Mode::Sites => match state.store.get_machine(agent_id).await {
            Ok(machine) => machine
                .site_id
                .is_some_and(|site| policy.sites.contains(&site)),
            Err(_) => false,
        },
    }
}

/// Starts recording `session` if the policy says so. A recording that cannot start is
/// audited and alerted; the session goes on either way.
pub async fn start_if_due(state: &AppState, session: &std::sync::Arc<LiveSession>, hostname: &str) {
    let policy = policy(state).await;
    if !applies(state, &policy, &session.agent_id).await {
        return;
    }
    let Some(path) = file_of(state, &session.id) else {
        tracing::warn!(session_id = %session.id, "not recorded: the session id is not a UUID");
        return;
    };
    let header = Header {
        session_id: session.id.clone(),
        agent_id: session.agent_id.clone(),
        hostname: hostname.to_owned(),
        kind: session.kind.as_str().to_owned(),
        started_at: state.clock.now_millis(),
    };
    let opened = open_file(&path, &encode_header(&header));
    let (file, header_bytes) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            failed(
                state,
                session,
                &format!("cannot create {}: {e}", path.display()),
            )
            .await;
            return;
        }
    };
    let row = Recording {
        id: session.id.clone(),
        tenant_id: DEFAULT_TENANT.to_owned(),
        session_id: session.id.clone(),
        agent_id: session.agent_id.clone(),
        hostname: hostname.to_owned(),
        kind: session.kind,
        status: RecordingStatus::Recording,
        started_at: header.started_at,
        ended_at: None,
        bytes: i64::try_from(header_bytes.len()).unwrap_or(0),
        duration_ms: 0,
        sha256: None,
        error: None,
    };
    if let Err(e) = state.store.create_recording(&row).await {
        drop(file);
        let _ = std::fs::remove_file(&path);
        failed(state, session, &format!("cannot store the recording: {e}")).await;
        return;
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let recorder = Recorder {
        tx: tx.clone(),
        started: Instant::now(),
        pacing: Mutex::new(Pacing {
            awaiting_keyframe: true,
            last_keyframe: None,
        }),
        queued: queued.clone(),
    };
    if !session.set_recorder(recorder) {
        return;
    }
    Audit::new("recording.started")
        .agent(&session.agent_id)
        .session(&session.id)
        .details(json!({ "file": path.file_name().map(|n| n.to_string_lossy().into_owned()) }))
        .record_quietly(state)
        .await;
    let started = Instant::now();
    let writer = tokio::task::spawn_blocking(move || write_all(file, &header_bytes, rx, &queued));
    let (state, session) = (state.clone(), session.clone());
    tokio::spawn(async move {
        let mut writer = writer;
        let outcome = tokio::select! {
            outcome = &mut writer => outcome,
            () = session.cancel.cancelled() => {
                // The last record says why it ended (the viewers' own "left" come later).
                if let Some(recorder) = session.recorder() {
                    let reason = session.end_reason().map(|(_, reason)| reason);
                    recorder.event(json!({ "type": "session_ended", "reason": reason }));
                }
                let _ = tx.send(Entry::End).await;
                writer.await
            }
        };
        let outcome = outcome.unwrap_or_else(|e| Written {
            bytes: 0,
            sha256: None,
            error: Some(format!("recording writer stopped: {e}")),
        });
        finish(&state, &session, &path, outcome, started.elapsed()).await;
    });
}

fn open_file(path: &Path, header: &[u8]) -> std::io::Result<(File, Vec<u8>)> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    if let Err(e) = file.write_all(header) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok((file, header.to_vec()))
}

/// What the writer thread leaves behind.
#[derive(Debug)]
struct Written {
    bytes: u64,
    sha256: Option<String>,
    error: Option<String>,
}

/// The writer thread: appends records until `End`, hashing what it writes.
fn write_all(
    file: File,
    header: &[u8],
    mut rx: mpsc::Receiver<Entry>,
    queued: &AtomicUsize,
) -> Written {
    let mut hasher = Sha256::new();
    hasher.update(header);
    let mut bytes = header.len() as u64;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    let result = (|| -> std::io::Result<()> {
        while let Some(Entry::Record(kind, t, payload)) = rx.blocking_recv() {
            let len = u32::try_from(payload.len()).map_err(std::io::Error::other)?;
            let head = encode_record_header(kind, t, len);
            out.write_all(&head)?;
            out.write_all(&payload)?;
            hasher.update(head);
            hasher.update(&payload);
            bytes += head.len() as u64 + payload.len() as u64;
            queued.fetch_sub(payload.len(), Ordering::Relaxed);
        }
        out.flush()?;
        out.get_ref().sync_all()
    })();
    // Whatever happens, the relay must stop queueing.
    rx.close();
    match result {
        Ok(()) => Written {
            bytes,
            sha256: Some(hex::encode(hasher.finalize())),
            error: None,
        },
        Err(e) => Written {
            bytes,
            sha256: None,
            error: Some(e.to_string()),
        },
    }
}

/// SHA-256 and length of the file as it is on disk.
fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let total = std::io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok((total, hex::encode(hasher.finalize())))
}

async fn finish(
    state: &AppState,
    session: &LiveSession,
    path: &Path,
    mut written: Written,
    elapsed: Duration,
) {
    let failed_write = written.error.is_some();
    let on_disk = path.to_owned();
    let checked = tokio::task::spawn_blocking(move || {
        // After a failed write the writer's own count is not what the disk holds.
        let hashed = if failed_write {
            hash_file(&on_disk).ok()
        } else {
            None
        };
        let _ = load_index(&on_disk, true);
        hashed
    })
    .await;
    if let Ok(Some((bytes, sha))) = checked {
        written.bytes = bytes;
        written.sha256 = Some(sha);
    }
    let duration_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
    let end = RecordingEnd {
        status: if written.error.is_some() {
            RecordingStatus::Failed
        } else {
            RecordingStatus::Complete
        },
        ended_at: state.clock.now_millis(),
        bytes: i64::try_from(written.bytes).unwrap_or(i64::MAX),
        duration_ms,
        sha256: written.sha256.clone(),
        error: written.error.clone(),
    };
    let details = json!({
        "bytes": written.bytes, "duration_ms": duration_ms, "sha256": written.sha256,
        "error": written.error,
    });
    // Audited before the row says it closed: whoever sees it closed finds its hash.
    match &written.error {
        None => {
            Audit::new("recording.closed")
                .agent(&session.agent_id)
                .session(&session.id)
                .details(details)
                .record_quietly(state)
                .await;
        }
        Some(error) => failed_with(state, session, error, details).await,
    }
    if let Err(e) = state.store.finish_recording(&session.id, &end).await {
        tracing::error!(error = ?e, session_id = %session.id, "cannot store the end of a recording");
    }
}

async fn failed(state: &AppState, session: &LiveSession, error: &str) {
    failed_with(state, session, error, json!({ "error": error })).await;
}

/// Audits a recording that stopped (or never started) and alerts the administrators.
async fn failed_with(state: &AppState, session: &LiveSession, error: &str, details: Value) {
    tracing::error!(session_id = %session.id, error, "session recording stopped");
    Audit::new("recording.failed")
        .agent(&session.agent_id)
        .session(&session.id)
        .details(details)
        .record_quietly(state)
        .await;
    crate::alerts::raise(
        state,
        "recording_failed",
        Audit::new("alert.recording_failed")
            .agent(&session.agent_id)
            .session(&session.id),
        json!({ "session_id": session.id, "agent_id": session.agent_id, "error": error }),
    )
    .await;
}

/// Closes recordings a previous run left open (started before `before`, when this server
/// began serving; the server stopped or crashed while writing them): marked failed with the
/// file's hash and length as they are on disk (it plays up to its last whole record), and
/// audited. A recording whose session is still open is left alone (in a cluster another
/// instance may be writing it), as is one whose session ended after `ended_before` (its
/// writer may still be closing it).
pub async fn recover(state: &AppState, before: i64, ended_before: i64) {
    let open = match state.store.open_recordings(1000).await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!(error = ?e, "cannot list recordings left open");
            return;
        }
    };
    for rec in open.into_iter().filter(|r| r.started_at < before) {
        match state.store.get_session(&rec.session_id).await {
            Ok(s)
                if s.status != guruconnect_store::SessionStatus::Ended
                    || s.ended_at.is_none_or(|t| t >= ended_before) =>
            {
                continue;
            }
            Ok(_) | Err(guruconnect_store::StoreError::NotFound) => {}
            Err(e) => {
                tracing::warn!(error = ?e, "cannot check a recording's session");
                continue;
            }
        }
        let Some(path) = file_of(state, &rec.id) else {
            continue;
        };
        let hashed = tokio::task::spawn_blocking(move || {
            let hashed = hash_file(&path).ok();
            let _ = load_index(&path, true);
            hashed
        })
        .await
        .ok()
        .flatten();
        let error = "the server stopped while recording".to_owned();
        let end = RecordingEnd {
            status: RecordingStatus::Failed,
            ended_at: state.clock.now_millis(),
            bytes: hashed
                .as_ref()
                .map_or(0, |(b, _)| i64::try_from(*b).unwrap_or(i64::MAX)),
            duration_ms: 0,
            sha256: hashed.map(|(_, sha)| sha),
            error: Some(error.clone()),
        };
        Audit::new("recording.failed")
            .agent(&rec.agent_id)
            .session(&rec.session_id)
            .details(json!({ "error": error, "bytes": end.bytes, "sha256": end.sha256 }))
            .record_quietly(state)
            .await;
        if let Err(e) = state.store.finish_recording(&rec.id, &end).await {
            tracing::warn!(error = ?e, id = %rec.id, "cannot close a recording left open");
        }
    }
}

/// Removes closed recordings older than the policy's retention (file, then row), each
/// audited as `recording.expired`. Returns how many went.
pub async fn expire(state: &AppState) -> usize {
    let policy = policy(state).await;
    let cutoff = state.clock.now_millis() - i64::from(policy.retention_days) * 24 * 60 * 60 * 1000;
    let old = match state
        .store
        .recordings_started_before(cutoff, EXPIRE_BATCH)
        .await
    {
        Ok(old) => old,
        Err(e) => {
            tracing::warn!(error = ?e, "cannot list expired recordings");
            return 0;
        }
    };
    let mut removed = 0;
    for rec in old {
        if remove(state, &rec).await.is_ok() {
            removed += 1;
            Audit::new("recording.expired")
                .agent(&rec.agent_id)
                .session(&rec.session_id)
                .details(json!({ "started_at": rec.started_at, "bytes": rec.bytes, "sha256": rec.sha256, "retention_days": policy.retention_days }))
                .record_quietly(state)
                .await;
        }
    }
    removed
}

/// Deletes a recording's file (a missing file is fine) and then its row.
pub async fn remove(state: &AppState, rec: &Recording) -> ApiResult<()> {
    if let Some(path) = file_of(state, &rec.id) {
        let _ = tokio::fs::remove_file(sidecar_of(&path)).await;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "cannot delete {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Ok(state
        .store
        .delete_recording(&rec.tenant_id, &rec.id)
        .await?)
}
