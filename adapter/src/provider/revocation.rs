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

/// True when the verified access token `claims` was revoked.
pub async fn access_token_revoked(
    store: &dyn Store,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<bool, StoreError> {
    if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
        if store.is_revoked(jti, now).await? {
            return Ok(true);
        }
    }
    match claims.get("sid").and_then(Value::as_str) {
        Some(sid) => store.is_revoked(&session_marker(sid), now).await,
        None => Ok(false),
    }
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
