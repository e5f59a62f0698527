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
use serde_json::{Map, Value};

use super::AppState;
use crate::customizer::{ClaimsContext, TokenKind, RESERVED_CLAIMS};
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
    let token_claims = st
        .keys
        .verify(&token, "at+jwt", st.issuer(), st.now())
        .await
        .map_err(|e| {
            tracing::info!(error = %e, "userinfo: token rejected");
            invalid_token("the access token is invalid or expired")
        })?;
    // A token issued from a replayed code, or otherwise revoked, is dead
    // (RFC 6749 §4.1.2).
    let revoked = super::revocation::access_token_revoked(&*st.store, &token_claims, st.now())
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
    // The token's own claims (`sid`, `client_id`, `scope`) are needed
    // only when rules answer userinfo.
    let token = st
        .customizer
        .userinfo_differs()
        .then(|| token_claims.clone());
    let mut claims = token_claims;
    claims.retain(|k, _| !TOKEN_CLAIMS.contains(&k.as_str()));
    if let Some(token) = token {
        userinfo_rules(&st, &token, &mut claims).await?;
    }
    Ok((StatusCode::OK, Json(Value::Object(claims))).into_response())
}

/// The claims of the rules for userinfo (OIDC Core §5.3.2) in place of the
/// access token's mapped ones, from the identity of the token's session
/// (`sid`) with the token's client and scopes. A token without a live
/// session (offline access) keeps the access token's claims.
async fn userinfo_rules(
    st: &AppState,
    token: &Map<String, Value>,
    claims: &mut Map<String, Value>,
) -> Result<(), WebError> {
    let (Some(sid), Some(client_id)) = (
        token.get("sid").and_then(Value::as_str),
        token.get("client_id").and_then(Value::as_str),
    ) else {
        return Ok(());
    };
    let session = st.flows.session_by_sid(sid).await.map_err(|e| {
        tracing::error!(error = %e, "userinfo: storage failure");
        WebError::Bearer(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(OAuthError::temporarily_unavailable("try again later")),
        )
    })?;
    let Some((_, session)) = session else {
        return Ok(());
    };
    let scopes: Vec<String> = token
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let mapped = st.customizer.claims(&ClaimsContext {
        identity: &session.identity,
        client_id,
        scopes: &scopes,
        kind: TokenKind::UserInfo,
    });
    for name in st.customizer.claim_names() {
        if !RESERVED_CLAIMS.contains(&name.as_str()) {
            claims.remove(&name);
        }
    }
    claims.extend(
        mapped
            .into_iter()
            .filter(|(k, _)| !RESERVED_CLAIMS.contains(&k.as_str())),
    );
    Ok(())
}
