//! The token endpoint (RFC 6749 §3.2, §4.1.3, §4.4, §6; OIDC Core §3.1.3,
//! §12) and the refresh-token lifecycle (RFC 9700 §4.14).
//!
//! Client authentication ([`super::client_auth`]), then one of the grants
//! the client is allowed:
//! - `authorization_code`: the code is consumed atomically before anything
//!   else is checked, so a code can never be redeemed twice (RFC 6749
//!   §4.1.2), and every binding of the code is checked against the request
//!   (client and redirect URI: §4.1.3; PKCE: RFC 7636 §4.6). Clients allowed
//!   `refresh_token` also get a refresh token.
//! - `refresh_token`: rotation on every use (RFC 9700 §4.14.2): a new
//!   access token, ID token and refresh token, the presented one dead.
//! - `client_credentials` (RFC 6749 §4.4): an access token for the client
//!   itself, confidential clients only.
//!
//! `password` and the implicit grant are never offered (RFC 9700 §2.4,
//! §2.1.2): they answer `unsupported_grant_type`.
//!
//! Refresh tokens are opaque 256-bit random values, stored only as their
//! SHA-256. All tokens rotated from one authorization code form a family
//! whose id is the code's grant id, so a replayed code reaches them too.
//!
//! There is no grace window for a rotated token: a refresh token used twice
//! is reuse, whatever the delay (RFC 9700 §4.14.2), and revokes its family
//! and its session. A client that loses the response of a refresh (network
//! failure) must log the user in again; the honest alternative to a grace
//! window, which would let an attacker racing the client win silently.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::client_auth::{authenticate, parse_form, Params};
use super::revocation::revoke_session_tokens;
use super::{AppState, Client, GrantType};
use crate::accounts::LOCAL_CONNECTOR_ID;
use crate::connector::{ConnectorError, ConnectorKind};
use crate::customizer::{ClaimsContext, Identity, TokenKind, RESERVED_CLAIMS};
use crate::error::{ErrorCode, OAuthError};
use crate::flow::CodeRecord;
use crate::secret::{at_hash, ct_eq, hash, is_valid_pkce_verifier, pkce_s256, random_token};
use crate::store::{
    codec, FirstRefresh, Redeemed, RefreshRow, RefreshStatus, Rotation, Store, StoreError,
    FAMILY_MARKER_PREFIX,
};
use crate::web::{no_store, WebError};

/// A token-endpoint error, rendered as RFC 6749 §5.2 JSON.
type TokenError = WebError;

/// The scope that lets a refresh token outlive the session (OIDC Core §11).
pub const OFFLINE_ACCESS: &str = "offline_access";

