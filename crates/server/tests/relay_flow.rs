//! Relay behaviour (SPEC §4.5, §4.8, §5): access modes, consent gating, frame fan-out with
//! slow viewers, chat and clipboard routing, modifier hygiene and heartbeats.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "common/relay.rs"]
mod relay_support;

use guruconnect_store::{CodeStatus, SessionStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestServer;
use guruconnect_client::{connect_agent, connect_viewer};
use guruconnect_proto::{
    AgentStatus, ChatMessage, ClipboardText, MouseEvent, Payload, SessionPhase, SpecialKey,
};
use relay_support::*;

const MARKER: u32 = 0x77;

fn chat(text: &str) -> Payload {
    Payload::Chat(ChatMessage {
        from: "x".into(),
        text: text.into(),
        sent_at_ms: 1,
    })
}

fn clipboard(text: &str) -> Payload {
    Payload::Clipboard(ClipboardText { text: text.into() })
}

fn mouse() -> Payload {
    Payload::MouseEvent(MouseEvent {
        x: 10,
        y: 10,
        ..MouseEvent::default()
    })
}

fn special() -> Payload {
    Payload::SpecialKey(SpecialKey {
        kind: guruconnect_proto::SpecialKeyKind::SpecialKeyCtrlAltDel as i32,
    })
}

/// Everything a viewer could try to push to the agent that is not plain input.
fn agent_only_payloads() -> Vec<Payload> {
    vec![
        frame(999, true, 16),
        consent(true),
        Payload::AgentStatus(AgentStatus {
            hostname: "forged-by-viewer".into(),
            ..AgentStatus::default()
        }),
        hello("forged-by-viewer", "forged-uid"),
        Payload::StartStream(guruconnect_proto::StartStream::default()),
        Payload::ReleaseModifiers(guruconnect_proto::ReleaseModifiers {}),
        Payload::SessionEnd(guruconnect_proto::SessionEnd {
            code: 0,
            reason: "forged".into(),
        }),
        Payload::CursorPosition(guruconnect_proto::CursorPosition::default()),
        Payload::DisplayList(guruconnect_proto::DisplayList::default()),
        notice("forged notice"),
        Payload::CustomerEnd(guruconnect_proto::CustomerEnd {}),
    ]
}

fn type_text(text: &str) -> Payload {
    Payload::TypeText(guruconnect_proto::TypeText { text: text.into() })
}

fn notice(text: &str) -> Payload {
    Payload::AgentNotice(guruconnect_proto::AgentNotice {
        level: guruconnect_proto::agent_notice::Level::Warning as i32,
        text: text.into(),
    })
}

/// The first message at the agent that a viewer could have caused must be the marker key.
async fn expect_marker_first(agent: &mut Agent) {
    let first = recv_until(&mut agent.conn, "marker key event", WAIT, |p| {
        // StartStream from the relay asks for 30 fps; the forged one has 0.
        is_viewer_input(p)
            || matches!(p, Payload::ReleaseModifiers(_) | Payload::SessionEnd(_))
            || matches!(p, Payload::StartStream(s) if s.max_fps != 30)
    })
    .await;
    match first {
        Payload::KeyEvent(k) if k.scancode == MARKER => {}
        other => panic!("the agent received {other:?} before the marker"),
    }
}

// ---------------------------------------------------------------- §4.5 access modes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_only_input_and_agent_only_types_never_reach_the_agent() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, key) = managed_agent(&server, &admin).await;
    let viewer_user = user_with_role(&server, &admin, "viewer").await;
    let tech = user_with_role(&server, &admin, "technician").await;
    let mut watcher = viewer(&server, &viewer_user, &agent.session_id).await;
    let mut controller = viewer(&server, &tech, &agent.session_id).await;
    wait_viewers(&server, &agent.session_id, 2).await;
    let inventory_before = server
        .state
        .store
        .get_machine(&key.agent_id)
        .await
        .unwrap()
        .inventory;

    // The view-only viewer tries every input kind, then everything agent-only.
    for p in [
        mouse(),
        key_down(1),
        special(),
        type_text("from view-only"),
        clipboard("from view-only"),
    ] {
        watcher.send(p).await.unwrap();
    }
    for p in agent_only_payloads() {
        watcher.send(p).await.unwrap();
    }
    sync(&mut watcher).await;
    // The controlling viewer's agent-only messages are not forwarded either.
    for p in agent_only_payloads() {
        controller.send(p).await.unwrap();
    }
    sync(&mut controller).await;
    controller.send(key_down(MARKER)).await.unwrap();
    expect_marker_first(&mut agent).await;

    // The session is untouched: still live, inventory not written by a viewer.
    let live = server
        .state
        .sessions
        .get(&agent.session_id)
        .expect("still live");
    assert!(live.is_active());
    let inventory_after = server
        .state
        .store
        .get_machine(&key.agent_id)
        .await
        .unwrap()
        .inventory;
    assert_eq!(inventory_before, inventory_after);

    // Video still streams to the view-only viewer (and to the controller).
    agent.conn.send(frame(1, true, 1024)).await.unwrap();
    for v in [&mut watcher, &mut controller] {
        let got = recv_until(v, "video frame", WAIT, |p| {
            matches!(p, Payload::VideoFrame(_))
        })
        .await;
        assert_eq!(frame_seq(&got), Some(1));
    }
    // Neither viewer got the other's (or its own) forged frame 999.
    agent.conn.send(frame(2, false, 16)).await.unwrap();
    for v in [&mut watcher, &mut controller] {
        let got = recv_until(v, "video frame", WAIT, |p| {
            matches!(p, Payload::VideoFrame(_))
        })
        .await;
        assert_eq!(frame_seq(&got), Some(2));
    }
    // The view-only viewer's input after that is still dropped.
    watcher.send(key_down(2)).await.unwrap();
    sync(&mut watcher).await;
    controller.send(key_down(MARKER)).await.unwrap();
    expect_marker_first(&mut agent).await;
}

