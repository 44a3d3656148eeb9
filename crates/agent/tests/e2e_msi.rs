//! End to end for Windows deployment under Wine: the per-site MSI, downloaded from the real
//! relay (in-process) with the site's code and labels built in, installs silently with
//! `msiexec /qn ENROLLMENT_KEY=…`, the GuruConnectAgent service runs (`sc query`), the
//! machine enrolls into the site and comes online, the stored keys are not plain text, an
//! uninstall removes the service and the files while the server keeps the machine's row,
//! and a reinstall reuses that row. A missing enrollment key installs nothing; a wrong one
//! completes the install and the service log names the refusal.
//!
//! The MSI comes from `scripts/windows/build-msi.sh` (`GURUCONNECT_WINDOWS_MSI`), the Wine
//! environment from `scripts/windows/env.sh`. Each test run copies the prepared Wine prefix
//! into a private one, so installs never leak into the prefix other Wine tests use. What
//! Wine cannot show: session 0 isolation, a real console-session switch, ACL enforcement
//! and DPAPI's real key management (see the agent's platform::windows docs).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Two installs at once would share the 2 cores' worth of Wine start-up; one at a time.
static WINE: Mutex<()> = Mutex::new(());

/// Service name registered by the MSI.
const SERVICE: &str = "GuruConnectAgent";

/// The built MSI, or `None` (skipped) when it was not built.
fn built_msi() -> Option<PathBuf> {
    match std::env::var_os("GURUCONNECT_WINDOWS_MSI").map(PathBuf::from) {
        Some(msi) if msi.is_file() => Some(msi),
        other => {
            assert!(
                std::env::var_os("GURUCONNECT_REQUIRE_WINE").is_none(),
                "GURUCONNECT_REQUIRE_WINE is set but the MSI is missing ({other:?}); run \
                 scripts/windows/build-msi.sh and export GURUCONNECT_WINDOWS_MSI"
            );
            println!("SKIPPED: no MSI (run scripts/windows/build-msi.sh)");
            None
        }
    }
}

/// A private Wine prefix (a copy of the prepared one) on its own Xvfb; its wineserver is
/// stopped and the copy removed when dropped.
struct WinePrefix {
    dir: tempfile::TempDir,
    x: Xvfb,
    keepalive: Option<std::process::Child>,
    _lock: MutexGuard<'static, ()>,
}

