//! Audit in the same transaction (issue 15 item 4): the real server binary is killed
//! with SIGKILL while administrators create users and sites, rotate site keys, issue and
//! revoke agent keys and remove machines, and installers enroll machines with a site's
//! key; afterwards every stored change has its audit event. Runs on SQLite, and on
//! PostgreSQL when `GURUCONNECT_TEST_DATABASE_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use guruconnect_store::{DEFAULT_TENANT, Event, EventFilter, Store, StoreError};
use reqwest::StatusCode;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_guruconnect-server");
const PASSWORD: &str = "admin-password-1";
const ROUNDS: u64 = 5;
/// Hardware uids the enrollers share, so most enrollments re-enroll a machine.
const ENROLL_UIDS: usize = 10;

/// The server binary, killed with SIGKILL when dropped.
struct Binary {
    child: Child,
    addr: SocketAddr,
}

impl Binary {
    fn start(dir: &Path, database_url: Option<&str>) -> Binary {
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars() {
            if key.starts_with("GURUCONNECT_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        cmd.env("GURUCONNECT_DATA_DIR", dir.join("data"))
            .env("GURUCONNECT_BIND", "127.0.0.1:0")
            .env("GURUCONNECT_ADMIN_PASSWORD", PASSWORD)
            // Enrollers send a fresh X-Forwarded-For each, past the per-IP enroll limit.
            .env("GURUCONNECT_TRUSTED_PROXIES", r#"["127.0.0.1/32"]"#)
            .env("RUST_LOG", "info,sqlx=warn");
        if let Some(url) = database_url {
            cmd.env("GURUCONNECT_DATABASE_URL", url);
        }
        let mut child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the server binary");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("GuruConnect server listening")
                    && let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                        .and_then(|a| a.parse().ok())
                {
                    let _ = tx.send(addr);
                }
                line.clear();
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("the server did not start");
            });
        Binary { child, addr }
    }

    fn kill(&mut self) {
        // `Child::kill` sends SIGKILL on Unix: no shutdown code runs.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn login(http: &reqwest::Client, base: &str) -> String {
    let resp = http
        .post(format!("{base}/api/auth/login"))
        .json(&json!({ "username": "admin", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().expect("token").to_owned()
}

/// Runs one kind of write in a loop until `stop` or the server goes away.
async fn writer(
    kind: usize,
    base: String,
    token: String,
    agents: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
) {
    let http = common::client();
    let mut n: usize = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let agent = &agents[(n * 7 + kind) % agents.len()];
        let sent = match kind {
            // Keys: issue one (pre-provisioning the machine), revoke every other one.
            0..=7 => {
                let resp = http
                    .post(format!("{base}/api/machines/{agent}/keys"))
                    .bearer_auth(&token)
                    .json(&json!({ "label": "crash" }))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == StatusCode::CREATED && n.is_multiple_of(2) => {
                        let body: Value = r.json().await.unwrap_or_default();
                        let key_id = body["id"].as_str().unwrap_or_default().to_owned();
                        http.delete(format!("{base}/api/machines/{agent}/keys/{key_id}"))
                            .bearer_auth(&token)
                            .send()
                            .await
                            .map(drop)
                    }
                    other => other.map(drop),
                }
            }
            // Machines: remove one now and then.
            8 => {
                tokio::time::sleep(Duration::from_millis(30)).await;
                http.delete(format!("{base}/api/machines/{agent}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map(drop)
            }
            // Users (each one hashes a password: slow).
            9 => http
                .post(format!("{base}/api/users"))
                .bearer_auth(&token)
                .json(&json!({ "username": format!("crash-{}-{n}", uuid::Uuid::new_v4().simple()), "password": common::random_secret("pw"), "role": "viewer" }))
                .send()
                .await
                .map(drop),
            // Sites: create one, then rotate its key.
            _ => {
                let code = format!("C{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
                let resp = http
                    .post(format!("{base}/api/sites"))
                    .bearer_auth(&token)
                    .json(&json!({ "name": code, "code": code }))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let body: Value = r.json().await.unwrap_or_default();
                        let id = body["id"].as_str().unwrap_or_default().to_owned();
                        http.post(format!("{base}/api/sites/{id}/rotate-key"))
                            .bearer_auth(&token)
                            .send()
                            .await
                            .map(drop)
                    }
                    other => other.map(drop),
                }
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// A site with its enrollment key, created through the API.
async fn create_site(http: &reqwest::Client, base: &str, token: &str) -> (String, String) {
    let code = format!("E{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let resp = http
        .post(format!("{base}/api/sites"))
        .bearer_auth(token)
        .json(&json!({ "name": code, "code": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    let key = body["enrollment_key"].as_str().expect("enrollment_key");
    (code, key.to_owned())
}

/// Enrolls machines through `POST /api/enroll` until `stop` or the server goes away:
/// mostly re-enrollments of a few uids (each revokes the machine's earlier keys), now and
/// then a clone (same uid, another host name: a pending row). Counts the 2xx answers.
async fn enroller(
    id: usize,
    base: String,
    site: (String, String),
    stop: Arc<AtomicBool>,
    enrolled: Arc<AtomicUsize>,
) {
    let http = common::client();
    let mut n: usize = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let uid = (n * 3 + id) % ENROLL_UIDS;
        let hostname = if (n + id).is_multiple_of(6) {
            format!("clone-{id}-{n}")
        } else {
            format!("enr-host-{uid}")
        };
        let ip = uuid::Uuid::new_v4();
        let ip = ip.as_bytes();
        let resp = http
            .post(format!("{base}/api/enroll"))
            .header(
                "x-forwarded-for",
                format!("10.{}.{}.{}", ip[0], ip[1], ip[2].max(1)),
            )
            .json(&json!({
                "site_code": site.0,
                "enrollment_key": site.1,
                "machine_uid": format!("enr-uid-{uid}"),
                "hostname": hostname,
                "os": "linux",
                "labels": { "company": "Crash", "tags": ["crash"] },
            }))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {
                enrolled.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Every event of the default tenant.
async fn all_events(store: &Store) -> Vec<Event> {
    let mut events = Vec::new();
    let mut before_id = None;
    loop {
        let page = store
            .list_events(&EventFilter {
                tenant_id: DEFAULT_TENANT.to_owned(),
                before_id,
                limit: 500,
                ..EventFilter::default()
            })
            .await
            .expect("events");
        let Some(last) = page.last() else { break };
        before_id = Some(last.id);
        events.extend(page);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_during_writes_every_change_has_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = common::test_database_url().await;
    let agents: Arc<Vec<String>> =
        Arc::new((0..24).map(|_| uuid::Uuid::new_v4().to_string()).collect());
    let enrollments = Arc::new(AtomicUsize::new(0));
    for round in 0..ROUNDS {
        let mut server = Binary::start(dir.path(), database_url.as_deref());
        let base = format!("http://{}", server.addr);
        let token = login(&common::client(), &base).await;
        let site = create_site(&common::client(), &base, &token).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers: Vec<_> = (0..12)
            .map(|kind| {
                tokio::spawn(writer(
                    kind,
                    base.clone(),
                    token.clone(),
                    Arc::clone(&agents),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        writers.extend((0..8).map(|id| {
            tokio::spawn(enroller(
                id,
                base.clone(),
                site.clone(),
                Arc::clone(&stop),
                Arc::clone(&enrollments),
            ))
        }));
        // A different moment in each round.
        tokio::time::sleep(Duration::from_millis(700 + 230 * round)).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            let _ = w.await;
        }
    }

    let store = match &database_url {
        Some(url) => Store::connect(url).await.expect("connect"),
        None => Store::open_sqlite_in(&dir.path().join("data"))
            .await
            .expect("open"),
    };
    let events = all_events(&store).await;
    let detail_ids = |event_type: &str, field: &str| -> HashMap<String, usize> {
        let mut ids = HashMap::new();
        for e in events.iter().filter(|e| e.event.event_type == event_type) {
            if let Some(id) = e.event.details[field].as_str() {
                *ids.entry(id.to_owned()).or_default() += 1;
            }
        }
        ids
    };
    let mut missing = Vec::new();

    let created_users = detail_ids("user.created", "target_user_id");
    let users = store.list_users(DEFAULT_TENANT).await.expect("users");
    for u in &users {
        if !created_users.contains_key(&u.id) {
            missing.push(format!("user {} has no user.created", u.username));
        }
    }
    let created_sites = detail_ids("site.created", "site_id");
    let rotated = detail_ids("site.key_rotated", "site_id");
    let sites = store.list_sites(DEFAULT_TENANT).await.expect("sites");
    for s in &sites {
        if !created_sites.contains_key(&s.id) {
            missing.push(format!("site {} has no site.created", s.code));
        }
        let rotations = rotated.get(&s.id).copied().unwrap_or(0);
        if rotations != usize::try_from(s.key_version - 1).unwrap() {
            missing.push(format!(
                "site {} is at key version {} with {rotations} key_rotated events",
                s.code, s.key_version
            ));
        }
    }
    let issued = detail_ids("key.issued", "key_id");
    let enrolled_keys = detail_ids("machine.enrolled", "key_id");
    let revoked = detail_ids("key.revoked", "key_id");
    let removed: HashSet<&str> = events
        .iter()
        .filter(|e| e.event.event_type == "machine.removed")
        .filter_map(|e| e.event.agent_id.as_deref())
        .collect();
    let mut keys = 0;
    let mut revoked_keys = 0;
    let mut removed_machines = 0;
    for agent in agents.iter() {
        let agent_keys = store.list_agent_keys(agent).await.expect("keys");
        for k in &agent_keys {
            keys += 1;
            if !issued.contains_key(&k.id) {
                missing.push(format!("key {} has no key.issued", k.id));
            }
            if k.revoked_at.is_some() {
                revoked_keys += 1;
                if !revoked.contains_key(&k.id) {
                    missing.push(format!("revoked key {} has no key.revoked", k.id));
                }
            }
        }
        // A machine is only created by issuing it a key.
        if !agent_keys.is_empty()
            && matches!(store.get_machine(agent).await, Err(StoreError::NotFound))
        {
            removed_machines += 1;
            if !removed.contains(agent.as_str()) {
                missing.push(format!("removed machine {agent} has no machine.removed"));
            }
        }
    }
    // Enrollment: the machine row, the revocation of its earlier keys and its new key
    // commit with their events (`machine.enrolled` names the new key).
    let enrolled_agents: HashSet<&str> = events
        .iter()
        .filter(|e| e.event.event_type == "machine.enrolled")
        .filter_map(|e| e.event.agent_id.as_deref())
        .collect();
    let (machines, total) = store
        .list_machines(DEFAULT_TENANT, 1000, 0)
        .await
        .expect("machines");
    assert!(total <= 1000, "more machines than one page");
    let mut enrolled_machines = 0;
    let mut enrolled_revoked = 0;
    // Only enrollment gives a machine a site here.
    for m in machines.iter().filter(|m| m.site_id.is_some()) {
        enrolled_machines += 1;
        if !enrolled_agents.contains(m.agent_id.as_str()) {
            missing.push(format!(
                "enrolled machine {} ({}) has no machine.enrolled",
                m.agent_id, m.hostname
            ));
        }
        let machine_keys = store.list_agent_keys(&m.agent_id).await.expect("keys");
        if machine_keys.iter().all(|k| k.revoked_at.is_some()) {
            missing.push(format!(
                "enrolled machine {} ({}) has no unrevoked key ({} revoked)",
                m.agent_id,
                m.hostname,
                machine_keys.len()
            ));
        }
        for k in &machine_keys {
            if !enrolled_keys.contains_key(&k.id) {
                missing.push(format!("enrollment key {} has no machine.enrolled", k.id));
            }
            if k.revoked_at.is_some() {
                enrolled_revoked += 1;
                if !revoked.contains_key(&k.id) {
                    missing.push(format!("revoked key {} has no key.revoked", k.id));
                }
            }
        }
    }
    println!(
        "{ROUNDS} rounds: {} users, {} sites, {keys} keys ({revoked_keys} revoked), {removed_machines} removed machines, {} enrollments answered, {enrolled_machines} enrolled machines ({enrolled_revoked} keys revoked by re-enrollment), {} events",
        users.len(),
        sites.len(),
        enrollments.load(Ordering::Relaxed),
        events.len()
    );
    // The writers got somewhere, so the check means something.
    assert!(
        keys > 0 && users.len() > 1 && !sites.is_empty(),
        "too few writes"
    );
    assert!(
        enrolled_machines > 0 && enrolled_revoked > 0,
        "too few enrollments"
    );
    assert!(
        missing.is_empty(),
        "changes without their event:\n{}",
        missing.join("\n")
    );
}
