//! End to end for the Windows agent: the cross-built `guruconnect-agent.exe` runs under Wine
//! on a private Xvfb against the real (Linux) relay, in-process. Consent is clicked with
//! xdotool as a user would; viewers are protocol clients.
//!
//! The `.exe` comes from `scripts/windows/build-agent.sh`; its path is in
//! `GURUCONNECT_WINDOWS_AGENT_EXE`, and the Wine environment (`WINEPREFIX`, `WINEPATH` with
//! the `bcryptprimitives.dll` stand-in, `WINEDEBUG`) from `scripts/windows/env.sh`. Without
//! the `.exe` the tests print a line and pass, unless `GURUCONNECT_REQUIRE_WINE` is set
//! (`.ci/run` sets it), when they fail.
//!
//! What this exercises is the GDI capture path, `SendInput`, the Win32 consent, chat and
//! session indicator windows and the clipboard as Wine implements them; DXGI, `SendSAS`, the secure desktop
//! and session 0 are not exercised (Wine has none of them).
//!
//! The tests share one Wine prefix, whose `wineserver` serves one X display at a time, so
//! they run one after another (a lock) and stop the prefix's `wineserver` after each.
//!
//! Every wait has a deadline and fails with what it was waiting for: a loaded CI machine
//! must turn a stuck step into a failure that names it, never into a hung run. Futures
//! without one of their own (sends, viewer connects, relay start-up) go through
//! [`within`].

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use guruconnect_agent::platform::ui::{
    ALLOW_BUTTON, CHAT_TITLE, DENY_BUTTON, END_BUTTON, INDICATOR_HEIGHT, INDICATOR_TITLE,
    INDICATOR_WIDTH, REPLY_FIELD, center,
};
use guruconnect_client::Connection;
use guruconnect_codec::Image;
use guruconnect_proto::{
    AgentNotice, ChatMessage, ClipboardText, Codec, Payload, SpecialKey, SpecialKeyKind, TypeText,
};
use serde_json::json;
use support::*;
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat};

/// Set-1 scancodes used here.
const SC_CTRL: u32 = 0x1d;
const SC_A: u32 = 0x1e;
const SC_C: u32 = 0x2e;
const SC_H: u32 = 0x23;
const SC_I: u32 = 0x17;

static WINE: Mutex<()> = Mutex::new(());
/// Longest a test waits for the one before it to release the Wine prefix (every step of a
/// test is bounded, so a test holds it for far less).
const WINE_LOCK_WAIT: Duration = Duration::from_secs(600);

/// Awaits `future` for at most [`WAIT`]; a hang fails the test, naming `what` hung.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    within_for(WAIT, what, future).await
}

/// Awaits `future` for at most `limit`.
async fn within_for<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// Waits (at most [`WAIT`]) until `pred` holds.
async fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The built `.exe`, or `None` (test skipped) when it was not built.
fn agent_exe() -> Option<PathBuf> {
    match std::env::var_os("GURUCONNECT_WINDOWS_AGENT_EXE").map(PathBuf::from) {
        Some(exe) if exe.is_file() => Some(exe),
        other => {
            assert!(
                std::env::var_os("GURUCONNECT_REQUIRE_WINE").is_none(),
                "GURUCONNECT_REQUIRE_WINE is set but the Windows agent is missing ({other:?}); \
                 run scripts/windows/build-agent.sh and source scripts/windows/env.sh"
            );
            println!("SKIPPED: no Windows agent (run scripts/windows/build-agent.sh)");
            None
        }
    }
}

