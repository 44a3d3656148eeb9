//! Self-update end to end (SPEC §4.15): the relay in-process with a release public key,
//! releases signed in the test and published through the real endpoints (`POST
//! /api/releases`, `PUT …/artifacts/:platform`), and the managed agent — a copy of the
//! built binary whose version slot is patched, so "version A" and "version B" are real
//! builds without a second compile — run under a tiny supervisor that restarts it whenever
//! it exits, as systemd's `Restart=always` does.
//!
//! Needs Xvfb (the managed agent opens the display); without it the tests print a line and
//! pass.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guruconnect_agent::update::{EXIT_RESTART, Marker, NO_KEY, Paths};
use guruconnect_release::SigningKey;
use serde_json::{Value, json};

mod support;
use support::*;

const A: &str = "1.0.0";
const B: &str = "1.1.0";
/// Long enough for a check, a 25 MB download, a self-test and a restart on a busy machine.
const UPDATE_WAIT: Duration = Duration::from_secs(90);

// ------------------------------------------------------------------ the fleet of one

/// A relay with `server_key`'s public key, one managed machine whose configuration pins
/// `pinned` (if any), and version A installed in a directory of its own.
struct Machine {
    x: Xvfb,
    relay: Relay,
    admin: String,
    agent_id: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    paths: Paths,
    a_bytes: Vec<u8>,
}

impl Machine {
    async fn set_up(server_key: &SigningKey, pinned: Option<&SigningKey>) -> Option<Machine> {
        Self::set_up_in(server_key, pinned, None).await
    }

    /// As [`Machine::set_up`], with the agent installed in `bin` (e.g. a small tmpfs)
    /// instead of a directory of its own.
    async fn set_up_in(
        server_key: &SigningKey,
        pinned: Option<&SigningKey>,
        bin: Option<PathBuf>,
    ) -> Option<Machine> {
        use std::os::unix::fs::PermissionsExt as _;
        let x = Xvfb::start()?;
        let server_public = public_text(server_key);
        let relay = Relay::start_in(tempfile::tempdir().expect("tempdir"), 0, None, |c| {
            c.release_public_key = Some(server_public);
        })
        .await;
        let admin = relay.admin().await;
        let (agent_id, agent_key) = relay.issue_machine_key(&admin).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("agent.key");
        std::fs::write(&key_file, agent_key).expect("write key");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = dir.path().join("agent.toml");
        let bin = bin.unwrap_or_else(|| dir.path().join("bin"));
        std::fs::create_dir_all(&bin).expect("bin dir");
        let exe = bin.join("guruconnect-agent");
        let a_bytes = install_agent_of_version(&exe, A);
        let machine = Machine {
            x,
            relay,
            admin,
            agent_id,
            config,
            paths: Paths::for_exe(&exe),
            a_bytes,
            dir,
        };
        machine.write_config(pinned);
        Some(machine)
    }

    fn write_config(&self, pinned: Option<&SigningKey>) {
        let mut text = format!(
            "server = \"{}\"\nkey_file = \"{}\"\n",
            self.relay.base,
            self.dir.path().join("agent.key").display()
        );
        if let Some(key) = pinned {
            text.push_str(&format!("release_public_key = \"{}\"\n", public_text(key)));
        }
        std::fs::write(&self.config, text).expect("write config");
    }

    fn supervise(&self) -> Supervisor {
        let (exe, config, display) = (
            self.paths.exe.clone(),
            self.config.clone(),
            self.x.display.clone(),
        );
        Supervisor::start(move || {
            let mut cmd = Command::new(&exe);
            cmd.arg("run")
                .arg("--config")
                .arg(&config)
                .env("DISPLAY", &display)
                .env("RUST_LOG", "info");
            cmd
        })
    }

    /// Waits until the machine is online reporting `version`.
    async fn wait_online_as(&self, version: &str, sup: &Supervisor) -> Value {
        self.relay
            .wait_online_as(&self.admin, &self.agent_id, version, sup, UPDATE_WAIT)
            .await
    }

