-- Per-account throttles of failed attempts (passwords, registrations,
-- e-mailed codes, TOTP codes), shared by every replica.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- `throttle_key` is the SHA-256 of the scope and the normalised account
-- name, so typed user names (sometimes a password typed into the wrong
-- field) are not kept. `failures` counts the failures since `window_start`;
-- `blocked_until` is when the next attempt is allowed again; the row is
-- garbage once `expires_at` passed (end of the window or of the block).
CREATE TABLE throttles (
    throttle_key  TEXT   NOT NULL PRIMARY KEY,
    failures      BIGINT NOT NULL,
    window_start  BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX throttles_expires_at ON throttles (expires_at);