// ---------------------------------------------------------------- §4.8 consent

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_crosses_before_consent_then_everything_flows() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, _) = attended_agent(&server, &admin).await;
    let sid = agent.session_id.clone();

    // A viewer joins during the wait and is told so.
    let (token, _) = mint(&server, &admin, &sid).await;
    let mut v = connect_viewer(&server.base, &sid, &token).await.unwrap();
    let state = recv_until(&mut v, "session state", WAIT, |p| {
        matches!(p, Payload::SessionState(_))
    })
    .await;
    let Payload::SessionState(state) = state else {
        unreachable!()
    };
    assert_eq!(state.phase, SessionPhase::WaitingForConsent as i32);
    wait_viewers(&server, &sid, 1).await;

    // The agent pushes frames and the rest; the viewer pushes input.
    for seq in 0..5 {
        agent.conn.send(frame(seq, true, 512)).await.unwrap();
    }
    agent
        .conn
        .send(chat("agent chat before consent"))
        .await
        .unwrap();
    agent
        .conn
        .send(clipboard("agent clipboard before consent"))
        .await
        .unwrap();
    agent
        .conn
        .send(Payload::CursorPosition(
            guruconnect_proto::CursorPosition::default(),
        ))
        .await
        .unwrap();
    for p in [
        key_down(5),
        mouse(),
        special(),
        clipboard("x"),
        chat("viewer chat before consent"),
    ] {
        v.send(p).await.unwrap();
    }
    sync(&mut v).await;
    sync(&mut agent.conn).await;
    let (seen, close) = collect_for(&mut v, QUIET).await;
    assert!(close.is_none());
    assert!(
        !seen.iter().any(|p| matches!(
            p,
            Payload::VideoFrame(_)
                | Payload::Chat(_)
                | Payload::Clipboard(_)
                | Payload::CursorPosition(_)
        )),
        "the viewer received {:?} before consent",
        kinds(&seen)
    );
    let (seen, close) = collect_for(&mut agent.conn, QUIET).await;
    assert!(close.is_none());
    assert!(
        !seen
            .iter()
            .any(|p| is_viewer_input(p) || matches!(p, Payload::StartStream(_))),
        "the agent received {:?} before consent",
        kinds(&seen)
    );

    // Consent granted: the viewer learns it, the agent is asked to stream.
    agent.conn.send(consent(true)).await.unwrap();
    let state = recv_until(
        &mut v,
        "active state",
        WAIT,
        |p| matches!(p, Payload::SessionState(s) if s.phase == SessionPhase::Active as i32),
    )
    .await;
    assert!(matches!(state, Payload::SessionState(_)));
    recv_until(&mut agent.conn, "start stream", WAIT, |p| {
        matches!(p, Payload::StartStream(_))
    })
    .await;
    agent.conn.send(frame(100, true, 512)).await.unwrap();
    let got = recv_until(&mut v, "first frame", WAIT, |p| {
        matches!(p, Payload::VideoFrame(_))
    })
    .await;
    assert_eq!(
        frame_seq(&got),
        Some(100),
        "a pre-consent frame leaked late"
    );
    v.send(key_down(MARKER)).await.unwrap();
    expect_marker_first(&mut agent).await;
    assert!(!server.events_of("consent.granted").await.is_empty());
    let record = server.state.store.get_session(&sid).await.unwrap();
    assert_eq!(record.status, SessionStatus::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_denied_ends_the_session_and_burns_the_code() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, code) = attended_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let mut v = viewer(&server, &admin, &sid).await;
    wait_viewers(&server, &sid, 1).await;
    for seq in 0..3 {
        agent.conn.send(frame(seq, true, 256)).await.unwrap();
    }
    agent.conn.send(consent(false)).await.unwrap();

    let (seen, code_agent, _) = expect_closed(&mut agent.conn, WAIT).await;
    assert!(!seen.iter().any(is_viewer_input), "{:?}", kinds(&seen));
    assert_eq!(code_agent, 1000);
    let (seen, _, _) = expect_closed(&mut v, WAIT).await;
    assert!(
        seen.iter().any(|p| matches!(p, Payload::SessionEnd(_))),
        "viewer told the session ended: {:?}",
        kinds(&seen)
    );
    assert!(
        !seen.iter().any(|p| matches!(p, Payload::VideoFrame(_))),
        "a frame reached the viewer: {:?}",
        kinds(&seen)
    );
    assert_rejected(
        connect_agent(&server.base, &code).await,
        401,
        "code after denial",
    );
    // Removal follows the agent task's clean-up, which may finish just after the close.
    let gone =
        common::eventually(WAIT, || async { server.state.sessions.get(&sid).is_none() }).await;
    assert!(gone, "the denied session is still in the registry");
    let ended = common::eventually(WAIT, || async {
        server
            .state
            .store
            .get_session(&sid)
            .await
            .is_ok_and(|s| s.status == SessionStatus::Ended)
    })
    .await;
    assert!(ended);
    // The codes page tells a denial from an ordinary end.
    let denied = common::eventually(WAIT, || async {
        server
            .state
            .store
            .get_code(&code)
            .await
            .is_ok_and(|c| c.is_some_and(|c| c.status == CodeStatus::Denied))
    })
    .await;
    assert!(
        denied,
        "the code reads {:?}, not denied",
        server
            .state
            .store
            .get_code(&code)
            .await
            .map(|c| c.map(|c| c.status))
    );
    assert!(!server.events_of("consent.denied").await.is_empty());
    assert_eq!(
        metric(&server, "guruconnect_frames_relayed_total").await,
        0.0
    );
    // No viewer can join the dead session.
    let resp = mint_response(&server, &admin, &sid).await;
    assert_eq!(resp.status(), reqwest::StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_timeout_and_disconnect_end_the_session() {
    let server = TestServer::start_with(|c| c.consent_timeout_secs = 1).await;
    let admin = server.admin_token().await;

    // Timeout.
    let (mut agent, code) = attended_agent(&server, &admin).await;
    let mut v = viewer(&server, &admin, &agent.session_id).await;
    let started = Instant::now();
    let (seen, _, reason) = expect_closed(&mut agent.conn, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(reason.contains("consent"), "reason {reason}");
    assert!(!seen.iter().any(is_viewer_input));
    let (seen, _, _) = expect_closed(&mut v, WAIT).await;
    assert!(seen.iter().any(|p| matches!(p, Payload::SessionEnd(_))));
    assert_rejected(
        connect_agent(&server.base, &code).await,
        401,
        "code after timeout",
    );
    assert!(!server.events_of("consent.timeout").await.is_empty());

    // The agent disconnects while the prompt is up.
    let (agent, code) = attended_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let mut v = viewer(&server, &admin, &sid).await;
    agent.conn.close().await.ok();
    let (seen, _, _) = expect_closed(&mut v, WAIT).await;
    assert!(seen.iter().any(|p| matches!(p, Payload::SessionEnd(_))));
    assert_rejected(
        connect_agent(&server.base, &code).await,
        401,
        "code after disconnect",
    );
}

// ---------------------------------------------------------------- §5 slow viewers

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_viewer_stalls_neither_the_agent_nor_the_other_viewers() {
    const FRAMES: u64 = 300;
    const SIZE: usize = 256 * 1024;
    const WINDOW: u64 = 4;

    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (agent, _) = managed_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let mut slow = viewer(&server, &admin, &sid).await;
    let fast: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(viewer(&server, &admin, &sid).await);
        }
        v
    };
    wait_viewers(&server, &sid, 3).await;

    // Fast viewers record every frame sequence they get.
    let progress: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut readers = Vec::new();
    for (mut conn, counter) in fast.into_iter().zip(progress.iter().cloned()) {
        readers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            while (seqs.len() as u64) < FRAMES {
                match tokio::time::timeout(Duration::from_secs(10), conn.recv()).await {
                    Ok(Ok(env)) => {
                        if let Some(seq) = env.payload.as_ref().and_then(frame_seq) {
                            seqs.push(seq);
                            counter.store(seqs.len() as u64, Ordering::SeqCst);
                        }
                    }
                    Ok(Err(e)) => panic!("fast viewer lost its socket: {e}"),
                    Err(_) => break,
                }
            }
            (seqs, conn)
        }));
    }

    // The agent reads what the relay sends it (refresh requests) in the background.
    let (mut tx, mut rx) = agent.conn.split();
    let refreshes = Arc::new(AtomicU64::new(0));
    let agent_reader = {
        let refreshes = refreshes.clone();
        tokio::spawn(async move {
            while let Ok(env) = rx.recv().await {
                if matches!(env.payload, Some(Payload::RefreshRequest(_))) {
                    refreshes.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let refreshes_before = refreshes.load(Ordering::SeqCst);

    let mut worst = Duration::ZERO;
    let started = Instant::now();
    for seq in 0..FRAMES {
        // Keep the fast viewers within a few frames so only the slow one can fall behind.
        let wait_start = Instant::now();
        while progress
            .iter()
            .map(|p| p.load(Ordering::SeqCst))
            .min()
            .unwrap()
            + WINDOW
            < seq
        {
            assert!(
                wait_start.elapsed() < Duration::from_secs(5),
                "fast viewers stalled at frame {seq}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let bytes = frame_bytes(seq, seq % 20 == 0, SIZE);
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), tx.send_raw(bytes))
            .await
            .expect("agent send stalled for 5 s")
            .unwrap();
        worst = worst.max(t.elapsed());
    }
    let elapsed = started.elapsed();
    assert!(
        worst < Duration::from_secs(1),
        "an agent send took {worst:?}"
    );

    for reader in readers {
        let (seqs, _conn) = reader.await.unwrap();
        assert_eq!(seqs.len() as u64, FRAMES, "a fast viewer missed frames");
        assert!(
            seqs.iter().copied().eq(0..FRAMES),
            "a fast viewer got frames out of order"
        );
    }
    let dropped = metric(&server, "guruconnect_frames_dropped_total").await;
    assert!(dropped > 0.0, "the slow viewer never had frames dropped");
    let got_refresh = common::eventually(WAIT, || async {
        refreshes.load(Ordering::SeqCst) > refreshes_before
    })
    .await;
    assert!(got_refresh, "the agent was never asked for a refresh");
    println!(
        "sent {FRAMES} frames of {SIZE} B in {elapsed:?}, worst send {worst:?}, dropped {dropped}"
    );

    // The slow viewer recovers: every gap it saw is followed by a keyframe, and a new
    // keyframe reaches it once it reads again.
    let mut last: Option<u64> = None;
    let mut gaps = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), slow.recv()).await {
            Ok(Ok(env)) => {
                if let Some(Payload::VideoFrame(f)) = env.payload {
                    if last.is_some_and(|l| f.sequence != l + 1) {
                        gaps += 1;
                        assert!(
                            f.keyframe,
                            "frame {} after a gap is not a keyframe",
                            f.sequence
                        );
                    }
                    last = Some(f.sequence);
                }
            }
            Ok(Err(e)) => panic!("slow viewer was disconnected: {e}"),
            Err(_) => break,
        }
    }
    // It cannot have received everything: the relay dropped frames for it.
    assert!(
        last.is_none_or(|l| l < FRAMES - 1 || gaps > 0),
        "the slow viewer lost nothing"
    );
    println!("slow viewer: last frame {last:?}, {gaps} gaps");
    tx.send_raw(frame_bytes(FRAMES, true, 64)).await.unwrap();
    let mut slow = slow;
    let got = recv_until(&mut slow, "keyframe after recovery", WAIT, |p| {
        matches!(p, Payload::VideoFrame(_))
    })
    .await;
    assert_eq!(frame_seq(&got), Some(FRAMES));
    agent_reader.abort();
}

// ---------------------------------------------------------------- §5 chat, clipboard

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_clipboard_and_modifier_release() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, _) = managed_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let viewer_user = user_with_role(&server, &admin, "viewer").await;
    let mut watcher = viewer(&server, &viewer_user, &sid).await;
    let mut controller = viewer(&server, &admin, &sid).await;
    wait_viewers(&server, &sid, 2).await;

    // Agent chat reaches every viewer.
    agent
        .conn
        .send(chat("hello from the customer"))
        .await
        .unwrap();
    for v in [&mut watcher, &mut controller] {
        let got = recv_until(v, "agent chat", WAIT, |p| matches!(p, Payload::Chat(_))).await;
        let Payload::Chat(c) = got else {
            unreachable!()
        };
        assert_eq!(c.text, "hello from the customer");
    }
    // Viewer chat reaches the agent (and the other viewer), from either mode.
    watcher.send(chat("hi from the watcher")).await.unwrap();
    let got = recv_until(&mut agent.conn, "viewer chat", WAIT, |p| {
        matches!(p, Payload::Chat(_))
    })
    .await;
    let Payload::Chat(c) = got else {
        unreachable!()
    };
    assert_eq!(c.text, "hi from the watcher");
    let got = recv_until(
        &mut controller,
        "chat relayed to the other viewer",
        WAIT,
        |p| matches!(p, Payload::Chat(_)),
    )
    .await;
    let Payload::Chat(c) = got else {
        unreachable!()
    };
    assert_eq!(c.text, "hi from the watcher");

    // Agent clipboard reaches only the controlling viewer.
    agent
        .conn
        .send(clipboard("secret clipboard"))
        .await
        .unwrap();
    let got = recv_until(&mut controller, "clipboard", WAIT, |p| {
        matches!(p, Payload::Clipboard(_))
    })
    .await;
    let Payload::Clipboard(c) = got else {
        unreachable!()
    };
    assert_eq!(c.text, "secret clipboard");
    agent.conn.send(chat("after clipboard")).await.unwrap();
    let got = recv_until(&mut watcher, "chat after clipboard", WAIT, |p| {
        matches!(p, Payload::Chat(_) | Payload::Clipboard(_))
    })
    .await;
    assert!(
        matches!(&got, Payload::Chat(c) if c.text == "after clipboard"),
        "the view-only viewer got {got:?}"
    );
    // Controller clipboard reaches the agent.
    controller.send(clipboard("to the agent")).await.unwrap();
    let got = recv_until(&mut agent.conn, "viewer clipboard", WAIT, |p| {
        matches!(p, Payload::Clipboard(_))
    })
    .await;
    assert!(matches!(got, Payload::Clipboard(c) if c.text == "to the agent"));

    // Chat and clipboard use is audited (who, which way, how long); never the content.
    let audited = common::eventually(WAIT, || async {
        server.events_of("chat.sent").await.len() == 3
            && server.events_of("clipboard.sent").await.len() == 2
    })
    .await;
    assert!(
        audited,
        "chat.sent {:?} clipboard.sent {:?}",
        server.events_of("chat.sent").await,
        server.events_of("clipboard.sent").await
    );
    let from_watcher = server
        .events_of("chat.sent")
        .await
        .into_iter()
        .find(|e| e.event.details["from"] == "technician")
        .expect("a technician's chat event");
    assert_eq!(from_watcher.event.session_id.as_deref(), Some(sid.as_str()));
    assert!(from_watcher.event.username.is_some(), "{from_watcher:?}");
    assert_eq!(
        from_watcher.event.details["chars"],
        "hi from the watcher".len()
    );
    let directions: Vec<_> = server
        .events_of("clipboard.sent")
        .await
        .iter()
        .map(|e| {
            e.event.details["to"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        directions.contains(&"machine".to_owned())
            && directions.contains(&"technicians".to_owned()),
        "{directions:?}"
    );
    let events = server.events().await;
    let dump = serde_json::to_string(&events).unwrap();
    assert!(!dump.contains("hi from the watcher") && !dump.contains("secret clipboard"));

    // A view-only viewer leaving releases nothing; a controller leaving releases modifiers.
    watcher.close().await.ok();
    let got = recv_until(&mut agent.conn, "viewer left", WAIT, |p| {
        matches!(p, Payload::ViewerLeft(_) | Payload::ReleaseModifiers(_))
    })
    .await;
    assert!(matches!(got, Payload::ViewerLeft(_)), "got {got:?}");
    controller.send(key_down(30)).await.unwrap();
    recv_until(&mut agent.conn, "key", WAIT, |p| {
        matches!(p, Payload::KeyEvent(_))
    })
    .await;
    controller.close().await.ok();
    let got = recv_until(&mut agent.conn, "release modifiers", WAIT, |p| {
        matches!(p, Payload::ViewerLeft(_) | Payload::ReleaseModifiers(_))
    })
    .await;
    assert!(
        matches!(got, Payload::ReleaseModifiers(_)),
        "release modifiers must come before viewer left, got {got:?}"
    );
    recv_until(&mut agent.conn, "stop stream", WAIT, |p| {
        matches!(p, Payload::StopStream(_))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controlling_technician_may_end_the_session_others_may_not() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, _) = managed_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let tech = user_with_role(&server, &admin, "technician").await;
    let other_tech = user_with_role(&server, &admin, "technician").await;
    let watcher = user_with_role(&server, &admin, "viewer").await;
    let mut controlling = viewer(&server, &tech, &sid).await;
    let _watching = viewer(&server, &watcher, &sid).await;
    wait_viewers(&server, &sid, 2).await;
    let end = |token: &str| {
        server
            .client()
            .post(server.url(&format!("/api/sessions/{sid}/end")))
            .bearer_auth(token)
            .send()
    };
    // Not in the session, or only watching: refused, and the session goes on.
    assert_eq!(end(&other_tech).await.unwrap().status(), 403);
    assert_eq!(end(&watcher).await.unwrap().status(), 403);
    assert!(server.state.sessions.get(&sid).is_some());

    // The end is audited before anyone is told: a console reading the audit log as soon
    // as its viewer shows "ended" finds the entry (the request's answer may come later).
    let request = tokio::spawn(end(&tech));
    let (seen, _, _) = expect_closed(&mut controlling, WAIT).await;
    let audited_when_told = server.events_of("session.ended_by_user").await.len();
    assert_eq!(
        audited_when_told, 1,
        "the viewer was told before the end was audited"
    );
    assert_eq!(request.await.unwrap().unwrap().status(), 204);
    let (_, code, _) = expect_closed(&mut agent.conn, WAIT).await;
    assert_eq!(code, 1000);
    assert!(
        seen.iter()
            .any(|p| matches!(p, Payload::SessionEnd(e) if e.reason.contains("ended by"))),
        "{:?}",
        kinds(&seen)
    );
    let ended = common::eventually(WAIT, || async {
        server
            .state
            .store
            .get_session(&sid)
            .await
            .is_ok_and(|s| s.status == SessionStatus::Ended)
    })
    .await;
    assert!(ended, "the record is kept and marked ended");
    let events = server.events_of("session.ended_by_user").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.session_id.as_deref(), Some(sid.as_str()));
    // Ended: nothing left to end.
    assert_eq!(end(&admin).await.unwrap().status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sessions_name_the_customer_and_the_machine() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let resp = server
        .client()
        .post(server.url("/api/codes"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "note": "Mrs Jones, ticket 4711" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let code = resp.json::<serde_json::Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = agent_hello(&server, &code, hello("jones-laptop", "")).await;
    let (managed, _) = managed_agent(&server, &admin).await;
    let list: serde_json::Value = server
        .get("/api/sessions", &admin)
        .await
        .json()
        .await
        .unwrap();
    let find = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))
    };
    let attended = find(&agent.session_id);
    assert_eq!(attended["customer"], "Mrs Jones, ticket 4711", "{attended}");
    assert_eq!(
        attended["machine"]["hostname"], "jones-laptop",
        "{attended}"
    );
    assert!(
        !attended.to_string().contains(&code),
        "the full code is listed: {attended}"
    );
    let unattended = find(&managed.session_id);
    assert!(unattended["customer"].is_null(), "{unattended}");
    assert_eq!(unattended["machine"]["hostname"], "managed-host");
}

/// The `ViewerJoined` the agent receives next, as (username, access mode).
async fn next_joined(agent: &mut Agent) -> (String, i32) {
    match recv_until(&mut agent.conn, "viewer joined", WAIT, |p| {
        matches!(p, Payload::ViewerJoined(_))
    })
    .await
    {
        Payload::ViewerJoined(j) => (j.username, j.access_mode),
        _ => unreachable!(),
    }
}

fn customer_end() -> Payload {
    Payload::CustomerEnd(guruconnect_proto::CustomerEnd {})
}

/// The session record once it is ended.
async fn ended_record(server: &TestServer, sid: &str) -> guruconnect_store::SessionRecord {
    let ended = common::eventually(WAIT, || async {
        server
            .state
            .store
            .get_session(sid)
            .await
            .is_ok_and(|s| s.status == SessionStatus::Ended)
    })
    .await;
    assert!(ended, "the session record was not ended");
    server.state.store.get_session(sid).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_person_at_the_machine_ends_an_attended_session_for_everyone() {
    use guruconnect_proto::AccessMode;
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, _) = attended_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let mut controlling = viewer(&server, &admin, &sid).await;
    assert_eq!(
        next_joined(&mut agent).await.1,
        AccessMode::Control as i32,
        "the agent learns who controls"
    );
    let watcher_token = user_with_role(&server, &admin, "viewer").await;
    let mut watching = viewer(&server, &watcher_token, &sid).await;
    assert_eq!(next_joined(&mut agent).await.1, AccessMode::ViewOnly as i32);

    // Before consent there is nothing to end from the indicator: ignored.
    agent.conn.send(customer_end()).await.unwrap();
    sync(&mut agent.conn).await;
    assert!(
        server.state.sessions.get(&sid).is_some(),
        "ended before consent"
    );
    assert!(
        server
            .events_of("session.ended_by_customer")
            .await
            .is_empty()
    );

    agent.conn.send(consent(true)).await.unwrap();
    recv_until(&mut agent.conn, "start stream", WAIT, |p| {
        matches!(p, Payload::StartStream(_))
    })
    .await;
    agent.conn.send(customer_end()).await.unwrap();

    let (seen, code, _) = expect_closed(&mut agent.conn, WAIT).await;
    assert_eq!(code, 1000);
    assert!(
        seen.iter().any(|p| matches!(p, Payload::SessionEnd(e) if e.reason == "ended by the person at the machine")),
        "{:?}",
        kinds(&seen)
    );
    for v in [&mut controlling, &mut watching] {
        let (seen, _, _) = expect_closed(v, WAIT).await;
        assert!(
            seen.iter().any(|p| matches!(p, Payload::SessionEnd(e) if e.reason == "ended by the person at the machine")),
            "{:?}",
            kinds(&seen)
        );
    }
    let record = ended_record(&server, &sid).await;
    assert_eq!(
        record.end_reason.as_deref(),
        Some("ended by the person at the machine")
    );
    let events = server.events_of("session.ended_by_customer").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.session_id.as_deref(), Some(sid.as_str()));
    let gone =
        common::eventually(WAIT, || async { server.state.sessions.get(&sid).is_none() }).await;
    assert!(gone, "the ended session is still in the registry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_person_at_a_managed_machine_ends_the_session_and_the_agent_reconnects_idle() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, key) = managed_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let mut v = viewer(&server, &admin, &sid).await;
    assert_eq!(next_joined(&mut agent).await.0, "admin");

    agent.conn.send(customer_end()).await.unwrap();
    let (_, code, reason) = expect_closed(&mut agent.conn, WAIT).await;
    assert_eq!(
        (code, reason.as_str()),
        (1000, "ended by the person at the machine")
    );
    let (seen, _, _) = expect_closed(&mut v, WAIT).await;
    assert!(
        seen.iter().any(|p| matches!(p, Payload::SessionEnd(_))),
        "{:?}",
        kinds(&seen)
    );
    ended_record(&server, &sid).await;
    assert_eq!(server.events_of("session.ended_by_customer").await.len(), 1);

    // The machine keeps its key: it comes back as a new session with nobody watching.
    let again = agent_hello(&server, &key.key, hello("managed-host", "")).await;
    assert_ne!(again.session_id, sid);
    let live = server.state.sessions.get(&again.session_id).expect("live");
    assert!(live.is_active());
    assert_eq!(live.viewer_count(), 0);
}

// ---------------------------------------------------------------- §5 sessions

#[tokio::test]
async fn a_new_connection_of_the_same_machine_supersedes_the_old_one() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut first, key) = managed_agent(&server, &admin).await;
    let mut v = viewer(&server, &admin, &first.session_id).await;
    let second = agent_hello(&server, &key.key, hello("managed-host", "")).await;
    assert_ne!(second.session_id, first.session_id);
    let (_, _, reason) = expect_closed(&mut first.conn, WAIT).await;
    assert!(reason.contains("superseded"), "{reason}");
    let (seen, _, _) = expect_closed(&mut v, WAIT).await;
    assert!(seen.iter().any(|p| matches!(p, Payload::SessionEnd(_))));
    assert_eq!(
        server.state.sessions.by_agent(&key.agent_id).unwrap().id,
        second.session_id
    );
    // A viewer for the old session is refused (not live), not attached to the new one.
    let (token, _) = mint(&server, &admin, &second.session_id).await;
    assert_rejected(
        connect_viewer(&server.base, &first.session_id, &token).await,
        403,
        "new session's token for the old session",
    );
}

