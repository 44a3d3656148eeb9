-- GuruConnect initial schema (PostgreSQL). Keep logically identical to migrations/sqlite.
-- Timestamps are Unix milliseconds; booleans are 0/1; JSON is TEXT.
-- Text columns used for ordering are COLLATE "C" so sort order matches SQLite (BINARY).

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL,
    username      TEXT COLLATE "C" NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    disabled      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_tenant_username_ci ON users (tenant_id, lower(username));

CREATE TABLE issued_tokens (
    jti        TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('login', 'viewer')),
    parent_jti TEXT,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX issued_tokens_user_id ON issued_tokens (user_id);
CREATE INDEX issued_tokens_parent_jti ON issued_tokens (parent_jti);

CREATE TABLE events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
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
    agent_id      TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL,
    machine_uid   TEXT,
    hostname      TEXT COLLATE "C" NOT NULL,
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
    last_seen     BIGINT,
    created_at    BIGINT NOT NULL,
    deleted_at    BIGINT
);
CREATE UNIQUE INDEX machines_tenant_uid_live ON machines (tenant_id, machine_uid)
    WHERE deleted_at IS NULL AND machine_uid IS NOT NULL;
CREATE INDEX machines_tenant_hostname ON machines (tenant_id, hostname);

CREATE TABLE agent_keys (
    id           TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    agent_id     TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    label        TEXT,
    created_by   TEXT,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX agent_keys_agent_id ON agent_keys (agent_id);

CREATE TABLE support_codes (
    code            TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id       TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_by_name TEXT NOT NULL,
    note            TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    consumed_at     BIGINT,
    session_id      TEXT
);
CREATE INDEX support_codes_tenant_status ON support_codes (tenant_id, status);

CREATE TABLE sessions (
    id         TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id  TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    code       TEXT,
    status     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    ended_at   BIGINT,
    end_reason TEXT,
    deleted_at BIGINT
);
CREATE INDEX sessions_agent_id ON sessions (agent_id);
CREATE INDEX sessions_status ON sessions (status);
