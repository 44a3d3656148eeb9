//! Start-up and operational invariants: the signing secret (SPEC §4.12), secrets never
//! logged and correlation ids in the log (§4.10, §4.11), the `config` subcommand,
//! PostgreSQL outages answered 503 with recovery (§9), and releases: only a manifest signed
//! by the pinned key and its exact files (§4.15), admin-only before any change (§4.16).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestServer, client, expect_envelope, random_secret, test_database_url};
use guruconnect_server::Config;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const BIN: &str = env!("CARGO_BIN_EXE_guruconnect-server");

/// A command for the real binary with a clean `GURUCONNECT_*` / `RUST_LOG` environment.
fn server_command(cwd: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("GURUCONNECT_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(cwd);
    cmd
}

// ---------------------------------------------------------------- signing secret

#[tokio::test]
async fn weak_signing_secret_is_refused_by_build_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        signing_secret: Some(SecretString::from("s".repeat(31))),
        admin_password: Some(SecretString::from("admin-password".to_owned())),
        ..Config::default()
    };
    let err = guruconnect_server::build_state(config.clone())
        .await
        .expect_err("a 31-byte signing secret must be refused");
    assert!(format!("{err:#}").contains("signing_secret"), "{err:#}");

    // 32 bytes is enough.
    let config = Config {
        signing_secret: Some(SecretString::from("s".repeat(32))),
        ..config
    };
    let state = guruconnect_server::build_state(config)
        .await
        .expect("32 bytes are accepted");
    state.store.close().await;
}

#[test]
fn the_binary_refuses_a_weak_signing_secret() {
    let dir = tempfile::tempdir().unwrap();
    let output = server_command(dir.path())
        .env("GURUCONNECT_SIGNING_SECRET", "weak-s3cret")
        .env("GURUCONNECT_DATA_DIR", dir.path().join("data"))
        .env("GURUCONNECT_BIND", "127.0.0.1:0")
        .env("GURUCONNECT_ADMIN_PASSWORD", "admin-password")
        .stdin(Stdio::null())
        .output()
        .expect("run the server binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must not start; stderr: {stderr}");
    assert!(stderr.contains("signing_secret"), "stderr: {stderr}");
    assert!(
        !stderr.contains("weak-s3cret"),
        "the secret itself is echoed: {stderr}"
    );
    assert!(
        !dir.path().join("data").join("guruconnect.db").exists(),
        "it went on to open the database"
    );
}

#[tokio::test]
async fn generated_signing_secret_is_persisted_privately_and_reused() {
    // The file is the embedded (SQLite) default; PostgreSQL keeps it in a settings row.
    let server = TestServer::start_with(|c| c.database_url = None).await;
    assert!(server.is_sqlite());
    let path = server.data_dir().join("signing.key");
    let secret = std::fs::read(&path).expect("signing.key in the data dir");
    assert!(secret.len() >= 32, "{} bytes", secret.len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "signing.key mode {mode:o}");
    }
    let token = server.admin_token().await;
    assert_eq!(server.me_status(&token).await, StatusCode::OK);

    let server = server.restart().await;
    assert_eq!(
        std::fs::read(&path).unwrap(),
        secret,
        "the secret was regenerated"
    );
    assert_eq!(
        server.me_status(&token).await,
        StatusCode::OK,
        "token from before the restart"
    );
}

#[tokio::test]
async fn generated_signing_secret_survives_restart_on_any_backend() {
    let server = TestServer::start().await;
    let token = server.admin_token().await;
    let server = server.restart().await;
    assert_eq!(server.me_status(&token).await, StatusCode::OK);
}

// ---------------------------------------------------------------- the real binary

