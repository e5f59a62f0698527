//! The receiver of OpenID Connect Back-Channel Logout 1.0:
//! `POST /backchannel-logout` with a form parameter `logout_token` (§2.5).
//!
//! The logout token is validated as §2.6 asks: a JWS with `typ: logout+jwt`
//! signed with a key of the provider's JWKS (algorithm from the allow-list
//! [`crate::tokens::ALLOWED_ALGS`], never the header's word alone), `iss` the
//! configured issuer, `aud` our client id, `iat` and `exp` present (`exp`
//! not passed), `events` holding the back-channel logout event as a JSON
//! object, a `sid` or a `sub`, and no `nonce`. Then every session of that
//! `sid` (or, without one, of that `sub`) is dropped, and the browsers that
//! held them see a line saying so on the home page.
//!
//! Answers (§2.8): 200 when the token was valid (whether or not a session
//! matched), 400 with `{"error": "invalid_request"}` otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{json, Value};

use crate::startup::AppState;
use crate::store::{ExpiringMap, MAX_ENTRIES};
use crate::tokens::{Claims, ALLOWED_ALGS, LEEWAY_SECS};

/// The event a logout token carries (§2.4).
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Route of the receiver.
pub const PATH: &str = "/backchannel-logout";
/// How long a browser is told that the provider logged it out.
const NOTICE_TTL: Duration = Duration::from_secs(60 * 60);

/// What the receiver remembers: how many valid logout tokens arrived, and
/// which local sessions they ended (by session id, so the browser that
/// held one can be told).
pub struct Received {
    count: AtomicU64,
    ended: ExpiringMap<String>,
}

impl Default for Received {
    fn default() -> Self {
        Received {
            count: AtomicU64::new(0),
            ended: ExpiringMap::new(NOTICE_TTL, MAX_ENTRIES),
        }
    }
}

impl Received {
    /// Valid logout tokens received so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// The line to show a browser whose session `session_id` a back-channel
    /// logout ended.
    pub fn notice_for(&self, session_id: Option<&str>) -> Option<String> {
        let sid = self.ended.get(session_id?)?;
        Some(format!(
            "The provider ended your session (back-channel logout, sid {sid})."
        ))
    }
}

/// Why a logout token was refused (§2.6).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("logout_token is missing")]
    Missing,
    #[error("not a JWS with typ logout+jwt")]
    Type,
    #[error("algorithm not allowed")]
    Alg,
    #[error("no key of the provider matches")]
    Key,
    #[error("{0}")]
    Claims(String),
}

fn refuse(e: &Invalid) -> Response {
    tracing::info!(error = %e, "back-channel logout refused");
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "error": "invalid_request", "error_description": e.to_string() })),
    )
        .into_response()
}

/// Validates a logout token against `jwks` (§2.6) and returns its claims.
pub fn validate(
    token: &str,
    jwks: &jsonwebtoken::jwk::JwkSet,
    issuer: &str,
    client_id: &str,
) -> Result<Claims, Invalid> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid::Type)?;
    if !header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("logout+jwt"))
    {
        return Err(Invalid::Type);
    }
    if !ALLOWED_ALGS.contains(&header.alg) {
        return Err(Invalid::Alg);
    }
    let jwk = header
        .kid
        .as_deref()
        .and_then(|kid| jwks.find(kid))
        .ok_or(Invalid::Key)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| Invalid::Key)?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[client_id]);
    validation.set_required_spec_claims(&["iss", "aud", "iat", "exp"]);
    validation.leeway = LEEWAY_SECS;
    let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|e| Invalid::Claims(format!("signature or claims: {e}")))?
        .claims;
    if !claims.get("iat").is_some_and(Value::is_i64) {
        return Err(Invalid::Claims("iat is not a number".into()));
    }
    if !claims
        .get("events")
        .and_then(|e| e.get(EVENT))
        .is_some_and(Value::is_object)
    {
        return Err(Invalid::Claims(
            "events lacks the back-channel logout event".into(),
        ));
    }
    let has = |k: &str| claims.get(k).and_then(Value::as_str).is_some();
    if !has("sid") && !has("sub") {
        return Err(Invalid::Claims("neither sid nor sub".into()));
    }
    if claims.contains_key("nonce") {
        return Err(Invalid::Claims("a logout token never has a nonce".into()));
    }
    Ok(claims)
}

/// `POST /backchannel-logout`.
pub async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let token = is_form
        .then(|| {
            url::form_urlencoded::parse(&body)
                .find(|(k, v)| k == "logout_token" && !v.is_empty())
                .map(|(_, v)| v.into_owned())
        })
        .flatten();
    let Some(token) = token else {
        return refuse(&Invalid::Missing);
    };
    let provider = match state.provider.get().await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "back-channel logout: provider unavailable");
            return (StatusCode::SERVICE_UNAVAILABLE, "provider unavailable").into_response();
        }
    };
    let issuer = state.config.issuer.as_str();
    let client_id = state.config.client_id.as_str();
    let claims = match validate(&token, &provider.jwks, issuer, client_id) {
        // The provider may have rotated its keys: look once more.
        Err(Invalid::Key) => match state.provider.refresh(&provider).await {
            Ok(p) => validate(&token, &p.jwks, issuer, client_id),
            Err(_) => Err(Invalid::Key),
        },
        other => other,
    };
    let claims = match claims {
        Ok(c) => c,
        Err(e) => return refuse(&e),
    };
    let sid = claims.get("sid").and_then(Value::as_str);
    let sub = claims.get("sub").and_then(Value::as_str);
    let dropped = state.sessions.remove_where(|s| {
        let own = |k: &str| s.id_token_claims.get(k).and_then(Value::as_str);
        match sid {
            Some(sid) => own("sid") == Some(sid),
            None => own("sub") == sub,
        }
    });
    state.backchannel.count.fetch_add(1, Ordering::SeqCst);
    for id in &dropped {
        state
            .backchannel
            .ended
            .insert(id.clone(), sid.unwrap_or("-").to_owned());
    }
    // The pages' record of logouts (also read by `/logged-out`).
    state
        .backchannel_logouts
        .mark(crate::store::BackchannelLogout {
            sid: sid.map(str::to_owned),
            sub: sub.map(str::to_owned),
            received_at: state.clock.now(),
            sessions_ended: dropped.len(),
        });
    tracing::info!(sessions = dropped.len(), "back-channel logout");
    (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response()
}