impl WinePrefix {
    fn start() -> Option<WinePrefix> {
        let lock = WINE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let base = PathBuf::from(
            std::env::var_os("WINEPREFIX")
                .expect("WINEPREFIX is not set: source scripts/windows/env.sh"),
        );
        assert!(
            base.join("system.reg").is_file(),
            "no prepared Wine prefix at {} (scripts/windows/build-agent.sh makes it)",
            base.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("guruconnect-msi-prefix")
            .tempdir()
            .unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", base.display()))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "copying the Wine prefix");
        // Services do not search WINEPATH: the ProcessPrng stand-in goes into system32.
        if let Some(stub) = std::env::var_os("GURUCONNECT_WINDOWS_STUB_DIR") {
            std::fs::copy(
                Path::new(&stub).join("bcryptprimitives.dll"),
                dir.path()
                    .join("drive_c/windows/system32/bcryptprimitives.dll"),
            )
            .expect("copy the bcryptprimitives.dll stand-in");
        }
        let x = Xvfb::start()?;
        let mut prefix = WinePrefix {
            dir,
            x,
            keepalive: None,
            _lock: lock,
        };
        // Wine ends its session, services included, once no ordinary process is left.
        prefix.keepalive = Some(
            prefix
                .command("wine")
                .arg("notepad")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start notepad"),
        );
        Some(prefix)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("WINEPREFIX", self.dir.path())
            .env("DISPLAY", &self.x.display);
        cmd
    }

    /// Runs `wine ARGS…` to completion (bounded): the exit code and the output.
    fn wine(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut cmd = self.command("wine");
        cmd.args(args);
        run_bounded(&mut cmd, Duration::from_secs(180))
            .unwrap_or_else(|| panic!("wine {args:?} did not finish within 180 s"))
    }

    /// `C:\…` inside the prefix.
    fn c(&self, windows_path: &str) -> PathBuf {
        self.dir
            .path()
            .join("drive_c")
            .join(windows_path.replace('\\', "/"))
    }

    fn msiexec(&self, args: &[&str], log: &Path) -> (i32, String) {
        let log_arg = format!("Z:{}", log.display()).replace('/', "\\");
        let mut all: Vec<&str> = vec!["msiexec"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["/l*v", &log_arg]);
        let (code, _) = self.wine(&all);
        let text = std::fs::read(log)
            .map(|b| decode_log(&b))
            .unwrap_or_default();
        (code.unwrap_or(-1), text)
    }

    fn service_state(&self) -> String {
        self.wine(&["sc", "query", SERVICE]).1
    }

    fn wait_service_running(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = self.service_state();
            if state.contains("RUNNING") {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "the service is not running:\n{state}\nagent log:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.c(r"ProgramData\GuruConnect\agent.log")).unwrap_or_default()
    }
}

impl Drop for WinePrefix {
    fn drop(&mut self) {
        // Stop the prefix's wineserver (every Wine process of it) first, bounded: a hung
        // shutdown must not hold the lock the next test waits for.
        let _ = run_bounded(
            self.command("wineserver").arg("-k"),
            Duration::from_secs(30),
        );
        if let Some(mut child) = self.keepalive.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = run_bounded(
            self.command("wineserver").arg("-w"),
            Duration::from_secs(30),
        );
    }
}

/// Runs `cmd` with its output in files, not pipes (a Wine service started by it would keep
/// a pipe open forever), and kills it past `timeout`. `None` when it timed out.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Option<(Option<i32>, String)> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(out.reopen().unwrap())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let text = std::fs::read_to_string(out.path()).unwrap_or_default();
            return Some((status.code(), text));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// MSI logs are UTF-16LE on Windows and Wine; plain text otherwise.
fn decode_log(bytes: &[u8]) -> String {
    if bytes.starts_with(&[0xff, 0xfe]) {
        let units: Vec<u16> = bytes[2..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// The ConfigureAgent custom action wrote agent.toml; else the log lines that say why not
/// (the action's condition reads SERVER_URL, which the per-site download sets).
fn assert_configured(wine: &WinePrefix, log: &str) {
    let config = wine.c(r"ProgramData\GuruConnect\agent.toml");
    assert!(
        config.is_file(),
        "the install wrote no {}; what the MSI log says of it:\n{}",
        config.display(),
        log.lines()
            .filter(|l| l.contains("ConfigureAgent")
                || l.contains("SERVER_URL")
                || l.contains("SITE_CODE"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

async fn wait_machine(
    relay: &Relay,
    admin: &str,
    wine: &WinePrefix,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let machines = relay.machines(admin).await;
        if let Some(m) = machines.iter().find(|m| pred(m)) {
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no machine as expected: {machines:#?}\nagent log:\n{}",
            wine.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msi_installs_the_service_which_enrolls_and_uninstalls_cleanly() {
    let Some(template) = built_msi() else { return };
    let Some(wine) = WinePrefix::start() else {
        return;
    };
    // The server's release key travels in the per-site MSI into agent.toml.
    let release_key =
        guruconnect_release::public_key_text(&guruconnect_release::generate_key().verifying_key());
    let relay = Relay::start_in(tempfile::tempdir().unwrap(), 0, None, |c| {
        c.agent_windows_msi_path = Some(template.clone());
        c.release_public_key = Some(release_key.clone());
    })
    .await;
    let admin = relay.admin().await;
    let site = relay
        .post(
            &admin,
            "/api/sites",
            json!({ "name": "Head Office", "code": "HQ" }),
        )
        .await;
    let site_id = site["id"].as_str().unwrap();
    let key = site["enrollment_key"].as_str().unwrap().to_owned();

    // The per-site MSI, as the console's installer builder downloads it.
    let resp = relay
        .http
        .get(format!(
            "{}/api/sites/{site_id}/installer?platform=windows&company=Acme&tags=front-desk",
            relay.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let work = tempfile::tempdir().unwrap();
    let msi = work.path().join("guruconnect-HQ.msi");
    std::fs::write(&msi, resp.bytes().await.unwrap()).unwrap();
    let msi_arg = format!("Z:{}", msi.display()).replace('/', "\\");

    // A missing enrollment key: a clear MSI error and nothing installed.
    let (code, log) = wine.msiexec(&["/i", &msi_arg, "/qn"], &work.path().join("missing.log"));
    assert_ne!(code, 0, "an install without ENROLLMENT_KEY succeeded");
    // Windows writes the launch condition's text into the log; Wine only its outcome: the
    // install stops at LaunchConditions, before anything is written.
    assert!(
        log.contains("LaunchConditions") && !log.contains("InstallFiles"),
        "the install went past its launch conditions:\n{log}"
    );
    assert!(
        !wine
            .c(r"Program Files\GuruConnect\guruconnect-agent.exe")
            .exists()
    );
    assert!(!wine.service_state().contains("RUNNING"));

    // The install as an RMM runs it.
    let key_arg = format!("ENROLLMENT_KEY={key}");
    let (code, log) = wine.msiexec(
        &["/i", &msi_arg, "/qn", &key_arg],
        &work.path().join("install.log"),
    );
    assert_eq!(code, 0, "msiexec failed:\n{log}");
    // Windows leaves MsiHiddenProperties out of the closing property dump; Wine 8 does not
    // (a Wine limitation). No other line may carry the key: not the custom action's command.
    let leaks: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&key) && !l.starts_with("Property(S): ENROLLMENT_KEY = "))
        .collect();
    assert!(
        leaks.is_empty(),
        "the MSI log holds the enrollment key: {leaks:#?}"
    );
    assert!(
        wine.c(r"Program Files\GuruConnect\guruconnect-agent.exe")
            .is_file()
    );
    assert_configured(&wine, &log);
    let config = std::fs::read_to_string(wine.c(r"ProgramData\GuruConnect\agent.toml")).unwrap();
    assert!(
        config.contains(&format!("release_public_key = \"{release_key}\"")),
        "{config}"
    );
    let state = wine.wait_service_running();
    assert!(state.contains(SERVICE), "{state}");

    let machine = wait_machine(&relay, &admin, &wine, |m| m["online"] == true).await;
    println!("enrolled and online: {machine}");
    assert_eq!(machine["site"], "Head Office", "{machine}");
    assert_eq!(machine["company"], "Acme", "{machine}");
    let agent_id = machine["agent_id"].as_str().unwrap().to_owned();

    // Keys at rest: neither the enrollment key nor a per-agent key in plain text.
    let data = files_under(&wine.c(r"ProgramData\GuruConnect"));
    assert!(
        data.iter().any(|(p, _)| p.ends_with("agent.key")),
        "no stored agent key: {:?}",
        data.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for (path, bytes) in &data {
        assert!(
            !contains(bytes, &key),
            "{} holds the enrollment key",
            path.display()
        );
        assert!(
            !contains(bytes, "cak_"),
            "{} holds a per-agent key in plain text",
            path.display()
        );
    }

    // Uninstall: service and files gone, the server keeps the row.
    let (code, log) = wine.msiexec(&["/x", &msi_arg, "/qn"], &work.path().join("uninstall.log"));
    assert_eq!(code, 0, "uninstall failed:\n{log}");
    let state = wine.service_state();
    assert!(
        !state.contains("RUNNING"),
        "the service survived the uninstall:\n{state}"
    );
    assert!(
        !wine
            .c(r"Program Files\GuruConnect\guruconnect-agent.exe")
            .exists()
    );
    assert!(
        !wine.c(r"ProgramData\GuruConnect").exists(),
        "ProgramData\\GuruConnect survived"
    );
    let offline = wait_machine(&relay, &admin, &wine, |m| m["online"] == false).await;
    assert_eq!(offline["agent_id"], agent_id.as_str());

    // Reinstall: the machine enrolls again into the same row.
    let (code, log) = wine.msiexec(
        &["/i", &msi_arg, "/qn", &key_arg],
        &work.path().join("reinstall.log"),
    );
    assert_eq!(code, 0, "reinstall failed:\n{log}");
    wine.wait_service_running();
    let again = wait_machine(&relay, &admin, &wine, |m| m["online"] == true).await;
    assert_eq!(
        again["agent_id"],
        agent_id.as_str(),
        "a reinstall made a new row"
    );
    assert_eq!(relay.machines(&admin).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_enrollment_key_installs_and_the_service_log_names_the_refusal() {
    let Some(template) = built_msi() else { return };
    let Some(wine) = WinePrefix::start() else {
        return;
    };
    let relay = Relay::start_in(tempfile::tempdir().unwrap(), 0, None, |c| {
        c.agent_windows_msi_path = Some(template.clone());
    })
    .await;
    let admin = relay.admin().await;
    let site = relay
        .post(
            &admin,
            "/api/sites",
            json!({ "name": "Branch", "code": "BR" }),
        )
        .await;
    let site_id = site["id"].as_str().unwrap();
    let resp = relay
        .http
        .get(format!(
            "{}/api/sites/{site_id}/installer?platform=windows",
            relay.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let msi = work.path().join("guruconnect-BR.msi");
    std::fs::write(&msi, resp.bytes().await.unwrap()).unwrap();
    let msi_arg = format!("Z:{}", msi.display()).replace('/', "\\");

    let wrong = "ENROLLMENT_KEY=gce_this-key-was-rotated-long-ago";
    let (code, log) = wine.msiexec(&["/i", &msi_arg, "/qn", wrong], &work.path().join("i.log"));
    assert_eq!(code, 0, "the installer should complete:\n{log}");
    assert_configured(&wine, &log);
    wine.wait_service_running();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = wine.agent_log();
        if text.contains("enrollment") && (text.contains("refused") || text.contains("rejected")) {
            assert!(
                text.contains("reconnecting in") || text.contains("retry"),
                "the log does not say it retries:\n{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service log does not name the refusal:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(relay.machines(&admin).await.is_empty());
}
