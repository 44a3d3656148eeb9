//! Second factor at sign-in (issue 15 item 9): enrolment, the second step with a real
//! TOTP code or a recovery code, replay refusal, rate limits, the per-role policy, disable
//! and the administrator's reset. Codes are computed here with the server's own TOTP
//! crate. Runs on SQLite, and on PostgreSQL when `GURUCONNECT_TEST_DATABASE_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestServer, expect_envelope, random_secret};
use reqwest::StatusCode;
use serde_json::{Value, json};
use totp_rs::{Algorithm, Secret, TOTP};

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The RFC 6238 code of `secret` (base32) at `time`.
fn code_at(secret: &str, time: u64) -> String {
    let bytes = Secret::Encoded(secret.to_owned()).to_bytes().unwrap();
    TOTP::new(Algorithm::SHA1, 6, 0, 30, bytes, None, String::new())
        .unwrap()
        .generate(time)
}

/// A server that trusts 127.0.0.1 as a proxy, so each request below can come from its
/// own address and the per-address limits stay out of the way.
async fn start(tweak: impl FnOnce(&mut guruconnect_server::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        tweak(c);
    })
    .await
}

fn fresh_ip() -> String {
    let b = uuid::Uuid::new_v4();
    let b = b.as_bytes();
    format!("10.{}.{}.{}", b[0], b[1], b[2].max(1))
}

