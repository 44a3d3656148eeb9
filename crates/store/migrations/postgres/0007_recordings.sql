-- Session recordings (PostgreSQL).
-- Keep logically identical to migrations/sqlite/0007_recordings.sql.
--
-- One row per recorded session; the frames live in a file under the recordings directory.
-- status: recording, complete or failed (error says why; the file stays playable up to
-- where it stops). sha256 is the file's, written when it closes.
CREATE TABLE recordings (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    bytes       BIGINT NOT NULL DEFAULT 0,
    duration_ms BIGINT NOT NULL DEFAULT 0,
    sha256      TEXT,
    error       TEXT
);
CREATE INDEX recordings_started ON recordings (tenant_id, started_at);
CREATE INDEX recordings_agent ON recordings (agent_id, started_at);
