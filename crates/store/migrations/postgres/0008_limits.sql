-- Rate limits shared by the instances of a cluster (PostgreSQL).
-- Keep logically identical to migrations/sqlite/0008_limits.sql.
--
-- rate_hits: accepted hits per key (limit name and client IP, e.g. 'login:192.0.2.1')
-- in the fixed window that starts at window_start (Unix ms); the server weighs the
-- previous window into a sliding estimate. Rows of old windows are pruned.
CREATE TABLE rate_hits (
    key          TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    hits         BIGINT NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX rate_hits_window ON rate_hits (window_start);

-- failure_locks: consecutive failures per key (e.g. 'code:192.0.2.1') and, once they
-- reach the threshold, until when the key is locked out. A success deletes the row.
CREATE TABLE failure_locks (
    key          TEXT PRIMARY KEY NOT NULL,
    failures     BIGINT NOT NULL,
    locked_until BIGINT,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX failure_locks_updated ON failure_locks (updated_at);
