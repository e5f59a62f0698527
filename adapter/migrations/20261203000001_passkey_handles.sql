-- Usernameless passkey login (WebAuthn L2 §5.4.3 `user.id`, the user
-- handle): the authenticator names the account only by the opaque handle
-- given at registration, so it is indexed here. One handle per account;
-- a handle belongs to one account. Portable SQL (SQLite and PostgreSQL).
CREATE TABLE passkey_handles (
    handle TEXT PRIMARY KEY,
    account_id TEXT NOT NULL UNIQUE
);
