//! Three server instances — real `guruconnect-server` processes — on one PostgreSQL
//! database and one NATS server: an agent on A, viewers on B and C.
//!
//! Needs `GURUCONNECT_TEST_DATABASE_URL` (PostgreSQL) and NATS on 127.0.0.1:4222; skipped
//! without them unless `GURUCONNECT_REQUIRE_NATS=1` (set by `.ci/run`), which makes a
//! missing NATS a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "common/relay.rs"]
mod relay_support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use guruconnect_client::{Connection, connect_agent, connect_viewer};
use guruconnect_proto::{ChatMessage, ClipboardText, EndCode, Payload, SessionPhase};
use relay_support::{WAIT, consent, frame, hello, key_down, recv_until, try_recv_until};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const NATS: &str = "nats://127.0.0.1:4222";
const SECRET: &str = "cluster-test-signing-secret-0123456789abcdef";

/// The public key every instance trusts for releases (updates can be pushed).
fn release_key() -> String {
    use std::sync::OnceLock;
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = guruconnect_release::generate_key();
        guruconnect_release::public_key_text(&key.verifying_key())
    })
    .clone()
}

/// One server process.
struct Instance {
    name: String,
    base: String,
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Instance {
    fn spawn(nats: &str, cluster: &str, name: &str, db: &str, admin_password: &str) -> Instance {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_guruconnect-server"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GURUCONNECT_BIND", addr.to_string())
            .env("GURUCONNECT_DATA_DIR", dir.path())
            .env("GURUCONNECT_DATABASE_URL", db)
            .env("GURUCONNECT_SIGNING_SECRET", SECRET)
            .env("GURUCONNECT_ADMIN_PASSWORD", admin_password)
            .env("GURUCONNECT_CLUSTER__NATS_URL", nats)
            .env("GURUCONNECT_CLUSTER__INSTANCE_ID", name)
            .env("GURUCONNECT_CLUSTER__NAME", cluster)
            .env("GURUCONNECT_OFFLINE_SESSION_TTL_SECS", "60")
            .env("GURUCONNECT_RELEASE_PUBLIC_KEY", release_key())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn guruconnect-server");
        Instance {
            name: name.to_owned(),
            base: format!("http://{addr}"),
            addr,
            child,
            _dir: dir,
        }
    }

    /// Starts an instance and waits until it serves; another port is tried when the one
    /// picked was taken meanwhile.
    async fn start(
        nats: &str,
        cluster: &str,
        name: &str,
        db: &str,
        admin_password: &str,
    ) -> Instance {
        for _ in 0..3 {
            let mut instance = Instance::spawn(nats, cluster, name, db, admin_password);
            if instance.wait_ready().await {
                return instance;
            }
        }
        panic!("instance {name} did not start");
    }

