//! The customer's join page API: `GET /api/join/:code` shows who is asking and nothing
//! else, never consumes the code, shares the code lockout with `/api/codes/validate`, and
//! `GET /join/:code/guruconnect-support.sh` is a script that downloads the agent from this
//! server and runs it with the server and the code; `GET /join/:code/windows` is the
//! Windows agent unchanged under a name that carries server and code; the customer's name
//! reaches the codes list and Live sessions. Real server, real HTTP; the script is run with
//! `sh` against a stand-in agent that records its arguments.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;

use common::{TestServer, expect_envelope};
use guruconnect_store::CodeStatus;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// `POST /api/codes` with a note; returns the full code.
async fn create_code(server: &TestServer, token: &str, note: &str) -> String {
    let resp = server
        .client()
        .post(server.url("/api/codes"))
        .bearer_auth(token)
        .json(&json!({ "note": note }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    body["code"].as_str().unwrap().to_owned()
}

async fn join(server: &TestServer, code: &str) -> reqwest::Response {
    server
        .client()
        .get(server.url(&format!("/api/join/{code}")))
        .send()
        .await
        .unwrap()
}

async fn validate(server: &TestServer, code: &str) -> reqwest::Response {
    server
        .client()
        .post(server.url("/api/codes/validate"))
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap()
}

async fn script(server: &TestServer, code: &str) -> reqwest::Response {
    server
        .client()
        .get(server.url(&format!("/join/{code}/guruconnect-support.sh")))
        .send()
        .await
        .unwrap()
}

async fn code_status(server: &TestServer, code: &str) -> CodeStatus {
    server
        .state
        .store
        .get_code(code)
        .await
        .unwrap()
        .unwrap()
        .status
}

fn assert_locked(resp: &reqwest::Response, what: &str) {
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After ({what})"));
    assert!(
        retry > 60,
        "{what}: a lockout, not the rate limit ({retry} s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_preview_shows_who_is_asking_and_nothing_else() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin, "Printer in room 4").await;

    // Typed the way a customer might: lower case, spaces instead of dashes.
    let typed = code.to_lowercase().replace('-', "%20");
    let resp = join(&server, &typed).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "customer_name",
            "downloads",
            "expires_at",
            "note",
            "technician"
        ],
        "{body}"
    );
    assert_eq!(body["technician"], "admin");
    assert_eq!(body["note"], "Printer in room 4");
    assert!(body["expires_at"].as_i64().unwrap() > 0);
    // Nothing about the creator beyond the display name: no user id anywhere.
    let admin_id = server
        .state
        .store
        .get_code(&code)
        .await
        .unwrap()
        .unwrap()
        .created_by;
    assert!(!body.to_string().contains(&admin_id), "{body}");
    // No agent binary configured: the Linux download says what to configure, and no
    // Windows support agent exists yet.
    assert_eq!(body["downloads"]["linux"]["available"], false);
    assert!(
        body["downloads"]["linux"]["hint"]
            .as_str()
            .unwrap()
            .contains("agent_binary_path"),
        "{body}"
    );
    assert_eq!(body["downloads"]["windows"]["available"], false);
    assert!(
        body["downloads"]["windows"]["hint"]
            .as_str()
            .unwrap()
            .contains("agent_windows_exe_path"),
        "{body}"
    );
    let resp = server
        .client()
        .get(server.url(&format!("/join/{code}/windows")))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;

    // Preview only: the code is still pending and still works for the agent.
    assert_eq!(code_status(&server, &code).await, CodeStatus::Pending);
    assert_eq!(script(&server, &code).await.status(), StatusCode::OK);
    assert_eq!(code_status(&server, &code).await, CodeStatus::Pending);
    assert_eq!(validate(&server, &code).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_cancelled_and_malformed_codes_are_a_404_envelope() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    expect_envelope(
        join(&server, "ZZZ-ZZZ-ZZZ").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_envelope(
        join(&server, "not-a-code").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_envelope(
        script(&server, "ZZZ-ZZZ-ZZZ").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let code = create_code(&server, &admin, "").await;
    let resp = server
        .client()
        .delete(server.url(&format!("/api/codes/{code}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    expect_envelope(
        join(&server, &code).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_on_join_lock_out_validate() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin, "").await;
    for _ in 0..10 {
        assert_eq!(
            join(&server, "ZZZ-ZZZ-ZZZ").await.status(),
            StatusCode::NOT_FOUND
        );
    }
    assert_locked(
        &validate(&server, &code).await,
        "validate after join failures",
    );
    assert_locked(&join(&server, &code).await, "join, right code");
    assert_locked(&script(&server, &code).await, "script, right code");
    assert_eq!(code_status(&server, &code).await, CodeStatus::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_on_validate_lock_out_join() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin, "").await;
    for _ in 0..10 {
        assert_eq!(
            validate(&server, "ZZZ-ZZZ-ZZZ").await.status(),
            StatusCode::NOT_FOUND
        );
    }
    assert_locked(&join(&server, &code).await, "join after validate failures");
    assert_locked(
        &script(&server, &code).await,
        "script after validate failures",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_shares_the_validate_rate_limit() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin, "").await;
    // 15 a minute in all, whichever door: successes never reset the rate limit.
    for i in 0..15 {
        let resp = if i % 2 == 0 {
            join(&server, &code).await
        } else {
            validate(&server, &code).await
        };
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
    }
    assert_eq!(
        join(&server, &code).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        validate(&server, &code).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A stand-in agent: records its arguments next to itself, one per line.
fn fake_agent(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("fake-agent");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n",
            dir.join("args").display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_downloads_the_agent_and_runs_it_with_server_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let agent = fake_agent(dir.path());
    let server = TestServer::start_with(|c| c.agent_binary_path = Some(agent.clone())).await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin, "Accounts laptop").await;

    let body: Value = join(&server, &code).await.json().await.unwrap();
    let url = body["downloads"]["linux"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(url, format!("/join/{code}/guruconnect-support.sh"));
    assert_eq!(body["downloads"]["linux"]["available"], true);

    let resp = server.client().get(server.url(&url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[reqwest::header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .contains("guruconnect-support.sh")
    );
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("#!/bin/sh\n"), "{text}");
    assert!(
        text.contains(&format!("SERVER='{}'", server.base)),
        "{text}"
    );
    assert!(text.contains(&format!("CODE='{code}'")), "{text}");

    // Run it as a customer would: `sh guruconnect-support.sh`, no flags, no environment.
    let path = dir.path().join("guruconnect-support.sh");
    std::fs::write(&path, &text).unwrap();
    let out = tokio::process::Command::new("sh")
        .arg(&path)
        .env_remove("GURUCONNECT_AGENT_BIN")
        .env_remove("GURUCONNECT_SERVER")
        .env("TMPDIR", dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        ["--server", server.base.as_str(), "--code", code.as_str()]
    );
    // The downloaded agent is removed after it exits.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("guruconnect."))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // A configured public URL is what the script connects to.
    let public = TestServer::start_with(|c| {
        c.agent_binary_path = Some(agent.clone());
        c.public_url = Some("https://support.example.com/".into());
    })
    .await;
    let admin = public.admin_token().await;
    let code = create_code(&public, &admin, "").await;
    let text = script(&public, &code).await.text().await.unwrap();
    assert!(
        text.contains("SERVER='https://support.example.com'\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_page_is_the_console() {
    let server = TestServer::start().await;
    for path in ["/join", "/join/ABC-DEF-GHJ"] {
        let resp = server.client().get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let mime = resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(mime.starts_with("text/html"), "{path}: {mime}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_download_is_the_exe_unchanged_under_a_name_with_server_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("guruconnect-agent.exe");
    let bytes: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&exe, &bytes).unwrap();
    let server = TestServer::start_with(|c| c.agent_windows_exe_path = Some(exe.clone())).await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin, "Reception PC").await;

    let body: Value = join(&server, &code).await.json().await.unwrap();
    assert_eq!(body["downloads"]["windows"]["available"], true, "{body}");
    let url = body["downloads"]["windows"]["url"].as_str().unwrap();
    assert_eq!(url, format!("/join/{code}/windows"));
    let resp = server.client().get(server.url(url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let disposition = resp.headers()[reqwest::header::CONTENT_DISPOSITION]
        .to_str()
        .unwrap()
        .to_owned();
    let name = disposition
        .strip_prefix("attachment; filename=\"")
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{disposition}"));
    // The agent reads exactly this server and code back from the name.
    assert_eq!(
        guruconnect_proto::support_file::parse(name),
        Some((server.base.clone(), code.clone())),
        "{name}"
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // A download previews the code; it stays usable.
    assert_eq!(code_status(&server, &code).await, CodeStatus::Pending);

    // A public URL with a path cannot be carried in a file name: said, not served.
    let server = TestServer::start_with(|c| {
        c.agent_windows_exe_path = Some(exe.clone());
        c.public_url = Some("https://example.com/support".into());
    })
    .await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin, "").await;
    let body: Value = join(&server, &code).await.json().await.unwrap();
    assert_eq!(body["downloads"]["windows"]["available"], false);
    assert!(
        body["downloads"]["windows"]["hint"]
            .as_str()
            .unwrap()
            .contains("public_url"),
        "{body}"
    );
}

async fn set_name(server: &TestServer, code: &str, body: Value) -> reqwest::Response {
    server
        .client()
        .post(server.url(&format!("/api/join/{code}/name")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_name_reaches_codes_and_sessions_and_bad_names_are_refused() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin, "Ticket 4711").await;

    for (bad, why) in [
        (json!({ "name": "   " }), "empty"),
        (json!({ "name": "x".repeat(101) }), "too long"),
        (json!({ "name": "Dana\u{7}" }), "control character"),
        (json!({ "nom": "Dana" }), "unknown field"),
    ] {
        let resp = set_name(&server, &code, bad).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{why}");
    }
    let resp = set_name(&server, &code, json!({ "name": " Dana Smith " })).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let body: Value = join(&server, &code).await.json().await.unwrap();
    assert_eq!(body["customer_name"], "Dana Smith");
    let codes: Value = server
        .client()
        .get(server.url("/api/codes"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let item = &codes["items"][0];
    assert_eq!(item["customer_name"], "Dana Smith", "{codes}");
    assert_eq!(item["note"], "Ticket 4711");

    // A wrong code is the same 404 as the preview's, and counts toward the lockout.
    let resp = set_name(&server, "ZZZ-ZZZ-ZZZ", json!({ "name": "Mallory" })).await;
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
    // Once used, the name is fixed.
    assert_eq!(validate(&server, &code).await.status(), StatusCode::OK);
    server
        .state
        .store
        .consume_code(&code, "s-1", server.state.clock.now_millis())
        .await
        .unwrap();
    let resp = set_name(&server, &code, json!({ "name": "Mallory" })).await;
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
    let stored = server.state.store.get_code(&code).await.unwrap().unwrap();
    assert_eq!(stored.customer_name.as_deref(), Some("Dana Smith"));
}
