//! Server-side state of the relying party: login sessions (with every token,
//! the refresh token included: none of them is ever put in a cookie), in-flight
//! login and logout transactions, each in an in-memory [`ExpiringMap`], the
//! random identifiers that key them (256 bits from the thread-local CSPRNG),
//! and the record of back-channel logouts ([`BackchannelLogouts`]).
//!
//! In memory is enough for a single-process demo RP: a restart logs everyone
//! out and aborts logins in progress, which the pages explain.
//!
//! # Interface for the back-channel logout receiver
//!
//! The receiver (`POST /backchannel-logout`, OpenID Back-Channel Logout 1.0
//! §2.5) validates the logout token (§2.6) and then calls
//! [`crate::AppState::mark_backchannel`] with the token's `sid` and/or `sub`.
//! That one call ends the matching local sessions
//! ([`ExpiringMap::end_sessions_of`]) and records the event in
//! [`crate::AppState::backchannel_logouts`] ([`BackchannelLogouts::mark`]),
//! which the pages read ([`BackchannelLogouts::find`]) to show that a
//! back-channel logout arrived.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;

use crate::tokens::Claims;

/// How long a login may take between `/authenticated` and the callback.
pub const TRANSACTION_TTL: Duration = Duration::from_secs(10 * 60);
/// Lifetime of a local session.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 60 * 60);
/// Upper bound on stored entries per map (unauthenticated requests create
/// transactions, so the map must not grow without limit).
pub const MAX_ENTRIES: usize = 10_000;

/// A fresh 256-bit random identifier, base64url without padding (43 chars).
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the RP remembers between the redirect to the provider and the callback.
#[derive(Clone)]
pub struct Transaction {
    /// The `state` sent to the provider.
    pub state: String,
    /// The `nonce` sent to the provider, expected back in the ID token.
    pub nonce: String,
    /// The PKCE code verifier (its S256 challenge went to the provider).
    pub pkce_verifier: String,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transaction { .. }")
    }
}

/// A logged-in user: the verified tokens and their decoded parts.
#[derive(Clone)]
pub struct Session {
    /// The raw ID token (compact JWS).
    pub id_token: String,
    /// The raw access token (compact JWS, `typ: at+jwt`).
    pub access_token: String,
    /// The refresh token, if the provider issued one (RFC 6749 §1.5). Kept
    /// here only: never rendered, never in a cookie or a log line.
    pub refresh_token: Option<String>,
    /// Payload of the verified ID token.
    pub id_token_claims: Claims,
    /// JOSE header of the ID token.
    pub id_token_header: Claims,
    /// Payload of the verified access token.
    pub access_token_claims: Claims,
    /// JOSE header of the access token.
    pub access_token_header: Claims,
    /// Unix time the session was created.
    pub created_at: i64,
    /// How many times the tokens were refreshed (RFC 6749 §6).
    pub refresh_count: u32,
    /// Unix time of the last refresh.
    pub refreshed_at: Option<i64>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sub", &self.id_token_claims.get("sub"))
            .field("sid", &self.sid())
            .field("created_at", &self.created_at)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("refresh_count", &self.refresh_count)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The ID token's `sid` (OpenID Front/Back-Channel Logout 1.0 §3 / §2.1).
    pub fn sid(&self) -> Option<&str> {
        self.id_token_claims.get("sid").and_then(|v| v.as_str())
    }

    /// The ID token's `sub`.
    pub fn sub(&self) -> Option<&str> {
        self.id_token_claims.get("sub").and_then(|v| v.as_str())
    }

    /// Whether a back-channel logout for `sid`/`sub` targets this session
    /// (OpenID Back-Channel Logout 1.0 §2.4: with a `sid`, that session; with
    /// only a `sub`, every session of that user).
    pub fn matches_logout(&self, sid: Option<&str>, sub: Option<&str>) -> bool {
        match (sid, sub) {
            (Some(sid), _) => self.sid() == Some(sid),
            (None, Some(sub)) => self.sub() == Some(sub),
            (None, None) => false,
        }
    }

    /// The best human-readable name: `preferred_username`, then `name`, then `sub`.
    pub fn display_name(&self) -> String {
        ["preferred_username", "name", "sub"]
            .iter()
            .find_map(|k| {
                self.id_token_claims
                    .get(*k)
                    .or_else(|| self.access_token_claims.get(*k))
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or("unknown user")
            .to_owned()
    }
}

/// What the RP remembers between the redirect to the provider's
/// end-session endpoint and the return to `/logged-out` (OpenID RP-Initiated
/// Logout 1.0 §2, §3).
#[derive(Clone)]
pub struct LogoutTransaction {
    /// The `state` sent to the end-session endpoint, expected back.
    pub state: String,
    /// `sid` of the session that was logged out (to show a back-channel logout for it).
    pub sid: Option<String>,
    /// `sub` of the session that was logged out.
    pub sub: Option<String>,
}

impl std::fmt::Debug for LogoutTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogoutTransaction { .. }")
    }
}

