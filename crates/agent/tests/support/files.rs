//! File transfers as the console makes them: uploads a window of chunks ahead of the
//! agent's acks, downloads acknowledged as they arrive.

use std::path::Path;

use guruconnect_client::Connection;
use guruconnect_proto::Payload;

use super::{WAIT, hex};

/// The next file-transfer message for this viewer.
pub async fn file_message(conn: &mut Connection) -> Payload {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let envelope = match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => panic!("no file-transfer message within {WAIT:?}"),
            Ok(Ok(e)) => e,
            Ok(Err(e)) => panic!("viewer connection failed: {e}"),
        };
        if let Some(
            p @ (Payload::FileInfo(_)
            | Payload::FileChunk(_)
            | Payload::FileAck(_)
            | Payload::FileResult(_)),
        ) = envelope.payload
        {
            return p;
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(data))
}

/// Uploads `data` as `name` into `directory` through the relay, as the console does: a
/// window of chunks ahead of the agent's acks. Returns the agent's verdict.
pub async fn upload(
    conn: &mut Connection,
    id: u32,
    directory: &Path,
    name: &str,
    data: &[u8],
) -> guruconnect_proto::FileResult {
    conn.send(Payload::FileUpload(guruconnect_proto::FileUpload {
        transfer_id: id,
        directory: directory.display().to_string(),
        name: name.into(),
        size: data.len() as u64,
        overwrite: false,
    }))
    .await
    .expect("send upload");
    match file_message(conn).await {
        Payload::FileInfo(_) => {}
        Payload::FileResult(r) => return r,
        other => panic!("{other:?}"),
    }
    let (mut sent, mut acked) = (0usize, 0u64);
    while sent < data.len() {
        while sent as u64 - acked >= guruconnect_proto::FILE_WINDOW {
            match file_message(conn).await {
                Payload::FileAck(a) => acked = a.received,
                Payload::FileResult(r) => return r,
                other => panic!("{other:?}"),
            }
        }
        let end = (sent + guruconnect_proto::MAX_VIEWER_FILE_CHUNK).min(data.len());
        conn.send(Payload::FileChunk(guruconnect_proto::FileChunk {
            transfer_id: id,
            offset: sent as u64,
            data: data[sent..end].to_vec(),
        }))
        .await
        .expect("send chunk");
        sent = end;
    }
    conn.send(Payload::FileDone(guruconnect_proto::FileDone {
        transfer_id: id,
        sha256: sha256_hex(data),
    }))
    .await
    .expect("send done");
    loop {
        if let Payload::FileResult(r) = file_message(conn).await {
            return r;
        }
    }
}

/// Downloads `path` through the relay, acknowledging as the console does; returns the
/// agent's verdict and the bytes.
pub async fn download(
    conn: &mut Connection,
    id: u32,
    path: &Path,
) -> (guruconnect_proto::FileResult, Vec<u8>) {
    conn.send(Payload::FileDownload(guruconnect_proto::FileDownload {
        transfer_id: id,
        path: path.display().to_string(),
    }))
    .await
    .expect("send download");
    let mut got = Vec::new();
    let mut acked = 0usize;
    let result = loop {
        match file_message(conn).await {
            Payload::FileInfo(info) => got.reserve(usize::try_from(info.size).unwrap_or(0)),
            Payload::FileChunk(c) => {
                assert_eq!(c.offset, got.len() as u64);
                got.extend_from_slice(&c.data);
                if got.len() - acked >= 256 * 1024 {
                    acked = got.len();
                    conn.send(Payload::FileAck(guruconnect_proto::FileAck {
                        transfer_id: id,
                        received: acked as u64,
                    }))
                    .await
                    .expect("ack");
                }
            }
            Payload::FileResult(r) => break r,
            Payload::FileAck(_) => {}
            other => panic!("{other:?}"),
        }
    };
    (result, got)
}
