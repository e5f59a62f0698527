//! The UserInfo endpoint (OIDC Core §5.3; RFC 6750 §2.1–2.2, §3.1).
//!
//! Accepts the access token in the `Authorization: Bearer` header (GET or
//! POST) or as the `access_token` form field (POST), never both. Only our
//! own `at+jwt` access tokens are accepted: an ID token is refused (RFC 9068 §4).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::AppState;
use crate::error::{ErrorCode, OAuthError};
use crate::web::{form_pairs, WebError};

/// Claims of the access token that describe the token, not the user.
const TOKEN_CLAIMS: &[&str] = &[
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "client_id",
    "scope",
    "auth_time",
    "sid",
];

fn invalid_token(description: &str) -> WebError {
    WebError::Bearer(
        StatusCode::UNAUTHORIZED,
        Some(OAuthError::new(ErrorCode::InvalidToken, description)),
    )
}

pub async fn userinfo(
    State(st): State<AppState>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form_token = if method == Method::POST && is_form {
        form_pairs(&body)
            .into_iter()
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v)
    } else {
        None
    };
    let token = match (bearer, form_token) {
        // RFC 6750 §2: one method per request.
        (Some(_), Some(_)) => {
            return Err(WebError::Bearer(
                StatusCode::BAD_REQUEST,
                Some(OAuthError::invalid_request("send the token once")),
            ))
        }
        (Some(t), None) | (None, Some(t)) => t,
        // RFC 6750 §3.1: no error code when the request had no token.
        (None, None) => return Err(WebError::Bearer(StatusCode::UNAUTHORIZED, None)),
    };
    let mut claims = st
        .keys
        .verify(&token, "at+jwt", st.issuer(), st.now())
        .await
        .map_err(|e| {
            tracing::info!(error = %e, "userinfo: token rejected");
            invalid_token("the access token is invalid or expired")
        })?;
    // A token issued from a replayed code, or otherwise revoked, is dead
    // (RFC 6749 §4.1.2).
    let revoked = super::revocation::access_token_revoked(&*st.store, &claims, st.now())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "userinfo: storage failure");
            WebError::Bearer(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(OAuthError::temporarily_unavailable("try again later")),
            )
        })?;
    if revoked {
        return Err(invalid_token("the access token was revoked"));
    }
    claims.retain(|k, _| !TOKEN_CLAIMS.contains(&k.as_str()));
    Ok((StatusCode::OK, Json(Value::Object(claims))).into_response())
}
