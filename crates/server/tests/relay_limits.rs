//! Relay limits (SPEC §4.6, §4.7, §4.14): message caps, the input throttle, malformed
//! messages, and the support-code single-use gate across server instances.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "common/relay.rs"]
mod relay_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestServer;
use guruconnect_client::{ClientError, connect_agent};
use guruconnect_proto::{MAX_AGENT_MESSAGE, MAX_VIEWER_MESSAGE, Payload};
use guruconnect_store::{DEFAULT_TENANT, EventFilter};
use relay_support::*;
use secrecy::SecretString;

/// Sends one raw message, ignoring a send error (the server may close mid-write).
async fn send_oversized(conn: &mut guruconnect_client::Connection, len: usize) {
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        conn.send_raw(Bytes::from(vec![0u8; len])),
    )
    .await;
}

// ---------------------------------------------------------------- §4.6 message caps

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_messages_over_4_mib_close_with_1009() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, _) = managed_agent(&server, &admin).await;
    let mut v = viewer(&server, &admin, &agent.session_id).await;
    wait_viewers(&server, &agent.session_id, 1).await;

    // Just under the cap: a ~3.9 MiB frame reaches the viewer intact.
    let big = MAX_AGENT_MESSAGE - 100 * 1024;
    agent.conn.send(frame(1, true, big)).await.unwrap();
    let got = recv_until(&mut v, "3.9 MiB frame", Duration::from_secs(10), |p| {
        matches!(p, Payload::VideoFrame(_))
    })
    .await;
    let Payload::VideoFrame(f) = got else {
        unreachable!()
    };
    assert_eq!((f.sequence, f.data.len()), (1, big));

    // The whole message at exactly the cap is still accepted.
    // Build a frame whose encoded envelope is exactly MAX_AGENT_MESSAGE bytes.
    let mut data_len = MAX_AGENT_MESSAGE - 64;
    let exact = loop {
        let bytes = frame_bytes(2, false, data_len);
        if bytes.len() == MAX_AGENT_MESSAGE {
            break bytes;
        }
        data_len = data_len + MAX_AGENT_MESSAGE - bytes.len();
    };
    agent.conn.send_raw(exact).await.unwrap();
    let got = recv_until(&mut v, "frame at the cap", Duration::from_secs(10), |p| {
        matches!(p, Payload::VideoFrame(_))
    })
    .await;
    assert_eq!(frame_seq(&got), Some(2));

    // One byte over: the agent is closed, the session ends. (The protocol client cannot
    // show the close code here: its unsent 4 MiB fail first; see the raw test below.)
    send_oversized(&mut agent.conn, MAX_AGENT_MESSAGE + 1).await;
    let (_, code, reason) = expect_closed(&mut agent.conn, Duration::from_secs(10)).await;
    assert!(
        code == 1009 || code == 0,
        "agent close code {code} ({reason})"
    );
    let (seen, _, _) = expect_closed(&mut v, WAIT).await;
    assert!(
        !seen.iter().any(|p| matches!(p, Payload::VideoFrame(_))),
        "nothing of the oversized message reached the viewer"
    );
    // The registry forgets the session once its agent task has finished its clean-up
    // (audit writes included), which may be just after the viewer's socket closed.
    let gone = common::eventually(WAIT, || async {
        server.state.sessions.get(&agent.session_id).is_none()
    })
    .await;
    assert!(gone, "the ended session is still in the registry");
}

