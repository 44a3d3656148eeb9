//! End to end on a real X server: Xvfb, the relay in-process, the agent as a real process,
//! consent answered by clicking the prompt with xdotool, viewers over the protocol client.
//!
//! Needs `Xvfb` and `xdotool` (Debian: xvfb, xdotool). Without Xvfb the tests print a line
//! and pass; without xdotool they fail. The multi-monitor test also needs `xrandr` (Debian:
//! x11-xserver-utils) and prints a line and passes without it. The typing test needs
//! `setxkbmap` (Debian: x11-xkb-utils, which xvfb pulls in).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guruconnect_agent::platform::ui::{
    ALLOW_BUTTON, CHAT_TITLE, CONSENT_TITLE, DENY_BUTTON, END_BUTTON, INDICATOR_TITLE,
    INDICATOR_WIDTH, REPLY_FIELD, TRANSFER_TITLE,
};
use guruconnect_client::{Connection, connect_agent};
use guruconnect_codec::{Encoder, Image};
use guruconnect_proto::{
    ChatMessage, ClipboardText, Codec, DisplayInfo, DisplayList, Envelope, KeyEvent, KeyInputMode,
    Modifiers, MouseAction, MouseButton, MouseEvent, Payload, SwitchDisplay, TypeText, ViewerHello,
};
use serde_json::json;
use x11rb::connection::Connection as _;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    AtomEnum, ClientMessageEvent, ConnectionExt as _, EventMask, ImageFormat, PropMode,
    SELECTION_NOTIFY_EVENT, SelectionNotifyEvent,
};
use x11rb::wrapper::ConnectionExt as _;

mod support;
use support::files::{download, sha256_hex, upload, upload_from};
use support::*;

