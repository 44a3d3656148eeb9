//! The embedded web console is served at `/` with a client-route fallback, while unknown
//! API paths still answer the error envelope.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestServer, expect_envelope};
use reqwest::StatusCode;

#[tokio::test]
async fn console_is_served_with_spa_fallback() {
    let server = TestServer::start().await;
    let client = server.client();
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dashboard/dist/index.html")
        .exists();
    for path in ["/", "/machines", "/view/some-session"] {
        let resp = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let html = resp.text().await.unwrap();
        assert!(html.contains("GuruConnect"), "{path}");
        if built {
            assert!(
                html.contains("type=\"module\""),
                "{path} serves the built console"
            );
        }
    }
    let resp = client
        .get(server.url("/api/definitely-not-here"))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, StatusCode::NOT_FOUND, "not_found").await;
}