/// One Wine run on its own Xvfb: holds the lock, and stops the prefix's wineserver (every
/// Wine process of the test with it) when dropped.
struct WineDesktop {
    x: Xvfb,
    exe: PathBuf,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl WineDesktop {
    fn start() -> Option<WineDesktop> {
        let exe = agent_exe()?;
        let lock = lock_wine();
        // A wineserver left over from another display would serve this test on the wrong one.
        if let Err(e) = stop_wineserver() {
            panic!("{e}");
        }
        let x = Xvfb::start()?;
        Some(WineDesktop {
            x,
            exe,
            _lock: lock,
        })
    }

    fn display(&self) -> &str {
        &self.x.display
    }

    /// The agent `.exe` with `args`, under Wine on this display.
    fn agent(&self, args: &[&str]) -> AgentProcess {
        let mut cmd = Command::new("wine");
        cmd.arg(&self.exe).args(args);
        AgentProcess::spawn_cmd(cmd, self.display())
    }

    /// A Windows program (e.g. `notepad`) on this display.
    fn program(&self, name: &str) -> std::process::Child {
        Command::new("wine")
            .arg(name)
            .env("DISPLAY", self.display())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn a Wine program")
    }
}

impl Drop for WineDesktop {
    fn drop(&mut self) {
        match stop_wineserver() {
            Ok(()) => {}
            // Already failing: say so, without a second panic (which would abort).
            Err(e) if std::thread::panicking() => eprintln!("{e}"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// The Wine lock; a test that panicked while holding it has stopped its Wine anyway.
fn lock_wine() -> MutexGuard<'static, ()> {
    let deadline = Instant::now() + WINE_LOCK_WAIT;
    loop {
        match WINE.try_lock() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                assert!(
                    Instant::now() < deadline,
                    "another Wine test held the Wine prefix for over {WINE_LOCK_WAIT:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Stops the prefix's wineserver (`-k` kills every Wine process of the prefix) and waits
/// for it to exit (`-w`), each for at most [`WAIT`]. Without a `wineserver` there is nothing
/// to stop.
fn stop_wineserver() -> Result<(), String> {
    for arg in ["-k", "-w"] {
        let Ok(mut child) = Command::new("wineserver")
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return Ok(());
        };
        let deadline = Instant::now() + WAIT;
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`wineserver {arg}` did not finish within {WAIT:?}: the Wine prefix's \
                     processes did not stop"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// `(x, y, width, height)` of an X window in root coordinates.
fn geometry(display: &str, window: &str) -> (i32, i32, i32, i32) {
    let out = xdotool(display, &["getwindowgeometry", "--shell", window]);
    let field = |key: &str| -> i32 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {out}"))
    };
    (field("X"), field("Y"), field("WIDTH"), field("HEIGHT"))
}

/// Where the X pointer is, in root coordinates.
fn pointer(display: &str) -> (i32, i32) {
    let (conn, screen) = x11rb::connect(Some(display)).expect("connect");
    let root = conn.setup().roots[screen].root;
    let reply = conn
        .query_pointer(root)
        .expect("query_pointer")
        .reply()
        .expect("pointer");
    (i32::from(reply.root_x), i32::from(reply.root_y))
}

/// Waits for the next clipboard text a viewer receives from the agent.
async fn next_clipboard(conn: &mut Connection, agent: &AgentProcess) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => panic!("no clipboard text reached the viewer\n{}", agent.stderr()),
            Ok(Ok(envelope)) => {
                if let Some(Payload::Clipboard(clip)) = envelope.payload {
                    return clip.text;
                }
            }
            Ok(Err(e)) => panic!("viewer connection failed: {e}\n{}", agent.stderr()),
        }
    }
}

/// Waits for the next notice the agent sends the viewers.
async fn next_notice(conn: &mut Connection, agent: &AgentProcess) -> AgentNotice {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => panic!("no notice reached the viewer\n{}", agent.stderr()),
            Ok(Ok(envelope)) => {
                if let Some(Payload::AgentNotice(notice)) = envelope.payload {
                    return notice;
                }
            }
            Ok(Err(e)) => panic!("viewer connection failed: {e}\n{}", agent.stderr()),
        }
    }
}

/// Sends `payload` to the agent (bounded: a relay that stops reading fails the test).
async fn send(conn: &mut Connection, payload: Payload, what: &str) {
    within(&format!("sending {what}"), conn.send(payload))
        .await
        .unwrap_or_else(|e| panic!("sending {what} failed: {e}"));
}

/// Ctrl+<key> through the agent.
async fn ctrl(conn: &mut Connection, scancode: u32) {
    send(conn, key(SC_CTRL, false, true), "ctrl down").await;
    within("a key tap", tap(conn, scancode, false)).await;
    send(conn, key(SC_CTRL, false, false), "ctrl up").await;
}

/// A viewer of `session_id` for `token` (connect and hello bounded).
async fn open_viewer(relay: &Relay, token: &str, session_id: &str) -> (Connection, String) {
    within(
        "connecting a viewer",
        relay.viewer(token, session_id, &[Codec::RawZstd]),
    )
    .await
}

/// A relay on a fresh data directory (start-up bounded).
async fn start_relay() -> Relay {
    within("starting the relay", Relay::start()).await
}

/// The support-code session up to a control viewer that has seen `accept`ed pixels.
async fn allowed_session(
    wine: &WineDesktop,
    relay: &Relay,
    admin: &str,
    accept: impl Fn(&Image) -> bool,
) -> (AgentProcess, Connection, Image) {
    let code = relay.create_code(admin).await;
    let agent = wine.agent(&["--server", &relay.base, "--code", &code]);
    click_consent(wine.display(), ALLOW_BUTTON);
    let session_id = relay.wait_session(admin, "active").await;
    let (mut viewer, mode) = open_viewer(relay, admin, &session_id).await;
    assert_eq!(mode, "control");
    let image = decode_until(&mut viewer, Codec::RawZstd, accept).await;
    (agent, viewer, image)
}

// ------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exe_prints_its_version_under_wine_as_on_linux() {
    let Some(wine) = WineDesktop::start() else {
        return;
    };
    let out = run_with_timeout(
        Command::new("wine")
            .arg(&wine.exe)
            .arg("--version")
            .env("DISPLAY", wine.display()),
        WAIT,
    );
    assert!(out.status.success(), "{out:?}");
    let linux = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_guruconnect-agent")).arg("--version"),
        WAIT,
    );
    let linux = String::from_utf8_lossy(&linux.stdout).trim().to_owned();
    assert_eq!(
        linux,
        format!("guruconnect-agent {}", guruconnect_release::VERSION_LINE)
    );
    // The same line under Wine: version and channel; the commit may differ, the .exe being
    // a separate build (scripts/windows/build-agent.sh), perhaps of an earlier commit.
    let without_commit = |line: &str| match (line.find("(commit "), line.find(", channel ")) {
        (Some(start), Some(end)) if start < end => {
            format!("{}{}", &line[..start + "(commit ".len()], &line[end..])
        }
        _ => line.to_owned(),
    };
    let exe = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(without_commit(&exe), without_commit(&linux), "{exe}");
    assert!(
        exe.starts_with(&format!(
            "guruconnect-agent {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{exe}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_agent_streams_the_x_screen_and_injects_mouse_keys_text_and_clipboard() {
    let Some(wine) = WineDesktop::start() else {
        return;
    };
    let app = TestApp::start(wine.display());
    let relay = start_relay().await;
    let admin = relay.admin().await;

    // 1. Allowed by a click on the Win32 prompt; the picture is the X screen's pixels.
    let (mut agent, mut viewer, image) = allowed_session(&wine, &relay, &admin, |img| {
        region_matches(img, WIN_A, 4, 0) && region_matches(img, WIN_B, 4, 0)
    })
    .await;
    assert_eq!((image.width, image.height), (1280, 720));
    let machines = relay.machines(&admin).await;
    assert_eq!(machines[0]["os"], "windows", "{machines:?}");
    assert!(
        agent.stderr().contains("gdi"),
        "the capture backend is logged:\n{}",
        agent.stderr()
    );

    // 2. A mouse move from the viewer moves the X pointer.
    send(
        &mut viewer,
        mouse(guruconnect_proto::MouseAction::Move, 640, 500),
        "a mouse move",
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while pointer(wine.display()) != (640, 500) {
        assert!(
            Instant::now() < deadline,
            "the X pointer did not move: {:?}\n{}",
            pointer(wine.display()),
            agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(app);

    // 3. Keys by scancode and Unicode text reach a Windows program: type into Notepad, then
    //    select all and copy; the agent's clipboard watcher sends what Notepad holds.
    let mut notepad = wine.program("notepad");
    let window = wait_window(wine.display(), "Notepad");
    let (nx, ny, nw, nh) = geometry(wine.display(), &window);
    tokio::time::sleep(Duration::from_millis(500)).await;
    within("a click", click(&mut viewer, nx + nw / 2, ny + nh / 2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    within("a key tap", tap(&mut viewer, SC_H, false)).await;
    within("a key tap", tap(&mut viewer, SC_I, false)).await;
    send(
        &mut viewer,
        Payload::TypeText(TypeText {
            text: " Grüße, 1+1=2!".into(),
        }),
        "text",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ctrl(&mut viewer, SC_A).await;
    ctrl(&mut viewer, SC_C).await;
    assert_eq!(
        next_clipboard(&mut viewer, &agent)
            .await
            .replace("\r\n", "\n"),
        "hi Grüße, 1+1=2!"
    );

    // 4. Clipboard from the technician lands on the Windows clipboard, which Wine offers
    //    to X clients as CLIPBOARD.
    send(
        &mut viewer,
        Payload::Clipboard(ClipboardText {
            text: "from the technician ✓".into(),
        }),
        "the clipboard",
    )
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let now = read_clipboard(wine.display());
        if now.as_deref() == Some("from the technician ✓") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Windows clipboard was not set: {now:?}\n{}",
            agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 5. Ctrl+Alt+Del needs SendSAS, which Wine (like a Windows without the policy) lacks:
    //    the technician is told why, and the agent carries on.
    send(
        &mut viewer,
        Payload::SpecialKey(SpecialKey {
            kind: SpecialKeyKind::SpecialKeyCtrlAltDel as i32,
        }),
        "Ctrl+Alt+Del",
    )
    .await;
    let notice = next_notice(&mut viewer, &agent).await;
    assert!(
        notice.text.contains("Ctrl+Alt+Del") && notice.text.contains("SendSAS"),
        "{notice:?}"
    );
    assert_alive(&mut agent);
    let _ = notepad.kill();
    let _ = notepad.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_chat_window_shows_the_message_and_the_typed_reply_reaches_the_viewer() {
    let Some(wine) = WineDesktop::start() else {
        return;
    };
    let relay = start_relay().await;
    let admin = relay.admin().await;
    let (agent, mut viewer, _) = allowed_session(&wine, &relay, &admin, |_| true).await;

    send(
        &mut viewer,
        Payload::Chat(ChatMessage {
            from: "Alice (technician)".into(),
            text: "Hello, I am looking at your printer settings.".into(),
            sent_at_ms: 1,
        }),
        "a chat message",
    )
    .await;
    let window = wait_window(wine.display(), CHAT_TITLE);
    click_in_window(wine.display(), &window, REPLY_FIELD);
    tokio::time::sleep(Duration::from_millis(300)).await;
    xdotool(wine.display(), &["type", "--delay", "30", "thanks a lot"]);
    xdotool(wine.display(), &["key", "Return"]);

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, viewer.recv()).await {
            Err(_) => panic!("the reply never reached the viewer\n{}", agent.stderr()),
            Ok(Ok(envelope)) => {
                if let Some(Payload::Chat(reply)) = envelope.payload {
                    assert_eq!(reply.text, "thanks a lot");
                    assert!(!reply.from.is_empty());
                    break;
                }
            }
            Ok(Err(e)) => panic!("viewer failed: {e}\n{}", agent.stderr()),
        }
    }
    assert!(
        !agent.stderr().contains("Hello, I am looking"),
        "chat text must not be logged"
    );
}

/// The visible windows titled `title` (no waiting; empty when there is none).
fn visible_windows(display: &str, title: &str) -> Vec<String> {
    let out = run_with_timeout(
        Command::new("xdotool")
            .args(["search", "--onlyvisible", "--name", title])
            .env("DISPLAY", display),
        WAIT,
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Near-black pixels in the top `height` rows of `window` (drawn text).
fn dark_pixels(display: &str, window: &str, width: u16, height: u16) -> usize {
    let (conn, _) = x11rb::connect(Some(display)).expect("connect");
    let id: u32 = window.parse().expect("window id");
    let Ok(reply) = conn
        .get_image(ImageFormat::Z_PIXMAP, id, 0, 0, width, height, !0)
        .expect("get_image")
        .reply()
    else {
        return 0;
    };
    reply
        .data
        .chunks_exact(4)
        .filter(|p| p[0] < 0x40 && p[1] < 0x40 && p[2] < 0x40)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_session_indicator_lists_the_technicians_and_end_session_ends_it() {
    let Some(wine) = WineDesktop::start() else {
        return;
    };
    let display = wine.display();
    let relay = start_relay().await;
    let admin = relay.admin().await;
    let (mut agent, mut control, _) = allowed_session(&wine, &relay, &admin, |_| true).await;

    // 1. The indicator: titled as on X11, its size exactly, 20 px in from the top right of
    //    the (1280x720) screen, the list drawn above the button.
    let window = wait_window(display, INDICATOR_TITLE);
    assert_eq!(
        xdotool(display, &["getwindowname", &window]).trim(),
        INDICATOR_TITLE
    );
    let (x, y, width, height) = geometry(display, &window);
    assert_eq!(
        (width, height),
        (i32::from(INDICATOR_WIDTH), i32::from(INDICATOR_HEIGHT))
    );
    assert_eq!((x + width + 20, y), (1280, 20), "top right");
    let list_height = END_BUTTON.1 as u16;
    let drawn = || dark_pixels(display, &window, INDICATOR_WIDTH, list_height);
    wait_until("the list drawn in the indicator", || drawn() > 100).await;
    let one = drawn();

    // 2. A second, watching technician adds a line; leaving takes it off again.
    let password = format!("pw-{}", hex(&uuid_like()[..8]));
    relay
        .post(
            &admin,
            "/api/users",
            json!({ "username": "watcher", "password": password, "role": "viewer" }),
        )
        .await;
    let watcher = relay.login("watcher", &password).await;
    let session_id = relay.wait_session(&admin, "active").await;
    let (watching, mode) = open_viewer(&relay, &watcher, &session_id).await;
    assert_eq!(mode, "view_only");
    wait_until("a line for the watcher", || drawn() > one + 50).await;
    within("closing the watcher", watching.close())
        .await
        .expect("close");
    wait_until("the watcher's line taken off", || drawn() <= one).await;

    // 3. "End session", clicked where the window is, ends it for everyone: the viewer is
    //    told the person at the machine ended it, the agent exits, the window goes.
    let (cx, cy) = center(END_BUTTON);
    xdotool(
        display,
        &[
            "mousemove",
            &(x + cx).to_string(),
            &(y + cy).to_string(),
            "click",
            "1",
        ],
    );
    assert_ended_by_customer(&mut control, &mut agent, &relay, &admin).await;
    wait_until("the indicator to close", || {
        visible_windows(display, INDICATOR_TITLE).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exe_downloaded_from_the_join_page_starts_the_session_with_no_flags() {
    let Some(wine) = WineDesktop::start() else {
        return;
    };
    let relay = within("starting the relay", Relay::start()).await;
    let admin = relay.admin().await;
    let code = relay.create_code(&admin).await;
    // The join page's name for this server and code, on the unchanged .exe.
    let name = guruconnect_proto::support_file::file_name(&relay.base, &code).expect("name");
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = dir.path().join(&name);
    std::fs::copy(&wine.exe, &exe).expect("copy the exe");
    let mut cmd = Command::new("wine");
    cmd.arg(&exe).env_remove("GURUCONNECT_SERVER");
    let mut agent = AgentProcess::spawn_cmd(cmd, wine.display());
    // It reached this server with this code: the customer is asked.
    relay.wait_session(&admin, "waiting_consent").await;
    click_consent(wine.display(), DENY_BUTTON);
    let status = agent.wait_exit(WAIT).await;
    let stderr = agent.stderr();
    assert!(status.success(), "{status}\n{stderr}");
    assert!(
        stderr.contains(&format!("support session with {}", relay.base)),
        "{stderr}"
    );
    assert!(stderr.contains("not allowed"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_consent_deny_and_timeout_end_the_session_without_a_frame() {
    let Some(wine) = WineDesktop::start() else {
        return;
    };
    let relay = within(
        "starting the relay",
        Relay::start_in(tempfile::tempdir().expect("tempdir"), 0, None, |c| {
            c.consent_timeout_secs = 5;
        }),
    )
    .await;
    let admin = relay.admin().await;

    // Deny: a clean exit, no frame, the session ends.
    let code = relay.create_code(&admin).await;
    let mut agent = wine.agent(&["--server", &relay.base, "--code", &code]);
    let session_id = relay.wait_session(&admin, "waiting_consent").await;
    let (mut viewer, _) = open_viewer(&relay, &admin, &session_id).await;
    click_consent(wine.display(), DENY_BUTTON);
    let status = agent.wait_exit(WAIT).await;
    assert!(status.success(), "{status}\n{}", agent.stderr());
    assert!(agent.stderr().contains("not allowed"), "{}", agent.stderr());
    assert_eq!(frames_until_closed(&mut viewer).await, 0);
    relay.wait_session(&admin, "ended").await;

    // No answer: the prompt times out, which is a no.
    let code = relay.create_code(&admin).await;
    let mut agent = wine.agent(&["--server", &relay.base, "--code", &code]);
    let deadline = Instant::now() + WAIT;
    let session_id = loop {
        let sessions = relay.sessions(&admin).await;
        if let Some(s) = sessions
            .iter()
            .find(|s| s["status"] == "waiting_consent" && s["id"] != session_id.as_str())
        {
            break s["id"].as_str().expect("id").to_owned();
        }
        assert!(Instant::now() < deadline, "no second session: {sessions:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut viewer, _) = open_viewer(&relay, &admin, &session_id).await;
    let status = agent.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}\n{}", agent.stderr());
    assert_eq!(frames_until_closed(&mut viewer).await, 0);
    let ended = relay.sessions(&admin).await;
    assert!(
        ended.iter().filter(|s| s["status"] == "ended").count() == 2,
        "{ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_agent_enrolls_with_a_site_key_and_reconnects_after_a_server_restart() {
    let Some(wine) = WineDesktop::start() else {
        return;
    };
    let relay = start_relay().await;
    let admin = relay.admin().await;
    let site = relay
        .post(&admin, "/api/sites", json!({ "name": "Wine Office" }))
        .await;
    let site_code = site["code"].as_str().expect("site code").to_owned();
    let enrollment_key = site["enrollment_key"]
        .as_str()
        .expect("enrollment key")
        .to_owned();

    // The configuration as the Windows installer would write it; Wine's Z: is the Linux /.
    let dir = tempfile::tempdir().expect("tempdir");
    let windows_path = |p: &std::path::Path| format!("Z:{}", p.display()).replace('/', "\\");
    let key_file = dir.path().join("agent.key");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = {server:?}\nkey_file = {key:?}\nsite_code = {site_code:?}\nenrollment_key = {enrollment_key:?}\n[labels]\ncompany = \"Acme Dental\"\n",
            server = relay.base,
            key = windows_path(&key_file),
        ),
    )
    .expect("write config");
    let mut agent = wine.agent(&["run", "--config", &windows_path(&config)]);
    let machine = relay.wait_one_online(&admin, &agent).await;
    assert_eq!(machine["os"], "windows", "{machine}");
    assert!(
        machine["os_version"]
            .as_str()
            .is_some_and(|v| v.contains("Windows")),
        "{machine}"
    );
    assert_eq!(machine["company"], "Acme Dental", "{machine}");
    // Stored DPAPI-protected (platform::windows::keystore): never the key in plain text.
    let stored = std::fs::read(&key_file).expect("the key was stored");
    assert!(stored.starts_with(b"GCDPAPI1"), "not a protected key file");
    assert!(
        !stored.windows(4).any(|w| w == b"cak_"),
        "the per-agent key is stored in plain text"
    );
    assert!(
        !agent.stderr().contains(&enrollment_key) && !agent.stderr().contains("cak_"),
        "secrets must not be logged"
    );

    // The server restarts: the agent comes back by itself with its stored key.
    // Its own wait for the old relay to stop is bounded by WAIT; then the start-up.
    let relay = within_for(3 * WAIT, "restarting the relay", relay.restart()).await;
    let admin = relay.admin().await;
    let again = relay.wait_one_online(&admin, &agent).await;
    assert_eq!(again["agent_id"], machine["agent_id"]);
    assert_eq!(
        std::fs::read(&key_file).expect("key"),
        stored,
        "the stored key is kept"
    );
    assert_alive(&mut agent);
}