pub async fn token(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match handle(&st, &headers, &body).await {
        Ok(v) => (StatusCode::OK, no_store(), Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn handle(st: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Value, TokenError> {
    // RFC 6749 §3.2: form encoding only; §3.1: no repeated parameters.
    let params = parse_form(headers, body)?;
    let client = authenticate(st, headers, &params)?;
    let grant_type = params
        .get("grant_type")
        .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?;
    // RFC 6749 §5.2: a grant this server does not offer is
    // unsupported_grant_type; one it offers but not to this client is
    // unauthorized_client.
    let grant = GrantType::parse(grant_type).ok_or_else(|| {
        OAuthError::new(
            ErrorCode::UnsupportedGrantType,
            "supported: authorization_code, refresh_token, client_credentials",
        )
    })?;
    if !client.allows(grant) || (grant == GrantType::ClientCredentials && client.public) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            format!("this client may not use {}", grant.as_str()),
        )
        .into());
    }
    let response = match grant {
        GrantType::AuthorizationCode => authorization_code(st, client, &params).await,
        GrantType::RefreshToken => refresh_token(st, client, &params).await,
        GrantType::ClientCredentials => client_credentials(st, client, &params),
    }?;
    st.metrics.tokens_issued(grant.as_str(), &response);
    Ok(response)
}

async fn authorization_code(
    st: &AppState,
    client: &Client,
    params: &Params,
) -> Result<Value, TokenError> {
    let param = |k: &str| params.get(k);
    let code = param("code").ok_or_else(|| OAuthError::invalid_request("code is required"))?;
    let verifier = param("code_verifier");
    if verifier.is_some_and(|v| !is_valid_pkce_verifier(v)) {
        // RFC 7636 §4.1.
        return Err(OAuthError::invalid_request(
            "code_verifier must be 43-128 characters of [A-Za-z0-9-._~]",
        )
        .into());
    }
    let now = st.now();
    // The grant id (the jti of the access token this code will issue, and
    // the family id of its refresh tokens) is recorded by the statement that
    // redeems the code: a replay, even one racing this request, finds it and
    // revokes what the code issued (RFC 6749 §4.1.2).
    let jti = random_token();
    let refresh_token = client.allows(GrantType::RefreshToken).then(random_token);
    // The checks run inside the redemption's transaction, after the code is
    // consumed (a failed check burns the code too); their verdict comes out
    // through this channel, the refresh row they allow goes in with it.
    let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel();
    let first: FirstRefresh = {
        let check = CodeCheck {
            client: client.clone(),
            redirect_uri: param("redirect_uri").map(str::to_string),
            verifier: verifier.map(str::to_string),
            now,
        };
        let (jti, refresh_hash) = (jti.clone(), refresh_token.as_deref().map(hash));
        let (absolute_ttl, idle_ttl) = (
            st.tokens.refresh_token_absolute_ttl_seconds,
            st.tokens.refresh_token_idle_ttl_seconds,
        );
        Box::new(move |data: &str, expires_at: i64| {
            let verdict = check.run(data, expires_at);
            let row = match (&verdict, refresh_hash) {
                (Ok(record), Some(token_hash)) => {
                    let data = first_refresh_data(record, &jti, now, absolute_ttl);
                    Some(refresh_row(
                        token_hash,
                        &jti,
                        &check.client.id,
                        &data,
                        now,
                        idle_ttl,
                    )?)
                }
                _ => None,
            };
            // The receiver waits below; it cannot be gone.
            let _ = verdict_tx.send(verdict);
            Ok(row)
        })
    };
    let refresh_issued = match st
        .store
        .redeem_code_and_issue(&hash(code), &jti, now, first)
        .await
    {
        Ok(Redeemed::Fresh { refresh_issued, .. }) => refresh_issued,
        Ok(Redeemed::Replayed { grant_id }) => {
            tracing::warn!(client = %client.id, "authorization code replayed; revoking what it issued");
            if let Some(grant_id) = grant_id {
                let until =
                    now + st.tokens.access_token_ttl_seconds + crate::keys::LEEWAY_SECONDS as i64;
                st.store
                    .revoke_token(&grant_id, until)
                    .await
                    .map_err(|e| storage_failure(&e))?;
                let family_until = now + st.tokens.refresh_token_absolute_ttl_seconds;
                revoke_refresh_family(&*st.store, &grant_id, family_until, now)
                    .await
                    .map_err(|e| storage_failure(&e))?;
            }
            return Err(OAuthError::invalid_grant("the code was already used").into());
        }
        Ok(Redeemed::Missing) => return Err(OAuthError::invalid_grant("unknown code").into()),
        Err(e) => return Err(storage_failure(&e)),
    };
    let record = match verdict_rx.await {
        Ok(verdict) => verdict?,
        // A fresh redemption always ran the checks.
        Err(_) => return Err(OAuthError::server_error("the code was not checked").into()),
    };
    let request = &record.request;
    let grant = Grant {
        client,
        identity: &record.identity,
        scopes: &request.scopes,
        nonce: request.nonce.as_deref(),
        auth_time: record.auth_time,
        sid: &record.sid,
        in_session: true,
        jti: &jti,
    };
    let mut response = mint(st, &grant, now).map_err(signing_failure)?;
    if let (true, Some(refresh)) = (refresh_issued, refresh_token) {
        response.insert("refresh_token".into(), json!(refresh));
    }
    Ok(Value::Object(response))
}

/// What a token request must match in the code it redeems (RFC 6749
/// §4.1.3, RFC 7636 §4.6), checked after the code is consumed.
struct CodeCheck {
    client: Client,
    redirect_uri: Option<String>,
    verifier: Option<String>,
    now: i64,
}

impl CodeCheck {
    /// The code's record when every check passes, the token endpoint's
    /// answer otherwise.
    fn run(&self, data: &str, expires_at: i64) -> Result<CodeRecord, TokenError> {
        if expires_at <= self.now {
            return Err(OAuthError::invalid_grant("the code has expired").into());
        }
        let record: CodeRecord = codec::decode(data).map_err(|e| storage_failure(&e))?;
        let request = &record.request;
        // RFC 6749 §4.1.3: the code belongs to the client that asked for it…
        if request.client_id != self.client.id {
            return Err(OAuthError::invalid_grant("the code was issued to another client").into());
        }
        // …and comes with the redirect_uri of the authorization request.
        if self.redirect_uri.as_deref() != Some(request.redirect_uri.as_str()) {
            return Err(OAuthError::invalid_grant(
                "redirect_uri does not match the authorization request",
            )
            .into());
        }
        if !upstream_allowed(&self.client, &record.identity) {
            return Err(not_allowed().into());
        }
        // RFC 7636 §4.6; RFC 9700 §4.8.2 (no downgrade either way).
        match (&request.code_challenge, self.verifier.as_deref()) {
            (Some(challenge), Some(v)) => {
                if !ct_eq(challenge, &pkce_s256(v)) {
                    return Err(OAuthError::invalid_grant("PKCE verification failed").into());
                }
            }
            (Some(_), None) => {
                return Err(OAuthError::invalid_grant("code_verifier is required").into())
            }
            (None, Some(_)) => {
                return Err(OAuthError::invalid_grant(
                    "code_verifier sent but no code_challenge was",
                )
                .into())
            }
            (None, None) => {}
        }
        Ok(record)
    }
}

/// The first refresh token of the grant `jti` a code started.
fn first_refresh_data(record: &CodeRecord, jti: &str, now: i64, absolute_ttl: i64) -> RefreshData {
    let request = &record.request;
    RefreshData {
        identity: record.identity.clone(),
        scopes: request.scopes.clone(),
        auth_time: record.auth_time,
        sid: record.sid.clone(),
        // OIDC Core §11: offline_access is granted when the client may have
        // it and asked for it (the request's scopes are already limited to
        // the client's allowed scopes, so being there means both). The
        // client's configuration is the consent this provider records.
        offline: request.scopes.iter().any(|s| s == OFFLINE_ACCESS),
        absolute_expires_at: now + absolute_ttl,
        access_jti: jti.to_string(),
        // The login that made the code fetched them.
        claims_at: now,
    }
}

/// What a refresh token stands for (persisted under its hash, RFC 6749 §6:
/// bound to the client, the user, the scopes and the session).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshData {
    pub identity: Identity,
    /// The scopes of the original grant; a refresh may narrow the scopes of
    /// the tokens it issues, never those of the grant (RFC 6749 §6).
    pub scopes: Vec<String>,
    pub auth_time: i64,
    /// The session the grant came from (`sid` of the tokens).
    pub sid: String,
    /// Granted `offline_access`: the token outlives its session (OIDC Core
    /// §11). Otherwise it dies with the session (OpenID Back-Channel Logout
    /// 1.0 §2.7).
    pub offline: bool,
    /// No token of the family outlives this, however often rotated.
    pub absolute_expires_at: i64,
    /// The `jti` of the access token issued together with this refresh token.
    pub access_jti: String,
    /// When `identity`'s claims came from the upstream (the login, or the
    /// last upstream refresh); 0 in records older than this field, read
    /// as `auth_time`.
    #[serde(default)]
    pub claims_at: i64,
}

