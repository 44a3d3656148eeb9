-- Fleet lifecycle (PostgreSQL). Keep logically identical to migrations/sqlite/0002_fleet.sql.
--
-- Machines gain a site, a pending reason, the uid a collided endpoint claimed, and
-- store-maintained search columns. Every `search_*` column is derived by the store (in
-- Rust, see src/search.rs) from the machine's other columns on each write that changes
-- them; NULL `search_text` means "not computed yet" and is back-filled by
-- `Store::connect` after migrating. Values inside a column are lowercased, control
-- characters become spaces, and multi-valued fields are joined with '\n', so a search
-- term (which never contains '\n') cannot match across two values.
--
-- Bare search terms use a GIN trigram index on search_text. pg_trgm is database-wide
-- while tests use one schema per test, so it is installed into `public` and its operator
-- class is referenced as `public.gin_trgm_ops` (works whatever the search_path is).
-- The advisory lock serialises concurrent first installs (several schemas or instances
-- migrating at once), which would otherwise race on pg_extension's unique index.

SELECT pg_advisory_xact_lock(7318255309173621331);
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

ALTER TABLE machines
    ADD COLUMN site_id TEXT,
    ADD COLUMN pending_reason TEXT,
    -- Set on a collided (pending) machine whose own machine_uid stays NULL because
    -- another live machine of the tenant owns that uid (the unique index is unchanged).
    ADD COLUMN claimed_machine_uid TEXT,
    -- Every attribute, for bare search terms.
    ADD COLUMN search_text TEXT,
    -- One column per field-scoped search term.
    ADD COLUMN search_host TEXT NOT NULL DEFAULT '',
    ADD COLUMN search_os TEXT NOT NULL DEFAULT '',
    ADD COLUMN search_user TEXT NOT NULL DEFAULT '',
    ADD COLUMN search_ip TEXT NOT NULL DEFAULT '',
    ADD COLUMN search_site TEXT NOT NULL DEFAULT '',
    ADD COLUMN search_tags TEXT NOT NULL DEFAULT '',
    ADD COLUMN search_company TEXT NOT NULL DEFAULT '',
    ADD COLUMN search_version TEXT NOT NULL DEFAULT '';

CREATE INDEX machines_tenant_site_id ON machines (tenant_id, site_id);
CREATE INDEX machines_tenant_status ON machines (tenant_id, status);
CREATE INDEX machines_search_trgm ON machines USING gin (search_text public.gin_trgm_ops);

CREATE TABLE sites (
    id              TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id       TEXT NOT NULL,
    name            TEXT COLLATE "C" NOT NULL,
    code            TEXT NOT NULL,
    key_hash        TEXT NOT NULL,
    key_version     BIGINT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    rotated_at      BIGINT
);
CREATE UNIQUE INDEX sites_tenant_code_ci ON sites (tenant_id, lower(code));
