//! Relay authentication and authorization (SPEC §4.1–4.4, §4.13, §3, §2): what each plane
//! accepts, what it refuses before the upgrade, and that a refusal changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "common/relay.rs"]
mod relay_support;

use std::time::Duration;

use common::TestServer;
use guruconnect_client::{connect_agent, connect_viewer};
use guruconnect_proto::Payload;
use guruconnect_server::auth::tokens::{Claims, TokenService, now_secs};
use guruconnect_store::{CodeStatus, DEFAULT_TENANT, IssuedToken, SessionStatus, TokenKind};
use relay_support::*;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::Value;

/// Sessions recorded in the store (open and ended).
async fn session_count(server: &TestServer) -> usize {
    server
        .state
        .store
        .list_sessions(DEFAULT_TENANT, false, 1000)
        .await
        .unwrap()
        .len()
}

async fn machine_count(server: &TestServer) -> i64 {
    server
        .state
        .store
        .list_machines(DEFAULT_TENANT, 1000, 0)
        .await
        .unwrap()
        .1
}

/// Waits until a session's agent is gone: the session ended, or (managed sessions) it
/// waits offline for its agent to return.
async fn wait_gone(server: &TestServer, session_id: &str) -> bool {
    common::eventually(WAIT, || async {
        server
            .state
            .sessions
            .get(session_id)
            .is_none_or(|s| !s.is_agent_connected())
    })
    .await
}

// ---------------------------------------------------------------- §4.1 agent plane

