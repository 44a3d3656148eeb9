//! File transfer as a viewer does it (`FileUpload` … `FileResult` in the protocol): an
//! upload sends chunks of at most [`MAX_VIEWER_FILE_CHUNK`] bytes and never runs more than
//! [`FILE_WINDOW`] bytes ahead of the agent's acks; a download is acknowledged as it
//! arrives. Both ends compute the SHA-256; a download whose bytes do not match the agent's
//! hash is an error. Messages that are not about this transfer are skipped. An upload with
//! `resume` continues a cut-off one of the same name from where the agent says it stopped.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use guruconnect_proto::{self as proto, FILE_WINDOW, FileResult, MAX_VIEWER_FILE_CHUNK, Payload};
use sha2::{Digest, Sha256};

use crate::{ClientError, Connection};

/// How long a transfer waits for the agent's next message before giving up.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// A download is acknowledged at least this often.
const ACK_EVERY: u64 = 256 * 1024;

/// Why a transfer did not finish (the agent's own refusals come back as a [`FileResult`]
/// with `ok == false`).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The connection failed or closed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Reading the local source or writing the local copy failed.
    #[error("local file: {0}")]
    Io(#[from] std::io::Error),
    /// The agent sent nothing about the transfer for [`SILENCE_LIMIT`].
    #[error("the machine stopped answering about the transfer")]
    Silent,
    /// The downloaded bytes do not hash to what the agent computed.
    #[error("the download arrived damaged: SHA-256 {got}, the machine says {expected}")]
    HashMismatch {
        /// What the received bytes hash to.
        got: String,
        /// What the agent computed.
        expected: String,
    },
}

/// The next message about transfer `id`.
async fn next_about(conn: &mut Connection, id: u32) -> Result<Payload, TransferError> {
    loop {
        let envelope = tokio::time::timeout(SILENCE_LIMIT, conn.recv())
            .await
            .map_err(|_| TransferError::Silent)??;
        let about = match &envelope.payload {
            Some(Payload::FileInfo(m)) => m.transfer_id == id,
            Some(Payload::FileAck(m)) => m.transfer_id == id,
            Some(Payload::FileChunk(m)) => m.transfer_id == id,
            Some(Payload::FileResult(m)) => m.transfer_id == id,
            _ => false,
        };
        if about && let Some(payload) = envelope.payload {
            return Ok(payload);
        }
    }
}

/// What to upload and how.
#[derive(Debug, Clone)]
pub struct Upload<'a> {
    /// The machine's folder (absolute, existing).
    pub directory: &'a str,
    /// The file name there.
    pub name: &'a str,
    /// Bytes the source holds.
    pub size: u64,
    /// Replace an existing file of that name.
    pub overwrite: bool,
    /// Continue a cut-off upload of this name.
    pub resume: bool,
}

/// Uploads `what.size` bytes from `source`, with `progress` told the bytes the agent
/// acknowledged. Returns the agent's verdict and where the upload started (non-zero when
/// it resumed a cut-off one).
pub async fn upload(
    conn: &mut Connection,
    id: u32,
    what: &Upload<'_>,
    source: &mut (impl Read + Seek),
    mut progress: impl FnMut(u64),
) -> Result<(FileResult, u64), TransferError> {
    let size = what.size;
    conn.send(Payload::FileUpload(proto::FileUpload {
        transfer_id: id,
        directory: what.directory.to_owned(),
        name: what.name.to_owned(),
        size,
        overwrite: what.overwrite,
        resume: what.resume,
    }))
    .await?;
    let offset = match next_about(conn, id).await? {
        Payload::FileInfo(info) => info.offset,
        Payload::FileResult(r) => return Ok((r, 0)),
        _ => 0,
    };
    if offset > size {
        return Err(TransferError::Io(std::io::Error::other(format!(
            "the machine holds {offset} bytes of a {size}-byte file"
        ))));
    }
    let mut hasher = Sha256::new();
    // The hash covers the whole file: the part the machine already holds too.
    source.seek(SeekFrom::Start(0))?;
    let held = std::io::copy(&mut source.by_ref().take(offset), &mut hasher)?;
    if held != offset {
        return Err(TransferError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the file is shorter than the {offset} bytes to resume from"),
        )));
    }
    let mut buf = vec![0u8; MAX_VIEWER_FILE_CHUNK];
    let (mut sent, mut acked) = (offset, offset);
    while sent < size {
        while sent - acked >= FILE_WINDOW {
            match next_about(conn, id).await? {
                Payload::FileAck(a) => {
                    acked = a.received;
                    progress(acked);
                }
                Payload::FileResult(r) => return Ok((r, offset)),
                _ => {}
            }
        }
        let want = usize::try_from(size - sent)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = source.read(&mut buf[..want])?;
        if n == 0 {
            return Err(TransferError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ended after {sent} of {size} bytes"),
            )));
        }
        hasher.update(&buf[..n]);
        conn.send(Payload::FileChunk(proto::FileChunk {
            transfer_id: id,
            offset: sent,
            data: buf[..n].to_vec(),
        }))
        .await?;
        sent += n as u64;
    }
    conn.send(Payload::FileDone(proto::FileDone {
        transfer_id: id,
        sha256: hex::encode(hasher.finalize()),
    }))
    .await?;
    loop {
        match next_about(conn, id).await? {
            Payload::FileResult(r) => {
                progress(r.bytes);
                return Ok((r, offset));
            }
            Payload::FileAck(a) => progress(a.received),
            _ => {}
        }
    }
}

/// Downloads `path` (a file, or a folder as a tar stream) from the machine into `sink`,
/// with `progress` told the bytes received. Returns the agent's announcement (name and
/// size) and verdict; the bytes are checked against the agent's SHA-256.
pub async fn download(
    conn: &mut Connection,
    id: u32,
    path: &str,
    sink: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> Result<(Option<proto::FileInfo>, FileResult), TransferError> {
    conn.send(Payload::FileDownload(proto::FileDownload {
        transfer_id: id,
        path: path.to_owned(),
    }))
    .await?;
    let mut hasher = Sha256::new();
    let (mut info, mut received, mut acked) = (None, 0u64, 0u64);
    loop {
        match next_about(conn, id).await? {
            Payload::FileInfo(i) => info = Some(i),
            Payload::FileChunk(c) => {
                sink.write_all(&c.data)?;
                hasher.update(&c.data);
                received += c.data.len() as u64;
                progress(received);
                if received - acked >= ACK_EVERY {
                    acked = received;
                    conn.send(Payload::FileAck(proto::FileAck {
                        transfer_id: id,
                        received,
                    }))
                    .await?;
                }
            }
            Payload::FileResult(r) => {
                sink.flush()?;
                let got = hex::encode(hasher.finalize());
                if r.ok && r.sha256 != got {
                    return Err(TransferError::HashMismatch {
                        got,
                        expected: r.sha256,
                    });
                }
                return Ok((info, r));
            }
            _ => {}
        }
    }
}
