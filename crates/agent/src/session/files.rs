//! File transfer: uploads into a directory the technician chose, downloads of one file or
//! of a folder (as a tar stream).
//!
//! Uploads are written to a hidden `.<name>.gcpart` beside the target, created exclusively
//! (never through an existing file or link), checked against the sender's size and SHA-256
//! and only then moved into place: without `overwrite` through a hard link, which fails if
//! the name exists (no clobbering, even in a race), with it by a rename that replaces a
//! regular file (a link or directory of that name is refused, so nothing outside the
//! directory is ever written). Anything that fails or is cancelled removes the partial file;
//! an upload cut off by a lost connection keeps it, and the next upload of that name with
//! `resume` continues from its length (the SHA-256 at the end covers the whole file, so a
//! partial of another file fails the check and is removed). While an upload runs its
//! partial file is locked (Linux: `flock`), so two uploads of one name never mix.
//!
//! A download runs on a thread that reads the file in chunks, paced by the viewer's
//! `FileAck`s (at most [`FILE_WINDOW`] bytes in flight) and by the session's bounded
//! outgoing queue, so a transfer never crowds out the picture. A folder is sent as
//! `<folder>.tar` (ustar/GNU, no compression) of its files and folders; links and special
//! files are left out, never followed. Its exact size is known before the first byte (a dry
//! run over the recorded sizes), so progress and the relay's size limit work as for a file;
//! a file that changes size meanwhile fails the download.
//!
//! The relay allows transfers only with the `files` permission, in control mode; in a
//! support-code session the person at the machine allows each one first (the session asks
//! before anything here runs). On Windows the same code runs (std paths); it is unverified there.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use guruconnect_proto::{self as proto, FILE_WINDOW, Payload};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// Transfers one session may run at once.
pub const MAX_TRANSFERS: usize = 8;
/// Chunk size of downloads (the agent's messages may be large; this keeps them prompt).
const DOWNLOAD_CHUNK: usize = 64 * 1024;
/// An upload is acknowledged at least this often.
const ACK_EVERY: u64 = 256 * 1024;
/// A download whose viewer stops acknowledging gives up after this.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Files and folders one folder download may hold (bounds the work of one request).
const MAX_FOLDER_ENTRIES: usize = 100_000;

struct Upload {
    file: File,
    partial: PathBuf,
    target: PathBuf,
    size: u64,
    received: u64,
    acked: u64,
    overwrite: bool,
    hasher: Sha256,
}

enum DownloadCmd {
    Ack(u64),
    Cancel,
}

/// The transfers of one session.
pub struct Transfers {
    uploads: HashMap<u32, Upload>,
    downloads: HashMap<u32, std_mpsc::Sender<DownloadCmd>>,
    out: mpsc::Sender<Payload>,
}

/// A transfer's failed `FileResult`.
pub(crate) fn failed(transfer_id: u32, error: impl Into<String>) -> Payload {
    Payload::FileResult(proto::FileResult {
        transfer_id,
        ok: false,
        error: error.into(),
        ..proto::FileResult::default()
    })
}

fn hex_digest(hasher: Sha256) -> String {
    hex::encode(hasher.finalize())
}

/// A plain file name: no separators, no `.`/`..`, no control characters.
fn check_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', ':'])
        && !name.chars().any(char::is_control);
    if plain {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a plain file name (no folders, \"..\" or control characters)"
        ))
    }
}

/// An absolute path with no `..` in it.
fn check_absolute(path: &str, what: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "the {what} must be an absolute path without \"..\": {path:?}"
        ));
    }
    Ok(p)
}

impl Transfers {
    /// Transfers whose answers and chunks go out on `out`.
    pub fn new(out: mpsc::Sender<Payload>) -> Self {
        Self {
            uploads: HashMap::new(),
            downloads: HashMap::new(),
            out,
        }
    }

    fn busy(&self, id: u32) -> Option<String> {
        if self.uploads.contains_key(&id) || self.downloads.contains_key(&id) {
            return Some("this transfer number is in use".into());
        }
        if self.uploads.len() + self.downloads.len() >= MAX_TRANSFERS {
            return Some(format!("at most {MAX_TRANSFERS} transfers may run at once"));
        }
        None
    }

