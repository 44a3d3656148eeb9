//! Releases and update pushes over real HTTP and a real agent WebSocket: publishing
//! checks the Ed25519 signature against the configured key, artifacts must match the
//! signed size and SHA-256, `/api/version` offers the right release per channel, rollout
//! and version, downloads resume with Range, the changelog lists stable releases, and a
//! push reaches the connected agent, whose reported progress is stored and audited.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "common/fleet.rs"]
mod fleet_support;
#[allow(clippy::unwrap_used)]
#[path = "common/relay.rs"]
mod relay_support;

use std::time::Duration;

use common::{TestServer, expect_envelope};
use fleet_support::*;
use guruconnect_proto::{Payload, UpdateState, UpdateStatus};
use guruconnect_release::{SignedRelease, SigningKey, generate_key, public_key_text, sha256_hex};
use relay_support::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const LINUX: &str = "linux-x86_64";

/// A server that trusts `key`'s public half.
async fn server_trusting(key: &SigningKey) -> TestServer {
    let public = public_key_text(&key.verifying_key());
    TestServer::start_with(|c| c.release_public_key = Some(public)).await
}

/// A signed release of `version` with one Linux artifact of `bytes`.
fn signed(key: &SigningKey, version: &str, channel: &str, bytes: &[u8]) -> SignedRelease {
    signed_with(key, version, channel, bytes, None)
}

fn signed_with(
    key: &SigningKey,
    version: &str,
    channel: &str,
    bytes: &[u8],
    min_version: Option<&str>,
) -> SignedRelease {
    let mut artifact = json!({
        "platform": LINUX,
        "file": "guruconnect-agent",
        "size": bytes.len(),
        "sha256": sha256_hex(bytes),
    });
    if let Some(min) = min_version {
        artifact["min_version"] = json!(min);
    }
    let manifest = json!({
        "version": version,
        "channel": channel,
        "notes": format!("Notes of {version}"),
        "artifacts": [artifact],
    });
    SignedRelease::sign(&serde_json::to_string_pretty(&manifest).unwrap(), key).unwrap()
}

async fn publish(server: &TestServer, token: &str, release: &SignedRelease) -> reqwest::Response {
    send(
        server,
        Method::POST,
        "/api/releases",
        token,
        Some(serde_json::to_value(release).unwrap()),
    )
    .await
}

async fn upload(
    server: &TestServer,
    token: &str,
    version: &str,
    bytes: &[u8],
) -> reqwest::Response {
    server
        .client()
        .put(server.url(&format!("/api/releases/{version}/artifacts/{LINUX}")))
        .bearer_auth(token)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

/// Publishes and uploads.
async fn release(server: &TestServer, admin: &str, release: &SignedRelease, bytes: &[u8]) {
    let resp = publish(server, admin, release).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );
    let version = release_version(release);
    let resp = upload(server, admin, &version, bytes).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap()
    );
}

fn release_version(release: &SignedRelease) -> String {
    let m: Value = serde_json::from_str(&release.manifest).unwrap();
    m["version"].as_str().unwrap().to_owned()
}