async fn post(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut req = server
        .client()
        .post(server.url(path))
        .header("x-forwarded-for", fresh_ip())
        .json(&body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

/// Starts enrolment for `token`'s user; returns the secret.
async fn setup(server: &TestServer, token: &str) -> String {
    let resp = post(server, "/api/auth/totp/setup", Some(token), json!({})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let secret = body["secret"].as_str().unwrap().to_owned();
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/GuruConnect:"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    assert!(
        body["qr_svg_data_url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/svg+xml;base64,")
    );
    secret
}

/// Enrols `token`'s user with a code for time `t0`; returns the secret, the recovery
/// codes and the confirm response.
async fn enrol(server: &TestServer, token: &str, t0: u64) -> (String, Vec<String>, Value) {
    let secret = setup(server, token).await;
    let resp = post(
        server,
        "/api/auth/totp/confirm",
        Some(token),
        json!({ "code": code_at(&secret, t0) }),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let codes: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, codes, body)
}

/// Signs in with the password; returns the `mfa_token` (panics unless one is asked for).
async fn mfa_token(server: &TestServer, username: &str, password: &str) -> String {
    let resp = server.login_response(username, password).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["mfa_required"], true, "{body}");
    assert!(
        body.get("token").is_none(),
        "no login token before the second factor: {body}"
    );
    body["mfa_token"].as_str().unwrap().to_owned()
}

async fn second_step(server: &TestServer, mfa: &str, field: &str, code: &str) -> reqwest::Response {
    post(
        server,
        "/api/auth/login/totp",
        None,
        json!({ "mfa_token": mfa, field: code }),
    )
    .await
}

async fn user_with_password(server: &TestServer, role: &str) -> (String, String) {
    let admin = server.issue_token("admin").await;
    let name = format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let password = random_secret("pw");
    server.create_user(&admin, &name, &password, role).await;
    (name, password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_then_sign_in_with_a_code_and_with_a_recovery_code() {
    let server = start(|_| {}).await;
    let (name, password) = user_with_password(&server, "technician").await;
    let token = server.login(&name, &password).await;

    // A wrong code does not enable anything and is audited.
    let secret = setup(&server, &token).await;
    let t0 = now_secs();
    let wrong = format!(
        "{:06}",
        (code_at(&secret, t0).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    let resp = post(
        &server,
        "/api/auth/totp/confirm",
        Some(&token),
        json!({ "code": wrong }),
    )
    .await;
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(server.events_of("totp.failed").await.len(), 1);
    let me: Value = server
        .get("/api/auth/me", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["totp_enabled"], false);

    // Setting up again replaces the pending secret; the right code enables it.
    let resp = post(
        &server,
        "/api/auth/totp/confirm",
        Some(&token),
        json!({ "code": code_at(&secret, t0) }),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let recovery: Vec<String> = serde_json::from_value(body["recovery_codes"].clone()).unwrap();
    assert_eq!(recovery.len(), 10);
    assert!(
        body.get("token").is_none(),
        "a full sign-in gets no new token: {body}"
    );
    assert_eq!(server.events_of("totp.enrolled").await.len(), 1);
    let me: Value = server
        .get("/api/auth/me", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["totp_enabled"], true);
    // The secret is never shown again: a second setup is refused.
    let resp = post(&server, "/api/auth/totp/setup", Some(&token), json!({})).await;
    expect_envelope(resp, StatusCode::CONFLICT, "conflict").await;

    // Password alone is not a sign-in; the second-step token is no login token.
    let mfa = mfa_token(&server, &name, &password).await;
    assert_eq!(server.me_status(&mfa).await, StatusCode::UNAUTHORIZED);
    // Replay: the code that confirmed enrolment is not accepted again.
    let resp = second_step(&server, &mfa, "code", &code_at(&secret, t0)).await;
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // The next step's code (within the drift window) signs in.
    let next = code_at(&secret, t0 + 30);
    let resp = second_step(&server, &mfa, "code", &next).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let full = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["user"]["username"], name.as_str());
    assert_eq!(server.me_status(&full).await, StatusCode::OK);
    // The second-step token is single-use, and the code cannot be replayed either.
    let resp = second_step(&server, &mfa, "code", &next).await;
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let mfa = mfa_token(&server, &name, &password).await;
    let resp = second_step(&server, &mfa, "code", &next).await;
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // A login token is never accepted as a second-step token.
    let resp = second_step(&server, &full, "code", &code_at(&secret, t0 + 60)).await;
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // A recovery code signs in once, typed with spaces and in capitals.
    let typed = recovery[3].replace('-', " ").to_uppercase();
    let resp = second_step(&server, &mfa, "recovery_code", &typed).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(server.events_of("recovery_code.used").await.len(), 1);
    let mfa = mfa_token(&server, &name, &password).await;
    let resp = second_step(&server, &mfa, "recovery_code", &recovery[3]).await;
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert!(server.events_of("totp.failed").await.len() >= 3);
    // Nothing secret reached the audit log.
    let events = serde_json::to_string(
        &server
            .events()
            .await
            .iter()
            .map(|e| &e.event.details)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!events.contains(&secret) && !events.contains(&recovery[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_step_is_rate_limited_per_address_and_per_user() {
    let server = start(|_| {}).await;
    let (name, password) = user_with_password(&server, "viewer").await;
    let token = server.login(&name, &password).await;
    let (secret, _, _) = enrol(&server, &token, now_secs()).await;
    let mfa = mfa_token(&server, &name, &password).await;
    let attempt = |ip: &'static str| {
        let server = &server;
        let mfa = mfa.clone();
        async move {
            server
                .client()
                .post(server.url("/api/auth/login/totp"))
                .header("x-forwarded-for", ip)
                .json(&json!({ "mfa_token": mfa, "code": "000000" }))
                .send()
                .await
                .unwrap()
        }
    };
    // Per user: five failures from five addresses, then a sixth address is refused too.
    for ip in [
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
        "192.0.2.5",
    ] {
        assert_eq!(attempt(ip).await.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = attempt("192.0.2.6").await;
    assert!(resp.headers().get("retry-after").is_some());
    expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Even the right code waits (the limit runs before the check).
    let resp = server
        .client()
        .post(server.url("/api/auth/login/totp"))
        .header("x-forwarded-for", "192.0.2.7")
        .json(&json!({ "mfa_token": mfa, "code": code_at(&secret, now_secs() + 30) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);

    // Per address: one address guessing for anyone is refused after five tries.
    for _ in 0..4 {
        assert_eq!(
            attempt("192.0.2.1").await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let resp = server
        .client()
        .post(server.url("/api/auth/login/totp"))
        .header("x-forwarded-for", "192.0.2.1")
        .json(&json!({ "mfa_token": "not-a-token", "code": "000000" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(server.events_of("totp.failed").await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_requires_totp_gets_an_enrol_only_sign_in() {
    let server = start(|c| c.require_totp_roles = vec!["admin".into()]).await;
    let resp = server.login_response("admin", &server.admin_password).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["totp_enrollment_required"], true, "{body}");
    let enrol_only = body["token"].as_str().unwrap().to_owned();

    // It is no login token: nothing but enrolment, me and logout accept it.
    let resp = server.get("/api/users", &enrol_only).await;
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = post(&server, "/api/codes", Some(&enrol_only), json!({})).await;
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let me: Value = server
        .get("/api/auth/me", &enrol_only)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["totp_enrollment_required"], true);
    assert_eq!(me["totp_required"], true);

    // Enrolling turns it into a full sign-in.
    let t0 = now_secs();
    let (secret, _, body) = enrol(&server, &enrol_only, t0).await;
    let full = body["token"]
        .as_str()
        .expect("full token after enrolment")
        .to_owned();
    assert_eq!(body["user"]["totp_enabled"], true);
    assert_eq!(
        server.me_status(&enrol_only).await,
        StatusCode::UNAUTHORIZED,
        "revoked"
    );
    assert_eq!(
        server.get("/api/users", &full).await.status(),
        StatusCode::OK
    );

    // From now on the admin signs in with both factors, and cannot drop the second one.
    let mfa = mfa_token(&server, "admin", &server.admin_password).await;
    let resp = second_step(&server, &mfa, "code", &code_at(&secret, t0 + 30)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = post(
        &server,
        "/api/auth/totp/disable",
        Some(&full),
        json!({ "password": server.admin_password, "code": code_at(&secret, t0 + 60) }),
    )
    .await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    // Roles outside the policy sign in as before.
    let (name, password) = user_with_password(&server, "technician").await;
    let resp = server.login_response(&name, &password).await;
    let body: Value = resp.json().await.unwrap();
    assert!(body["token"].is_string() && body.get("totp_enrollment_required").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_needs_password_and_code_and_an_admin_can_reset() {
    let server = start(|_| {}).await;
    let admin = server.issue_token("admin").await;
    let (name, password) = user_with_password(&server, "technician").await;
    let token = server.login(&name, &password).await;
    let t0 = now_secs();
    let (secret, _, _) = enrol(&server, &token, t0).await;

    let resp = post(
        &server,
        "/api/auth/totp/disable",
        Some(&token),
        json!({ "password": "wrong-password", "code": code_at(&secret, t0 + 30) }),
    )
    .await;
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = post(
        &server,
        "/api/auth/totp/disable",
        Some(&token),
        json!({ "password": password, "code": code_at(&secret, t0 + 30) }),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(server.events_of("totp.disabled").await.len(), 1);
    // Signing in needs the password only again.
    server.login(&name, &password).await;

    // Enrol again; a non-admin cannot reset, an admin can.
    let token = server.login(&name, &password).await;
    enrol(&server, &token, now_secs()).await;
    let user_id = server
        .state
        .store
        .find_user_by_username(guruconnect_store::DEFAULT_TENANT, &name)
        .await
        .unwrap()
        .unwrap()
        .id;
    let (other, _) = user_with_password(&server, "technician").await;
    let other_token = server.issue_token(&other).await;
    let path = format!("/api/users/{user_id}/totp/reset");
    let resp = post(&server, &path, Some(&other_token), json!({})).await;
    expect_envelope(resp, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(server.events_of("totp.reset").await.is_empty());
    mfa_token(&server, &name, &password).await;

    let resp = post(&server, &path, Some(&admin), json!({})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["totp_enabled"], false);
    let reset = server.events_of("totp.reset").await;
    assert_eq!(reset.len(), 1);
    assert_eq!(reset[0].event.details["target_user_id"], user_id.as_str());
    server.login(&name, &password).await;
    let resp = post(
        &server,
        "/api/users/nope/totp/reset",
        Some(&admin),
        json!({}),
    )
    .await;
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
}
