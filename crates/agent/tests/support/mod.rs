//! The harness the end-to-end tests share: a private Xvfb, the relay in-process, the agent
//! as a real process (the Linux binary, or the Windows `.exe` under Wine), viewers over the
//! protocol client, picture helpers, and for self-update a supervisor that restarts the
//! agent as a service manager does and the release publishing steps.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod files;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guruconnect_agent::platform::ui::{CONSENT_TITLE, center};
use guruconnect_client::{Connection, connect_viewer};
use guruconnect_codec::{Decoder, Image};
use guruconnect_proto::{
    Codec, Envelope, KeyEvent, MouseAction, MouseButton, MouseEvent, Payload, ViewerHello,
};
use guruconnect_release::{SignedRelease, SigningKey};
use serde_json::{Value, json};
use x11rb::connection::Connection as _;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    AtomEnum, ConnectionExt as _, CreateWindowAux, EventMask, InputFocus, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

pub const WAIT: Duration = Duration::from_secs(20);

/// Window A: blue, records input. (x, y, w, h, 0xRRGGBB)
pub const WIN_A: (i16, i16, u16, u16, u32) = (100, 100, 200, 150, 0x0033_66cc);
/// Window B: orange.
pub const WIN_B: (i16, i16, u16, u16, u32) = (300, 100, 200, 150, 0x00cc_6633);

// ------------------------------------------------------------------ processes

pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A private Xvfb server, killed on drop. While it lives, a [`Watchdog`] guards the test.
pub struct Xvfb {
    pub child: Child,
    pub display: String,
    _watchdog: Watchdog,
}