async fn version_for(server: &TestServer, query: &str) -> Value {
    let resp = server
        .client()
        .get(server.url(&format!("/api/version?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

fn artifact(n: u8) -> Vec<u8> {
    (0..50_000u32).map(|i| (i as u8) ^ n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_public_key_updates_are_disabled_and_said_so() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let resp = publish(
        &server,
        &admin,
        &signed(&generate_key(), "1.0.0", "stable", b"x"),
    )
    .await;
    let body = expect_envelope(resp, StatusCode::NOT_FOUND, "not_configured").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("release_public_key"),
        "{body}"
    );
    let v = version_for(&server, "platform=linux-x86_64&current=0.1.0").await;
    assert_eq!(v["available"], false);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("updates are disabled"),
        "{v}"
    );
    assert!(server.state.store.list_releases().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_must_verify_and_its_artifact_must_match_the_signed_manifest() {
    let key = generate_key();
    let server = server_trusting(&key).await;
    let admin = server.admin_token().await;
    let bytes = artifact(1);

    // Signed by another key, or changed after signing: refused, nothing stored.
    let resp = publish(
        &server,
        &admin,
        &signed(&generate_key(), "1.0.0", "stable", &bytes),
    )
    .await;
    let body = expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(
        body["detail"].as_str().unwrap().contains("does not verify"),
        "{body}"
    );
    let mut tampered = signed(&key, "1.0.0", "stable", &bytes);
    tampered.manifest = tampered.manifest.replace("1.0.0", "1.0.1");
    let resp = publish(&server, &admin, &tampered).await;
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(server.state.store.list_releases().await.unwrap().is_empty());
    assert!(server.events_of("release.published").await.is_empty());

    // A good one is stored once; the same version again is a conflict.
    let good = signed(&key, "1.0.0", "stable", &bytes);
    let resp = publish(&server, &admin, &good).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = publish(&server, &admin, &good).await;
    expect_envelope(resp, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(server.events_of("release.published").await.len(), 1);

    // Not offered before its artifact is uploaded.
    let v = version_for(&server, "platform=linux-x86_64&current=0.1.0").await;
    assert_eq!(v["available"], false, "{v}");

    // One byte changed, or one byte short: refused and not kept.
    let mut changed = bytes.clone();
    changed[1234] ^= 0xff;
    let resp = upload(&server, &admin, "1.0.0", &changed).await;
    let body = expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(
        body["detail"].as_str().unwrap().contains("does not match"),
        "{body}"
    );
    let resp = upload(&server, &admin, "1.0.0", &bytes[..bytes.len() - 1]).await;
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let mut longer = bytes.clone();
    longer.push(0);
    let resp = upload(&server, &admin, "1.0.0", &longer).await;
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(server.events_of("release.artifact_refused").await.len(), 3);
    let url = server.url(&format!("/api/releases/1.0.0/artifacts/{LINUX}"));
    let resp = server.client().get(&url).send().await.unwrap();
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;

    // The right bytes are kept and served, whole and by range (a resumed download).
    let resp = upload(&server, &admin, "1.0.0", &bytes).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["artifacts"][0]["uploaded"], true, "{body}");
    let got = server.client().get(&url).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let part = server
        .client()
        .get(&url)
        .header("range", "bytes=40000-")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[40_000..]);

    let v = version_for(&server, "platform=linux-x86_64&current=0.1.0").await;
    assert_eq!(v["available"], true, "{v}");
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(
        v["artifact_url"],
        format!("/api/releases/1.0.0/artifacts/{LINUX}")
    );
    // What the agent gets verifies with the key it was installed with.
    let got: SignedRelease = serde_json::from_value(v["release"].clone()).unwrap();
    let manifest = got.verify(&key.verifying_key()).unwrap();
    assert_eq!(manifest.artifact(LINUX).unwrap().sha256, sha256_hex(&bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_offers_the_newest_of_the_channel_never_a_downgrade_and_honours_rollout() {
    let key = generate_key();
    let server = server_trusting(&key).await;
    let admin = server.admin_token().await;
    for (version, channel, n) in [
        ("1.0.0", "stable", 1),
        ("1.1.0", "stable", 2),
        ("1.2.0-beta.1", "beta", 3),
    ] {
        release(
            &server,
            &admin,
            &signed(&key, version, channel, &artifact(n)),
            &artifact(n),
        )
        .await;
    }
    let q = |rest: &str| format!("platform=linux-x86_64&{rest}");
    assert_eq!(
        version_for(&server, &q("current=1.0.0")).await["version"],
        "1.1.0"
    );
    assert_eq!(
        version_for(&server, &q("current=1.0.0&channel=beta")).await["version"],
        "1.2.0-beta.1"
    );
    let up_to_date = version_for(&server, &q("current=1.1.0")).await;
    assert_eq!(up_to_date["available"], false);
    assert_eq!(up_to_date["reason"], "up to date");
    // Newer than anything published: nothing, and never an older version.
    assert_eq!(
        version_for(&server, &q("current=2.0.0")).await["available"],
        false
    );
    // A specific older version only when an administrator forces the downgrade.
    assert_eq!(
        version_for(&server, &q("current=1.1.0&version=1.0.0")).await["available"],
        false
    );
    let forced = version_for(
        &server,
        &q("current=1.1.0&version=1.0.0&allow_downgrade=true"),
    )
    .await;
    assert_eq!(forced["available"], true);
    assert_eq!(forced["version"], "1.0.0");
    // Other platforms have nothing.
    let win = version_for(&server, "platform=windows-x86_64&current=0.1.0").await;
    assert_eq!(win["available"], false);

    // Staged rollout: at 0 % nobody gets 1.1.0 (they stay offered 1.0.0).
    let resp = send(
        &server,
        Method::PATCH,
        "/api/releases/1.1.0",
        &admin,
        Some(json!({ "rollout_percent": 0 })),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = version_for(&server, &q("current=0.9.0&agent_id=a-1")).await;
    assert_eq!(v["version"], "1.0.0", "{v}");
    let resp = send(
        &server,
        Method::PATCH,
        "/api/releases/1.1.0",
        &admin,
        Some(json!({ "rollout_percent": 101 })),
    )
    .await;
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    // At 50 %, about half of 200 agents get it.
    send(
        &server,
        Method::PATCH,
        "/api/releases/1.1.0",
        &admin,
        Some(json!({ "rollout_percent": 50 })),
    )
    .await;
    let mut offered = 0;
    for i in 0..200 {
        let v = version_for(&server, &q(&format!("current=1.0.0&agent_id=agent-{i}"))).await;
        if v["available"] == true {
            offered += 1;
        }
    }
    assert!((60..=140).contains(&offered), "{offered} of 200 at 50 %");

    // The changelog lists stable releases only, newest first.
    let log: Value = server
        .client()
        .get(server.url("/api/changelog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let versions: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.1.0", "1.0.0"]);
    let one: Value = server
        .client()
        .get(server.url("/api/changelog/1.0.0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["notes"], "Notes of 1.0.0");
    let beta = server
        .client()
        .get(server.url("/api/changelog/1.2.0-beta.1"))
        .send()
        .await
        .unwrap();
    expect_envelope(beta, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minimum_version_holds_old_agents_back() {
    let key = generate_key();
    let server = server_trusting(&key).await;
    let admin = server.admin_token().await;
    release(
        &server,
        &admin,
        &signed(&key, "1.0.0", "stable", &artifact(1)),
        &artifact(1),
    )
    .await;
    let needs_1 = signed_with(&key, "2.0.0", "stable", &artifact(2), Some("1.0.0"));
    release(&server, &admin, &needs_1, &artifact(2)).await;
    let q = |cur: &str| format!("platform=linux-x86_64&current={cur}");
    assert_eq!(version_for(&server, &q("0.9.0")).await["version"], "1.0.0");
    assert_eq!(version_for(&server, &q("1.0.0")).await["version"], "2.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_the_connected_agent_and_its_progress_is_kept_and_audited() {
    let key = generate_key();
    let server = server_trusting(&key).await;
    let admin = server.admin_token().await;
    let machine = new_machine_key(&server, &admin).await;

    // Offline: said so.
    let path = format!("/api/machines/{}/update", machine.agent_id);
    let resp = send(&server, Method::POST, &path, &admin, None).await;
    let body = expect_envelope(resp, StatusCode::CONFLICT, "conflict").await;
    assert!(
        body["detail"].as_str().unwrap().contains("offline"),
        "{body}"
    );

    let Bind::Bound { mut conn, .. } =
        bind_agent(&server, &machine.key, hello("upd-host", "uid-upd")).await
    else {
        panic!("the agent was not bound");
    };
    // A technician may not push (checked before anything happens).
    let tech = user_with_role(&server, &admin, "technician").await;
    let resp = send(&server, Method::POST, &path, &tech, None).await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(server.events_of("update.pushed").await.is_empty());
    // Downgrade without a version is refused.
    let resp = send(
        &server,
        Method::POST,
        &path,
        &admin,
        Some(json!({ "allow_downgrade": true })),
    )
    .await;
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    let resp = send(
        &server,
        Method::POST,
        &path,
        &admin,
        Some(json!({ "version": "1.2.0" })),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    let request_id = body["request_id"].as_str().unwrap().to_owned();
    let got = recv_until(
        &mut conn,
        "the update command",
        Duration::from_secs(10),
        |p| matches!(p, Payload::UpdateCommand(_)),
    )
    .await;
    let Payload::UpdateCommand(cmd) = got else {
        unreachable!()
    };
    assert_eq!(cmd.version, "1.2.0");
    assert_eq!(cmd.request_id, request_id);
    assert!(!cmd.allow_downgrade);

    // The agent reports; the machine shows the last step and the end is audited.
    for (state, detail) in [
        (UpdateState::Downloading, "12 %"),
        (
            UpdateState::RolledBack,
            "the new version exited at start (status 1)",
        ),
    ] {
        conn.send(Payload::UpdateStatus(UpdateStatus {
            state: state as i32,
            version: "1.2.0".into(),
            detail: detail.into(),
            request_id: request_id.clone(),
        }))
        .await
        .unwrap();
    }
    sync(&mut conn).await;
    let m: Value = server
        .get(&format!("/api/machines/{}", machine.agent_id), &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(m["update_status"]["state"], "rolled_back", "{m}");
    assert_eq!(m["update_status"]["request_id"], request_id.as_str());
    let events = server.events_of("update.rolled_back").await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].event.agent_id.as_deref(),
        Some(machine.agent_id.as_str())
    );
    assert_eq!(server.events_of("update.pushed").await.len(), 1);

    // The bulk form answers per machine.
    let resp = send(
        &server,
        Method::POST,
        "/api/machines/update",
        &admin,
        Some(json!({ "agent_ids": [machine.agent_id, "no-such-machine"] })),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let states: Vec<(&str, &str)> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["agent_id"].as_str().unwrap(),
                i["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        states.contains(&(machine.agent_id.as_str(), "queued")),
        "{body}"
    );
    assert!(states.contains(&("no-such-machine", "offline")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_come_from_the_machine_then_its_site() {
    let key = generate_key();
    let server = server_trusting(&key).await;
    let admin = server.admin_token().await;
    release(
        &server,
        &admin,
        &signed(&key, "1.0.0", "stable", &artifact(1)),
        &artifact(1),
    )
    .await;
    release(
        &server,
        &admin,
        &signed(&key, "1.1.0-beta.1", "beta", &artifact(2)),
        &artifact(2),
    )
    .await;
    let site = create_site(&server, &admin, "Lab", "LAB").await;
    let m = enroll(&server, &site, "uid-chan", "lab-pc").await;
    let q = format!(
        "platform=linux-x86_64&current=0.1.0&agent_id={}",
        m.agent_id
    );
    assert_eq!(version_for(&server, &q).await["version"], "1.0.0");
    // The site goes beta: its machine follows.
    let resp = send(
        &server,
        Method::PUT,
        &format!("/api/sites/{}/update-channel", site.id),
        &admin,
        Some(json!({ "channel": "beta" })),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(version_for(&server, &q).await["version"], "1.1.0-beta.1");
    // The site list carries the channel (the console's Sites page shows and edits it).
    assert_eq!(
        list_sites(&server, &admin).await[0]["update_channel"],
        "beta"
    );
    // The machine's own setting wins.
    let machine_path = format!("/api/machines/{}", m.agent_id);
    let set_channel = |channel: &'static str| {
        send(
            &server,
            Method::PATCH,
            &machine_path,
            &admin,
            Some(json!({ "update_channel": channel })),
        )
    };
    assert_eq!(set_channel("stable").await.status(), StatusCode::OK);
    assert_eq!(version_for(&server, &q).await["version"], "1.0.0");
    expect_envelope(
        set_channel("nightly").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}
