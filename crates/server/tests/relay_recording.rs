//! Session recording (issue 14 part 3, docs/recordings.md): the policy decides which
//! sessions are recorded; a recording holds the relayed frames, cursor, input, chat and
//! events with a keyframe index; its SHA-256 is audited when it closes; the file is served
//! with ranges to holders of `recordings` only; retention removes old ones; a full disk
//! stops the recording with an alert while the session goes on.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "common/fleet.rs"]
mod fleet_support;
#[path = "common/relay.rs"]
mod relay_support;
#[path = "common/tmpfs.rs"]
mod tmpfs_support;

use std::time::Duration;

use common::{TestServer, eventually, expect_envelope};
use guruconnect_proto::{ChatMessage, CursorPosition, Payload};
use guruconnect_server::recording::format::{RECORD_HEADER, read_index};
use relay_support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tmpfs_support::Tmpfs;

async fn put_policy(server: &TestServer, token: &str, policy: Value) -> reqwest::Response {
    server
        .client()
        .put(server.url("/api/settings/recording"))
        .bearer_auth(token)
        .json(&policy)
        .send()
        .await
        .unwrap()
}

async fn record_all(server: &TestServer, admin: &str) {
    let resp = put_policy(
        server,
        admin,
        json!({ "mode": "all", "retention_days": 30 }),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn get_json(server: &TestServer, token: &str, path: &str) -> Value {
    let resp = server.get(path, token).await;
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.json().await.unwrap()
}

async fn end_session(server: &TestServer, admin: &str, session_id: &str) {
    let resp = server
        .client()
        .post(server.url(&format!("/api/sessions/{session_id}/end")))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

/// Waits until the recording's row says `status`; returns the row.
async fn recording_with_status(server: &TestServer, admin: &str, id: &str, status: &str) -> Value {
    let ok = eventually(Duration::from_secs(10), || async {
        server
            .get(&format!("/api/recordings/{id}"), admin)
            .await
            .status()
            == StatusCode::OK
            && get_json(server, admin, &format!("/api/recordings/{id}")).await["status"] == status
    })
    .await;
    assert!(ok, "recording {id} never became {status}");
    get_json(server, admin, &format!("/api/recordings/{id}")).await
}

async fn file_bytes(
    server: &TestServer,
    token: &str,
    id: &str,
    range: Option<&str>,
) -> reqwest::Response {
    let mut req = server
        .client()
        .get(server.url(&format!("/api/recordings/{id}/file")))
        .bearer_auth(token);
    if let Some(range) = range {
        req = req.header("range", range);
    }
    req.send().await.unwrap()
}

fn chat(text: &str) -> Payload {
    Payload::Chat(ChatMessage {
        from: "machine".into(),
        text: text.into(),
        sent_at_ms: 0,
    })
}

#[tokio::test]
async fn a_recorded_session_holds_what_was_relayed_and_its_hash_is_audited() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    record_all(&server, &admin).await;
    let (mut agent, _) = managed_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let mut watcher = viewer(&server, &admin, &sid).await;
    wait_viewers(&server, &sid, 1).await;
    sync(&mut agent.conn).await;

    agent.conn.send(frame(1, true, 3000)).await.unwrap();
    agent.conn.send(frame(2, false, 500)).await.unwrap();
    agent
        .conn
        .send(Payload::CursorPosition(CursorPosition {
            x: 5,
            y: 6,
            visible: true,
        }))
        .await
        .unwrap();
    recv_until(&mut watcher, "frame 2", WAIT, |p| frame_seq(p) == Some(2)).await;
    watcher.send(key_down(30)).await.unwrap();
    recv_until(&mut agent.conn, "key", WAIT, |p| {
        matches!(p, Payload::KeyEvent(_))
    })
    .await;
    agent
        .conn
        .send(chat("hello from the machine"))
        .await
        .unwrap();
    recv_until(&mut watcher, "chat", WAIT, |p| {
        matches!(p, Payload::Chat(_))
    })
    .await;

    // No viewer fell behind, yet the relay asks for a keyframe every few seconds.
    recv_until(
        &mut agent.conn,
        "periodic refresh",
        Duration::from_secs(12),
        |p| matches!(p, Payload::RefreshRequest(_)),
    )
    .await;
    agent.conn.send(frame(3, true, 2000)).await.unwrap();
    recv_until(&mut watcher, "frame 3", WAIT, |p| frame_seq(p) == Some(3)).await;

    // While it is being written it cannot be deleted.
    let resp = server
        .client()
        .delete(server.url(&format!("/api/recordings/{sid}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::CONFLICT, "conflict").await;

    end_session(&server, &admin, &sid).await;
    let rec = recording_with_status(&server, &admin, &sid, "complete").await;
    assert_eq!(rec["session_id"], sid.as_str());
    assert_eq!(rec["hostname"], "managed-host");
    let keyframes = rec["keyframes"].as_array().unwrap();
    assert_eq!(keyframes.len(), 2, "{rec}");
    let types: Vec<&str> = rec["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for wanted in ["viewer_joined", "input", "chat", "session_ended"] {
        assert!(types.contains(&wanted), "{wanted} missing from {types:?}");
    }
    let chat_event = rec["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "chat")
        .unwrap();
    assert_eq!(chat_event["text"], "hello from the machine");

    // The file: its hash is the audited one, and it indexes the same way here.
    let resp = file_bytes(&server, &admin, &sid, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.bytes().await.unwrap();
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(rec["sha256"], sha.as_str());
    assert_eq!(rec["bytes"], bytes.len());
    let index = read_index(std::io::Cursor::new(&bytes[..])).unwrap();
    assert_eq!(index.keyframes.len(), 2);
    let closed = server.events_of("recording.closed").await;
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].event.details["sha256"], sha.as_str());
    assert_eq!(server.events_of("recording.started").await.len(), 1);

    // A player starts at a keyframe with a range.
    let offset = keyframes[1]["offset"].as_u64().unwrap();
    let resp = file_bytes(&server, &admin, &sid, Some(&format!("bytes={offset}-"))).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let tail = resp.bytes().await.unwrap();
    assert_eq!(&tail[..], &bytes[offset as usize..]);
    assert_eq!(tail[0], 2, "a keyframe record");
    assert!(tail.len() > RECORD_HEADER + 2000);

    // The list; watching is audited.
    let list = get_json(&server, &admin, "/api/recordings").await;
    assert_eq!(list["recordings"][0]["id"], sid.as_str());
    assert!(
        eventually(WAIT, || async {
            !server.events_of("recording.viewed").await.is_empty()
        })
        .await
    );
}

#[tokio::test]
async fn recordings_need_their_permission_and_the_policy_is_checked() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let tech = user_with_role(&server, &admin, "technician").await;

    for path in ["/api/recordings", "/api/settings/recording"] {
        expect_envelope(
            server.get(path, &tech).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    let resp = put_policy(&server, &tech, json!({ "mode": "all" })).await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;

    // Off by default.
    let policy = get_json(&server, &admin, "/api/settings/recording").await;
    assert_eq!(
        policy,
        json!({ "mode": "off", "sites": [], "retention_days": 30 })
    );
    for (bad, why) in [
        (json!({ "mode": "all", "retention_days": 0 }), "retention"),
        (json!({ "mode": "sites", "sites": [] }), "no sites"),
        (
            json!({ "mode": "sites", "sites": ["no-such-site"] }),
            "unknown site",
        ),
    ] {
        let resp = put_policy(&server, &admin, bad).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{why}");
    }
    let resp = put_policy(&server, &admin, json!({ "mode": "sometimes" })).await;
    assert!(resp.status().is_client_error());
    let resp = put_policy(&server, &admin, json!({ "mode": "all", "extra": 1 })).await;
    assert!(resp.status().is_client_error());
    assert_eq!(
        get_json(&server, &admin, "/api/settings/recording").await["mode"],
        "off"
    );

    // Off: a session leaves no recording.
    let (agent, _) = managed_agent(&server, &admin).await;
    let _ = agent.conn.close().await;
    let list = get_json(&server, &admin, "/api/recordings").await;
    assert_eq!(list["recordings"], json!([]));

    // A technician cannot fetch a recording's file either.
    record_all(&server, &admin).await;
    let (agent, _) = managed_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    end_session(&server, &admin, &sid).await;
    recording_with_status(&server, &admin, &sid, "complete").await;
    let resp = file_bytes(&server, &tech, &sid, None).await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = server.get("/api/recordings/not-a-recording", &admin).await;
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn a_site_policy_records_only_that_sites_machines() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let site = fleet_support::create_site(&server, &admin, "Recorded", "REC").await;
    let resp = put_policy(
        &server,
        &admin,
        json!({ "mode": "sites", "sites": [site.id] }),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);

    let in_site = new_machine_key(&server, &admin).await;
    server
        .state
        .store
        .set_machine_site(&in_site.agent_id, Some(&site.id))
        .await
        .unwrap();
    let elsewhere = new_machine_key(&server, &admin).await;
    let a = agent_hello(&server, &in_site.key, hello("in-site", "")).await;
    let b = agent_hello(&server, &elsewhere.key, hello("elsewhere", "")).await;
    end_session(&server, &admin, &a.session_id).await;
    end_session(&server, &admin, &b.session_id).await;
    recording_with_status(&server, &admin, &a.session_id, "complete").await;
    let list = get_json(&server, &admin, "/api/recordings").await;
    let ids: Vec<&str> = list["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.session_id.as_str()]);
}

#[tokio::test]
async fn retention_removes_old_recordings_and_deletion_is_audited() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    record_all(&server, &admin).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (agent, _) = managed_agent(&server, &admin).await;
        end_session(&server, &admin, &agent.session_id).await;
        recording_with_status(&server, &admin, &agent.session_id, "complete").await;
        ids.push(agent.session_id.clone());
    }
    let path = |id: &str| {
        server
            .state
            .config
            .data_dir
            .join("recordings")
            .join(format!("{id}.gcrec"))
    };
    assert!(path(&ids[0]).is_file());
    assert!(
        path(&ids[0]).with_extension("gcidx").is_file(),
        "the saved index"
    );

    // Deleted by an administrator: file and row.
    let resp = server
        .client()
        .delete(server.url(&format!("/api/recordings/{}", ids[0])))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(!path(&ids[0]).exists());
    assert!(!path(&ids[0]).with_extension("gcidx").exists());
    assert_eq!(server.events_of("recording.deleted").await.len(), 1);

    // Within retention nothing goes; past it the rest does.
    assert_eq!(
        guruconnect_server::recording::expire(&server.state).await,
        0
    );
    server
        .state
        .clock
        .advance(Duration::from_secs(31 * 24 * 3600));
    assert_eq!(
        guruconnect_server::recording::expire(&server.state).await,
        1
    );
    assert!(!path(&ids[1]).exists());
    let resp = server
        .get(&format!("/api/recordings/{}", ids[1]), &admin)
        .await;
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
    let expired = server.events_of("recording.expired").await;
    assert_eq!(expired.len(), 1);
    assert_eq!(
        expired[0].event.session_id.as_deref(),
        Some(ids[1].as_str())
    );
}

#[tokio::test]
async fn a_file_cut_short_plays_up_to_where_it_stops() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    record_all(&server, &admin).await;
    let (mut agent, _) = managed_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let mut watcher = viewer(&server, &admin, &sid).await;
    agent.conn.send(frame(1, true, 1000)).await.unwrap();
    agent.conn.send(frame(2, true, 1000)).await.unwrap();
    recv_until(&mut watcher, "frame 2", WAIT, |p| frame_seq(p) == Some(2)).await;
    end_session(&server, &admin, &sid).await;
    recording_with_status(&server, &admin, &sid, "complete").await;

    // As if the server had crashed halfway through the last frame.
    let path = server
        .state
        .config
        .data_dir
        .join("recordings")
        .join(format!("{sid}.gcrec"));
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 500).unwrap();
    let rec = get_json(&server, &admin, &format!("/api/recordings/{sid}")).await;
    // The first keyframe is whole, the second cut: one remains.
    assert_eq!(rec["keyframes"].as_array().unwrap().len(), 1, "{rec}");

    // Not a recording at all: a clear error, not a crash.
    std::fs::write(&path, b"garbage").unwrap();
    let resp = server.get(&format!("/api/recordings/{sid}"), &admin).await;
    expect_envelope(resp, StatusCode::CONFLICT, "conflict").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_recording_with_an_alert_and_the_session_goes_on() {
    let Some(tmpfs) = Tmpfs::mount_or_skip("1m") else {
        return;
    };
    let dir = tmpfs.path().join("recordings");
    let server = TestServer::start_with(|c| c.recordings_dir = Some(dir.clone())).await;
    let admin = server.admin_token().await;
    record_all(&server, &admin).await;
    let (mut agent, _) = managed_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let mut watcher = viewer(&server, &admin, &sid).await;
    wait_viewers(&server, &sid, 1).await;

    // 2 MiB of keyframes into a 1 MiB disk.
    for seq in 1..=16u64 {
        agent.conn.send(frame(seq, true, 128 * 1024)).await.unwrap();
        recv_until(&mut watcher, "frame", WAIT, |p| frame_seq(p) == Some(seq)).await;
    }
    let failed = eventually(Duration::from_secs(10), || async {
        !server.events_of("alert.recording_failed").await.is_empty()
    })
    .await;
    assert!(failed, "no alert for the full disk");
    let rec = recording_with_status(&server, &admin, &sid, "failed").await;
    assert!(rec["error"].as_str().unwrap().contains("space"), "{rec}");
    assert_eq!(server.events_of("recording.failed").await.len(), 1);

    // The session itself is untouched.
    agent.conn.send(frame(17, true, 1000)).await.unwrap();
    recv_until(&mut watcher, "frame after the failure", WAIT, |p| {
        frame_seq(p) == Some(17)
    })
    .await;
    assert!(
        server
            .state
            .sessions
            .get(&sid)
            .is_some_and(|s| s.is_active())
    );
    // What did get written still indexes (up to where the disk filled).
    let path = dir.join(format!("{sid}.gcrec"));
    let index = read_index(std::fs::File::open(path).unwrap()).unwrap();
    assert!(!index.keyframes.is_empty());
}

#[tokio::test]
async fn a_recording_left_open_by_a_crash_is_closed_as_failed_and_can_be_deleted() {
    use guruconnect_server::recording::format::{
        Header, RecordType, encode_header, encode_record_header,
    };
    use guruconnect_store::{DEFAULT_TENANT, Recording, RecordingStatus};
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    // What a crash leaves: a row still 'recording' and a file cut inside its last record.
    let id = uuid::Uuid::new_v4().to_string();
    let header = Header {
        session_id: id.clone(),
        agent_id: "crashed-agent".into(),
        hostname: "crashed".into(),
        kind: "managed".into(),
        started_at: 1,
    };
    let mut file = encode_header(&header);
    let frame = guruconnect_proto::Envelope::new(frame(1, true, 500)).to_bytes();
    file.extend_from_slice(&encode_record_header(
        RecordType::Keyframe,
        0,
        frame.len() as u32,
    ));
    file.extend_from_slice(&frame);
    file.extend_from_slice(&encode_record_header(RecordType::Frame, 40, 1000));
    file.extend_from_slice(&[0u8; 10]);
    let path = guruconnect_server::recording::file_of(&server.state, &id).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &file).unwrap();
    let row = Recording {
        id: id.clone(),
        tenant_id: DEFAULT_TENANT.into(),
        session_id: id.clone(),
        agent_id: "crashed-agent".into(),
        hostname: "crashed".into(),
        kind: guruconnect_store::SessionKind::Managed,
        status: RecordingStatus::Recording,
        started_at: 1,
        ended_at: None,
        bytes: 0,
        duration_ms: 0,
        sha256: None,
        error: None,
    };
    server.state.store.create_recording(&row).await.unwrap();

    // One that started after the server began serving is live, not left over.
    let live = Recording {
        id: uuid::Uuid::new_v4().to_string(),
        started_at: i64::MAX - 1,
        ..row.clone()
    };
    server.state.store.create_recording(&live).await.unwrap();
    guruconnect_server::recording::recover(
        &server.state,
        server.state.clock.now_millis(),
        i64::MAX,
    )
    .await;
    let open = server.state.store.open_recordings(10).await.unwrap();
    assert_eq!(
        open.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [live.id.as_str()]
    );
    let rec = get_json(&server, &admin, &format!("/api/recordings/{id}")).await;
    assert_eq!(rec["status"], "failed", "{rec}");
    assert_eq!(rec["error"], "the server stopped while recording");
    assert_eq!(rec["sha256"], hex::encode(Sha256::digest(&file)).as_str());
    assert_eq!(
        rec["keyframes"].as_array().unwrap().len(),
        1,
        "plays up to the cut"
    );
    let resp = server
        .client()
        .delete(server.url(&format!("/api/recordings/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(!path.exists());
}
