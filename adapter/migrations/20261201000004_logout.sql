-- Logout (OpenID Connect RP-Initiated Logout 1.0, Back-Channel Logout 1.0).
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- Where the browser goes once the upstream has ended its session: the
-- adapter sends the upstream a random `state` and keeps, under its hash,
-- the relying party's post_logout_redirect_uri and state. Single use.
CREATE TABLE logout_states (
    state_hash TEXT   NOT NULL PRIMARY KEY,
    data       TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX logout_states_expires_at ON logout_states (expires_at);

-- The back-channel delivery queue: one signed logout token per client of an
-- ended session. `attempts` doubles as the compare-and-swap counter of a
-- claim; `next_attempt_at` is when the next attempt is due; `done_at` and
-- `outcome` ('delivered' or 'failed') end a row.
CREATE TABLE backchannel_logouts (
    id              TEXT   NOT NULL PRIMARY KEY,
    sid             TEXT   NOT NULL,
    client_id       TEXT   NOT NULL,
    uri             TEXT   NOT NULL,
    token           TEXT   NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    done_at         BIGINT,
    outcome         TEXT
);
CREATE INDEX backchannel_logouts_due ON backchannel_logouts (done_at, next_attempt_at);
CREATE INDEX backchannel_logouts_expires_at ON backchannel_logouts (expires_at);