/// One back-channel logout the receiver accepted (OpenID Back-Channel
/// Logout 1.0 §2.4: a logout token names a `sid`, a `sub`, or both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackchannelLogout {
    /// The logout token's `sid`.
    pub sid: Option<String>,
    /// The logout token's `sub`.
    pub sub: Option<String>,
    /// Unix time it was received.
    pub received_at: i64,
    /// How many local sessions it ended.
    pub sessions_ended: usize,
}

/// The most recent back-channel logouts (at most [`MAX_BACKCHANNEL_EVENTS`]).
#[derive(Debug, Default)]
pub struct BackchannelLogouts {
    events: Mutex<Vec<BackchannelLogout>>,
}

/// How many back-channel logouts [`BackchannelLogouts`] keeps.
pub const MAX_BACKCHANNEL_EVENTS: usize = 1000;

impl BackchannelLogouts {
    fn lock(&self) -> MutexGuard<'_, Vec<BackchannelLogout>> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a back-channel logout (called through
    /// [`crate::AppState::mark_backchannel`], which also ends the sessions).
    pub fn mark(&self, event: BackchannelLogout) {
        let mut events = self.lock();
        if events.len() >= MAX_BACKCHANNEL_EVENTS {
            events.remove(0);
        }
        events.push(event);
    }

    /// The latest back-channel logout that targets a session with `sid` /
    /// `sub` (same rule as [`Session::matches_logout`]).
    pub fn find(&self, sid: Option<&str>, sub: Option<&str>) -> Option<BackchannelLogout> {
        self.lock()
            .iter()
            .rev()
            .find(|e| match (e.sid.as_deref(), e.sub.as_deref()) {
                (Some(event_sid), _) => sid == Some(event_sid),
                (None, Some(event_sub)) => sub == Some(event_sub),
                (None, None) => false,
            })
            .cloned()
    }

    /// Every recorded back-channel logout, oldest first.
    pub fn all(&self) -> Vec<BackchannelLogout> {
        self.lock().clone()
    }
}

/// A mutex-protected map whose entries expire after a fixed time-to-live.
///
/// Expired entries are invisible and are purged on every insert. The `*_at`
/// methods take the current instant, so tests can move time without sleeping.
pub struct ExpiringMap<V> {
    entries: Mutex<HashMap<String, (Instant, V)>>,
    ttl: Duration,
    capacity: usize,
}

impl<V: Clone> ExpiringMap<V> {
    /// An empty map whose entries live for `ttl`, holding at most `capacity` entries.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        ExpiringMap {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Instant, V)>> {
        // Nothing panics while holding the lock, so poisoning cannot carry a
        // half-written state; recover rather than propagate.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `value` under `key`.
    pub fn insert(&self, key: String, value: V) {
        self.insert_at(key, value, Instant::now());
    }

    /// Stores `value` under `key`, as of `now`.
    pub fn insert_at(&self, key: String, value: V, now: Instant) {
        let mut map = self.lock();
        map.retain(|_, (expires, _)| *expires > now);
        if map.len() >= self.capacity {
            // Evict the entry closest to expiry to make room.
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (expires, _))| *expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(key, (now + self.ttl, value));
    }

    /// A copy of the live value under `key`.
    pub fn get(&self, key: &str) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    /// A copy of the value under `key` if it is live at `now`.
    pub fn get_at(&self, key: &str, now: Instant) -> Option<V> {
        self.lock()
            .get(key)
            .filter(|(expires, _)| *expires > now)
            .map(|(_, v)| v.clone())
    }

    /// Removes and returns the live value under `key` (single use).
    pub fn take(&self, key: &str) -> Option<V> {
        self.take_at(key, Instant::now())
    }

    /// Removes the value under `key`; returns it if it was live at `now`.
    pub fn take_at(&self, key: &str, now: Instant) -> Option<V> {
        self.lock()
            .remove(key)
            .filter(|(expires, _)| *expires > now)
            .map(|(_, v)| v)
    }

    /// Replaces the live value under `key` with `f(value)`, keeping its
    /// expiry; returns the new value, or `None` when `key` is not live.
    pub fn update(&self, key: &str, f: impl FnOnce(&V) -> V) -> Option<V> {
        let now = Instant::now();
        let mut map = self.lock();
        let entry = map.get_mut(key).filter(|(expires, _)| *expires > now)?;
        entry.1 = f(&entry.1);
        Some(entry.1.clone())
    }

