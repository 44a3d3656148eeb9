//! Idle and slow connections are closed (issue 15 item 2): silent TCP connections,
//! slowloris header drips, refused upgrades left open and half-sent upgrades all end at
//! the header-read deadline; one address cannot hold more than its share of
//! connections; and with a 1,024 soft open-file limit the real binary still answers
//! `/health` and sign-in under a flood of 1,100 silent connections; requests the HTTP
//! parser rejects are logged with a request id (issue 15 item 3). Outcomes only, with
//! generous deadlines: no test asserts how fast anything is.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_guruconnect-server");

/// The test process holds both ends of every connection: lift its own limit.
fn raise_own_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        limit.current = Some(hard);
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// A TCP connection from source address `from` that sends nothing.
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closes `stream` within `within` (EOF or reset after draining
/// whatever it sent).
async fn closed_within(mut stream: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// An HTTP client whose connections come from `from`.
fn client_from(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(from)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

const FLOOD_ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const OTHER_ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed_at_the_header_deadline() {
    raise_own_fd_limit();
    let server = TestServer::start_with(|c| {
        c.header_read_timeout_secs = 2;
        c.max_connections_per_address = 0;
    })
    .await;
    let mut streams = Vec::new();
    // Silent connections.
    for _ in 0..300 {
        streams.push(connect_from(FLOOD_ADDR, server.addr).await);
    }
    // Half-sent upgrades: a head that never ends.
    for _ in 0..10 {
        let mut s = connect_from(FLOOD_ADDR, server.addr).await;
        s.write_all(b"GET /ws/agent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            .await
            .unwrap();
        streams.push(s);
    }
    // Refused upgrades, then idle on the kept-alive connection.
    for _ in 0..10 {
        let mut s = connect_from(FLOOD_ADDR, server.addr).await;
        s.write_all(
            b"GET /ws/agent HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 401");
        streams.push(s);
    }
    // Slowloris: a header line every 300 ms, for as long as the server lets it.
    let mut drips = Vec::new();
    for _ in 0..10 {
        let mut s = connect_from(FLOOD_ADDR, server.addr).await;
        drips.push(tokio::spawn(async move {
            if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                .await
                .is_err()
            {
                return true;
            }
            for i in 0..200 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if s.write_all(format!("X-Drip-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return true;
                }
            }
            false
        }));
    }

    // Sign-in works during the flood, from the flooding address too (no cap here).
    let resp = client_from(FLOOD_ADDR)
        .post(server.url("/api/auth/login"))
        .json(&json!({ "username": "admin", "password": server.admin_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let results = futures_util::future::join_all(
        streams
            .into_iter()
            .map(|s| closed_within(s, Duration::from_secs(30))),
    )
    .await;
    let open = results.iter().filter(|closed| !**closed).count();
    assert_eq!(
        open,
        0,
        "{open} of {} idle connections still open",
        results.len()
    );
    for drip in drips {
        assert!(
            drip.await.unwrap(),
            "a slowloris connection outlived 60 s of drips"
        );
    }
    assert_eq!(
        client_from(FLOOD_ADDR)
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_connections() {
    raise_own_fd_limit();
    let server = TestServer::start_with(|c| {
        c.header_read_timeout_secs = 120;
        c.max_connections_per_address = 20;
    })
    .await;
    let mut streams = Vec::new();
    for _ in 0..60 {
        streams.push(connect_from(FLOOD_ADDR, server.addr).await);
    }
    // The first 20 are served (and stay: the deadline is far), the rest are closed.
    let results = futures_util::future::join_all(streams.into_iter().map(|s| async move {
        let mut peek = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), s.peek(&mut peek))
            .await
            .is_ok();
        (closed, s)
    }))
    .await;
    let (closed, kept): (Vec<_>, Vec<_>) = results.into_iter().partition(|(closed, _)| *closed);
    assert_eq!((kept.len(), closed.len()), (20, 40));

    // Another address is unaffected; the full one is refused until it lets go.
    let resp = client_from(OTHER_ADDR)
        .post(server.url("/api/auth/login"))
        .json(&json!({ "username": "admin", "password": server.admin_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        client_from(FLOOD_ADDR)
            .get(server.url("/health"))
            .send()
            .await
            .is_err()
    );
    drop(kept);
    let recovered = common::eventually(Duration::from_secs(30), || async {
        client_from(FLOOD_ADDR)
            .get(server.url("/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    assert!(
        recovered,
        "the address was not admitted again after closing its connections"
    );
}

// ---------------------------------------------------------------- the real binary

struct Binary {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Binary {
    /// Starts the server binary under `prlimit --nofile=SOFT:HARD`.
    fn start(soft: u64, hard: u64, env: &[(&str, &str)], dir: &std::path::Path) -> Binary {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={soft}:{hard}"))
            .arg("--")
            .arg(BIN);
        for (key, _) in std::env::vars() {
            if key.starts_with("GURUCONNECT_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        cmd.env("GURUCONNECT_DATA_DIR", dir.join("data"))
            .env("GURUCONNECT_BIND", "127.0.0.1:0")
            .env("GURUCONNECT_ADMIN_PASSWORD", "admin-password-1")
            .env("RUST_LOG", "info,sqlx=warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run prlimit with the server binary");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("GuruConnect server listening")
                    && let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                        .and_then(|a| a.parse().ok())
                {
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("the server did not start:\n{}", log.lock().unwrap());
            });
        Binary { child, addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 1,100 silent connections against a server started with a 1,024 soft limit: `/health`
/// and sign-in from another address still answer.
async fn flood_with_soft_limit_1024(hard: u64, env: &[(&str, &str)]) -> String {
    raise_own_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(1024, hard, env, dir.path());
    let mut streams = Vec::new();
    for _ in 0..1100 {
        streams.push(connect_from(FLOOD_ADDR, server.addr).await);
    }
    let other = client_from(OTHER_ADDR);
    let health = other.get(server.url("/health")).send().await;
    assert!(
        health.as_ref().is_ok_and(|r| r.status() == StatusCode::OK),
        "{health:?}\n{}",
        server.log.lock().unwrap()
    );
    let login = other
        .post(server.url("/api/auth/login"))
        .json(&json!({ "username": "admin", "password": "admin-password-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    drop(streams);
    server.log.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_1024_soft_limit_the_binary_raises_it_and_answers_under_a_flood() {
    // No per-address cap: only the raised limit keeps the server answering.
    let log =
        flood_with_soft_limit_1024(8192, &[("GURUCONNECT_MAX_CONNECTIONS_PER_ADDRESS", "0")]).await;
    assert!(log.contains("open-file limit raised"), "{log}");
    assert!(
        log.contains("soft_before=1024") && log.contains("hard=8192"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_1024_hard_limit_the_address_cap_keeps_the_binary_answering() {
    let log = flood_with_soft_limit_1024(1024, &[]).await;
    assert!(
        log.contains("open-file limit") && log.contains("soft=1024"),
        "{log}"
    );
}

// ---------------------------------------------------------------- parser rejections

/// Sends `raw` on a fresh connection and returns what the server answers before closing.
async fn raw_exchange(to: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(to).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_parser_rejects_are_logged_with_a_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(4096, 4096, &[], dir.path());
    let garbage: [&[u8]; 3] = [
        b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nBad Name: value\r\n\r\n",
    ];
    for raw in garbage {
        let answer = raw_exchange(server.addr, raw).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "answer: {answer:?}");
    }
    let mut ids = Vec::new();
    let logged = common::eventually(Duration::from_secs(10), || {
        let log = server.log.lock().unwrap().clone();
        ids = log
            .lines()
            .filter(|l| l.contains("request rejected by the HTTP parser"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("request_id="))
                    .map(str::to_owned)
            })
            .collect();
        std::future::ready(ids.len() == garbage.len())
    })
    .await;
    let log = server.log.lock().unwrap().clone();
    assert!(logged, "parser rejections not logged:\n{log}");
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        garbage.len(),
        "request ids are not distinct:\n{log}"
    );
    assert!(
        ids.iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())),
        "{ids:?}"
    );
    // The server still answers.
    let health = common::client()
        .get(server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}
