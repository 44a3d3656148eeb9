//! GuruConnect persistence: one [`Store`] over an embedded SQLite file or a PostgreSQL
//! server.
//!
//! There is a single implementation written against sqlx's `Any` driver, so the two
//! backends run the very same SQL and cannot drift apart. Each backend has its own
//! embedded migrations (`migrations/sqlite`, `migrations/postgres`) describing the same
//! logical schema; [`Store::connect`] picks them by URL scheme and runs them.
//!
//! Conventions shared by every query:
//! - placeholders are written `$1, $2, …` (sqlx-sqlite maps `$N` to argument N);
//! - only `i64`, `String` and `Option` of those cross the driver: booleans are `0/1`,
//!   JSON is text, timestamps are Unix milliseconds passed in by the caller (the store
//!   does not read the clock).
//!
//! Layout: this file holds [`Store`], connecting and [`StoreError`]; [`model`] holds the
//! records; every other module is one `impl Store` block per table
//! (`users`, `totp`, `tokens`, `events`, `settings`, `machines`, `keys`, `codes`, `sessions`,
//! `sites`, `limits`: the rate limits a cluster shares); `search` derives the machines'
//! search columns and parses fleet queries; [`testing`] helps tests get an isolated
//! PostgreSQL schema.
//!
//! Fleet search (see [`MachineSearch`]): every write that changes a machine's
//! searchable attributes recomputes its `search_*` columns in the same transaction.
//! PostgreSQL answers bare terms through a GIN trigram index (`pg_trgm`) on
//! `search_text`; SQLite scans with `LIKE` and keeps no FTS table, because the scan
//! already meets the target (p95 ≤ 50 ms at 10,000 machines): `examples/search_bench.rs`
//! measured (3 runs) SQLite p50 10 ms / p95 15–17 ms / max 23–24 ms and PostgreSQL 15
//! p50 5–10 ms / p95 17–19 ms / max 23–27 ms over 200 mixed queries (limit 50) on
//! 2 shared vCPUs. An FTS5
//! trigram table would only help bare terms of 3+ characters (not field terms, short
//! terms or the page count) and would need triggers to stay in sync.
#![forbid(unsafe_code)]

pub mod model;
pub mod testing;

mod codes;
mod events;
mod keys;
mod limits;
mod machines;
mod recordings;
mod releases;
mod search;
mod sessions;
mod settings;
mod sites;
mod tokens;
mod totp;
mod users;

pub use events::MAX_EVENT_PAGE;
pub use model::*;

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

/// Errors returned by every store operation. Display strings are fixed words; the
/// driver's details are only reachable through [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The requested row does not exist (or is soft-deleted).
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was violated, e.g. `"username taken"`.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The database cannot be reached right now (pool timeout, I/O, connection lost).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused a value the caller supplied (PostgreSQL's data exceptions,
    /// SQLSTATE class 22, e.g. a NUL byte in text): the request's fault, not the server's.
    #[error("invalid value")]
    Invalid(#[source] sqlx::Error),
    /// Any other database failure.
    #[error("database error")]
    Internal(#[source] sqlx::Error),
    /// The database's disk is full (SQLite `SQLITE_FULL`, PostgreSQL `53100`): nothing
    /// was written; writes succeed again once space is freed.
    #[error("storage full")]
    StorageFull(#[source] sqlx::Error),
    /// Running the embedded migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict("already exists")
            }
            sqlx::Error::Database(db) => match classify_db_error(db.as_ref()) {
                DbErrorKind::Transient => StoreError::Unavailable(e),
                DbErrorKind::InvalidValue => StoreError::Invalid(e),
                DbErrorKind::StorageFull => StoreError::StorageFull(e),
                DbErrorKind::Other => StoreError::Internal(e),
            },
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e),
            _ => StoreError::Internal(e),
        }
    }
}

/// What a database error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DbErrorKind {
    /// Try again later.
    Transient,
    /// The caller sent a value the database refuses.
    InvalidValue,
    /// No space left for the database.
    StorageFull,
    /// Anything else.
    Other,
}

