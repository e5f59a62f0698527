//! Persistence: the [`Store`] trait, its records, and the SQL implementation.
//!
//! Everything a flow needs between two HTTP requests lives here, so a login
//! survives a restart and (with PostgreSQL) can finish on another replica:
//! logins in progress, authorization codes, browser sessions and the clients
//! each session logged in to, revoked access tokens, refresh-token families,
//! local accounts, signing keys, the mail outbox and e-mail one-time codes.
//!
//! Rules every implementation keeps (the [`conformance`] suite checks them on
//! SQLite and PostgreSQL alike):
//! - single-use records (codes, logins, refresh tokens) are consumed by one
//!   conditional `UPDATE … WHERE <unused> … RETURNING`, so two concurrent
//!   consumers get exactly one winner (RFC 6749 §4.1.2, RFC 9700 §4.14);
//! - an insert never overwrites: a consumed record can never be resurrected;
//! - records that change (logins, accounts) carry a `version` and are updated
//!   with compare-and-swap on it;
//! - ids of secrets (codes, session ids, login ids, states, refresh tokens)
//!   are SHA-256 hashes made by the callers ([`crate::secret::hash`]);
//! - payloads are versioned JSON ([`codec`]), so two releases can share the
//!   database during a rolling upgrade.
//!
//! Layout: [`sql`] holds [`SqlStore`] (SQLite, the embedded default, and
//! PostgreSQL, through sqlx's `Any` driver with portable SQL).

pub mod codec;
mod reader;
mod sql;
mod writer;

#[cfg(test)]
pub(crate) mod conformance;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use sql::SqlStore;

/// Failure of the storage backend. Never carries secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("stored record has payload version {0}, newer than this release reads")]
    NewerPayload(u32),
    #[error("invalid database url: {0}")]
    Url(String),
    /// The SQLite connection of the grant paths (see [`Store::rotate_refresh`]).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The SQLite grant writer could not run or commit a grant's
    /// transaction (see `store::writer`).
    #[error("database error: {0}")]
    Writer(String),
}

/// How a lookup of a single-use record came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    Found(T),
    /// Exists, but was finished or consumed before (a replay).
    Finished,
    /// Exists, unfinished, past its expiry.
    Expired,
    /// Never existed, or garbage-collected.
    Missing,
}

/// A login in progress as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRow {
    pub id_hash: String,
    /// Compare-and-swap counter: every update increments it.
    pub version: i64,
    /// The encoded login (see [`codec`]).
    pub data: String,
    pub expires_at: i64,
}

/// Outcome of redeeming an authorization code
/// ([`Store::redeem_code_and_issue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// Redeemed now, by this caller; `grant_id` was recorded with it.
    /// `refresh_issued`: the first refresh token of the grant was inserted
    /// in the same transaction.
    Fresh {
        data: String,
        expires_at: i64,
        refresh_issued: bool,
    },
    /// Redeemed before: the grant that redemption recorded.
    Replayed {
        grant_id: Option<String>,
    },
    Missing,
}

/// A browser session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Hash of the cookie value.
    pub id_hash: String,
    /// The session id published in tokens (`sid`, OIDC Front/Back-Channel
    /// Logout); random, unrelated to the cookie.
    pub sid: String,
    pub connector_id: String,
    pub subject: String,
    pub auth_time: i64,
    pub data: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// Hash of the browser's device cookie (`None`: a session from before
    /// sessions were kept per device).
    pub device_hash: Option<String>,
    /// A short "Browser on OS" label, never the raw User-Agent.
    pub device_label: Option<String>,
    /// The client's IP address at login.
    pub ip: Option<String>,
    /// When the session was last used (written at most once a minute).
    pub last_seen_at: Option<i64>,
}

/// A refresh token as stored (hash only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRow {
    pub token_hash: String,
    /// All tokens rotated from one grant share the family id.
    pub family_id: String,
    pub client_id: String,
    pub sid: Option<String>,
    pub data: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Outcome of using a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// Used now, by this caller; it is no longer valid.
    Fresh(RefreshRow),
    /// Used before: a rotated token came back (RFC 9700 §4.14.2).
    Reused {
        family_id: String,
    },
    Revoked,
    Missing,
}

