//! Fleet lifecycle and enrollment (SPEC §3, §4.13, §4.16, §5, §7): sites and their
//! enrollment keys, `POST /api/enroll` with dedup, collisions and site moves, signed alert
//! webhooks, the enrollment lockout, soft removal, reaping of offline sessions, trust on
//! first use for legacy agents, search and the site installer. Every test runs on the
//! backend `TestServer::start` picks (SQLite, or PostgreSQL with
//! `GURUCONNECT_TEST_DATABASE_URL`).

mod common;
// The shared relay helpers predate the `expect` rule.
#[path = "common/fleet.rs"]
mod fleet_support;
#[allow(clippy::unwrap_used)]
#[path = "common/relay.rs"]
mod relay_support;

use std::time::Duration;

use common::{TestServer, eventually, expect_envelope};
use fleet_support::*;
use guruconnect_client::connect_agent;
use guruconnect_proto::Payload;
use guruconnect_server::config::SharedKeyMode;
use guruconnect_store::{DEFAULT_TENANT, MachineStatus, SessionStatus};
use relay_support::*;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

/// Machines of the default tenant in the store (live rows only).
async fn machine_count(server: &TestServer) -> i64 {
    server
        .state
        .store
        .count_machines(DEFAULT_TENANT)
        .await
        .expect("count machines")
}

/// The one item of `GET /api/machines` with this agent id.
async fn listed(server: &TestServer, token: &str, agent_id: &str) -> Option<Value> {
    let (items, _) = search(server, token, "").await;
    items.into_iter().find(|m| m["agent_id"] == agent_id)
}

/// Audit events of `event_type` about `agent_id`.
async fn events_for(server: &TestServer, event_type: &str, agent_id: &str) -> Vec<Value> {
    server
        .events_of(event_type)
        .await
        .into_iter()
        .filter(|e| e.event.agent_id.as_deref() == Some(agent_id))
        .map(|e| e.event.details)
        .collect()
}

// ---------------------------------------------------------------- 1. enrollment

#[tokio::test]
async fn enrolling_a_new_machine_creates_it_and_its_key_connects() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let site = create_site(&server, &admin, "Head Office", "HQ").await;
    assert!(site.key.starts_with("gce_"), "enrollment key prefix");
    assert_eq!(site.version, 1);
    assert_eq!(site.fingerprint, expected_fingerprint(1, &site.key));
    // The key is shown once: the site list carries only the fingerprint.
    let text = server
        .get("/api/sites", &admin)
        .await
        .text()
        .await
        .expect("sites text");
    assert!(!text.contains(&site.key), "site list leaks the key: {text}");
    assert!(!text.contains("enrollment_key") && !text.contains("key_hash"));

    let mut body = enroll_body(&site.code, &site.key, "uid-new-1", "pc-new-1");
    body["labels"] = json!({ "company": "Acme", "department": "Ops", "tags": ["kiosk"] });
    let enrolled = enroll_with(&server, &body).await;
    assert_eq!(enrolled.http, StatusCode::CREATED);
    assert_eq!(enrolled.status, "active");
    assert_eq!(enrolled.site_id, site.id);
    assert!(
        enrolled.agent_key.starts_with("cak_"),
        "per-agent key prefix"
    );

    let machine = listed(&server, &admin, &enrolled.agent_id)
        .await
        .expect("the enrolled machine is listed");
    assert_eq!(machine["hostname"], "pc-new-1");
    assert_eq!(machine["machine_uid"], "uid-new-1");
    assert_eq!(machine["site_id"], site.id.as_str());
    assert_eq!(
        machine["site"], "Head Office",
        "site label is the site's name"
    );
    assert_eq!(machine["company"], "Acme");
    assert_eq!(machine["department"], "Ops");
    assert_eq!(machine["tags"], json!(["kiosk"]));
    assert_eq!(machine["status"], "active");
    assert_eq!(machine["online"], false);
    assert_eq!(machine_count(&server).await, 1);

    // The key is stored hashed and shown nowhere else.
    let keys = keys_of(&server, &admin, &enrolled.agent_id).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], enrolled.key_id.as_str());
    assert!(
        !serde_json::to_string(&keys)
            .expect("json")
            .contains(&enrolled.agent_key)
    );

    let mut agent = agent_hello(&server, &enrolled.agent_key, hello("pc-new-1", "uid-new-1")).await;
    assert_eq!(agent.agent_id, enrolled.agent_id);
    sync(&mut agent.conn).await;
    let machine = listed(&server, &admin, &enrolled.agent_id)
        .await
        .expect("still listed");
    assert_eq!(machine["online"], true);
    assert_eq!(machine["session_id"], agent.session_id.as_str());
    assert_eq!(machine_count(&server).await, 1, "connecting adds no row");

    let audit = events_for(&server, "machine.enrolled", &enrolled.agent_id).await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["outcome"], "created");
    assert_eq!(audit[0]["key_id"], enrolled.key_id.as_str());
    assert_eq!(
        events_for(&server, "alert.machine_enrolled", &enrolled.agent_id)
            .await
            .len(),
        1
    );
}

// ---------------------------------------------------------------- 2. re-enrollment

