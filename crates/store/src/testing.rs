//! Test support (not for production use): isolated PostgreSQL schemas for tests.
//!
//! Tests that want to run against PostgreSQL read `GURUCONNECT_TEST_DATABASE_URL`
//! (e.g. `postgres://postgres@127.0.0.1:5432/test`) through [`test_database_url`],
//! which creates a fresh schema per call so parallel tests never collide.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Name of the environment variable that enables PostgreSQL tests.
pub const TEST_DATABASE_URL_VAR: &str = "GURUCONNECT_TEST_DATABASE_URL";

/// Test support: if `GURUCONNECT_TEST_DATABASE_URL` is set, creates a new empty schema
/// `t_<uuid>` in that database and returns a URL whose connections use it as their
/// `search_path` (so [`crate::Store::connect`] migrates into it). `None` when the
/// variable is unset or empty.
///
/// # Panics
/// When the variable is set but the database cannot be reached or the schema cannot be
/// created: a misconfigured test database must fail tests, not skip them.
pub async fn test_database_url() -> Option<String> {
    let base = std::env::var(TEST_DATABASE_URL_VAR).ok()?;
    if base.trim().is_empty() {
        return None;
    }
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("{TEST_DATABASE_URL_VAR}: cannot connect: {e}"));
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{TEST_DATABASE_URL_VAR}: cannot create schema: {e}"));
    // Best effort; the schema is already there.
    let _ = conn.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}
