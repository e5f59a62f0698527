-- Sessions per device: the session row knows the browser it lives in.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- `device_hash`: SHA-256 of the long-lived device cookie (a new login on a
-- device replaces the user's earlier session there; other devices keep
-- theirs). `device_label`: a short "Browser on OS" derived from the
-- User-Agent (never the raw header). `ip`: the client address at login.
-- `last_seen_at`: when the session was last used, written at most once a
-- minute. Sessions from before this migration have NULLs.
ALTER TABLE sessions ADD COLUMN device_hash TEXT;
ALTER TABLE sessions ADD COLUMN device_label TEXT;
ALTER TABLE sessions ADD COLUMN ip TEXT;
ALTER TABLE sessions ADD COLUMN last_seen_at BIGINT;
