//! Fleet test helpers: sites and enrollment keys, `POST /api/enroll`, machine search,
//! agent connections that keep every message (for `KeyProvision`), and a webhook
//! receiver. Included with `#[path = "common/fleet.rs"] mod fleet_support;` after
//! `mod common;` and the relay helpers (`mod relay_support;`).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use guruconnect_client::{ClientError, Connection, connect_agent};
use guruconnect_proto::{Envelope, Payload, SessionInfo};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::common::TestServer;
use crate::relay_support::WAIT;

// ------------------------------------------------------------------ sites

/// A site as returned at creation or rotation (the only responses with the key).
#[derive(Debug, Clone)]
pub struct Site {
    /// Site id.
    pub id: String,
    /// Display name (also the machines' `site` label after enrollment).
    pub name: String,
    /// Public code installers use.
    pub code: String,
    /// Enrollment key plaintext (`gce_…`).
    pub key: String,
    /// `vN (XXXX)`.
    pub fingerprint: String,
    /// Key version.
    pub version: i64,
}

impl Site {
    fn from_body(body: &Value) -> Site {
        Site {
            id: body["id"].as_str().expect("site id").to_owned(),
            name: body["name"].as_str().expect("site name").to_owned(),
            code: body["code"].as_str().expect("site code").to_owned(),
            key: body["enrollment_key"]
                .as_str()
                .expect("enrollment_key in the response")
                .to_owned(),
            fingerprint: body["key_fingerprint"]
                .as_str()
                .expect("key_fingerprint")
                .to_owned(),
            version: body["key_version"].as_i64().expect("key_version"),
        }
    }
}

/// The fingerprint the server must show for `key` at `version`: `vN (XXXX)`, the first
/// four hex digits of the key's SHA-256, upper case.
pub fn expected_fingerprint(version: i64, key: &str) -> String {
    let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    format!("v{version} ({})", digest[..4].to_uppercase())
}

/// `POST /api/sites` as `token`; the raw response.
pub async fn create_site_response(
    server: &TestServer,
    token: &str,
    name: &str,
    code: &str,
) -> reqwest::Response {
    server
        .client()
        .post(server.url("/api/sites"))
        .bearer_auth(token)
        .json(&json!({ "name": name, "code": code }))
        .send()
        .await
        .expect("create site request")
}

/// Creates a site as an admin; panics unless 201.
pub async fn create_site(server: &TestServer, admin: &str, name: &str, code: &str) -> Site {
    let resp = create_site_response(server, admin, name, code).await;
    let status = resp.status();
    let body: Value = resp.json().await.expect("site body");
    assert_eq!(status, StatusCode::CREATED, "create site {code}: {body}");
    Site::from_body(&body)
}

/// `POST /api/sites/{id}/rotate-key` as `token`; the raw response.
pub async fn rotate_response(server: &TestServer, token: &str, site_id: &str) -> reqwest::Response {
    server
        .client()
        .post(server.url(&format!("/api/sites/{site_id}/rotate-key")))
        .bearer_auth(token)
        .send()
        .await
        .expect("rotate request")
}

/// Rotates a site's enrollment key as an admin; panics unless 200.
pub async fn rotate(server: &TestServer, admin: &str, site_id: &str) -> Site {
    let resp = rotate_response(server, admin, site_id).await;
    let status = resp.status();
    let body: Value = resp.json().await.expect("rotate body");
    assert_eq!(status, StatusCode::OK, "rotate: {body}");
    Site::from_body(&body)
}

/// `GET /api/sites` as an admin: the site views.
pub async fn list_sites(server: &TestServer, admin: &str) -> Vec<Value> {
    let resp = server.get("/api/sites", admin).await;
    assert_eq!(resp.status(), StatusCode::OK, "list sites");
    resp.json().await.expect("sites body")
}

// ------------------------------------------------------------------ enrollment

/// An enrollment request body.
pub fn enroll_body(site_code: &str, key: &str, machine_uid: &str, hostname: &str) -> Value {
    json!({
        "site_code": site_code,
        "enrollment_key": key,
        "machine_uid": machine_uid,
        "hostname": hostname,
        "os": "linux",
        "os_version": "test",
        "agent_version": "0.0.0-test",
        "labels": {},
    })
}