#[tokio::test]
async fn agent_plane_refuses_user_jwts_and_bad_keys() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let tech = user_with_role(&server, &admin, "technician").await;

    // A revoked per-agent key (its machine exists, pre-provisioned).
    let revoked = new_machine_key(&server, &admin).await;
    let resp = server
        .client()
        .delete(server.url(&format!(
            "/api/machines/{}/keys/{}",
            revoked.agent_id, revoked.key_id
        )))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A viewer token is not an agent credential either; needs a live session to mint.
    let (mut live, _) = managed_agent(&server, &admin).await;
    let (viewer_token, _) = mint(&server, &admin, &live.session_id).await;

    let sessions_before = session_count(&server).await;
    let machines_before = machine_count(&server).await;
    let failures_before = metric(&server, "guruconnect_auth_failures_total").await;

    let forged_key = format!("cak_{}", "A".repeat(43));
    let cases: Vec<(&str, String)> = vec![
        ("admin login JWT", admin.clone()),
        ("technician login JWT", tech.clone()),
        ("viewer token", viewer_token),
        ("random string", "definitely-not-a-credential".into()),
        ("empty credential", String::new()),
        ("forged cak_ key", forged_key),
        ("revoked per-agent key", revoked.key.clone()),
        ("malformed code", "ABC-DEF-GH0".into()),
        ("unknown code", "ABC-DEF-GHJ".into()),
    ];
    for (what, credential) in &cases {
        assert_rejected(connect_agent(&server.base, credential).await, 401, what);
    }
    // No Authorization header at all (plain HTTP, no upgrade headers).
    let resp = server
        .client()
        .get(server.url("/ws/agent"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Nothing happened: no session, no machine, every refusal counted.
    assert_eq!(session_count(&server).await, sessions_before);
    assert_eq!(machine_count(&server).await, machines_before);
    let failures_after = metric(&server, "guruconnect_auth_failures_total").await;
    assert!(
        failures_after >= failures_before + cases.len() as f64,
        "auth failures {failures_before} -> {failures_after}"
    );
    // The live agent saw nothing of it.
    let (seen, close) = collect_for(&mut live.conn, QUIET).await;
    assert!(close.is_none(), "live agent closed: {close:?}");
    assert!(
        !seen.iter().any(|p| matches!(p, Payload::SessionInfo(_))),
        "{:?}",
        kinds(&seen)
    );
}

// ---------------------------------------------------------------- §4.2–4.4 viewer plane

#[tokio::test]
async fn viewer_plane_refuses_login_jwts_foreign_sessions_and_bad_tokens() {
    let server = TestServer::start_with(|c| {
        c.signing_secret = Some(SecretString::from("k".repeat(48)));
    })
    .await;
    let admin = server.admin_token().await;
    let (mut a, _) = managed_agent(&server, &admin).await;
    let (mut b, _) = managed_agent(&server, &admin).await;

    // §4.2: a login JWT on /ws/viewer, either as query token or bearer header.
    assert_rejected(
        connect_viewer(&server.base, &a.session_id, &admin).await,
        401,
        "login JWT as viewer token",
    );
    let resp = server
        .client()
        .get(server.url(&format!("/ws/viewer?session_id={}", a.session_id)))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "login JWT as bearer"
    );

    // §4.3: a valid token for A used for live session B.
    let (token_a, _) = mint(&server, &admin, &a.session_id).await;
    assert_rejected(
        connect_viewer(&server.base, &b.session_id, &token_a).await,
        403,
        "token of A used for B",
    );

    // §4.4: the same claims signed with another secret.
    let claims = server
        .state
        .tokens
        .verify(&token_a)
        .expect("own token verifies");
    let other = TokenService::new(&SecretString::from("z".repeat(48)));
    let forged = other.sign(&claims).unwrap();
    assert_rejected(
        connect_viewer(&server.base, &a.session_id, &forged).await,
        401,
        "token signed with another secret",
    );

    // §4.4: an expired token, otherwise valid (signed with the server's key, recorded).
    let record = |claims: &Claims| IssuedToken {
        jti: claims.jti.clone(),
        user_id: claims.sub.clone(),
        kind: TokenKind::Viewer,
        parent_jti: None,
        issued_at: claims.iat * 1000,
        expires_at: claims.exp * 1000,
        revoked_at: None,
    };
    let mut expired = claims.clone();
    expired.jti = uuid::Uuid::new_v4().to_string();
    expired.iat = now_secs() - 600;
    expired.exp = now_secs() - 60;
    server
        .state
        .store
        .record_token(&record(&expired))
        .await
        .unwrap();
    let expired_token = server.state.tokens.sign(&expired).unwrap();
    // The same construction with a future expiry is accepted, so only `exp` differs.
    let mut fresh = claims.clone();
    fresh.jti = uuid::Uuid::new_v4().to_string();
    fresh.exp = now_secs() + 120;
    server
        .state
        .store
        .record_token(&record(&fresh))
        .await
        .unwrap();
    let fresh_token = server.state.tokens.sign(&fresh).unwrap();
    // The secret configured is the one in use: a TokenService built from it accepts.
    let same = TokenService::new(&SecretString::from("k".repeat(48)));
    assert!(same.verify(&fresh_token).is_some());

    assert_rejected(
        connect_viewer(&server.base, &a.session_id, &expired_token).await,
        401,
        "expired viewer token",
    );
    // A token signed by us but never recorded (unknown jti) is refused too.
    let mut unknown = claims.clone();
    unknown.jti = uuid::Uuid::new_v4().to_string();
    let unknown_token = server.state.tokens.sign(&unknown).unwrap();
    assert_rejected(
        connect_viewer(&server.base, &a.session_id, &unknown_token).await,
        401,
        "unrecorded viewer token",
    );
    // A recorded login-purpose token carrying a session id is still not a viewer token.
    let mut login_like = claims.clone();
    login_like.jti = uuid::Uuid::new_v4().to_string();
    login_like.purpose = guruconnect_server::auth::tokens::Purpose::Login;
    server
        .state
        .store
        .record_token(&record(&login_like))
        .await
        .unwrap();
    let login_like_token = server.state.tokens.sign(&login_like).unwrap();
    assert_rejected(
        connect_viewer(&server.base, &a.session_id, &login_like_token).await,
        401,
        "login-purpose token with a session id",
    );

    // Nothing happened: no viewer joined either session, neither agent heard of one.
    for agent in [&mut a, &mut b] {
        let live = server.state.sessions.get(&agent.session_id).unwrap();
        assert_eq!(live.viewer_count(), 0);
        let (seen, close) = collect_for(&mut agent.conn, QUIET).await;
        assert!(close.is_none());
        assert!(
            !seen
                .iter()
                .any(|p| matches!(p, Payload::ViewerJoined(_) | Payload::StartStream(_))),
            "{:?}",
            kinds(&seen)
        );
    }
    assert!(server.events_of("viewer.joined").await.is_empty());

    // Control: the fresh hand-made token and the minted one do work.
    let mut v = connect_viewer(&server.base, &a.session_id, &fresh_token)
        .await
        .expect("fresh token accepted");
    recv_until(&mut v, "session state", WAIT, |p| {
        matches!(p, Payload::SessionState(_))
    })
    .await;
    let mut v2 = connect_viewer(&server.base, &a.session_id, &token_a)
        .await
        .expect("minted token accepted for its own session");
    recv_until(&mut v2, "session state", WAIT, |p| {
        matches!(p, Payload::SessionState(_))
    })
    .await;
}

