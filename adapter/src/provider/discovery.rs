//! Discovery (OIDC Discovery §3, RFC 8414 §2) and the JWKS.
//!
//! The metadata tells the truth about this deployment: `scopes_supported`
//! is what the configured clients can actually be granted, and
//! `claims_supported` what the provider and its customizer can emit.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::{AppState, GrantType};
use crate::keys::JWKS_CACHE_SECONDS;
use crate::paths;

/// Caches may keep metadata and keys [`JWKS_CACHE_SECONDS`]: short, so a key
/// rotation (RFC 7517 §5, OIDC Core §10.1.1) reaches relying parties
/// quickly; the rotation schedule publishes a new key that long before use.
fn cache() -> HeaderValue {
    HeaderValue::from_str(&format!("public, max-age={JWKS_CACHE_SECONDS}"))
        .unwrap_or(HeaderValue::from_static("no-cache"))
}

/// Claims the provider itself puts in ID tokens and userinfo (OIDC Core §2,
/// §5.3.2), whatever the customizer does.
const PROTOCOL_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "at_hash",
    "sid",
];

/// `scopes_supported`: the union of the clients' `allowed_scopes`, plus
/// `openid` (OIDC Discovery §3: "MUST support the openid scope").
fn scopes_supported(st: &AppState) -> Vec<String> {
    let scopes: BTreeSet<String> = st
        .clients
        .values()
        .flat_map(|c| c.allowed_scopes.iter().cloned())
        .chain(["openid".to_string()])
        .collect();
    scopes.into_iter().collect()
}

/// `claims_supported`: the protocol claims plus every claim the customizer
/// can emit.
fn claims_supported(st: &AppState) -> Vec<String> {
    let claims: BTreeSet<String> = PROTOCOL_CLAIMS
        .iter()
        .map(|c| c.to_string())
        .chain(st.customizer.claim_names())
        .collect();
    claims.into_iter().collect()
}

/// `grant_types_supported`: the grants the configured clients are allowed
/// (RFC 8414 §2), `authorization_code` always (the `code` response type).
fn grant_types_supported(st: &AppState) -> Vec<&'static str> {
    [
        GrantType::AuthorizationCode,
        GrantType::RefreshToken,
        GrantType::ClientCredentials,
    ]
    .into_iter()
    .filter(|g| *g == GrantType::AuthorizationCode || st.clients.values().any(|c| c.allows(*g)))
    .map(GrantType::as_str)
    .collect()
}

/// The metadata document, shared by both well-known locations: OIDC
/// Discovery metadata is a superset of RFC 8414's.
fn metadata(st: &AppState) -> Value {
    let i = st.issuer();
    json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}{}", paths::AUTHORIZE),
        "token_endpoint": format!("{i}{}", paths::TOKEN),
        "userinfo_endpoint": format!("{i}{}", paths::USERINFO),
        "jwks_uri": format!("{i}{}", paths::JWKS),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": grant_types_supported(st),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": st.keys.algorithms(),
        "scopes_supported": scopes_supported(st),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        // RFC 8414 §2 (RFC 7009, RFC 7662).
        "revocation_endpoint": format!("{i}{}", paths::REVOKE),
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint": format!("{i}{}", paths::INTROSPECT),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "claims_supported": claims_supported(st),
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
        // OIDC RP-Initiated Logout 1.0 §2.1, Back-Channel Logout 1.0 §2.1.
        "end_session_endpoint": format!("{i}{}", paths::END_SESSION),
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    })
}

/// `/.well-known/openid-configuration` (OIDC Discovery §4).
pub async fn openid_configuration(State(st): State<AppState>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, cache())], Json(metadata(&st)))
}

/// `/.well-known/oauth-authorization-server` (RFC 8414 §3).
pub async fn oauth_authorization_server(State(st): State<AppState>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, cache())], Json(metadata(&st)))
}

pub async fn jwks(State(st): State<AppState>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, cache())], Json(st.keys.jwks()))
}
