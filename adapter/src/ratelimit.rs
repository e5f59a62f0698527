//! Rate limits of the attempt endpoints (password logins, registrations,
//! e-mailed codes, TOTP codes), in two layers:
//!
//! - **per IP**, in memory on each replica: one keyed GCRA limiter
//!   (`governor`) per [`Scope`], quotas from `[rate_limits]`, on the
//!   injected clock. It slows a single address's flood before any password
//!   is hashed. Its memory is bounded: keys whose state is back to fresh
//!   are purged ([`PURGE_INTERVAL_SECONDS`], or sooner past
//!   [`MAX_TRACKED_KEYS`]). IPv6 addresses are keyed by their /64, which
//!   one client usually holds whole.
//! - **per account**, in the store so every replica sees it: after
//!   [`FREE_FAILURES`] failures in a [`WINDOW_SECONDS`] window, each further
//!   failure blocks the account for 2^(failures − 5) seconds, at most
//!   [`MAX_BLOCK_SECONDS`]. A success forgets the account.
//!
//! The client's address is [`ClientIp`]: the socket peer, or, when the peer
//! is one of `server.trusted_proxies`, the rightmost `X-Forwarded-For`
//! address that is not a trusted proxy (the leftmost entries are the
//! client's to forge).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::clock::SharedClock;
use crate::config::{IpQuotaConfig, RateLimitsConfig};
use crate::provider::AppState;
use crate::store::{Store, StoreError};
use crate::web::{PageError, WebError};

/// Failures of an account in one window that cost nothing.
pub const FREE_FAILURES: i64 = 5;
/// Length of the window in which failures are counted: 15 minutes.
pub const WINDOW_SECONDS: i64 = 15 * 60;
/// The longest an account is blocked after one failure. The cap is what
/// keeps an attacker who knows a user name from locking its owner out for
/// long: failing on purpose buys at most 30 seconds at a time, while an
/// online guesser is held to about two guesses a minute.
pub const MAX_BLOCK_SECONDS: i64 = 30;
/// How often idle per-IP states are purged.
pub const PURGE_INTERVAL_SECONDS: i64 = 60;
/// Past this many tracked addresses in a scope, idle states are purged at
/// once.
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// What an attempt is; each has its own quotas and throttles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Login,
    Register,
    VerifyCode,
    VerifyTotp,
}

impl Scope {
    /// Every scope, in a fixed order.
    pub const ALL: [Scope; 4] = [
        Scope::Login,
        Scope::Register,
        Scope::VerifyCode,
        Scope::VerifyTotp,
    ];

    /// The fixed name (configuration key, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Login => "login",
            Scope::Register => "register",
            Scope::VerifyCode => "verify_code",
            Scope::VerifyTotp => "verify_totp",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An attempt refused for now: answered 429 with `Retry-After` (RFC 6585
/// §4, RFC 9110 §10.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub scope: Scope,
    /// Seconds until an attempt can succeed again (at least 1).
    pub retry_after: u64,
}

impl RateLimited {
    fn message(&self) -> String {
        format!(
            "Too many attempts. Try again in {} second{}.",
            self.retry_after,
            if self.retry_after == 1 { "" } else { "s" }
        )
    }

    fn with_retry_after(&self, mut response: Response) -> Response {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after));
        response
    }

    /// 429, `Retry-After`, and `{"error":"rate_limited","error_description":…}`.
    pub fn json(&self) -> Response {
        let body = Json(serde_json::json!({
            "error": "rate_limited",
            "error_description": self.message(),
        }));
        self.with_retry_after((StatusCode::TOO_MANY_REQUESTS, body).into_response())
    }

    /// 429, `Retry-After`, and the HTML error page.
    pub fn page(&self) -> Response {
        let page = PageError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts",
            self.message(),
        );
        self.with_retry_after(page.into_response())
    }

    /// [`RateLimited::json`] when the request is JSON (its `Content-Type`,
    /// or an `Accept` naming JSON and not HTML), else [`RateLimited::page`].
    pub fn respond(&self, headers: &HeaderMap) -> Response {
        if wants_json(headers) {
            self.json()
        } else {
            self.page()
        }
    }
}

/// Without the request at hand: the HTML page. JSON endpoints use
/// [`RateLimited::json`] or [`RateLimited::respond`].
impl IntoResponse for RateLimited {
    fn into_response(self) -> Response {
        self.page()
    }
}