    /// Starts an upload; the answer is `FileInfo` (accepted) or a failed `FileResult`.
    pub fn upload(&mut self, up: &proto::FileUpload) -> Payload {
        let id = up.transfer_id;
        if let Some(why) = self.busy(id) {
            return failed(id, why);
        }
        match Self::open_upload(up) {
            Ok(upload) => {
                tracing::info!(transfer = id, target = %upload.target.display(), size = up.size, resumed_at = upload.received, "upload accepted");
                let offset = upload.received;
                self.uploads.insert(id, upload);
                Payload::FileInfo(proto::FileInfo {
                    transfer_id: id,
                    name: up.name.clone(),
                    size: up.size,
                    offset,
                })
            }
            Err(why) => failed(id, why),
        }
    }

    fn open_upload(up: &proto::FileUpload) -> Result<Upload, String> {
        check_name(&up.name)?;
        let dir = check_absolute(&up.directory, "destination folder")?;
        let dir = std::fs::canonicalize(&dir)
            .map_err(|e| format!("the destination folder {:?}: {e}", up.directory))?;
        if !dir.is_dir() {
            return Err(format!("{} is not a folder", dir.display()));
        }
        let target = dir.join(&up.name);
        Self::check_target(&target, up.overwrite)?;
        let partial = dir.join(format!(".{}.gcpart", up.name));
        let mut hasher = Sha256::new();
        let (file, received) = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
        {
            Ok(file) => (file, 0),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && up.resume => {
                let (file, held) = reopen_partial(&partial, up.size)?;
                (file, held)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(format!(
                    "{} exists: an upload of this name is running, or one was cut off \
                     (send it again with resume to continue it, or remove it)",
                    partial.display()
                ));
            }
            Err(e) => return Err(format!("cannot write in {}: {e}", dir.display())),
        };
        lock_exclusive(&file)
            .map_err(|_| format!("another upload of {} is running", target.display()))?;
        if received > 0 {
            // The hash covers the whole file: read back what is already there.
            let mut held = (&file).take(received);
            std::io::copy(&mut held, &mut hasher)
                .map_err(|e| format!("reading {} failed: {e}", partial.display()))?;
        }
        Ok(Upload {
            file,
            partial,
            target,
            size: up.size,
            received,
            acked: received,
            overwrite: up.overwrite,
            hasher,
        })
    }

    /// The target may be absent, or with `overwrite` a regular file (never a link).
    fn check_target(target: &Path, overwrite: bool) -> Result<(), String> {
        match std::fs::symlink_metadata(target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", target.display())),
            Ok(m) if !m.file_type().is_file() => Err(format!(
                "{} exists and is not a regular file (a folder or a link); it is left alone",
                target.display()
            )),
            Ok(_) if !overwrite => Err(format!(
                "{} already exists (choose overwrite to replace it)",
                target.display()
            )),
            Ok(_) => Ok(()),
        }
    }

    /// Writes an upload's chunk; returns an answer (an ack, or the failure that ended it).
    pub fn chunk(&mut self, chunk: proto::FileChunk) -> Option<Payload> {
        let id = chunk.transfer_id;
        let up = self.uploads.get_mut(&id)?;
        let end = up.received + chunk.data.len() as u64;
        let problem = if chunk.offset != up.received {
            Some(format!(
                "a chunk for byte {} arrived where byte {} was expected",
                chunk.offset, up.received
            ))
        } else if end > up.size {
            Some(format!("more than the announced {} bytes arrived", up.size))
        } else {
            up.file
                .write_all(&chunk.data)
                .err()
                .map(|e| format!("writing {} failed: {e}", up.partial.display()))
        };
        if let Some(why) = problem {
            self.abort_upload(id);
            return Some(failed(id, why));
        }
        up.hasher.update(&chunk.data);
        up.received = end;
        if up.received - up.acked >= ACK_EVERY || up.received == up.size {
            up.acked = up.received;
            return Some(Payload::FileAck(proto::FileAck {
                transfer_id: id,
                received: up.received,
            }));
        }
        None
    }