    /// False when the process exited at start.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                eprintln!("instance {} exited at start: {status}", self.name);
                return false;
            }
            if let Ok(r) = common::client().get(self.url("/health")).send().await
                && r.status() == StatusCode::OK
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("instance {} did not become ready", self.name);
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        common::client()
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    async fn get_json(&self, path: &str, token: &str) -> Value {
        common::client()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON body")
    }

    async fn login(&self, username: &str, password: &str) -> String {
        let resp = common::client()
            .post(self.url("/api/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "login on {}", self.name);
        resp.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn viewer(&self, user_token: &str, session_id: &str) -> Connection {
        let resp = self
            .post(
                &format!("/api/sessions/{session_id}/viewer-token"),
                user_token,
                json!({}),
            )
            .await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "mint on {}: {body}", self.name);
        let mut conn = connect_viewer(&self.base, session_id, body["token"].as_str().unwrap())
            .await
            .unwrap_or_else(|e| panic!("viewer on {}: {e}", self.name));
        recv_until(&mut conn, "session state", WAIT, |p| {
            matches!(p, Payload::SessionState(_))
        })
        .await;
        conn
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = common::client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    a: Instance,
    b: Instance,
    c: Instance,
    admin_password: String,
    /// Its subject prefix.
    name: String,
}

async fn nats_up() -> bool {
    TcpStream::connect("127.0.0.1:4222").await.is_ok()
}

/// Starts A first (it migrates and creates the admin), then B and C; `None` when the test
/// cannot run here.
async fn cluster() -> Option<Cluster> {
    let Some(db) = common::test_database_url().await else {
        eprintln!("skipped: GURUCONNECT_TEST_DATABASE_URL is not set (a cluster needs PostgreSQL)");
        return None;
    };
    if !nats_up().await {
        assert!(
            std::env::var("GURUCONNECT_REQUIRE_NATS").as_deref() != Ok("1"),
            "NATS is not running on 127.0.0.1:4222"
        );
        eprintln!("skipped: NATS is not running on 127.0.0.1:4222");
        return None;
    }
    let admin_password = common::random_secret("adm");
    // Its own subjects: tests run side by side on one NATS server.
    let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let a = Instance::start(NATS, &name, "gc-a", &db, &admin_password).await;
    let (b, c) = tokio::join!(
        Instance::start(NATS, &name, "gc-b", &db, &admin_password),
        Instance::start(NATS, &name, "gc-c", &db, &admin_password),
    );
    // Every instance hears the other two before the test starts.
    for i in [&a, &b, &c] {
        let heard = common::eventually(Duration::from_secs(10), || async {
            i.metric("guruconnect_cluster_peers").await >= 2.0
        })
        .await;
        assert!(heard, "{} never heard its peers", i.name);
    }
    Some(Cluster {
        a,
        b,
        c,
        admin_password,
        name,
    })
}

/// A load balancer in front of the instances: each connection goes to the first backend
/// that accepts it (so the agent lands on A until A dies).
async fn balancer(backends: Vec<SocketAddr>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let backends = backends.clone();
            tokio::spawn(async move {
                for backend in backends {
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Connects an agent with `credential` at `base`, says hello and returns its `SessionInfo`.
async fn hello_agent(base: &str, credential: &str) -> (Connection, guruconnect_proto::SessionInfo) {
    let mut agent = connect_agent(base, credential).await.unwrap();
    agent.send(hello("managed-host", "")).await.unwrap();
    let info = recv_until(&mut agent, "session info", WAIT, |p| {
        matches!(p, Payload::SessionInfo(_))
    })
    .await;
    let Payload::SessionInfo(info) = info else {
        unreachable!()
    };
    (agent, info)
}

fn is_state(p: &Payload, phase: SessionPhase) -> bool {
    matches!(p, Payload::SessionState(s) if s.phase == phase as i32)
}

fn is_keyframe(p: &Payload) -> bool {
    matches!(p, Payload::VideoFrame(f) if f.keyframe)
}

/// Answers refresh requests with a keyframe until `rounds` frames went out.
async fn serve_frames(agent: &mut Connection, first_seq: u64) {
    let _ = try_recv_until(agent, WAIT, |p| matches!(p, Payload::RefreshRequest(_))).await;
    agent.send(frame(first_seq, true, 2048)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_on_a_serves_viewers_on_b_and_c_and_they_follow_it_when_a_dies() {
    let Some(mut cl) = cluster().await else {
        return;
    };
    let admin_b = cl.b.login("admin", &cl.admin_password).await;
    let admin_c = cl.c.login("admin", &cl.admin_password).await;

    // --- a support code is good for one session across instances: two agents race on A
    // and B with the same code, exactly one wins
    let raced: Value =
        cl.c.post("/api/codes", &admin_c, json!({}))
            .await
            .json()
            .await
            .unwrap();
    let raced = raced["code"].as_str().unwrap().to_owned();
    let (on_a, on_b) = tokio::join!(
        connect_agent(&cl.a.base, &raced),
        connect_agent(&cl.b.base, &raced)
    );
    assert_eq!(
        usize::from(on_a.is_ok()) + usize::from(on_b.is_ok()),
        1,
        "one code, one session: {:?} / {:?}",
        on_a.as_ref().err(),
        on_b.as_ref().err()
    );
    drop((on_a, on_b));

    // --- attended: consent, frames, input, chat and clipboard across instances
    let code: Value =
        cl.c.post("/api/codes", &admin_c, json!({}))
            .await
            .json()
            .await
            .unwrap();
    let code = code["code"].as_str().unwrap().to_owned();
    let (mut agent, info) = hello_agent(&cl.a.base, &code).await;
    recv_until(&mut agent, "consent request", WAIT, |p| {
        matches!(p, Payload::ConsentRequest(_))
    })
    .await;
    let mut vb = cl.b.viewer(&admin_b, &info.session_id).await;
    let mut vc = cl.c.viewer(&admin_c, &info.session_id).await;
    // Nothing flows before consent, whichever instance the viewer is on.
    vb.send(key_down(30)).await.unwrap();
    let dropped = common::eventually(WAIT, || async {
        cl.a.metric("guruconnect_input_dropped").await >= 1.0
    })
    .await;
    assert!(dropped, "A drops input from B before consent");
    agent.send(consent(true)).await.unwrap();
    for v in [&mut vb, &mut vc] {
        recv_until(v, "active", WAIT, |p| is_state(p, SessionPhase::Active)).await;
    }
    serve_frames(&mut agent, 1).await;
    for v in [&mut vb, &mut vc] {
        recv_until(v, "keyframe", WAIT, is_keyframe).await;
    }
    vb.send(key_down(44)).await.unwrap();
    let got = recv_until(&mut agent, "key from B", WAIT, |p| {
        matches!(p, Payload::KeyEvent(_))
    })
    .await;
    assert!(
        matches!(&got, Payload::KeyEvent(k) if k.scancode == 44),
        "the key sent before consent must never arrive: {got:?}"
    );
    vc.send(Payload::Chat(ChatMessage {
        text: "hello from C".into(),
        ..ChatMessage::default()
    }))
    .await
    .unwrap();
    recv_until(
        &mut agent,
        "chat from C",
        WAIT,
        |p| matches!(p, Payload::Chat(c) if c.text == "hello from C"),
    )
    .await;
    recv_until(
        &mut vb,
        "C's chat at B",
        WAIT,
        |p| matches!(p, Payload::Chat(c) if c.text == "hello from C"),
    )
    .await;
    vb.send(Payload::Clipboard(ClipboardText {
        text: "from B".into(),
    }))
    .await
    .unwrap();
    recv_until(
        &mut agent,
        "clipboard from B",
        WAIT,
        |p| matches!(p, Payload::Clipboard(c) if c.text == "from B"),
    )
    .await;
    agent
        .send(Payload::Clipboard(ClipboardText {
            text: "from the machine".into(),
        }))
        .await
        .unwrap();
    for v in [&mut vb, &mut vc] {
        recv_until(
            v,
            "clipboard from the machine",
            WAIT,
            |p| matches!(p, Payload::Clipboard(c) if c.text == "from the machine"),
        )
        .await;
    }
    // A technician ends it from C; the agent on A and the viewer on B hear why.
    let resp =
        cl.c.post(
            &format!("/api/sessions/{}/end", info.session_id),
            &admin_c,
            json!({}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let end = recv_until(&mut vb, "session end at B", WAIT, |p| {
        matches!(p, Payload::SessionEnd(_))
    })
    .await;
    assert!(
        matches!(&end, Payload::SessionEnd(e) if e.code == EndCode::Ended as i32 && e.reason.contains("admin")),
        "{end:?}"
    );
    drop(agent);

    // --- managed: the agent reaches A through the balancer; A dies; it comes back on B
    let lb = balancer(vec![cl.a.addr, cl.b.addr, cl.c.addr]).await;
    let machine = uuid::Uuid::new_v4().to_string();
    let key: Value =
        cl.b.post(
            &format!("/api/machines/{machine}/keys"),
            &admin_b,
            json!({ "label": "cluster" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let key = key["agent_key"].as_str().unwrap().to_owned();
    let (mut agent, first) = hello_agent(&lb, &key).await;
    let mut vb = cl.b.viewer(&admin_b, &first.session_id).await;
    let mut vc = cl.c.viewer(&admin_c, &first.session_id).await;
    serve_frames(&mut agent, 10).await;
    for v in [&mut vb, &mut vc] {
        recv_until(v, "keyframe", WAIT, is_keyframe).await;
    }

    // Every instance's console shows the machine online, with its live session and both
    // viewers, though only A holds it.
    let machine_view =
        cl.c.get_json(&format!("/api/machines/{machine}"), &admin_c)
            .await;
    assert_eq!(machine_view["online"], true, "{machine_view}");
    assert_eq!(machine_view["session_id"], first.session_id.as_str());
    let session_view =
        cl.b.get_json(&format!("/api/sessions/{}", first.session_id), &admin_b)
            .await;
    assert_eq!(
        session_view["live"]["viewers"].as_array().map(Vec::len),
        Some(2),
        "{session_view}"
    );

    let killed = Instant::now();
    cl.a.kill9();
    // The agent sees its socket die and reconnects through the balancer (to B).
    let _ = try_recv_until(&mut agent, Duration::from_secs(3), |_| false).await;
    let (mut agent, second) = hello_agent(&lb, &key).await;
    assert_ne!(second.session_id, first.session_id);
    // The viewers were told the machine is offline, then see it again without rejoining.
    let frames_task = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seq = 100;
        while Instant::now() < deadline {
            if let Ok(p) = try_recv_until(&mut agent, Duration::from_millis(300), |p| {
                matches!(p, Payload::RefreshRequest(_))
            })
            .await
            {
                let _ = p;
                seq += 1;
                agent.send(frame(seq, true, 2048)).await.unwrap();
            }
        }
        agent
    });
    for (name, v) in [("B", &mut vb), ("C", &mut vc)] {
        recv_until(v, "agent offline", Duration::from_secs(10), |p| {
            is_state(p, SessionPhase::AgentOffline)
        })
        .await;
        let active = recv_until(v, "active again", Duration::from_secs(10), |p| {
            is_state(p, SessionPhase::Active)
        })
        .await;
        assert!(
            matches!(&active, Payload::SessionState(s) if s.session_id == second.session_id),
            "viewer on {name} follows the machine to its new session: {active:?}"
        );
        recv_until(v, "a picture again", Duration::from_secs(10), is_keyframe).await;
        eprintln!(
            "viewer on {name} sees the machine again {:.1} s after kill -9 of A",
            killed.elapsed().as_secs_f64()
        );
    }
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "failover took {:?}",
        killed.elapsed()
    );
    let mut agent = frames_task.await.unwrap();

    // The dead instance's session row was closed by the survivors.
    let ended = common::eventually(Duration::from_secs(10), || async {
        cl.b.get_json(&format!("/api/sessions/{}", first.session_id), &admin_b)
            .await["status"]
            == "ended"
    })
    .await;
    assert!(
        ended,
        "the session held by the dead instance is recorded as ended"
    );

    // --- an update pushed from C reaches the agent now on B
    let resp =
        cl.c.post(
            &format!("/api/machines/{machine}/update"),
            &admin_c,
            json!({}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    recv_until(&mut agent, "update command from C", WAIT, |p| {
        matches!(p, Payload::UpdateCommand(_))
    })
    .await;

    // --- a sign-out on B closes that user's viewer on C
    let tech_password = common::random_secret("pw");
    let resp =
        cl.b.post(
            "/api/users",
            &admin_b,
            json!({ "username": "tech1", "password": tech_password, "role": "technician" }),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let tech_b = cl.b.login("tech1", &tech_password).await;
    let mut tech_on_c = cl.c.viewer(&tech_b, &second.session_id).await;
    let resp = cl.b.post("/api/auth/logout", &tech_b, json!({})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let end = recv_until(&mut tech_on_c, "sign-out reaches C", WAIT, |p| {
        matches!(p, Payload::SessionEnd(_))
    })
    .await;
    assert!(
        matches!(&end, Payload::SessionEnd(e) if e.code == EndCode::Revoked as i32),
        "{end:?}"
    );

    // --- a key revoked on C closes the agent on B at once
    let keys =
        cl.c.get_json(&format!("/api/machines/{machine}/keys"), &admin_c)
            .await;
    let key_id = keys
        .as_array()
        .or_else(|| keys["items"].as_array())
        .and_then(|k| k.first())
        .and_then(|k| k["id"].as_str())
        .expect("the machine's key")
        .to_owned();
    let resp = common::client()
        .delete(cl.c.url(&format!("/api/machines/{machine}/keys/{key_id}")))
        .bearer_auth(&admin_c)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "revoke: {}", resp.status());
    match try_recv_until(&mut agent, WAIT, |_| false).await {
        Err(relay_support::RecvFail::Closed(code, _)) => assert_eq!(code, 1008),
        other => panic!("the agent on B must be closed by the revocation on C: {other:?}"),
    }
    drop(cl);
}

#[tokio::test]
async fn an_instance_refuses_to_start_when_nats_is_unreachable() {
    let Some(db) = common::test_database_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_guruconnect-server"))
        .env_clear()
        .env("GURUCONNECT_BIND", "127.0.0.1:0")
        .env("GURUCONNECT_DATA_DIR", dir.path())
        .env("GURUCONNECT_DATABASE_URL", &db)
        .env("GURUCONNECT_SIGNING_SECRET", SECRET)
        .env("GURUCONNECT_CLUSTER__NATS_URL", "nats://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach NATS at cluster.nats_url"),
        "a clear message: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_message_that_does_not_decode_is_dropped_and_counted() {
    let Some(cl) = cluster().await else {
        return;
    };
    let nats = async_nats::connect(NATS).await.unwrap();
    let (ctl, presence) = (format!("{}.ctl", cl.name), format!("{}.presence", cl.name));
    for subject in [&ctl, &presence] {
        nats.publish(subject.clone(), "{not json".into())
            .await
            .unwrap();
    }
    let unknown = r#"{"from":"x","control":{"type":"explode"}}"#;
    nats.publish(ctl, unknown.into()).await.unwrap();
    nats.flush().await.unwrap();
    for i in [&cl.a, &cl.b, &cl.c] {
        let counted = common::eventually(Duration::from_secs(5), || async {
            i.metric("guruconnect_bus_dropped").await >= 2.0
        })
        .await;
        assert!(counted, "{} counts dropped bus messages", i.name);
        let health = common::client().get(i.url("/health")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK, "{} is still up", i.name);
    }
}

/// A `nats-server` of this test's own, so it can be stopped and started again.
struct PrivateNats {
    port: u16,
    child: Option<Child>,
}

impl PrivateNats {
    async fn start(port: u16) -> PrivateNats {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian package nats-server) must be installed");
        let up = common::eventually(Duration::from_secs(10), || async {
            TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        assert!(up, "private nats-server did not start");
        PrivateNats {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_nats_goes_away_local_sessions_go_on_and_remote_viewers_come_back_with_it() {
    let Some(db) = common::test_database_url().await else {
        return;
    };
    if Command::new("nats-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("GURUCONNECT_REQUIRE_NATS").as_deref() != Ok("1"),
            "nats-server is not installed"
        );
        eprintln!("skipped: nats-server is not installed");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut nats = PrivateNats::start(port).await;
    let admin_password = common::random_secret("adm");
    let a = Instance::start(&nats.url(), "outage", "gc-a", &db, &admin_password).await;
    let b = Instance::start(&nats.url(), "outage", "gc-b", &db, &admin_password).await;
    let admin_a = a.login("admin", &admin_password).await;
    let admin_b = b.login("admin", &admin_password).await;
    let machine = uuid::Uuid::new_v4().to_string();
    let key: Value = a
        .post(
            &format!("/api/machines/{machine}/keys"),
            &admin_a,
            json!({ "label": "outage" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let (mut agent, info) = hello_agent(&a.base, key["agent_key"].as_str().unwrap()).await;
    let mut local = a.viewer(&admin_a, &info.session_id).await;
    let mut remote = b.viewer(&admin_b, &info.session_id).await;
    serve_frames(&mut agent, 1).await;
    for v in [&mut local, &mut remote] {
        recv_until(v, "keyframe", WAIT, is_keyframe).await;
    }

    nats.stop();
    recv_until(
        &mut remote,
        "offline while NATS is away",
        Duration::from_secs(15),
        |p| is_state(p, SessionPhase::AgentOffline),
    )
    .await;
    // The viewer on the agent's own instance never notices.
    agent.send(frame(2, true, 1024)).await.unwrap();
    recv_until(
        &mut local,
        "a frame without NATS",
        WAIT,
        |p| matches!(p, Payload::VideoFrame(f) if f.sequence == 2),
    )
    .await;
    local.send(key_down(50)).await.unwrap();
    recv_until(
        &mut agent,
        "input without NATS",
        WAIT,
        |p| matches!(p, Payload::KeyEvent(k) if k.scancode == 50),
    )
    .await;

    let _nats = PrivateNats::start(port).await;
    let back = Instant::now();
    let feeder = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seq = 10;
        while Instant::now() < deadline {
            if try_recv_until(&mut agent, Duration::from_millis(300), |p| {
                matches!(p, Payload::RefreshRequest(_))
            })
            .await
            .is_ok()
            {
                seq += 1;
                agent.send(frame(seq, true, 1024)).await.unwrap();
            }
        }
    });
    recv_until(&mut remote, "active again", Duration::from_secs(20), |p| {
        is_state(p, SessionPhase::Active)
    })
    .await;
    recv_until(
        &mut remote,
        "a picture again",
        Duration::from_secs(10),
        is_keyframe,
    )
    .await;
    eprintln!(
        "the remote viewer is back {:.1} s after NATS returned",
        back.elapsed().as_secs_f64()
    );
    // The session stayed one and the same, and nobody ended its record meanwhile.
    let record = b
        .get_json(&format!("/api/sessions/{}", info.session_id), &admin_b)
        .await;
    assert_eq!(record["status"], "active", "{record}");
    feeder.abort();
}