    /// Removes every entry whose value satisfies `pred`; returns how many.
    pub fn remove_matching(&self, mut pred: impl FnMut(&V) -> bool) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, (_, v)| !pred(v));
        before - map.len()
    }

    /// Removes every entry whose value matches `pred`; returns their keys.
    pub fn remove_where(&self, pred: impl Fn(&V) -> bool) -> Vec<String> {
        let mut map = self.lock();
        let keys: Vec<String> = map
            .iter()
            .filter(|(_, (_, v))| pred(v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            map.remove(k);
        }
        keys
    }

    /// Number of stored entries (live or not yet purged).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the map stores nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ExpiringMap<std::sync::Arc<Session>> {
    /// Ends the sessions a back-channel logout for `sid`/`sub` targets
    /// ([`Session::matches_logout`]); returns how many ended.
    pub fn end_sessions_of(&self, sid: Option<&str>, sub: Option<&str>) -> usize {
        self.remove_matching(|s| s.matches_logout(sid, sub))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_long_and_distinct() {
        let a = random_id();
        let b = random_id();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn take_is_single_use() {
        let map = ExpiringMap::new(Duration::from_secs(60), 10);
        map.insert("k".into(), 1);
        assert_eq!(map.take("k"), Some(1));
        assert_eq!(map.take("k"), None);
    }

    #[test]
    fn entries_expire_without_sleeping() {
        let map = ExpiringMap::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        map.insert_at("k".into(), 1, t0);
        assert_eq!(map.get_at("k", t0 + Duration::from_secs(59)), Some(1));
        assert_eq!(map.get_at("k", t0 + Duration::from_secs(60)), None);
        assert_eq!(map.take_at("k", t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn expired_entries_are_purged_on_insert() {
        let map = ExpiringMap::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        map.insert_at("a".into(), 1, t0);
        map.insert_at("b".into(), 2, t0 + Duration::from_secs(120));
        assert_eq!(map.len(), 1);
    }

    fn session(sid: Option<&str>, sub: &str) -> std::sync::Arc<Session> {
        let mut claims = Claims::new();
        claims.insert("sub".into(), sub.into());
        if let Some(sid) = sid {
            claims.insert("sid".into(), sid.into());
        }
        std::sync::Arc::new(Session {
            id_token: String::new(),
            access_token: String::new(),
            refresh_token: Some("rt".into()),
            id_token_claims: claims,
            id_token_header: Claims::new(),
            access_token_claims: Claims::new(),
            access_token_header: Claims::new(),
            created_at: 0,
            refresh_count: 0,
            refreshed_at: None,
        })
    }

    /// OpenID Back-Channel Logout 1.0 §2.4: a `sid` ends that session only;
    /// a `sub` alone ends every session of the user.
    #[test]
    fn backchannel_logout_ends_the_sessions_it_names() {
        let map = ExpiringMap::new(Duration::from_secs(60), 10);
        map.insert("a".into(), session(Some("sid-1"), "alice"));
        map.insert("b".into(), session(Some("sid-2"), "alice"));
        map.insert("c".into(), session(None, "bob"));
        assert_eq!(map.end_sessions_of(Some("sid-1"), Some("alice")), 1);
        assert!(map.get("a").is_none());
        assert!(map.get("b").is_some());
        assert_eq!(map.end_sessions_of(None, Some("bob")), 1);
        assert_eq!(map.end_sessions_of(None, None), 0);
        assert_eq!(map.len(), 1);

        let log = BackchannelLogouts::default();
        log.mark(BackchannelLogout {
            sid: Some("sid-1".into()),
            sub: None,
            received_at: 5,
            sessions_ended: 1,
        });
        assert_eq!(
            log.find(Some("sid-1"), Some("alice")).unwrap().received_at,
            5
        );
        assert_eq!(log.find(Some("sid-2"), Some("alice")), None);
    }

    #[test]
    fn debug_hides_the_refresh_token() {
        let s = session(Some("sid-1"), "alice");
        let shown = format!("{s:?}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(!shown.contains("\"rt\""), "{shown}");
    }

    #[test]
    fn update_keeps_the_entry_and_remove_where_counts() {
        let map = ExpiringMap::new(Duration::from_secs(60), 10);
        map.insert("k".into(), 1);
        assert_eq!(map.update("k", |v| v + 1), Some(2));
        assert_eq!(map.get("k"), Some(2));
        assert_eq!(map.update("missing", |v| v + 1), None);
        assert_eq!(map.remove_matching(|v| *v == 2), 1);
        assert!(map.is_empty());
    }

    #[test]
    fn capacity_is_bounded() {
        let map = ExpiringMap::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        map.insert_at("a".into(), 1, t0);
        map.insert_at("b".into(), 2, t0 + Duration::from_secs(1));
        map.insert_at("c".into(), 3, t0 + Duration::from_secs(2));
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.get_at("a", t0 + Duration::from_secs(2)),
            None,
            "oldest evicted"
        );
        assert_eq!(map.get_at("c", t0 + Duration::from_secs(2)), Some(3));
    }
}