/// The cap is enforced on the frame header, before the payload is buffered: a client that
/// announces 4 MiB + 1 and sends only a few bytes of it gets close code 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_with_1009_before_the_payload_arrives() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;

    // Agent, before its hello.
    let key = new_machine_key(&server, &admin).await;
    let mut raw = RawWs::connect(&server, "/ws/agent", Some(&key.key)).await;
    raw.send_partial(MAX_AGENT_MESSAGE + 1, 1024).await;
    assert_eq!(raw.read_close(WAIT).await, 1009, "agent, before hello");
    assert!(server.state.sessions.by_agent(&key.agent_id).is_none());

    // Agent, after its hello, in a watched session.
    let mut raw = RawWs::connect(&server, "/ws/agent", Some(&key.key)).await;
    raw.send_binary(&guruconnect_proto::Envelope::new(hello("raw", "")).to_bytes())
        .await;
    let live = common::eventually(WAIT, || async {
        server.state.sessions.by_agent(&key.agent_id).is_some()
    })
    .await;
    assert!(live);
    let sid = server
        .state
        .sessions
        .by_agent(&key.agent_id)
        .unwrap()
        .id
        .clone();
    let mut v = viewer(&server, &admin, &sid).await;
    raw.send_partial(MAX_AGENT_MESSAGE + 1, 1024).await;
    assert_eq!(raw.read_close(WAIT).await, 1009, "agent, after hello");
    let (seen, _, _) = expect_closed(&mut v, WAIT).await;
    assert!(seen.iter().any(|p| matches!(p, Payload::SessionEnd(_))));

    // Viewer: 64 KiB + 1 announced, 100 bytes sent.
    let (agent, _) = managed_agent(&server, &admin).await;
    let (token, _) = mint(&server, &admin, &agent.session_id).await;
    let path = format!("/ws/viewer?session_id={}&token={token}", agent.session_id);
    let mut raw = RawWs::connect(&server, &path, None).await;
    raw.send_partial(MAX_VIEWER_MESSAGE + 1, 100).await;
    assert_eq!(raw.read_close(WAIT).await, 1009, "viewer");
    wait_viewers(&server, &agent.session_id, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_messages_over_64_kib_close_with_1009() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, _) = managed_agent(&server, &admin).await;
    let mut v = viewer(&server, &admin, &agent.session_id).await;
    wait_viewers(&server, &agent.session_id, 1).await;

    // Just under the cap: a ~60 KiB chat reaches the agent.
    let text = "c".repeat(MAX_VIEWER_MESSAGE - 4096);
    v.send(Payload::Chat(guruconnect_proto::ChatMessage {
        text: text.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let got = recv_until(&mut agent.conn, "60 KiB chat", WAIT, |p| {
        matches!(p, Payload::Chat(_))
    })
    .await;
    assert!(matches!(got, Payload::Chat(c) if c.text == text));

    send_oversized(&mut v, MAX_VIEWER_MESSAGE + 1).await;
    let (_, code, reason) = expect_closed(&mut v, WAIT).await;
    assert_eq!(code, 1009, "viewer close code ({reason})");
    // Only the viewer goes; the agent's session lives on.
    wait_viewers(&server, &agent.session_id, 0).await;
    let (seen, close) = collect_for(&mut agent.conn, QUIET).await;
    assert!(close.is_none());
    assert!(!seen.iter().any(is_viewer_input), "{:?}", kinds(&seen));
}

/// The viewer's close code must not depend on task scheduling: repeat the oversized
/// message on a multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn viewer_close_codes_are_reliable() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (agent, _) = managed_agent(&server, &admin).await;
    let mut codes = Vec::new();
    for i in 0..30 {
        let mut v = viewer(&server, &admin, &agent.session_id).await;
        if i % 2 == 0 {
            send_oversized(&mut v, MAX_VIEWER_MESSAGE + 1).await;
            let (_, code, _) = expect_closed(&mut v, WAIT).await;
            codes.push((1009, code));
        } else {
            v.send_raw(Bytes::from_static(&[0x12, 0x05, 0x01]))
                .await
                .unwrap();
            let (_, code, _) = expect_closed(&mut v, WAIT).await;
            codes.push((1007, code));
        }
    }
    let wrong: Vec<_> = codes.iter().filter(|(want, got)| want != got).collect();
    assert!(wrong.is_empty(), "wrong close codes (want, got): {wrong:?}");
    drop(agent);
}

// ---------------------------------------------------------------- §4.7 input throttle

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_input_is_throttled_to_200_per_second() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (agent, _) = managed_agent(&server, &admin).await;
    let mut v = viewer(&server, &admin, &agent.session_id).await;
    wait_viewers(&server, &agent.session_id, 1).await;
    let (_tx, mut rx) = agent.conn.split();

    // Count key events at the agent, with their arrival time.
    let counter = tokio::spawn(async move {
        let mut times = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2500) {
            let left = Duration::from_millis(2500).saturating_sub(start.elapsed());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Ok(env)) => {
                    if matches!(env.payload, Some(Payload::KeyEvent(_))) {
                        times.push(Instant::now());
                    }
                }
                Ok(Err(e)) => panic!("agent socket failed: {e}"),
                Err(_) => break,
            }
        }
        times
    });

    let before = metric(&server, "guruconnect_input_dropped_total").await;
    let start = Instant::now();
    for i in 0..1000u32 {
        v.send(key_down(i)).await.unwrap();
    }
    let send_time = start.elapsed();
    let times = counter.await.unwrap();
    let in_first_second = times
        .iter()
        .filter(|t| t.duration_since(start) <= Duration::from_secs(1))
        .count();
    // 200 burst + 200/s refill over the sending time, plus a little slack.
    let allowed = 200.0 + 200.0 * send_time.as_secs_f64().min(1.0) + 10.0;
    println!(
        "sent 1000 in {send_time:?}; agent got {in_first_second} in the first second, {} in total",
        times.len()
    );
    assert!(in_first_second > 0, "no input got through at all");
    assert!(
        (in_first_second as f64) <= allowed,
        "{in_first_second} key events in the first second (allowed {allowed:.0})"
    );
    assert!(
        send_time > Duration::from_millis(500) || in_first_second <= 220,
        "{in_first_second} > 220 though all 1000 were sent in {send_time:?}"
    );
    // Excess was dropped, not queued: nothing more trickles in after the burst.
    let total_allowed = 200.0 + 200.0 * send_time.as_secs_f64() + 10.0;
    assert!(
        (times.len() as f64) <= total_allowed,
        "{} key events in total (allowed {total_allowed:.0})",
        times.len()
    );
    let after = metric(&server, "guruconnect_input_dropped_total").await;
    assert!(
        after - before >= (1000 - times.len()) as f64,
        "input_dropped {before} -> {after}"
    );
}

