//! The introspection endpoint (RFC 7662).
//!
//! Only confidential clients may ask (RFC 7662 §2.1, §4: the caller must
//! authenticate). The answer is `{"active": false}` for anything that is
//! not a live token of this provider: garbage, expired, revoked, signed by
//! another key or issuer (RFC 7662 §2.2).
//! - An access token is described to any authenticated client (resource
//!   servers introspect the tokens of others): `sub`, `client_id`, `scope`,
//!   `exp`, `iat`, `token_type` `Bearer`, `iss`, `aud`, `jti`, `sid`.
//! - A refresh token is described only to the client it was issued to
//!   (RFC 7662 §4: a refresh token is no one else's business); to others it
//!   is inactive.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::client_auth::{authenticate_confidential, parse_form};
use super::revoke::MAX_TOKEN_LEN;
use super::token::live_refresh;
use super::{AppState, Client};
use crate::error::OAuthError;
use crate::secret::hash;
use crate::store::StoreError;
use crate::web::{no_store, WebError};

/// Claims of an access token an introspection answer repeats.
const ACCESS_CLAIMS: &[&str] = &[
    "sub",
    "client_id",
    "scope",
    "exp",
    "iat",
    "iss",
    "aud",
    "jti",
    "sid",
];

pub async fn introspect(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match handle(&st, &headers, &body).await {
        Ok(v) => (StatusCode::OK, no_store(), Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn inactive() -> Value {
    json!({"active": false})
}

async fn handle(st: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Value, WebError> {
    let params = parse_form(headers, body)?;
    let client = authenticate_confidential(st, headers, &params)?;
    let token = params
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    if token.len() > MAX_TOKEN_LEN {
        return Ok(inactive());
    }
    let now = st.now();
    // The hint only orders the look-ups (RFC 7662 §2.1).
    let result = if params.get("token_type_hint") == Some("refresh_token") {
        match refresh(st, client, token, now).await {
            Ok(None) => access(st, token, now).await,
            other => other,
        }
    } else {
        match access(st, token, now).await {
            Ok(None) => refresh(st, client, token, now).await,
            other => other,
        }
    };
    match result {
        Ok(answer) => Ok(answer.unwrap_or_else(inactive)),
        Err(e) => {
            tracing::error!(error = %e, "storage failure at the introspection endpoint");
            Err(OAuthError::temporarily_unavailable("try again later").into())
        }
    }
}

/// The answer for a refresh token, `None` when `token` is not one.
async fn refresh(
    st: &AppState,
    client: &Client,
    token: &str,
    now: i64,
) -> Result<Option<Value>, StoreError> {
    let Some(status) = st.store.refresh_status(&hash(token)).await? else {
        return Ok(None);
    };
    if status.row.client_id != client.id {
        return Ok(Some(inactive()));
    }
    let Some(data) = live_refresh(st, &status, now).await? else {
        return Ok(Some(inactive()));
    };
    Ok(Some(json!({
        "active": true,
        "sub": st.customizer.subject(&data.identity),
        "client_id": status.row.client_id,
        "scope": data.scopes.join(" "),
        "exp": status.row.expires_at,
        "iat": status.row.issued_at,
        "token_type": "refresh_token",
    })))
}

/// The answer for one of our access tokens, `None` when `token` is not one
/// (garbage, foreign, expired).
async fn access(st: &AppState, token: &str, now: i64) -> Result<Option<Value>, StoreError> {
    let Ok(claims) = st.keys.verify(token, "at+jwt", st.issuer(), now).await else {
        return Ok(None);
    };
    // No leeway here: past `exp` the token is inactive (RFC 7662 §2.2).
    if claims
        .get("exp")
        .and_then(Value::as_i64)
        .is_none_or(|exp| exp <= now)
    {
        return Ok(None);
    }
    if super::revocation::access_token_revoked(&*st.store, &claims, now).await? {
        return Ok(Some(inactive()));
    }
    let mut answer: Map<String, Value> = claims
        .into_iter()
        .filter(|(k, _)| ACCESS_CLAIMS.contains(&k.as_str()))
        .collect();
    answer.insert("active".into(), json!(true));
    answer.insert("token_type".into(), json!("Bearer"));
    Ok(Some(Value::Object(answer)))
}