fn wants_json(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, what: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains(what))
    };
    has(header::CONTENT_TYPE, "json")
        || (has(header::ACCEPT, "json") && !has(header::ACCEPT, "html"))
}

/// Configured reverse proxies (`server.trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses IP addresses and CIDR blocks (`10.0.0.0/8`, `fd00::/8`); the
    /// error names the bad entry.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let bad = || format!("{entry:?} is not an IP address or CIDR block");
            let (addr, len) = match entry.trim().split_once('/') {
                Some((a, l)) => {
                    let addr: IpAddr = a.parse().map_err(|_| bad())?;
                    let len: u8 = l.parse().map_err(|_| bad())?;
                    (addr, len)
                }
                None => {
                    let addr: IpAddr = entry.trim().parse().map_err(|_| bad())?;
                    (addr, if addr.is_ipv4() { 32 } else { 128 })
                }
            };
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if len > max {
                return Err(bad());
            }
            nets.push((canonical(addr), len));
        }
        Ok(TrustedProxies(nets))
    }

    /// Whether `ip` is in one of the blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|&(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }

    /// The client of a request from `peer`: `peer` itself unless it is a
    /// trusted proxy; then the rightmost `X-Forwarded-For` address that is
    /// not a trusted proxy (every header, in order). An unparsable entry
    /// stops the walk at the hop that appended it.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            // From anyone else the header is the client's to forge.
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's IPv4 peers) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The per-IP key: IPv4 as is, IPv6 by its /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(net))
        }
        v4 => v4,
    }
}

/// The client's address as the rate limits see it: the socket peer
/// (`ConnectInfo<SocketAddr>`, set by serving with
/// `into_make_service_with_connect_info`), or behind a trusted proxy the
/// address it reports (see [`TrustedProxies::client_ip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, WebError> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            // A router served without connect info (a test driving `app()`
            // directly must add `MockConnectInfo`): refuse rather than
            // lump every client together.
            tracing::error!("no peer address: serve with into_make_service_with_connect_info");
            return Err(PageError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Server error",
                "The server cannot tell the client's address.",
            )
            .into());
        };
        Ok(ClientIp(
            st.rate_limits
                .trusted_proxies
                .client_ip(peer.ip(), &parts.headers),
        ))
    }
}

/// The injected clock as governor's time source (whole seconds, as
/// nanoseconds), so tests move per-IP limits with a `ManualClock`.
#[derive(Clone)]
struct InjectedClock(SharedClock);

impl GovernorClock for InjectedClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        let secs = u64::try_from(self.0.now()).unwrap_or(0);
        Nanos::new(secs.saturating_mul(1_000_000_000))
    }
}

type IpLimiter =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, InjectedClock, NoOpMiddleware<Nanos>>;

