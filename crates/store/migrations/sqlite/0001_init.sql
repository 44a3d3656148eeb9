-- GuruConnect initial schema (SQLite). Keep logically identical to migrations/postgres.
-- Timestamps are Unix milliseconds; booleans are 0/1; JSON is TEXT.

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL,
    username      TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX users_tenant_username_ci ON users (tenant_id, lower(username));

CREATE TABLE issued_tokens (
    jti        TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('login', 'viewer')),
    parent_jti TEXT,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX issued_tokens_user_id ON issued_tokens (user_id);
CREATE INDEX issued_tokens_parent_jti ON issued_tokens (parent_jti);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    user_id    TEXT,
    username   TEXT,
    agent_id   TEXT,
    session_id TEXT,
    client_ip  TEXT,
    details    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_tenant_id_id ON events (tenant_id, id);
CREATE INDEX events_event_type ON events (event_type);
CREATE INDEX events_agent_id ON events (agent_id);
CREATE INDEX events_created_at ON events (created_at);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE machines (
    agent_id      TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL,
    machine_uid   TEXT,
    hostname      TEXT NOT NULL,
    os            TEXT NOT NULL,
    os_version    TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    company       TEXT,
    site          TEXT,
    department    TEXT,
    device_type   TEXT,
    tags          TEXT NOT NULL DEFAULT '[]',
    inventory     TEXT NOT NULL DEFAULT '{}',
    external_ip   TEXT,
    status        TEXT NOT NULL DEFAULT 'active',
    last_seen     INTEGER,
    created_at    INTEGER NOT NULL,
    deleted_at    INTEGER
);
CREATE UNIQUE INDEX machines_tenant_uid_live ON machines (tenant_id, machine_uid)
    WHERE deleted_at IS NULL AND machine_uid IS NOT NULL;
CREATE INDEX machines_tenant_hostname ON machines (tenant_id, hostname);

CREATE TABLE agent_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    agent_id     TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    label        TEXT,
    created_by   TEXT,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
CREATE INDEX agent_keys_agent_id ON agent_keys (agent_id);

CREATE TABLE support_codes (
    code            TEXT PRIMARY KEY NOT NULL,
    tenant_id       TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_by_name TEXT NOT NULL,
    note            TEXT,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    consumed_at     INTEGER,
    session_id      TEXT
);
CREATE INDEX support_codes_tenant_status ON support_codes (tenant_id, status);

CREATE TABLE sessions (
    id         TEXT PRIMARY KEY NOT NULL,
    tenant_id  TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    code       TEXT,
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    ended_at   INTEGER,
    end_reason TEXT,
    deleted_at INTEGER
);
CREATE INDEX sessions_agent_id ON sessions (agent_id);
CREATE INDEX sessions_status ON sessions (status);