// ---------------------------------------------------------------- §3 viewer-token mint

#[tokio::test]
async fn viewer_token_access_modes_and_logout_revocation() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (agent, _) = managed_agent(&server, &admin).await;
    let sid = agent.session_id.clone();

    let viewer_user = user_with_role(&server, &admin, "viewer").await;
    let tech = user_with_role(&server, &admin, "technician").await;
    for (token, expected) in [
        (&viewer_user, "view_only"),
        (&tech, "control"),
        (&admin, "control"),
    ] {
        let (vt, mode) = mint(&server, token, &sid).await;
        assert_eq!(mode, expected);
        let claims = server.state.tokens.verify(&vt).unwrap();
        assert_eq!(claims.session_id.as_deref(), Some(sid.as_str()));
        assert!(claims.exp - claims.iat <= 300, "viewer TTL is 5 minutes");
        // The relay tells the viewer the same mode.
        let mut conn = connect_viewer(&server.base, &sid, &vt).await.unwrap();
        let state = recv_until(&mut conn, "session state", WAIT, |p| {
            matches!(p, Payload::SessionState(_))
        })
        .await;
        let Payload::SessionState(state) = state else {
            unreachable!()
        };
        let want = if expected == "control" {
            guruconnect_proto::AccessMode::Control
        } else {
            guruconnect_proto::AccessMode::ViewOnly
        };
        assert_eq!(state.access_mode, want as i32);
    }

    // A session that does not exist: 404, and no token recorded for it.
    let resp = mint_response(&server, &tech, &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // An agent key or a viewer token cannot mint.
    let (vt, _) = mint(&server, &tech, &sid).await;
    let resp = mint_response(&server, &vt, &sid).await;
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "viewer token minting"
    );

    // Logout revokes the viewer tokens the user minted (unused ones included).
    let (unused, _) = mint(&server, &tech, &sid).await;
    let resp = server
        .client()
        .post(server.url("/api/auth/logout"))
        .bearer_auth(&tech)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "logout: {}", resp.status());
    assert_rejected(
        connect_viewer(&server.base, &sid, &unused).await,
        401,
        "viewer token after its minter logged out",
    );
    assert_rejected(
        connect_viewer(&server.base, &sid, &vt).await,
        401,
        "second viewer token after logout",
    );
    // Another user's viewer tokens are unaffected.
    let (admins, _) = mint(&server, &admin, &sid).await;
    connect_viewer(&server.base, &sid, &admins)
        .await
        .expect("other users' tokens keep working");
}

// ---------------------------------------------------------------- §4.13 key binds machine