fn quota(q: IpQuotaConfig) -> Quota {
    // Validated to be at least 1; 1 stands in should that ever slip.
    let per_minute = NonZeroU32::new(q.per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(q.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

/// Both layers of rate limits. One per application.
pub struct RateLimits {
    enabled: bool,
    /// One limiter per [`Scope`], in [`Scope::ALL`] order.
    per_ip: [IpLimiter; 4],
    /// When idle per-IP states were last purged.
    last_purge: AtomicI64,
    /// Who may set `X-Forwarded-For`.
    pub trusted_proxies: TrustedProxies,
    store: Arc<dyn Store>,
    clock: SharedClock,
    metrics: crate::metrics::Metrics,
}

impl RateLimits {
    /// From `[rate_limits]` and `server.trusted_proxies`.
    pub fn new(
        config: &RateLimitsConfig,
        trusted_proxies: TrustedProxies,
        store: Arc<dyn Store>,
        clock: SharedClock,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        let limiter = |q: IpQuotaConfig| {
            RateLimiter::dashmap_with_clock(quota(q), InjectedClock(clock.clone()))
        };
        RateLimits {
            enabled: config.enabled,
            per_ip: [
                limiter(config.login),
                limiter(config.register),
                limiter(config.verify_code),
                limiter(config.verify_totp),
            ],
            last_purge: AtomicI64::new(clock.now()),
            trusted_proxies,
            store,
            clock,
            metrics,
        }
    }

    /// Takes one attempt of `scope` from `ip`'s quota, or says when the
    /// next one is due.
    pub fn check_ip(&self, scope: Scope, ip: IpAddr) -> Result<(), RateLimited> {
        if !self.enabled {
            return Ok(());
        }
        let limiter = &self.per_ip[scope.index()];
        self.purge_idle(limiter.len());
        match limiter.check_key(&ip_key(ip)) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(InjectedClock(self.clock.clone()).now());
                // Whole seconds, rounded up: retrying at Retry-After succeeds.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(self.limited(scope, secs))
            }
        }
    }

    /// Whether `account` may try `scope` now (the store-backed throttle).
    pub async fn check_account(&self, scope: Scope, account: &str) -> Result<(), RateLimited> {
        if !self.enabled {
            return Ok(());
        }
        let now = self.clock.now();
        match self
            .store
            .throttle_blocked_until(&account_key(scope, account))
            .await
        {
            Ok(Some(until)) if until > now => {
                Err(self.limited(scope, u64::try_from(until - now).unwrap_or(1)))
            }
            Ok(_) => Ok(()),
            // The store is down: the attempt itself will fail on it too;
            // refusing here would turn an outage into lockouts.
            Err(e) => {
                tracing::warn!(error = %e, scope = scope.as_str(), "throttle not read");
                Ok(())
            }
        }
    }

    /// Counts a failed attempt of `account`; past the free ones, blocks it
    /// for 2^(failures − 5) seconds, at most [`MAX_BLOCK_SECONDS`].
    pub async fn failed(&self, scope: Scope, account: &str) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        let key = account_key(scope, account);
        let now = self.clock.now();
        let failures = self
            .store
            .throttle_failure(&key, now, WINDOW_SECONDS)
            .await?;
        if let Some(delay) = block_seconds(failures) {
            self.store
                .throttle_block(&key, now.saturating_add(delay))
                .await?;
        }
        Ok(())
    }

    /// A successful attempt of `account`: its throttle is forgotten.
    pub async fn succeeded(&self, scope: Scope, account: &str) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        self.store
            .clear_throttle(&account_key(scope, account))
            .await
    }

    fn limited(&self, scope: Scope, retry_after: u64) -> RateLimited {
        self.metrics.rate_limited(scope.as_str());
        RateLimited {
            scope,
            retry_after: retry_after.max(1),
        }
    }

    /// Drops per-IP states that are back to fresh, every
    /// [`PURGE_INTERVAL_SECONDS`] or when the scope at hand tracks
    /// `tracked` > [`MAX_TRACKED_KEYS`] addresses.
    fn purge_idle(&self, tracked: usize) {
        let now = self.clock.now();
        let last = self.last_purge.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= PURGE_INTERVAL_SECONDS || tracked > MAX_TRACKED_KEYS;
        // One caller purges; the others go on.
        if due
            && self
                .last_purge
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            for limiter in &self.per_ip {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
    }

    /// Addresses tracked by the per-IP limiter of `scope`.
    pub fn tracked_ips(&self, scope: Scope) -> usize {
        self.per_ip[scope.index()].len()
    }
}

/// Seconds of block after the `failures`-th failure of a window.
fn block_seconds(failures: i64) -> Option<i64> {
    let over = failures - FREE_FAILURES;
    if over <= 0 {
        return None;
    }
    // 2^over without overflow: past 2^5 the cap applies anyway.
    let doubling = 1i64 << over.min(32);
    Some(doubling.min(MAX_BLOCK_SECONDS))
}