#[tokio::test]
async fn re_enrolling_the_same_machine_reuses_its_row_and_replaces_its_key() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let site = create_site(&server, &admin, "Branch", "BR").await;
    let first = enroll(&server, &site, "uid-re-1", "pc-re-1").await;
    assert_eq!(first.http, StatusCode::CREATED);
    let mut live = agent_hello(&server, &first.agent_key, hello("pc-re-1", "uid-re-1")).await;

    // A reinstall on the same hardware (host name compared case-insensitively).
    let second = enroll(&server, &site, "uid-re-1", "PC-RE-1").await;
    assert_eq!(second.http, StatusCode::OK);
    assert_eq!(second.agent_id, first.agent_id, "same machine row");
    assert_eq!(second.status, "active");
    assert_ne!(second.agent_key, first.agent_key);
    assert_ne!(second.key_id, first.key_id);
    assert_eq!(machine_count(&server).await, 1, "no duplicate row");
    assert_eq!(search_ids(&server, &admin, "uid-re-1").await.len(), 1);

    // The old key's live connection ends and the old key is refused from now on.
    let (_, code, reason) = expect_closed(&mut live.conn, WAIT).await;
    assert_eq!(code, 1008, "old key's session closed ({reason})");
    assert_rejected(
        connect_agent(&server.base, &first.agent_key).await,
        401,
        "key replaced by re-enrollment",
    );
    let agent = agent_hello(&server, &second.agent_key, hello("pc-re-1", "uid-re-1")).await;
    assert_eq!(agent.agent_id, first.agent_id);

    let keys = keys_of(&server, &admin, &first.agent_id).await;
    assert_eq!(keys.len(), 2);
    for key in &keys {
        let revoked = !key["revoked_at"].is_null();
        assert_eq!(revoked, key["id"] == first.key_id.as_str(), "{key}");
    }
    let outcomes: Vec<Value> = events_for(&server, "machine.enrolled", &first.agent_id)
        .await
        .into_iter()
        .map(|d| d["outcome"].clone())
        .collect();
    assert_eq!(outcomes, [json!("reused"), json!("created")]);
}

// ---------------------------------------------------------------- 3. key rotation

#[tokio::test]
async fn a_rotated_enrollment_key_stops_new_enrollments_but_not_enrolled_machines() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let tech = user_with_role(&server, &admin, "technician").await;
    let site = create_site(&server, &admin, "Warehouse", "WH").await;
    let before = enroll(&server, &site, "uid-rot-1", "pc-rot-1").await;

    // Rotation is admin-only, checked before any change.
    let resp = rotate_response(&server, &tech, &site.id).await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(list_sites(&server, &admin).await[0]["key_version"], 1);

    let rotated = rotate(&server, &admin, &site.id).await;
    assert_eq!(rotated.version, 2);
    assert_ne!(rotated.key, site.key);
    assert_eq!(rotated.fingerprint, expected_fingerprint(2, &rotated.key));
    assert!(rotated.fingerprint.starts_with("v2 ("));
    let listed_site = &list_sites(&server, &admin).await[0];
    assert_eq!(listed_site["key_fingerprint"], rotated.fingerprint.as_str());
    let rotations = server.events_of("site.key_rotated").await;
    assert_eq!(rotations.len(), 1);
    assert_eq!(
        rotations[0].event.details["old_fingerprint"],
        site.fingerprint.as_str()
    );
    assert_eq!(
        rotations[0].event.details["new_fingerprint"],
        rotated.fingerprint.as_str()
    );

    // An installer holding the old key can no longer enroll anything.
    let resp = enroll_response(
        &server,
        &enroll_body(&site.code, &site.key, "uid-rot-2", "pc-rot-2"),
        None,
    )
    .await;
    let envelope = expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert!(!envelope.to_string().contains(&site.key));
    assert_eq!(
        machine_count(&server).await,
        1,
        "no row for a refused enrollment"
    );
    assert!(!server.events_of("enroll.failure").await.is_empty());

    let after = enroll(&server, &rotated, "uid-rot-2", "pc-rot-2").await;
    assert_eq!(after.http, StatusCode::CREATED);
    assert_ne!(after.agent_id, before.agent_id);
    let details = events_for(&server, "machine.enrolled", &after.agent_id).await;
    assert_eq!(details[0]["key_version"], 2);

    // The machine enrolled before the rotation keeps working with its own key.
    let agent = agent_hello(&server, &before.agent_key, hello("pc-rot-1", "uid-rot-1")).await;
    assert_eq!(agent.agent_id, before.agent_id);
}

// ---------------------------------------------------------------- 4. collisions