/// `POST /api/enroll`, optionally as if forwarded for `client_ip` by a trusted proxy.
pub async fn enroll_response(
    server: &TestServer,
    body: &Value,
    client_ip: Option<&str>,
) -> reqwest::Response {
    let mut req = server.client().post(server.url("/api/enroll")).json(body);
    if let Some(ip) = client_ip {
        req = req.header("x-forwarded-for", ip);
    }
    req.send().await.expect("enroll request")
}

/// A successful enrollment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// HTTP status (201 new machine, 200 otherwise).
    pub http: StatusCode,
    /// Machine.
    pub agent_id: String,
    /// The new per-agent key's id.
    pub key_id: String,
    /// The per-agent key (`cak_…`), shown once.
    pub agent_key: String,
    /// Site the machine is in now.
    pub site_id: String,
    /// `active` or `pending`.
    pub status: String,
}

/// Enrolls with `body`; panics unless 200 or 201.
pub async fn enroll_with(server: &TestServer, body: &Value) -> Enrolled {
    let resp = enroll_response(server, body, None).await;
    let http = resp.status();
    let body: Value = resp.json().await.expect("enroll body");
    assert!(
        http == StatusCode::CREATED || http == StatusCode::OK,
        "enroll answered {http}: {body}"
    );
    Enrolled {
        http,
        agent_id: body["agent_id"].as_str().expect("agent_id").to_owned(),
        key_id: body["key_id"].as_str().expect("key_id").to_owned(),
        agent_key: body["agent_key"].as_str().expect("agent_key").to_owned(),
        site_id: body["site_id"].as_str().expect("site_id").to_owned(),
        status: body["status"].as_str().expect("status").to_owned(),
    }
}

/// Enrolls `machine_uid`/`hostname` into `site` with its current key.
pub async fn enroll(
    server: &TestServer,
    site: &Site,
    machine_uid: &str,
    hostname: &str,
) -> Enrolled {
    enroll_with(
        server,
        &enroll_body(&site.code, &site.key, machine_uid, hostname),
    )
    .await
}

// ------------------------------------------------------------------ machines

/// `GET /api/machines?q=` as `token`: the items and the total.
pub async fn search(server: &TestServer, token: &str, q: &str) -> (Vec<Value>, i64) {
    let resp = server
        .client()
        .get(server.url("/api/machines"))
        .query(&[("q", q)])
        .bearer_auth(token)
        .send()
        .await
        .expect("search request");
    let status = resp.status();
    let body: Value = resp.json().await.expect("search body");
    assert_eq!(status, StatusCode::OK, "search {q:?}: {body}");
    let items = body["items"].as_array().expect("items").clone();
    (items, body["total"].as_i64().expect("total"))
}

/// The agent ids of `GET /api/machines?q=`, checking that the total agrees.
pub async fn search_ids(server: &TestServer, token: &str, q: &str) -> BTreeSet<String> {
    let (items, total) = search(server, token, q).await;
    assert_eq!(
        usize::try_from(total).expect("total >= 0"),
        items.len(),
        "total of {q:?}"
    );
    items
        .iter()
        .map(|m| m["agent_id"].as_str().expect("agent_id").to_owned())
        .collect()
}

/// A set of ids, for comparisons with [`search_ids`].
pub fn id_set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// Sends `method path` with a JSON body (or none) as `token`.
pub async fn send(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = server
        .client()
        .request(method, server.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("request")
}

/// The machine's per-agent keys (admin view).
pub async fn keys_of(server: &TestServer, admin: &str, agent_id: &str) -> Vec<Value> {
    let resp = server
        .get(&format!("/api/machines/{agent_id}/keys"), admin)
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "list keys");
    resp.json().await.expect("keys body")
}

// ------------------------------------------------------------------ agents

