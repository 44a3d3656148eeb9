//! Hardening found by the fault-and-abuse run (issue 15): the right status for NUL bytes
//! and WebSocket protocol violations, one code lockout for every door a code opens, and
//! bounded, pruned support-code lists. Runs on SQLite, and on PostgreSQL when
//! `GURUCONNECT_TEST_DATABASE_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "common/relay.rs"]
mod relay_support;

use std::time::Duration;

use common::{TestServer, expect_envelope};
use guruconnect_proto::Envelope;
use guruconnect_server::api::codes::CODE_ALPHABET;
use guruconnect_store::{CodeStatus, DEFAULT_TENANT};
use relay_support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

// ---------------------------------------------------------------- NUL bytes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_are_refused_at_the_boundary_with_an_envelope() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let http = server.client();

    // Unauthenticated: the sign-in name.
    let resp = server.login_response("ad\0min", "whatever").await;
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    // Authenticated writes: a user name, a code note (raw body parsing), a machine label.
    let resp = http
        .post(server.url("/api/users"))
        .bearer_auth(&admin)
        .json(&json!({ "username": "nul\0user", "password": common::random_secret("pw"), "role": "viewer" }))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = http
        .post(server.url("/api/codes"))
        .bearer_auth(&admin)
        .json(&json!({ "note": "ticket\u{0}42" }))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    // In the URL: a search and a path parameter.
    let resp = server.get("/api/machines?q=a%00b", &admin).await;
    expect_envelope(resp, StatusCode::BAD_REQUEST, "bad_request").await;
    let resp = http
        .delete(server.url("/api/codes/ABC%00DEF"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::BAD_REQUEST, "bad_request").await;

    // An escaped backslash followed by `u0000` is no NUL: the request goes through.
    let resp = server.login_response("ad\\u0000min", "whatever").await;
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Nothing was stored, and the server still answers.
    let users: Value = server.get("/api/users", &admin).await.json().await.unwrap();
    assert!(!users.to_string().contains("nul"), "{users}");
    assert_eq!(server.me_status(&admin).await, StatusCode::OK);
}

// ---------------------------------------------------------------- WebSocket protocol

