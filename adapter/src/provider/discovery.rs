//! Discovery (OIDC Discovery §3) and the JWKS.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::paths;

/// Caches may keep metadata and keys this long (checklist C5: modest).
const CACHE: HeaderValue = HeaderValue::from_static("public, max-age=300");

pub async fn openid_configuration(State(st): State<AppState>) -> impl IntoResponse {
    let i = st.issuer();
    let body = json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}{}", paths::AUTHORIZE),
        "token_endpoint": format!("{i}{}", paths::TOKEN),
        "userinfo_endpoint": format!("{i}{}", paths::USERINFO),
        "jwks_uri": format!("{i}{}", paths::JWKS),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": st.keys.algorithms(),
        "scopes_supported": ["openid", "profile", "email"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash",
            "name", "preferred_username", "email", "email_verified", "authorities"
        ],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
    });
    ([(header::CACHE_CONTROL, CACHE)], Json(body))
}

pub async fn jwks(State(st): State<AppState>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, CACHE)], Json(st.keys.jwks()))
}
