//! OpenID Connect Back-Channel Logout 1.0: when a session ends, every client
//! it logged in to that registered a `backchannel_logout_uri` gets a signed
//! logout token (§2.4) by a direct POST (§2.5).
//!
//! Deliveries go through a persisted queue (the store's
//! `backchannel_logouts` table), so a delivery survives a restart and any
//! replica can retry it. [`deliver_due`] makes one attempt at every due
//! delivery; each attempt is claimed first with compare-and-swap, so two
//! workers never send one attempt twice. A failed attempt is retried with
//! exponential backoff ([`backoff`]) up to [`MAX_ATTEMPTS`] attempts; the
//! injected clock decides when a retry is due. [`run_worker`] calls
//! [`deliver_due`] every [`WORKER_INTERVAL`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::clock::SharedClock;
use crate::connector::oidc::http_client;
use crate::customizer::Identity;
use crate::provider::AppState;
use crate::secret::random_token;
use crate::store::{BackchannelRow, Store, StoreError};

/// The event of a logout token (Back-Channel Logout 1.0 §2.4).
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// `typ` of a logout token (Back-Channel Logout 1.0 §2.4, RFC 8725 §3.11).
pub const TOKEN_TYPE: &str = "logout+jwt";
/// Attempts per delivery, the first included.
pub const MAX_ATTEMPTS: i64 = 5;
/// Wait after the first failed attempt, seconds; doubled after each.
pub const FIRST_RETRY_SECONDS: i64 = 5;
/// Lifetime of a logout token, seconds: longer than every retry together
/// (5 + 10 + 20 + 40 s) so the last attempt still carries a valid token.
pub const TOKEN_TTL_SECONDS: i64 = 300;
/// How long a finished delivery is kept (for inspection), seconds.
const KEEP_SECONDS: i64 = 24 * 3600;
/// How often the worker looks for due deliveries.
pub const WORKER_INTERVAL: Duration = Duration::from_secs(1);
/// Deliveries per pass.
const BATCH: i64 = 100;

/// Seconds to wait after attempt number `attempt` (1-based) failed.
pub fn backoff(attempt: i64) -> i64 {
    FIRST_RETRY_SECONDS.saturating_mul(1i64 << (attempt - 1).clamp(0, 30))
}

/// The claims of a logout token for `client_id` (Back-Channel Logout 1.0
/// §2.4): `iss`, `aud`, `iat`, `exp`, `jti`, `sub`, `sid` and `events`;
/// never `nonce` (§2.4: it would let the token pass as an ID token).
pub fn logout_token_claims(
    issuer: &str,
    client_id: &str,
    sub: &str,
    sid: &str,
    now: i64,
) -> Map<String, Value> {
    let mut claims = Map::new();
    for (k, v) in [
        ("iss", json!(issuer)),
        ("aud", json!(client_id)),
        ("iat", json!(now)),
        ("exp", json!(now + TOKEN_TTL_SECONDS)),
        ("jti", json!(random_token())),
        ("sub", json!(sub)),
        ("sid", json!(sid)),
        ("events", json!({ EVENT: {} })),
    ] {
        claims.insert(k.into(), v);
    }
    claims
}

/// Why logout tokens could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing a logout token failed: {0}")]
    Sign(#[from] crate::keys::KeyError),
}

/// Queues one logout token for every client of `client_ids` that registered
/// a `backchannel_logout_uri`, due now. Returns how many were queued.
pub async fn enqueue(
    st: &AppState,
    sid: &str,
    identity: &Identity,
    client_ids: &[String],
) -> Result<usize, EnqueueError> {
    let now = st.now();
    let sub = st.customizer.subject(identity);
    let mut queued = 0;
    for client in client_ids.iter().filter_map(|id| st.clients.get(id)) {
        let Some(uri) = &client.backchannel_logout_uri else {
            continue;
        };
        let claims = logout_token_claims(st.issuer(), &client.id, &sub, sid, now);
        let token = st.keys.sign(TOKEN_TYPE, &claims)?;
        st.store
            .enqueue_backchannel(&BackchannelRow {
                id: random_token(),
                sid: sid.to_string(),
                client_id: client.id.clone(),
                uri: uri.clone(),
                token,
                attempts: 0,
                next_attempt_at: now,
                created_at: now,
                expires_at: now + KEEP_SECONDS,
                done_at: None,
                outcome: None,
            })
            .await?;
        queued += 1;
    }
    Ok(queued)
}