/// A local account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub version: i64,
    pub data: String,
    pub created_at: i64,
}

/// A signing key as stored. `private_pem` holds the key as the key manager
/// encodes it (never logged).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub kid: String,
    /// Unique: at most one key per generation (0 is the first key).
    pub generation: i64,
    pub alg: String,
    pub private_pem: String,
    pub created_at: i64,
    /// From then on the key may sign; before, it is only published.
    pub activates_at: i64,
    /// From then on the key is no longer published (`None`: not scheduled).
    pub retires_at: Option<i64>,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a log line.
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("generation", &self.generation)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .field("activates_at", &self.activates_at)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

/// A refresh token as stored, with its state (for checks made before the
/// token is consumed, and for introspection, RFC 7662 §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshStatus {
    pub row: RefreshRow,
    /// When it was used (rotated); `None` while usable.
    pub used_at: Option<i64>,
    /// When it (its family, its session) was revoked.
    pub revoked_at: Option<i64>,
}

/// The storage seam. See the module documentation for the rules.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap liveness query for `/healthz/ready`.
    async fn ping(&self) -> Result<(), StoreError>;

    // ---- logins in progress ------------------------------------------------

    /// Inserts a new login (version 0), with the hash of the upstream
    /// `state` it waits for when it goes to an upstream straight away.
    /// Fails if the id (or the state) exists.
    async fn insert_login(
        &self,
        id_hash: &str,
        data: &str,
        expires_at: i64,
        state_hash: Option<&str>,
    ) -> Result<(), StoreError>;

    /// The login with this id.
    async fn login(&self, id_hash: &str, now: i64) -> Result<Lookup<LoginRow>, StoreError>;

    /// The login waiting for the upstream callback carrying this state.
    async fn login_by_state(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Lookup<LoginRow>, StoreError>;

    /// Compare-and-swap: replaces the payload of an unfinished, unexpired
    /// login still at `version`, and its callback state when `state_hash` is
    /// given (`None` keeps it, so a finished login still answers a replayed
    /// callback); `finish` makes it single-use. False when another request
    /// got there first.
    async fn update_login(
        &self,
        id_hash: &str,
        version: i64,
        data: &str,
        state_hash: Option<&str>,
        finish: bool,
        now: i64,
    ) -> Result<bool, StoreError>;

    // ---- authorization codes -----------------------------------------------

    async fn insert_code(
        &self,
        code_hash: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    // ---- sessions ------------------------------------------------------------

    async fn insert_session(&self, session: &SessionRow) -> Result<(), StoreError>;

    /// The unexpired session with this cookie hash.
    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<SessionRow>, StoreError>;

    async fn session_by_sid(&self, sid: &str, now: i64) -> Result<Option<SessionRow>, StoreError>;

    /// Unexpired sessions of one user of one connector, oldest first.
    async fn sessions_of_user(
        &self,
        connector_id: &str,
        subject: &str,
        now: i64,
    ) -> Result<Vec<SessionRow>, StoreError>;

    /// Deletes a session and its client index; returns its `sid` if it existed.
    async fn delete_session(&self, id_hash: &str) -> Result<Option<String>, StoreError>;

    /// Records that `client_id` got tokens from session `sid` (idempotent).
    async fn add_session_client(
        &self,
        sid: &str,
        client_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// The clients session `sid` logged in to, in first-login order.
    async fn session_clients(&self, sid: &str) -> Result<Vec<String>, StoreError>;

    // ---- revoked access tokens ---------------------------------------------

    /// Marks an access token revoked until `expires_at` (idempotent).
    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<(), StoreError>;

    /// True when any of `ids` (a `jti`, or a marker such as a session's)
    /// is revoked at `now`: one query for all of them.
    async fn any_revoked(&self, ids: &[&str], now: i64) -> Result<bool, StoreError>;

    async fn is_revoked(&self, jti: &str, now: i64) -> Result<bool, StoreError> {
        self.any_revoked(&[jti], now).await
    }

    // ---- refresh tokens ------------------------------------------------------

    async fn insert_refresh(&self, row: &RefreshRow) -> Result<(), StoreError>;

    /// Uses a refresh token exactly once (rotation).
    async fn use_refresh(&self, token_hash: &str, now: i64) -> Result<RefreshUse, StoreError>;

    /// Revokes every token of a family; returns how many were still usable.
    async fn revoke_family(&self, family_id: &str, now: i64) -> Result<u64, StoreError>;

    /// Revokes every refresh token bound to session `sid`.
    async fn revoke_refresh_of_session(&self, sid: &str, now: i64) -> Result<u64, StoreError>;

    // ---- accounts ------------------------------------------------------------

    /// Inserts an account; false when the id, username or e-mail is taken.
    async fn insert_account(&self, account: &AccountRow) -> Result<bool, StoreError>;

    async fn account_by_username(&self, username: &str) -> Result<Option<AccountRow>, StoreError>;

    async fn account_by_email(&self, email: &str) -> Result<Option<AccountRow>, StoreError>;

    /// Compare-and-swap on `account.version`; the stored version becomes
    /// `account.version + 1`. False when it changed meanwhile.
    async fn update_account(&self, account: &AccountRow) -> Result<bool, StoreError>;

    // ---- housekeeping and keys -----------------------------------------------

    /// Deletes at most `limit` records, over every table with an expiry
    /// (logins, codes, sessions, session clients, revoked tokens, refresh
    /// tokens, logout states, back-channel deliveries, mails, e-mail
    /// codes), whose expiry is before `before`; returns how many.
    async fn delete_expired(&self, before: i64, limit: i64) -> Result<u64, StoreError>;

    /// All signing keys, oldest generation first.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Inserts a key unless its kid or generation exists. True if inserted.
    async fn insert_key(&self, key: &KeyRecord) -> Result<bool, StoreError>;

    // ---- token lifecycle (refresh, revocation, introspection) ---------------

    /// A refresh token by hash, whatever its state (read only).
    async fn refresh_status(&self, token_hash: &str) -> Result<Option<RefreshStatus>, StoreError>;

    /// Deletes the session with this `sid` and its client index; true if
    /// it existed.
    async fn delete_session_by_sid(&self, sid: &str) -> Result<bool, StoreError>;

    // ---- signing-key rotation ------------------------------------------------

    /// Schedules the retirement of key `kid` unless it is scheduled already
    /// (the first schedule wins, so replicas agree). True if set now.
    async fn retire_key(&self, kid: &str, retires_at: i64) -> Result<bool, StoreError>;

    /// Deletes the keys whose retirement time is at or before `now`;
    /// returns how many. Keys without a retirement time are never deleted.
    async fn delete_retired_keys(&self, now: i64) -> Result<u64, StoreError>;

    // ---- logout (OIDC RP-Initiated and Back-Channel Logout 1.0) ---------------

    /// Stores what a logout that went to the upstream needs afterwards,
    /// under the hash of the state sent there.
    async fn insert_logout_state(
        &self,
        state_hash: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// Consumes a logout state exactly once; `None` when unknown, used or
    /// expired.
    async fn take_logout_state(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError>;

    /// Queues a back-channel logout delivery.
    async fn enqueue_backchannel(&self, row: &BackchannelRow) -> Result<(), StoreError>;

    /// Deliveries not done whose next attempt is due at `now`, oldest first.
    async fn due_backchannel(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<BackchannelRow>, StoreError>;

    /// Claims a due delivery for one attempt: compare-and-swap on
    /// `attempts`, which becomes `attempts + 1`, and `next_attempt_at`
    /// becomes `retry_at` (so a replica that dies mid-attempt leaves a
    /// retry behind). False when another worker claimed it first.
    async fn claim_backchannel(
        &self,
        id: &str,
        attempts: i64,
        retry_at: i64,
    ) -> Result<bool, StoreError>;

    /// Ends a delivery with `outcome` (`delivered` or `failed`).
    async fn finish_backchannel(&self, id: &str, now: i64, outcome: &str)
        -> Result<(), StoreError>;

    /// One delivery by id.
    async fn backchannel(&self, id: &str) -> Result<Option<BackchannelRow>, StoreError>;

    /// Every delivery of session `sid`, in creation order.
    async fn backchannel_of_session(&self, sid: &str) -> Result<Vec<BackchannelRow>, StoreError>;

    // ---- metrics ----

    /// How many sessions are unexpired at `now` (the active-sessions gauge).
    async fn count_sessions(&self, now: i64) -> Result<u64, StoreError>;

    /// The grant writer's jobs and commits so far (SQLite; `None` where
    /// grants are not written by one thread).
    fn writer_counts(&self) -> Option<(u64, u64)> {
        None
    }

    // ---- local accounts (listing) ---------------------------------------------

    /// Every account, by username (the command line's `users list`).
    async fn list_accounts(&self) -> Result<Vec<AccountRow>, StoreError>;

    // ---- devices (sessions per device) ----------------------------------------

    /// Deletes the sessions of one user of one connector on the device
    /// whose cookie hashes to `device_hash`, with their client index;
    /// returns their `sid`s.
    async fn delete_device_sessions(
        &self,
        connector_id: &str,
        subject: &str,
        device_hash: &str,
    ) -> Result<Vec<String>, StoreError>;

    /// Sets `last_seen_at` of session `id_hash` to `now` unless it is
    /// already after `stale_before` (so replicas racing on one session
    /// write once). True if written.
    async fn touch_session(
        &self,
        id_hash: &str,
        now: i64,
        stale_before: i64,
    ) -> Result<bool, StoreError>;

    /// Replaces the data (the identity) of session `sid`, when fresh claims
    /// came from its upstream. True if the session exists.
    async fn set_session_data(&self, sid: &str, data: &str) -> Result<bool, StoreError>;

    // ---- mail (outbox and e-mail one-time codes) -------------------------------

    /// Stores a mail in the outbox (durable when this returns).
    async fn enqueue_mail(&self, row: &OutboxRow) -> Result<(), StoreError>;

    /// Mails neither sent nor given up whose next attempt is due at `now`,
    /// oldest first.
    async fn due_mail(&self, now: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError>;

    /// Claims a due mail for one attempt: compare-and-swap on `attempts`,
    /// which becomes `attempts + 1`, and `next_attempt_at` becomes
    /// `retry_at` (a replica that dies mid-attempt leaves a retry behind).
    /// False when another worker claimed it first.
    async fn claim_mail(&self, id: &str, attempts: i64, retry_at: i64) -> Result<bool, StoreError>;

    /// Ends a mail as sent at `now`, and empties its body: it carried a
    /// code that must not outlive its delivery.
    async fn mail_sent(&self, id: &str, now: i64) -> Result<(), StoreError>;

    /// Records a failed attempt's `error`; `failed_at` ends the mail as
    /// given up (no attempt is due again).
    async fn mail_failed(
        &self,
        id: &str,
        error: &str,
        failed_at: Option<i64>,
    ) -> Result<(), StoreError>;

    /// One mail by id.
    async fn mail(&self, id: &str) -> Result<Option<OutboxRow>, StoreError>;

    /// The newest `limit` mails, newest first (the development outbox).
    async fn recent_mail(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError>;

    /// Stores the code of `key_hash` with no attempts made, replacing any
    /// earlier code of that key.
    async fn put_email_code(
        &self,
        key_hash: &str,
        code_hash: &str,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// Checks `code_hash` against the code of `key_hash`: a match consumes
    /// it (one `DELETE … RETURNING`: two concurrent correct submissions get
    /// one [`CodeCheck::Accepted`]); a mismatch counts one attempt (one
    /// conditional `UPDATE … RETURNING`), and once `max_attempts` were
    /// counted the code accepts nothing more.
    async fn check_email_code(
        &self,
        key_hash: &str,
        code_hash: &str,
        max_attempts: i64,
        now: i64,
    ) -> Result<CodeCheck, StoreError>;

    // ---- rate limits (per-account throttles) ----------------------------------

    /// Counts one failure of `key` at `now` in a single atomic upsert and
    /// returns the count: the first failure, or the first once `window`
    /// seconds passed since the window started, opens a new window at 1;
    /// otherwise the count goes up by one (concurrent failures each count).
    async fn throttle_failure(&self, key: &str, now: i64, window: i64) -> Result<i64, StoreError>;

    /// Blocks `key` until `until`, unless it is blocked longer already (a
    /// monotone update, so concurrent blocks keep the longest).
    async fn throttle_block(&self, key: &str, until: i64) -> Result<(), StoreError>;

    /// Until when `key` is blocked (0 when never blocked); `None` without a
    /// record.
    async fn throttle_blocked_until(&self, key: &str) -> Result<Option<i64>, StoreError>;

    /// Forgets `key` (a success ends the throttle).
    async fn clear_throttle(&self, key: &str) -> Result<(), StoreError>;

    // ---- housekeeping (compaction) ---------------------------------------------

    /// Shortens what the backend keeps beside the data: SQLite's
    /// write-ahead log is checkpointed and emptied; nothing on PostgreSQL.
    async fn compact(&self) -> Result<(), StoreError>;

    // ---- passkeys (usernameless login) ------------------------------------------

    /// Records `handle` (a WebAuthn user handle) as the account `account_id`'s;
    /// false when the handle or the account has another one already.
    async fn insert_passkey_handle(
        &self,
        handle: &str,
        account_id: &str,
    ) -> Result<bool, StoreError>;

    /// The account whose passkey user handle is `handle`.
    async fn account_by_passkey_handle(
        &self,
        handle: &str,
    ) -> Result<Option<AccountRow>, StoreError>;
    // ---- the refresh grant in one call -------------------------------------------

    /// The whole store side of a refresh grant (RFC 6749 §6, RFC 9700
    /// §4.14.2) in one transaction on one connection: reads the token
    /// `token_hash` with its family's revocation marker
    /// ([`FAMILY_MARKER_PREFIX`]) and its session (one query), and when it
    /// belongs to `client_id` and is live, calls `next` with it and
    /// consumes it and inserts the row `next` built, before committing.
    /// Any other outcome changes nothing. Two concurrent rotations of one
    /// token get one [`Rotation::Rotated`]; the other sees
    /// [`Rotation::Reused`].
    async fn rotate_refresh(
        &self,
        token_hash: &str,
        client_id: &str,
        now: i64,
        next: NextRefresh,
    ) -> Result<Rotation, StoreError>;

    // ---- a login's last steps in fewer calls ----------------------------------------

    /// Starts a session in one transaction: deletes the sessions of the
    /// same user (`connector_id`, `subject`) on the same device
    /// (`device_hash`, when set) with their client index, then inserts
    /// `row`, then, when given, stores `code` of the new session as
    /// [`Store::insert_code_for_session`] does (a login's session and its
    /// code: one commit). Returns the deleted sessions' `sid`s.
    async fn replace_device_sessions(
        &self,
        row: &SessionRow,
        code: Option<&CodeInsert>,
    ) -> Result<Vec<String>, StoreError>;

    /// Stores a code ([`Store::insert_code`]) and records that `client_id`
    /// logged in to session `sid` ([`Store::add_session_client`]), in one
    /// transaction.
    async fn insert_code_for_session(&self, code: &CodeInsert) -> Result<(), StoreError>;

    // ---- the authorization-code grant in one call ------------------------------------

    /// The whole store side of a code redemption (RFC 6749 §4.1.3) in one
    /// transaction on one connection: consumes the code `code_hash` first
    /// (one conditional `UPDATE … RETURNING`, recording `grant_id`, so two
    /// concurrent redemptions get one [`Redeemed::Fresh`] and a code can
    /// never be redeemed twice, RFC 6749 §4.1.2), then calls `first` with
    /// the code's payload and expiry and inserts the refresh token it
    /// builds, if any, before committing. `first` refusing (`Ok(None)`:
    /// a failed check, or no refresh token for this client) leaves the code
    /// consumed and inserts nothing; an error of `first` rolls everything
    /// back. Expiry is left to `first`. A used code answers
    /// [`Redeemed::Replayed`] with the grant its redemption recorded.
    async fn redeem_code_and_issue(
        &self,
        code_hash: &str,
        grant_id: &str,
        now: i64,
        first: FirstRefresh,
    ) -> Result<Redeemed, StoreError>;
}

/// Builds, inside [`Store::redeem_code_and_issue`]'s transaction and after
/// the code is consumed, the first refresh token of the grant from the
/// code's payload and expiry (`data`, `expires_at`). `Ok(None)` inserts
/// none; the code stays consumed.
pub type FirstRefresh =
    Box<dyn FnOnce(&str, i64) -> Result<Option<RefreshRow>, StoreError> + Send + 'static>;

/// What [`Store::insert_code_for_session`] stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeInsert {
    pub code_hash: String,
    pub data: String,
    pub expires_at: i64,
    pub sid: String,
    pub client_id: String,
    pub now: i64,
    pub session_expires_at: i64,
}

/// The revoked-token marker of a refresh family is this prefix and the
/// family id: revoking it kills the family, including a member a concurrent
/// rotation inserts after the revocation.
pub const FAMILY_MARKER_PREFIX: &str = "family:";

/// Builds, inside [`Store::rotate_refresh`]'s transaction, the token that
/// replaces a live one, from the stored row. `Ok(None)` refuses the grant
/// (nothing is consumed).
pub type NextRefresh =
    Box<dyn FnOnce(&RefreshRow) -> Result<Option<RefreshRow>, StoreError> + Send + 'static>;

/// How [`Store::rotate_refresh`] came out. Only [`Rotation::Rotated`]
/// changed anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// Consumed now by this caller, its successor inserted. `session_alive`:
    /// the token is bound to a session (`sid`) that is unexpired.
    Rotated {
        used: RefreshRow,
        session_alive: bool,
    },
    /// Live, but `next` refused it.
    Refused(RefreshRow),
    /// Another client's token.
    OtherClient(RefreshRow),
    /// Used before: a rotated token came back.
    Reused(RefreshRow),
    /// It, its family or its session's tokens were revoked.
    Revoked,
    Expired,
    /// Bound to a session that has ended.
    SessionEnded,
    Missing,
}

/// A mail in the outbox.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: String,
    pub recipient: String,
    pub subject: String,
    /// Plain text; may carry a code (never logged). Emptied once sent.
    pub body: String,
    pub created_at: i64,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub sent_at: Option<i64>,
    /// When delivery was given up.
    pub failed_at: Option<i64>,
    /// Why the last attempt failed (never a secret).
    pub last_error: Option<String>,
    pub expires_at: i64,
}

impl std::fmt::Debug for OutboxRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRow")
            .field("id", &self.id)
            .field("recipient", &self.recipient)
            .field("subject", &self.subject)
            .field("attempts", &self.attempts)
            .field("next_attempt_at", &self.next_attempt_at)
            .field("sent_at", &self.sent_at)
            .field("failed_at", &self.failed_at)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

/// How a check of an e-mail code came out ([`Store::check_email_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// It matched and is now consumed.
    Accepted,
    /// It did not match; `attempts` wrong ones were counted so far.
    Wrong { attempts: i64 },
    /// `max_attempts` wrong ones were counted before: the code is dead.
    Exhausted,
    /// Past its expiry.
    Expired,
    /// No code (never issued, consumed, replaced or collected).
    Missing,
}

/// A queued back-channel logout delivery (OIDC Back-Channel Logout 1.0 §2.5).
#[derive(Clone, PartialEq, Eq)]
pub struct BackchannelRow {
    pub id: String,
    pub sid: String,
    pub client_id: String,
    /// The client's `backchannel_logout_uri`.
    pub uri: String,
    /// The signed logout token (never logged).
    pub token: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub done_at: Option<i64>,
    pub outcome: Option<String>,
}

impl std::fmt::Debug for BackchannelRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackchannelRow")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("attempts", &self.attempts)
            .field("next_attempt_at", &self.next_attempt_at)
            .field("done_at", &self.done_at)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}
