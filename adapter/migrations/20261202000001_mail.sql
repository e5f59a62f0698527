-- Outgoing mail and e-mail one-time codes.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- The outbox: every mail is stored here before it is sent, so a mail
-- survives a restart and any replica can deliver it. `attempts` doubles as
-- the compare-and-swap counter of a claim; `next_attempt_at` is when the
-- next attempt is due; `sent_at` ends a delivered row, `failed_at` one that
-- ran out of attempts (`last_error` says why). `expires_at` hands the row to
-- the garbage collection (bodies carry codes: they are not kept for long).
CREATE TABLE mail_outbox (
    id              TEXT   NOT NULL PRIMARY KEY,
    recipient       TEXT   NOT NULL,
    subject         TEXT   NOT NULL,
    body            TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    sent_at         BIGINT,
    failed_at       BIGINT,
    last_error      TEXT,
    expires_at      BIGINT NOT NULL
);
CREATE INDEX mail_outbox_due ON mail_outbox (sent_at, failed_at, next_attempt_at);
CREATE INDEX mail_outbox_created_at ON mail_outbox (created_at);
CREATE INDEX mail_outbox_expires_at ON mail_outbox (expires_at);

-- One-time codes sent by e-mail: at most one live code per (purpose,
-- address), keyed by the hash of both; only the hash of the code is stored.
-- `attempts` counts wrong guesses, raised by one conditional UPDATE.
CREATE TABLE email_codes (
    key_hash   TEXT   NOT NULL PRIMARY KEY,
    code_hash  TEXT   NOT NULL,
    attempts   BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX email_codes_expires_at ON email_codes (expires_at);