    /// Finishes an upload: size and hash checked, then moved into place.
    pub fn done(&mut self, done: &proto::FileDone) -> Option<Payload> {
        let id = done.transfer_id;
        let mut up = self.uploads.remove(&id)?;
        let digest = hex_digest(std::mem::take(&mut up.hasher));
        let outcome = if up.received != up.size {
            Err(format!("{} of {} bytes arrived", up.received, up.size))
        } else if !digest.eq_ignore_ascii_case(done.sha256.trim()) {
            Err(format!(
                "the SHA-256 of what arrived ({digest}) differs from the sender's ({})",
                done.sha256
            ))
        } else {
            up.file
                .sync_all()
                .map_err(|e| format!("writing {} failed: {e}", up.partial.display()))
                .and_then(|()| Self::put_in_place(&up))
        };
        drop(up.file);
        let _ = std::fs::remove_file(&up.partial);
        Some(match outcome {
            Ok(()) => {
                tracing::info!(transfer = id, target = %up.target.display(), bytes = up.size, "upload done");
                Payload::FileResult(proto::FileResult {
                    transfer_id: id,
                    ok: true,
                    error: String::new(),
                    sha256: digest,
                    bytes: up.size,
                    path: up.target.display().to_string(),
                })
            }
            Err(why) => failed(id, why),
        })
    }

    fn put_in_place(up: &Upload) -> Result<(), String> {
        // Checked again: the name may have appeared (or become a link) meanwhile.
        Self::check_target(&up.target, up.overwrite)?;
        let placed = if up.overwrite {
            std::fs::rename(&up.partial, &up.target)
        } else {
            std::fs::hard_link(&up.partial, &up.target)
        };
        placed.map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} already exists (choose overwrite to replace it)",
                up.target.display()
            ),
            _ => format!("cannot create {}: {e}", up.target.display()),
        })
    }

    fn abort_upload(&mut self, id: u32) {
        if let Some(up) = self.uploads.remove(&id) {
            drop(up.file);
            let _ = std::fs::remove_file(&up.partial);
        }
    }

    /// Starts a download; returns a failed `FileResult` when it cannot start (the
    /// `FileInfo`, chunks and result otherwise come from its thread).
    pub fn download(&mut self, down: &proto::FileDownload) -> Option<Payload> {
        let id = down.transfer_id;
        if let Some(why) = self.busy(id) {
            return Some(failed(id, why));
        }
        let opened = check_absolute(&down.path, "file or folder").and_then(|path| {
            let failed = |e: std::io::Error| format!("{}: {e}", path.display());
            // Asked first: Windows refuses to open a folder at all ("Access denied").
            let meta = std::fs::metadata(&path).map_err(failed)?;
            if meta.is_dir() {
                return open_folder(&path);
            }
            if !meta.is_file() {
                return Err(format!(
                    "{} is not a regular file or a folder",
                    path.display()
                ));
            }
            let file = File::open(&path).map_err(failed)?;
            let size = file.metadata().map_err(failed)?.len();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(Source {
                path,
                name,
                size,
                reader: Box::new(file),
            })
        });
        let source = match opened {
            Ok(source) => source,
            Err(why) => return Some(failed(id, why)),
        };
        let (tx, rx) = std_mpsc::channel();
        let out = self.out.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("download-{id}"))
            .spawn(move || send_file(id, source, &rx, &out));
        if let Err(e) = spawned {
            return Some(failed(id, format!("cannot start a thread: {e}")));
        }
        self.downloads.insert(id, tx);
        None
    }

    /// A viewer's ack of a download.
    pub fn ack(&self, ack: &proto::FileAck) {
        if let Some(tx) = self.downloads.get(&ack.transfer_id) {
            let _ = tx.send(DownloadCmd::Ack(ack.received));
        }
    }

    /// A viewer cancels; an upload's partial file is removed at once.
    pub fn cancel(&mut self, cancel: &proto::FileCancel) -> Option<Payload> {
        let id = cancel.transfer_id;
        if cancel.cut_off
            && let Some(up) = self.uploads.remove(&id)
        {
            // The viewer went away mid-upload: keep what arrived for a resume.
            if up.received == 0 {
                let _ = std::fs::remove_file(&up.partial);
            }
            tracing::info!(
                transfer = id,
                bytes = up.received,
                "upload cut off; kept for a resume"
            );
            return None;
        }
        if self.uploads.contains_key(&id) {
            self.abort_upload(id);
            tracing::info!(transfer = id, "upload cancelled by the technician");
            return Some(failed(id, "cancelled by the technician"));
        }
        if let Some(tx) = self.downloads.remove(&id) {
            let _ = tx.send(DownloadCmd::Cancel);
        }
        None
    }

    /// Forgets a download whose thread sent its result.
    pub fn finished(&mut self, transfer_id: u32) {
        self.downloads.remove(&transfer_id);
    }
}