/// The store key of an account's throttle: SHA-256 of the scope and the
/// account name, trimmed and lower-cased (so case variants of one name
/// share a throttle, and typed names are not stored).
fn account_key(scope: Scope, account: &str) -> String {
    crate::secret::hash(&format!(
        "{}:{}",
        scope.as_str(),
        account.trim().to_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn block_doubles_after_five_and_is_capped() {
        let blocks: Vec<Option<i64>> = (1..=12).map(block_seconds).collect();
        assert_eq!(
            blocks,
            vec![
                None,
                None,
                None,
                None,
                None,
                Some(2),
                Some(4),
                Some(8),
                Some(16),
                Some(30),
                Some(30),
                Some(30)
            ]
        );
        assert_eq!(block_seconds(i64::MAX), Some(30));
    }

    #[test]
    fn account_keys_are_hashed_and_normalised() {
        let k = account_key(Scope::Login, "Alice ");
        assert_eq!(k, account_key(Scope::Login, "alice"));
        assert_ne!(k, account_key(Scope::VerifyTotp, "alice"));
        assert!(!k.contains("alice"));
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        let h = headers(&["203.0.113.9"]);
        assert_eq!(none.client_ip(ip("198.51.100.1"), &h), ip("198.51.100.1"));

        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "2001:db8::1".into()]).unwrap();
        // From a stranger the header is ignored.
        assert_eq!(
            trusted.client_ip(ip("198.51.100.1"), &h),
            ip("198.51.100.1")
        );
        // From a proxy: the rightmost address that is not a proxy; the
        // client's own leftmost claims are skipped.
        let h = headers(&["1.1.1.1, 203.0.113.9, 10.1.2.3"]);
        assert_eq!(trusted.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Several headers read as one list; ports and brackets allowed.
        let h = headers(&["1.1.1.1", "[2001:db8::7]:443, 10.0.0.2:80"]);
        assert_eq!(trusted.client_ip(ip("2001:db8::1"), &h), ip("2001:db8::7"));
        // Garbage stops at the hop that appended it.
        let h = headers(&["203.0.113.9, nonsense, 10.0.0.5"]);
        assert_eq!(trusted.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.5"));
        // No header: the proxy itself.
        assert_eq!(
            trusted.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        // IPv4-mapped peers count as IPv4.
        let h = headers(&["203.0.113.9"]);
        assert_eq!(
            trusted.client_ip(ip("::ffff:10.0.0.1"), &h),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_proxies_parse_and_match() {
        let t = TrustedProxies::parse(&["192.168.0.0/16".into(), "::1".into(), "0.0.0.0/0".into()])
            .unwrap();
        assert!(t.contains(ip("192.168.4.4")));
        assert!(t.contains(ip("8.8.8.8")), "/0 matches everything IPv4");
        assert!(t.contains(ip("::1")));
        assert!(!t.contains(ip("::2")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0", "x/8", "10.0.0.0/"] {
            assert!(
                TrustedProxies::parse(&[bad.into()])
                    .unwrap_err()
                    .contains(bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(ip_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(ip_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(ip_key(ip("1.2.3.4")), ip("1.2.3.4"));
    }

    async fn limits(clock: Arc<ManualClock>, dir: &tempfile::TempDir) -> RateLimits {
        let config = RateLimitsConfig {
            login: IpQuotaConfig {
                burst: 2,
                per_minute: 2,
            },
            ..RateLimitsConfig::default()
        };
        let url = format!("sqlite://{}/rl.db", dir.path().display());
        let store = crate::store::SqlStore::connect(&url, 1).await.unwrap();
        RateLimits::new(
            &config,
            TrustedProxies::default(),
            Arc::new(store),
            clock,
            crate::metrics::Metrics::default(),
        )
    }

    #[tokio::test]
    async fn per_ip_quota_on_the_injected_clock_and_purged_when_idle() {
        let clock = Arc::new(ManualClock::new());
        let dir = tempfile::tempdir().unwrap();
        let l = limits(clock.clone(), &dir).await;
        let a = ip("198.51.100.1");
        // Burst 2, one back every 30 s.
        assert_eq!(l.check_ip(Scope::Login, a), Ok(()));
        assert_eq!(l.check_ip(Scope::Login, a), Ok(()));
        assert_eq!(
            l.check_ip(Scope::Login, a),
            Err(RateLimited {
                scope: Scope::Login,
                retry_after: 30
            })
        );
        // Other addresses and other scopes are not affected.
        assert_eq!(l.check_ip(Scope::Login, ip("198.51.100.2")), Ok(()));
        assert_eq!(l.check_ip(Scope::Register, a), Ok(()));
        clock.advance(29);
        assert_eq!(
            l.check_ip(Scope::Login, a).unwrap_err().retry_after,
            1,
            "the exact remaining time"
        );
        clock.advance(1);
        assert_eq!(l.check_ip(Scope::Login, a), Ok(()));
        assert_eq!(l.tracked_ips(Scope::Login), 2);
        // Once every state is back to fresh, the next check purges them.
        clock.advance(PURGE_INTERVAL_SECONDS + 60);
        assert_eq!(l.check_ip(Scope::Register, a), Ok(()));
        assert_eq!(l.tracked_ips(Scope::Login), 0);
    }

    #[test]
    fn json_or_page_by_request() {
        let limited = RateLimited {
            scope: Scope::VerifyCode,
            retry_after: 7,
        };
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let r = limited.respond(&h);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let page = limited.respond(&HeaderMap::new());
        assert_eq!(page.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(page.headers()[header::RETRY_AFTER], "7");
        assert!(page.extensions().get::<PageError>().is_some());
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/json"),
        );
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(wants_json(&h));
    }
}
