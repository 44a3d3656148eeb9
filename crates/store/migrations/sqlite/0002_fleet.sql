-- Fleet lifecycle (SQLite). Keep logically identical to migrations/postgres/0002_fleet.sql.
--
-- Machines gain a site, a pending reason, the uid a collided endpoint claimed, and
-- store-maintained search columns. Every `search_*` column is derived by the store (in
-- Rust, see src/search.rs) from the machine's other columns on each write that changes
-- them; NULL `search_text` means "not computed yet" and is back-filled by
-- `Store::connect` after migrating. Values inside a column are lowercased, control
-- characters become spaces, and multi-valued fields are joined with '\n', so a search
-- term (which never contains '\n') cannot match across two values.
--
-- Search uses a plain scan with LIKE on SQLite (measured: see the store crate docs);
-- no FTS table is kept.

ALTER TABLE machines ADD COLUMN site_id TEXT;
ALTER TABLE machines ADD COLUMN pending_reason TEXT;
-- Set on a collided (pending) machine whose own machine_uid stays NULL because another
-- live machine of the tenant owns that uid (the partial unique index is unchanged).
ALTER TABLE machines ADD COLUMN claimed_machine_uid TEXT;
-- Every attribute, for bare search terms.
ALTER TABLE machines ADD COLUMN search_text TEXT;
-- One column per field-scoped search term.
ALTER TABLE machines ADD COLUMN search_host TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN search_os TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN search_user TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN search_ip TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN search_site TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN search_tags TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN search_company TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN search_version TEXT NOT NULL DEFAULT '';

CREATE INDEX machines_tenant_site_id ON machines (tenant_id, site_id);
CREATE INDEX machines_tenant_status ON machines (tenant_id, status);

CREATE TABLE sites (
    id              TEXT PRIMARY KEY NOT NULL,
    tenant_id       TEXT NOT NULL,
    name            TEXT NOT NULL,
    code            TEXT NOT NULL,
    key_hash        TEXT NOT NULL,
    key_version     INTEGER NOT NULL,
    key_fingerprint TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    rotated_at      INTEGER
);
CREATE UNIQUE INDEX sites_tenant_code_ci ON sites (tenant_id, lower(code));