impl Drop for Transfers {
    /// The session is over (or the connection lost): uploads that got some bytes keep
    /// their partial file for a resume; empty ones are removed.
    fn drop(&mut self) {
        for (_, up) in self.uploads.drain() {
            if up.received == 0 {
                let _ = std::fs::remove_file(&up.partial);
            } else {
                tracing::info!(partial = %up.partial.display(), bytes = up.received, "upload cut off; kept for a resume");
            }
        }
        for (_, tx) in self.downloads.drain() {
            let _ = tx.send(DownloadCmd::Cancel);
        }
    }
}

/// Opens a cut-off upload's partial file to continue it (never through a link); returns it
/// and the bytes it holds. One longer than `size` is not a prefix of this upload.
fn reopen_partial(partial: &Path, size: u64) -> Result<(File, u64), String> {
    let meta =
        std::fs::symlink_metadata(partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!("{} is not a regular file", partial.display()));
    }
    let file = open_no_follow(partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    let held = file
        .metadata()
        .map_err(|e| format!("{}: {e}", partial.display()))?
        .len();
    if held > size {
        return Err(format!(
            "{} holds more than this upload's {size} bytes: remove it",
            partial.display()
        ));
    }
    Ok((file, held))
}

/// Opens `path` to read and append, refusing a symbolic link.
fn open_no_follow(path: &Path) -> std::io::Result<File> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
    }
}

/// Takes an exclusive lock on an upload's partial file, or fails at once if another
/// upload holds it (Linux `flock`; elsewhere nothing is locked).
fn lock_exclusive(file: &File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

/// What a download reads: a file, or a folder's tar stream.
struct Source {
    path: PathBuf,
    name: String,
    size: u64,
    reader: Box<dyn Read + Send>,
}

/// A file or folder a folder download holds: its path inside the tar, on disk, and its
/// metadata.
type Entry = (PathBuf, PathBuf, std::fs::Metadata);

/// The folder's files and folders (depth first, sorted by name), paths starting with the
/// folder's own name; links and special files are left out.
fn folder_entries(root: &Path) -> Result<Vec<Entry>, String> {
    let base = root
        .file_name()
        .map_or_else(|| PathBuf::from("folder"), PathBuf::from);
    let mut entries = Vec::new();
    let mut stack = vec![(root.to_path_buf(), base)];
    while let Some((dir, inside)) = stack.pop() {
        // Found as real folders (the root as the technician named it).
        let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        entries.push((inside.clone(), dir.clone(), meta));
        let mut children: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .collect();
        children.sort_by_key(std::fs::DirEntry::file_name);
        let mut folders = Vec::new();
        for child in children {
            let Ok(meta) = std::fs::symlink_metadata(child.path()) else {
                continue;
            };
            let name = inside.join(child.file_name());
            if meta.is_dir() {
                folders.push((child.path(), name));
            } else if meta.is_file() {
                entries.push((name, child.path(), meta));
            }
            if entries.len() + stack.len() + folders.len() > MAX_FOLDER_ENTRIES {
                return Err(format!(
                    "{} holds more than {MAX_FOLDER_ENTRIES} files and folders",
                    root.display()
                ));
            }
        }
        // Files first, then each sub-folder in name order.
        stack.extend(folders.into_iter().rev());
    }
    Ok(entries)
}

/// Fails a read that ends before `left` bytes (the file shrank while it was sent).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a file changed while it was read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts what is written (the dry run that sizes a folder's tar).
struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the tar of `entries` to `out`; with `contents` false every file reads as zeros
/// of its recorded size, which frames exactly the same bytes.
fn write_tar(entries: &[Entry], out: impl Write, contents: bool) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(out);
    for (inside, on_disk, meta) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
        if meta.is_dir() {
            tar.append_data(&mut header, inside, std::io::empty())?;
        } else if contents {
            let file = File::open(on_disk)?;
            let data = Exact {
                inner: file.take(meta.len()),
                left: meta.len(),
            };
            tar.append_data(&mut header, inside, data)?;
        } else {
            tar.append_data(&mut header, inside, std::io::repeat(0).take(meta.len()))?;
        }
    }
    tar.into_inner()?.flush()
}

