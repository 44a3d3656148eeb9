//! File transfer speed (issue 14, benchmarks): a file uploaded to and downloaded from the
//! real agent through the real relay on loopback, next to `scp` of the same file to and
//! from a private `sshd` on loopback. Ignored by default; run in release mode:
//!
//! ```sh
//! cargo test --release -p guruconnect-agent --test file_bench -- --ignored --nocapture
//! ```
//!
//! `GURUCONNECT_BENCH_FILE_MB` sets the size (default 200). The relay runs in this process
//! (plain `ws://`, as behind a TLS-terminating proxy on the same host), the agent is the
//! release binary under Xvfb, and the viewer is the protocol client doing what the console
//! does (48 KiB chunks, at most 1 MiB ahead of the agent's acks; SHA-256 on both ends).
//! `scp` encrypts (its default cipher); the relay hop here does not. Times are wall
//! clock from the request to the agent's verdict (`scp`: the whole command).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guruconnect_proto::Codec;
use support::files::{download, sha256_hex, upload};
use support::*;

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

/// A private sshd on loopback that lets this user in with a fresh key.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl Sshd {
    fn start() -> Option<Sshd> {
        if !Path::new("/usr/sbin/sshd").exists() {
            println!("no /usr/sbin/sshd (Debian package openssh-server): scp not measured");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let keygen = |name: &str| {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.path().join(name))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ssh-keygen failed");
        };
        keygen("host_key");
        keygen("client_key");
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("authorized_keys");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\n\
             UsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("sshd_config"), config).expect("sshd_config");
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.path().join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Sshd { dir, port, child })
    }

    /// `scp from to` (one side `root@127.0.0.1:path`); returns how long it took.
    fn scp(&self, from: &str, to: &str) -> Duration {
        let started = Instant::now();
        let ok = Command::new("scp")
            .arg("-q")
            .arg("-i")
            .arg(self.dir.path().join("client_key"))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-P",
                &self.port.to_string(),
                from,
                to,
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "scp {from} {to} failed");
        started.elapsed()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly, in release mode (see the module doc)"]
async fn file_transfer_through_the_relay_next_to_scp() {
    let Some(x) = Xvfb::start() else { return };
    let mb: usize = std::env::var("GURUCONNECT_BENCH_FILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let size = mb * 1_000_000;
    let data: Vec<u8> = (0..size)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let relay = Relay::start().await;
    let admin = relay.admin().await;
    let managed = relay.managed_config(&admin, 0o600).await;
    let mut agent = AgentProcess::spawn(Some(&x.display), &["run", "--config", &managed.config]);
    let session_id = relay.wait_session(&admin, "active").await;
    let (mut conn, _) = relay.viewer(&admin, &session_id, &[Codec::RawZstd]).await;
    let target = tempfile::tempdir().expect("target dir");

    let started = Instant::now();
    let up = upload(&mut conn, 1, target.path(), "bench.bin", &data).await;
    let up_took = started.elapsed();
    assert!(up.ok, "{up:?}\n{}", agent.stderr());
    let started = Instant::now();
    let (down, got) = download(&mut conn, 2, &target.path().join("bench.bin")).await;
    let down_took = started.elapsed();
    assert!(down.ok, "{down:?}");
    assert_eq!(down.sha256, sha256_hex(&data));
    assert!(got == data);
    let _ = agent.child.kill();
    let _ = agent.wait_exit(WAIT).await;

    println!("\n| {mb} MB file on loopback | upload | download |");
    println!("|---|---|---|");
    println!(
        "| GuruConnect relay (release agent, SHA-256 checked) | **{:.0} MB/s** ({:.2} s) | **{:.0} MB/s** ({:.2} s) |",
        mb_per_s(size, up_took),
        up_took.as_secs_f64(),
        mb_per_s(size, down_took),
        down_took.as_secs_f64()
    );
    if let Some(sshd) = Sshd::start() {
        let local = target.path().join("local.bin");
        std::fs::write(&local, &data).expect("local copy");
        let remote_dir = tempfile::tempdir().expect("remote dir");
        let remote = format!("root@127.0.0.1:{}/remote.bin", remote_dir.path().display());
        let scp_up = sshd.scp(&local.display().to_string(), &remote);
        let back = target.path().join("back.bin");
        let scp_down = sshd.scp(&remote, &back.display().to_string());
        assert_eq!(std::fs::read(&back).expect("back"), data);
        println!(
            "| scp to and from sshd (OpenSSH defaults) | {:.0} MB/s ({:.2} s) | {:.0} MB/s ({:.2} s) |",
            mb_per_s(size, scp_up),
            scp_up.as_secs_f64(),
            mb_per_s(size, scp_down),
            scp_down.as_secs_f64()
        );
    }
}