/// Classifies by the backend that raised the error: the two speak different code
/// languages, and a PostgreSQL SQLSTATE such as `22021` is also a valid-looking SQLite
/// number (`22021 & 0xff` = `SQLITE_BUSY`).
fn classify_db_error(db: &dyn sqlx::error::DatabaseError) -> DbErrorKind {
    let code = db.code();
    let code = code.as_deref();
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        classify_sqlstate(code)
    } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        classify_sqlite_code(code)
    } else {
        DbErrorKind::Other
    }
}

/// PostgreSQL: connection exceptions (class 08) and shutdown / starting up
/// (57P01..57P03) are transient; data exceptions (class 22: bad encoding, NUL byte,
/// value out of range) are the caller's.
fn classify_sqlstate(code: Option<&str>) -> DbErrorKind {
    match code {
        Some(c) if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03") => {
            DbErrorKind::Transient
        }
        Some(c) if c.starts_with("22") => DbErrorKind::InvalidValue,
        Some("53100") => DbErrorKind::StorageFull,
        _ => DbErrorKind::Other,
    }
}

/// SQLite reports its (extended) result code as a decimal number: `BUSY` and `LOCKED`
/// (primary codes 5 and 6) are transient, `FULL` (13) is a full disk.
fn classify_sqlite_code(code: Option<&str>) -> DbErrorKind {
    match code.and_then(|c| c.parse::<i64>().ok()) {
        Some(n) if matches!(n & 0xff, 5 | 6) => DbErrorKind::Transient,
        Some(n) if n & 0xff == 13 => DbErrorKind::StorageFull,
        _ => DbErrorKind::Other,
    }
}

impl StoreError {
    /// Turns a unique violation into `Conflict(what)`; other errors pass through.
    pub(crate) fn conflict_as(self, what: &'static str) -> Self {
        match self {
            StoreError::Conflict(_) => StoreError::Conflict(what),
            other => other,
        }
    }
}

/// Maps an `Err` from sqlx, naming the conflict if it is a unique violation.
pub(crate) fn conflict(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::from(e).conflict_as(what)
}

/// Wraps a value-decoding problem (bad JSON in a TEXT column) as an internal error.
pub(crate) fn decode_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Internal(sqlx::Error::Decode(Box::new(e)))
}

/// A stored state name no enum variant has (written by a newer binary, or by hand).
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {value:?}")]
struct UnknownState {
    what: &'static str,
    value: String,
}

/// Reads the text column `column` of `row` as a state enum via its `parse`; an unknown
/// name is an internal (decode) error, never a panic.
pub(crate) fn state_column<T>(
    row: &sqlx::any::AnyRow,
    column: &'static str,
    what: &'static str,
    parse: fn(&str) -> Option<T>,
) -> StoreResult<T> {
    use sqlx::Row;
    let value: String = row.try_get(column)?;
    parse(&value).ok_or_else(|| decode_err(UnknownState { what, value }))
}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Handle to the database; cheap to clone (clones share one pool).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

static INSTALL_DRIVERS: Once = Once::new();

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a caller waits for a pooled connection before getting
/// [`StoreError::Unavailable`]; also bounds [`Store::connect`] when PostgreSQL is down.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// File name used by [`Store::open_sqlite_in`].
pub const SQLITE_FILE_NAME: &str = "guruconnect.db";

