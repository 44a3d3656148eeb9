//! Shared harness for the server's integration tests: an in-process server on an
//! ephemeral port, on a fresh data directory and (when `GURUCONNECT_TEST_DATABASE_URL` is
//! set) a fresh PostgreSQL schema, plus small HTTP helpers.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use guruconnect_server::{AppState, Config};
use guruconnect_store::{Backend, DEFAULT_TENANT, Event, EventFilter};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Words that must never appear in a response body (library or database error text).
pub const LEAK_WORDS: &[&str] = &[
    "sqlx",
    "sqlite",
    "postgres",
    "serde",
    "sql",
    "column",
    "argon2",
    "jsonwebtoken",
    "hyper",
    "axum",
    "panicked",
    "at line",
    "invalid type",
    "missing field",
];

/// A server running in this process.
pub struct TestServer {
    /// Listening address.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// The server's state (store, metrics, config…).
    pub state: AppState,
    /// Password of the first `admin` user.
    pub admin_password: String,
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A random password-like string (URL-safe, 24 characters).
pub fn random_secret(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..20]
    )
}

/// The PostgreSQL URL for a fresh schema when `GURUCONNECT_TEST_DATABASE_URL` is set.
pub async fn test_database_url() -> Option<String> {
    guruconnect_store::testing::test_database_url().await
}

/// Whether the suite runs against PostgreSQL.
pub fn postgres_selected() -> bool {
    std::env::var(guruconnect_store::testing::TEST_DATABASE_URL_VAR)
        .is_ok_and(|v| !v.trim().is_empty())
}