    /// Waits until the machine's update status satisfies `pred`; returns it.
    async fn wait_status(&self, sup: &Supervisor, pred: impl Fn(&Value) -> bool) -> Value {
        self.relay
            .wait_update_status(&self.admin, &self.agent_id, sup, UPDATE_WAIT, pred)
            .await
    }

    /// Waits for the terminal status of the push `request_id`.
    async fn wait_outcome(&self, sup: &Supervisor, request_id: &str) -> Value {
        self.relay
            .wait_update_outcome(&self.admin, &self.agent_id, sup, UPDATE_WAIT, request_id)
            .await
    }

    /// Signs a release of `version` with `key` for `bytes` and publishes it.
    async fn publish(&self, key: &SigningKey, version: &str, bytes: &[u8]) {
        self.relay
            .publish_release(
                &self.admin,
                key,
                version,
                linux_artifact(&platform()),
                bytes,
            )
            .await;
    }

    /// Where the server keeps the artifact of `version`.
    fn stored_artifact(&self, version: &str) -> PathBuf {
        self.relay
            .stored_artifact(version, linux_artifact(&platform()))
    }

    /// Asks the agent to update now; returns the request id.
    async fn push(&self, body: Value) -> String {
        self.relay
            .push_update(&self.admin, &self.agent_id, body)
            .await
    }

    /// Version A still installed and running, nothing of an update left behind.
    fn assert_a_untouched(&self, sup: &Supervisor) {
        let log = sup.log();
        assert!(
            std::fs::read(&self.paths.exe).expect("exe") == self.a_bytes,
            "the binary was replaced:\n{log}"
        );
        assert_eq!(sup.exits(), Vec::<Option<i32>>::new(), "{log}");
        for leftover in [&self.paths.new, &self.paths.previous, &self.paths.marker] {
            assert!(!leftover.exists(), "{} left behind", leftover.display());
        }
        let bin = self.paths.exe.parent().expect("bin");
        let partials: Vec<_> = std::fs::read_dir(bin)
            .expect("bin")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect();
        assert!(partials.is_empty(), "partial downloads left: {partials:?}");
    }
}

fn platform() -> String {
    guruconnect_release::current_platform()
}

fn linux_artifact(platform: &str) -> ArtifactFor<'_> {
    ArtifactFor {
        platform,
        file: "guruconnect-agent",
    }
}

