//! Relay test helpers: support codes, agent keys, agents and viewers over the real
//! protocol client, and `recv_until` with timeouts so a broken invariant fails instead of
//! hanging. Included from the relay test files with
//! `#[path = "common/relay.rs"] mod relay_support;` (after `mod common;`).

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use guruconnect_client::{ClientError, Connection, connect_agent, connect_viewer};
use guruconnect_proto::{
    AgentHello, Codec, ConsentResponse, Envelope, KeyEvent, Payload, VideoFrame,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::common::TestServer;

/// Default wait for one expected message.
pub const WAIT: Duration = Duration::from_secs(5);
/// Quiet period used to assert that nothing (more) arrives.
pub const QUIET: Duration = Duration::from_millis(600);

/// Why `try_recv_until` gave up.
#[derive(Debug)]
pub enum RecvFail {
    /// Nothing matching arrived in time.
    Timeout,
    /// The server closed the socket.
    Closed(u16, String),
    /// Any other client error.
    Other(String),
}

/// Receives until `pred` matches a payload, skipping others; gives up after `timeout`.
pub async fn try_recv_until(
    conn: &mut Connection,
    timeout: Duration,
    mut pred: impl FnMut(&Payload) -> bool,
) -> Result<Payload, RecvFail> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.recv()).await {
            Err(_) => return Err(RecvFail::Timeout),
            Ok(Ok(Envelope {
                payload: Some(p), ..
            })) => {
                if pred(&p) {
                    return Ok(p);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(ClientError::Closed { code, reason })) => {
                return Err(RecvFail::Closed(code, reason));
            }
            Ok(Err(e)) => return Err(RecvFail::Other(e.to_string())),
        }
    }
}

/// Like [`try_recv_until`] but panics (naming `what`) when nothing matches.
pub async fn recv_until(
    conn: &mut Connection,
    what: &str,
    timeout: Duration,
    pred: impl FnMut(&Payload) -> bool,
) -> Payload {
    match try_recv_until(conn, timeout, pred).await {
        Ok(p) => p,
        Err(e) => panic!("waiting for {what}: {e:?}"),
    }
}

/// Everything received during `window` (payloads), and the close if the socket closed.
pub async fn collect_for(
    conn: &mut Connection,
    window: Duration,
) -> (Vec<Payload>, Option<(u16, String)>) {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.recv()).await {
            Err(_) => return (out, None),
            Ok(Ok(Envelope {
                payload: Some(p), ..
            })) => out.push(p),
            Ok(Ok(_)) => {}
            Ok(Err(ClientError::Closed { code, reason })) => return (out, Some((code, reason))),
            Ok(Err(e)) => return (out, Some((0, e.to_string()))),
        }
    }
}

/// Reads until the socket closes; returns what arrived before and the close code/reason.
/// Panics if it stays open for `timeout`.
pub async fn expect_closed(
    conn: &mut Connection,
    timeout: Duration,
) -> (Vec<Payload>, u16, String) {
    let (payloads, close) = collect_for(conn, timeout).await;
    match close {
        Some((code, reason)) => (payloads, code, reason),
        None => panic!(
            "socket still open after {timeout:?}; received {:?}",
            kinds(&payloads)
        ),
    }
}

/// Payload kinds, for messages.
pub fn kinds(payloads: &[Payload]) -> Vec<&'static str> {
    payloads.iter().map(Payload::kind).collect()
}

/// Sends a ping and waits for its pong: every message sent before it on this connection
/// has then been handled by the relay.
pub async fn sync(conn: &mut Connection) {
    let stamp = u64::from(rand_u32()) + 1;
    conn.send(Payload::Ping(guruconnect_proto::Ping {
        timestamp_us: stamp,
    }))
    .await
    .expect("send ping");
    recv_until(
        conn,
        "pong",
        WAIT,
        |p| matches!(p, Payload::Pong(pong) if pong.ping_timestamp_us == stamp),
    )
    .await;
}

