//! Rate limits shared by the instances of a cluster (SPEC §4.9, issue 11): two real
//! servers in this process on one PostgreSQL schema with `[cluster]` set count every
//! limit and the code lockout together. A single server keeps its in-memory limiter.
//! The cluster cases need `GURUCONNECT_TEST_DATABASE_URL` and are skipped without it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "common/relay.rs"]
mod relay_support;

use std::net::IpAddr;
use std::time::Duration;

use common::{TestServer, expect_envelope, random_secret, test_database_url};
use guruconnect_server::clock::Clock;
use guruconnect_server::rate_limit::{Limit, RateLimits};
use guruconnect_store::{CodeStatus, Store};
use relay_support::{create_code, validate_code};
use reqwest::StatusCode;
use secrecy::SecretString;

/// Only the configuration needs it: nothing here connects to NATS.
const NATS_URL: &str = "nats://127.0.0.1:4222";

/// Two clustered instances, A and B, on one fresh schema with one signing secret; `None`
/// (after a note) when no PostgreSQL test database is configured.
async fn cluster(test: &str) -> Option<(TestServer, TestServer)> {
    let Some(url) = test_database_url().await else {
        println!("skipped {test}: GURUCONNECT_TEST_DATABASE_URL is not set");
        return None;
    };
    let secret = format!("{}{}", random_secret("sig"), random_secret("sig"));
    let clustered = |c: &mut guruconnect_server::Config| {
        c.database_url = Some(SecretString::from(url.clone()));
        c.signing_secret = Some(SecretString::from(secret.clone()));
        c.cluster.nats_url = Some(NATS_URL.to_owned());
    };
    // One after the other: A creates the first administrator, B finds it.
    let a = TestServer::start_with(clustered).await;
    let b = TestServer::start_with(clustered).await;
    assert!(!a.is_sqlite() && !b.is_sqlite());
    assert!(a.state.limits.is_shared() && b.state.limits.is_shared());
    Some((a, b))
}

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is seconds")
}

async fn metrics(server: &TestServer) -> String {
    let resp = server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    resp.text().await.unwrap()
}

