-- Typed tables replace the generic `artifacts` table: every record that is
-- looked up by more than its id gets its own columns and indexes, and every
-- single-use record is consumed by one conditional UPDATE.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL. Times are unix
-- seconds; ids of secrets are SHA-256 hashes; `data` is a versioned JSON
-- payload (see `store::codec`).

-- Short-lived data only: logins in flight at the upgrade must restart.
DROP TABLE artifacts;

-- A login in progress (the login-flow engine's `Login`). `version` is the
-- compare-and-swap counter; `state_hash` finds the login from an upstream
-- callback; `finished_at` makes it single-use.
CREATE TABLE logins (
    id_hash     TEXT   NOT NULL PRIMARY KEY,
    state_hash  TEXT   UNIQUE,
    version     BIGINT NOT NULL,
    data        TEXT   NOT NULL,
    expires_at  BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX logins_expires_at ON logins (expires_at);

-- Authorization codes. `grant_id` (the jti of the access token the code
-- issues) is written by the same statement that redeems the code, so a
-- replay always finds what to revoke (RFC 6749 §4.1.2).
CREATE TABLE codes (
    code_hash   TEXT   NOT NULL PRIMARY KEY,
    data        TEXT   NOT NULL,
    expires_at  BIGINT NOT NULL,
    redeemed_at BIGINT,
    grant_id    TEXT
);
CREATE INDEX codes_expires_at ON codes (expires_at);

-- Browser sessions: by cookie hash, by `sid`, by user.
CREATE TABLE sessions (
    id_hash      TEXT   NOT NULL PRIMARY KEY,
    sid          TEXT   NOT NULL UNIQUE,
    connector_id TEXT   NOT NULL,
    subject      TEXT   NOT NULL,
    auth_time    BIGINT NOT NULL,
    data         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (connector_id, subject);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- Which clients a session has logged in to (back-channel logout fan-out).
CREATE TABLE session_clients (
    sid        TEXT   NOT NULL,
    client_id  TEXT   NOT NULL,
    first_at   BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (sid, client_id)
);
CREATE INDEX session_clients_expires_at ON session_clients (expires_at);

-- Access tokens revoked before their expiry, by `jti`.
CREATE TABLE revoked_tokens (
    jti        TEXT   NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- Refresh tokens, hashed, grouped in rotation families (RFC 9700 §4.14).
CREATE TABLE refresh_tokens (
    token_hash TEXT   NOT NULL PRIMARY KEY,
    family_id  TEXT   NOT NULL,
    client_id  TEXT   NOT NULL,
    sid        TEXT,
    data       TEXT   NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    revoked_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_sid ON refresh_tokens (sid);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);

-- Local accounts, found by username and by e-mail.
CREATE TABLE accounts (
    id         TEXT   NOT NULL PRIMARY KEY,
    username   TEXT   NOT NULL UNIQUE,
    email      TEXT   UNIQUE,
    version    BIGINT NOT NULL,
    data       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