/// A folder download: its tar's exact size, and the stream from a thread that writes it.
fn open_folder(path: &Path) -> Result<Source, String> {
    let entries = folder_entries(path)?;
    let mut count = Count(0);
    write_tar(&entries, &mut count, false).map_err(|e| format!("{}: {e}", path.display()))?;
    let (reader, writer) = std::io::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let root = path.to_path_buf();
    std::thread::Builder::new()
        .name("download-tar".into())
        .spawn(move || {
            // A failure closes the pipe early; the sender reports the short stream.
            if let Err(e) = write_tar(&entries, writer, true) {
                tracing::warn!(error = %e, folder = %root.display(), "a folder download stopped");
            }
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let name = path
        .file_name()
        .map_or_else(|| "folder".to_owned(), |n| n.to_string_lossy().into_owned());
    Ok(Source {
        path: path.to_path_buf(),
        name: format!("{name}.tar"),
        size: count.0,
        reader: Box::new(reader),
    })
}

/// A download's thread: `FileInfo`, chunks within the window, then the result.
fn send_file(
    id: u32,
    source: Source,
    cmds: &std_mpsc::Receiver<DownloadCmd>,
    out: &mpsc::Sender<Payload>,
) {
    let Source {
        path,
        name,
        size,
        reader: mut file,
    } = source;
    if out
        .blocking_send(Payload::FileInfo(proto::FileInfo {
            transfer_id: id,
            name,
            size,
            offset: 0,
        }))
        .is_err()
    {
        return;
    }
    let result = (|| {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; DOWNLOAD_CHUNK];
        let (mut sent, mut acked) = (0u64, 0u64);
        loop {
            // Take every ack (or a cancel) that came; wait while the window is full.
            loop {
                let cmd = if sent - acked >= FILE_WINDOW {
                    cmds.recv_timeout(ACK_TIMEOUT).map_err(|_| {
                        "the viewer stopped acknowledging; the download was stopped".to_owned()
                    })?
                } else {
                    match cmds.try_recv() {
                        Ok(cmd) => cmd,
                        Err(std_mpsc::TryRecvError::Empty) => break,
                        Err(std_mpsc::TryRecvError::Disconnected) => {
                            return Err("the session ended".to_owned());
                        }
                    }
                };
                match cmd {
                    DownloadCmd::Ack(n) => acked = acked.max(n.min(sent)),
                    DownloadCmd::Cancel => return Err("cancelled by the technician".to_owned()),
                }
            }
            let n = file
                .read(&mut buf)
                .map_err(|e| format!("reading {} failed: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            let chunk = Payload::FileChunk(proto::FileChunk {
                transfer_id: id,
                offset: sent,
                data: buf[..n].to_vec(),
            });
            out.blocking_send(chunk)
                .map_err(|_| "the session ended".to_owned())?;
            sent += n as u64;
        }
        if sent != size {
            return Err(format!(
                "{} changed while it was read ({sent} bytes instead of {size})",
                path.display()
            ));
        }
        Ok((hex_digest(hasher), sent))
    })();
    let payload = match result {
        Ok((sha256, bytes)) => {
            tracing::info!(transfer = id, path = %path.display(), bytes, "download done");
            Payload::FileResult(proto::FileResult {
                transfer_id: id,
                ok: true,
                error: String::new(),
                sha256,
                bytes,
                path: path.display().to_string(),
            })
        }
        Err(why) => failed(id, why),
    };
    let _ = out.blocking_send(payload);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn upload(dir: &Path, name: &str, size: u64, overwrite: bool) -> proto::FileUpload {
        proto::FileUpload {
            transfer_id: 1,
            directory: dir.display().to_string(),
            name: name.into(),
            size,
            overwrite,
            resume: false,
        }
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn send_all(t: &mut Transfers, data: &[u8]) -> Option<Payload> {
        let mut offset = 0;
        for piece in data.chunks(guruconnect_proto::MAX_VIEWER_FILE_CHUNK) {
            if let Some(Payload::FileResult(r)) = t.chunk(proto::FileChunk {
                transfer_id: 1,
                offset,
                data: piece.to_vec(),
            }) {
                return Some(Payload::FileResult(r));
            }
            offset += piece.len() as u64;
        }
        t.done(&proto::FileDone {
            transfer_id: 1,
            sha256: sha(data),
        })
    }

    fn error_of(p: Option<Payload>) -> String {
        match p {
            Some(Payload::FileResult(r)) if !r.ok => r.error,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn an_upload_lands_with_its_hash_and_never_clobbers_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel(4);
        let mut t = Transfers::new(tx);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        assert!(matches!(
            t.upload(&upload(dir.path(), "a.bin", data.len() as u64, false)),
            Payload::FileInfo(_)
        ));
        let Some(Payload::FileResult(r)) = send_all(&mut t, &data) else {
            panic!()
        };
        assert!(r.ok, "{r:?}");
        assert_eq!(r.sha256, sha(&data));
        assert_eq!(std::fs::read(dir.path().join("a.bin")).unwrap(), data);

        let refused = t.upload(&upload(dir.path(), "a.bin", 3, false));
        assert!(error_of(Some(refused)).contains("already exists"));
        assert!(matches!(
            t.upload(&upload(dir.path(), "a.bin", 3, true)),
            Payload::FileInfo(_)
        ));
        let Some(Payload::FileResult(r)) = send_all(&mut t, b"new") else {
            panic!()
        };
        assert!(r.ok, "{r:?}");
        assert_eq!(std::fs::read(dir.path().join("a.bin")).unwrap(), b"new");
        assert_eq!(leftovers(dir.path()), vec!["a.bin".to_owned()]);
    }

    #[test]
    fn escapes_links_and_bad_folders_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel(4);
        let mut t = Transfers::new(tx);
        for name in ["../x", "a/b", "..", ".", "", "a\\b", "c:d", "bell\u{7}"] {
            let e = error_of(Some(t.upload(&upload(dir.path(), name, 1, true))));
            assert!(e.contains("plain file name"), "{name:?}: {e}");
        }
        let relative = proto::FileUpload {
            directory: "tmp".into(),
            ..upload(dir.path(), "x", 1, false)
        };
        assert!(error_of(Some(t.upload(&relative))).contains("absolute"));
        let dotted = proto::FileUpload {
            directory: format!("{}/../x", dir.path().display()),
            ..upload(dir.path(), "x", 1, false)
        };
        assert!(error_of(Some(t.upload(&dotted))).contains("absolute"));
        let missing = dir.path().join("nope");
        assert!(!error_of(Some(t.upload(&upload(&missing, "x", 1, false)))).is_empty());

        // A link in the folder pointing out of it is never written through, even with
        // overwrite.
        #[cfg(unix)]
        {
            let outside = tempfile::tempdir().unwrap();
            let victim = outside.path().join("victim");
            std::fs::write(&victim, b"keep").unwrap();
            std::os::unix::fs::symlink(&victim, dir.path().join("link")).unwrap();
            let e = error_of(Some(t.upload(&upload(dir.path(), "link", 4, true))));
            assert!(e.contains("not a regular file"), "{e}");
            assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
            std::fs::remove_file(dir.path().join("link")).unwrap();
        }
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }

    #[test]
    fn a_wrong_hash_a_gap_too_many_bytes_or_a_cancel_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel(4);
        let mut t = Transfers::new(tx);

        t.upload(&upload(dir.path(), "h", 3, false));
        t.chunk(proto::FileChunk {
            transfer_id: 1,
            offset: 0,
            data: b"abc".to_vec(),
        });
        let e = error_of(t.done(&proto::FileDone {
            transfer_id: 1,
            sha256: sha(b"abd"),
        }));
        assert!(e.contains("SHA-256"), "{e}");

        t.upload(&upload(dir.path(), "g", 6, false));
        let e = error_of(t.chunk(proto::FileChunk {
            transfer_id: 1,
            offset: 3,
            data: b"def".to_vec(),
        }));
        assert!(e.contains("expected"), "{e}");

        t.upload(&upload(dir.path(), "m", 2, false));
        let e = error_of(t.chunk(proto::FileChunk {
            transfer_id: 1,
            offset: 0,
            data: b"abc".to_vec(),
        }));
        assert!(e.contains("more than"), "{e}");

        t.upload(&upload(dir.path(), "c", 10, false));
        t.chunk(proto::FileChunk {
            transfer_id: 1,
            offset: 0,
            data: b"abc".to_vec(),
        });
        let e = error_of(t.cancel(&proto::FileCancel {
            transfer_id: 1,
            reason: String::new(),
            cut_off: false,
        }));
        assert!(e.contains("cancelled"), "{e}");
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }

    fn chunk(offset: u64, data: &[u8]) -> proto::FileChunk {
        proto::FileChunk {
            transfer_id: 1,
            offset,
            data: data.to_vec(),
        }
    }

    fn resuming(dir: &Path, name: &str, size: u64) -> proto::FileUpload {
        proto::FileUpload {
            resume: true,
            ..upload(dir, name, size, false)
        }
    }

    fn offset_of(p: Payload) -> u64 {
        match p {
            Payload::FileInfo(info) => info.offset,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_upload_cut_off_is_kept_and_resumed_from_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"0123456789abcdefghij".to_vec();
        // Cut off twice: the viewer left (the relay says so), then the session ended.
        let (tx, _rx) = mpsc::channel(16);
        let mut t = Transfers::new(tx);
        assert_eq!(offset_of(t.upload(&resuming(dir.path(), "r.bin", 20))), 0);
        t.chunk(chunk(0, &data[..6]));
        assert!(
            t.cancel(&proto::FileCancel {
                transfer_id: 1,
                reason: "left".into(),
                cut_off: true
            })
            .is_none()
        );
        assert_eq!(leftovers(dir.path()), [".r.bin.gcpart"]);
        // Without resume the name is taken, with a clear way out.
        let e = error_of(Some(t.upload(&upload(dir.path(), "r.bin", 20, false))));
        assert!(e.contains("resume"), "{e}");
        assert_eq!(offset_of(t.upload(&resuming(dir.path(), "r.bin", 20))), 6);
        // A second upload of the same name cannot run beside it (Linux locks the partial).
        #[cfg(target_os = "linux")]
        {
            let (tx2, _rx2) = mpsc::channel(16);
            let mut other = Transfers::new(tx2);
            let e = error_of(Some(other.upload(&resuming(dir.path(), "r.bin", 20))));
            assert!(e.contains("another upload"), "{e}");
        }
        t.chunk(chunk(6, &data[6..12]));
        drop(t);
        assert_eq!(leftovers(dir.path()), [".r.bin.gcpart"]);

        let (tx, _rx) = mpsc::channel(16);
        let mut t = Transfers::new(tx);
        assert_eq!(offset_of(t.upload(&resuming(dir.path(), "r.bin", 20))), 12);
        t.chunk(chunk(12, &data[12..]));
        let done = t.done(&proto::FileDone {
            transfer_id: 1,
            sha256: sha(&data),
        });
        match done {
            Some(Payload::FileResult(r)) => assert!(r.ok && r.sha256 == sha(&data), "{r:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(dir.path().join("r.bin")).unwrap(), data);
        assert_eq!(leftovers(dir.path()), ["r.bin"]);

        // A partial of another file: the whole-file hash fails and nothing is placed.
        std::fs::write(dir.path().join(".s.bin.gcpart"), b"XXXX").unwrap();
        let (tx, _rx) = mpsc::channel(16);
        let mut t = Transfers::new(tx);
        assert_eq!(offset_of(t.upload(&resuming(dir.path(), "s.bin", 8))), 4);
        t.chunk(chunk(4, b"4567"));
        let e = error_of(t.done(&proto::FileDone {
            transfer_id: 1,
            sha256: sha(b"01234567"),
        }));
        assert!(e.contains("SHA-256") || e.contains("hash"), "{e}");
        assert!(!dir.path().join("s.bin").exists());
        assert!(!dir.path().join(".s.bin.gcpart").exists());
        // A partial longer than the upload is not its prefix; a link is never followed.
        std::fs::write(dir.path().join(".t.bin.gcpart"), b"too long").unwrap();
        let e = error_of(Some(t.upload(&resuming(dir.path(), "t.bin", 3))));
        assert!(e.contains("more than"), "{e}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc/passwd", dir.path().join(".u.bin.gcpart")).unwrap();
            let e = error_of(Some(t.upload(&resuming(dir.path(), "u.bin", 30))));
            assert!(e.contains("not a regular file"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_download_streams_within_the_window_and_ends_with_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("big.bin");
        std::fs::write(&path, &data).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let mut t = Transfers::new(tx);
        let (info, got, result) = download_all(&mut t, &mut rx, 4, &path).await;
        assert_eq!(info.size, data.len() as u64);
        assert!(result.ok, "{result:?}");
        assert_eq!(result.sha256, sha(&data));
        assert_eq!(got, data);
        t.finished(4);

        #[cfg(unix)]
        {
            let e = error_of(t.download(&proto::FileDownload {
                transfer_id: 5,
                path: "/dev/null".into(),
            }));
            assert!(e.contains("not a regular file or a folder"), "{e}");
        }
    }

    /// Runs a download to its end, acknowledging as a viewer does and checking the window.
    async fn download_all(
        t: &mut Transfers,
        rx: &mut mpsc::Receiver<Payload>,
        id: u32,
        path: &Path,
    ) -> (proto::FileInfo, Vec<u8>, proto::FileResult) {
        assert!(
            t.download(&proto::FileDownload {
                transfer_id: id,
                path: path.display().to_string(),
            })
            .is_none()
        );
        let (mut info, mut got, mut acked) = (None, Vec::new(), 0u64);
        loop {
            let p = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("in time")
                .expect("open");
            match p {
                Payload::FileInfo(i) => info = Some(i),
                Payload::FileChunk(c) => {
                    assert_eq!(c.offset, got.len() as u64);
                    got.extend_from_slice(&c.data);
                    // The sender never runs more than the window ahead of the acks.
                    assert!(got.len() as u64 - acked <= FILE_WINDOW);
                    if got.len() as u64 - acked >= 512 * 1024 {
                        acked = got.len() as u64;
                        t.ack(&proto::FileAck {
                            transfer_id: id,
                            received: acked,
                        });
                    }
                }
                Payload::FileResult(r) => return (info.expect("FileInfo first"), got, r),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_folder_downloads_as_a_tar_of_its_files_and_folders_without_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("docs");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("a.txt"), b"alpha").unwrap();
        let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(root.join("sub").join("b.bin"), &big).unwrap();
        let long = format!("{}.txt", "n".repeat(120));
        std::fs::write(root.join("sub").join(&long), b"long name").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();

        let (tx, mut rx) = mpsc::channel(4);
        let mut t = Transfers::new(tx);
        let (info, got, result) = download_all(&mut t, &mut rx, 7, &root).await;
        assert!(result.ok, "{result:?}");
        assert_eq!(info.name, "docs.tar");
        assert_eq!(
            info.size,
            got.len() as u64,
            "the size announced up front is exact"
        );
        assert_eq!(result.sha256, sha(&got));

        let mut archive = tar::Archive::new(&got[..]);
        let mut found = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().replace('\\', "/");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            found.push((path, data));
        }
        let names: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        let long_path = format!("docs/sub/{long}");
        assert_eq!(
            names,
            [
                "docs",
                "docs/a.txt",
                "docs/empty",
                "docs/sub",
                "docs/sub/b.bin",
                long_path.as_str()
            ],
            "links are left out"
        );
        let content = |name: &str| &found.iter().find(|(p, _)| p == name).unwrap().1;
        assert_eq!(content("docs/a.txt"), b"alpha");
        assert_eq!(content("docs/sub/b.bin"), &big);
        assert_eq!(content(&long_path), b"long name");
    }
}
