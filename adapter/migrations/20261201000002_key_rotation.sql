-- Signing-key rotation (RFC 7517 §5, OIDC Core §10.1.1): the schedule lives
-- in the database so that every replica agrees on it.
-- `activates_at`: from then on the key may sign; until then it is only
-- published. Keys that exist already have signed, so they are active since 0.
-- `retires_at`: from then on the key is no longer published; set once its
-- successor's activation is known, to that activation plus the longest
-- lifetime of a token it may have signed. NULL: not scheduled.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
ALTER TABLE signing_keys ADD COLUMN activates_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE signing_keys ADD COLUMN retires_at BIGINT;
