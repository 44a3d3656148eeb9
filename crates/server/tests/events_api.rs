//! `GET /api/events`: admin only, filters and cursor pagination over real audit events.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestServer, expect_envelope, random_secret};
use reqwest::StatusCode;
use serde_json::Value;

async fn page(server: &TestServer, token: &str, query: &str) -> Value {
    let resp = server.get(&format!("/api/events?{query}"), token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn audit_log_is_admin_only_filterable_and_paginated() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let pw = random_secret("tech");
    server.create_user(&admin, "tina", &pw, "technician").await;
    let tech = server.login("tina", &pw).await;
    // Three failed sign-ins make a recognisable run of events.
    for _ in 0..3 {
        let resp = server.login_response("mallory", "wrong-password").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }

    let resp = server.get("/api/events", &tech).await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;

    let failures = page(&server, &admin, "type=auth.login_failure").await;
    let items = failures["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(
        items
            .iter()
            .all(|e| e["event_type"] == "auth.login_failure" && e["username"] == "mallory")
    );
    assert!(items.iter().all(|e| e["client_ip"] == "127.0.0.1"));

    let by_prefix = page(&server, &admin, "type=auth.").await;
    assert!(
        by_prefix["items"].as_array().unwrap().len() >= 5,
        "{by_prefix}"
    );

    let by_user = page(&server, &admin, "user=TINA").await;
    let items = by_user["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(items.iter().all(|e| e["username"] == "tina"));

    // Walk everything two at a time: ids strictly decrease and nothing repeats.
    let all = page(&server, &admin, "limit=500").await["items"]
        .as_array()
        .unwrap()
        .len();
    let mut seen = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let query = match cursor {
            Some(c) => format!("limit=2&before_id={c}"),
            None => "limit=2".to_owned(),
        };
        let body = page(&server, &admin, &query).await;
        for e in body["items"].as_array().unwrap() {
            seen.push(e["id"].as_i64().unwrap());
        }
        match body["next_before_id"].as_i64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), all);
    assert!(seen.windows(2).all(|w| w[0] > w[1]));

    let resp = server.get("/api/events?limit=0", &admin).await;
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}

#[tokio::test]
async fn events_name_their_machine_by_host_name() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let agent_id = uuid::Uuid::new_v4().to_string();
    let resp = server
        .client()
        .post(server.url(&format!("/api/machines/{agent_id}/keys")))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "hostname": "front-desk-01" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    let issued = page(&server, &admin, "type=key.issued").await;
    let event = &issued["items"][0];
    assert_eq!(event["agent_id"], agent_id.as_str(), "{issued}");
    assert_eq!(event["hostname"], "front-desk-01", "{issued}");
    // Events without a machine carry no host name.
    let logins = page(&server, &admin, "type=auth.login_success").await;
    assert!(logins["items"][0].get("hostname").is_none(), "{logins}");
}
