-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Times are unix seconds; ids of secrets are SHA-256 hashes.
CREATE TABLE artifacts (
    kind        TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    expires_at  BIGINT NOT NULL,
    consumed_at BIGINT,
    PRIMARY KEY (kind, id)
);
CREATE INDEX artifacts_expires_at ON artifacts (expires_at);

-- `generation` is unique: replicas starting together race to insert
-- generation 0 and exactly one key wins, so all of them sign alike.
CREATE TABLE signing_keys (
    kid         TEXT   NOT NULL PRIMARY KEY,
    generation  BIGINT NOT NULL UNIQUE,
    alg         TEXT   NOT NULL,
    private_pem TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);
