//! Server-side state of the relying party: login sessions and in-flight login
//! transactions, each in an in-memory [`ExpiringMap`], plus the random
//! identifiers that key them (256 bits from the thread-local CSPRNG).
//!
//! In memory is enough for a single-process demo RP: a restart logs everyone
//! out and aborts logins in progress, which the pages explain.

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
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sub", &self.id_token_claims.get("sub"))
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl Session {
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
