//! The token endpoint (RFC 6749 §3.2, §4.1.3; OIDC Core §3.1.3).
//!
//! Client authentication (`client_secret_basic`, `client_secret_post`, or
//! `none` for public clients), then the authorization-code grant: the code
//! is consumed atomically before anything else is checked, so a code can
//! never be redeemed twice (RFC 6749 §4.1.2), and every binding of the code is
//! checked against the request (client and redirect URI: §4.1.3; PKCE:
//! RFC 7636 §4.6).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::{AppState, Client};
use crate::customizer::{ClaimsContext, Identity, TokenKind};
use crate::error::{ErrorCode, OAuthError};
use crate::flow::CodeRecord;
use crate::secret::{at_hash, ct_eq, hash, is_valid_pkce_verifier, pkce_s256, random_token};
use crate::store::{codec, Redeemed};
use crate::web::{form_pairs, no_store, WebError};

/// A token-endpoint error, rendered as RFC 6749 §5.2 JSON.
type TokenError = WebError;

/// RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={}", s.replace('&', "%26")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Credentials from `Authorization: Basic`.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), OAuthError>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bad = || OAuthError::invalid_client("malformed Basic credentials");
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| bad());
    Some(decoded.and_then(|bytes| {
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (id, secret) = text.split_once(':').ok_or_else(bad)?;
        Ok((form_decode(id), form_decode(secret)))
    }))
}

/// The form parameters of a request; empty values count as absent.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, v)| p == k && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

/// Authenticates the client (RFC 6749 §2.3.1, §3.2.1).
fn authenticate<'a>(
    st: &'a AppState,
    headers: &HeaderMap,
    params: &Params,
) -> Result<&'a Client, TokenError> {
    let param = |k: &str| params.get(k);
    let invalid = |msg: &str| WebError::Token(OAuthError::invalid_client(msg));
    let (client_id, secret) = match basic_credentials(headers) {
        Some(Err(e)) => return Err(WebError::Token(e)),
        Some(Ok((id, secret))) => {
            if param("client_secret").is_some() {
                return Err(
                    OAuthError::invalid_request("use one client authentication method").into(),
                );
            }
            if param("client_id").is_some_and(|p| p != id) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the authenticated client",
                )
                .into());
            }
            (id, Some(secret))
        }
        None => match param("client_id") {
            Some(id) => (id.to_string(), param("client_secret").map(String::from)),
            None => return Err(invalid("client authentication is required")),
        },
    };
    let client = st
        .clients
        .get(&client_id)
        .ok_or_else(|| invalid("client authentication failed"))?;
    match (&client.secret_hash, secret) {
        (Some(expected), Some(given)) if ct_eq(expected, &hash(&given)) => Ok(client),
        (None, None) => Ok(client),
        (None, Some(s)) if s.is_empty() => Ok(client),
        _ => Err(invalid("client authentication failed")),
    }
}

pub async fn token(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match handle(&st, &headers, &body).await {
        Ok(v) => (StatusCode::OK, no_store(), Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn handle(st: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Value, TokenError> {
    // RFC 6749 §3.2: form encoding only.
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        )
        .into());
    }
    let pairs = form_pairs(body);
    for (i, (k, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(p, _)| p == k) {
            return Err(OAuthError::invalid_request(format!("parameter {k} is repeated")).into());
        }
    }
    let params = Params(pairs);
    let client = authenticate(st, headers, &params)?;
    match params.get("grant_type") {
        None => Err(OAuthError::invalid_request("grant_type is required").into()),
        Some("authorization_code") => authorization_code(st, client, &params).await,
        Some(_) => Err(OAuthError::new(
            ErrorCode::UnsupportedGrantType,
            "only authorization_code is supported",
        )
        .into()),
    }
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
    // The jti of the access token this code will issue is recorded by the
    // statement that redeems the code: a replay, even one racing this
    // request, finds it and revokes the token (RFC 6749 §4.1.2).
    let jti = random_token();
    let record: CodeRecord = match st.store.redeem_code(&hash(code), &jti, now).await {
        Ok(Redeemed::Fresh { data, expires_at }) if expires_at > now => {
            codec::decode(&data).map_err(|e| storage_failure(&e))?
        }
        Ok(Redeemed::Fresh { .. }) => {
            return Err(OAuthError::invalid_grant("the code has expired").into())
        }
        Ok(Redeemed::Replayed { grant_id }) => {
            tracing::warn!(client = %client.id, "authorization code replayed; revoking what it issued");
            if let Some(jti) = grant_id {
                let until =
                    now + st.tokens.access_token_ttl_seconds + crate::keys::LEEWAY_SECONDS as i64;
                st.store
                    .revoke_token(&jti, until)
                    .await
                    .map_err(|e| storage_failure(&e))?;
            }
            return Err(OAuthError::invalid_grant("the code was already used").into());
        }
        Ok(Redeemed::Missing) => return Err(OAuthError::invalid_grant("unknown code").into()),
        Err(e) => return Err(storage_failure(&e)),
    };
    let request = &record.request;
    // RFC 6749 §4.1.3: the code belongs to the client that asked for it…
    if request.client_id != client.id {
        return Err(OAuthError::invalid_grant("the code was issued to another client").into());
    }
    // …and comes with the redirect_uri of the authorization request.
    if param("redirect_uri") != Some(request.redirect_uri.as_str()) {
        return Err(OAuthError::invalid_grant(
            "redirect_uri does not match the authorization request",
        )
        .into());
    }
    // RFC 7636 §4.6; RFC 9700 §4.8.2 (no downgrade either way).
    match (&request.code_challenge, verifier) {
        (Some(challenge), Some(v)) => {
            if !ct_eq(challenge, &pkce_s256(v)) {
                return Err(OAuthError::invalid_grant("PKCE verification failed").into());
            }
        }
        (Some(_), None) => {
            return Err(OAuthError::invalid_grant("code_verifier is required").into())
        }
        (None, Some(_)) => {
            return Err(
                OAuthError::invalid_grant("code_verifier sent but no code_challenge was").into(),
            )
        }
        (None, None) => {}
    }
    let grant = Grant {
        client,
        identity: &record.identity,
        scopes: &request.scopes,
        nonce: request.nonce.as_deref(),
        auth_time: record.auth_time,
        sid: &record.sid,
        jti: &jti,
    };
    mint(st, &grant, now).map_err(|e| {
        tracing::error!(error = %e, "signing failed");
        WebError::Token(OAuthError::server_error("could not sign tokens"))
    })
}

fn storage_failure(e: &crate::store::StoreError) -> WebError {
    tracing::error!(error = %e, "storage failure at the token endpoint");
    WebError::Token(OAuthError::server_error("storage failure"))
}

/// What tokens are issued for, whatever the grant.
pub struct Grant<'a> {
    pub client: &'a Client,
    pub identity: &'a Identity,
    pub scopes: &'a [String],
    pub nonce: Option<&'a str>,
    pub auth_time: i64,
    /// The session the grant belongs to (`sid` claim).
    pub sid: &'a str,
    /// The access token's `jti`.
    pub jti: &'a str,
}