impl Store {
    /// Connects to `url` and runs the backend's embedded migrations.
    ///
    /// `sqlite:…` (e.g. `sqlite:///abs/path/guruconnect.db?mode=rwc`) opens an embedded
    /// database in WAL mode with `busy_timeout=5000` and foreign keys on;
    /// `postgres:` / `postgresql:` opens a pool whose acquire timeout is 3 s, so an
    /// unreachable server fails this call (and later calls) quickly instead of hanging.
    pub async fn connect(url: &str) -> StoreResult<Store> {
        INSTALL_DRIVERS.call_once(sqlx::any::install_default_drivers);
        let scheme = url.split(':').next().unwrap_or_default();
        let backend = match scheme {
            "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            _ => {
                return Err(StoreError::Internal(sqlx::Error::Configuration(
                    "unsupported database URL scheme (expected sqlite: or postgres:)".into(),
                )));
            }
        };
        let pool = match backend {
            Backend::Sqlite => {
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_release(|conn, _meta| Box::pin(release_outside_transaction(conn)))
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute("PRAGMA busy_timeout=5000").await?;
                            conn.execute("PRAGMA foreign_keys=ON").await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?;
                sqlx::query("PRAGMA journal_mode=WAL")
                    .execute(&pool)
                    .await?;
                pool
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                    .connect(url)
                    .await?
            }
        };
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator.run(&pool).await?;
        let store = Store { pool, backend };
        let backfilled = store.backfill_machine_search().await?;
        if backfilled > 0 {
            tracing::info!(machines = backfilled, "computed machine search columns");
        }
        tracing::debug!(?backend, "store connected and migrated");
        Ok(store)
    }

    /// Creates `dir` if needed and opens (creating if missing) `dir/guruconnect.db`:
    /// the server's embedded default.
    pub async fn open_sqlite_in(dir: &Path) -> StoreResult<Store> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Internal(sqlx::Error::Io(e)))?;
        let path = dir.join(SQLITE_FILE_NAME);
        let url = format!("sqlite://{}?mode=rwc", percent_encode_path(&path));
        Store::connect(&url).await
    }

    /// Which backend this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Round-trips a trivial query; `Unavailable` when the database cannot be reached.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The underlying pool (crate-internal).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// Keeps a connection returned to the SQLite pool only if it is outside any transaction.
///
/// sqlx counts transactions per connection and only lowers the count when `COMMIT` or
/// `ROLLBACK` succeeds. On a full disk SQLite may roll a transaction back by itself, so
/// the `ROLLBACK` queued by the dropped transaction fails and the count stays up. The
/// connection's next `begin()` then issues `SAVEPOINT` instead of `BEGIN`, and a failing
/// step `ROLLBACK TO SAVEPOINT`, which leaves a transaction open for good: later writes on
/// it are acknowledged but never committed, and its write lock makes every other
/// connection wait for `BUSY`. Such a connection is closed instead of pooled.
async fn release_outside_transaction(conn: &mut sqlx::AnyConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    // Runs the queued rollback first: commands are processed in order.
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!("closing a database connection left inside a transaction");
        return Ok(false);
    }
    Ok(true)
}

/// Percent-encodes a filesystem path for a `sqlite://` URL (sqlx decodes it again), so
/// spaces, `?` and `#` in directory names survive.
fn percent_encode_path(path: &Path) -> String {
    let s = path.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encodes_odd_characters() {
        assert_eq!(
            percent_encode_path(Path::new("/a b/c?d#e.db")),
            "/a%20b/c%3Fd%23e.db"
        );
    }

    #[test]
    fn postgres_codes_are_read_as_sqlstates() {
        assert_eq!(classify_sqlstate(Some("08006")), DbErrorKind::Transient);
        assert_eq!(classify_sqlstate(Some("57P01")), DbErrorKind::Transient);
        // NUL byte in text: a bad value, not SQLite's BUSY (22021 & 0xff == 5).
        assert_eq!(classify_sqlstate(Some("22021")), DbErrorKind::InvalidValue);
        assert_eq!(classify_sqlstate(Some("22P05")), DbErrorKind::InvalidValue);
        assert_eq!(classify_sqlstate(Some("23505")), DbErrorKind::Other);
        assert_eq!(classify_sqlstate(Some("53100")), DbErrorKind::StorageFull);
        assert_eq!(classify_sqlstate(Some("5")), DbErrorKind::Other);
        assert_eq!(classify_sqlstate(None), DbErrorKind::Other);
    }

    #[test]
    fn sqlite_codes_are_read_as_result_codes() {
        assert_eq!(classify_sqlite_code(Some("5")), DbErrorKind::Transient);
        assert_eq!(classify_sqlite_code(Some("517")), DbErrorKind::Transient);
        assert_eq!(classify_sqlite_code(Some("6")), DbErrorKind::Transient);
        assert_eq!(classify_sqlite_code(Some("13")), DbErrorKind::StorageFull);
        assert_eq!(classify_sqlite_code(Some("2067")), DbErrorKind::Other);
        assert_eq!(classify_sqlite_code(Some("08006")), DbErrorKind::Other);
        assert_eq!(classify_sqlite_code(None), DbErrorKind::Other);
    }
}