// ---------------------------------------------------------------- malformed messages

#[tokio::test]
async fn malformed_agent_messages_close_with_1007_and_are_audited() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let garbage = Bytes::from_static(&[0x12, 0x05, 0x01]);

    // After the hello (managed session with a viewer).
    let (mut agent, _) = managed_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let mut v = viewer(&server, &admin, &sid).await;
    agent.conn.send_raw(garbage.clone()).await.unwrap();
    let (_, code, reason) = expect_closed(&mut agent.conn, WAIT).await;
    assert_eq!(code, 1007, "close code ({reason})");
    let (seen, _, _) = expect_closed(&mut v, WAIT).await;
    assert!(seen.iter().any(|p| matches!(p, Payload::SessionEnd(_))));
    let events = server
        .state
        .store
        .list_events(&EventFilter {
            tenant_id: DEFAULT_TENANT.to_owned(),
            event_type: Some("relay.malformed_message".to_owned()),
            limit: 50,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.session_id.as_deref(), Some(sid.as_str()));

    // As the first message of a support-code agent: 1007, audited, code burnt.
    let code = create_code(&server, &admin).await;
    let mut conn = connect_agent(&server.base, &code).await.unwrap();
    conn.send_raw(garbage.clone()).await.unwrap();
    let (_, close_code, reason) = expect_closed(&mut conn, WAIT).await;
    assert_eq!(close_code, 1007, "pre-hello close code ({reason})");
    assert_eq!(server.events_of("relay.malformed_message").await.len(), 2);
    assert_rejected(connect_agent(&server.base, &code).await, 401, "code reused");

    // A well-formed message that is not a hello, first: policy close, nothing bound.
    let key = new_machine_key(&server, &admin).await;
    let mut conn = connect_agent(&server.base, &key.key).await.unwrap();
    conn.send(frame(1, true, 8)).await.unwrap();
    let (_, close_code, _) = expect_closed(&mut conn, WAIT).await;
    assert_eq!(close_code, 1008);
    assert!(server.state.sessions.by_agent(&key.agent_id).is_none());

    // A malformed viewer message closes that viewer with 1007, audited.
    let (mut agent, _) = managed_agent(&server, &admin).await;
    let mut v = viewer(&server, &admin, &agent.session_id).await;
    v.send_raw(garbage).await.unwrap();
    let (_, close_code, _) = expect_closed(&mut v, WAIT).await;
    assert_eq!(close_code, 1007);
    assert_eq!(server.events_of("relay.malformed_message").await.len(), 3);
    let (_, close) = collect_for(&mut agent.conn, QUIET).await;
    assert!(close.is_none(), "the agent must survive a viewer's garbage");
}