/// What one pass of [`deliver_due`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Attempts made (claimed by this pass).
    pub attempted: u32,
    pub delivered: u32,
    /// Deliveries that failed their last allowed attempt.
    pub given_up: u32,
}

/// One attempt at every delivery due at `now`.
pub async fn deliver_due(
    store: &dyn Store,
    http: &reqwest::Client,
    now: i64,
) -> Result<DeliveryReport, StoreError> {
    let mut report = DeliveryReport::default();
    for row in store.due_backchannel(now, BATCH).await? {
        let attempt = row.attempts + 1;
        if !store
            .claim_backchannel(&row.id, row.attempts, now + backoff(attempt))
            .await?
        {
            // Another worker took this attempt.
            continue;
        }
        report.attempted += 1;
        match post(http, &row).await {
            Ok(()) => {
                store.finish_backchannel(&row.id, now, "delivered").await?;
                report.delivered += 1;
                tracing::info!(client = %row.client_id, attempt, "back-channel logout delivered");
            }
            Err(e) if attempt >= MAX_ATTEMPTS => {
                store.finish_backchannel(&row.id, now, "failed").await?;
                report.given_up += 1;
                tracing::warn!(client = %row.client_id, attempt, error = %e, "back-channel logout failed; giving up");
            }
            Err(e) => {
                tracing::info!(client = %row.client_id, attempt, error = %e, retry_in = backoff(attempt), "back-channel logout failed; will retry");
            }
        }
    }
    Ok(report)
}

/// Back-Channel Logout 1.0 §2.5: the token as the form parameter
/// `logout_token`; the RP answers 200 (or 204) when it logged out.
async fn post(http: &reqwest::Client, row: &BackchannelRow) -> Result<(), String> {
    let response = http
        .post(&row.uri)
        .form(&[("logout_token", row.token.as_str())])
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", response.status()))
    }
}

/// Delivers due logout tokens every [`WORKER_INTERVAL`] until aborted. Old
/// deliveries and logout states go with the provider's garbage collection
/// (`Store::delete_expired`).
pub async fn run_worker(store: Arc<dyn Store>, clock: SharedClock) {
    let http = match http_client() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "back-channel logout worker cannot start");
            return;
        }
    };
    let mut tick = tokio::time::interval(WORKER_INTERVAL);
    loop {
        tick.tick().await;
        if let Err(e) = deliver_due(&*store, &http, clock.now()).await {
            tracing::warn!(error = %e, "back-channel logout delivery pass failed");
        }
    }
}

/// Starts one delivery pass now, in the background (right after a logout,
/// instead of waiting for the worker's next tick).
pub fn deliver_soon(store: Arc<dyn Store>, now: i64) {
    tokio::spawn(async move {
        let http = match http_client() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "back-channel logout: no HTTP client");
                return;
            }
        };
        if let Err(e) = deliver_due(&*store, &http, now).await {
            tracing::warn!(error = %e, "back-channel logout delivery pass failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_all_retries_fit_in_the_token_lifetime() {
        assert_eq!(
            (1..MAX_ATTEMPTS).map(backoff).collect::<Vec<_>>(),
            vec![5, 10, 20, 40]
        );
        let total: i64 = (1..MAX_ATTEMPTS).map(backoff).sum();
        assert!(total < TOKEN_TTL_SECONDS, "{total}");
    }

    #[test]
    fn logout_token_claims_have_the_spec_shape() {
        let c = logout_token_claims("https://op", "app", "u1", "s1", 1000);
        let mut keys: Vec<&str> = c.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            vec!["aud", "events", "exp", "iat", "iss", "jti", "sid", "sub"]
        );
        assert_eq!(c["events"], json!({ EVENT: {} }));
        assert_eq!(c["exp"], json!(1000 + TOKEN_TTL_SECONDS));
    }
}