/// The `jti` of an access token of refresh family `family_id`: the family
/// id, a dot, a random part ([`super::revocation::access_token_revoked`]
/// reads the family back from it). The code grant's access token has the
/// family id itself as its `jti`.
pub fn family_jti(family_id: &str, random: &str) -> String {
    format!("{family_id}.{random}")
}

/// The family an access token's `jti` belongs to (see [`family_jti`]); a
/// token from the code grant is the family's first.
pub fn family_of_jti(jti: &str) -> &str {
    jti.split_once('.').map_or(jti, |(family, _)| family)
}

/// The marker in the revoked-token list that kills a whole refresh family,
/// including a token a concurrent rotation inserts after the revocation:
/// every use checks the marker first, so no race outlives it.
pub fn family_marker(family_id: &str) -> String {
    format!("{FAMILY_MARKER_PREFIX}{family_id}")
}

/// Revokes every refresh token of a family (RFC 9700 §4.14.2, RFC 7009 §2.1),
/// now and for good (until `until`).
pub async fn revoke_refresh_family(
    store: &dyn Store,
    family_id: &str,
    until: i64,
    now: i64,
) -> Result<(), StoreError> {
    store.revoke_token(&family_marker(family_id), until).await?;
    store.revoke_family(family_id, now).await?;
    Ok(())
}