// ---------------------------------------------------------------- §5 heartbeats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_quiet_peers_and_drop_dead_ones() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    // A quiet agent and viewer that keep reading (the client answers pings) stay up
    // well past the 30 s dead-peer limit; one that never reads (never answers) is dropped.
    let (mut alive, _) = managed_agent(&server, &admin).await;
    let mut v = viewer(&server, &admin, &alive.session_id).await;
    let (dead, _) = managed_agent(&server, &admin).await;
    let dead_sid = dead.session_id.clone();
    let dead_conn = dead.conn;

    let watch = Duration::from_secs(42);
    let (agent_res, viewer_res) = tokio::join!(
        collect_for(&mut alive.conn, watch),
        collect_for(&mut v, watch)
    );
    assert!(
        agent_res.1.is_none(),
        "quiet agent dropped: {:?}",
        agent_res.1
    );
    assert!(
        viewer_res.1.is_none(),
        "quiet viewer dropped: {:?}",
        viewer_res.1
    );
    assert!(
        server
            .state
            .sessions
            .get(&alive.session_id)
            .is_some_and(|s| s.is_agent_connected())
    );
    // The dead agent's managed session waits offline for it to come back.
    assert!(
        server
            .state
            .sessions
            .get(&dead_sid)
            .is_none_or(|s| !s.is_agent_connected()),
        "a peer that never answered pings is still connected after {watch:?}"
    );
    drop(dead_conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_text_reaches_the_agent_and_agent_notices_reach_every_viewer() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, _key) = managed_agent(&server, &admin).await;
    let viewer_user = user_with_role(&server, &admin, "viewer").await;
    let tech = user_with_role(&server, &admin, "technician").await;
    let mut watcher = viewer(&server, &viewer_user, &agent.session_id).await;
    let mut controller = viewer(&server, &tech, &agent.session_id).await;
    wait_viewers(&server, &agent.session_id, 2).await;

    controller.send(type_text("Grüße, 1+1=2")).await.unwrap();
    let got = recv_until(&mut agent.conn, "typed text", WAIT, |p| {
        matches!(p, Payload::TypeText(_))
    })
    .await;
    assert!(matches!(got, Payload::TypeText(t) if t.text == "Grüße, 1+1=2"));

    agent
        .conn
        .send(notice("Ctrl+Alt+Del was refused"))
        .await
        .unwrap();
    for v in [&mut watcher, &mut controller] {
        let got = recv_until(v, "agent notice", WAIT, |p| {
            matches!(p, Payload::AgentNotice(_))
        })
        .await;
        assert!(matches!(got, Payload::AgentNotice(n) if n.text == "Ctrl+Alt+Del was refused"));
    }
}