impl TestServer {
    /// Starts a server with the default test configuration.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` has adjusted the test configuration. The closure
    /// runs after the harness picked the backend, so it may also override it (setting
    /// `database_url = None` forces the embedded SQLite).
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin_password = random_secret("adm");
        let mut config = Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().join("data"),
            admin_password: Some(SecretString::from(admin_password.clone())),
            signing_secret: None,
            ..Config::default()
        };
        if let Some(url) = test_database_url().await {
            config.database_url = Some(SecretString::from(url));
        }
        tweak(&mut config);
        Self::launch(config, dir, admin_password).await
    }

    async fn launch(config: Config, dir: tempfile::TempDir, admin_password: String) -> TestServer {
        let state = guruconnect_server::build_state(config)
            .await
            .expect("build_state");
        Self::serve(state, dir, admin_password).await
    }

    /// Serves an already built state (for tests that build it themselves).
    async fn serve(state: AppState, dir: tempfile::TempDir, admin_password: String) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(guruconnect_server::serve_state(
            state.clone(),
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        TestServer {
            addr,
            base: format!("http://{addr}"),
            state,
            admin_password,
            _dir: dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stops the server and waits for it (and its database pool) to close.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            match tokio::time::timeout(Duration::from_secs(10), handle).await {
                Ok(joined) => joined.expect("server task").expect("server result"),
                Err(_) => panic!("server did not stop within 10 s"),
            }
        }
        self.state.store.close().await;
    }

    /// Stops this server and starts a fresh one (new state, new port) on the same
    /// configuration: same data directory and database, same signing-secret source.
    pub async fn restart(mut self) -> TestServer {
        self.stop().await;
        let config = (*self.state.config).clone();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"));
        let admin_password = self.admin_password.clone();
        Self::launch(config, dir, admin_password).await
    }

    /// Whether the server task is still running.
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
            && !self.state.shutdown.is_cancelled()
    }

    /// The data directory of this server.
    pub fn data_dir(&self) -> &Path {
        &self.state.config.data_dir
    }

    /// Whether this server uses the embedded SQLite database.
    pub fn is_sqlite(&self) -> bool {
        self.state.store.backend() == Backend::Sqlite
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An HTTP client that never goes through a proxy.
    pub fn client(&self) -> reqwest::Client {
        client()
    }

    /// `POST /api/auth/login`; the raw response.
    pub async fn login_response(&self, username: &str, password: &str) -> reqwest::Response {
        self.client()
            .post(self.url("/api/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("login request")
    }

    /// Signs in (panics unless 200) and returns the token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let resp = self.login_response(username, password).await;
        assert_eq!(resp.status(), StatusCode::OK, "login of {username} failed");
        let body: Value = resp.json().await.expect("login body");
        body["token"]
            .as_str()
            .expect("token in login response")
            .to_owned()
    }

    /// Signs in as the first administrator over HTTP.
    pub async fn admin_token(&self) -> String {
        self.login("admin", &self.admin_password.clone()).await
    }

    /// Mints a login token for `username` directly through the state (no HTTP, no rate
    /// limit): for tests that need many tokens.
    pub async fn issue_token(&self, username: &str) -> String {
        let user = self
            .state
            .store
            .find_user_by_username(DEFAULT_TENANT, username)
            .await
            .expect("find user")
            .expect("user exists");
        guruconnect_server::api::auth::issue_login_token(&self.state, &user)
            .await
            .expect("issue token")
            .0
    }

    /// `POST /api/users` as `token`; panics unless 201. Returns the user view.
    pub async fn create_user(
        &self,
        token: &str,
        username: &str,
        password: &str,
        role: &str,
    ) -> Value {
        let resp = self
            .client()
            .post(self.url("/api/users"))
            .bearer_auth(token)
            .json(&json!({ "username": username, "password": password, "role": role }))
            .send()
            .await
            .expect("create user request");
        let status = resp.status();
        let body: Value = resp.json().await.expect("create user body");
        assert_eq!(status, StatusCode::CREATED, "create {username}: {body}");
        body
    }

    /// `GET path` with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET")
    }

    /// `GET /api/auth/me` status for a token.
    pub async fn me_status(&self, token: &str) -> StatusCode {
        self.get("/api/auth/me", token).await.status()
    }

    /// Every audit event of the default tenant, newest first.
    pub async fn events(&self) -> Vec<Event> {
        self.state
            .store
            .list_events(&EventFilter {
                tenant_id: DEFAULT_TENANT.to_owned(),
                limit: 500,
                ..EventFilter::default()
            })
            .await
            .expect("list events")
    }

    /// Audit events of one type, newest first.
    pub async fn events_of(&self, event_type: &str) -> Vec<Event> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e.event.event_type == event_type)
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An HTTP client that never goes through a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// Fails if a response body contains database or library error text.
pub fn assert_no_leak(body: &str) {
    let lower = body.to_lowercase();
    for word in LEAK_WORDS {
        assert!(
            !lower.contains(word),
            "response body leaks {word:?}: {body}"
        );
    }
}

/// Checks that `resp` is the error envelope (SPEC §4.11) with `status` and `code`:
/// exactly the four keys, `status_code` equal to the HTTP status, `correlation_id` equal
/// to the `X-Request-Id` response header, no library text. Returns the body.
pub async fn expect_envelope(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let actual = resp.status();
    let header_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.expect("body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    assert_no_leak(&text);
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let object = body.as_object().expect("envelope is an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["correlation_id", "detail", "error_code", "status_code"],
        "envelope keys: {text}"
    );
    assert_eq!(body["error_code"], code, "error_code: {text}");
    assert_eq!(body["status_code"], status.as_u16(), "status_code: {text}");
    let detail = body["detail"].as_str().expect("detail is a string");
    assert!(!detail.is_empty(), "empty detail");
    let correlation_id = body["correlation_id"]
        .as_str()
        .expect("correlation id string");
    assert!(
        !correlation_id.is_empty() && correlation_id != "-",
        "correlation id: {text}"
    );
    assert_eq!(
        header_id.as_deref(),
        Some(correlation_id),
        "X-Request-Id header must equal the body's correlation_id"
    );
    body
}

/// Polls `check` every 200 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