/// The stored row of a refresh token (by its hash) of `family_id` for
/// `data`: expires after the idle lifetime, and never after the family's
/// absolute expiry.
fn refresh_row(
    token_hash: String,
    family_id: &str,
    client_id: &str,
    data: &RefreshData,
    now: i64,
    idle_ttl: i64,
) -> Result<RefreshRow, StoreError> {
    Ok(RefreshRow {
        token_hash,
        family_id: family_id.to_string(),
        client_id: client_id.to_string(),
        // Only session-bound tokens are indexed by their session, so ending
        // the session (logout) revokes them and not the offline ones.
        sid: (!data.offline).then(|| data.sid.clone()),
        data: codec::encode(data)?,
        issued_at: now,
        expires_at: (now + idle_ttl).min(data.absolute_expires_at),
    })
}

/// RFC 6749 §6: the scopes a refresh asks for (`requested`, space-separated,
/// duplicates dropped), or all of the grant's without a `scope` parameter;
/// `None` when it asks for one the grant does not have (a refresh may narrow
/// the scope, never widen it).
fn narrowed_scopes(granted: &[String], requested: Option<&str>) -> Option<Vec<String>> {
    let Some(requested) = requested else {
        return Some(granted.to_vec());
    };
    let mut scopes: Vec<String> = Vec::new();
    for s in requested.split(' ').filter(|s| !s.is_empty()) {
        if !granted.iter().any(|g| g == s) {
            return None;
        }
        if !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_string());
        }
    }
    Some(scopes)
}

/// A stored refresh token that can still be used: unused, unrevoked (its
/// family too), unexpired, and, unless offline, its session still alive.
/// Returns its payload.
pub async fn live_refresh(
    st: &AppState,
    status: &RefreshStatus,
    now: i64,
) -> Result<Option<RefreshData>, StoreError> {
    let row = &status.row;
    if status.used_at.is_some() || status.revoked_at.is_some() || row.expires_at <= now {
        return Ok(None);
    }
    if st
        .store
        .is_revoked(&family_marker(&row.family_id), now)
        .await?
    {
        return Ok(None);
    }
    let data: RefreshData = codec::decode(&row.data)?;
    if !data.offline && st.store.session_by_sid(&data.sid, now).await?.is_none() {
        return Ok(None);
    }
    Ok(Some(data))
}

/// A rotated refresh token came back (RFC 9700 §4.14.2): an attacker or the
/// client holds a stale copy, and the server cannot tell which. The whole
/// family dies, and so does the session it belongs to (its single sign-on,
/// its access tokens and its other session-bound refresh tokens).
async fn reuse_detected(
    st: &AppState,
    family_id: &str,
    data: &RefreshData,
    now: i64,
) -> Result<(), StoreError> {
    tracing::warn!("refresh token reused; revoking its family and its session");
    st.metrics.refresh_reuse_detected();
    end_grant(st, family_id, data, now).await
}