/// A server shutting down ends its live sessions (close 1001 to the agent, `SessionEnd`
/// with the going-away code to viewers) and records why before it exits: the socket tasks
/// are waited for, so the record says "server shutting down", not the next start's
/// "server restarted".
#[tokio::test]
async fn a_shutdown_ends_live_sessions_and_records_it_before_the_server_exits() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, _) = managed_agent(&server, &admin).await;
    let mut viewer = viewer(&server, &admin, &agent.session_id).await;
    let session_id = agent.session_id.clone();
    let server = server.restart().await;
    let end = recv_until(&mut viewer, "session end", WAIT, |p| {
        matches!(p, Payload::SessionEnd(_))
    })
    .await;
    assert!(
        matches!(&end, Payload::SessionEnd(e) if e.code == guruconnect_proto::EndCode::ServerGoingAway as i32),
        "{end:?}"
    );
    match try_recv_until(&mut agent.conn, WAIT, |_| false).await {
        Err(RecvFail::Closed(code, _)) => assert_eq!(code, 1001),
        other => panic!("the agent is closed with 1001: {other:?}"),
    }
    let admin = server.admin_token().await;
    let record: serde_json::Value = server
        .get(&format!("/api/sessions/{session_id}"), &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "ended");
    assert_eq!(record["end_reason"], "server shutting down", "{record}");
}