/// Signs the access token (RFC 9068) and the ID token (OIDC Core §2).
fn mint(st: &AppState, g: &Grant<'_>, now: i64) -> Result<Value, crate::keys::KeyError> {
    let sub = st.customizer.subject(g.identity);
    let scope = g.scopes.join(" ");
    let claims_for = |kind| {
        st.customizer.claims(&ClaimsContext {
            identity: g.identity,
            client_id: &g.client.id,
            scopes: g.scopes,
            kind,
        })
    };
    let tokens = &st.tokens;

    // Protocol claims are inserted last: a customizer cannot override them.
    let mut access: Map<String, Value> = claims_for(TokenKind::AccessToken);
    for (k, v) in [
        ("iss", json!(st.issuer())),
        ("sub", json!(sub)),
        ("aud", json!(g.client.id)),
        ("client_id", json!(g.client.id)),
        ("iat", json!(now)),
        ("exp", json!(now + tokens.access_token_ttl_seconds)),
        ("auth_time", json!(g.auth_time)),
        ("jti", json!(g.jti)),
        ("sid", json!(g.sid)),
        ("scope", json!(scope)),
    ] {
        access.insert(k.into(), v);
    }
    let access_token = st.keys.sign("at+jwt", &access)?;

    let mut id: Map<String, Value> = claims_for(TokenKind::IdToken);
    for (k, v) in [
        ("iss", json!(st.issuer())),
        ("sub", json!(sub)),
        ("aud", json!(g.client.id)),
        ("iat", json!(now)),
        ("exp", json!(now + tokens.id_token_ttl_seconds)),
        ("auth_time", json!(g.auth_time)),
        ("at_hash", json!(at_hash(&access_token))),
        ("sid", json!(g.sid)),
    ] {
        id.insert(k.into(), v);
    }
    if let Some(nonce) = g.nonce {
        id.insert("nonce".into(), json!(nonce));
    }
    let id_token = st
        .keys
        .sign_with(g.client.id_token_alg.as_deref(), "JWT", &id)?;
    Ok(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": tokens.access_token_ttl_seconds,
        "id_token": id_token,
        "scope": scope,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        // RFC 6749 §2.3.1: "a:b%c" is sent as "a%3Ab%25c".
        let mut h = HeaderMap::new();
        let raw = STANDARD.encode("my+client:a%3Ab%25c~-");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {raw}").parse().unwrap(),
        );
        let (id, secret) = basic_credentials(&h).unwrap().unwrap();
        assert_eq!(id, "my client");
        assert_eq!(secret, "a:b%c~-");
    }

    #[test]
    fn malformed_basic_is_invalid_client() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(
            basic_credentials(&h).unwrap().unwrap_err().code,
            ErrorCode::InvalidClient
        );
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode("nocolon"))
                .parse()
                .unwrap(),
        );
        assert_eq!(
            basic_credentials(&h).unwrap().unwrap_err().code,
            ErrorCode::InvalidClient
        );
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(basic_credentials(&h).is_none());
    }
}
