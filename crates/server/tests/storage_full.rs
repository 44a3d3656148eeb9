//! A full disk under the embedded SQLite database (issue 15 item 1): while it is full,
//! writes get a clear `storage_full` answer and agents a close reason that says so; once
//! space returns, writes succeed again without a restart and every acknowledged write
//! survives a clean stop.
//!
//! Needs a small tmpfs as the data directory (root, `mount`). Where mounting is
//! impossible the test prints a line and passes, unless `GURUCONNECT_REQUIRE_TMPFS` is
//! set. SQLite only: PostgreSQL's disk is not the server's.

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
use fleet_support::*;
use relay_support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tmpfs_support::{Tmpfs, fill};

async fn create_code(server: &TestServer, admin: &str) -> reqwest::Response {
    server
        .client()
        .post(server.url("/api/codes"))
        .bearer_auth(admin)
        .json(&json!({ "note": "disk" }))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_loses_no_acknowledged_write() {
    let Some(tmpfs) = Tmpfs::mount_or_skip("8m") else {
        return;
    };
    let data_dir = tmpfs.path().join("data");
    let mut server = TestServer::start_with(|c| {
        c.database_url = None;
        c.data_dir = data_dir.clone();
    })
    .await;
    let admin = server.admin_token().await;
    let site = create_site(&server, &admin, "Disk", "DSK").await;
    let mut agents = Vec::new();
    for i in 0..6 {
        agents.push(
            enroll(
                &server,
                &site,
                &format!("uid-disk-{i}"),
                &format!("pc-disk-{i}"),
            )
            .await,
        );
    }

    // Full: writes answer storage_full, agents are refused with a reason that says so.
    let filler = fill(tmpfs.path());
    // Collected rather than asserted at once, so one run shows every symptom.
    let mut problems: Vec<String> = Vec::new();
    let mut refused = 0;
    for (i, agent) in agents.iter().enumerate() {
        match bind_agent(
            &server,
            &agent.agent_key,
            hello(&format!("pc-disk-{i}"), &format!("uid-disk-{i}")),
        )
        .await
        {
            Bind::Closed { reason, .. } => {
                if !reason.contains("storage full") {
                    problems.push(format!("agent close reason on a full disk: {reason:?}"));
                }
                refused += 1;
            }
            Bind::Bound { .. } => {}
        }
    }
    assert!(refused > 0, "no agent bind failed on the full disk");
    let resp = create_code(&server, &admin).await;
    let status = resp.status();
    let body = resp.text().await.unwrap();
    if status == StatusCode::INSUFFICIENT_STORAGE {
        let resp = create_code(&server, &admin).await;
        expect_envelope(resp, StatusCode::INSUFFICIENT_STORAGE, "storage_full").await;
    } else {
        problems.push(format!("write on a full disk: {status} {body}"));
    }

    // Space returns: writes succeed again within seconds, and keep succeeding.
    std::fs::remove_file(&filler).expect("remove filler");
    let mut acknowledged: Vec<String> = Vec::new();
    let back = eventually(Duration::from_secs(15), || async {
        create_code(&server, &admin).await.status() == StatusCode::CREATED
    })
    .await;
    assert!(back, "writes did not recover after space returned");
    let mut failed = 0;
    for _ in 0..24 {
        let resp = create_code(&server, &admin).await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        if status == StatusCode::CREATED {
            acknowledged.push(body["code"].as_str().expect("code").to_owned());
        } else {
            failed += 1;
        }
    }
    if failed > 0 {
        problems.push(format!("{failed} of 24 writes after recovery failed"));
    }
    // Agents bind again too.
    for (i, agent) in agents.iter().enumerate() {
        match bind_agent(
            &server,
            &agent.agent_key,
            hello(&format!("pc-disk-{i}"), &format!("uid-disk-{i}")),
        )
        .await
        {
            Bind::Bound { .. } => {}
            Bind::Closed { code, reason, .. } => {
                problems.push(format!("agent refused after recovery: {code} {reason}"));
            }
        }
    }

    // Every acknowledged write is still there after a clean stop.
    server.stop().await;
    let server = TestServer::start_with(|c| {
        c.database_url = None;
        c.data_dir = data_dir.clone();
    })
    .await;
    let mut lost = 0;
    for code in &acknowledged {
        if server
            .state
            .store
            .get_code(code)
            .await
            .expect("get_code")
            .is_none()
        {
            lost += 1;
        }
    }
    if lost > 0 {
        problems.push(format!(
            "{lost} of {} acknowledged codes lost",
            acknowledged.len()
        ));
    }
    drop(server);
    drop(tmpfs);
    assert!(problems.is_empty(), "{problems:#?}");
}
