//! Integration tests of `/api/auth/*`, the error envelope, rate limits and metrics
//! (SPEC §3, §4.4, §4.9, §4.11, §10).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestServer, expect_envelope, random_secret};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn login_me_and_no_user_enumeration() {
    let server = TestServer::start().await;
    assert_eq!(
        server.is_sqlite(),
        !common::postgres_selected(),
        "backend selection"
    );

    let resp = server.login_response("admin", &server.admin_password).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let token = body["token"].as_str().expect("token").to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert!(body["expires_at"].as_i64().expect("expires_at") > 0);
    let user = &body["user"];
    assert_eq!(user["username"], "admin");
    assert_eq!(user["role"], "admin");
    assert_eq!(user["disabled"], false);
    let permissions: Vec<&str> = user["permissions"]
        .as_array()
        .expect("permissions")
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in ["view", "control", "manage_users"] {
        assert!(permissions.contains(&p), "admin lacks {p}: {permissions:?}");
    }
    assert!(
        user.get("password_hash").is_none(),
        "hash must not be returned: {user}"
    );
    assert!(!body.to_string().contains("$argon2"), "hash leaked: {body}");

    // Usernames are matched case-insensitively.
    let resp = server.login_response("ADMIN", &server.admin_password).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let resp = server.get("/api/auth/me", &token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let me: Value = resp.json().await.unwrap();
    assert_eq!(me["username"], "admin");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["permissions"], user["permissions"]);

    let wrong = expect_envelope(
        server
            .login_response("admin", "definitely-wrong-password")
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let unknown = expect_envelope(
        server
            .login_response("nobody-here", "definitely-wrong-password")
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(
        wrong["detail"], unknown["detail"],
        "wrong password and unknown user must be indistinguishable"
    );
    assert!(
        !wrong["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("not found"),
        "{wrong}"
    );
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let server = TestServer::start().await;
    let token = server.issue_token("admin").await;
    assert_eq!(server.me_status(&token).await, StatusCode::OK);

    // No credential, garbage, a tampered signature, a token signed with another key.
    let resp = server
        .client()
        .get(server.url("/api/auth/me"))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    for bad in ["garbage", "a.b.c"] {
        expect_envelope(
            server.get("/api/auth/me", bad).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    expect_envelope(
        server.get("/api/auth/me", &tampered).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    let other = TestServer::start().await;
    let foreign = other.issue_token("admin").await;
    expect_envelope(
        server.get("/api/auth/me", &foreign).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn error_envelope_everywhere() {
    let server = TestServer::start_with(|c| c.max_body_bytes = 256).await;
    let client = server.client();

    // Unknown route.
    let resp = client
        .get(server.url("/api/no-such-route"))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;

    // Wrong method on a known route.
    let resp = client
        .get(server.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;

    // Malformed JSON.
    let resp = client
        .post(server.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body("{\"username\": \"admin\", \"password\": ")
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::BAD_REQUEST, "bad_request").await;

    // Well-formed JSON with wrongly typed fields.
    let resp = client
        .post(server.url("/api/auth/login"))
        .json(&json!({ "username": 42 }))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    // Body over max_body_bytes.
    let resp = client
        .post(server.url("/api/auth/login"))
        .json(&json!({ "username": "admin", "password": "x".repeat(1000) }))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    // An inbound X-Request-Id is echoed in the header and in the body.
    let resp = client
        .get(server.url("/api/nothing"))
        .header("x-request-id", "test-corr-123")
        .send()
        .await
        .unwrap();
    let body = expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(body["correlation_id"], "test-corr-123");

    // Also on a handler error and on a success.
    let resp = client
        .post(server.url("/api/auth/login"))
        .header("x-request-id", "test-corr-456")
        .json(&json!({ "username": "admin", "password": "wrong-password" }))
        .send()
        .await
        .unwrap();
    let body = expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(body["correlation_id"], "test-corr-456");
    let resp = client
        .get(server.url("/health"))
        .header("x-request-id", "test-corr-789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], "test-corr-789");

    // A hostile request id is replaced by a generated one, never echoed.
    let resp = client
        .get(server.url("/api/nothing"))
        .header("x-request-id", "evil id\twith spaces")
        .send()
        .await
        .unwrap();
    let body = expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert!(!body["correlation_id"].as_str().unwrap().contains("evil"));

    // Distinct requests get distinct generated ids.
    let a = expect_envelope(
        client.get(server.url("/api/x")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let b = expect_envelope(
        client.get(server.url("/api/x")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_ne!(a["correlation_id"], b["correlation_id"]);
}

#[tokio::test]
async fn login_is_rate_limited_per_ip() {
    let server = TestServer::start().await;
    for i in 0..8 {
        let resp = server.login_response("admin", "wrong-password").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // The 9th is refused even with the right password.
    let resp = server.login_response("admin", &server.admin_password).await;
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is seconds");
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // From an untrusted peer, X-Forwarded-For does not buy a fresh bucket.
    for ip in ["198.51.100.1", "198.51.100.2", "10.9.8.7"] {
        let resp = server
            .client()
            .post(server.url("/api/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({ "username": "admin", "password": server.admin_password }))
            .send()
            .await
            .unwrap();
        expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    }
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_gives_separate_buckets() {
    let server = TestServer::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let login_from = |ip: &'static str, password: String| {
        let client = server.client();
        let url = server.url("/api/auth/login");
        async move {
            client
                .post(url)
                .header("x-forwarded-for", ip)
                .json(&json!({ "username": "admin", "password": password }))
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..8 {
        let resp = login_from("203.0.113.10", "wrong-password".into()).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = login_from("203.0.113.10", server.admin_password.clone()).await;
    expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // The client cannot pick its bucket by prepending entries: the proxy's own entry
    // (the rightmost untrusted hop) is the one that counts.
    let resp = login_from("198.51.100.77, 203.0.113.10", server.admin_password.clone()).await;
    expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another client behind the same proxy has its own bucket.
    let resp = login_from("203.0.113.11", server.admin_password.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The audit log records the forwarded client IP.
    let failures = server.events_of("auth.login_failure").await;
    assert!(
        failures
            .iter()
            .all(|e| e.event.client_ip.as_deref() == Some("203.0.113.10")),
        "{failures:?}"
    );
    let successes = server.events_of("auth.login_success").await;
    assert_eq!(successes.len(), 1);
    assert_eq!(
        successes[0].event.client_ip.as_deref(),
        Some("203.0.113.11")
    );
}

#[tokio::test]
async fn change_password_is_rate_limited() {
    let server = TestServer::start().await;
    let token = server.issue_token("admin").await;
    let change = || {
        server
            .client()
            .post(server.url("/api/auth/change-password"))
            .bearer_auth(&token)
            .json(
                &json!({ "current_password": "wrong-current", "new_password": "new-password-123" }),
            )
            .send()
    };
    for i in 0..5 {
        let resp = change().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let resp = change().await.unwrap();
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test]
async fn logout_revokes_and_revocation_survives_restart() {
    let server = TestServer::start().await;
    let revoked = server.admin_token().await;
    let kept = server.admin_token().await;
    assert_eq!(server.me_status(&revoked).await, StatusCode::OK);

    let resp = server
        .client()
        .post(server.url("/api/auth/logout"))
        .bearer_auth(&revoked)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    expect_envelope(
        server.get("/api/auth/me", &revoked).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    // Logging out twice with the same token is refused too.
    let resp = server
        .client()
        .post(server.url("/api/auth/logout"))
        .bearer_auth(&revoked)
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(server.me_status(&kept).await, StatusCode::OK);

    let logouts = server.events_of("auth.logout").await;
    assert_eq!(logouts.len(), 1);
    assert_eq!(logouts[0].event.username.as_deref(), Some("admin"));
    assert_eq!(logouts[0].event.client_ip.as_deref(), Some("127.0.0.1"));

    let server = server.restart().await;
    assert_eq!(server.me_status(&revoked).await, StatusCode::UNAUTHORIZED);
    assert_eq!(server.me_status(&kept).await, StatusCode::OK);
}

#[tokio::test]
async fn change_password_flow() {
    let server = TestServer::start().await;
    let admin = server.issue_token("admin").await;
    let old = random_secret("old");
    let new = random_secret("new");
    server
        .create_user(&admin, "carol", &old, "technician")
        .await;
    let current = server.login("carol", &old).await;
    let other = server.login("carol", &old).await;
    let change = |current_password: &str, new_password: &str| {
        server
            .client()
            .post(server.url("/api/auth/change-password"))
            .bearer_auth(&current)
            .json(&json!({ "current_password": current_password, "new_password": new_password }))
            .send()
    };

    let resp = change("not-my-password", &new).await.unwrap();
    expect_envelope(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = change(&old, "short").await.unwrap();
    expect_envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    // Neither failure changed anything.
    assert_eq!(server.me_status(&other).await, StatusCode::OK);

    let resp = change(&old, &new).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["ok"], true);

    expect_envelope(
        server.get("/api/auth/me", &other).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(server.me_status(&current).await, StatusCode::OK);
    // Another user's tokens are untouched.
    assert_eq!(server.me_status(&admin).await, StatusCode::OK);

    expect_envelope(
        server.login_response("carol", &old).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let fresh = server.login("carol", &new).await;
    assert_eq!(server.me_status(&fresh).await, StatusCode::OK);

    let changed = server.events_of("auth.password_changed").await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].event.username.as_deref(), Some("carol"));
}

#[tokio::test]
async fn health_and_metrics() {
    let server = TestServer::start().await;
    let client = server.client();

    let resp = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    let metrics = || async {
        let resp = client.get(server.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.text().await.unwrap()
    };
    let text = metrics().await;
    assert!(text.contains("guruconnect_http_requests_total"), "{text}");
    assert!(
        !text.contains("guruconnect_auth_failures_total{plane=\"user\"}"),
        "no failure yet: {text}"
    );

    let resp = server.login_response("admin", "wrong-password").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let text = metrics().await;
    assert!(
        text.contains("guruconnect_auth_failures_total{plane=\"user\"} 1"),
        "{text}"
    );

    let token = server.issue_token("admin").await;
    for _ in 0..5 {
        let resp = client
            .post(server.url("/api/auth/change-password"))
            .bearer_auth(&token)
            .json(&json!({ "current_password": "nope-nope", "new_password": "whatever-123" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = client
        .post(server.url("/api/auth/change-password"))
        .bearer_auth(&token)
        .json(&json!({ "current_password": "nope-nope", "new_password": "whatever-123" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let text = metrics().await;
    assert!(text.contains("guruconnect_rate_limited_total"), "{text}");
    assert!(
        text.contains("guruconnect_rate_limited_total{limit=\"change_password\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("guruconnect_http_requests_total{status=\"429\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("guruconnect_auth_failures_total{plane=\"user\"} 6"),
        "{text}"
    );
}