/// `GET /ws/agent` with a code as the bearer, not an upgrade: the code lockout applies
/// and a wrong code counts towards it.
async fn agent_with_code(server: &TestServer, code: &str) -> reqwest::Response {
    server
        .client()
        .get(server.url("/ws/agent"))
        .bearer_auth(code)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_count_across_instances() {
    let Some((a, b)) = cluster("logins_count_across_instances").await else {
        return;
    };
    // Eight from 127.0.0.1, four on each instance.
    for i in 0..8 {
        let server = if i % 2 == 0 { &a } else { &b };
        let resp = server.login_response("admin", "wrong-password").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "login {i}");
    }
    // The ninth is refused on either, even with the right password.
    for server in [&a, &b] {
        let resp = server.login_response("admin", &a.admin_password).await;
        assert!(retry_after(&resp) >= 1);
        expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
        assert!(
            metrics(server)
                .await
                .contains("guruconnect_rate_limited_total{limit=\"login\"} 1"),
            "each instance counts its own refusal"
        );
    }
    // One signing secret: a token from A is good on B.
    let token = a.issue_token("admin").await;
    assert_eq!(b.me_status(&token).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_validate_limit_counts_across_instances() {
    let Some((a, b)) = cluster("code_validate_limit_counts_across_instances").await else {
        return;
    };
    let admin = a.admin_token().await;
    let code = create_code(&a, &admin).await;
    // Fifteen valid validations (no failure, so no lockout), split across A and B.
    for i in 0..15 {
        let server = if i % 2 == 0 { &a } else { &b };
        let resp = validate_code(server, &code).await;
        assert_eq!(resp.status(), StatusCode::OK, "validation {i}");
    }
    for server in [&a, &b] {
        let resp = validate_code(server, &code).await;
        let retry = retry_after(&resp);
        assert!(
            (1..=60).contains(&retry),
            "a rate limit, not a lockout: {retry} s"
        );
        expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
        assert!(
            metrics(server)
                .await
                .contains("guruconnect_rate_limited_total{limit=\"code_validate\"} 1")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_lockout_counts_across_instances() {
    let Some((a, b)) = cluster("code_lockout_counts_across_instances").await else {
        return;
    };
    let admin = a.admin_token().await;
    let code = create_code(&a, &admin).await;

    // Nine failures over both instances and both doors, then a success on B: the count
    // restarts everywhere.
    for i in 0..9 {
        let server = if i % 2 == 0 { &a } else { &b };
        let resp = if i < 6 {
            validate_code(server, "ZZZ-ZZZ-ZZZ").await
        } else {
            agent_with_code(server, "ZZZ-ZZZ-ZZZ").await
        };
        assert!(
            matches!(
                resp.status(),
                StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED
            ),
            "failure {i}: {}",
            resp.status()
        );
    }
    assert_eq!(validate_code(&b, &code).await.status(), StatusCode::OK);

    // Ten failures, five on each instance (agent plane: the validate rate limit stays
    // out of the way), lock the address out on both.
    for i in 0..10 {
        let server = if i % 2 == 0 { &a } else { &b };
        let resp = agent_with_code(server, "ZZZ-ZZZ-ZZZ").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    for server in [&a, &b] {
        let resp = validate_code(server, &code).await;
        let retry = retry_after(&resp);
        assert!(retry > 60, "the lockout's Retry-After, {retry} s");
        expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
        let resp = agent_with_code(server, &code).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let status = a.state.store.get_code(&code).await.unwrap().unwrap().status;
    assert_eq!(
        status,
        CodeStatus::Pending,
        "a locked-out address consumes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_server_keeps_the_local_limiter() {
    // SQLite (or PostgreSQL without [cluster], when the suite runs on it).
    let server = TestServer::start().await;
    assert!(!server.state.limits.is_shared());
    for _ in 0..8 {
        let resp = server.login_response("admin", "wrong-password").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = server.login_response("admin", &server.admin_password).await;
    expect_envelope(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Nothing was counted in the database.
    let now = server.state.clock.now_millis();
    let start = now - now.rem_euclid(60_000);
    for window in [start - 60_000, start] {
        let hits = server
            .state
            .store
            .rate_hits("login:127.0.0.1", window)
            .await
            .unwrap();
        assert_eq!(hits, 0);
    }
}

/// Two shared limiters on one schema, each with its own clock, as two instances have.
async fn two_limiters(test: &str) -> Option<(RateLimits, RateLimits, Clock)> {
    let Some(url) = test_database_url().await else {
        println!("skipped {test}: GURUCONNECT_TEST_DATABASE_URL is not set");
        return None;
    };
    let clock = Clock::default();
    let a = Store::connect(&url).await.unwrap();
    let b = Store::connect(&url).await.unwrap();
    Some((
        RateLimits::shared(a, clock.clone()),
        RateLimits::shared(b, clock.clone()),
        clock,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_factor_and_enroll_lockouts_are_shared() {
    let Some((a, b, _)) = two_limiters("second_factor_and_enroll_lockouts_are_shared").await else {
        return;
    };
    // Five second-factor failures for one user, over both instances, block it on both.
    for i in 0..5 {
        let limits = if i % 2 == 0 { &a } else { &b };
        limits.check_second_factor_user("u-1").await.unwrap();
        limits.record_second_factor_failure("u-1").await.unwrap();
    }
    assert!(a.check_second_factor_user("u-1").await.is_err());
    assert!(b.check_second_factor_user("u-1").await.is_err());
    a.check_second_factor_user("u-2").await.unwrap();

    // Enrollment: ten failures of one site code lock it; the address's own key too.
    let keys = ["ip:192.0.2.5".to_owned(), "site:acme".to_owned()];
    for i in 0..10 {
        let limits = if i % 2 == 0 { &a } else { &b };
        limits.check_enroll_lockout(&keys).await.unwrap();
        limits.record_enroll(&keys, false).await.unwrap();
    }
    assert!(a.check_enroll_lockout(&keys).await.is_err());
    assert!(
        b.check_enroll_lockout(&["site:acme".to_owned()])
            .await
            .is_err()
    );
    b.check_enroll_lockout(&["site:other".to_owned()])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_window_slides() {
    let Some((a, b, clock)) = two_limiters("the_shared_window_slides").await else {
        return;
    };
    let ip: IpAddr = "192.0.2.8".parse().unwrap();
    for i in 0..5 {
        let limits = if i % 2 == 0 { &a } else { &b };
        limits.check(Limit::ChangePassword, ip).await.unwrap();
    }
    assert!(b.check(Limit::ChangePassword, ip).await.is_err());
    // Two windows on, the five no longer count (one window on, the previous window's hits
    // still weigh by the share of it inside the last minute).
    clock.advance(Duration::from_secs(121));
    a.check(Limit::ChangePassword, ip).await.unwrap();
    // Pruning keeps the window that still counts.
    a.prune().await;
    for _ in 0..4 {
        b.check(Limit::ChangePassword, ip).await.unwrap();
    }
    assert!(a.check(Limit::ChangePassword, ip).await.is_err());
}