// ---------------------------------------------------------------- §4.14 single use

async fn race(servers: &[&TestServer], code: &str, per_server: usize) -> (usize, Vec<u16>) {
    let mut tasks = Vec::new();
    for server in servers {
        for _ in 0..per_server {
            let base = server.base.clone();
            let code = code.to_owned();
            tasks.push(tokio::spawn(
                async move { connect_agent(&base, &code).await },
            ));
        }
    }
    let mut won = 0;
    let mut refused = Vec::new();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(conn) => {
                won += 1;
                winners.push(conn);
            }
            Err(ClientError::Rejected { status, .. }) => refused.push(status),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    drop(winners);
    (won, refused)
}

/// Previews `code` through `/api/codes/validate`, which a pending code passes.
async fn preview_code(server: &TestServer, code: &str) {
    let resp = server
        .client()
        .post(server.url("/api/codes/validate"))
        .json(&serde_json::json!({ "code": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK, "preview of {code}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_is_consumed_once_even_across_instances() {
    // One instance, many concurrent agents (any backend).
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    for round in 0..5 {
        let code = create_code(&server, &admin).await;
        let (won, refused) = race(&[&server], &code, 4).await;
        assert_eq!(won, 1, "round {round}: {won} agents bound one code");
        assert!(refused.iter().all(|s| *s == 401), "{refused:?}");
    }

    // Two instances on one PostgreSQL database.
    if !common::postgres_selected() {
        println!("skipping the two-instance race: GURUCONNECT_TEST_DATABASE_URL is not set");
        return;
    }
    let url = guruconnect_store::testing::test_database_url()
        .await
        .unwrap();
    let secret = "s".repeat(40);
    let configure = |url: String, secret: String| {
        move |c: &mut guruconnect_server::Config| {
            c.database_url = Some(SecretString::from(url));
            c.signing_secret = Some(SecretString::from(secret));
        }
    };
    let a = TestServer::start_with(configure(url.clone(), secret.clone())).await;
    let b = TestServer::start_with(configure(url.clone(), secret.clone())).await;
    let admin = a.admin_token().await;
    // Same database, same secret: A's token works on B.
    assert_eq!(b.me_status(&admin).await, reqwest::StatusCode::OK);
    for round in 0..8 {
        let code = create_code(&a, &admin).await;
        // Each instance keeps its own per-address lockout, and a lost race counts as a
        // failed code there: a successful preview on both (what a customer's browser does)
        // keeps rounds where one instance only ever loses from adding up to a lockout.
        for server in [&a, &b] {
            preview_code(server, &code).await;
        }
        let (won, refused) = race(&[&a, &b], &code, 2).await;
        assert_eq!(
            won, 1,
            "round {round}: {won} agents bound one code across instances"
        );
        assert_eq!(refused, vec![401; 3], "round {round}");
    }
    // Consumed on A: refused on B afterwards.
    let code = create_code(&a, &admin).await;
    let _agent = agent_hello(&a, &code, hello("pc", "")).await;
    assert_rejected(
        connect_agent(&b.base, &code).await,
        401,
        "code used on A, tried on B",
    );
}
