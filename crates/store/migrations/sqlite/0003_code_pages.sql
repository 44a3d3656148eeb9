-- Support-code pages (SQLite). Keep logically identical to migrations/postgres/0003_code_pages.sql.
--
-- Codes are listed a page at a time, newest first, and pruned by expiry.
CREATE INDEX support_codes_tenant_created ON support_codes (tenant_id, created_at);
CREATE INDEX support_codes_expires_at ON support_codes (expires_at);
