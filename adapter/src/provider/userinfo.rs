//! The UserInfo endpoint (OIDC Core §5.3; RFC 6750 §2.1–2.2, §3.1).
//!
//! Accepts the access token in the `Authorization: Bearer` header (GET or
//! POST) or as the `access_token` form field (POST), never both. Only our
//! own `at+jwt` access tokens are accepted: an ID token is refused (C7).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::authorize::form_pairs;
use super::AppState;
use crate::store::Kind;

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
];

fn challenge(status: StatusCode, error: Option<(&str, &str)>) -> Response {
    let value = match error {
        // RFC 6750 §3.1.
        Some((code, description)) => {
            format!("Bearer error=\"{code}\", error_description=\"{description}\"")
        }
        None => "Bearer".to_string(),
    };
    let header_value = HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("Bearer"));
    let body = match error {
        Some((code, description)) => json!({"error": code, "error_description": description}),
        None => json!({"error": "invalid_request", "error_description": "no access token"}),
    };
    (
        status,
        [(header::WWW_AUTHENTICATE, header_value)],
        Json(body),
    )
        .into_response()
}

pub async fn userinfo(
    State(st): State<AppState>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
        (Some(_), Some(_)) => {
            return challenge(
                StatusCode::BAD_REQUEST,
                Some(("invalid_request", "send the token once")),
            )
        }
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return challenge(StatusCode::UNAUTHORIZED, None),
    };
    let verified = st.keys.verify(&token, "at+jwt", st.issuer(), st.now());
    // A token issued from a replayed code is revoked (RFC 6749 §4.1.2).
    let revoked = match verified
        .as_ref()
        .ok()
        .and_then(|c| c.get("jti"))
        .and_then(Value::as_str)
    {
        Some(jti) => match st.store.get(Kind::RevokedToken, jti, st.now()).await {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::error!(error = %e, "userinfo: storage failure");
                return challenge(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(("temporarily_unavailable", "try again later")),
                );
            }
        },
        None => false,
    };
    match verified {
        Ok(_) if revoked => challenge(
            StatusCode::UNAUTHORIZED,
            Some(("invalid_token", "the access token was revoked")),
        ),
        Ok(mut claims) => {
            claims.retain(|k, _| !TOKEN_CLAIMS.contains(&k.as_str()));
            (StatusCode::OK, Json(Value::Object(claims))).into_response()
        }
        Err(e) => {
            tracing::info!(error = %e, "userinfo: token rejected");
            challenge(
                StatusCode::UNAUTHORIZED,
                Some(("invalid_token", "the access token is invalid or expired")),
            )
        }
    }
}
