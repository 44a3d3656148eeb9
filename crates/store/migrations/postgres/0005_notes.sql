-- Machine notes and the customer's own name on a support code (PostgreSQL).
-- Keep logically identical to migrations/sqlite/0005_notes.sql.
--
-- notes: free text a technician keeps about a machine (not searched).
-- customer_name: what the customer typed on the join page before the session.
ALTER TABLE machines ADD COLUMN notes TEXT;
ALTER TABLE support_codes ADD COLUMN customer_name TEXT;