fn rand_u32() -> u32 {
    let id = uuid::Uuid::new_v4();
    let b = id.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Asserts that `result` is an HTTP refusal with `status` (no upgrade).
pub fn assert_rejected(result: Result<Connection, ClientError>, status: u16, what: &str) {
    match result {
        Err(ClientError::Rejected { status: s, body }) => {
            assert_eq!(s, status, "{what}: unexpected status; body {body}");
        }
        Err(e) => panic!("{what}: expected HTTP {status}, got error {e}"),
        Ok(_) => panic!("{what}: expected HTTP {status}, but the socket was upgraded"),
    }
}

// ------------------------------------------------------------------ payload builders

/// An `AgentHello`.
pub fn hello(hostname: &str, machine_uid: &str) -> Payload {
    Payload::AgentHello(AgentHello {
        protocol_version: guruconnect_proto::PROTOCOL_VERSION,
        hostname: hostname.to_owned(),
        machine_uid: machine_uid.to_owned(),
        os: "linux".to_owned(),
        os_version: "test".to_owned(),
        agent_version: "0.0.0-test".to_owned(),
        codecs: vec![Codec::RawZstd as i32],
        ..AgentHello::default()
    })
}

/// A video frame with `data_len` bytes of payload.
pub fn frame(sequence: u64, keyframe: bool, data_len: usize) -> Payload {
    Payload::VideoFrame(VideoFrame {
        codec: Codec::RawZstd as i32,
        width: 64,
        height: 64,
        data: Bytes::from(vec![0x5a; data_len]),
        keyframe,
        sequence,
        ..VideoFrame::default()
    })
}

/// An encoded frame envelope (for benchmarks of many sends).
pub fn frame_bytes(sequence: u64, keyframe: bool, data_len: usize) -> Bytes {
    Envelope::new(frame(sequence, keyframe, data_len)).to_bytes()
}

/// A key press with a recognisable scancode.
pub fn key_down(scancode: u32) -> Payload {
    Payload::KeyEvent(KeyEvent {
        scancode,
        down: true,
        ..KeyEvent::default()
    })
}

/// A consent answer.
pub fn consent(granted: bool) -> Payload {
    Payload::ConsentResponse(ConsentResponse { granted })
}

/// The sequence number of a video frame payload.
pub fn frame_seq(p: &Payload) -> Option<u64> {
    match p {
        Payload::VideoFrame(f) => Some(f.sequence),
        _ => None,
    }
}

/// Whether a payload is something a viewer's input could have produced at the agent.
pub fn is_viewer_input(p: &Payload) -> bool {
    matches!(
        p,
        Payload::MouseEvent(_)
            | Payload::KeyEvent(_)
            | Payload::SpecialKey(_)
            | Payload::TypeText(_)
            | Payload::AgentNotice(_)
            | Payload::Clipboard(_)
            | Payload::VideoFrame(_)
            | Payload::ConsentResponse(_)
            | Payload::AgentStatus(_)
            | Payload::AgentHello(_)
            | Payload::Chat(_)
            | Payload::SwitchDisplay(_)
            | Payload::QualitySettings(_)
            | Payload::CursorPosition(_)
            | Payload::CursorShape(_)
            | Payload::DisplayList(_)
    )
}

// ------------------------------------------------------------------ HTTP flows

/// `POST /api/codes` as `token`; returns the code.
pub async fn create_code(server: &TestServer, token: &str) -> String {
    let resp = server
        .client()
        .post(server.url("/api/codes"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .expect("create code");
    let status = resp.status();
    let body: Value = resp.json().await.expect("code body");
    assert_eq!(status, StatusCode::CREATED, "create code: {body}");
    body["code"].as_str().expect("code").to_owned()
}

/// `POST /api/codes/validate`; the status.
pub async fn validate_code(server: &TestServer, code: &str) -> reqwest::Response {
    server
        .client()
        .post(server.url("/api/codes/validate"))
        .json(&json!({ "code": code }))
        .send()
        .await
        .expect("validate code")
}

/// A per-agent key just issued.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// Machine.
    pub agent_id: String,
    /// `cak_…`.
    pub key: String,
    /// Key id.
    pub key_id: String,
}

/// `POST /api/machines/{agent_id}/keys` as an admin.
pub async fn issue_key(server: &TestServer, admin: &str, agent_id: &str) -> IssuedKey {
    let resp = server
        .client()
        .post(server.url(&format!("/api/machines/{agent_id}/keys")))
        .bearer_auth(admin)
        .json(&json!({ "label": "test" }))
        .send()
        .await
        .expect("issue key");
    let status = resp.status();
    let body: Value = resp.json().await.expect("key body");
    assert_eq!(status, StatusCode::CREATED, "issue key: {body}");
    IssuedKey {
        agent_id: agent_id.to_owned(),
        key: body["agent_key"].as_str().expect("agent_key").to_owned(),
        key_id: body["id"].as_str().expect("key id").to_owned(),
    }
}

/// A key for a brand-new machine id.
pub async fn new_machine_key(server: &TestServer, admin: &str) -> IssuedKey {
    issue_key(server, admin, &uuid::Uuid::new_v4().to_string()).await
}

/// `POST /api/sessions/{id}/viewer-token`; the raw response.
pub async fn mint_response(
    server: &TestServer,
    user_token: &str,
    session_id: &str,
) -> reqwest::Response {
    server
        .client()
        .post(server.url(&format!("/api/sessions/{session_id}/viewer-token")))
        .bearer_auth(user_token)
        .send()
        .await
        .expect("mint viewer token")
}

/// Mints a viewer token; returns `(token, access_mode)`.
pub async fn mint(server: &TestServer, user_token: &str, session_id: &str) -> (String, String) {
    let resp = mint_response(server, user_token, session_id).await;
    let status = resp.status();
    let body: Value = resp.json().await.expect("viewer token body");
    assert_eq!(status, StatusCode::OK, "mint viewer token: {body}");
    (
        body["token"].as_str().expect("token").to_owned(),
        body["access_mode"]
            .as_str()
            .expect("access_mode")
            .to_owned(),
    )
}

/// Creates a user of `role` and signs it in; returns its login token.
pub async fn user_with_role(server: &TestServer, admin: &str, role: &str) -> String {
    let name = format!("{role}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let password = crate::common::random_secret("pw");
    server.create_user(admin, &name, &password, role).await;
    server.issue_token(&name).await
}

// ------------------------------------------------------------------ agents and viewers

/// A connected agent that has said hello.
pub struct Agent {
    /// The connection.
    pub conn: Connection,
    /// Session id from `SessionInfo`.
    pub session_id: String,
    /// Agent id from `SessionInfo`.
    pub agent_id: String,
}

/// Connects with `credential`, says hello and waits for `SessionInfo`.
pub async fn agent_hello(server: &TestServer, credential: &str, hello_msg: Payload) -> Agent {
    let mut conn = connect_agent(&server.base, credential)
        .await
        .expect("agent connects");
    conn.send(hello_msg).await.expect("send hello");
    let info = recv_until(&mut conn, "session info", WAIT, |p| {
        matches!(p, Payload::SessionInfo(_))
    })
    .await;
    let Payload::SessionInfo(info) = info else {
        unreachable!()
    };
    Agent {
        conn,
        session_id: info.session_id,
        agent_id: info.agent_id,
    }
}

/// A managed (per-agent key) session on a new machine.
pub async fn managed_agent(server: &TestServer, admin: &str) -> (Agent, IssuedKey) {
    let key = new_machine_key(server, admin).await;
    let agent = agent_hello(server, &key.key, hello("managed-host", "")).await;
    assert_eq!(agent.agent_id, key.agent_id);
    (agent, key)
}

/// An attended session from a fresh support code, consent still pending (the
/// `ConsentRequest` has been read). Returns the agent and the code.
pub async fn attended_agent(server: &TestServer, admin: &str) -> (Agent, String) {
    let code = create_code(server, admin).await;
    let mut agent = agent_hello(server, &code, hello("customer-pc", "")).await;
    recv_until(&mut agent.conn, "consent request", WAIT, |p| {
        matches!(p, Payload::ConsentRequest(_))
    })
    .await;
    (agent, code)
}

/// Mints a token for `user_token` and connects a viewer; waits for its `SessionState`.
pub async fn viewer(server: &TestServer, user_token: &str, session_id: &str) -> Connection {
    let (token, _) = mint(server, user_token, session_id).await;
    let mut conn = connect_viewer(&server.base, session_id, &token)
        .await
        .expect("viewer connects");
    recv_until(&mut conn, "session state", WAIT, |p| {
        matches!(p, Payload::SessionState(_))
    })
    .await;
    conn
}

/// Waits until the live session has `n` viewers.
pub async fn wait_viewers(server: &TestServer, session_id: &str, n: usize) {
    let ok = crate::common::eventually(WAIT, || async {
        server
            .state
            .sessions
            .get(session_id)
            .is_some_and(|s| s.viewer_count() == n)
    })
    .await;
    assert!(ok, "session {session_id} never had {n} viewers");
}

/// Reads a Prometheus counter from `/metrics` (0 when absent).
pub async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name || k.starts_with(&format!("{name}{{"))).then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

// ------------------------------------------------------------------ raw WebSocket

/// A hand-rolled WebSocket client over a plain TCP stream, for tests that must write a
/// frame header without its payload (caps enforced before buffering) and still read the
/// server's close frame.
pub struct RawWs {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Opens `path` with an optional bearer credential; panics unless 101.
    pub async fn connect(server: &TestServer, path: &str, bearer: Option<&str>) -> RawWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("tcp");
        let auth = bearer.map_or(String::new(), |b| format!("Authorization: Bearer {b}\r\n"));
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n",
            server.addr
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("handshake write");
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("handshake timeout")
                .expect("handshake read");
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
        buf.drain(..end);
        RawWs { stream, buf }
    }

    fn header(opcode: u8, len: usize) -> Vec<u8> {
        let mut h = vec![0x80 | opcode];
        if len < 126 {
            h.push(0x80 | u8::try_from(len).unwrap());
        } else if len <= 0xffff {
            h.push(0x80 | 126);
            h.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&(len as u64).to_be_bytes());
        }
        // A zero masking key leaves the payload as is.
        h.extend_from_slice(&[0, 0, 0, 0]);
        h
    }

    /// Sends one complete binary message.
    pub async fn send_binary(&mut self, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut frame = Self::header(0x2, payload.len());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await.expect("raw send");
    }

    /// Writes `bytes` as they are (a hand-made frame, possibly invalid).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        // The server may already have closed; the close code is what tests look at.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Sends the header of a binary message of `len` bytes and only `partial` bytes of
    /// its payload.
    pub async fn send_partial(&mut self, len: usize, partial: usize) {
        use tokio::io::AsyncWriteExt;
        let mut frame = Self::header(0x2, len);
        frame.extend(std::iter::repeat_n(0u8, partial.min(len)));
        // The server may already have closed; that is what the test looks for.
        let _ = self.stream.write_all(&frame).await;
    }

    /// Reads frames until a close frame; returns its code (1005 without one, 1006 when
    /// the connection ended without a close frame). Panics after `timeout`.
    pub async fn read_close(&mut self, timeout: Duration) -> u16 {
        use tokio::io::AsyncReadExt;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((opcode, payload, used)) = Self::parse(&self.buf) {
                self.buf.drain(..used);
                if opcode == 0x8 {
                    return if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("no close frame within {timeout:?}"),
                Ok(Ok(0) | Err(_)) => return 1006,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn parse(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
        if buf.len() < 2 {
            return None;
        }
        let opcode = buf[0] & 0x0f;
        let (len, mut at) = match buf[1] & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
                4,
            ),
            127 => {
                let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
                (usize::try_from(u64::from_be_bytes(b)).ok()?, 10)
            }
            n => (usize::from(n), 2),
        };
        if buf[1] & 0x80 != 0 {
            at += 4;
        }
        let payload = buf.get(at..at + len)?.to_vec();
        Some((opcode, payload, at + len))
    }
}