// ------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_updates_itself_to_a_published_release_and_comes_back_online_as_it() {
    let started = Instant::now();
    let key = guruconnect_release::generate_key();
    let Some(m) = Machine::set_up(&key, Some(&key)).await else {
        return;
    };
    let b_bytes = agent_bytes_of_version(B);
    m.publish(&key, B, &b_bytes).await;

    // Version A connects, finds B on its first check, and restarts into it.
    let sup = m.supervise();
    let done = m
        .wait_status(&sup, |s| state_of(s) == "done" && s["version"] == B)
        .await;
    assert!(
        detail_of(&done).contains(&format!("from {A} to {B}")),
        "{done}"
    );
    let machine = m.wait_online_as(B, &sup).await;
    assert_eq!(machine["update_status"]["state"], "done");

    let log = sup.log();
    assert!(log.contains("self-update is enabled"), "{log}");
    assert!(
        std::fs::read(&m.paths.exe).expect("exe") == b_bytes,
        "B is not in place:\n{log}"
    );
    assert!(!m.paths.previous.exists(), "A kept after B came online");
    assert!(!m.paths.marker.exists(), "marker kept after B came online");
    assert_eq!(
        sup.exits(),
        vec![Some(i32::from(EXIT_RESTART))],
        "one restart into B:\n{log}"
    );
    assert_eq!(m.relay.count_events(&m.admin, "update.done").await, 1);

    // B is the newest: a push finds nothing to do, and B keeps running.
    let request = m.push(json!({})).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "up_to_date", "{status}");
    assert_eq!(sup.exits().len(), 1);
    println!("updated A -> B in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_a_changed_byte_a_wrong_size_and_a_binary_that_exits_at_start_leave_a_running()
{
    let started = Instant::now();
    let key = guruconnect_release::generate_key();
    let Some(m) = Machine::set_up(&key, Some(&key)).await else {
        return;
    };
    let sup = m.supervise();
    m.wait_online_as(A, &sup).await;
    // The first check found nothing; later ones come only from pushes.
    sup.wait_log("update check:").await;

    // A downgrade nobody forced.
    m.publish(&key, "0.9.0", &agent_bytes_of_version("0.9.0"))
        .await;
    let request = m.push(json!({ "version": "0.9.0" })).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "failed", "{status}");
    m.assert_a_untouched(&sup);

    // One byte of the stored artifact changed.
    let b_bytes = agent_bytes_of_version(B);
    m.publish(&key, B, &b_bytes).await;
    let mut changed = b_bytes.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 0x01;
    std::fs::write(m.stored_artifact(B), &changed).expect("tamper");
    let request = m.push(json!({ "version": B })).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "failed", "{status}");
    assert!(detail_of(&status).contains("SHA-256"), "{status}");
    m.assert_a_untouched(&sup);

    // A wrong size.
    let mut longer = b_bytes.clone();
    longer.push(0);
    std::fs::write(m.stored_artifact(B), &longer).expect("tamper");
    let request = m.push(json!({ "version": B })).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "failed", "{status}");
    assert!(detail_of(&status).contains("bytes"), "{status}");
    m.assert_a_untouched(&sup);

    // A new version that exits at start, and one that is not a program at all.
    m.publish(
        &key,
        "1.2.0",
        b"#!/bin/sh\necho 'broken build' >&2\nexit 3\n",
    )
    .await;
    let request = m.push(json!({ "version": "1.2.0" })).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "rolled_back", "{status}");
    assert!(detail_of(&status).contains("exited at start"), "{status}");
    assert!(detail_of(&status).contains("broken build"), "{status}");
    m.assert_a_untouched(&sup);
    m.publish(&key, "1.3.0", &[0x5a; 4096]).await;
    let request = m.push(json!({ "version": "1.3.0" })).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "rolled_back", "{status}");
    m.assert_a_untouched(&sup);

    // Still online as A; each refusal audited.
    let machine = m.wait_online_as(A, &sup).await;
    assert_eq!(machine["online"], true);
    assert!(m.relay.count_events(&m.admin, "update.failed").await >= 3);
    assert!(m.relay.count_events(&m.admin, "update.rolled_back").await >= 2);
    println!("five refusals in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_signed_by_another_key_is_refused_and_an_agent_without_a_key_never_updates() {
    let started = Instant::now();
    let agent_key = guruconnect_release::generate_key();
    let server_key = guruconnect_release::generate_key();
    let Some(m) = Machine::set_up(&server_key, Some(&agent_key)).await else {
        return;
    };
    // The server trusts a key this agent does not: its releases are refused.
    m.publish(&server_key, B, &agent_bytes_of_version(B)).await;
    let sup = m.supervise();
    let status = m
        .wait_status(&sup, |s| state_of(s) == "failed" && s["request_id"] == "")
        .await;
    assert!(detail_of(&status).contains("signature"), "{status}");
    let request = m.push(json!({})).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "failed", "{status}");
    assert!(detail_of(&status).contains("signature"), "{status}");
    m.assert_a_untouched(&sup);
    drop(sup);

    // No key pinned: updates are off, said at start and to a push.
    m.write_config(None);
    let sup = m.supervise();
    m.wait_online_as(A, &sup).await;
    sup.wait_log("self-update is disabled").await;
    let request = m.push(json!({})).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "failed", "{status}");
    assert_eq!(detail_of(&status), NO_KEY);
    m.assert_a_untouched(&sup);
    println!("refused in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_that_does_not_come_online_in_time_is_rolled_back() {
    let started = Instant::now();
    let key = guruconnect_release::generate_key();
    let Some(mut m) = Machine::set_up(&key, Some(&key)).await else {
        return;
    };
    // The state right after a swap: B in place, A as `.previous`, the marker with a
    // deadline a few seconds away; and no server to come online to.
    let b_bytes = install_agent_of_version(&m.paths.exe, B);
    std::fs::write(&m.paths.previous, &m.a_bytes).expect("previous");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&m.paths.previous, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    Marker {
        from: A.into(),
        to: B.into(),
        deadline: now + 4,
        request_id: "push-42".into(),
        rolled_back: None,
    }
    .write(&m.paths.marker)
    .expect("marker");
    let port = m.relay.port;
    let password = m.relay.admin_password.clone();
    let dir = m.relay.stop().await;

    let sup = m.supervise();
    let deadline = Instant::now() + Duration::from_secs(40);
    while sup.exits().is_empty() {
        assert!(
            Instant::now() < deadline,
            "B was not undone at its deadline:\n{}",
            sup.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sup.exits(),
        vec![Some(i32::from(EXIT_RESTART))],
        "{}",
        sup.log()
    );
    assert!(std::fs::read(&m.paths.exe).expect("exe") == m.a_bytes);
    assert_ne!(m.a_bytes, b_bytes);

    // The server comes back: A reports the rollback of the push once online.
    let public = public_text(&key);
    m.relay = Relay::start_in(dir, port, Some(password), |c| {
        c.release_public_key = Some(public);
    })
    .await;
    m.admin = m.relay.admin().await;
    let status = m
        .wait_status(&sup, |s| {
            state_of(s) == "rolled_back" && s["request_id"] == "push-42"
        })
        .await;
    assert_eq!(status["version"], B);
    assert!(
        detail_of(&status).contains("did not come online"),
        "{status}"
    );
    m.wait_online_as(A, &sup).await;
    assert!(!m.paths.marker.exists());
    assert!(!m.paths.previous.exists());
    assert_eq!(
        std::fs::read_to_string(&m.paths.skip).expect("skip").trim(),
        B,
        "periodic checks skip the version that was undone"
    );
    assert_eq!(sup.exits().len(), 1, "{}", sup.log());
    println!("rolled back in {:?}", started.elapsed());
}

/// A tmpfs mounted for a test; unmounted (lazily) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` where mounting is not allowed (not root), unless `GURUCONNECT_REQUIRE_TMPFS`
    /// says it must work (CI).
    fn mount(kib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Tmpfs { dir });
        }
        assert!(
            std::env::var_os("GURUCONNECT_REQUIRE_TMPFS").is_none(),
            "GURUCONNECT_REQUIRE_TMPFS is set but a tmpfs could not be mounted"
        );
        println!("skipped: cannot mount a tmpfs here (needs root)");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_download_cleanly_and_leaves_a_running() {
    // Room for version A and 1 MiB: the download of B cannot fit.
    let a_len = agent_bytes_of_version(A).len() as u64;
    let Some(disk) = Tmpfs::mount(a_len / 1024 + 1024) else {
        return;
    };
    let key = guruconnect_release::generate_key();
    let bin = disk.dir.path().join("bin");
    let Some(m) = Machine::set_up_in(&key, Some(&key), Some(bin)).await else {
        return;
    };
    let sup = m.supervise();
    m.wait_online_as(A, &sup).await;
    m.publish(&key, B, &agent_bytes_of_version(B)).await;
    let request = m.push(json!({ "version": B })).await;
    let status = m.wait_outcome(&sup, &request).await;
    assert_eq!(state_of(&status), "failed", "{status}");
    assert!(
        detail_of(&status).contains("No space left"),
        "the reason names the full disk: {status}"
    );
    // Nothing replaced, the partial file removed (the disk has room again), still A.
    m.assert_a_untouched(&sup);
    let machine = m.wait_online_as(A, &sup).await;
    assert_eq!(machine["online"], true);
    drop(sup);
    drop(m);
    drop(disk);
}