#[tokio::test]
async fn a_machine_uid_collision_is_pending_until_an_admin_approves_it() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let tech = user_with_role(&server, &admin, "technician").await;
    let site = create_site(&server, &admin, "Clinic", "CL").await;
    let original = enroll(&server, &site, "uid-clone", "pc-original").await;
    let original_row = server
        .state
        .store
        .get_machine(&original.agent_id)
        .await
        .expect("original row");

    // Same hardware id, another host: a cloned image or a spoof.
    let clone = enroll(&server, &site, "uid-clone", "pc-clone").await;
    assert_eq!(clone.status, "pending");
    assert_ne!(
        clone.agent_id, original.agent_id,
        "never the original's row"
    );
    let row = server
        .state
        .store
        .get_machine(&clone.agent_id)
        .await
        .expect("pending row");
    assert_eq!(row.status, MachineStatus::Pending);
    assert_eq!(row.hostname, "pc-clone");
    assert_eq!(row.machine_uid, None, "the uid stays the original's");
    assert_eq!(row.claimed_machine_uid.as_deref(), Some("uid-clone"));
    assert!(
        row.pending_reason
            .as_deref()
            .is_some_and(|r| r.contains(&original.agent_id)),
        "{:?}",
        row.pending_reason
    );
    let original_after = server
        .state
        .store
        .get_machine(&original.agent_id)
        .await
        .expect("original row");
    assert_eq!(original_after, original_row, "the original is untouched");
    let alerts = events_for(&server, "alert.machine_collision", &clone.agent_id).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["collides_with"], original.agent_id.as_str());
    assert_eq!(
        search_ids(&server, &admin, "status:pending").await,
        id_set(&[&clone.agent_id])
    );

    // The pending machine may connect, but nobody can join it.
    let agent = agent_hello(&server, &clone.agent_key, hello("pc-clone", "uid-clone")).await;
    assert_eq!(agent.agent_id, clone.agent_id);
    for who in [&admin, &tech] {
        let resp = mint_response(&server, who, &agent.session_id).await;
        expect_envelope(resp, StatusCode::CONFLICT, "conflict").await;
    }
    // Approval is admin-only.
    let approve_path = format!("/api/machines/{}/approve", clone.agent_id);
    let resp = send(&server, Method::POST, &approve_path, &tech, None).await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = send(
        &server,
        Method::POST,
        "/api/machines/not-there/approve",
        &admin,
        None,
    )
    .await;
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = send(
        &server,
        Method::POST,
        &format!("/api/machines/{}/approve", original.agent_id),
        &admin,
        None,
    )
    .await;
    expect_envelope(resp, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(
        server
            .state
            .store
            .get_machine(&clone.agent_id)
            .await
            .expect("row")
            .status,
        MachineStatus::Pending
    );

    let resp = send(&server, Method::POST, &approve_path, &admin, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let approved: Value = resp.json().await.expect("approved body");
    assert_eq!(approved["status"], "active");
    assert_eq!(approved["pending_reason"], Value::Null);
    assert_eq!(
        events_for(&server, "machine.approved", &clone.agent_id)
            .await
            .len(),
        1
    );
    // Now the session is joinable.
    let mut v = viewer(&server, &tech, &agent.session_id).await;
    wait_viewers(&server, &agent.session_id, 1).await;
    sync(&mut v).await;
    let resp = send(&server, Method::POST, &approve_path, &admin, None).await;
    expect_envelope(resp, StatusCode::CONFLICT, "conflict").await;
}

// ---------------------------------------------------------------- 5. lockout

#[tokio::test]
async fn repeated_bad_enrollment_keys_lock_the_site_code_and_the_ip_out() {
    // Behind a trusted proxy each attempt can come from its own client IP, so the
    // per-IP rate limit (10/min) never hides the per-site lockout.
    let server = TestServer::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    let admin = server.admin_token().await;
    let locked = create_site(&server, &admin, "Locked", "LOCKME").await;
    let other = create_site(&server, &admin, "Other", "OTHER").await;
    let bad_key = format!("gce_{}", "A".repeat(43));

    for i in 0..10 {
        let ip = format!("203.0.113.{}", i + 1);
        let resp = enroll_response(
            &server,
            &enroll_body(&locked.code, &bad_key, &format!("uid-bad-{i}"), "pc-bad"),
            Some(&ip),
        )
        .await;
        expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // The site code is locked: even the right key, from a fresh IP, is refused, with a
    // Retry-After of the lockout (15 min), not of the rate limit (seconds).
    for code in [locked.code.clone(), locked.code.to_lowercase()] {
        let resp = enroll_response(
            &server,
            &enroll_body(&code, &locked.key, "uid-good", "pc-good"),
            Some("198.51.100.1"),
        )
        .await;
        let retry: u64 = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("Retry-After header");
        assert!(retry > 60, "lockout Retry-After is {retry} s");
        expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    }
    assert_eq!(
        machine_count(&server).await,
        0,
        "nothing enrolled while locked"
    );
    // The lockout is per site code: another site still enrolls.
    let ok = enroll_with(
        &server,
        &enroll_body(&other.code, &other.key, "uid-other", "pc-other"),
    )
    .await;
    assert_eq!(ok.http, StatusCode::CREATED);

    // Ten failures from one IP (each on a different, unknown site code) lock that IP
    // out for every site.
    let ip = "192.0.2.50";
    for i in 0..10 {
        let resp = enroll_response(
            &server,
            &enroll_body(&format!("NOPE{i}"), &bad_key, "uid-x", "pc-x"),
            Some(ip),
        )
        .await;
        expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let resp = enroll_response(
        &server,
        &enroll_body(&other.code, &other.key, "uid-ip", "pc-ip"),
        Some(ip),
    )
    .await;
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After header");
    assert!(retry > 60, "IP lockout Retry-After is {retry} s");
    expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(machine_count(&server).await, 1);
    let failures = server.events_of("enroll.failure").await;
    assert_eq!(failures.len(), 20, "every failed attempt is audited");
    assert!(
        failures
            .iter()
            .all(|e| !e.event.details.to_string().contains("gce_")),
        "no key material in the audit log"
    );
}

// ---------------------------------------------------------------- 6. site move + webhook

#[tokio::test]
async fn a_site_move_raises_a_signed_webhook_alert() {
    let mut hook = WebhookReceiver::start().await;
    let secret = common::random_secret("whsec");
    let server = TestServer::start_with(|c| {
        c.alert_webhook_url = Some(hook.url.clone());
        c.alert_webhook_secret = Some(SecretString::from(secret.clone()));
    })
    .await;
    let admin = server.admin_token().await;
    let a = create_site(&server, &admin, "Site A", "SITE-A").await;
    let b = create_site(&server, &admin, "Site B", "SITE-B").await;
    let first = enroll(&server, &a, "uid-mover", "pc-mover").await;
    assert!(
        events_for(&server, "alert.site_move", &first.agent_id)
            .await
            .is_empty()
    );

    let moved = enroll(&server, &b, "uid-mover", "pc-mover").await;
    assert_eq!(moved.agent_id, first.agent_id, "a move keeps the row");
    assert_eq!(moved.site_id, b.id);
    let row = server
        .state
        .store
        .get_machine(&first.agent_id)
        .await
        .expect("row");
    assert_eq!(row.site_id.as_deref(), Some(b.id.as_str()));
    assert_eq!(row.site.as_deref(), Some("Site B"));
    let alerts = events_for(&server, "alert.site_move", &first.agent_id).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["from_site_id"], a.id.as_str());
    assert_eq!(alerts[0]["to_site_id"], b.id.as_str());

    let (captured, body) = hook.next_of("alert.site_move", WAIT).await;
    assert_eq!(body["details"]["agent_id"], first.agent_id.as_str());
    assert_eq!(body["details"]["from_site_id"], a.id.as_str());
    assert_eq!(body["details"]["to_site_id"], b.id.as_str());
    assert!(
        captured
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    );
    let signature = captured
        .headers
        .get(guruconnect_server::alerts::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("signature header")
        .to_owned();
    assert!(
        signature_verifies(secret.as_bytes(), &captured.body, &signature),
        "signature {signature} does not verify"
    );
    assert!(!signature_verifies(
        b"wrong-secret",
        &captured.body,
        &signature
    ));
    let mut tampered = captured.body.to_vec();
    tampered.push(b' ');
    assert!(!signature_verifies(
        secret.as_bytes(),
        &tampered,
        &signature
    ));
    let text = String::from_utf8_lossy(&captured.body);
    assert!(!text.contains(&b.key) && !text.contains(&moved.agent_key));

    // Enrolling again into the same site is not a move.
    enroll(&server, &b, "uid-mover", "pc-mover").await;
    assert_eq!(
        events_for(&server, "alert.site_move", &first.agent_id)
            .await
            .len(),
        1
    );
}

// ---------------------------------------------------------------- 7. removal

#[tokio::test]
async fn bulk_removal_isolates_bad_ids_and_audits_each_removal() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let tech = user_with_role(&server, &admin, "technician").await;
    let site = create_site(&server, &admin, "Fleet", "FLEET").await;
    let good1 = enroll(&server, &site, "uid-rm-1", "rm-one").await;
    let good2 = enroll(&server, &site, "uid-rm-2", "rm-two").await;
    let keep = enroll(&server, &site, "uid-keep", "keeper").await;
    let mut live = agent_hello(&server, &good1.agent_key, hello("rm-one", "uid-rm-1")).await;
    // good2's agent dropped: its managed session waits offline.
    let dropped = agent_hello(&server, &good2.agent_key, hello("rm-two", "uid-rm-2")).await;
    let dropped_session = dropped.session_id.clone();
    dropped.conn.close().await.ok();
    let offline = eventually(WAIT, || async {
        server
            .state
            .sessions
            .get(&dropped_session)
            .is_some_and(|s| !s.is_agent_connected())
    })
    .await;
    assert!(offline, "good2's session never went offline");
    let missing = uuid::Uuid::new_v4().to_string();
    let ids = json!({ "agent_ids": [
        good1.agent_id, missing, good2.agent_id, "../not-a-uuid", good1.agent_id
    ] });

    // Removal is admin-only, checked before any change.
    let resp = send(
        &server,
        Method::POST,
        "/api/machines/bulk-remove",
        &tech,
        Some(ids.clone()),
    )
    .await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(machine_count(&server).await, 3);

    let resp = send(
        &server,
        Method::POST,
        "/api/machines/bulk-remove",
        &admin,
        Some(ids),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("bulk body");
    assert_eq!(body["removed"], 2, "{body}");
    assert_eq!(body["failed"], 2, "{body}");
    let results = body["results"].as_array().expect("results");
    let outcome = |id: &str| {
        results
            .iter()
            .find(|r| r["agent_id"] == id)
            .unwrap_or_else(|| panic!("no result for {id}: {body}"))
            .clone()
    };
    assert_eq!(results.len(), 4, "a repeated id is handled once: {body}");
    assert_eq!(outcome(&good1.agent_id)["removed"], true);
    assert_eq!(outcome(&good2.agent_id)["removed"], true);
    assert_eq!(outcome(&missing)["removed"], false);
    assert_eq!(outcome(&missing)["error_code"], "not_found");
    assert_eq!(outcome("../not-a-uuid")["removed"], false);
    assert_eq!(outcome("../not-a-uuid")["error_code"], "validation_failed");

    // Soft delete: gone from lists and lookups, kept for the audit trail.
    assert_eq!(
        search_ids(&server, &admin, "").await,
        id_set(&[&keep.agent_id])
    );
    for id in [&good1.agent_id, &good2.agent_id] {
        let resp = server.get(&format!("/api/machines/{id}"), &admin).await;
        expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    let removed: Vec<String> = server
        .events_of("machine.removed")
        .await
        .into_iter()
        .map(|e| {
            assert_eq!(e.event.username.as_deref(), Some("admin"));
            e.event.agent_id.expect("removal names the machine")
        })
        .collect();
    assert_eq!(removed.len(), 2, "one audit event per removal: {removed:?}");
    assert!(removed.contains(&good1.agent_id) && removed.contains(&good2.agent_id));

    // A removed machine's live session ends and its agent cannot come back.
    let (_, code, _) = expect_closed(&mut live.conn, WAIT).await;
    assert_eq!(code, 1008);
    assert_rejected(
        connect_agent(&server.base, &good1.agent_key).await,
        401,
        "key of a removed machine",
    );
    assert_eq!(
        machine_count(&server).await,
        1,
        "the agent did not recreate its row"
    );
    // The offline session of a removed machine is over too, not left open forever.
    let ended = eventually(WAIT, || async {
        server
            .state
            .store
            .get_session(&dropped_session)
            .await
            .is_ok_and(|s| s.status == SessionStatus::Ended)
    })
    .await;
    assert!(ended, "the removed machine's offline session is still open");
    assert!(server.state.sessions.get(&dropped_session).is_none());
    assert!(server.state.sessions.by_agent(&good2.agent_id).is_none());

    // More than 500 ids (or none) is a validation error, and nothing is removed.
    let mut too_many: Vec<String> = (0..500).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    too_many.push(keep.agent_id.clone());
    for agent_ids in [too_many, Vec::new()] {
        let resp = send(
            &server,
            Method::POST,
            "/api/machines/bulk-remove",
            &admin,
            Some(json!({ "agent_ids": agent_ids })),
        )
        .await;
        expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    assert_eq!(machine_count(&server).await, 1);
    assert_eq!(server.events_of("machine.removed").await.len(), 2);

    // Single removal: admin-only, then gone; a second removal is a 404.
    let path = format!("/api/machines/{}", keep.agent_id);
    let resp = send(&server, Method::DELETE, &path, &tech, None).await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(machine_count(&server).await, 1);
    let resp = send(&server, Method::DELETE, &path, &admin, None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = send(&server, Method::DELETE, &path, &admin, None).await;
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(machine_count(&server).await, 0);
    assert_eq!(server.events_of("machine.removed").await.len(), 3);
}

#[tokio::test]
async fn removing_a_session_is_admin_only_ends_it_and_hides_it() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let tech = user_with_role(&server, &admin, "technician").await;
    let (mut agent, _key) = managed_agent(&server, &admin).await;
    let path = format!("/api/sessions/{}", agent.session_id);

    let resp = send(&server, Method::DELETE, &path, &tech, None).await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    sync(&mut agent.conn).await;

    let resp = send(&server, Method::DELETE, &path, &admin, None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (seen, _, _) = expect_closed(&mut agent.conn, WAIT).await;
    assert!(seen.iter().any(|p| matches!(p, Payload::SessionEnd(_))));
    let resp = server.get(&path, &admin).await;
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
    let listed: Vec<Value> = server
        .get("/api/sessions?all=true", &admin)
        .await
        .json()
        .await
        .expect("sessions");
    assert!(listed.iter().all(|s| s["id"] != agent.session_id.as_str()));
    let gone = eventually(WAIT, || async {
        server.state.sessions.get(&agent.session_id).is_none()
    })
    .await;
    assert!(gone, "the removed session is still live");
    let audit = server.events_of("session.removed").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(
        audit[0].event.session_id.as_deref(),
        Some(agent.session_id.as_str())
    );

    // An offline session (its agent dropped) is removed from the relay as well.
    let (dropped, key) = managed_agent(&server, &admin).await;
    let offline_id = dropped.session_id.clone();
    dropped.conn.close().await.ok();
    let offline = eventually(WAIT, || async {
        server
            .state
            .sessions
            .get(&offline_id)
            .is_some_and(|s| !s.is_agent_connected())
    })
    .await;
    assert!(offline, "the session never went offline");
    let path = format!("/api/sessions/{offline_id}");
    let resp = send(&server, Method::DELETE, &path, &admin, None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(
        server.state.sessions.get(&offline_id).is_none(),
        "a removed offline session is still in the relay"
    );
    let machine: Value = server
        .get(&format!("/api/machines/{}", key.agent_id), &admin)
        .await
        .json()
        .await
        .expect("machine");
    assert_eq!(machine["session_id"], Value::Null, "{machine}");
    // The machine itself stays and may reconnect.
    let back = agent_hello(&server, &key.key, hello("managed-host", "")).await;
    assert_ne!(back.session_id, offline_id);
}

#[tokio::test]
async fn sessions_list_filters_by_machine() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let tech = user_with_role(&server, &admin, "technician").await;
    let (mut first, first_key) = managed_agent(&server, &admin).await;
    let (mut second, second_key) = managed_agent(&server, &admin).await;
    sync(&mut first.conn).await;
    sync(&mut second.conn).await;
    let ids = |query: String| {
        let (server, tech) = (&server, &tech);
        async move {
            let resp = server.get(&format!("/api/sessions?{query}"), tech).await;
            assert_eq!(resp.status(), StatusCode::OK, "{query}");
            let body: Vec<Value> = resp.json().await.expect("sessions");
            body.iter()
                .map(|s| s["id"].as_str().expect("id").to_owned())
                .collect::<Vec<_>>()
        }
    };
    let all = ids("all=true".to_owned()).await;
    assert!(all.contains(&first.session_id) && all.contains(&second.session_id));
    // The machine page's history: one machine's sessions, open or all, no other's.
    for all in ["", "all=true&"] {
        assert_eq!(
            ids(format!("{all}agent_id={}", first_key.agent_id)).await,
            vec![first.session_id.clone()]
        );
        assert_eq!(
            ids(format!("{all}agent_id={}", second_key.agent_id)).await,
            vec![second.session_id.clone()]
        );
    }
    let unknown = ids(format!("all=true&agent_id={}", uuid::Uuid::new_v4())).await;
    assert!(unknown.is_empty(), "{unknown:?}");
    // An empty filter is no filter.
    assert_eq!(ids("all=true&agent_id=".to_owned()).await.len(), all.len());
}

// ---------------------------------------------------------------- 8. reaping

#[tokio::test]
async fn offline_sessions_without_viewers_are_reaped_after_the_ttl_and_no_others() {
    const TTL: u64 = 120;
    let server = TestServer::start_with(|c| c.offline_session_ttl_secs = TTL).await;
    let admin = server.admin_token().await;
    let (mut online, _) = managed_agent(&server, &admin).await;
    let (unwatched, _) = managed_agent(&server, &admin).await;
    let (watched, _) = managed_agent(&server, &admin).await;
    let mut v = viewer(&server, &admin, &watched.session_id).await;
    wait_viewers(&server, &watched.session_id, 1).await;

    // Two agents drop; their managed sessions wait offline.
    let (unwatched_id, watched_id) = (unwatched.session_id.clone(), watched.session_id.clone());
    unwatched.conn.close().await.ok();
    watched.conn.close().await.ok();
    for id in [&unwatched_id, &watched_id] {
        let offline = eventually(WAIT, || async {
            server
                .state
                .sessions
                .get(id)
                .is_some_and(|s| !s.is_agent_connected())
        })
        .await;
        assert!(offline, "session {id} never went offline");
    }
    let reap = || guruconnect_server::sessions::reap_offline(&server.state);
    let live = |id: &str| server.state.sessions.get(id).is_some();

    // Not before the TTL.
    assert_eq!(reap().await, 0);
    server.state.clock.advance(Duration::from_secs(TTL - 10));
    assert_eq!(reap().await, 0);
    assert!(live(&unwatched_id) && live(&watched_id));

    // Past it, only the offline session nobody watches goes. (The housekeeping loop may
    // have got there first; what counts is the outcome.)
    server.state.clock.advance(Duration::from_secs(20));
    assert!(reap().await <= 1);
    assert!(
        !live(&unwatched_id),
        "the unwatched offline session was not reaped"
    );
    assert!(live(&watched_id), "a watched session was reaped");
    assert!(live(&online.session_id), "an online session was reaped");
    let record = server
        .state
        .store
        .get_session(&unwatched_id)
        .await
        .expect("record");
    assert_eq!(record.status, SessionStatus::Ended);
    assert_eq!(record.end_reason.as_deref(), Some("reaped: agent offline"));
    let reaped: Vec<Option<String>> = server
        .events_of("session.reaped")
        .await
        .into_iter()
        .map(|e| e.event.session_id)
        .collect();
    assert_eq!(reaped, [Some(unwatched_id.clone())]);

    // However long it takes, online and watched sessions stay.
    server.state.clock.advance(Duration::from_secs(TTL * 50));
    assert_eq!(reap().await, 0);
    assert!(live(&watched_id) && live(&online.session_id));
    sync(&mut online.conn).await;
    sync(&mut v).await;
    assert_ne!(
        server
            .state
            .store
            .get_session(&watched_id)
            .await
            .expect("record")
            .status,
        SessionStatus::Ended
    );

    // Once its last viewer leaves, the watched session is reapable too.
    v.close().await.ok();
    wait_viewers(&server, &watched_id, 0).await;
    reap().await;
    assert!(!live(&watched_id), "an unwatched offline session stayed");
    assert!(live(&online.session_id));
    assert_eq!(server.events_of("session.reaped").await.len(), 2);
}

// ---------------------------------------------------------------- 9. keyed identity

#[tokio::test]
async fn a_keyed_agent_claiming_another_machines_uid_changes_nothing() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let site = create_site(&server, &admin, "Office", "OFFICE").await;
    let a = enroll(&server, &site, "uid-a", "host-a").await;
    let b = enroll(&server, &site, "uid-b", "host-b").await;
    let mut b_live = agent_hello(&server, &b.agent_key, hello("host-b", "uid-b")).await;
    sync(&mut b_live.conn).await;
    let b_before = server
        .state
        .store
        .get_machine(&b.agent_id)
        .await
        .expect("B");

    // A's key, B's uid, B's host name and B's agent id in the hello.
    let mut claim = hello("host-b", "uid-b");
    if let Payload::AgentHello(h) = &mut claim {
        h.agent_id = b.agent_id.clone();
    }
    let mut imposter = agent_hello(&server, &a.agent_key, claim).await;
    sync(&mut imposter.conn).await;
    assert_eq!(imposter.agent_id, a.agent_id, "the key decides the machine");
    let record = server
        .state
        .store
        .get_session(&imposter.session_id)
        .await
        .expect("session");
    assert_eq!(record.agent_id, a.agent_id);

    let b_after = server
        .state
        .store
        .get_machine(&b.agent_id)
        .await
        .expect("B");
    assert_eq!(b_after, b_before, "B's row is untouched");
    let a_row = server
        .state
        .store
        .get_machine(&a.agent_id)
        .await
        .expect("A");
    assert_eq!(
        a_row.machine_uid.as_deref(),
        Some("uid-a"),
        "A keeps its uid"
    );
    assert_eq!(
        a_row.status,
        MachineStatus::Active,
        "no collision for a keyed agent"
    );
    let owner = server
        .state
        .store
        .find_machine_by_uid(DEFAULT_TENANT, "uid-b")
        .await
        .expect("lookup")
        .expect("uid-b has an owner");
    assert_eq!(owner.agent_id, b.agent_id);
    assert_eq!(machine_count(&server).await, 2);
    assert!(server.events_of("alert.machine_collision").await.is_empty());
    // B's live session was not superseded.
    sync(&mut b_live.conn).await;
    assert_eq!(
        server
            .state
            .sessions
            .by_agent(&b.agent_id)
            .expect("B is live")
            .id,
        b_live.session_id
    );
    // And B's hardware still enrolls as B.
    let again = enroll(&server, &site, "uid-b", "host-b").await;
    assert_eq!(again.agent_id, b.agent_id);
}

#[tokio::test]
async fn a_support_session_on_an_enrolled_machine_reuses_its_row_beside_its_managed_session() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let site = create_site(&server, &admin, "Dental", "DENT").await;
    let enrolled = enroll(&server, &site, "uid-dent-1", "reception").await;
    let mut managed = agent_hello(
        &server,
        &enrolled.agent_key,
        hello("reception", "uid-dent-1"),
    )
    .await;
    sync(&mut managed.conn).await;

    // The customer at that machine runs the support agent with a code.
    let code = create_code(&server, &admin).await;
    let mut attended = agent_hello(&server, &code, hello("reception", "uid-dent-1")).await;
    recv_until(&mut attended.conn, "consent request", WAIT, |p| {
        matches!(p, Payload::ConsentRequest(_))
    })
    .await;
    assert_eq!(
        attended.agent_id, enrolled.agent_id,
        "the support session got its own row"
    );
    assert_eq!(machine_count(&server).await, 1);
    assert!(server.events_of("alert.machine_collision").await.is_empty());
    // Neither session ends the other.
    sync(&mut managed.conn).await;
    assert_eq!(
        server.state.sessions.all_of_agent(&enrolled.agent_id).len(),
        2
    );
    assert_eq!(
        server
            .state
            .sessions
            .by_agent(&enrolled.agent_id)
            .expect("live")
            .id,
        managed.session_id,
        "Join on the machine opens its managed session"
    );
    // Consent still gates the support session.
    let record = server
        .state
        .store
        .get_session(&attended.session_id)
        .await
        .expect("session");
    assert_eq!(record.status, SessionStatus::WaitingConsent);

    // Another host with that uid is still a collision, code or not.
    let code = create_code(&server, &admin).await;
    let other = agent_hello(&server, &code, hello("not-reception", "uid-dent-1")).await;
    assert_ne!(other.agent_id, enrolled.agent_id);

    // Removing the machine ends both of its sessions.
    let resp = server
        .client()
        .delete(server.url(&format!("/api/machines/{}", enrolled.agent_id)))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("remove");
    assert!(resp.status().is_success(), "{resp:?}");
    let (_, managed_close, _) = expect_closed(&mut managed.conn, WAIT).await;
    let (_, attended_close, _) = expect_closed(&mut attended.conn, WAIT).await;
    assert_eq!((managed_close, attended_close), (1008, 1008));
}

// ---------------------------------------------------------------- 10. trust on first use

#[tokio::test]
async fn a_shared_key_agent_is_provisioned_one_key_until_it_is_revoked() {
    shared_key_provisioning(SharedKeyMode::EnrollmentOnly).await;
}

/// In `enabled` mode too: a machine that has its own key is refused on the shared key, so
/// an agent ignoring its provisioned key cannot pile up pending rows.
#[tokio::test]
async fn in_enabled_mode_too_a_provisioned_machine_must_use_its_own_key() {
    shared_key_provisioning(SharedKeyMode::Enabled).await;
}

async fn shared_key_provisioning(mode: SharedKeyMode) {
    let shared = common::random_secret("legacy-shared");
    let server = TestServer::start_with(|c| {
        c.shared_agent_key = Some(SecretString::from(shared.clone()));
        c.shared_agent_key_mode = mode;
    })
    .await;
    let admin = server.admin_token().await;
    let legacy = || hello("legacy-pc", "uid-legacy");

    // First contact: exactly one key.
    let Bind::Bound {
        mut conn,
        info,
        before,
    } = bind_agent(&server, &shared, legacy()).await
    else {
        panic!("the shared key was refused on first contact");
    };
    let mut seen = before;
    seen.extend(drain_until_pong(&mut conn).await);
    let provided = provisions(&seen);
    assert_eq!(
        provided.len(),
        1,
        "exactly one KeyProvision: {:?}",
        kinds(&seen)
    );
    let (key, key_id) = provided[0].clone();
    assert!(key.starts_with("cak_"));
    let machine = info.agent_id.clone();
    let keys = keys_of(&server, &admin, &machine).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], key_id.as_str());
    let issued = events_for(&server, "key.issued", &machine).await;
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["trust_on_first_use"], true);
    assert!(
        !issued[0].to_string().contains(&key),
        "no key in the audit log"
    );
    conn.close().await.ok();

    // While that key is active, the shared key gets nothing more.
    match bind_agent(&server, &shared, legacy()).await {
        Bind::Closed { seen, code, .. } => {
            assert!(provisions(&seen).is_empty());
            assert_eq!(code, 1008);
        }
        Bind::Bound {
            mut conn, before, ..
        } => {
            let mut seen = before;
            seen.extend(drain_until_pong(&mut conn).await);
            panic!(
                "a machine with an active key was bound on the shared key; received {:?}",
                kinds(&seen)
            );
        }
    }
    assert_eq!(machine_count(&server).await, 1, "no second row");
    assert_eq!(
        server.events_of("key.issued").await.len(),
        1,
        "no second key"
    );

    // The provisioned key is the machine's credential now, and is never re-provisioned.
    let Bind::Bound {
        mut conn,
        info,
        before,
    } = bind_agent(&server, &key, legacy()).await
    else {
        panic!("the provisioned key was refused");
    };
    assert_eq!(info.agent_id, machine);
    let mut seen = before;
    seen.extend(drain_until_pong(&mut conn).await);
    assert!(provisions(&seen).is_empty(), "{:?}", kinds(&seen));

    // Revoked: the machine is keyless again and the shared key gets it one new key.
    let resp = send(
        &server,
        Method::DELETE,
        &format!("/api/machines/{machine}/keys/{key_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    expect_closed(&mut conn, WAIT).await;
    let Bind::Bound {
        mut conn,
        info,
        before,
    } = bind_agent(&server, &shared, legacy()).await
    else {
        panic!("the shared key was refused for a machine without an active key");
    };
    assert_eq!(info.agent_id, machine, "the same machine row");
    let mut seen = before;
    seen.extend(drain_until_pong(&mut conn).await);
    let provided = provisions(&seen);
    assert_eq!(
        provided.len(),
        1,
        "exactly one new KeyProvision: {:?}",
        kinds(&seen)
    );
    let (new_key, new_key_id) = provided[0].clone();
    assert_ne!(new_key, key);
    assert_ne!(new_key_id, key_id);
    conn.close().await.ok();
    let agent = agent_hello(&server, &new_key, legacy()).await;
    assert_eq!(agent.agent_id, machine);
    assert_rejected(connect_agent(&server.base, &key).await, 401, "revoked key");
    assert_eq!(machine_count(&server).await, 1);
}

// ---------------------------------------------------------------- 11. search and labels

#[tokio::test]
async fn field_scoped_search_finds_exactly_the_labelled_machines() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let tech = user_with_role(&server, &admin, "technician").await;
    let north = create_site(&server, &admin, "North Branch", "NORTH").await;
    let south = create_site(&server, &admin, "South Branch", "SOUTH").await;
    let alpha = enroll(&server, &north, "uid-alpha", "alpha-desk").await;
    let beta = enroll(&server, &north, "uid-beta", "beta-desk").await;
    let gamma = enroll(&server, &south, "uid-gamma", "gamma-desk").await;

    for (id, tags) in [
        (&alpha.agent_id, json!(["VIP", "kiosk"])),
        (&gamma.agent_id, json!(["vip"])),
    ] {
        let resp = send(
            &server,
            Method::PATCH,
            &format!("/api/machines/{id}"),
            &admin,
            Some(json!({ "tags": tags, "company": "Globex" })),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.expect("patched");
        assert_eq!(body["tags"], tags);
    }
    assert_eq!(server.events_of("machine.labels_changed").await.len(), 2);

    for (q, expected) in [
        (
            "site:\"North Branch\"",
            vec![&alpha.agent_id, &beta.agent_id],
        ),
        ("site:south", vec![&gamma.agent_id]),
        ("tag:vip", vec![&alpha.agent_id, &gamma.agent_id]),
        ("TAG:Kiosk", vec![&alpha.agent_id]),
        ("tag:vip site:north", vec![&alpha.agent_id]),
        (
            "company:globex desk",
            vec![&alpha.agent_id, &gamma.agent_id],
        ),
        ("BETA", vec![&beta.agent_id]),
        ("tag:desk", vec![]),
        ("site:east", vec![]),
    ] {
        let expected: Vec<&str> = expected.iter().map(|s| s.as_str()).collect();
        // Technicians search too (they hold `view`).
        assert_eq!(
            search_ids(&server, &tech, q).await,
            id_set(&expected),
            "q = {q}"
        );
    }

    // Labels are admin-only: a technician's PATCH is refused and changes nothing.
    let resp = send(
        &server,
        Method::PATCH,
        &format!("/api/machines/{}", beta.agent_id),
        &tech,
        Some(json!({ "tags": ["vip"] })),
    )
    .await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(
        search_ids(&server, &admin, "tag:vip").await,
        id_set(&[&alpha.agent_id, &gamma.agent_id])
    );
    assert_eq!(server.events_of("machine.labels_changed").await.len(), 2);
}

#[tokio::test]
async fn machine_notes_are_kept_audited_without_their_text_and_not_searched() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let site = create_site(&server, &admin, "Main", "MAIN").await;
    let m = enroll(&server, &site, "uid-notes", "notes-desk").await;
    let path = format!("/api/machines/{}", m.agent_id);
    let note = "Printer on the left.\nAsk for Dana (ext. 42).";
    let resp = send(
        &server,
        Method::PATCH,
        &path,
        &admin,
        // The site is sent unchanged, as the console's form does.
        Some(json!({ "site": "Main", "notes": format!("  {note}\n") })),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("patched");
    assert_eq!(body["notes"], note);
    let got: Value = server.get(&path, &admin).await.json().await.expect("get");
    assert_eq!(got["notes"], note);
    // Other labels were left alone; the audit names the changed field, never the text.
    assert_eq!(got["site"], "Main");
    let events = server.events_of("machine.labels_changed").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.details["fields"], json!(["notes"]));
    assert!(!events[0].event.details.to_string().contains("Dana"));
    // Notes are not a search field.
    assert!(search_ids(&server, &admin, "Dana").await.is_empty());

    // Too long, a control character.
    for bad in [
        json!({ "notes": "x".repeat(10_001) }),
        json!({ "notes": "bell\u{7}" }),
    ] {
        let resp = send(&server, Method::PATCH, &path, &admin, Some(bad)).await;
        expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    // null clears.
    let resp = send(
        &server,
        Method::PATCH,
        &path,
        &admin,
        Some(json!({ "notes": null })),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("cleared");
    assert_eq!(body["notes"], Value::Null);
}

// ---------------------------------------------------------------- 12. installer

#[tokio::test]
async fn sites_and_the_installer_are_admin_only_and_the_installer_holds_no_key() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let tech = user_with_role(&server, &admin, "technician").await;
    let resp = create_site_response(&server, &tech, "Nope", "NOPE").await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = server.get("/api/sites", &tech).await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let site = create_site(&server, &admin, "Main Street", "MAIN-ST").await;
    let resp = create_site_response(&server, &admin, "Again", "main-st").await;
    assert!(
        resp.status() == StatusCode::CONFLICT,
        "a duplicate site code answered {}",
        resp.status()
    );
    assert_eq!(list_sites(&server, &admin).await.len(), 1);

    let path = format!("/api/sites/{}/installer", site.id);
    let resp = server.get(&path, &tech).await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = server
        .get("/api/sites/no-such-site/installer", &admin)
        .await;
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;

    let resp = server.get(&path, &admin).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/x-shellscript"),
        "{content_type}"
    );
    let script = resp.text().await.expect("script");
    assert!(script.starts_with("#!/bin/sh"));
    assert!(
        script.contains("SITE_CODE='MAIN-ST'"),
        "site code in the script"
    );
    assert!(
        script.contains(&site.fingerprint),
        "fingerprint in the script"
    );
    assert!(
        !script.contains(&site.key),
        "the installer leaks the enrollment key"
    );
    assert!(!script.contains(&site.key["gce_".len()..]));

    // After a rotation the installer names the new fingerprint and still no key.
    let rotated = rotate(&server, &admin, &site.id).await;
    let script = server
        .get(&path, &admin)
        .await
        .text()
        .await
        .expect("script");
    assert!(script.contains(&rotated.fingerprint));
    assert!(!script.contains(&site.fingerprint));
    for key in [&site.key, &rotated.key] {
        assert!(!script.contains(key.as_str()), "the installer leaks a key");
    }
}