/// Hand-made client frames that break RFC 6455, with the close code each must get.
fn violations() -> Vec<(&'static str, Vec<u8>, u16)> {
    vec![
        // Text frame, masked (zero key), payload not UTF-8.
        ("bad UTF-8", vec![0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe], 1007),
        // Binary frame with RSV1 set (no extension negotiated).
        ("reserved bit", vec![0xC2, 0x81, 0, 0, 0, 0, 0x00], 1002),
        // A client frame without a mask.
        ("unmasked frame", vec![0x82, 0x01, 0x00], 1002),
        // Reserved data opcode 0x3 and reserved control opcode 0xB.
        (
            "unknown data opcode",
            vec![0x83, 0x81, 0, 0, 0, 0, 0x00],
            1002,
        ),
        ("unknown control opcode", vec![0x8B, 0x80, 0, 0, 0, 0], 1002),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_protocol_violations_close_with_1002_or_1007() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let key = new_machine_key(&server, &admin).await;

    for (what, frame, expected) in violations() {
        // Agent, before its hello.
        let mut raw = RawWs::connect(&server, "/ws/agent", Some(&key.key)).await;
        raw.send_raw(&frame).await;
        assert_eq!(
            raw.read_close(WAIT).await,
            expected,
            "agent before hello: {what}"
        );

        // Agent, after its hello.
        let mut raw = RawWs::connect(&server, "/ws/agent", Some(&key.key)).await;
        raw.send_binary(&Envelope::new(hello("raw", "")).to_bytes())
            .await;
        let live = common::eventually(WAIT, || async {
            server
                .state
                .sessions
                .by_agent(&key.agent_id)
                .is_some_and(|s| s.is_agent_connected())
        })
        .await;
        assert!(live, "agent never bound ({what})");
        raw.send_raw(&frame).await;
        assert_eq!(
            raw.read_close(WAIT).await,
            expected,
            "agent after hello: {what}"
        );

        // Viewer of a live session.
        let (agent, _) = managed_agent(&server, &admin).await;
        let (token, _) = mint(&server, &admin, &agent.session_id).await;
        let path = format!("/ws/viewer?session_id={}&token={token}", agent.session_id);
        let mut raw = RawWs::connect(&server, &path, None).await;
        wait_viewers(&server, &agent.session_id, 1).await;
        raw.send_raw(&frame).await;
        assert_eq!(raw.read_close(WAIT).await, expected, "viewer: {what}");
        wait_viewers(&server, &agent.session_id, 0).await;
    }
}

// ---------------------------------------------------------------- one code lockout

async fn agent_with_code(server: &TestServer, code: &str) -> reqwest::Response {
    // Not an upgrade request: the credential (and the lockout) is checked first, and a
    // code is given back when the request turns out not to be a WebSocket.
    server
        .client()
        .get(server.url("/ws/agent"))
        .bearer_auth(code)
        .send()
        .await
        .unwrap()
}

fn assert_locked(resp: &reqwest::Response, what: &str) {
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After ({what})"));
    assert!(retry >= 1, "{what}");
}

async fn code_status(server: &TestServer, code: &str) -> CodeStatus {
    server
        .state
        .store
        .get_code(code)
        .await
        .unwrap()
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validate_lockout_also_closes_the_agent_plane_to_codes() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin).await;
    for _ in 0..10 {
        let resp = validate_code(&server, "ZZZ-ZZZ-ZZZ").await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    assert_locked(&validate_code(&server, &code).await, "validate");

    // The right code on the agent plane: refused, not upgraded, not consumed.
    assert_locked(&agent_with_code(&server, &code).await, "agent, right code");
    assert_rejected(
        guruconnect_client::connect_agent(&server.base, &code).await,
        429,
        "agent upgrade with the right code while locked out",
    );
    assert_eq!(code_status(&server, &code).await, CodeStatus::Pending);

    // Per-agent keys are not codes: a managed machine behind the same address connects.
    let (agent, _) = managed_agent(&server, &admin).await;
    assert!(!agent.session_id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_failures_on_the_agent_plane_count_towards_the_lockout() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin).await;
    // Ten wrong (well-formed) codes on the agent plane.
    for &c in &CODE_ALPHABET[..10] {
        let wrong = format!("ZZZ-ZZZ-ZZ{}", char::from(c));
        let resp = agent_with_code(&server, &wrong).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{wrong}");
    }
    // Now every door a code opens is shut for this address, even for the right code.
    assert_locked(&agent_with_code(&server, &code).await, "agent, right code");
    assert_rejected(
        guruconnect_client::connect_agent(&server.base, &code).await,
        429,
        "agent upgrade with the right code",
    );
    assert_locked(&validate_code(&server, &code).await, "validate");
    assert_eq!(code_status(&server, &code).await, CodeStatus::Pending);
    // A per-agent key is unaffected.
    managed_agent(&server, &admin).await;

    // A success on the agent plane resets the count (as a valid validation does).
    let fresh = TestServer::start().await;
    let admin = fresh.admin_token().await;
    for &c in &CODE_ALPHABET[..9] {
        let wrong = format!("YYY-YYY-YY{}", char::from(c));
        assert_eq!(
            agent_with_code(&fresh, &wrong).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let good = create_code(&fresh, &admin).await;
    let agent = agent_hello(&fresh, &good, hello("customer", "")).await;
    assert!(!agent.session_id.is_empty());
    for &c in &CODE_ALPHABET[..9] {
        let wrong = format!("XXX-XXX-XX{}", char::from(c));
        assert_eq!(
            agent_with_code(&fresh, &wrong).await.status(),
            StatusCode::UNAUTHORIZED,
            "the count restarted after the success"
        );
    }
}

// ---------------------------------------------------------------- bounded code lists

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_list_is_paginated_like_the_other_lists() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(create_code(&server, &admin).await);
    }
    let page: Value = server
        .get("/api/codes?limit=2&offset=0", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 5, "{page}");
    assert_eq!(page["limit"], 2, "{page}");
    assert_eq!(page["offset"], 0, "{page}");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{page}");
    // Masked everywhere but at creation.
    for item in items {
        let shown = item["code"].as_str().unwrap();
        assert!(created.iter().all(|c| c != shown), "{shown}");
    }
    let last: Value = server
        .get("/api/codes?limit=2&offset=4", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(last["items"].as_array().unwrap().len(), 1, "{last}");
    // Defaults: everything here fits on one page.
    let all: Value = server.get("/api/codes", &admin).await.json().await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 5, "{all}");
    assert_eq!(all["limit"], 100, "{all}");
    // Cancelling by the listed id still works.
    let id = all["items"][0]["id"].as_str().unwrap();
    let resp = server
        .client()
        .delete(server.url(&format!("/api/codes/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_codes_are_pruned_after_the_retention_period() {
    let server = TestServer::start_with(|c| c.code_retention_secs = 3_600).await;
    let admin = server.admin_token().await;
    let expired = create_code(&server, &admin).await;
    let cancelled = create_code(&server, &admin).await;
    let resp = server
        .client()
        .delete(server.url(&format!("/api/codes/{cancelled}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    // Expired (default lifetime 600 s), but still within the retention period.
    server.state.clock.advance(Duration::from_secs(600 + 3_000));
    assert_eq!(guruconnect_server::prune_codes(&server.state).await, 0);
    let fresh = create_code(&server, &admin).await;
    server.state.clock.advance(Duration::from_secs(601));
    assert_eq!(guruconnect_server::prune_codes(&server.state).await, 2);
    for gone in [&expired, &cancelled] {
        assert!(
            server.state.store.get_code(gone).await.unwrap().is_none(),
            "{gone} was kept"
        );
    }
    assert_eq!(code_status(&server, &fresh).await, CodeStatus::Pending);
    let (items, total) = server
        .state
        .store
        .list_codes_page(DEFAULT_TENANT, 10, 0)
        .await
        .unwrap();
    assert_eq!((items.len(), total), (1, 1));
}