/// How an agent connection went: bound (with every message before `SessionInfo`), or
/// closed before binding.
pub enum Bind {
    /// The relay bound the agent.
    Bound {
        /// Connection.
        conn: Connection,
        /// The `SessionInfo`.
        info: SessionInfo,
        /// Payloads received before the `SessionInfo`.
        before: Vec<Payload>,
    },
    /// The relay closed the socket before `SessionInfo`.
    Closed {
        /// Payloads received before the close.
        seen: Vec<Payload>,
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// Connects with `credential` (panics if refused before the upgrade), sends `hello`,
/// and keeps every payload until `SessionInfo` or the close.
pub async fn bind_agent(server: &TestServer, credential: &str, hello: Payload) -> Bind {
    let mut conn = connect_agent(&server.base, credential)
        .await
        .expect("agent upgrade");
    conn.send(hello).await.expect("send hello");
    let deadline = Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.recv()).await {
            Err(_) => panic!("no SessionInfo nor close within {WAIT:?}"),
            Ok(Ok(Envelope {
                payload: Some(Payload::SessionInfo(info)),
                ..
            })) => return Bind::Bound { conn, info, before },
            Ok(Ok(Envelope {
                payload: Some(p), ..
            })) => before.push(p),
            Ok(Ok(_)) => {}
            Ok(Err(ClientError::Closed { code, reason })) => {
                return Bind::Closed {
                    seen: before,
                    code,
                    reason,
                };
            }
            Ok(Err(e)) => panic!("agent connection failed: {e}"),
        }
    }
}

/// Sends a ping and returns every payload received before its pong: everything the relay
/// queued for this agent before the ping was answered.
pub async fn drain_until_pong(conn: &mut Connection) -> Vec<Payload> {
    let stamp = u64::from(uuid::Uuid::new_v4().as_u128() as u32) + 1;
    conn.send(Payload::Ping(guruconnect_proto::Ping {
        timestamp_us: stamp,
    }))
    .await
    .expect("send ping");
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.recv()).await {
            Err(_) => panic!("no pong within {WAIT:?}"),
            Ok(Ok(Envelope {
                payload: Some(Payload::Pong(p)),
                ..
            })) if p.ping_timestamp_us == stamp => return seen,
            Ok(Ok(Envelope {
                payload: Some(p), ..
            })) => seen.push(p),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection failed while waiting for the pong: {e}"),
        }
    }
}

/// The `KeyProvision` messages among `payloads`: `(agent_key, key_id)`.
pub fn provisions(payloads: &[Payload]) -> Vec<(String, String)> {
    payloads
        .iter()
        .filter_map(|p| match p {
            Payload::KeyProvision(k) => Some((k.agent_key.clone(), k.key_id.clone())),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------------ webhook

/// One request the webhook receiver captured.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Request headers.
    pub headers: http::HeaderMap,
    /// Exact body bytes.
    pub body: Bytes,
}

/// An HTTP endpoint on 127.0.0.1 that records every POST to `/hook`.
pub struct WebhookReceiver {
    /// `http://127.0.0.1:port/hook`.
    pub url: String,
    rx: mpsc::UnboundedReceiver<Captured>,
    task: JoinHandle<()>,
}

impl WebhookReceiver {
    /// Starts the receiver on an ephemeral port.
    pub async fn start() -> WebhookReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap, body: Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Captured { headers, body });
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook receiver");
        let addr = listener.local_addr().expect("webhook addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            url: format!("http://{addr}/hook"),
            rx,
            task,
        }
    }

    /// Waits for the next request whose JSON `type` is `event_type`, skipping others;
    /// returns it with the parsed body.
    pub async fn next_of(&mut self, event_type: &str, timeout: Duration) -> (Captured, Value) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let captured = tokio::time::timeout(left, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {event_type} webhook within {timeout:?}"))
                .expect("webhook receiver running");
            let body: Value = serde_json::from_slice(&captured.body).expect("webhook body is JSON");
            if body["type"] == event_type {
                return (captured, body);
            }
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `header` (`sha256=<hex>`) is HMAC-SHA256(`secret`, `body`), checked with the
/// `hmac` crate's constant-time verification.
pub fn signature_verifies(secret: &[u8], body: &[u8], header: &str) -> bool {
    use hmac::{Hmac, Mac};
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}