#[tokio::test]
async fn a_key_for_machine_x_cannot_take_over_machine_y() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;

    // Y1: created by a support-code session with a machine uid.
    let code = create_code(&server, &admin).await;
    let y1 = agent_hello(&server, &code, hello("host-y1", "uid-y1")).await;
    let y1_id = y1.agent_id.clone();
    let y1_session = y1.session_id.clone();
    y1.conn.close().await.ok();
    // Y2: a keyed machine that connected with its own uid.
    let y2_key = new_machine_key(&server, &admin).await;
    let y2 = agent_hello(&server, &y2_key.key, hello("host-y2", "uid-y2")).await;
    assert_eq!(y2.agent_id, y2_key.agent_id);
    let y2_session = y2.session_id.clone();
    // The keyed agent's own claimed uid is ignored too (§4.13).
    let y2_row = server
        .state
        .store
        .get_machine(&y2_key.agent_id)
        .await
        .unwrap();
    assert_eq!(
        y2_row.machine_uid, None,
        "a keyed agent's claimed uid is ignored"
    );
    assert_eq!(y2_row.hostname, "host-y2");

    assert!(wait_gone(&server, &y1_session).await);
    let y1_before = server.state.store.get_machine(&y1_id).await.unwrap();
    assert_eq!(y1_before.machine_uid.as_deref(), Some("uid-y1"));

    let x_key = new_machine_key(&server, &admin).await;
    for (target, uid, host) in [
        (&y1_id, "uid-y1", "host-y1"),
        (&y2_key.agent_id, "uid-y2", "host-y2"),
    ] {
        let y_before = server.state.store.get_machine(target).await.unwrap();
        let mut claim = hello(host, uid);
        if let Payload::AgentHello(h) = &mut claim {
            h.agent_id = target.clone();
            h.os = "claimed-os".into();
        }
        let mut x = agent_hello(&server, &x_key.key, claim).await;
        assert_eq!(
            x.agent_id, x_key.agent_id,
            "the session belongs to the key's machine"
        );
        let record = server.state.store.get_session(&x.session_id).await.unwrap();
        assert_eq!(record.agent_id, x_key.agent_id);
        let live = server.state.sessions.get(&x.session_id).unwrap();
        assert_eq!(live.agent_id, x_key.agent_id);

        let y_after = server.state.store.get_machine(target).await.unwrap();
        assert_eq!(
            y_after.machine_uid, y_before.machine_uid,
            "Y's uid unchanged"
        );
        assert_eq!(
            y_after.hostname, y_before.hostname,
            "Y's hostname unchanged"
        );
        assert_eq!(y_after.os, y_before.os, "Y's os unchanged");
        assert_eq!(y_after.last_seen, y_before.last_seen, "Y not touched");
        let x_row = server
            .state
            .store
            .get_machine(&x_key.agent_id)
            .await
            .unwrap();
        assert_eq!(x_row.hostname, host, "X's row takes the reported hostname");
        assert_eq!(x_row.machine_uid, None, "X never takes Y's uid");
        assert_eq!(x_row.os, "claimed-os");
        // Y's live session (Y2 is connected) is not superseded by X.
        sync(&mut x.conn).await;
        x.conn.close().await.ok();
        assert!(wait_gone(&server, &x.session_id).await);
    }
    assert!(
        server.state.sessions.get(&y2_session).is_some(),
        "Y2's live session must not be ended by X's connections"
    );
    assert_eq!(
        server.state.sessions.by_agent(&y2_key.agent_id).unwrap().id,
        y2_session
    );
    // A viewer joining Y2's session reaches Y2's agent, not X.
    let events = server.events_of("session.created").await;
    assert!(events.iter().all(|e| {
        e.event.agent_id.as_deref() != Some(y1_id.as_str())
            || e.event.session_id.as_deref() == Some(y1_session.as_str())
    }));
}

// ---------------------------------------------------------------- §2 support codes

