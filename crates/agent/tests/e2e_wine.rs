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
//! Self-update runs here too (`windows_agent_updates_itself…` and the two after it): the
//! `.exe` patched to version A under a [`Supervisor`] that restarts `wine <exe> run` when
//! it exits (as the service restarts its worker), releases for `windows-x86_64` published
//! through the real endpoints, the rename of the running `.exe`, the self-test of
//! `guruconnect-agent.new.exe` and the restart into the new file.
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
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guruconnect_agent::platform::ui::{
    ALLOW_BUTTON, CHAT_TITLE, DENY_BUTTON, END_BUTTON, INDICATOR_HEIGHT, INDICATOR_TITLE,
    INDICATOR_WIDTH, REPLY_FIELD, TRANSFER_TITLE, center,
};
use guruconnect_agent::update::{EXIT_RESTART, Marker, Paths};
use guruconnect_client::Connection;
use guruconnect_codec::Image;
use guruconnect_proto::{
    AgentNotice, ChatMessage, ClipboardText, Codec, Payload, SpecialKey, SpecialKeyKind, TypeText,
};
use guruconnect_release::SigningKey;
use serde_json::{Value, json};
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

/// `p` as the Windows agent under Wine names it: Wine's `Z:` is the Linux `/`.
fn windows_path(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_customer_allows_or_refuses_each_file_transfer() {
    let Some(wine) = WineDesktop::start() else {
        return;
    };
    let relay = start_relay().await;
    let admin = relay.admin().await;
    let (agent, mut viewer, _) = allowed_session(&wine, &relay, &admin, |_| true).await;
    let target = tempfile::tempdir().expect("target dir");
    let dir = windows_path(target.path());
    let data = b"shared with permission".to_vec();

    for (button, allowed) in [(DENY_BUTTON, false), (ALLOW_BUTTON, true)] {
        let display = wine.display().to_owned();
        let click = std::thread::spawn(move || click_prompt(&display, TRANSFER_TITLE, button));
        let what = guruconnect_client::files::Upload {
            directory: &dir,
            name: "notes.txt",
            size: data.len() as u64,
            overwrite: false,
            resume: false,
        };
        let (result, _) = within(
            "the customer's answer and the upload",
            guruconnect_client::files::upload(
                &mut viewer,
                1 + u32::from(allowed),
                &what,
                &mut std::io::Cursor::new(&data),
                |_| {},
            ),
        )
        .await
        .expect("the upload ran to a verdict");
        click.join().expect("clicked");
        assert_eq!(result.ok, allowed, "{result:?}\n{}", agent.stderr());
        if allowed {
            assert_eq!(
                std::fs::read(target.path().join("notes.txt")).expect("landed"),
                data
            );
        } else {
            assert!(result.error.contains("did not allow"), "{result:?}");
            assert_eq!(std::fs::read_dir(target.path()).expect("dir").count(), 0);
        }
    }
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

    // The configuration as the Windows installer would write it.
    let dir = tempfile::tempdir().expect("tempdir");
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

// ------------------------------------------------------------------ self-update

const A: &str = "1.0.0";
const B: &str = "1.1.0";
/// Long enough for a check, a 35 MB download, a self-test (a second Wine process) and a
/// restart under Wine on a busy machine.
const UPDATE_WAIT: Duration = Duration::from_secs(150);
/// The Windows artifact of a release.
const WINDOWS: ArtifactFor<'static> = ArtifactFor {
    platform: "windows-x86_64",
    file: "guruconnect-agent.exe",
};

/// A relay with a release key, one managed Windows machine (a pre-issued key, the release
/// key pinned) and version A of the `.exe` installed in a directory of its own.
struct WineMachine {
    relay: Relay,
    admin: String,
    agent_id: String,
    key: SigningKey,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The agent's files, named as on Windows (Linux paths; the agent sees them on `Z:`).
    paths: Paths,
    a_bytes: Vec<u8>,
}

impl WineMachine {
    async fn set_up(wine: &WineDesktop) -> WineMachine {
        let key = guruconnect_release::generate_key();
        let public = public_text(&key);
        let relay = within(
            "starting the relay",
            Relay::start_in(tempfile::tempdir().expect("tempdir"), 0, None, |c| {
                c.release_public_key = Some(public);
            }),
        )
        .await;
        let admin = relay.admin().await;
        let (agent_id, agent_key) = relay.issue_machine_key(&admin).await;
        let dir = tempfile::tempdir().expect("tempdir");
        // The plain key file of older agents: the agent protects it with DPAPI when it
        // loads it.
        let key_file = dir.path().join("agent.key");
        std::fs::write(&key_file, agent_key).expect("write key");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "server = {server:?}\nkey_file = {key:?}\nrelease_public_key = {public:?}\n",
                server = relay.base,
                key = windows_path(&key_file),
                public = public_text(&key),
            ),
        )
        .expect("write config");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let exe = bin.join("guruconnect-agent.exe");
        let a_bytes = binary_of_version(&wine.exe, A);
        install_binary(&exe, &a_bytes);
        WineMachine {
            relay,
            admin,
            agent_id,
            key,
            dir,
            config,
            paths: Paths::for_windows_exe(&exe),
            a_bytes,
        }
    }

    /// `wine <exe> run --config <config>`, started again whenever it exits.
    fn supervise(&self, wine: &WineDesktop) -> Supervisor {
        let exe = self.paths.exe.clone();
        let config = windows_path(&self.config);
        let display = wine.display().to_owned();
        Supervisor::start(move || {
            let mut cmd = Command::new("wine");
            cmd.arg(&exe)
                .args(["run", "--config", &config])
                .env("DISPLAY", &display)
                .env("RUST_LOG", "info");
            cmd
        })
    }

    async fn publish(&self, version: &str, bytes: &[u8]) {
        self.relay
            .publish_release(&self.admin, &self.key, version, WINDOWS, bytes)
            .await;
    }

    async fn push(&self, body: Value) -> String {
        self.relay
            .push_update(&self.admin, &self.agent_id, body)
            .await
    }

    async fn wait_online_as(&self, version: &str, sup: &Supervisor) -> Value {
        self.relay
            .wait_online_as(&self.admin, &self.agent_id, version, sup, UPDATE_WAIT)
            .await
    }

    async fn wait_status(&self, sup: &Supervisor, pred: impl Fn(&Value) -> bool) -> Value {
        self.relay
            .wait_update_status(&self.admin, &self.agent_id, sup, UPDATE_WAIT, pred)
            .await
    }

    async fn wait_outcome(&self, sup: &Supervisor, request_id: &str) -> Value {
        self.relay
            .wait_update_outcome(&self.admin, &self.agent_id, sup, UPDATE_WAIT, request_id)
            .await
    }

    /// The files beside the `.exe` named `<exe name><infix>…<suffix>`.
    fn leftovers(&self, infix: &str, suffix: &str) -> Vec<String> {
        let bin = self.paths.exe.parent().expect("bin");
        let name = self.paths.exe.file_name().expect("name").to_string_lossy();
        let prefix = format!("{name}{infix}");
        std::fs::read_dir(bin)
            .expect("bin")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix) && n.ends_with(suffix))
            .collect()
    }

    /// Version A still installed and running, nothing of an update left behind.
    fn assert_a_untouched(&self, sup: &Supervisor) {
        let log = sup.log();
        assert!(
            std::fs::read(&self.paths.exe).expect("exe") == self.a_bytes,
            "the .exe was replaced:\n{log}"
        );
        assert_eq!(sup.exits(), Vec::<Option<i32>>::new(), "{log}");
        for leftover in [&self.paths.new, &self.paths.previous, &self.paths.marker] {
            assert!(!leftover.exists(), "{} left behind", leftover.display());
        }
        let partials = self.leftovers("-", ".partial");
        assert!(partials.is_empty(), "partial downloads left: {partials:?}");
    }
}

