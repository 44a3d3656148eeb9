-- Second factor at sign-in (SQLite). Keep logically identical to migrations/postgres/0004_totp.sql.
--
-- One TOTP secret per user: pending (enabled = 0) from setup until a code confirms it.
-- last_step is the newest 30-second step accepted, so a code is never accepted twice.
CREATE TABLE user_totp (
    user_id    TEXT PRIMARY KEY NOT NULL,
    secret     TEXT NOT NULL,
    enabled    INTEGER NOT NULL DEFAULT 0,
    last_step  INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    enabled_at INTEGER
);

-- Single-use recovery codes, stored as SHA-256 of a 128-bit random code.
CREATE TABLE totp_recovery_codes (
    user_id   TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    used_at   INTEGER,
    PRIMARY KEY (user_id, code_hash)
);