/// Fresh claims for the grant of the refresh token `token_hash`: from the
/// local account, read again at every refresh, or from an upstream with a
/// freshness policy when the claims are older than it allows
/// (`on_refresh = "refresh_upstream"`), asked again with its own refresh
/// token. `None`: keep the claims (no policy, young
/// claims, a token the rotation will refuse anyway, or no upstream refresh
/// token kept). When the upstream refuses (RFC 6749 §5.2 `invalid_grant`:
/// the user is gone, the grant revoked), the family and the session end
/// and the answer is `invalid_grant`; an unreachable upstream answers
/// `temporarily_unavailable` and leaves the token usable.
async fn fresh_identity(
    st: &AppState,
    token_hash: &str,
    client_id: &str,
    now: i64,
) -> Result<Option<Identity>, TokenError> {
    let local = st.flows.local_accounts();
    let policies: Vec<_> = st
        .flows
        .connectors()
        .iter()
        .filter_map(|c| match &c.kind {
            ConnectorKind::Callback(cb) => cb.claims_max_age().map(|age| (c.id.as_str(), age, cb)),
            ConnectorKind::Local(_) => None,
        })
        .collect();
    // The common case of a broker costs nothing: no upstream refreshes its
    // claims and there are no local accounts.
    if policies.is_empty() && local.is_none() {
        return Ok(None);
    }
    let Some(status) = st
        .store
        .refresh_status(token_hash)
        .await
        .map_err(|e| storage_failure(&e))?
    else {
        return Ok(None);
    };
    let row = &status.row;
    if status.used_at.is_some()
        || status.revoked_at.is_some()
        || row.expires_at <= now
        || row.client_id != client_id
    {
        return Ok(None);
    }
    let data: RefreshData = codec::decode(&row.data).map_err(|e| storage_failure(&e))?;
    let upstream = data.identity.connector_id.as_str();
    let refreshed = if upstream == LOCAL_CONNECTOR_ID {
        // A local account is read again at every refresh: a disabled or
        // deleted account ends its grants, a changed one gets fresh claims.
        match local {
            Some(authn) => local_identity(authn, &data.identity).await,
            None => Err(ConnectorError::Denied(
                "local accounts are turned off".into(),
            )),
        }
    } else {
        let Some((_, max_age, connector)) = policies.into_iter().find(|(id, _, _)| *id == upstream)
        else {
            return Ok(None);
        };
        let claims_at = if data.claims_at > 0 {
            data.claims_at
        } else {
            data.auth_time
        };
        if max_age > 0 && now - claims_at < max_age {
            return Ok(None);
        }
        connector.refresh(&data.identity).await
    };
    match refreshed {
        Ok(identity) => Ok(Some(identity)),
        Err(ConnectorError::NotSupported) => {
            tracing::warn!(
                upstream,
                "no upstream refresh token kept; the claims of the login stay"
            );
            Ok(None)
        }
        Err(ConnectorError::Unavailable(e)) => {
            tracing::warn!(upstream, error = %e, "upstream refresh failed");
            Err(OAuthError::temporarily_unavailable(
                "the identity provider is unreachable; try again later",
            )
            .into())
        }
        Err(ConnectorError::Config(e)) => {
            tracing::error!(upstream, error = %e, "upstream refresh misconfigured");
            Err(OAuthError::server_error("the identity provider is misconfigured").into())
        }
        Err(e @ (ConnectorError::Denied(_) | ConnectorError::Invalid(_))) => {
            tracing::info!(upstream, error = %e, "the user's grant ended upstream; ending it here too");
            end_grant(st, &row.family_id, &data, now)
                .await
                .map_err(|e| storage_failure(&e))?;
            Err(
                OAuthError::invalid_grant("the identity provider no longer accepts this login")
                    .into(),
            )
        }
    }
}

/// The local account behind `identity`, read again: `Denied` when it is
/// gone or disabled. How the user authenticated stays that of the login.
async fn local_identity(
    authn: &crate::accounts::authn::Authenticator,
    identity: &Identity,
) -> Result<Identity, ConnectorError> {
    match authn.accounts().find(&identity.subject).await {
        Ok(Some(account)) if !account.data.disabled && account.username() == identity.subject => {
            Ok(Identity {
                auth_time: identity.auth_time,
                acr: identity.acr.clone(),
                ..account.identity(identity.amr.clone())
            })
        }
        Ok(_) => Err(ConnectorError::Denied(
            "the account is disabled or deleted".into(),
        )),
        Err(e) => Err(ConnectorError::Unavailable(e.to_string())),
    }
}

/// Ends a grant (reuse detected, or its user gone upstream): its refresh
/// family, its session and the session's tokens (as a logout would).
async fn end_grant(
    st: &AppState,
    family_id: &str,
    data: &RefreshData,
    now: i64,
) -> Result<(), StoreError> {
    revoke_refresh_family(&*st.store, family_id, data.absolute_expires_at, now).await?;
    st.store.delete_session_by_sid(&data.sid).await?;
    let until = now + st.tokens.access_token_ttl_seconds + crate::keys::LEEWAY_SECONDS as i64;
    revoke_session_tokens(&*st.store, &data.sid, now, until).await
}