// ------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attended_session_streams_pixels_and_injects_control_input_only() {
    let Some(x) = Xvfb::start() else { return };
    let app = TestApp::start(&x.display);
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let code = relay.create_code(&admin).await;
    let mut agent = AgentProcess::spawn(
        Some(&x.display),
        &["--server", &relay.base, "--code", &code],
    );

    // 1. The person at the machine allows the session by clicking the prompt.
    click_consent(&x.display, ALLOW_BUTTON);
    let session_id = relay.wait_session(&admin, "active").await;

    // A lossless viewer sees the known pixels exactly.
    let (mut control, mode) = relay.viewer(&admin, &session_id, &[Codec::RawZstd]).await;
    assert_eq!(mode, "control");
    let image = decode_until(&mut control, Codec::RawZstd, |img| {
        region_matches(img, WIN_A, 0, 0) && region_matches(img, WIN_B, 0, 0)
    })
    .await;
    assert_eq!((image.width, image.height), (1280, 720));

    // 2. Keys and a click from the control viewer arrive in the X client.
    app.focus();
    tap(&mut control, 0x1e, false).await; // A → evdev 30 → keycode 38
    tap(&mut control, 0x48, true).await; // Up (extended) → evdev 103 → keycode 111
    click(&mut control, 150, 160).await; // window A is at (100, 100)
    app.wait_for("A, Up and a click", |ev| {
        ev.contains(&Recorded::KeyPress(38))
            && ev.contains(&Recorded::KeyPress(111))
            && ev.contains(&Recorded::ButtonPress {
                button: 1,
                x: 50,
                y: 60,
            })
    })
    .await;
    // Malformed input is ignored, and the agent survives it.
    for bad in [
        key(0xdead_beef, true, true),
        mouse(MouseAction::Down, -5, 99_999),
        Payload::MouseEvent(MouseEvent {
            action: 42,
            ..MouseEvent::default()
        }),
    ] {
        control.send(bad).await.expect("send malformed input");
    }

    // 3. A view-only viewer's keys and clicks never arrive.
    let password = format!("pw-{}", hex(&uuid_like()[..8]));
    relay
        .post(
            &admin,
            "/api/users",
            json!({ "username": "watcher", "password": password, "role": "viewer" }),
        )
        .await;
    let watcher = relay.login("watcher", &password).await;
    let (mut view_only, mode) = relay.viewer(&watcher, &session_id, &[Codec::RawZstd]).await;
    assert_eq!(mode, "view_only");
    tap(&mut view_only, 0x30, false).await; // B → keycode 56
    click(&mut view_only, 160, 170).await;
    // A marker from the control viewer: once it arrived, anything sent before it would have.
    tap(&mut control, 0x2c, false).await; // Z → keycode 52
    app.wait_for("the marker key", |ev| ev.contains(&Recorded::KeyPress(52)))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = app.events();
    assert!(
        !events.contains(&Recorded::KeyPress(56)),
        "a view-only key arrived: {events:?}"
    );
    assert!(
        !events.contains(&Recorded::ButtonPress {
            button: 1,
            x: 60,
            y: 70
        }),
        "a view-only click arrived: {events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Recorded::ButtonPress { .. }))
            .count(),
        1,
        "only the control viewer's click may arrive: {events:?}"
    );
    // The view-only viewer still gets video.
    view_only
        .send(Payload::RefreshRequest(
            guruconnect_proto::RefreshRequest {},
        ))
        .await
        .expect("refresh");
    decode_until(&mut view_only, Codec::RawZstd, |img| {
        region_matches(img, WIN_A, 0, 0)
    })
    .await;

    // H.264 when every viewer decodes it (and this build can encode it).
    if Encoder::new(Codec::H264).codec() == Codec::H264 {
        control.close().await.expect("close");
        view_only.close().await.expect("close");
        let (mut h264, _) = relay
            .viewer(&admin, &session_id, &[Codec::RawZstd, Codec::H264])
            .await;
        let image = decode_until(&mut h264, Codec::H264, |img| {
            region_matches(img, WIN_A, 8, 24) && region_matches(img, WIN_B, 8, 24)
        })
        .await;
        let center_a = pixel(&image, 200, 175);
        println!(
            "H.264 centre of window A: {center_a:?} (want {:?})",
            bgr(WIN_A.4)
        );
    } else {
        println!("H.264 is unavailable in this build; lossless only");
    }

    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "the agent died:\n{}",
        agent.stderr()
    );
    let _ = agent.child.kill();
    let _ = agent.wait_exit(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_consent_ends_the_session_without_a_frame() {
    let Some(x) = Xvfb::start() else { return };
    let _app = TestApp::start(&x.display);
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let code = relay.create_code(&admin).await;
    let mut agent = AgentProcess::spawn(
        Some(&x.display),
        &["--server", &relay.base, "--code", &code],
    );
    let session_id = relay.wait_session(&admin, "waiting_consent").await;
    let (mut viewer, _) = relay.viewer(&admin, &session_id, &[Codec::RawZstd]).await;

    click_consent(&x.display, DENY_BUTTON);

    let status = agent.wait_exit(WAIT).await;
    let stderr = agent.stderr();
    assert!(
        status.success(),
        "a denial is a clean exit: {status}\n{stderr}"
    );
    assert!(stderr.contains("not allowed"), "{stderr}");
    assert_eq!(
        frames_until_closed(&mut viewer).await,
        0,
        "a frame crossed before consent"
    );
    relay.wait_session(&admin, "ended").await;
}

/// Microseconds since the Unix epoch (the agent's frame stamps use the same clock).
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_captured_when_x_reports_it_drawn_and_the_frame_says_when() {
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let (mut agent, _session, mut control, _image, _) =
        attended_control_session(&x, &relay, &admin, |_| true).await;
    // Lower left: none of the agent's windows (prompt, indicator, chat) is there.
    let (px, py) = (20, 700);
    // Let the indicator and the first pictures settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut decoder = guruconnect_codec::Decoder::new();
    for (round, colour) in [0x12_34_56_u32, 0x65_43_21, 0x0a_b0_0b]
        .into_iter()
        .enumerate()
    {
        let before = unix_us();
        let status = Command::new("xsetroot")
            .args(["-solid", &format!("#{colour:06x}")])
            .env("DISPLAY", &x.display)
            .status()
            .expect("xsetroot");
        assert!(status.success());
        let deadline = tokio::time::Instant::now() + WAIT;
        let frame = loop {
            let Ok(received) = tokio::time::timeout_at(deadline, control.recv()).await else {
                panic!("round {round}: no picture in #{colour:06x}");
            };
            let envelope = received.expect("viewer connection");
            let Some(Payload::VideoFrame(frame)) = envelope.payload else {
                continue;
            };
            let Ok(image) = decoder.decode(&frame) else {
                continue;
            };
            if pixel(image, px, py) == bgr(colour) {
                break frame;
            }
        };
        // Captured because X reported a change (a capture on the clock alone carries 0; the
        // report may be of something drawn just before, captured together), after the
        // drawing began, and the stages are in order.
        assert!(
            frame.changed_timestamp_us > 0,
            "round {round}: the frame was not captured on a change report"
        );
        assert!(frame.capture_timestamp_us >= before, "round {round}");
        assert!(frame.capture_timestamp_us >= frame.changed_timestamp_us);
        assert!(frame.encoded_timestamp_us >= frame.capture_timestamp_us);
        println!(
            "round {round}: change reported {} µs from xsetroot's start, captured {} µs from it",
            frame.changed_timestamp_us as i64 - before as i64,
            frame.capture_timestamp_us - before
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = agent.child.kill();
    let _ = agent.wait_exit(WAIT).await;
}

// ------------------------------------------------------------------ wheel, clipboard, monitors

/// Starts the agent for a support code, allows it as the user would and connects a control
/// viewer that has seen a first lossless picture satisfying `accept` (so the stream, and
/// with it the agent's clipboard thread, is running).
async fn attended_control_session(
    x: &Xvfb,
    relay: &Relay,
    admin: &str,
    accept: impl Fn(&Image) -> bool,
) -> (AgentProcess, String, Connection, Image, Vec<Payload>) {
    let code = relay.create_code(admin).await;
    let agent = AgentProcess::spawn(
        Some(&x.display),
        &["--server", &relay.base, "--code", &code],
    );
    click_consent(&x.display, ALLOW_BUTTON);
    let session_id = relay.wait_session(admin, "active").await;
    let (mut control, mode) = relay.viewer(admin, &session_id, &[Codec::RawZstd]).await;
    assert_eq!(mode, "control");
    let (image, others) = decode_collecting(&mut control, Codec::RawZstd, accept).await;
    (agent, session_id, control, image, others)
}

fn wheel(x: i32, y: i32, dx: i32, dy: i32) -> Payload {
    Payload::MouseEvent(MouseEvent {
        action: MouseAction::Wheel as i32,
        button: MouseButton::None as i32,
        x,
        y,
        wheel_dx: dx,
        wheel_dy: dy,
        ..MouseEvent::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wheel_events_from_a_control_viewer_arrive_as_x_buttons_4_to_7_at_the_pointer() {
    let Some(x) = Xvfb::start() else { return };
    let app = TestApp::start(&x.display);
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let (mut agent, _session, mut control, _, _) =
        attended_control_session(&x, &relay, &admin, |img| region_matches(img, WIN_A, 0, 0)).await;

    // Browser-style deltas (120 a notch, negative = up/left); window A is at (100, 100).
    let press = |button, x, y| Recorded::ButtonPress { button, x, y };
    let sent = [
        (wheel(150, 160, 0, -120), vec![press(4, 50, 60)]),
        (wheel(160, 170, 0, 120), vec![press(5, 60, 70)]),
        (wheel(170, 180, 0, 360), vec![press(5, 70, 80); 3]),
        (wheel(180, 190, 0, 30), vec![press(5, 80, 90)]), // a fine touchpad step: one click
        (wheel(190, 200, -120, 0), vec![press(6, 90, 100)]),
        (wheel(200, 210, 240, 0), vec![press(7, 100, 110); 2]),
        (wheel(210, 220, 0, 0), vec![]), // nothing to scroll: no click
        (wheel(220, 230, 0, -120), vec![press(4, 120, 130)]), // the marker: last of all
    ];
    let mut expected = Vec::new();
    for (event, presses) in sent {
        control.send(event).await.expect("send wheel");
        expected.extend(presses);
    }
    let last = *expected.last().expect("a marker");
    app.wait_for("the last wheel click", |ev| ev.contains(&last))
        .await;
    // Input is injected in order, so everything sent before the marker is here already.
    assert_eq!(app.events(), expected);
    assert_alive(&mut agent);
}

/// A new connection to `display` with a 1×1 unmapped window of its own, for selections.
/// Owns the display's CLIPBOARD selection with `text` (as UTF8_STRING) and answers requests
/// for it on a thread, as a desktop application would, until dropped.
struct ClipboardOwner {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClipboardOwner {
    fn start(display: &str, text: &str) -> ClipboardOwner {
        let (conn, window) = selection_window(display);
        let (clipboard, utf8, targets) = (
            intern(&conn, b"CLIPBOARD"),
            intern(&conn, b"UTF8_STRING"),
            intern(&conn, b"TARGETS"),
        );
        conn.set_selection_owner(window, clipboard, x11rb::CURRENT_TIME)
            .expect("set_selection_owner");
        let owner = conn
            .get_selection_owner(clipboard)
            .expect("get_selection_owner")
            .reply()
            .expect("owner")
            .owner;
        assert_eq!(owner, window, "could not take the CLIPBOARD selection");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let text = text.as_bytes().to_vec();
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match conn.poll_for_event() {
                    Ok(Some(Event::SelectionRequest(req))) => {
                        // Obsolete requestors name no property: use the target.
                        let property = if req.property == x11rb::NONE {
                            req.target
                        } else {
                            req.property
                        };
                        let answered = if req.target == targets {
                            conn.change_property32(
                                PropMode::REPLACE,
                                req.requestor,
                                property,
                                AtomEnum::ATOM,
                                &[targets, utf8],
                            )
                            .is_ok()
                        } else if req.target == utf8 {
                            conn.change_property8(
                                PropMode::REPLACE,
                                req.requestor,
                                property,
                                utf8,
                                &text,
                            )
                            .is_ok()
                        } else {
                            false
                        };
                        let notify = SelectionNotifyEvent {
                            response_type: SELECTION_NOTIFY_EVENT,
                            sequence: 0,
                            time: req.time,
                            requestor: req.requestor,
                            selection: req.selection,
                            target: req.target,
                            property: if answered { property } else { x11rb::NONE },
                        };
                        let _ = conn.send_event(false, req.requestor, EventMask::NO_EVENT, notify);
                        let _ = conn.flush();
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => return,
                }
            }
        });
        ClipboardOwner {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ClipboardOwner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn clipboard(text: &str) -> Payload {
    Payload::Clipboard(ClipboardText { text: text.into() })
}

/// Polls the CLIPBOARD selection until it holds `want`; panics with what it held otherwise.
async fn wait_clipboard(display: &str, want: &str, agent: &AgentProcess) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = read_clipboard(display);
        if now.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the CLIPBOARD selection holds {now:?}, not {want:?}\n{}",
            agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next clipboard text the viewer receives.
async fn next_clipboard(conn: &mut Connection) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => panic!("no clipboard text reached the viewer within {WAIT:?}"),
            Ok(Ok(Envelope {
                payload: Some(Payload::Clipboard(clip)),
                ..
            })) => return clip.text,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("viewer connection failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clipboard_text_crosses_both_ways_and_a_view_only_viewer_cannot_set_it() {
    let Some(x) = Xvfb::start() else { return };
    let _app = TestApp::start(&x.display);
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let (mut agent, session_id, mut control, _, _) =
        attended_control_session(&x, &relay, &admin, |img| region_matches(img, WIN_A, 0, 0)).await;

    // 1. Viewer → machine: the control viewer's text becomes the CLIPBOARD selection.
    let from_technician = "ping 10.0.0.1 — ✓ ünïcödé";
    control
        .send(clipboard(from_technician))
        .await
        .expect("send clipboard");
    wait_clipboard(&x.display, from_technician, &agent).await;

    // 2. A view-only viewer's text never reaches the machine.
    let password = format!("pw-{}", hex(&uuid_like()[..8]));
    relay
        .post(
            &admin,
            "/api/users",
            json!({ "username": "watcher", "password": password, "role": "viewer" }),
        )
        .await;
    let watcher = relay.login("watcher", &password).await;
    let (mut view_only, mode) = relay.viewer(&watcher, &session_id, &[Codec::RawZstd]).await;
    assert_eq!(mode, "view_only");
    view_only
        .send(clipboard("rm -rf / # from a view-only viewer"))
        .await
        .expect("send clipboard");
    // A chat message from the same viewer is forwarded to the agent (any viewer may chat)
    // and handled in order: once its window shows, the clipboard text was handled (dropped)
    // too, and would have reached the selection within the settling time below.
    view_only
        .send(chat("view-only barrier"))
        .await
        .expect("send chat");
    wait_chat_window(&x.display);
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        assert_eq!(
            read_clipboard(&x.display).as_deref(),
            Some(from_technician),
            "a view-only viewer changed the clipboard"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 3. Machine → viewer: text a local application copies reaches the control viewer (and
    // what the viewer itself set was not echoed back before it).
    let from_user = "copied on the machine: C:\\Users\\éva\\report.pdf";
    let owner = ClipboardOwner::start(&x.display, from_user);
    assert_eq!(read_clipboard(&x.display).as_deref(), Some(from_user));
    assert_eq!(next_clipboard(&mut control).await, from_user);

    // Clipboard text never reaches the agent's log.
    let stderr = agent.stderr();
    for text in [from_technician, from_user] {
        assert!(
            !stderr.contains(text),
            "clipboard text in the log:\n{stderr}"
        );
    }
    drop(owner);
    assert_alive(&mut agent);
}

/// Left and right halves of the screen, each a RandR monitor (see `split_into_two_monitors`).
const LEFT_HALF: (i16, i16, u16, u16, u32) = (0, 0, 640, 720, 0x0022_aa44);
const RIGHT_HALF: (i16, i16, u16, u16, u32) = (640, 0, 640, 720, 0x00aa_2288);
/// Rows from the top that the session indicator may cover (20 down, its height, border).
const INDICATOR_TOP_CLEAR: i16 = 20 + guruconnect_agent::platform::ui::INDICATOR_HEIGHT as i16 + 4;

/// Defines two RandR 1.5 monitors on the 1280×720 screen, as `xrandr --setmonitor` does on a
/// real multi-head desktop. The first takes over the screen's output, so the server's
/// automatic whole-screen monitor goes away and exactly these two are listed.
fn split_into_two_monitors(display: &str) {
    for args in [
        ["--setmonitor", "left", "640/170x720/190+0+0", "screen"],
        ["--setmonitor", "right", "640/170x720/190+640+0", "none"],
    ] {
        let out = run_with_timeout(
            Command::new("xrandr").args(args).env("DISPLAY", display),
            WAIT,
        );
        assert!(
            out.status.success(),
            "xrandr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run_with_timeout(
        Command::new("xrandr")
            .arg("--listmonitors")
            .env("DISPLAY", display),
        WAIT,
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.starts_with("Monitors: 2"), "{listed}");
}

/// The first display list among `seen`, else the next one the viewer receives.
async fn display_list(conn: &mut Connection, seen: Vec<Payload>) -> DisplayList {
    if let Some(list) = seen.into_iter().find_map(|p| match p {
        Payload::DisplayList(list) => Some(list),
        _ => None,
    }) {
        return list;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => panic!("no display list reached the viewer within {WAIT:?}"),
            Ok(Ok(Envelope {
                payload: Some(Payload::DisplayList(list)),
                ..
            })) => return list,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("viewer connection failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_randr_monitors_are_listed_and_the_viewer_switches_to_the_second() {
    let Some(x) = Xvfb::start() else { return };
    if !have("xrandr") {
        println!("SKIPPED: xrandr is not installed (apt-get install x11-xserver-utils)");
        return;
    }
    split_into_two_monitors(&x.display);
    // The right half records input: it is where the viewer will click after switching.
    let app = TestApp::with_windows(&x.display, &[RIGHT_HALF, LEFT_HALF]);
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    // The session indicator sits in the screen's top-right corner, on the right monitor:
    // compare the right half below it.
    let whole = |win: (i16, i16, u16, u16, u32)| {
        let top = if win == RIGHT_HALF {
            INDICATOR_TOP_CLEAR
        } else {
            0
        };
        (0, top, win.2, win.3 - top as u16, win.4)
    };
    let (mut agent, session_id, mut control, first, others) =
        attended_control_session(&x, &relay, &admin, |img| {
            region_matches(img, whole(LEFT_HALF), 0, 0)
        })
        .await;

    // 1. The first (primary) monitor is streamed, and the viewer learns both.
    assert_eq!((first.width, first.height), (640, 720));
    let display = |id: u32, name: &str, x: i32, primary: bool| DisplayInfo {
        id,
        name: name.into(),
        x,
        y: 0,
        width: 640,
        height: 720,
        primary,
    };
    let (left, right) = (display(0, "left", 0, true), display(1, "right", 640, false));
    let lists: Vec<&DisplayList> = others
        .iter()
        .filter_map(|p| match p {
            Payload::DisplayList(list) => Some(list),
            _ => None,
        })
        .collect();
    assert_eq!(
        lists,
        [&DisplayList {
            displays: vec![left.clone(), right.clone()],
            active_display_id: left.id,
        }],
        "{}",
        agent.stderr()
    );

    // 2. Switching: the pictures now are the right monitor's, at its own size.
    control
        .send(Payload::SwitchDisplay(SwitchDisplay {
            display_id: right.id,
        }))
        .await
        .expect("switch display");
    let (image, others) = decode_collecting(&mut control, Codec::RawZstd, |img| {
        region_matches(img, whole(RIGHT_HALF), 0, 0)
    })
    .await;
    assert_eq!((image.width, image.height), (640, 720));
    assert_eq!(pixel(&image, 320, 360), bgr(RIGHT_HALF.4));
    assert!(
        others.iter().any(|p| matches!(
            p,
            Payload::DisplayList(list) if list.active_display_id == right.id && list.displays.len() == 2
        )),
        "no display list naming the new active display: {others:?}"
    );

    // 3. Input coordinates are the active monitor's: (100, 200) there is (740, 200) on the
    // screen, (100, 200) in the right half's window.
    click(&mut control, 100, 200).await;
    control
        .send(wheel(300, 400, 0, 120))
        .await
        .expect("send wheel");
    let press = |button, x, y| Recorded::ButtonPress { button, x, y };
    app.wait_for("the click and the wheel on the second monitor", |ev| {
        ev.contains(&press(5, 300, 400))
    })
    .await;
    assert_eq!(app.events(), [press(1, 100, 200), press(5, 300, 400)]);

    // 4. A technician joining the running stream learns the monitors, and which is shown.
    let (mut second, _) = relay.viewer(&admin, &session_id, &[Codec::RawZstd]).await;
    let (_, others) = decode_collecting(&mut second, Codec::RawZstd, |img| {
        region_matches(img, whole(RIGHT_HALF), 0, 0)
    })
    .await;
    let list = display_list(&mut second, others).await;
    assert_eq!(
        list,
        DisplayList {
            displays: vec![left.clone(), right.clone()],
            active_display_id: right.id,
        }
    );
    second.close().await.expect("close");

    // 5. A codec change restarts the stream (the relay's StartStream always names display 0):
    // the monitor the technician chose stays.
    if Encoder::new(Codec::H264).codec() == Codec::H264 {
        let hello = |codecs: &[Codec]| {
            Payload::ViewerHello(ViewerHello {
                protocol_version: guruconnect_proto::PROTOCOL_VERSION,
                codecs: codecs.iter().map(|c| *c as i32).collect(),
                ..Default::default()
            })
        };
        control
            .send(hello(&[Codec::RawZstd, Codec::H264]))
            .await
            .expect("hello");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, control.recv()).await {
                Err(_) => panic!("the stream never switched to H.264"),
                Ok(Ok(Envelope {
                    payload: Some(Payload::VideoFrame(f)),
                    ..
                })) if f.codec == Codec::H264 as i32 => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("viewer connection failed: {e}"),
            }
        }
        control.send(hello(&[Codec::RawZstd])).await.expect("hello");
        // The first lossless picture after H.264 is the restarted stream's keyframe.
        let (image, others) = decode_collecting(&mut control, Codec::RawZstd, |_| true).await;
        let list = display_list(&mut control, others).await;
        assert_eq!(list.active_display_id, right.id);
        assert!(
            region_matches(&image, whole(RIGHT_HALF), 0, 0),
            "the stream went back to the first monitor"
        );
    }

    // 6. The next viewer, after everyone left and the stream stopped, starts on the
    // monitor chosen before.
    control.close().await.expect("close");
    let stopped = wait_no_viewers(&relay, &session_id).await;
    let (mut next, _) = relay.viewer(&admin, &session_id, &[Codec::RawZstd]).await;
    let (image, others) = decode_collecting(&mut next, Codec::RawZstd, |_| true).await;
    let list = display_list(&mut next, others).await;
    assert_eq!(list.active_display_id, right.id, "after {stopped}");
    assert!(
        region_matches(&image, whole(RIGHT_HALF), 0, 0),
        "the next viewer got the first monitor again"
    );

    assert_alive(&mut agent);
}

/// Waits until the relay shows no viewer in `session_id` (the stream has stopped); says how
/// long it took.
async fn wait_no_viewers(relay: &Relay, session_id: &str) -> String {
    let started = Instant::now();
    let deadline = started + WAIT;
    let state = relay.state.as_ref().expect("the relay's state");
    while state
        .sessions
        .get(session_id)
        .is_some_and(|s| s.viewer_count() > 0)
    {
        assert!(Instant::now() < deadline, "the viewer never left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The StopStream the relay sends on the last viewer's departure has to reach the agent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    format!("the last viewer left {:?} ago", started.elapsed())
}

// ------------------------------------------------------------------ chat helpers

/// The visible chat windows (no waiting; empty when there is none).
fn visible_chat_windows(display: &str) -> Vec<String> {
    let out = run_with_timeout(
        Command::new("xdotool")
            .args(["search", "--onlyvisible", "--name", CHAT_TITLE])
            .env("DISPLAY", display),
        WAIT,
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Waits for the chat window to be shown; returns its id.
fn wait_chat_window(display: &str) -> String {
    wait_window(display, CHAT_TITLE)
}

/// Dark (text) pixels in the message area of `window` (above the reply field).
fn dark_pixels(display: &str, window: &str) -> usize {
    let width = guruconnect_agent::platform::ui::CHAT_WIDTH;
    dark_pixels_in(display, window, width, REPLY_FIELD.1 as u16)
}

/// Dark (text) pixels in the top-left `width` x `height` of `window`.
fn dark_pixels_in(display: &str, window: &str, width: u16, height: u16) -> usize {
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

/// Asks the window to close the way a window manager does (WM_DELETE_WINDOW).
fn close_like_a_window_manager(display: &str, window: &str) {
    let (conn, _) = x11rb::connect(Some(display)).expect("connect");
    let id: u32 = window.parse().expect("window id");
    let atom = |name: &[u8]| {
        conn.intern_atom(false, name)
            .expect("intern")
            .reply()
            .expect("atom")
            .atom
    };
    let (protocols, delete) = (atom(b"WM_PROTOCOLS"), atom(b"WM_DELETE_WINDOW"));
    let event = ClientMessageEvent::new(32, id, protocols, [delete, 0, 0, 0, 0]);
    conn.send_event(false, id, EventMask::NO_EVENT, event)
        .expect("send_event");
    conn.sync().expect("sync");
}

async fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next chat message the viewer receives.
async fn next_chat(conn: &mut Connection) -> ChatMessage {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => panic!("no chat message reached the viewer within {WAIT:?}"),
            Ok(Ok(Envelope {
                payload: Some(Payload::Chat(chat)),
                ..
            })) => return chat,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("viewer connection failed: {e}"),
        }
    }
}

fn chat(text: &str) -> Payload {
    Payload::Chat(ChatMessage {
        from: "admin".into(),
        text: text.into(),
        sent_at_ms: 1,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_is_shown_to_the_user_and_the_typed_reply_reaches_the_viewer() {
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let code = relay.create_code(&admin).await;
    let mut agent = AgentProcess::spawn(
        Some(&x.display),
        &["--server", &relay.base, "--code", &code],
    );
    click_consent(&x.display, ALLOW_BUTTON);
    let session_id = relay.wait_session(&admin, "active").await;
    let (mut viewer, _) = relay.viewer(&admin, &session_id, &[Codec::RawZstd]).await;

    // No chat window until the first message.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        visible_chat_windows(&x.display).is_empty(),
        "a chat window before any message"
    );

    // 1. The technician's message opens the window, and its text is drawn.
    let question = "Hello, may I restart the print spooler?";
    viewer.send(chat(question)).await.expect("send chat");
    let window = wait_chat_window(&x.display);
    wait_until("the message drawn in the chat window", || {
        dark_pixels(&x.display, &window) > 100
    })
    .await;

    // 2. The user clicks into the reply field, types and presses Return.
    click_in_window(&x.display, &window, REPLY_FIELD);
    wait_until("the keyboard focus in the chat window", || {
        xdotool(&x.display, &["getwindowfocus", "-f"]).trim() == window
    })
    .await;
    // A typo, erased with BackSpace, and a line thrown away with Escape first.
    xdotool(&x.display, &["type", "--delay", "15", "never mind"]);
    xdotool(&x.display, &["key", "Escape"]);
    let reply = "Yes, go ahead! (#42)";
    xdotool(&x.display, &["type", "--delay", "15", &format!("{reply}x")]);
    xdotool(&x.display, &["key", "BackSpace", "Return"]);
    let got = next_chat(&mut viewer).await;
    assert_eq!(got.text, reply);
    assert!(!got.from.is_empty());
    assert!(got.sent_at_ms > 0);

    // An empty reply is not sent: the next message the viewer sees is the second reply.
    xdotool(&x.display, &["key", "Return"]);
    xdotool(&x.display, &["type", "--delay", "15", "thanks"]);
    xdotool(&x.display, &["key", "Return"]);
    assert_eq!(next_chat(&mut viewer).await.text, "thanks");

    // 3. Closing hides the window; the next message shows it again.
    close_like_a_window_manager(&x.display, &window);
    wait_until("the chat window to hide", || {
        visible_chat_windows(&x.display).is_empty()
    })
    .await;
    viewer.send(chat("Done.")).await.expect("send chat");
    assert_eq!(wait_chat_window(&x.display), window);

    // Chat text never reaches the log; its arrival does.
    let stderr = agent.stderr();
    for text in [question, reply, "thanks", "Done."] {
        assert!(!stderr.contains(text), "chat text in the log:\n{stderr}");
    }
    assert!(stderr.contains("a chat message arrived"), "{stderr}");

    // 4. The window goes away with the session.
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "the agent died:\n{stderr}"
    );
    let resp = relay
        .http
        .delete(format!("{}/api/sessions/{session_id}", relay.base))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("DELETE");
    assert!(resp.status().is_success(), "ending the session: {resp:?}");
    let status = agent.wait_exit(WAIT).await;
    assert!(status.success(), "{status}\n{}", agent.stderr());
    assert!(visible_chat_windows(&x.display).is_empty());
}

// ------------------------------------------------------------------ session indicator

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

/// The text the session indicator shows (its `_GURUCONNECT_TEXT` property).
fn indicator_text(display: &str, window: &str) -> String {
    use guruconnect_agent::platform::linux::indicator::TEXT_PROPERTY;
    let (conn, _) = x11rb::connect(Some(display)).expect("connect");
    let id: u32 = window.parse().expect("window id");
    let atom = intern(&conn, TEXT_PROPERTY.as_bytes());
    conn.get_property(false, id, atom, AtomEnum::ANY, 0, 4096)
        .ok()
        .and_then(|c| c.reply().ok())
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_person_at_the_machine_sees_who_is_connected_and_ends_the_session() {
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let code = relay.create_code(&admin).await;
    let mut agent = AgentProcess::spawn(
        Some(&x.display),
        &["--server", &relay.base, "--code", &code],
    );
    let session_id = relay.wait_session(&admin, "waiting_consent").await;
    let (mut control, mode) = relay.viewer(&admin, &session_id, &[Codec::RawZstd]).await;
    assert_eq!(mode, "control");

    // 1. Nothing is shown before "Allow"; after it, the indicator names the technician.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(visible_windows(&x.display, INDICATOR_TITLE).is_empty());
    click_consent(&x.display, ALLOW_BUTTON);
    relay.wait_session(&admin, "active").await;
    let window = wait_window(&x.display, INDICATOR_TITLE);
    wait_until("the indicator to list admin as controlling", || {
        indicator_text(&x.display, &window).contains("admin is controlling")
    })
    .await;
    wait_until("the list drawn in the indicator", || {
        dark_pixels_in(&x.display, &window, INDICATOR_WIDTH, END_BUTTON.1 as u16) > 100
    })
    .await;

    // 2. A watching technician is listed as watching, and taken off when they leave.
    let password = format!("pw-{}", hex(&uuid_like()[..8]));
    relay
        .post(
            &admin,
            "/api/users",
            json!({ "username": "watcher", "password": password, "role": "viewer" }),
        )
        .await;
    let watcher = relay.login("watcher", &password).await;
    let (watching, mode) = relay.viewer(&watcher, &session_id, &[Codec::RawZstd]).await;
    assert_eq!(mode, "view_only");
    wait_until("the indicator to list the watcher", || {
        indicator_text(&x.display, &window).contains("watcher is watching")
    })
    .await;
    watching.close().await.expect("close");
    wait_until("the watcher taken off the list", || {
        let text = indicator_text(&x.display, &window);
        !text.contains("watcher") && text.contains("admin is controlling")
    })
    .await;

    // 3. "End session" ends it for everyone: the viewer is told why, the agent exits.
    click_in_window(&x.display, &window, END_BUTTON);
    assert_ended_by_customer(&mut control, &mut agent, &relay, &admin).await;
    assert!(visible_windows(&x.display, INDICATOR_TITLE).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_machine_shows_the_indicator_while_watched_and_reconnects_after_end() {
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let managed = relay.managed_config(&admin, 0o600).await;
    let mut agent = AgentProcess::spawn(Some(&x.display), &["run", "--config", &managed.config]);
    let first = relay.wait_session(&admin, "active").await;

    // Nobody watching: no indicator. A technician joins: it names them; leaves: it hides.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(visible_windows(&x.display, INDICATOR_TITLE).is_empty());
    let (viewer, _) = relay.viewer(&admin, &first, &[Codec::RawZstd]).await;
    let window = wait_window(&x.display, INDICATOR_TITLE);
    wait_until("the indicator to list admin", || {
        indicator_text(&x.display, &window).contains("admin is controlling")
    })
    .await;
    viewer.close().await.expect("close");
    wait_until("the indicator to hide", || {
        visible_windows(&x.display, INDICATOR_TITLE).is_empty()
    })
    .await;

    // "End session" ends it for the viewer; the agent stays and comes back idle.
    let (mut viewer, _) = relay.viewer(&admin, &first, &[Codec::RawZstd]).await;
    let window = wait_window(&x.display, INDICATOR_TITLE);
    std::thread::sleep(Duration::from_millis(200));
    click_in_window(&x.display, &window, END_BUTTON);
    assert_eq!(
        next_session_end(&mut viewer, &agent).await,
        "ended by the person at the machine"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let sessions = relay.sessions(&admin).await;
        let ended = sessions
            .iter()
            .any(|s| s["id"] == first.as_str() && s["status"] == "ended");
        let again = sessions
            .iter()
            .any(|s| s["id"] != first.as_str() && s["status"] == "active");
        if ended && again {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ended session and new idle one: {sessions:?}\n{}",
            agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_alive(&mut agent);
    assert!(visible_windows(&x.display, INDICATOR_TITLE).is_empty());
    assert_eq!(
        relay
            .count_events(&admin, "session.ended_by_customer")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_or_unknown_code_is_refused_with_a_clear_message() {
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let code = relay.create_code(&admin).await;
    // Someone else used the code first.
    let first = connect_agent(&relay.base, &code).await;
    assert!(first.is_ok(), "the first use must succeed");

    for credential in [code.as_str(), "ZZZ-ZZZ-ZZZ"] {
        let mut agent = AgentProcess::spawn(
            Some(&x.display),
            &["--server", &relay.base, "--code", credential],
        );
        let status = agent.wait_exit(WAIT).await;
        let stderr = agent.stderr();
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("the support code is invalid, expired or already used"),
            "{stderr}"
        );
    }
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_named_by_the_join_page_starts_the_session_with_no_flags() {
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let code = relay.create_code(&admin).await;
    // The name the join page's Windows download gets, on the Linux binary.
    let name = guruconnect_proto::support_file::file_name(&relay.base, &code).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join(&name);
    std::fs::copy(env!("CARGO_BIN_EXE_guruconnect-agent"), &exe).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.env_remove("GURUCONNECT_SERVER");
    let agent = AgentProcess::spawn_cmd(cmd, &x.display);
    // It reached this server with this code: the session waits for the customer.
    relay.wait_session(&admin, "waiting_consent").await;
    wait_window(&x.display, CONSENT_TITLE);
    let stderr = agent.stderr();
    assert!(
        stderr.contains(&format!("support session with {}", relay.base)),
        "{stderr}"
    );
}

/// A plain-HTTP server that is not GuruConnect: every request gets `status` and an HTML
/// page. Returns its `http://` base.
async fn foreign_web_server(status: &'static str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let page = "<html><body><h1>Welcome to our intranet</h1></body></html>";
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_server_url_is_named_and_not_retried() {
    let Some(x) = Xvfb::start() else { return };
    let not_found = foreign_web_server("404 Not Found").await;
    let ok_page = foreign_web_server("200 OK").await;
    let https_to_plain = ok_page.replace("http://", "https://");
    let no_scheme = ok_page.trim_start_matches("http://").to_owned();
    let cases = [
        (not_found.as_str(), "is not a GuruConnect server"),
        (ok_page.as_str(), "is not a GuruConnect server"),
        (https_to_plain.as_str(), "does not speak https"),
        (no_scheme.as_str(), "must start with https:// or http://"),
    ];
    for (server, says) in cases {
        let mut agent = AgentProcess::spawn(
            Some(&x.display),
            &["--server", server, "--code", "ABC-DEF-GHJ"],
        );
        // Under the 60 s support mode spends retrying a server it cannot reach.
        let status = agent.wait_exit(WAIT).await;
        let stderr = agent.stderr();
        assert_eq!(status.code(), Some(4), "{server}: {stderr}");
        assert!(stderr.contains(says), "{server}: {stderr}");
        assert!(
            !stderr.contains("<html"),
            "{server}: the page was dumped: {stderr}"
        );
        assert!(
            !stderr.contains("support code is invalid"),
            "{server}: blamed the code: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_display_is_a_clear_error() {
    let mut agent = AgentProcess::spawn(
        None,
        &["--server", "http://127.0.0.1:9", "--code", "ABC-DEF-GHJ"],
    );
    let status = agent.wait_exit(WAIT).await;
    let stderr = agent.stderr();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("cannot open the X display"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_agent_refuses_an_open_key_then_connects_and_survives_a_relay_restart() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let managed = relay.managed_config(&admin, 0o644).await;
    let (key_file, config_arg) = (&managed.key_file, &managed.config);

    // A key readable by others: refuse to start.
    let mut agent = AgentProcess::spawn(Some(&x.display), &["run", "--config", config_arg]);
    let status = agent.wait_exit(WAIT).await;
    let stderr = agent.stderr();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("readable by group or others"), "{stderr}");

    // Owner-only: it connects (no consent for a managed machine).
    std::fs::set_permissions(key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let agent = AgentProcess::spawn(Some(&x.display), &["run", "--config", config_arg]);
    let first = relay.wait_session(&admin, "active").await;

    // The relay restarts on the same port: the agent comes back by itself.
    let relay = relay.restart().await;
    let admin = relay.admin().await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let sessions = relay.sessions(&admin).await;
        if sessions
            .iter()
            .any(|s| s["status"] == "active" && s["id"] != first.as_str())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not reconnect: {sessions:?}\n{}",
            agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `path` holds a per-agent key different from `previous`; returns it.
async fn wait_key_file(path: &Path, previous: Option<&str>, agent: &AgentProcess) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let key = text.trim().to_owned();
            if key.starts_with("cak_") && Some(key.as_str()) != previous {
                let mode = std::fs::metadata(path).expect("meta").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "the stored key must be owner-only");
                return key;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new key in {}:\n{}",
            path.display(),
            agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_installer_enrolls_the_agent_which_keeps_its_key_and_re_enrolls_when_revoked() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let site = relay
        .post(&admin, "/api/sites", json!({ "name": "Head Office" }))
        .await;
    let site_id = site["id"].as_str().expect("site id");
    let enrollment_key = site["enrollment_key"].as_str().expect("enrollment key");

    // The installer an administrator downloads, run as the README says, into a test root.
    let resp = relay
        .http
        .get(format!("{}/api/sites/{site_id}/installer", relay.base))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("installer");
    assert!(resp.status().is_success(), "{}", resp.status());
    let script = resp.text().await.expect("script");
    assert!(
        !script.contains(enrollment_key),
        "the key is never in the script"
    );
    let root = tempfile::tempdir().expect("root");
    let script_path = root.path().join("install.sh");
    std::fs::write(&script_path, &script).expect("write script");
    let out = run_with_timeout(
        Command::new("sh")
            .arg(&script_path)
            .arg(enrollment_key)
            .env("GURUCONNECT_ROOT", root.path())
            .env(
                "GURUCONNECT_AGENT_BIN",
                env!("CARGO_BIN_EXE_guruconnect-agent"),
            )
            .env("GURUCONNECT_COMPANY", "Acme Dental")
            .env("GURUCONNECT_XAUTHORITY", "/run/user/1000/gdm/Xauthority")
            .env("GURUCONNECT_TAGS", "front-desk,e2e"),
        WAIT,
    );
    assert!(
        out.status.success(),
        "installer failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(
        root.path()
            .join("etc/systemd/system/guruconnect-agent.service"),
    )
    .expect("unit");
    assert!(
        unit.contains(
            "ExecStart=/opt/guruconnect/guruconnect-agent run --config /etc/guruconnect/agent.toml"
        ),
        "{unit}"
    );
    assert!(
        unit.contains("Environment=XAUTHORITY=/run/user/1000/gdm/Xauthority"),
        "{unit}"
    );
    let bin = root.path().join("opt/guruconnect/guruconnect-agent");
    let config_path = root.path().join("etc/guruconnect/agent.toml");
    let mode = std::fs::metadata(&config_path)
        .expect("config")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode, 0o600,
        "the site configuration holds the enrollment key"
    );

    // Run the installed agent as the service would, its key file kept inside the test root.
    let key_file = root.path().join("etc/guruconnect/agent.key");
    let config = std::fs::read_to_string(&config_path)
        .expect("read config")
        .replace(
            "key_file = \"/etc/guruconnect/agent.key\"",
            &format!("key_file = \"{}\"", key_file.display()),
        );
    assert!(config.contains(&key_file.display().to_string()), "{config}");
    std::fs::write(&config_path, config).expect("rewrite config");
    let config_arg = config_path.to_string_lossy().into_owned();
    let spawn = || {
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--config", &config_arg]);
        cmd
    };
    let agent = AgentProcess::spawn_cmd(spawn(), &x.display);
    let key = wait_key_file(&key_file, None, &agent).await;
    let machine = relay.wait_one_online(&admin, &agent).await;
    let agent_id = machine["agent_id"].as_str().expect("agent_id").to_owned();
    assert_eq!(machine["site"], "Head Office");
    assert_eq!(machine["company"], "Acme Dental");
    assert_eq!(machine["tags"], json!(["front-desk", "e2e"]));
    assert_eq!(relay.count_events(&admin, "machine.enrolled").await, 1);

    // A restart uses the stored key: no second enrollment, the same machine.
    drop(agent);
    // Offline first, so "online" below can only be the restarted agent.
    relay.wait_offline(&admin).await;
    let agent = AgentProcess::spawn_cmd(spawn(), &x.display);
    let again = relay.wait_one_online(&admin, &agent).await;
    assert_eq!(again["agent_id"], agent_id.as_str());
    assert_eq!(relay.count_events(&admin, "machine.enrolled").await, 1);
    assert_eq!(std::fs::read_to_string(&key_file).expect("key").trim(), key);

    // Revoking the key ends the session; the agent falls back to enrollment.
    let keys = relay
        .get(&admin, &format!("/api/machines/{agent_id}/keys"))
        .await;
    let key_id = keys
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["revoked_at"].is_null())
        .and_then(|k| k["id"].as_str())
        .expect("an active key")
        .to_owned();
    let resp = relay
        .http
        .delete(format!(
            "{}/api/machines/{agent_id}/keys/{key_id}",
            relay.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    assert!(resp.status().is_success(), "{}", resp.status());
    let new_key = wait_key_file(&key_file, Some(&key), &agent).await;
    assert_ne!(new_key, key);
    let back = relay.wait_one_online(&admin, &agent).await;
    assert_eq!(
        back["agent_id"],
        agent_id.as_str(),
        "re-enrollment reuses the row"
    );
    assert_eq!(relay.count_events(&admin, "machine.enrolled").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_key_agent_stores_its_provisioned_key_and_uses_it_from_then_on() {
    let Some(x) = Xvfb::start() else { return };
    let shared = format!("shared-{}", hex(&uuid_like()));
    let shared_for_config = shared.clone();
    let relay = Relay::start_in(tempfile::tempdir().expect("tempdir"), 0, None, move |c| {
        c.shared_agent_key = Some(secrecy::SecretString::from(shared_for_config));
        c.shared_agent_key_mode = guruconnect_server::config::SharedKeyMode::EnrollmentOnly;
    })
    .await;
    let admin = relay.admin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("keys/agent.key");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{}\"\nkey_file = \"{}\"\nshared_key = \"{shared}\"\n",
            relay.base,
            key_file.display()
        ),
    )
    .expect("write config");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let config_arg = config.to_string_lossy().into_owned();
    let agent = AgentProcess::spawn(Some(&x.display), &["run", "--config", &config_arg]);
    let key = wait_key_file(&key_file, None, &agent).await;
    let machine = relay.wait_one_online(&admin, &agent).await;
    assert_eq!(relay.count_events(&admin, "key.issued").await, 1);

    // From now on the stored key is used: no second provisioning, one active key.
    drop(agent);
    // Offline first, so "online" below can only be the restarted agent.
    relay.wait_offline(&admin).await;
    let agent = AgentProcess::spawn(Some(&x.display), &["run", "--config", &config_arg]);
    let again = relay.wait_one_online(&admin, &agent).await;
    assert_eq!(again["agent_id"], machine["agent_id"]);
    assert!(
        agent.stderr().contains("connected to"),
        "{}",
        agent.stderr()
    );
    assert_eq!(relay.count_events(&admin, "key.issued").await, 1);
    assert_eq!(std::fs::read_to_string(&key_file).expect("key").trim(), key);
    let agent_id = machine["agent_id"].as_str().expect("agent_id");
    let keys = relay
        .get(&admin, &format!("/api/machines/{agent_id}/keys"))
        .await;
    let active = keys
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["revoked_at"].is_null())
        .count();
    assert_eq!(active, 1);
}

/// A TLS-terminating reverse proxy in front of the relay, with a fresh self-signed
/// certificate for `localhost` (what a real deployment's nginx or Caddy does).
struct TlsProxy {
    port: u16,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    async fn start(upstream_port: u16) -> TlsProxy {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        TlsProxy {
            port,
            ca_pem: certified.cert.pem(),
            task,
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enrolls_and_connects_over_tls_and_refuses_an_untrusted_certificate() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let proxy = TlsProxy::start(relay.port).await;
    let admin = relay.admin().await;
    let site = relay
        .post(&admin, "/api/sites", json!({ "name": "Remote Office" }))
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("agent.key");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"https://localhost:{}\"\nkey_file = \"{}\"\nsite_code = \"{}\"\nenrollment_key = \"{}\"\n",
            proxy.port,
            key_file.display(),
            site["code"].as_str().expect("code"),
            site["enrollment_key"].as_str().expect("key"),
        ),
    )
    .expect("write config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.ca_pem).expect("write ca");
    let config_arg = config.to_string_lossy().into_owned();
    let command = |ca_file: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guruconnect-agent"));
        cmd.args(["run", "--config", &config_arg])
            .env("SSL_CERT_FILE", ca_file);
        cmd
    };

    // A certificate the machine does not trust: nothing is sent, and the log says why.
    let untrusting = AgentProcess::spawn_cmd(command(Path::new("/nonexistent.pem")), &x.display);
    let deadline = Instant::now() + WAIT;
    while !untrusting.stderr().contains("enrollment failed") {
        assert!(
            Instant::now() < deadline,
            "no enrollment failure logged:\n{}",
            untrusting.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(untrusting);
    assert!(!key_file.exists(), "no key without a trusted server");
    assert!(relay.machines(&admin).await.is_empty());

    // Trusted: it enrolls over HTTPS and streams over WSS.
    let agent = AgentProcess::spawn_cmd(command(&ca), &x.display);
    wait_key_file(&key_file, None, &agent).await;
    let machine = relay.wait_one_online(&admin, &agent).await;
    assert_eq!(machine["site"], "Remote Office");
}

// ------------------------------------------------------------------ typing by character

/// An X client that turns its key presses into text the way Xlib does: the keysym of the
/// pressed keycode's level (Shift, Caps Lock, AltGr from the event's state) in the mapping
/// the server has when the client handles the event.
struct TextApp {
    text: Arc<std::sync::Mutex<String>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TextApp {
    fn start(display: &str) -> TextApp {
        use x11rb::protocol::xproto::{CreateWindowAux, InputFocus, WindowClass};
        let (conn, screen) = x11rb::connect(Some(display)).expect("connect text app");
        let root = conn.setup().roots[screen].root;
        let window = conn.generate_id().expect("id");
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            window,
            root,
            0,
            0,
            200,
            100,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new()
                .override_redirect(1)
                .event_mask(EventMask::KEY_PRESS),
        )
        .expect("create window");
        conn.map_window(window).expect("map");
        conn.sync().expect("sync");
        conn.set_input_focus(InputFocus::POINTER_ROOT, window, x11rb::CURRENT_TIME)
            .expect("focus");
        conn.sync().expect("sync");
        let text = Arc::new(std::sync::Mutex::new(String::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (t, s) = (text.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match conn.poll_for_event() {
                    Ok(Some(Event::KeyPress(k))) => {
                        if let Some(c) = decode_key(&conn, k.detail, u16::from(k.state)) {
                            t.lock().unwrap().push(c);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => return,
                }
            }
        });
        TextApp { text, stop }
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    async fn wait_text(&self, want: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.text().ends_with(want) {
            assert!(
                Instant::now() < deadline,
                "the X client never received {want:?}; it has {:?}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Nothing more arrives after it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(self.text().ends_with(want), "{:?}", self.text());
    }

    fn clear(&self) {
        self.text.lock().unwrap().clear();
    }
}

impl Drop for TextApp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The character a key press produces (None for modifiers, dead keys and the like).
fn decode_key(conn: &impl x11rb::connection::Connection, keycode: u8, state: u16) -> Option<char> {
    use guruconnect_agent::platform::linux::chars::{
        XK_ISO_LEVEL3_SHIFT, XK_RETURN, char_for_keysym, is_cased_pair,
    };
    let syms = conn
        .get_keyboard_mapping(keycode, 1)
        .ok()?
        .reply()
        .ok()?
        .keysyms;
    // The modifier bit AltGr sets: the one whose keys include an ISO_Level3_Shift key.
    let per = conn.setup().max_keycode - conn.setup().min_keycode + 1;
    let all = conn
        .get_keyboard_mapping(conn.setup().min_keycode, per)
        .ok()?
        .reply()
        .ok()?;
    let level3_codes: Vec<u8> = all
        .keysyms
        .chunks(usize::from(all.keysyms_per_keycode))
        .zip(conn.setup().min_keycode..=u8::MAX)
        .filter(|(s, _)| s.first() == Some(&XK_ISO_LEVEL3_SHIFT))
        .map(|(_, c)| c)
        .collect();
    let modmap = conn.get_modifier_mapping().ok()?.reply().ok()?;
    let per_mod = usize::from(modmap.keycodes_per_modifier());
    let level3_mask = modmap
        .keycodes
        .chunks(per_mod.max(1))
        .enumerate()
        .filter(|(_, codes)| codes.iter().any(|c| level3_codes.contains(c)))
        .fold(0u16, |m, (i, _)| m | (1 << i));
    let mut shift = state & 1 != 0;
    if state & 2 != 0 && is_cased_pair(&syms) {
        shift = !shift;
    }
    let level3 = level3_mask != 0 && state & level3_mask != 0;
    let index = usize::from(level3) * 4 + usize::from(shift);
    let sym = syms.get(index).copied().filter(|s| *s != 0)?;
    if sym == XK_RETURN {
        return Some('\n');
    }
    char_for_keysym(sym)
}

/// Sets the X server's keyboard layout, as `setxkbmap` on the machine would.
fn set_layout(display: &str, layout: &str) {
    let out = Command::new("setxkbmap")
        .args(["-display", display, layout])
        .output()
        .expect("run setxkbmap (apt-get install x11-xkb-utils)");
    assert!(out.status.success(), "setxkbmap {layout}: {out:?}");
}

/// Where a US keyboard has `c`: (scancode, shift).
fn us_key(c: char) -> (u32, bool) {
    const ROWS: &[(&str, &str, u32)] = &[
        ("`1234567890-=", "~!@#$%^&*()_+", 0x29),
        ("qwertyuiop[]\\", "QWERTYUIOP{}|", 0x10),
        ("asdfghjkl;'", "ASDFGHJKL:\"", 0x1e),
        ("zxcvbnm,./", "ZXCVBNM<>?", 0x2c),
    ];
    if c == ' ' {
        return (0x39, false);
    }
    for (plain, shifted, first) in ROWS {
        for (shift, row) in [(false, plain), (true, shifted)] {
            if let Some(i) = row.chars().position(|k| k == c) {
                let i = u32::try_from(i).unwrap();
                // The backquote sits before 1 (0x29, then 0x02..).
                let code = if *first == 0x29 {
                    if i == 0 { 0x29 } else { 0x01 + i }
                } else if *first == 0x10 && i == 12 {
                    0x2b
                } else {
                    first + i
                };
                return (code, shift);
            }
        }
    }
    panic!("no US key for {c:?}");
}

fn key_event(scancode: u32, down: bool, text: &str, shift: bool, mode: KeyInputMode) -> Payload {
    Payload::KeyEvent(KeyEvent {
        scancode,
        down,
        text: text.into(),
        modifiers: Some(Modifiers {
            shift,
            ..Modifiers::default()
        }),
        mode: mode as i32,
        ..KeyEvent::default()
    })
}

/// Types `text` as a browser on a US keyboard reports it: Shift by position around shifted
/// keys, each key with its physical code and the character it produced.
async fn type_like_a_us_technician(conn: &mut Connection, text: &str, mode: KeyInputMode) {
    const SHIFT: u32 = 0x2a;
    for c in text.chars() {
        let (code, shift) = us_key(c);
        let s = c.to_string();
        if shift {
            conn.send(key_event(SHIFT, true, "", true, mode))
                .await
                .expect("send");
        }
        conn.send(key_event(code, true, &s, shift, mode))
            .await
            .expect("send");
        conn.send(key_event(code, false, &s, shift, mode))
            .await
            .expect("send");
        if shift {
            conn.send(key_event(SHIFT, false, "", false, mode))
                .await
                .expect("send");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_us_technician_types_exactly_on_a_german_layout_by_character_not_by_position() {
    let Some(x) = Xvfb::start() else { return };
    set_layout(&x.display, "de");
    let _windows = TestApp::start(&x.display);
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let (mut agent, _session, mut control, _, _) =
        attended_control_session(&x, &relay, &admin, |img| region_matches(img, WIN_A, 0, 0)).await;
    let app = TextApp::start(&x.display);

    // By character (the default): what the technician's keyboard produced arrives, though
    // on a German layout y and z swap, and ?, /, @, +, = sit on other keys or need AltGr.
    let sentence = "Hello, World! yz ?/@ 1+1=2 [x] {a|b} ~`";
    type_like_a_us_technician(&mut control, sentence, KeyInputMode::Unspecified).await;
    app.wait_text(sentence).await;

    // An on-screen keyboard sends a capital without any Shift press; a character the German
    // layout lacks (ñ, Ω) goes through a borrowed spare key.
    app.clear();
    for (code, text) in [(0x28, "Ä"), (0x31, "ñ"), (0x2f, "Ω")] {
        for down in [true, false] {
            control
                .send(key_event(
                    code,
                    down,
                    text,
                    false,
                    KeyInputMode::ByCharacter,
                ))
                .await
                .expect("send");
        }
    }
    app.wait_text("ÄñΩ").await;

    // "Type clipboard text" uses the same path, lines included.
    app.clear();
    control
        .send(Payload::TypeText(TypeText {
            text: "Grüße, €5 ñ\n@home".into(),
        }))
        .await
        .expect("send");
    app.wait_text("Grüße, €5 ñ\n@home").await;

    // By position the remote layout decides: US y and z land on German z and y.
    app.clear();
    type_like_a_us_technician(&mut control, "Hello yz", KeyInputMode::ByPosition).await;
    app.wait_text("Hello zy").await;

    // Shortcuts go by position even in character mode: Ctrl+Z stays the key at Z's place.
    // (Recorded as the plain keysym: the test client ignores Ctrl.)
    app.clear();
    control
        .send(Payload::KeyEvent(KeyEvent {
            scancode: 0x2c,
            down: true,
            text: "z".into(),
            modifiers: Some(Modifiers {
                ctrl: true,
                ..Modifiers::default()
            }),
            ..KeyEvent::default()
        }))
        .await
        .expect("send");
    app.wait_text("y").await;

    // When the viewer leaves, the borrowed keys are given back.
    control.close().await.expect("close");
    let (conn, _) = x11rb::connect(Some(&x.display)).expect("connect");
    let borrowed = [0x0100_00f1u32, 0x0100_03a9, 0x0100_20ac];
    let deadline = Instant::now() + WAIT;
    loop {
        let setup = conn.setup();
        let map = conn
            .get_keyboard_mapping(setup.min_keycode, setup.max_keycode - setup.min_keycode + 1)
            .unwrap()
            .reply()
            .unwrap();
        if !map.keysyms.iter().any(|k| borrowed.contains(k)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the borrowed keys were never restored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_alive(&mut agent);
}

// ------------------------------------------------------------------ remote terminal

/// Reads terminal output until `want` appears in it (or the terminal ends); returns the
/// text and the exit, if one came.
async fn terminal_until(
    conn: &mut Connection,
    want: &str,
) -> (String, Option<guruconnect_proto::TerminalExit>) {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let envelope = match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => panic!("{want:?} never appeared in the terminal; got {text:?}"),
            Ok(Ok(e)) => e,
            Ok(Err(e)) => panic!("viewer connection failed: {e}; got {text:?}"),
        };
        match envelope.payload {
            Some(Payload::TerminalOutput(out)) => {
                text.push_str(&String::from_utf8_lossy(&out.data));
                if text.contains(want) {
                    return (text, None);
                }
            }
            Some(Payload::TerminalExit(exit)) => return (text, Some(exit)),
            _ => {}
        }
    }
}

fn terminal_input(terminal_id: u32, text: &str) -> Payload {
    Payload::TerminalInput(guruconnect_proto::TerminalInput {
        terminal_id,
        data: text.as_bytes().to_vec(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_terminal_runs_a_shell_resizes_and_reports_its_exit_without_a_stream() {
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let code = relay.create_code(&admin).await;
    // Running as root (CI), a shell must be asked for by name.
    let (_, is_root) = guruconnect_agent::session::terminal::current_account();
    let mut args = vec!["--server", relay.base.as_str(), "--code", code.as_str()];
    if is_root {
        args.extend(["--terminal-user", "root"]);
    }
    let mut agent = AgentProcess::spawn(Some(&x.display), &args);
    click_consent(&x.display, ALLOW_BUTTON);
    let session_id = relay.wait_session(&admin, "active").await;

    let minted = relay
        .post(
            &admin,
            &format!("/api/sessions/{session_id}/viewer-token"),
            json!({}),
        )
        .await;
    let token = minted["token"].as_str().expect("viewer token");
    let mut term = guruconnect_client::connect_viewer_with(&relay.base, &session_id, token, false)
        .await
        .expect("terminal viewer connects");
    term.send(Payload::TerminalOpen(guruconnect_proto::TerminalOpen {
        terminal_id: 1,
        cols: 100,
        rows: 30,
    }))
    .await
    .expect("open");
    term.send(terminal_input(1, "stty size; echo gc-$((6*7))\r"))
        .await
        .expect("type");
    let (text, exit) = terminal_until(&mut term, "gc-42").await;
    assert!(
        exit.is_none(),
        "the terminal ended: {exit:?}\n{text}\n{}",
        agent.stderr()
    );
    assert!(
        text.contains("30 100"),
        "stty size before the resize: {text:?}"
    );

    term.send(Payload::TerminalResize(guruconnect_proto::TerminalResize {
        terminal_id: 1,
        cols: 120,
        rows: 40,
    }))
    .await
    .expect("resize");
    term.send(terminal_input(1, "stty size; exit 3\r"))
        .await
        .expect("type");
    let (text, exit) = terminal_until(&mut term, "\u{0}never").await;
    assert!(
        text.contains("40 120"),
        "stty size after the resize: {text:?}"
    );
    let exit = exit.expect("the shell's exit");
    assert_eq!((exit.terminal_id, exit.exit_code), (1, 3), "{exit:?}");

    // A terminal-only viewer never started the picture: no frame was captured.
    assert!(
        !agent.stderr().contains("streaming started"),
        "the agent streamed for a terminal-only viewer:\n{}",
        agent.stderr()
    );
    let events = relay.count_events(&admin, "terminal.opened").await;
    assert_eq!(events, 1);
    assert!(agent.child.try_wait().expect("try_wait").is_none());
    let _ = agent.child.kill();
    let _ = agent.wait_exit(WAIT).await;
}

// ------------------------------------------------------------------ file transfer

/// Clicks `button` of the next transfer prompt from a thread of its own (the test's
/// task meanwhile waits for the agent's answer).
fn answer_transfer_prompt(
    display: &str,
    button: (i16, i16, u16, u16),
) -> std::thread::JoinHandle<()> {
    let display = display.to_owned();
    std::thread::spawn(move || click_prompt(&display, TRANSFER_TITLE, button))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_support_code_session_the_person_at_the_machine_allows_or_refuses_each_transfer() {
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let (mut agent, _sid, mut conn, _, _) =
        attended_control_session(&x, &relay, &admin, |_| true).await;
    let target = tempfile::tempdir().expect("target dir");
    let data = b"shared with permission".to_vec();

    // Refused at the machine: nothing is written, the technician is told.
    let click = answer_transfer_prompt(&x.display, DENY_BUTTON);
    let refused = upload(&mut conn, 1, target.path(), "notes.txt", &data).await;
    click.join().expect("clicked Deny");
    assert!(
        !refused.ok && refused.error.contains("did not allow"),
        "{refused:?}\n{}",
        agent.stderr()
    );
    assert_eq!(std::fs::read_dir(target.path()).expect("dir").count(), 0);

    // Allowed: it lands with its hash, and comes back down after another Allow.
    let click = answer_transfer_prompt(&x.display, ALLOW_BUTTON);
    let allowed = upload(&mut conn, 2, target.path(), "notes.txt", &data).await;
    click.join().expect("clicked Allow");
    assert!(allowed.ok, "{allowed:?}\n{}", agent.stderr());
    assert_eq!(
        std::fs::read(target.path().join("notes.txt")).expect("landed"),
        data
    );
    let click = answer_transfer_prompt(&x.display, ALLOW_BUTTON);
    let (result, got) = download(&mut conn, 3, &target.path().join("notes.txt")).await;
    click.join().expect("clicked Allow");
    assert!(result.ok, "{result:?}");
    assert_eq!(got, data);

    // A download refused at the machine sends nothing.
    let click = answer_transfer_prompt(&x.display, DENY_BUTTON);
    let (result, got) = download(&mut conn, 4, &target.path().join("notes.txt")).await;
    click.join().expect("clicked Deny");
    assert!(
        !result.ok && result.error.contains("did not allow"),
        "{result:?}"
    );
    assert!(got.is_empty());
    assert!(agent.child.try_wait().expect("try_wait").is_none());
    let _ = agent.child.kill();
    let _ = agent.wait_exit(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_by_the_agent_dying_resumes_after_it_reconnects() {
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let managed = relay.managed_config(&admin, 0o600).await;
    let mut agent = AgentProcess::spawn(Some(&x.display), &["run", "--config", &managed.config]);
    let first = relay.wait_session(&admin, "active").await;
    let (conn, _) = relay.viewer(&admin, &first, &[Codec::RawZstd]).await;
    let target = tempfile::tempdir().expect("target dir");
    let data: Arc<Vec<u8>> = Arc::new(
        (0..60_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect(),
    );

    // Start the upload; kill -9 the agent once some of it is on the machine.
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let running = {
        let (data, acked, dir) = (
            data.clone(),
            acked.clone(),
            target.path().display().to_string(),
        );
        let mut conn = conn;
        tokio::spawn(async move {
            let what = guruconnect_client::files::Upload {
                directory: &dir,
                name: "big.iso",
                size: data.len() as u64,
                overwrite: false,
                resume: true,
            };
            let mut source = std::io::Cursor::new(&data[..]);
            let _ = guruconnect_client::files::upload(&mut conn, 1, &what, &mut source, |n| {
                acked.store(n, std::sync::atomic::Ordering::Relaxed);
            })
            .await;
        })
    };
    wait_until("10 MB acknowledged", || {
        acked.load(std::sync::atomic::Ordering::Relaxed) >= 10_000_000
    })
    .await;
    let _ = agent.child.kill();
    let _ = agent.wait_exit(WAIT).await;
    running.abort();
    assert!(!target.path().join("big.iso").exists());

    // The agent comes back (a new session); the same upload goes on where it stopped.
    let mut agent = AgentProcess::spawn(Some(&x.display), &["run", "--config", &managed.config]);
    let deadline = Instant::now() + WAIT;
    let second = loop {
        let id = relay.wait_session(&admin, "active").await;
        if id != first {
            break id;
        }
        assert!(Instant::now() < deadline, "the agent did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (mut conn, _) = relay.viewer(&admin, &second, &[Codec::RawZstd]).await;
    let (result, from) = upload_from(&mut conn, 2, target.path(), "big.iso", &data, true).await;
    assert!(result.ok, "{result:?}\n{}", agent.stderr());
    assert!(
        from >= 10_000_000 && from < data.len() as u64,
        "resumed at {from} of {}",
        data.len()
    );
    assert_eq!(result.sha256, sha256_hex(&data));
    assert!(std::fs::read(target.path().join("big.iso")).expect("landed") == *data);
    let left: Vec<String> = std::fs::read_dir(target.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["big.iso"], "no partial file left");
    let _ = agent.child.kill();
    let _ = agent.wait_exit(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_cross_both_ways_through_the_relay_with_their_hashes_and_escapes_are_refused() {
    let Some(x) = Xvfb::start() else { return };
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let managed = relay.managed_config(&admin, 0o600).await;
    let mut agent = AgentProcess::spawn(Some(&x.display), &["run", "--config", &managed.config]);
    let session_id = relay.wait_session(&admin, "active").await;
    let (mut conn, _) = relay.viewer(&admin, &session_id, &[Codec::RawZstd]).await;

    // Upload 200 MB into a folder of the machine: the same bytes land there.
    let target = tempfile::tempdir().expect("target dir");
    let data: Vec<u8> = (0..200_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let started = Instant::now();
    let result = upload(&mut conn, 1, target.path(), "big.bin", &data).await;
    println!(
        "upload of 200 MB: {:.1} MB/s (debug build)",
        200.0 / started.elapsed().as_secs_f64()
    );
    assert!(result.ok, "{result:?}\n{}", agent.stderr());
    assert_eq!(result.sha256, sha256_hex(&data));
    assert_eq!(
        std::fs::read(target.path().join("big.bin")).expect("landed"),
        data
    );

    // The same name again is refused (no overwrite asked); a name that escapes the folder
    // is refused; neither leaves anything behind.
    let again = upload(&mut conn, 2, target.path(), "big.bin", b"other").await;
    assert!(
        !again.ok && again.error.contains("already exists"),
        "{again:?}"
    );
    let escape = upload(&mut conn, 3, target.path(), "../escape.txt", b"x").await;
    assert!(
        !escape.ok && escape.error.contains("plain file name"),
        "{escape:?}"
    );
    let mut left: Vec<String> = std::fs::read_dir(target.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["big.bin"]);
    assert!(
        !target
            .path()
            .parent()
            .expect("parent")
            .join("escape.txt")
            .exists()
    );

    // Download it back: the chunks, acknowledged, rebuild the same bytes and hash.
    let started = Instant::now();
    let (result, got) = download(&mut conn, 4, &target.path().join("big.bin")).await;
    println!(
        "download of 200 MB: {:.1} MB/s (debug build)",
        200.0 / started.elapsed().as_secs_f64()
    );
    assert!(result.ok, "{result:?}");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the downloaded bytes differ");
    assert_eq!(result.sha256, sha256_hex(&got));

    // Each transfer is audited with its outcome.
    let deadline = Instant::now() + WAIT;
    while relay.count_events(&admin, "file.transferred").await != 4 {
        assert!(Instant::now() < deadline, "four transfers were not audited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The headless viewer moves files too: up, and a folder back down as a tar.
    let _ = conn.close().await;
    wait_no_viewers(&relay, &session_id).await;
    let viewer_bin = std::env::current_exe()
        .expect("test binary")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("guruconnect-viewer");
    assert!(
        viewer_bin.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        viewer_bin.display()
    );
    // Each run mints its own viewer token, as a script would.
    let cli = async |args: &[&str]| {
        let minted = relay
            .post(
                &admin,
                &format!("/api/sessions/{session_id}/viewer-token"),
                json!({}),
            )
            .await;
        let out = run_with_timeout(
            Command::new(&viewer_bin)
                .args(["--server", &relay.base, "--session", &session_id])
                .args(["--token", minted["token"].as_str().expect("token")])
                .args(args),
            WAIT,
        );
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), said)
    };
    let local = tempfile::tempdir().expect("local dir");
    std::fs::write(local.path().join("notes.txt"), b"from the command line\n").expect("write");
    let (ok, said) = cli(&[
        "--upload",
        &local.path().join("notes.txt").display().to_string(),
        "--to",
        &target.path().display().to_string(),
    ])
    .await;
    assert!(ok, "{said}");
    assert!(said.contains("SHA-256"), "{said}");
    assert_eq!(
        std::fs::read(target.path().join("notes.txt")).expect("uploaded"),
        b"from the command line\n"
    );
    let tar = local.path().join("back.tar");
    let (ok, said) = cli(&[
        "--download",
        &target.path().display().to_string(),
        "--output",
        &tar.display().to_string(),
    ])
    .await;
    assert!(ok, "{said}");
    let listing = run_with_timeout(Command::new("tar").arg("-tf").arg(&tar), WAIT);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().any(|l| l.ends_with("/notes.txt")),
        "{listing}"
    );
    // A refusal is a clear message and a failing exit, and leaves no partial file.
    let missing = local.path().join("missing.bin");
    let (ok, said) = cli(&[
        "--download",
        "/no/such/file",
        "--output",
        &missing.display().to_string(),
    ])
    .await;
    assert!(!ok && said.contains("the transfer failed"), "{said}");
    assert!(!missing.exists() && !missing.with_extension("part").exists());
    assert!(agent.child.try_wait().expect("try_wait").is_none());
    let _ = agent.child.kill();
    let _ = agent.wait_exit(WAIT).await;
}
