-- Signed releases and per-machine update state (PostgreSQL).
-- Keep logically identical to migrations/sqlite/0006_releases.sql.
--
-- A release is its signed manifest, stored byte for byte with its signature (agents verify
-- both again); channel, notes and the rollout percentage are copied out for queries.
-- Artifacts live as files under the data directory, not in the database.
CREATE TABLE releases (
    version         TEXT PRIMARY KEY NOT NULL,
    channel         TEXT NOT NULL,
    manifest        TEXT NOT NULL,
    signature       TEXT NOT NULL,
    notes           TEXT NOT NULL,
    rollout_percent BIGINT NOT NULL DEFAULT 100,
    created_by      TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);

-- update_channel: stable or beta; NULL inherits (machine -> site -> stable).
-- update_status: the agent's last reported update step, as JSON.
ALTER TABLE machines ADD COLUMN update_channel TEXT;
ALTER TABLE machines ADD COLUMN update_status TEXT;
ALTER TABLE sites ADD COLUMN update_channel TEXT;