/// The refresh-token grant (RFC 6749 §6, OIDC Core §12). The store does
/// every check that needs the stored token, the consumption and the
/// insertion of the next token in one call ([`Store::rotate_refresh`]), so
/// a grant costs one transaction.
async fn refresh_token(
    st: &AppState,
    client: &Client,
    params: &Params,
) -> Result<Value, TokenError> {
    let token = params
        .get("refresh_token")
        .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
    let now = st.now();
    let store = &*st.store;
    let dead = || Err(OAuthError::invalid_grant("the refresh token is invalid or expired").into());
    let requested = params.get("scope").map(str::to_string);
    // Before the rotation, so a refused or failed upstream refresh leaves
    // the presented token as it was (or revoked, when the user is gone).
    let fresh = fresh_identity(st, &hash(token), &client.id, now).await?;
    // The access token's `jti` names its family, so revoking the family
    // (code replay, reuse, RFC 7009) revokes it too.
    let jti_suffix = random_token();
    let next_token = random_token();
    // Runs inside the rotation, on the live token before it is consumed: a
    // narrower scope asked wrongly does not cost the client its token.
    let next = {
        let (next_hash, suffix, client_id) =
            (hash(&next_token), jti_suffix.clone(), client.id.clone());
        let (requested, idle_ttl) = (requested.clone(), st.tokens.refresh_token_idle_ttl_seconds);
        let fresh = fresh.clone();
        let allowed_upstreams = client.upstreams.clone();
        Box::new(move |row: &RefreshRow| {
            let data: RefreshData = codec::decode(&row.data)?;
            // Refused before the consumption too: the token outlives a
            // configuration that no longer allows its upstream.
            if !super::connector_allowed(allowed_upstreams.as_deref(), &data.identity.connector_id)
                || narrowed_scopes(&data.scopes, requested.as_deref()).is_none()
            {
                return Ok(None);
            }
            let mut next = RefreshData {
                access_jti: family_jti(&row.family_id, &suffix),
                ..data
            };
            if let Some(identity) = fresh {
                next.identity = identity;
                next.claims_at = now;
            }
            refresh_row(next_hash, &row.family_id, &client_id, &next, now, idle_ttl).map(Some)
        })
    };
    let (used, session_alive) = match store
        .rotate_refresh(&hash(token), &client.id, now, next)
        .await
        .map_err(|e| storage_failure(&e))?
    {
        Rotation::Rotated {
            used,
            session_alive,
        } => (used, session_alive),
        // RFC 6749 §6, RFC 9700 §4.14.2: bound to its client. In another
        // client's hands it is stolen: the family dies.
        Rotation::OtherClient(row) => {
            tracing::warn!(client = %client.id, "refresh token presented by another client; revoking its family");
            let data: RefreshData = codec::decode(&row.data).map_err(|e| storage_failure(&e))?;
            revoke_refresh_family(store, &row.family_id, data.absolute_expires_at, now)
                .await
                .map_err(|e| storage_failure(&e))?;
            return dead();
        }
        // Used before, or by a concurrent request that won: reuse.
        Rotation::Reused(row) => {
            let data: RefreshData = codec::decode(&row.data).map_err(|e| storage_failure(&e))?;
            reuse_detected(st, &row.family_id, &data, now)
                .await
                .map_err(|e| storage_failure(&e))?;
            return dead();
        }
        Rotation::Refused(row) => {
            let data: RefreshData = codec::decode(&row.data).map_err(|e| storage_failure(&e))?;
            if !upstream_allowed(client, &data.identity) {
                return Err(not_allowed().into());
            }
            return Err(
                OAuthError::invalid_scope("a refresh cannot widen the scope of the grant").into(),
            );
        }
        // Without offline_access the token lives no longer than its session.
        Rotation::SessionEnded => {
            return Err(OAuthError::invalid_grant("the session of this grant has ended").into())
        }
        // A revoked family (reuse, replayed code, RFC 7009) stays revoked,
        // also for a member a concurrent rotation inserted after the
        // revocation.
        Rotation::Revoked | Rotation::Expired | Rotation::Missing => return dead(),
    };
    let data: RefreshData = codec::decode(&used.data).map_err(|e| storage_failure(&e))?;
    let jti = family_jti(&used.family_id, &jti_suffix);
    let scopes = narrowed_scopes(&data.scopes, requested.as_deref()).unwrap_or_default();
    // A session-bound token was rotated only with its session alive; an
    // offline one outlives its session, whose state decides only whether
    // the access token carries `sid`.
    let in_session = if used.sid.is_some() {
        session_alive
    } else {
        store
            .session_by_sid(&data.sid, now)
            .await
            .map_err(|e| storage_failure(&e))?
            .is_some()
    };
    if let (Some(identity), true) = (&fresh, in_session) {
        st.flows
            .refresh_session_identity(&data.sid, identity)
            .await
            .map_err(|e| storage_failure(&e))?;
    }
    let grant = Grant {
        client,
        identity: fresh.as_ref().unwrap_or(&data.identity),
        scopes: &scopes,
        // OIDC Core §12.2: no nonce in a refreshed ID token.
        nonce: None,
        auth_time: data.auth_time,
        sid: &data.sid,
        in_session,
        jti: &jti,
    };
    let mut response = mint(st, &grant, now).map_err(signing_failure)?;
    response.insert("refresh_token".into(), json!(next_token));
    Ok(Value::Object(response))
}

