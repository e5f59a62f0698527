//! Revoked access tokens. Access tokens are JWTs that resource servers may
//! verify on their own; this provider still answers for them at userinfo
//! and introspection: a token is dead when its own `jti` was revoked, or
//! when the session it belongs to (`sid`) was ended (logout, refresh-token
//! reuse). Both live in the store's `revoked_tokens` table, so every replica
//! agrees.

use serde_json::{Map, Value};

use crate::store::{Store, StoreError};

/// The marker that revokes every access token of session `sid`.
pub fn session_marker(sid: &str) -> String {
    format!("sid:{sid}")
}

/// True when the verified access token `claims` was revoked: itself (its
/// `jti`), its session (`sid`), or its refresh family (named in its `jti`,
/// RFC 6749 §4.1.2 and RFC 7009 §2.1: tokens of a revoked grant die with
/// it, those of a refresh too). One store query.
pub async fn access_token_revoked(
    store: &dyn Store,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<bool, StoreError> {
    let jti = claims.get("jti").and_then(Value::as_str);
    let session = claims
        .get("sid")
        .and_then(Value::as_str)
        .map(session_marker);
    let family = jti.map(|j| super::token::family_marker(super::token::family_of_jti(j)));
    let ids: Vec<&str> = jti
        .into_iter()
        .chain(session.as_deref())
        .chain(family.as_deref())
        .collect();
    store.any_revoked(&ids, now).await
}

/// Revokes every access token of session `sid` that could still be valid
/// at `until`, and every refresh token bound to it.
pub async fn revoke_session_tokens(
    store: &dyn Store,
    sid: &str,
    now: i64,
    until: i64,
) -> Result<(), StoreError> {
    store.revoke_token(&session_marker(sid), until).await?;
    store.revoke_refresh_of_session(sid, now).await?;
    Ok(())
}