#[tokio::test]
async fn support_codes_expire_cancel_and_validate_without_consuming() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;

    // Validation does not consume: twice, then the agent binds.
    let code = create_code(&server, &admin).await;
    for _ in 0..2 {
        let resp = validate_code(&server, &code).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["valid"], true);
    }
    // Typing variants validate too.
    let typed = code.replace('-', " ").to_lowercase();
    assert_eq!(
        validate_code(&server, &typed).await.status(),
        StatusCode::OK
    );
    let agent = agent_hello(&server, &code, hello("pc", "")).await;
    // Consumed now: validation says so, and a second agent is refused before upgrade.
    assert_eq!(
        validate_code(&server, &code).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_rejected(connect_agent(&server.base, &code).await, 401, "used code");
    let row = server.state.store.get_code(&code).await.unwrap().unwrap();
    assert_eq!(row.session_id.as_deref(), Some(agent.session_id.as_str()));

    // Expiry on the server clock.
    let expiring = create_code(&server, &admin).await;
    server.state.clock.advance(Duration::from_secs(601));
    assert_eq!(
        validate_code(&server, &expiring).await.status(),
        StatusCode::NOT_FOUND,
        "an expired code does not validate"
    );
    assert_rejected(
        connect_agent(&server.base, &expiring).await,
        401,
        "expired code",
    );
    let sessions = server
        .state
        .store
        .list_sessions(DEFAULT_TENANT, false, 100)
        .await
        .unwrap();
    assert!(
        sessions
            .iter()
            .all(|s| s.code.as_deref() != Some(expiring.as_str())),
        "no session for an expired code"
    );

    // Cancellation.
    let cancelled = create_code(&server, &admin).await;
    let resp = server
        .client()
        .delete(server.url(&format!("/api/codes/{cancelled}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        validate_code(&server, &cancelled).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_rejected(
        connect_agent(&server.base, &cancelled).await,
        401,
        "cancelled code",
    );
    assert!(!server.events_of("code.cancelled").await.is_empty());
    // A viewer-role user cannot create or cancel codes.
    let viewer_user = user_with_role(&server, &admin, "viewer").await;
    let resp = server
        .client()
        .post(server.url("/api/codes"))
        .bearer_auth(&viewer_user)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn code_validation_is_rate_limited_per_ip() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin).await;
    for i in 0..15 {
        assert_eq!(
            validate_code(&server, &code).await.status(),
            StatusCode::OK,
            "validation {i} within the 15/min quota"
        );
    }
    let resp = validate_code(&server, &code).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Validation never consumed it.
    agent_hello(&server, &code, hello("pc", "")).await;
}

#[tokio::test]
async fn ten_failed_code_validations_lock_the_ip_out() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin).await;
    for i in 0..10 {
        let guess = format!("ZZZ-ZZZ-Z{:02}", i + 22)
            .replace('0', "2")
            .replace('1', "3");
        assert_eq!(
            validate_code(&server, &guess).await.status(),
            StatusCode::NOT_FOUND,
            "failure {i}"
        );
    }
    let resp = validate_code(&server, &code).await;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "locked out even for a valid code"
    );
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 60, "lockout is 15 minutes, Retry-After {retry}");
    // The code itself is intact, but this address may not use it on the agent plane
    // either (one lockout for every door a code opens; see tests/hardening.rs).
    assert_rejected(
        connect_agent(&server.base, &code).await,
        429,
        "agent with the code from the locked-out address",
    );
    let row = server.state.store.get_code(&code).await.unwrap().unwrap();
    assert_eq!(row.status, CodeStatus::Pending);
}

// ---------------------------------------------------------------- key revocation