/// How long one end-to-end test may run before the watchdog ends the process: 300 s (the
/// slowest, Wine, tests take about 75 s on two busy cores), or `GURUCONNECT_TEST_LIMIT_SECS`.
pub fn test_limit() -> Duration {
    let secs = std::env::var("GURUCONNECT_TEST_LIMIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

impl Xvfb {
    pub fn start() -> Option<Xvfb> {
        if !have("Xvfb") {
            println!("SKIPPED: Xvfb is not installed (apt-get install xvfb)");
            return None;
        }
        assert!(
            have("xdotool"),
            "xdotool is not installed (apt-get install xdotool)"
        );
        let watchdog = Watchdog::arm(test_limit());
        // -displayfd: Xvfb picks a free display itself and writes its number once it
        // listens, so parallel tests never race for a number (one that lost such a race
        // could connect to another test's server).
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x720x24",
                "-nolisten",
                "tcp",
                "-noreset",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn Xvfb");
        let stdout = child.stdout.take().expect("Xvfb stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let number = rx
            .recv_timeout(Duration::from_secs(20))
            .ok()
            .and_then(|line| line.trim().parse::<u32>().ok());
        let Some(number) = number else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("Xvfb did not report a display within 20 s");
        };
        let display = format!(":{number}");
        assert!(
            x11rb::connect(Some(&display)).is_ok(),
            "Xvfb reported {display} but does not accept connections"
        );
        Some(Xvfb {
            child,
            display,
            _watchdog: watchdog,
        })
    }
}

/// Ends the test process when a test outlives its limit, after printing every thread's
/// backtrace (gdb, when installed): a wait without a deadline then fails CI within minutes
/// and says where it hung, instead of running into CI's own timeout silently.
pub struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    /// Arms a watchdog for the calling test; dropping it disarms it.
    pub fn arm(limit: Duration) -> Watchdog {
        let test = std::thread::current()
            .name()
            .unwrap_or("an unnamed test")
            .to_owned();
        let (disarm, armed) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if armed.recv_timeout(limit) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            // Straight to stderr: the test harness captures print!/eprint! output of the
            // test's threads and would lose it when the process exits.
            use std::io::Write as _;
            let mut err = std::io::stderr();
            let _ = writeln!(
                err,
                "WATCHDOG: {test} still runs after {limit:?}; every thread's backtrace follows"
            );
            if have("gdb") {
                let out = run_with_timeout(
                    Command::new("gdb").args([
                        "-p",
                        &std::process::id().to_string(),
                        "-batch",
                        "-ex",
                        "thread apply all bt",
                    ]),
                    Duration::from_secs(60),
                );
                let _ = err.write_all(&out.stdout);
                let _ = err.write_all(&out.stderr);
            }
            let _ = writeln!(err, "WATCHDOG: {test} hung; ending the test process");
            std::process::exit(101);
        });
        Watchdog { _disarm: disarm }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM lets Xvfb remove its socket and lock file; SIGKILL only as a last resort.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn uuid_like() -> [u8; 16] {
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("urandom");
    buf
}

/// Runs a command with a deadline; kills it when the deadline passes.
///
/// Its output is read while it runs, so a full pipe cannot stall it. A process it leaves
/// behind may hold its pipes open (Wine starts a `wineserver` that inherits them): after the
/// command exits, its output is read until the end or the deadline, whichever comes first.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    let stdout = Drain::start(child.stdout.take().expect("stdout"));
    let stderr = Drain::start(child.stderr.take().expect("stderr"));
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            // At least a moment for the last bytes, even right at the deadline.
            let until = deadline.max(Instant::now() + Duration::from_millis(500));
            return Output {
                status,
                stdout: stdout.take(until),
                stderr: stderr.take(until),
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.take(Instant::now() + Duration::from_millis(500));
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pipe read to its end on a thread of its own.
struct Drain {
    read: Arc<Mutex<Vec<u8>>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Drain {
    fn start(mut pipe: impl std::io::Read + Send + 'static) -> Drain {
        let read = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = std::sync::mpsc::channel();
        let sink = read.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(());
        });
        Drain { read, done }
    }

    /// What was read once the pipe ends, or by `until` if it is still open then.
    fn take(self, until: Instant) -> Vec<u8> {
        let _ = self
            .done
            .recv_timeout(until.saturating_duration_since(Instant::now()));
        std::mem::take(&mut *self.read.lock().unwrap())
    }
}

pub fn xdotool(display: &str, args: &[&str]) -> String {
    let out = run_with_timeout(
        Command::new("xdotool").args(args).env("DISPLAY", display),
        WAIT,
    );
    assert!(
        out.status.success(),
        "xdotool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first visible X window whose name matches, waiting for it.
///
/// xdotool's search walks the window tree; a window destroyed during the walk (Wine's
/// transient windows) fails it with BadWindow, which is retried rather than a failure.
pub fn wait_window(display: &str, name: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = run_with_timeout(
            Command::new("xdotool")
                .args(["search", "--sync", "--onlyvisible", "--name", name])
                .env("DISPLAY", display),
            WAIT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            let found = String::from_utf8_lossy(&out.stdout);
            return found.lines().next().expect("a window id").trim().to_owned();
        }
        assert!(
            stderr.contains("BadWindow") && Instant::now() < deadline,
            "xdotool search for {name:?} failed: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Clicks the centre of `rect` (window coordinates) of `window`, as a user would.
pub fn click_in_window(display: &str, window: &str, rect: (i16, i16, u16, u16)) {
    let (x, y) = center(rect);
    xdotool(
        display,
        &[
            "mousemove",
            "--window",
            window,
            &x.to_string(),
            &y.to_string(),
            "click",
            "1",
        ],
    );
}

/// Finds the consent prompt and clicks one of its buttons as a user would.
pub fn click_consent(display: &str, button: (i16, i16, u16, u16)) {
    click_prompt(display, CONSENT_TITLE, button);
}

/// Finds the prompt titled `title` and clicks one of its buttons as a user would.
pub fn click_prompt(display: &str, title: &str, button: (i16, i16, u16, u16)) {
    let window = wait_window(display, title);
    // Give the prompt a moment to finish mapping before the click.
    std::thread::sleep(Duration::from_millis(200));
    click_in_window(display, &window, button);
}

/// The agent process; its stderr is collected for assertions and failure messages.
pub struct AgentProcess {
    pub child: Child,
    pub stderr: Arc<Mutex<String>>,
}

impl AgentProcess {
    pub fn spawn(display: Option<&str>, args: &[&str]) -> AgentProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guruconnect-agent"));
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match display {
            Some(d) => cmd.env("DISPLAY", d),
            None => cmd.env_remove("DISPLAY"),
        };
        Self::collect(cmd.spawn().expect("spawn agent"))
    }

    pub fn collect(mut child: Child) -> AgentProcess {
        let mut pipe = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        AgentProcess { child, stderr }
    }

    /// Spawns a prepared command (another path to the binary) on `display`. A binary just
    /// copied may be "busy" for a moment: a process forked meanwhile by another test thread
    /// holds the copy's write descriptor until it execs, so the spawn is retried.
    pub fn spawn_cmd(mut cmd: Command, display: &str) -> AgentProcess {
        cmd.env("RUST_LOG", "info")
            .env("DISPLAY", display)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut tries = 0;
        loop {
            match cmd.spawn() {
                Ok(child) => return Self::collect(child),
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("spawn agent: {e}"),
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader thread drain the pipe.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ the test X client

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    KeyPress(u8),
    ButtonPress { button: u8, x: i16, y: i16 },
}

/// Coloured windows; the first records key and button presses (wheel clicks included: X
/// reports them as buttons 4 to 7).
pub struct TestApp {
    pub display: String,
    pub window_a: u32,
    pub events: Arc<Mutex<Vec<Recorded>>>,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TestApp {
    /// Windows A (recording) and B.
    pub fn start(display: &str) -> TestApp {
        Self::with_windows(display, &[WIN_A, WIN_B])
    }

    /// The given windows, the first recording input.
    pub fn with_windows(display: &str, windows: &[(i16, i16, u16, u16, u32)]) -> TestApp {
        let (conn, screen) = x11rb::connect(Some(display)).expect("connect test app");
        let root = conn.setup().roots[screen].root;
        let mut ids = Vec::new();
        for (i, &(x, y, w, h, colour)) in windows.iter().enumerate() {
            let id = conn.generate_id().expect("id");
            let mask = if i == 0 {
                EventMask::KEY_PRESS | EventMask::BUTTON_PRESS
            } else {
                EventMask::NO_EVENT
            };
            conn.create_window(
                x11rb::COPY_DEPTH_FROM_PARENT,
                id,
                root,
                x,
                y,
                w,
                h,
                0,
                WindowClass::INPUT_OUTPUT,
                0,
                &CreateWindowAux::new()
                    .background_pixel(colour)
                    .override_redirect(1)
                    .event_mask(mask),
            )
            .expect("create window");
            conn.map_window(id).expect("map");
            ids.push(id);
        }
        conn.flush().expect("flush");
        conn.sync().expect("sync");
        // The recording thread owns this connection: no other thread waits on it.
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (e, s) = (events.clone(), stop.clone());
        let window_a = ids[0];
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match conn.poll_for_event() {
                    Ok(Some(Event::KeyPress(k))) if k.event == window_a => {
                        e.lock().unwrap().push(Recorded::KeyPress(k.detail));
                    }
                    Ok(Some(Event::ButtonPress(b))) if b.event == window_a => {
                        e.lock().unwrap().push(Recorded::ButtonPress {
                            button: b.detail,
                            x: b.event_x,
                            y: b.event_y,
                        });
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => return,
                }
            }
        });
        TestApp {
            display: display.to_owned(),
            window_a,
            events,
            stop,
        }
    }

    /// Gives window A the keyboard focus (from a connection of its own).
    pub fn focus(&self) {
        let (conn, _) = x11rb::connect(Some(&self.display)).expect("connect to focus");
        conn.set_input_focus(InputFocus::POINTER_ROOT, self.window_a, x11rb::CURRENT_TIME)
            .expect("focus");
        conn.sync().expect("sync");
    }

    pub fn events(&self) -> Vec<Recorded> {
        self.events.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Recorded]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !pred(&self.events()) {
            assert!(
                Instant::now() < deadline,
                "{what} never arrived in the X client; recorded {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

// ------------------------------------------------------------------ the relay

pub struct Relay {
    pub base: String,
    pub port: u16,
    pub admin_password: String,
    pub http: reqwest::Client,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub state: Option<guruconnect_server::AppState>,
    pub dir: Option<tempfile::TempDir>,
}

impl Relay {
    pub async fn start() -> Relay {
        Self::start_in(tempfile::tempdir().expect("tempdir"), 0, None, |_| {}).await
    }

    /// Starts a relay on `dir` (its data directory) and `port` (0: any).
    pub async fn start_in(
        dir: tempfile::TempDir,
        port: u16,
        admin_password: Option<String>,
        tweak: impl FnOnce(&mut guruconnect_server::Config),
    ) -> Relay {
        let admin_password =
            admin_password.unwrap_or_else(|| format!("adm-{}", hex(&uuid_like()[..10])));
        let mut config = guruconnect_server::Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().join("data"),
            admin_password: Some(secrecy::SecretString::from(admin_password.clone())),
            signing_secret: None,
            database_url: None,
            ..guruconnect_server::Config::default()
        };
        tweak(&mut config);
        let state = guruconnect_server::build_state(config)
            .await
            .expect("build_state");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(guruconnect_server::serve_state(
            state.clone(),
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        Relay {
            base: format!("http://{addr}"),
            port: addr.port(),
            admin_password,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(WAIT)
                .build()
                .expect("client"),
            shutdown: Some(tx),
            handle: Some(handle),
            state: Some(state),
            dir: Some(dir),
        }
    }

    /// Stops this relay and starts a new one on the same data directory and port.
    pub async fn restart(mut self) -> Relay {
        let dir = self.stop().await;
        Self::start_in(dir, self.port, Some(self.admin_password.clone()), |_| {}).await
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/api/auth/login", self.base))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("login");
        assert!(
            resp.status().is_success(),
            "login {username}: {}",
            resp.status()
        );
        let body: Value = resp.json().await.expect("body");
        body["token"].as_str().expect("token").to_owned()
    }

    pub async fn admin(&self) -> String {
        self.login("admin", &self.admin_password.clone()).await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    pub async fn get(&self, token: &str, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    pub async fn machines(&self, token: &str) -> Vec<Value> {
        self.get(token, "/api/machines").await["items"]
            .as_array()
            .expect("items")
            .clone()
    }

    /// Waits until exactly one machine is known and online; returns it.
    pub async fn wait_one_online(&self, token: &str, agent: &AgentProcess) -> Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let machines = self.machines(token).await;
            if let [m] = machines.as_slice()
                && m["online"] == true
            {
                return m.clone();
            }
            assert!(
                machines.len() <= 1,
                "one machine expected, got {machines:?}"
            );
            assert!(
                Instant::now() < deadline,
                "the machine did not come online: {machines:?}\n{}",
                agent.stderr()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until no machine is online.
    pub async fn wait_offline(&self, token: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let machines = self.machines(token).await;
            if machines.iter().all(|m| m["online"] == false) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "a machine stayed online: {machines:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn count_events(&self, token: &str, event_type: &str) -> usize {
        self.get(token, &format!("/api/events?type={event_type}&limit=500"))
            .await["items"]
            .as_array()
            .expect("items")
            .len()
    }

    pub async fn create_code(&self, token: &str) -> String {
        self.post(token, "/api/codes", json!({})).await["code"]
            .as_str()
            .expect("code")
            .to_owned()
    }

    pub async fn sessions(&self, token: &str) -> Vec<Value> {
        let resp = self
            .http
            .get(format!("{}/api/sessions?all=true", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("sessions");
        resp.json::<Vec<Value>>().await.expect("sessions body")
    }

    /// Waits for the (only) session to reach `status`; returns its id.
    pub async fn wait_session(&self, token: &str, status: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let sessions = self.sessions(token).await;
            if let Some(s) = sessions.iter().find(|s| s["status"] == status) {
                return s["id"].as_str().expect("id").to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no session reached {status}: {sessions:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn viewer(
        &self,
        user_token: &str,
        session_id: &str,
        codecs: &[Codec],
    ) -> (Connection, String) {
        let minted = self
            .post(
                user_token,
                &format!("/api/sessions/{session_id}/viewer-token"),
                json!({}),
            )
            .await;
        let token = minted["token"].as_str().expect("viewer token");
        let mode = minted["access_mode"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut conn = connect_viewer(&self.base, session_id, token)
            .await
            .expect("viewer connects");
        conn.send(Payload::ViewerHello(ViewerHello {
            protocol_version: guruconnect_proto::PROTOCOL_VERSION,
            codecs: codecs.iter().map(|c| *c as i32).collect(),
            ..Default::default()
        }))
        .await
        .expect("viewer hello");
        (conn, mode)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// See [`Relay::managed_config`]; the directory lives as long as this.
pub struct ManagedConfig {
    pub dir: tempfile::TempDir,
    pub key_file: PathBuf,
    pub config: String,
}

// ------------------------------------------------------------------ viewer helpers

/// Decodes frames until `accept` approves the picture (after a keyframe); returns it.
pub async fn decode_until(
    conn: &mut Connection,
    codec: Codec,
    accept: impl Fn(&Image) -> bool,
) -> Image {
    decode_collecting(conn, codec, accept).await.0
}

/// [`decode_until`], also returning every payload other than a video frame that arrived
/// meanwhile (display lists, cursor updates, clipboard text...).
pub async fn decode_collecting(
    conn: &mut Connection,
    codec: Codec,
    accept: impl Fn(&Image) -> bool,
) -> (Image, Vec<Payload>) {
    let mut others = Vec::new();
    let mut decoder = Decoder::new();
    let mut keyframe_seen = false;
    let mut frames = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let envelope = match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => panic!(
                "no acceptable {codec:?} picture within {WAIT:?} ({frames} frames, keyframe seen: {keyframe_seen})"
            ),
            Ok(Ok(e)) => e,
            Ok(Err(e)) => panic!("viewer connection failed: {e}"),
        };
        let frame = match envelope.payload {
            Some(Payload::VideoFrame(frame)) => frame,
            Some(other) => {
                others.push(other);
                continue;
            }
            None => continue,
        };
        frames += 1;
        if frame.codec != codec as i32 {
            continue;
        }
        keyframe_seen |= frame.keyframe;
        if !keyframe_seen {
            continue;
        }
        match decoder.decode(&frame) {
            Ok(image) if accept(image) => return (image.clone(), others),
            Ok(_) => {}
            Err(e) => panic!("decode failed: {e}"),
        }
    }
}

pub fn pixel(image: &Image, x: u32, y: u32) -> [u8; 3] {
    let i = ((y * image.width + x) * 4) as usize;
    [image.data[i], image.data[i + 1], image.data[i + 2]]
}

pub fn bgr(colour: u32) -> [u8; 3] {
    let [b, g, r, _] = colour.to_le_bytes();
    [b, g, r]
}

/// Every pixel of the window's rectangle, inset by `inset`, within `tolerance` per channel.
pub fn region_matches(
    image: &Image,
    win: (i16, i16, u16, u16, u32),
    inset: u32,
    tolerance: u8,
) -> bool {
    let (x0, y0) = (win.0 as u32 + inset, win.1 as u32 + inset);
    let (x1, y1) = (
        win.0 as u32 + win.2 as u32 - inset,
        win.1 as u32 + win.3 as u32 - inset,
    );
    if image.width < x1 || image.height < y1 {
        return false;
    }
    let want = bgr(win.4);
    (y0..y1).all(|y| {
        (x0..x1).all(|x| {
            pixel(image, x, y)
                .iter()
                .zip(want)
                .all(|(a, b)| a.abs_diff(b) <= tolerance)
        })
    })
}

pub fn key(scancode: u32, extended: bool, down: bool) -> Payload {
    Payload::KeyEvent(KeyEvent {
        scancode,
        extended,
        down,
        ..KeyEvent::default()
    })
}

pub fn mouse(action: MouseAction, x: i32, y: i32) -> Payload {
    Payload::MouseEvent(MouseEvent {
        action: action as i32,
        button: if action == MouseAction::Move {
            MouseButton::None as i32
        } else {
            MouseButton::Left as i32
        },
        x,
        y,
        ..MouseEvent::default()
    })
}

pub async fn click(conn: &mut Connection, x: i32, y: i32) {
    for action in [MouseAction::Move, MouseAction::Down, MouseAction::Up] {
        conn.send(mouse(action, x, y)).await.expect("send mouse");
    }
}

pub async fn tap(conn: &mut Connection, scancode: u32, extended: bool) {
    conn.send(key(scancode, extended, true))
        .await
        .expect("key down");
    conn.send(key(scancode, extended, false))
        .await
        .expect("key up");
}

/// Reads until the socket closes; returns whether any video frame arrived.
pub async fn frames_until_closed(conn: &mut Connection) -> usize {
    let mut frames = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => panic!("the viewer was not disconnected within {WAIT:?}"),
            Ok(Ok(Envelope {
                payload: Some(Payload::VideoFrame(_)),
                ..
            })) => frames += 1,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return frames,
        }
    }
}

/// Fails the test when the agent process has exited.
pub fn assert_alive(agent: &mut AgentProcess) {
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "the agent died:\n{}",
        agent.stderr()
    );
}

// ------------------------------------------------------------------ X selections

/// A 1×1 window of our own on `display`, to receive selections.
pub fn selection_window(display: &str) -> (RustConnection, u32) {
    let (conn, screen) = x11rb::connect(Some(display)).expect("connect");
    let root = conn.setup().roots[screen].root;
    let window = conn.generate_id().expect("id");
    conn.create_window(
        x11rb::COPY_DEPTH_FROM_PARENT,
        window,
        root,
        0,
        0,
        1,
        1,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new(),
    )
    .expect("create window");
    (conn, window)
}

/// The text on the display's CLIPBOARD selection, converted to UTF8_STRING into a window of
/// our own (`None`: no owner, or the owner refused).
pub fn read_clipboard(display: &str) -> Option<String> {
    let (conn, window) = selection_window(display);
    let (clipboard, utf8, property) = (
        intern(&conn, b"CLIPBOARD"),
        intern(&conn, b"UTF8_STRING"),
        intern(&conn, b"GURUCONNECT_TEST_CLIPBOARD"),
    );
    conn.convert_selection(window, clipboard, utf8, property, x11rb::CURRENT_TIME)
        .expect("convert_selection");
    conn.flush().expect("flush");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match conn.poll_for_event().expect("event") {
            Some(Event::SelectionNotify(n)) if n.requestor == window => {
                if n.property == x11rb::NONE {
                    return None;
                }
                let reply = conn
                    .get_property(true, window, property, AtomEnum::ANY, 0, 1 << 20)
                    .expect("get_property")
                    .reply()
                    .expect("property");
                assert_eq!(reply.type_, utf8, "the owner answered with another type");
                return Some(String::from_utf8(reply.value).expect("UTF-8 text"));
            }
            Some(_) => {}
            None => {
                assert!(
                    Instant::now() < deadline,
                    "the CLIPBOARD owner never answered"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

pub fn intern(conn: &RustConnection, name: &[u8]) -> u32 {
    conn.intern_atom(false, name)
        .expect("intern")
        .reply()
        .expect("atom")
        .atom
}

// ------------------------------------------------------------------ versions

/// The agent binary at `binary` (this build's version) with its version slot rewritten to
/// `version`: "a real build of version B" without a second compile
/// (`guruconnect_agent::version`).
pub fn binary_of_version(binary: &Path, version: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(binary)
        .unwrap_or_else(|e| panic!("read the agent {}: {e}", binary.display()));
    guruconnect_agent::version::patch(&mut bytes, env!("CARGO_PKG_VERSION"), version)
        .expect("patch the version slot");
    bytes
}

/// The built (Linux) agent's bytes as `version`.
pub fn agent_bytes_of_version(version: &str) -> Vec<u8> {
    binary_of_version(Path::new(env!("CARGO_BIN_EXE_guruconnect-agent")), version)
}

/// Writes `bytes` to `path`, executable.
pub fn install_binary(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, bytes).expect("write agent");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Writes the (Linux) agent as `version` to `path`, executable.
pub fn install_agent_of_version(path: &Path, version: &str) -> Vec<u8> {
    let bytes = agent_bytes_of_version(version);
    install_binary(path, &bytes);
    bytes
}

// ------------------------------------------------------------------ self-update

/// Runs the agent and starts it again whenever it exits (after a short pause), as
/// systemd's `Restart=always` or the Windows service does, recording every exit status and
/// everything it wrote to stderr.
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<String>>,
    exits: Arc<Mutex<Vec<Option<i32>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    /// Runs what `command` builds (the agent's `run`, natively or under Wine) again and
    /// again until dropped; stdin and stdout are null, stderr is collected.
    pub fn start(command: impl Fn() -> Command + Send + 'static) -> Supervisor {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(String::new()));
        let exits = Arc::new(Mutex::new(Vec::new()));
        let (s, l, e) = (stop.clone(), log.clone(), exits.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let spawned = command()
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn();
                let mut child = match spawned {
                    Ok(c) => c,
                    Err(err) => {
                        l.lock()
                            .unwrap()
                            .push_str(&format!("--- cannot start: {err}\n"));
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                };
                let (reader, read) = Self::collect(child.stderr.take().expect("stderr"), &l);
                let status = loop {
                    if s.load(Ordering::Relaxed) {
                        let _ = child.kill();
                        let _ = child.wait();
                        Self::finish(reader, read);
                        return;
                    }
                    if let Some(status) = child.try_wait().expect("try_wait") {
                        break status;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                Self::finish(reader, read);
                e.lock().unwrap().push(status.code());
                l.lock()
                    .unwrap()
                    .push_str(&format!("--- the agent exited ({status}); restarting\n"));
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Supervisor {
            stop,
            log,
            exits,
            thread: Some(thread),
        }
    }

    /// Appends what `pipe` carries to `log` on a thread of its own, which says when it is
    /// done.
    fn collect(
        mut pipe: impl Read + Send + 'static,
        log: &Arc<Mutex<String>>,
    ) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<()>) {
        let sink = log.clone();
        let (tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            let _ = tx.send(());
        });
        (thread, done)
    }

    /// Lets the reader take the last bytes after the process exited. A process it left
    /// behind may hold the pipe open (Wine's `wineserver` inherits it), so the wait is
    /// bounded and the reader is left to finish by itself.
    fn finish(reader: std::thread::JoinHandle<()>, read: std::sync::mpsc::Receiver<()>) {
        if read.recv_timeout(Duration::from_secs(1)).is_ok() {
            let _ = reader.join();
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn exits(&self) -> Vec<Option<i32>> {
        self.exits.lock().unwrap().clone()
    }

    /// Waits (at most 40 s) until the agent logged `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(40);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} never logged:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (at most `limit`) until the agent exited `count` times.
    pub async fn wait_exits(&self, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.exits().len() < count {
            assert!(
                Instant::now() < deadline,
                "the agent did not exit {count} time(s) within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The text form of `key`'s public half, as configurations pin it.
pub fn public_text(key: &SigningKey) -> String {
    guruconnect_release::public_key_text(&key.verifying_key())
}

/// A random UUID-shaped id (a managed machine's `agent_id`).
pub fn new_uuid() -> String {
    let h = hex(&uuid_like());
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A release's one artifact: the platform it is for and its file name.
#[derive(Debug, Clone, Copy)]
pub struct ArtifactFor<'a> {
    pub platform: &'a str,
    pub file: &'a str,
}

impl Relay {
    /// Issues a key for a new managed machine; returns its `agent_id` and the key.
    /// A managed agent's files for a new machine: `agent.key` with `key_mode` and an
    /// `agent.toml` pointing at this relay; `config` is the path for `run --config`.
    pub async fn managed_config(&self, admin: &str, key_mode: u32) -> ManagedConfig {
        use std::os::unix::fs::PermissionsExt as _;
        let (_, agent_key) = self.issue_machine_key(admin).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("agent.key");
        std::fs::write(&key_file, &agent_key).expect("write key");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(key_mode))
            .expect("chmod");
        let config = dir.path().join("agent.toml");
        let toml = format!(
            "server = \"{}\"\nkey_file = \"{}\"\n",
            self.base,
            key_file.display()
        );
        std::fs::write(&config, toml).expect("write config");
        ManagedConfig {
            config: config.to_string_lossy().into_owned(),
            key_file,
            dir,
        }
    }

    pub async fn issue_machine_key(&self, admin: &str) -> (String, String) {
        let agent_id = new_uuid();
        let issued = self
            .post(
                admin,
                &format!("/api/machines/{agent_id}/keys"),
                json!({ "label": "e2e" }),
            )
            .await;
        let key = issued["agent_key"].as_str().expect("agent_key").to_owned();
        (agent_id, key)
    }

    /// Signs a release of `version` with `key` whose one artifact is `bytes` and publishes
    /// it through the real endpoints (`POST /api/releases`, `PUT …/artifacts/:platform`).
    pub async fn publish_release(
        &self,
        admin: &str,
        key: &SigningKey,
        version: &str,
        artifact: ArtifactFor<'_>,
        bytes: &[u8],
    ) {
        let manifest = json!({
            "version": version,
            "channel": "stable",
            "notes": format!("test release {version}"),
            "artifacts": [{
                "platform": artifact.platform,
                "file": artifact.file,
                "size": bytes.len(),
                "sha256": guruconnect_release::sha256_hex(bytes),
            }],
        })
        .to_string();
        let signed = SignedRelease::sign(&manifest, key).expect("sign");
        self.post(
            admin,
            "/api/releases",
            serde_json::to_value(&signed).expect("json"),
        )
        .await;
        let resp = self
            .http
            .put(format!(
                "{}/api/releases/{version}/artifacts/{}",
                self.base, artifact.platform
            ))
            .bearer_auth(admin)
            .body(bytes.to_vec())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("upload");
        assert!(resp.status().is_success(), "upload: {}", resp.status());
    }

    /// Where the server keeps the artifact of `version`.
    pub fn stored_artifact(&self, version: &str, artifact: ArtifactFor<'_>) -> PathBuf {
        self.dir
            .as_ref()
            .expect("data dir")
            .path()
            .join("data/releases")
            .join(version)
            .join(artifact.platform)
            .join(artifact.file)
    }

    /// Asks the machine to update now; returns the request id.
    pub async fn push_update(&self, admin: &str, agent_id: &str, body: Value) -> String {
        let answer = self
            .post(admin, &format!("/api/machines/{agent_id}/update"), body)
            .await;
        answer["request_id"]
            .as_str()
            .expect("request_id")
            .to_owned()
    }

    /// Waits (at most `limit`) until the machine's update status satisfies `pred`;
    /// returns it. `sup`'s log goes with a failure.
    pub async fn wait_update_status(
        &self,
        admin: &str,
        agent_id: &str,
        sup: &Supervisor,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let status =
                self.get(admin, &format!("/api/machines/{agent_id}")).await["update_status"]
                    .clone();
            if pred(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no such update status within {limit:?}; last {status}\n{}",
                sup.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the terminal status of the push `request_id`.
    pub async fn wait_update_outcome(
        &self,
        admin: &str,
        agent_id: &str,
        sup: &Supervisor,
        limit: Duration,
        request_id: &str,
    ) -> Value {
        self.wait_update_status(admin, agent_id, sup, limit, |s| {
            s["request_id"] == request_id
                && ["done", "failed", "rolled_back", "up_to_date"]
                    .contains(&s["state"].as_str().unwrap_or_default())
        })
        .await
    }

    /// Waits (at most `limit`) until the machine is online reporting `version`.
    pub async fn wait_online_as(
        &self,
        admin: &str,
        agent_id: &str,
        version: &str,
        sup: &Supervisor,
        limit: Duration,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.get(admin, &format!("/api/machines/{agent_id}")).await;
            if m["online"] == true && m["agent_version"] == version {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "the machine is not online as {version} within {limit:?}: {m}\n{}",
                sup.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops this relay and returns its data directory (its port stays free for a new one).
    pub async fn stop(&mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(WAIT, handle)
                .await
                .expect("relay stops");
        }
        if let Some(state) = self.state.take() {
            state.store.close().await;
        }
        self.dir.take().expect("data dir")
    }
}

/// An update status's state.
pub fn state_of(status: &Value) -> &str {
    status["state"].as_str().unwrap_or_default()
}

/// An update status's detail.
pub fn detail_of(status: &Value) -> &str {
    status["detail"].as_str().unwrap_or_default()
}

/// The next `SessionEnd` a viewer receives: its reason.
pub async fn next_session_end(conn: &mut Connection, agent: &AgentProcess) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => panic!("no SessionEnd reached the viewer\n{}", agent.stderr()),
            Ok(Ok(Envelope {
                payload: Some(Payload::SessionEnd(end)),
                ..
            })) => return end.reason,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("viewer connection failed before SessionEnd: {e}"),
        }
    }
}

/// After the person at the machine clicked End session: the viewer is told why, the agent
/// exits cleanly saying so, the session is ended and audited once.
pub async fn assert_ended_by_customer(
    viewer: &mut Connection,
    agent: &mut AgentProcess,
    relay: &Relay,
    admin: &str,
) {
    assert_eq!(
        next_session_end(viewer, agent).await,
        "ended by the person at the machine"
    );
    let status = agent.wait_exit(WAIT).await;
    let stderr = agent.stderr();
    assert!(status.success(), "{status}\n{stderr}");
    assert!(
        stderr.contains("ended by the person at the machine"),
        "{stderr}"
    );
    relay.wait_session(admin, "ended").await;
    assert_eq!(
        relay.count_events(admin, "session.ended_by_customer").await,
        1
    );
}
