//! File transfer as a viewer does it (`FileUpload` … `FileResult` in the protocol): an
//! upload sends chunks of at most [`MAX_VIEWER_FILE_CHUNK`] bytes and never runs more than
//! [`FILE_WINDOW`] bytes ahead of the agent's acks; a download is acknowledged as it
//! arrives. Both ends compute the SHA-256; a download whose bytes do not match the agent's
//! hash is an error. Messages that are not about this transfer are skipped.

use std::io::{Read, Write};
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

/// Uploads `size` bytes from `source` as `name` into `directory` on the machine, with
/// `progress` told the bytes the agent acknowledged. Returns the agent's verdict.
#[allow(clippy::too_many_arguments)]
pub async fn upload(
    conn: &mut Connection,
    id: u32,
    directory: &str,
    name: &str,
    size: u64,
    source: &mut impl Read,
    overwrite: bool,
    mut progress: impl FnMut(u64),
) -> Result<FileResult, TransferError> {
    conn.send(Payload::FileUpload(proto::FileUpload {
        transfer_id: id,
        directory: directory.to_owned(),
        name: name.to_owned(),
        size,
        overwrite,
    }))
    .await?;
    match next_about(conn, id).await? {
        Payload::FileInfo(_) => {}
        Payload::FileResult(r) => return Ok(r),
        _ => {}
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MAX_VIEWER_FILE_CHUNK];
    let (mut sent, mut acked) = (0u64, 0u64);
    while sent < size {
        while sent - acked >= FILE_WINDOW {
            match next_about(conn, id).await? {
                Payload::FileAck(a) => {
                    acked = a.received;
                    progress(acked);
                }
                Payload::FileResult(r) => return Ok(r),
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
                return Ok(r);
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
