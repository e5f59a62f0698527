//! The revocation endpoint (RFC 7009).
//!
//! The client authenticates as at the token endpoint (RFC 7009 §2.1), then
//! names a token: a refresh token (its whole family is revoked, and the
//! access token issued with it, RFC 7009 §2.1) or an access token (revoked
//! by `jti` until its `exp`; userinfo and introspection refuse it from
//! then on). `token_type_hint` only decides which kind is looked up first
//! (RFC 7009 §2.1: the server extends its search when the hint is wrong).
//!
//! The answer is 200 whether or not the token was found (RFC 7009 §2.2).
//! A client cannot revoke another client's tokens: such a request is also
//! answered 200 and revokes nothing. RFC 7009 §2.1 asks the server to refuse
//! it; answering like for an unknown token refuses it just as well, and
//! tells the caller nothing about whether the token exists, which an
//! `invalid_client`/`unauthorized_client` error would.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::client_auth::{authenticate, parse_form};
use super::token::{revoke_refresh_family, RefreshData};
use super::{AppState, Client};
use crate::error::OAuthError;
use crate::keys::LEEWAY_SECONDS;
use crate::secret::hash;
use crate::store::{codec, StoreError};
use crate::web::{no_store, WebError};

/// No token this provider issues is longer; a longer one is unknown.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

pub async fn revoke(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match handle(&st, &headers, &body).await {
        Ok(()) => (StatusCode::OK, no_store()).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn handle(st: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), WebError> {
    let params = parse_form(headers, body)?;
    let client = authenticate(st, headers, &params)?;
    let token = params
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    if token.len() > MAX_TOKEN_LEN {
        return Ok(());
    }
    let now = st.now();
    let result = if params.get("token_type_hint") == Some("access_token") {
        match revoke_access(st, client, token, now).await {
            Ok(false) => revoke_refresh(st, client, token, now).await,
            other => other,
        }
    } else {
        match revoke_refresh(st, client, token, now).await {
            Ok(false) => revoke_access(st, client, token, now).await,
            other => other,
        }
    };
    result.map(|_| ()).map_err(|e| {
        tracing::error!(error = %e, "storage failure at the revocation endpoint");
        // RFC 7009 §2.2.1: the client may retry later.
        OAuthError::temporarily_unavailable("try again later").into()
    })
}

/// Revokes a refresh token of `client` and its family; true when `token`
/// is a refresh token (of any client).
async fn revoke_refresh(
    st: &AppState,
    client: &Client,
    token: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let Some(status) = st.store.refresh_status(&hash(token)).await? else {
        return Ok(false);
    };
    if status.row.client_id != client.id {
        tracing::warn!(client = %client.id, "revocation of another client's refresh token ignored");
        return Ok(true);
    }
    let data: RefreshData = codec::decode(&status.row.data)?;
    revoke_refresh_family(
        &*st.store,
        &status.row.family_id,
        data.absolute_expires_at,
        now,
    )
    .await?;
    let until = now + st.tokens.access_token_ttl_seconds + LEEWAY_SECONDS as i64;
    st.store.revoke_token(&data.access_jti, until).await?;
    Ok(true)
}

/// Revokes an access token of `client` by its `jti`; true when `token` is
/// one of our valid access tokens (of any client).
async fn revoke_access(
    st: &AppState,
    client: &Client,
    token: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let Ok(claims) = st.keys.verify(token, "at+jwt", st.issuer(), now).await else {
        return Ok(false);
    };
    if claims.get("client_id").and_then(Value::as_str) != Some(client.id.as_str()) {
        tracing::warn!(client = %client.id, "revocation of another client's access token ignored");
        return Ok(true);
    }
    let (Some(jti), Some(exp)) = (
        claims.get("jti").and_then(Value::as_str),
        claims.get("exp").and_then(Value::as_i64),
    ) else {
        return Ok(true);
    };
    st.store
        .revoke_token(jti, exp + LEEWAY_SECONDS as i64)
        .await?;
    Ok(true)
}