/// The binary, running, with everything it wrote to stdout and stderr.
struct RunningBinary {
    child: Child,
    addr: SocketAddr,
    /// Everything printed, both streams interleaved.
    output: Arc<Mutex<String>>,
    /// Stdout alone.
    stdout: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl RunningBinary {
    fn start(cmd: &mut Command) -> RunningBinary {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the server binary");
        let output = Arc::new(Mutex::new(String::new()));
        let stdout_text = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let mut readers = Vec::new();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, tx, own) in [
            (
                Box::new(stdout) as Box<dyn Read + Send>,
                None,
                Some(Arc::clone(&stdout_text)),
            ),
            (
                Box::new(stderr) as Box<dyn Read + Send>,
                Some(addr_tx),
                None,
            ),
        ] {
            let output = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if let Some(tx) = &tx
                        && line.contains("GuruConnect server listening")
                        && let Some(addr) = line
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix("addr="))
                            .and_then(|a| a.parse().ok())
                    {
                        let _ = tx.send(addr);
                    }
                    output.lock().unwrap().push_str(&line);
                    if let Some(own) = &own {
                        own.lock().unwrap().push_str(&line);
                    }
                    line.clear();
                }
            }));
        }
        let addr = match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no `GuruConnect server listening addr=…` line; output:\n{}",
                    output.lock().unwrap()
                );
            }
        };
        RunningBinary {
            child,
            addr,
            output,
            stdout: stdout_text,
            readers,
        }
    }

    /// Waits up to 10 s for a stdout line containing `needle`; returns it.
    fn stdout_line(&self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(line) = self
                .stdout
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.contains(needle))
            {
                return Some(line.to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Kills the process and returns everything it printed.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.output.lock().unwrap().clone()
    }
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn secrets_are_never_logged_and_log_lines_carry_the_correlation_id() {
    let dir = tempfile::tempdir().unwrap();
    let admin_password = random_secret("binadm");
    let new_admin_password = random_secret("binnew");
    let user_password = random_secret("binusr");
    let mut cmd = server_command(dir.path());
    cmd.env("GURUCONNECT_DATA_DIR", dir.path().join("data"))
        .env("GURUCONNECT_BIND", "127.0.0.1:0")
        .env("GURUCONNECT_ADMIN_PASSWORD", &admin_password)
        .env("RUST_LOG", "debug");
    if let Some(url) = test_database_url().await {
        cmd.env("GURUCONNECT_DATABASE_URL", url);
    }
    let server = RunningBinary::start(&mut cmd);
    let http = client();

    let resp = http
        .post(server.url("/api/auth/login"))
        .json(&json!({ "username": "admin", "password": admin_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let token = resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = http
        .get(server.url("/api/auth/me"))
        .bearer_auth(&token)
        .header("x-request-id", "log-corr-me-4242")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // A failed sign-in, with a password that must not be logged either.
    let resp = http
        .post(server.url("/api/auth/login"))
        .header("x-request-id", "log-corr-fail-4243")
        .json(&json!({ "username": "admin", "password": format!("{admin_password}-typo") }))
        .send()
        .await
        .unwrap();
    let failed = expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(failed["correlation_id"], "log-corr-fail-4243");
    // An error with a generated correlation id.
    let resp = http.get(server.url("/api/nowhere")).send().await.unwrap();
    let missing = expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
    let generated_id = missing["correlation_id"].as_str().unwrap().to_owned();

    let resp = http
        .post(server.url("/api/auth/change-password"))
        .bearer_auth(&token)
        .json(&json!({ "current_password": admin_password, "new_password": new_admin_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .post(server.url("/api/users"))
        .bearer_auth(&token)
        .json(&json!({ "username": "logcheck", "password": user_password, "role": "technician" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = http
        .post(server.url("/api/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let log = server.kill();
    assert!(
        log.contains("request finished"),
        "no request log lines:\n{log}"
    );
    let signature = token.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("admin password", admin_password.as_str()),
        ("new admin password", new_admin_password.as_str()),
        ("user password", user_password.as_str()),
        ("token", token.as_str()),
        ("token signature", signature),
    ] {
        assert!(
            !log.contains(secret),
            "the {what} appears in the output:\n{log}"
        );
    }
    for id in [
        "log-corr-me-4242",
        "log-corr-fail-4243",
        generated_id.as_str(),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(id) && l.contains("request finished")),
            "no request log line carries {id}:\n{log}"
        );
    }
}

/// SPEC §4.10: a support code in a request path is logged as its last three characters at
/// most, whether the request succeeds or is refused; a viewer token in a query string is
/// never logged.
#[tokio::test]
async fn credentials_in_request_paths_and_queries_are_redacted_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let admin_password = random_secret("redadm");
    let mut cmd = server_command(dir.path());
    cmd.env("GURUCONNECT_DATA_DIR", dir.path().join("data"))
        .env("GURUCONNECT_BIND", "127.0.0.1:0")
        .env("GURUCONNECT_ADMIN_PASSWORD", &admin_password)
        .env("RUST_LOG", "debug");
    if let Some(url) = test_database_url().await {
        cmd.env("GURUCONNECT_DATABASE_URL", url);
    }
    let server = RunningBinary::start(&mut cmd);
    let http = client();
    let login = |username: &'static str, password: String| {
        let http = http.clone();
        let url = server.url("/api/auth/login");
        async move {
            let resp = http
                .post(url)
                .json(&json!({ "username": username, "password": password }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<Value>().await.unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let admin = login("admin", admin_password.clone()).await;
    let new_code = || async {
        let resp = http
            .post(server.url("/api/codes"))
            .bearer_auth(&admin)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json::<Value>().await.unwrap()["code"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let viewer_password = random_secret("redvw");
    let resp = http
        .post(server.url("/api/users"))
        .bearer_auth(&admin)
        .json(&json!({ "username": "redviewer", "password": viewer_password, "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let viewer = login("redviewer", viewer_password).await;

    // Refused (the role may not cancel codes), then cancelled, then refused again (409),
    // and once typed in lower case without dashes.
    let refused = new_code().await;
    let resp = http
        .delete(server.url(&format!("/api/codes/{refused}")))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let cancelled = new_code().await;
    for expected in [StatusCode::NO_CONTENT, StatusCode::CONFLICT] {
        let resp = http
            .delete(server.url(&format!("/api/codes/{cancelled}")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expected);
    }
    let typed = new_code().await;
    let typed_compact = typed.replace('-', "").to_lowercase();
    let resp = http
        .delete(server.url(&format!("/api/codes/{typed_compact}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // A viewer-socket URL with a token in its query (not an upgrade: answered 4xx).
    let query_token = random_secret("qtok");
    let resp = http
        .get(server.url(&format!("/ws/viewer?session_id=abc&token={query_token}")))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error());

    let log = server.kill();
    assert!(log.contains("request finished"), "no request lines:\n{log}");
    for code in [&refused, &cancelled, &typed] {
        let compact = code.replace('-', "");
        for shown in [code.as_str(), compact.as_str(), &code[..7], &typed_compact] {
            assert!(
                !log.to_uppercase().contains(&shown.to_uppercase()),
                "{shown} (from code {code}) appears in the log:\n{log}"
            );
        }
        let masked = format!("***-***-{}", &code[8..]);
        assert!(
            log.lines()
                .any(|l| l.contains(&masked) && l.contains("request finished")),
            "no request line shows {masked}:\n{log}"
        );
    }
    assert!(
        !log.contains(&query_token),
        "the query token appears in the log:\n{log}"
    );
}

#[tokio::test]
async fn generated_admin_password_is_printed_once_on_stdout_only() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut cmd = server_command(dir.path());
        cmd.env("GURUCONNECT_DATA_DIR", dir.path().join("data"))
            .env("GURUCONNECT_BIND", "127.0.0.1:0")
            .env("RUST_LOG", "debug");
        RunningBinary::start(&mut cmd)
    };
    let server = start();
    let line = server
        .stdout_line("with password: ")
        .expect("the generated admin password is printed on first start");
    let password = line
        .split("with password: ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    assert!(password.len() >= 16, "weak generated password {password:?}");
    // The start message names the address to open.
    let open = server
        .stdout_line("open http://")
        .expect("the start message names the console URL");
    assert!(open.contains(&server.url("/")), "{open}");
    let resp = client()
        .post(server.url("/api/auth/login"))
        .json(&json!({ "username": "admin", "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    // A generated password is not the administrator's own: the console asks for a new one.
    assert_eq!(body["password_change_required"], true, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let me = |token: String| {
        let url = server.url("/api/auth/me");
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(me(token.clone()).await["password_change_required"], true);
    let new_password = "a-password-of-my-own-42";
    let resp = client()
        .post(server.url("/api/auth/change-password"))
        .bearer_auth(&token)
        .json(&json!({ "current_password": password, "new_password": new_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(me(token.clone()).await["password_change_required"], false);
    let resp = client()
        .post(server.url("/api/auth/login"))
        .json(&json!({ "username": "admin", "password": new_password }))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("password_change_required").is_none(), "{body}");
    let stdout = server.stdout.lock().unwrap().clone();
    let all = server.kill();
    assert_eq!(
        all.matches(&password).count(),
        1,
        "printed more than once, or logged:\n{all}"
    );
    assert_eq!(
        stdout.matches(&password).count(),
        1,
        "not on stdout:\n{stdout}"
    );

    // Second start on the same data dir: the admin exists, nothing is printed.
    let server = start();
    std::thread::sleep(Duration::from_millis(300));
    let all = server.kill();
    assert!(
        !all.contains(&password),
        "the password was printed again:\n{all}"
    );
    assert!(
        !all.contains("with password"),
        "a new password was generated:\n{all}"
    );
}

/// Memory after bursts (issue 15): glibc's sliding mmap threshold kept frame buffers and
/// Argon2 blocks in per-thread heaps; the server fixes the threshold by restarting itself
/// once with `MALLOC_MMAP_THRESHOLD_`, and keeps a value the operator set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn the_server_fixes_glibcs_mmap_threshold_unless_the_operator_chose_one() {
    for (preset, expected) in [(None, "131072"), (Some("33554432"), "33554432")] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = server_command(dir.path());
        cmd.env("GURUCONNECT_DATA_DIR", dir.path().join("data"))
            .env("GURUCONNECT_BIND", "127.0.0.1:0")
            .env("GURUCONNECT_ADMIN_PASSWORD", PASSWORD_FOR_MALLOC_TEST)
            .env_remove("MALLOC_MMAP_THRESHOLD_");
        if let Some(value) = preset {
            cmd.env("MALLOC_MMAP_THRESHOLD_", value);
        }
        let server = RunningBinary::start(&mut cmd);
        // The process that answers is the one that was started (exec keeps the pid).
        let resp = client().get(server.url("/health")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let environ = std::fs::read(format!("/proc/{}/environ", server.child.id())).unwrap();
        let vars: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        assert!(
            vars.contains(&format!("MALLOC_MMAP_THRESHOLD_={expected}")),
            "preset {preset:?}: {:?}",
            vars.iter()
                .filter(|v| v.starts_with("MALLOC"))
                .collect::<Vec<_>>()
        );
        let all = server.kill();
        assert!(
            all.contains("glibc malloc: fixed mmap threshold") && all.contains(expected),
            "{all}"
        );
    }
}

const PASSWORD_FOR_MALLOC_TEST: &str = "malloc-test-password-1";

#[test]
fn config_subcommand_prints_the_default_toml() {
    let dir = tempfile::tempdir().unwrap();
    let output = server_command(dir.path())
        .arg("config")
        .stdin(Stdio::null())
        .output()
        .expect("run the server binary");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("bind = \"127.0.0.1:3002\""), "{text}");
    let parsed: toml::Table = toml::from_str(&text).expect("valid TOML");
    assert_eq!(parsed["bind"].as_str(), Some("127.0.0.1:3002"));
}

// ---------------------------------------------------------------- PostgreSQL outage

/// A TCP forwarder with an on/off switch: off drops every forwarded connection and
/// closes new ones as soon as they are accepted.
struct Forwarder {
    addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Forwarder {
    async fn start(target: String) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let enabled = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let enabled = Arc::clone(&enabled);
            let conns = Arc::clone(&conns);
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !enabled.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let target = target.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().unwrap().push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Forwarder {
            addr,
            enabled,
            conns,
            accept,
        }
    }

    fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
        if !on {
            for conn in self.conns.lock().unwrap().drain(..) {
                conn.abort();
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_enabled(false);
    }
}

/// Splits `scheme://[userinfo@]host[:port]/rest` into (`host:port`, a function of the
/// replacement authority).
fn pg_host_port(url: &str) -> (String, String, String) {
    let (scheme, rest) = url.split_once("://").expect("URL with scheme");
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h.to_owned()),
        None => (String::new(), authority.to_owned()),
    };
    let hostport = if hostport.contains(':') {
        hostport
    } else {
        format!("{hostport}:5432")
    };
    (hostport, format!("{scheme}://{userinfo}"), path.to_owned())
}

#[tokio::test]
async fn postgres_outage_answers_503_and_recovers() {
    let Some(url) = test_database_url().await else {
        println!("skipped: GURUCONNECT_TEST_DATABASE_URL is not set");
        return;
    };
    let (target, prefix, path) = pg_host_port(&url);
    let forwarder = Forwarder::start(target).await;
    let proxied = format!("{prefix}{}{path}", forwarder.addr);
    let server =
        TestServer::start_with(|c| c.database_url = Some(SecretString::from(proxied))).await;
    assert!(!server.is_sqlite());
    let token = server.admin_token().await;
    assert_eq!(server.me_status(&token).await, StatusCode::OK);

    forwarder.set_enabled(false);
    let started = Instant::now();
    let resp = server.get("/api/auth/me", &token).await;
    let elapsed = started.elapsed();
    expect_envelope(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    assert!(elapsed < Duration::from_secs(8), "503 took {elapsed:?}");

    let resp = client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = resp.text().await.unwrap();
    common::assert_no_leak(&text);
    assert!(!text.contains("\"ok\""), "{text}");

    // Sign-in is a 503 too, not a 401 (the user is not told the password was wrong).
    let resp = server.login_response("admin", &server.admin_password).await;
    expect_envelope(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;

    // The server is still running.
    assert!(server.is_running(), "the server task ended");
    let resp = client()
        .get(server.url("/api/nowhere"))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;

    forwarder.set_enabled(true);
    let recovered = common::eventually(Duration::from_secs(10), || async {
        server.me_status(&token).await == StatusCode::OK
    })
    .await;
    assert!(recovered, "requests did not succeed again within 10 s");
    let resp = client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let fresh = server.login("admin", &server.admin_password.clone()).await;
    assert_eq!(server.me_status(&fresh).await, StatusCode::OK);
}

// ---------------------------------------------------------------- §4.15, §4.16 releases

/// A signed one-artifact release of `version`.
fn signed_release(key: &guruconnect_release::SigningKey, version: &str, bytes: &[u8]) -> Value {
    let manifest = json!({
        "version": version,
        "channel": "stable",
        "artifacts": [{
            "platform": "linux-x86_64",
            "file": "guruconnect-agent",
            "size": bytes.len(),
            "sha256": guruconnect_release::sha256_hex(bytes),
        }],
    })
    .to_string();
    serde_json::to_value(guruconnect_release::SignedRelease::sign(&manifest, key).unwrap()).unwrap()
}

/// §4.15: the server accepts only a manifest signed by the pinned key, and an artifact
/// only with the signed size and SHA-256; the agent gets the signature to check again.
#[tokio::test]
async fn only_a_release_signed_by_the_pinned_key_and_its_exact_file_are_accepted() {
    let key = guruconnect_release::generate_key();
    let public = guruconnect_release::public_key_text(&key.verifying_key());
    let server = TestServer::start_with(|c| c.release_public_key = Some(public)).await;
    let admin = server.admin_token().await;
    let http = client();
    let bytes = b"agent build 2.0.0".to_vec();

    let forged = signed_release(&guruconnect_release::generate_key(), "2.0.0", &bytes);
    let resp = http
        .post(server.url("/api/releases"))
        .bearer_auth(&admin)
        .json(&forged)
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(server.state.store.list_releases().await.unwrap().is_empty());

    let genuine = signed_release(&key, "2.0.0", &bytes);
    let resp = http
        .post(server.url("/api/releases"))
        .bearer_auth(&admin)
        .json(&genuine)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let mut evil = bytes.clone();
    evil[0] ^= 1;
    let url = server.url("/api/releases/2.0.0/artifacts/linux-x86_64");
    let resp = http
        .put(&url)
        .bearer_auth(&admin)
        .body(evil)
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "a refused file is not served"
    );
    let resp = http
        .put(&url)
        .bearer_auth(&admin)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let offer: Value = http
        .get(server.url("/api/version?platform=linux-x86_64&current=1.0.0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let release: guruconnect_release::SignedRelease =
        serde_json::from_value(offer["release"].clone()).unwrap();
    assert!(release.verify(&key.verifying_key()).is_ok());
}

/// §4.16: publishing, rollout, deletion, uploads and pushes are admin-only, and the check
/// comes before any change (nothing stored, nothing audited).
#[tokio::test]
async fn releases_are_admin_only_and_checked_before_any_change() {
    let key = guruconnect_release::generate_key();
    let public = guruconnect_release::public_key_text(&key.verifying_key());
    let server = TestServer::start_with(|c| c.release_public_key = Some(public)).await;
    let admin = server.admin_token().await;
    let http = client();
    let tech = {
        server
            .create_user(&admin, "tech.rel", "Tech-password-42!", "technician")
            .await;
        server.login("tech.rel", "Tech-password-42!").await
    };
    let release = signed_release(&key, "3.0.0", b"x");
    let resp = http
        .post(server.url("/api/releases"))
        .bearer_auth(&tech)
        .json(&release)
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(server.state.store.list_releases().await.unwrap().is_empty());
    let resp = http
        .post(server.url("/api/releases"))
        .bearer_auth(&admin)
        .json(&release)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let before = server.events().await.len();
    for (method, path, body) in [
        (reqwest::Method::GET, "/api/releases", None),
        (
            reqwest::Method::PATCH,
            "/api/releases/3.0.0",
            Some(json!({ "rollout_percent": 0 })),
        ),
        (reqwest::Method::DELETE, "/api/releases/3.0.0", None),
        (
            reqwest::Method::POST,
            "/api/machines/update",
            Some(json!({ "agent_ids": ["a"] })),
        ),
    ] {
        let mut req = http
            .request(method.clone(), server.url(path))
            .bearer_auth(&tech);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let resp = http
        .put(server.url("/api/releases/3.0.0/artifacts/linux-x86_64"))
        .bearer_auth(&tech)
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let stored = server.state.store.get_release("3.0.0").await.unwrap();
    assert_eq!(stored.rollout_percent, 100);
    assert_eq!(server.events().await.len(), before, "nothing audited");
    assert!(
        !server
            .data_dir()
            .join("releases/3.0.0/linux-x86_64/guruconnect-agent")
            .exists()
    );
}
