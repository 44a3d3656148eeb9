//! File transfers through the relay as the console makes them, with the protocol client's
//! [`guruconnect_client::files`]; these wrappers fit the tests' in-memory data.

use std::path::Path;

use guruconnect_client::Connection;
use guruconnect_client::files;
use guruconnect_proto::FileResult;

/// Uploads `data` as `name` into `directory`; returns the agent's verdict.
pub async fn upload(
    conn: &mut Connection,
    id: u32,
    directory: &Path,
    name: &str,
    data: &[u8],
) -> FileResult {
    upload_from(conn, id, directory, name, data, false).await.0
}

/// [`upload`], resuming a cut-off upload when `resume`; also returns where it started.
pub async fn upload_from(
    conn: &mut Connection,
    id: u32,
    directory: &Path,
    name: &str,
    data: &[u8],
    resume: bool,
) -> (FileResult, u64) {
    let dir = directory.display().to_string();
    let what = files::Upload {
        directory: &dir,
        name,
        size: data.len() as u64,
        overwrite: false,
        resume,
    };
    files::upload(conn, id, &what, &mut std::io::Cursor::new(data), |_| {})
        .await
        .expect("the upload ran to a verdict")
}

/// Downloads `path`; returns the agent's verdict and the bytes.
pub async fn download(conn: &mut Connection, id: u32, path: &Path) -> (FileResult, Vec<u8>) {
    let mut got = Vec::new();
    let (_, result) = files::download(conn, id, &path.display().to_string(), &mut got, |_| {})
        .await
        .expect("the download ran to a verdict");
    (result, got)
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    super::hex(&sha2::Sha256::digest(data))
}