/// A Windows program that writes "broken build" to stderr and exits 3 at once, built with
/// MinGW (which builds the `.exe` too): a new version that fails at start.
fn broken_windows_program(dir: &Path) -> Vec<u8> {
    let gcc = "x86_64-w64-mingw32-gcc";
    assert!(
        have(gcc),
        "{gcc} is missing (scripts/windows/build-agent.sh installs it)"
    );
    let source = dir.join("broken.c");
    let exe = dir.join("broken.exe");
    std::fs::write(
        &source,
        "#include <stdio.h>\nint main(void) { fputs(\"broken build\\n\", stderr); return 3; }\n",
    )
    .expect("write broken.c");
    let out = run_with_timeout(
        Command::new(gcc)
            .arg("-O2")
            .arg("-s")
            .arg("-o")
            .arg(&exe)
            .arg(&source),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{gcc}: {out:?}");
    std::fs::read(&exe).expect("broken.exe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_agent_updates_itself_under_wine_and_comes_back_online_as_the_new_version() {
    let started = Instant::now();
    let Some(wine) = WineDesktop::start() else {
        return;
    };
    let m = WineMachine::set_up(&wine).await;
    let b_bytes = binary_of_version(&wine.exe, B);
    m.publish(B, &b_bytes).await;

    // Version A connects, finds B on its first check, self-tests B as
    // guruconnect-agent.new.exe, renames itself to .previous, puts B in place and exits
    // for the restart.
    let sup = m.supervise(&wine);
    let done = m
        .wait_status(&sup, |s| state_of(s) == "done" && s["version"] == B)
        .await;
    assert!(
        detail_of(&done).contains(&format!("from {A} to {B}")),
        "{done}"
    );
    let machine = m.wait_online_as(B, &sup).await;
    assert_eq!(machine["os"], "windows", "{machine}");
    assert_eq!(machine["update_status"]["state"], "done");

    let log = sup.log();
    assert!(log.contains("self-update is enabled"), "{log}");
    assert!(
        std::fs::read(&m.paths.exe).expect("exe") == b_bytes,
        "B is not in place:\n{log}"
    );
    for gone in [&m.paths.previous, &m.paths.marker, &m.paths.new] {
        assert!(
            !gone.exists(),
            "{} kept after B came online",
            gone.display()
        );
    }
    assert_eq!(
        sup.exits(),
        vec![Some(i32::from(EXIT_RESTART))],
        "one restart into B:\n{log}"
    );
    assert_eq!(m.relay.count_events(&m.admin, "update.done").await, 1);

    // B is the newest: a push finds nothing to do, and B keeps running.
    let request = m.push(json!({})).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "up_to_date", "{status}");
    assert_eq!(sup.exits().len(), 1, "{}", sup.log());
    println!("updated A -> B under Wine in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_agent_under_wine_keeps_running_when_the_new_version_fails_its_self_test() {
    let started = Instant::now();
    let Some(wine) = WineDesktop::start() else {
        return;
    };
    let m = WineMachine::set_up(&wine).await;
    let broken = broken_windows_program(m.dir.path());
    let sup = m.supervise(&wine);
    m.wait_online_as(A, &sup).await;
    // The first check found nothing; later ones come only from pushes.
    sup.wait_log("update check:").await;

    // A Windows program that exits 3 at start.
    m.publish("1.2.0", &broken).await;
    let request = m.push(json!({ "version": "1.2.0" })).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "rolled_back", "{status}");
    assert!(detail_of(&status).contains("exited at start"), "{status}");
    assert!(detail_of(&status).contains("broken build"), "{status}");
    m.assert_a_untouched(&sup);

    // The agent itself, but not the version the release names: it starts and says so.
    m.publish("1.3.0", &m.a_bytes).await;
    let request = m.push(json!({ "version": "1.3.0" })).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "rolled_back", "{status}");
    assert!(
        detail_of(&status).contains(&format!("it says it is version {A}")),
        "{status}"
    );
    m.assert_a_untouched(&sup);

    // Not a program at all: Windows cannot start it.
    m.publish("1.4.0", &[0x5a; 4096]).await;
    let request = m.push(json!({ "version": "1.4.0" })).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "rolled_back", "{status}");
    m.assert_a_untouched(&sup);

    let machine = m.wait_online_as(A, &sup).await;
    assert_eq!(machine["online"], true);
    assert_eq!(
        m.relay.count_events(&m.admin, "update.rolled_back").await,
        3
    );
    println!("three refusals under Wine in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_new_version_that_does_not_come_online_under_wine_restores_the_previous_exe() {
    let started = Instant::now();
    let Some(wine) = WineDesktop::start() else {
        return;
    };
    let mut m = WineMachine::set_up(&wine).await;
    // The state right after a swap: B in place, A as `.previous`, the marker with a
    // deadline a few seconds away; and no server to come online to. B, running, must put
    // A back over its own .exe, which Windows (and Wine) refuse to replace or delete.
    let b_bytes = binary_of_version(&wine.exe, B);
    install_binary(&m.paths.exe, &b_bytes);
    install_binary(&m.paths.previous, &m.a_bytes);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    Marker {
        from: A.into(),
        to: B.into(),
        deadline: now + 6,
        request_id: "push-42".into(),
        rolled_back: None,
    }
    .write(&m.paths.marker)
    .expect("marker");
    let port = m.relay.port;
    let password = m.relay.admin_password.clone();
    let dir = within("stopping the relay", m.relay.stop()).await;

    let sup = m.supervise(&wine);
    sup.wait_exits(1, Duration::from_secs(60)).await;
    assert_eq!(
        sup.exits(),
        vec![Some(i32::from(EXIT_RESTART))],
        "{}",
        sup.log()
    );
    assert!(
        std::fs::read(&m.paths.exe).expect("exe") == m.a_bytes,
        "A was not restored:\n{}",
        sup.log()
    );

    // The server comes back: A reports the rollback of the push once online.
    let public = public_text(&m.key);
    m.relay = within(
        "restarting the relay",
        Relay::start_in(dir, port, Some(password), |c| {
            c.release_public_key = Some(public);
        }),
    )
    .await;
    m.admin = m.relay.admin().await;
    let status = m
        .wait_status(&sup, |s| {
            state_of(s) == "rolled_back" && s["request_id"] == "push-42"
        })
        .await;
    assert_eq!(status["version"], B);
    assert!(
        detail_of(&status).contains("did not come online"),
        "{status}"
    );
    m.wait_online_as(A, &sup).await;
    assert!(!m.paths.marker.exists());
    assert!(!m.paths.previous.exists());
    assert_eq!(
        std::fs::read_to_string(&m.paths.skip).expect("skip").trim(),
        B,
        "periodic checks skip the version that was undone"
    );
    // B, moved aside while it ran, is deleted by A's start.
    let aside = m.leftovers(".old-", "");
    assert!(aside.is_empty(), "left aside: {aside:?}\n{}", sup.log());
    assert_eq!(sup.exits().len(), 1, "{}", sup.log());
    println!("rolled back under Wine in {:?}", started.elapsed());
}