#[tokio::test]
async fn revoking_a_key_closes_its_live_agent() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, key) = managed_agent(&server, &admin).await;
    let other_key = issue_key(&server, &admin, &key.agent_id).await;

    // The keys list never shows the plaintext or its hash.
    let resp = server
        .get(&format!("/api/machines/{}/keys", key.agent_id), &admin)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(key.key.as_bytes()))
    };
    for secret in [&key.key, &other_key.key, &hash] {
        assert!(
            !text.contains(secret.as_str()),
            "keys list leaks a secret: {text}"
        );
    }
    assert!(
        !text.contains("key_hash") && !text.contains("agent_key"),
        "{text}"
    );
    let list: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(list.len(), 2);
    // A non-admin cannot list or revoke.
    let tech = user_with_role(&server, &admin, "technician").await;
    let resp = server
        .get(&format!("/api/machines/{}/keys", key.agent_id), &tech)
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = server
        .client()
        .delete(server.url(&format!(
            "/api/machines/{}/keys/{}",
            key.agent_id, key.key_id
        )))
        .bearer_auth(&tech)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (seen, close) = collect_for(&mut agent.conn, QUIET).await;
    assert!(
        close.is_none(),
        "a refused revocation closed the agent: {:?}",
        kinds(&seen)
    );

    let resp = server
        .client()
        .delete(server.url(&format!(
            "/api/machines/{}/keys/{}",
            key.agent_id, key.key_id
        )))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, code, reason) = expect_closed(&mut agent.conn, Duration::from_secs(3)).await;
    assert_eq!(code, 1008, "closed with policy violation ({reason})");
    assert_rejected(
        connect_agent(&server.base, &key.key).await,
        401,
        "revoked key",
    );
    let ended = common::eventually(WAIT, || async {
        server
            .state
            .store
            .get_session(&agent.session_id)
            .await
            .is_ok_and(|s| s.status == SessionStatus::Ended)
    })
    .await;
    assert!(ended, "session recorded as ended");
    assert!(!server.events_of("key.revoked").await.is_empty());
    // The machine's other key still works.
    agent_hello(&server, &other_key.key, hello("managed-host", "")).await;
}

/// A request to `/ws/agent` that is not a WebSocket upgrade (a browser, a health probe,
/// a mistyped curl) is not an agent binding: it must not burn the customer's code.
#[tokio::test]
async fn a_non_websocket_request_does_not_burn_a_support_code() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin).await;
    let resp = server
        .client()
        .get(server.url("/ws/agent"))
        .bearer_auth(&code)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_client_error(),
        "plain GET answered {}",
        resp.status()
    );
    let row = server.state.store.get_code(&code).await.unwrap().unwrap();
    assert_eq!(
        row.status,
        CodeStatus::Pending,
        "the code was burnt by a non-agent request"
    );
    assert_eq!(validate_code(&server, &code).await.status(), StatusCode::OK);
    agent_hello(&server, &code, hello("pc", "")).await;
}

/// Signing out closes the user's open viewers at once (their viewer tokens die with the
/// sign-out, SPEC §3): a `SessionEnd` with the revoked code, then close 1008.
#[tokio::test]
async fn a_sign_out_closes_that_users_open_viewers() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (_agent, _) = managed_agent(&server, &admin).await;
    let tech = user_with_role(&server, &admin, "technician").await;
    let session_id = _agent.session_id.clone();
    let mut watching = viewer(&server, &tech, &session_id).await;
    let resp = server
        .client()
        .post(server.url("/api/auth/logout"))
        .bearer_auth(&tech)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let end = recv_until(&mut watching, "session end", WAIT, |p| {
        matches!(p, Payload::SessionEnd(_))
    })
    .await;
    assert!(
        matches!(&end, Payload::SessionEnd(e) if e.code == guruconnect_proto::EndCode::Revoked as i32 && e.reason == "signed out"),
        "{end:?}"
    );
    match try_recv_until(&mut watching, WAIT, |_| false).await {
        Err(RecvFail::Closed(code, _)) => assert_eq!(code, 1008),
        other => panic!("closed with 1008: {other:?}"),
    }
}