/// The client-credentials grant (RFC 6749 §4.4): an access token for the
/// client itself (`sub` = client id), no ID token and no refresh token
/// (§4.4.3). The scope is the requested one limited to the client's allowed
/// scopes, or all of them when none is requested (RFC 6749 §3.3); `openid`
/// never, as there is no user.
fn client_credentials(
    st: &AppState,
    client: &Client,
    params: &Params,
) -> Result<Value, TokenError> {
    let allowed = client
        .allowed_scopes
        .iter()
        .filter(|s| s.as_str() != "openid" && s.as_str() != OFFLINE_ACCESS);
    let scopes: Vec<String> = match params.get("scope") {
        None => allowed.cloned().collect(),
        Some(requested) => {
            let requested: Vec<&str> = requested.split(' ').collect();
            allowed
                .filter(|s| requested.contains(&s.as_str()))
                .cloned()
                .collect()
        }
    };
    let now = st.now();
    let scope = scopes.join(" ");
    let ttl = st.tokens.access_token_ttl_seconds;
    let claims = json!({
        "iss": st.issuer(),
        "sub": client.id,
        "aud": client.id,
        "client_id": client.id,
        "iat": now,
        "exp": now + ttl,
        "jti": random_token(),
        "scope": scope,
    });
    let access_token = st.keys.sign("at+jwt", &claims).map_err(signing_failure)?;
    Ok(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": scope,
    }))
}

/// The storage is away (an outage, a full pool): 503 with
/// `temporarily_unavailable` (RFC 6749 §4.1.2.1's code, as JSON per §5.2),
/// so the client retries instead of failing the grant.
fn storage_failure(e: &StoreError) -> WebError {
    tracing::error!(error = %e, "storage failure at the token endpoint");
    WebError::Token(OAuthError::temporarily_unavailable("storage unavailable"))
}

fn signing_failure(e: crate::keys::KeyError) -> WebError {
    tracing::error!(error = %e, "signing failed");
    WebError::Token(OAuthError::server_error("could not sign tokens"))
}

/// What tokens are issued for, whatever the grant.
pub struct Grant<'a> {
    pub client: &'a Client,
    pub identity: &'a Identity,
    pub scopes: &'a [String],
    pub nonce: Option<&'a str>,
    pub auth_time: i64,
    /// The session the grant belongs to (`sid` claim of the ID token).
    pub sid: &'a str,
    /// The session is still alive: the access token carries `sid` (so
    /// ending the session revokes it). An offline refresh after the session
    /// ended issues access tokens of no session.
    pub in_session: bool,
    /// The access token's `jti`.
    pub jti: &'a str,
}

