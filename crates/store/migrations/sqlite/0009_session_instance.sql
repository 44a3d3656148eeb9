-- Which server instance holds a live session (SQLite).
-- Keep logically identical to migrations/postgres/0009_session_instance.sql.
--
-- instance_id: the cluster instance whose relay holds the session (NULL on a single
-- server); the open sessions of an instance that died are ended by the others.
ALTER TABLE sessions ADD COLUMN instance_id TEXT;
CREATE INDEX sessions_instance_id ON sessions (instance_id);
