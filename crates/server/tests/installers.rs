//! Per-site installers: what the server says it can serve, the Linux script with labels
//! built in, and the Windows MSI made from the configured template with the server URL, site
//! code and labels in its Property table, never the enrollment key, re-signed when a
//! certificate is configured. Real server, real HTTP; the MSI is built by wixl from the
//! product's .wxs, read back with msiinfo, and its signature checked with osslsigncode.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use common::{TestServer, expect_envelope};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Site {
    id: String,
    key: String,
}

async fn create_site(server: &TestServer, admin: &str, name: &str, code: &str) -> Site {
    let resp = server
        .client()
        .post(server.url("/api/sites"))
        .bearer_auth(admin)
        .json(&json!({ "name": name, "code": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "creating site {code}");
    let body: Value = resp.json().await.unwrap();
    Site {
        id: body["id"].as_str().unwrap().to_owned(),
        key: body["enrollment_key"].as_str().unwrap().to_owned(),
    }
}

/// The product's MSI, built by wixl from `installer/windows/guruconnect.wxs` around a
/// stand-in exe (the real one is what `scripts/windows/build-msi.sh` packs).
fn template_msi(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stage = dir.join("stage");
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::write(stage.join("guruconnect-agent.exe"), b"MZ stand-in").unwrap();
    let path = dir.join("guruconnect.msi");
    let out = std::process::Command::new("wixl")
        .current_dir(&stage)
        .args(["-a", "x64", "-D", "Version=0.1.0", "-o"])
        .arg(&path)
        .arg(repo.join("installer/windows/guruconnect.wxs"))
        .output()
        .expect("wixl is installed (.ci/run installs msitools and wixl)");
    assert!(
        out.status.success(),
        "wixl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// The Property table of an MSI, read with msiinfo.
fn msi_properties(bytes: &[u8]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read.msi");
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("msiinfo")
        .arg("export")
        .arg(&path)
        .arg("Property")
        .output()
        .expect("msiinfo");
    assert!(
        out.status.success(),
        "not a valid MSI: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(3)
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_owned(), v.trim_end_matches('\r').to_owned()))
        .collect()
}

/// One table of an MSI as (first column, second column, third column) rows.
fn msi_table(path: &Path, table: &str) -> Vec<(String, String, String)> {
    let out = std::process::Command::new("msiinfo")
        .arg("export")
        .arg(path)
        .arg(table)
        .output()
        .expect("msiinfo");
    assert!(out.status.success(), "msiinfo export {table}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(3)
        .map(|l| {
            let mut cols = l.trim_end_matches('\r').split('\t').map(str::to_owned);
            let mut next = || cols.next().unwrap_or_default();
            (next(), next(), next())
        })
        .collect()
}

/// The custom actions run where their exe exists and where they matter: configuring after
/// the files and the service are installed and before the service starts, purging after
/// the service stopped and before the files go. (wixl once put both before
/// InstallInitialize, where the exe does not exist yet: Wine logged "can't find
/// executable" and the install still succeeded, without a configuration.)
#[test]
fn the_custom_actions_are_sequenced_inside_the_install_script() {
    let dir = tempfile::tempdir().unwrap();
    let msi = template_msi(dir.path());
    let rows = msi_table(&msi, "InstallExecuteSequence");
    let seq = |action: &str| -> i64 {
        rows.iter()
            .find(|(a, _, _)| a == action)
            .unwrap_or_else(|| panic!("{action} is not in the sequence: {rows:?}"))
            .2
            .parse()
            .unwrap()
    };
    let configure = seq("ConfigureAgent");
    assert!(
        seq("InstallInitialize") < configure
            && seq("InstallFiles") < configure
            && seq("InstallServices") < configure
            && configure < seq("StartServices"),
        "ConfigureAgent at {configure}: {rows:?}"
    );
    let purge = seq("PurgeAgentData");
    assert!(
        seq("InstallInitialize") < purge
            && seq("StopServices") < purge
            && purge < seq("RemoveFiles"),
        "PurgeAgentData at {purge}: {rows:?}"
    );
}

#[tokio::test]
async fn missing_artifacts_are_named_with_what_to_configure() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let site = create_site(&server, &admin, "Head Office", "HQ").await;

    let body: Value = server
        .get("/api/installers", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["linux"]["available"], true, "{body}");
    assert_eq!(body["linux"]["agent_served"], false, "{body}");
    assert!(
        body["linux"]["hint"]
            .as_str()
            .unwrap()
            .contains("agent_binary_path"),
        "{body}"
    );
    assert_eq!(body["windows"]["available"], false, "{body}");
    assert!(
        body["windows"]["hint"]
            .as_str()
            .unwrap()
            .contains("agent_windows_msi_path"),
        "{body}"
    );

    let resp = server
        .get(
            &format!("/api/sites/{}/installer?platform=windows", site.id),
            &admin,
        )
        .await;
    let envelope = expect_envelope(resp, StatusCode::NOT_FOUND, "not_configured").await;
    assert!(
        envelope["detail"]
            .as_str()
            .unwrap()
            .contains("build-msi.sh"),
        "{envelope}"
    );

    // The Linux script says what to do instead of a bare `curl: (22) … 404`.
    let script = server
        .get(&format!("/api/sites/{}/installer", site.id), &admin)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        script.contains("elif [ \"no\" != yes ]"),
        "the script knows nothing is served"
    );
    assert!(script.contains("GURUCONNECT_AGENT_BIN=/path/to/guruconnect-agent"));

    let resp = server
        .get(
            &format!("/api/sites/{}/installer?platform=macos", site.id),
            &admin,
        )
        .await;
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    server
        .create_user(&admin, "tech1", "correct-horse-battery-1", "technician")
        .await;
    let tech = server.login("tech1", "correct-horse-battery-1").await;
    let resp = server.get("/api/installers", &tech).await;
    assert!(
        matches!(
            resp.status(),
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED
        ),
        "{}",
        resp.status()
    );
}

#[tokio::test]
async fn the_linux_script_carries_the_labels_chosen_in_the_builder() {
    // The server's release key is pinned into the configuration the script writes.
    let release_key =
        guruconnect_release::public_key_text(&guruconnect_release::generate_key().verifying_key());
    let server = TestServer::start_with(|c| c.release_public_key = Some(release_key.clone())).await;
    let admin = server.admin_token().await;
    let site = create_site(&server, &admin, "Branch", "BRANCH").await;
    let path = format!(
        "/api/sites/{}/installer?platform=linux&company=Acme%20%26%20Sons&department=Front%27s%20Desk&device_type=laptop&tags=pos,%20kiosk,,",
        site.id
    );
    let resp = server.get(&path, &admin).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let script = resp.text().await.unwrap();
    assert!(script.contains("BUILTIN_COMPANY='Acme & Sons'"), "{script}");
    assert!(
        script.contains(r"BUILTIN_DEPARTMENT='Front'\''s Desk'"),
        "{script}"
    );
    assert!(script.contains("BUILTIN_DEVICE_TYPE='laptop'"));
    assert!(script.contains("BUILTIN_TAGS='pos,kiosk'"));
    assert!(!script.contains(&site.key));

    // The script's labels reach the configuration it writes (run as the README says, into a
    // test root, with a stand-in binary that records its install arguments).
    let root = tempfile::tempdir().unwrap();
    let fake = root.path().join("fake-agent");
    std::fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
    let script_path = root.path().join("install.sh");
    std::fs::write(&script_path, &script).unwrap();
    let out = std::process::Command::new("sh")
        .arg(&script_path)
        .arg(&site.key)
        .env("GURUCONNECT_ROOT", root.path().join("root"))
        .env("GURUCONNECT_AGENT_BIN", &fake)
        .env_remove("GURUCONNECT_COMPANY")
        .env("GURUCONNECT_DEVICE_TYPE", "desktop")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml =
        std::fs::read_to_string(root.path().join("root/etc/guruconnect/agent.toml")).unwrap();
    assert!(toml.contains("company = \"Acme & Sons\""), "{toml}");
    assert!(toml.contains("department = \"Front's Desk\""), "{toml}");
    assert!(
        toml.contains("device_type = \"desktop\""),
        "the environment overrides: {toml}"
    );
    assert!(toml.contains("tags = [\"pos\", \"kiosk\"]"), "{toml}");
    assert!(
        toml.contains(&format!("release_public_key = \"{release_key}\"")),
        "{toml}"
    );

    for bad in [
        "company=a%5Bb%5D",
        "tags=x%0Ay",
        &format!("department={}", "d".repeat(129)),
    ] {
        let resp = server
            .get(&format!("/api/sites/{}/installer?{bad}", site.id), &admin)
            .await;
        expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
}

#[tokio::test]
async fn the_windows_msi_carries_server_site_and_labels_but_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let template = template_msi(dir.path());
    let server = TestServer::start_with(|c| {
        c.agent_windows_msi_path = Some(template.clone());
        c.public_url = Some("https://support.example.test/".into());
    })
    .await;
    let admin = server.admin_token().await;
    let site = create_site(&server, &admin, "Head Office", "HQ").await;

    let body: Value = server
        .get("/api/installers", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["windows"]["available"], true, "{body}");
    assert_eq!(body["windows"]["signed"], false, "{body}");

    let resp = server
        .get(
            &format!(
                "/api/sites/{}/installer?platform=windows&company=Acme&tags=pos,front-desk",
                site.id
            ),
            &admin,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-msi");
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("guruconnect-HQ.msi")
    );
    let bytes = resp.bytes().await.unwrap();
    let props = msi_properties(&bytes);
    let get = |k: &str| props.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("SERVER_URL"), Some("https://support.example.test"));
    assert_eq!(get("SITE_CODE"), Some("HQ"));
    assert_eq!(get("COMPANY"), Some("Acme"));
    assert_eq!(get("TAGS"), Some("pos,front-desk"));
    assert_eq!(
        get("DEPARTMENT"),
        None,
        "an empty label is no row: {props:?}"
    );
    assert_eq!(get("ENROLLMENT_KEY"), None);
    assert_eq!(get("ProductName"), Some("GuruConnect Agent"));
    assert_eq!(get("MsiHiddenProperties"), Some("ENROLLMENT_KEY"));
    let haystack = String::from_utf8_lossy(&bytes);
    assert!(
        !haystack.contains(&site.key),
        "the MSI leaks the enrollment key"
    );
    // The template on disk is untouched (it has no SERVER_URL).
    assert_eq!(
        msi_properties(&std::fs::read(&template).unwrap())
            .iter()
            .find(|(n, _)| n == "SERVER_URL")
            .map(|(_, v)| v.as_str()),
        None
    );
}

#[tokio::test]
async fn per_site_msis_are_signed_with_the_configured_certificate_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let template = template_msi(dir.path());
    // A throwaway CA and signing certificate, made here.
    let certs = dir.path().join("ca");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let made = std::process::Command::new("bash")
        .arg(repo.join("scripts/windows/test-cert.sh"))
        .arg(&certs)
        .status()
        .expect("bash");
    assert!(made.success(), "test-cert.sh failed (needs openssl)");

    // Required but not configured: refused with what to configure.
    let unsigned = {
        let template = template.clone();
        TestServer::start_with(move |c| {
            c.agent_windows_msi_path = Some(template);
            c.require_signed_installers = true;
        })
        .await
    };
    let admin = unsigned.admin_token().await;
    let site = create_site(&unsigned, &admin, "Head Office", "HQ").await;
    let resp = unsigned
        .get(
            &format!("/api/sites/{}/installer?platform=windows", site.id),
            &admin,
        )
        .await;
    let envelope = expect_envelope(resp, StatusCode::NOT_FOUND, "not_configured").await;
    assert!(
        envelope["detail"]
            .as_str()
            .unwrap()
            .contains("installer_signing_pkcs12")
    );

    let server = TestServer::start_with(|c| {
        c.agent_windows_msi_path = Some(template.clone());
        c.require_signed_installers = true;
        c.installer_signing_pkcs12 = Some(certs.join("signer.p12"));
        c.installer_signing_password = Some(
            std::fs::read_to_string(certs.join("password"))
                .unwrap()
                .trim()
                .to_owned()
                .into(),
        );
    })
    .await;
    let admin = server.admin_token().await;
    let site = create_site(&server, &admin, "Head Office", "HQ").await;
    let resp = server
        .get(
            &format!("/api/sites/{}/installer?platform=windows", site.id),
            &admin,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let signed = dir.path().join("site.msi");
    std::fs::write(&signed, resp.bytes().await.unwrap()).unwrap();
    let verify = |path: &Path| {
        std::process::Command::new("osslsigncode")
            .arg("verify")
            .arg("-CAfile")
            .arg(certs.join("ca.pem"))
            .arg("-in")
            .arg(path)
            .output()
            .expect("osslsigncode is installed (.ci/run installs it)")
    };
    let out = verify(&signed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The per-site MSI still carries the site code after signing.
    let bytes = std::fs::read(&signed).unwrap();
    assert!(msi_properties(&bytes).contains(&("SITE_CODE".into(), "HQ".into())));
    // One byte of signed content changed (in the string pool): the signature is refused.
    let mut tampered = bytes;
    let at = tampered
        .windows(b"GuruConnect Agent".len())
        .position(|w| w == b"GuruConnect Agent")
        .expect("the product name is stored in the package");
    tampered[at] ^= 0x01;
    let tampered_path = dir.path().join("tampered.msi");
    std::fs::write(&tampered_path, tampered).unwrap();
    assert!(!verify(&tampered_path).status.success());
}