/// How the user authenticated (OIDC Core §2 `amr` and `acr`), when known:
/// a local login's factors, or what the upstream said of its own login.
fn authn_claims(claims: &mut Map<String, Value>, identity: &Identity) {
    if !identity.amr.is_empty() {
        claims.insert("amr".into(), json!(identity.amr));
    }
    if let Some(acr) = &identity.acr {
        claims.insert("acr".into(), json!(acr));
    }
}

/// Signs the access token (RFC 9068) and, when `openid` is among the
/// scopes, the ID token (OIDC Core §2).
fn mint(
    st: &AppState,
    g: &Grant<'_>,
    now: i64,
) -> Result<Map<String, Value>, crate::keys::KeyError> {
    let sub = st.customizer.subject(g.identity);
    let scope = g.scopes.join(" ");
    let openid = g.scopes.iter().any(|s| s == "openid");
    // The claims of both tokens in one call: the mapping shares its work
    // between them.
    let kinds: &[TokenKind] = if openid {
        &[TokenKind::AccessToken, TokenKind::IdToken]
    } else {
        &[TokenKind::AccessToken]
    };
    let mut claims_of = st
        .customizer
        .claims_of_grant(
            &ClaimsContext {
                identity: g.identity,
                client_id: &g.client.id,
                scopes: g.scopes,
                kind: TokenKind::AccessToken,
            },
            kinds,
        )
        .into_iter()
        .map(|mut claims| {
            // A code-level customizer may return anything: the protocol
            // claims (OIDC Core §2, RFC 9068 §2.2) are the provider's alone,
            // also those it leaves out of this token (`nonce` of a refresh,
            // `nbf`).
            claims.retain(|k, _| !RESERVED_CLAIMS.contains(&k.as_str()));
            claims
        });
    let tokens = &st.tokens;

    // Protocol claims are inserted last: a customizer cannot override them.
    let mut access: Map<String, Value> = claims_of.next().unwrap_or_default();
    for (k, v) in [
        ("iss", json!(st.issuer())),
        ("sub", json!(sub)),
        ("aud", json!(g.client.id)),
        ("client_id", json!(g.client.id)),
        ("iat", json!(now)),
        ("exp", json!(now + tokens.access_token_ttl_seconds)),
        ("auth_time", json!(g.auth_time)),
        ("jti", json!(g.jti)),
        ("scope", json!(scope)),
    ] {
        access.insert(k.into(), v);
    }
    if g.in_session {
        access.insert("sid".into(), json!(g.sid));
    }
    authn_claims(&mut access, g.identity);
    let access_token = st.keys.sign("at+jwt", &access)?;
    let mut response = Map::new();
    response.insert("access_token".into(), json!(access_token));
    response.insert("token_type".into(), json!("Bearer"));
    response.insert("expires_in".into(), json!(tokens.access_token_ttl_seconds));
    response.insert("scope".into(), json!(scope));
    if !openid {
        return Ok(response);
    }

    let mut id: Map<String, Value> = claims_of.next().unwrap_or_default();
    for (k, v) in [
        ("iss", json!(st.issuer())),
        ("sub", json!(sub)),
        ("aud", json!(g.client.id)),
        ("iat", json!(now)),
        ("exp", json!(now + tokens.id_token_ttl_seconds)),
        ("auth_time", json!(g.auth_time)),
        (
            "at_hash",
            json!(at_hash(
                &st.keys.id_token_alg(g.client.id_token_alg.as_deref())?,
                &access_token
            )),
        ),
        ("sid", json!(g.sid)),
    ] {
        id.insert(k.into(), v);
    }
    if let Some(nonce) = g.nonce {
        id.insert("nonce".into(), json!(nonce));
    }
    authn_claims(&mut id, g.identity);
    let id_token = st
        .keys
        .sign_with(g.client.id_token_alg.as_deref(), "JWT", &id)?;
    response.insert("id_token".into(), json!(id_token));
    Ok(response)
}

/// Whether `client` still allows the connector `identity` logged in with:
/// the configuration may have changed since the login (README "Several
/// upstreams").
fn upstream_allowed(client: &Client, identity: &Identity) -> bool {
    client.allows_connector(&identity.connector_id)
}

/// RFC 6749 §5.2: the grant is no longer valid for this client.
fn not_allowed() -> OAuthError {
    OAuthError::invalid_grant("this client no longer allows the upstream of this grant")
}
