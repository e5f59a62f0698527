//! The protected API: `GET /api/resource`, a small OAuth 2.0 resource server
//! (RFC 6750) in front of the test-app's own data.
//!
//! A request must carry `Authorization: Bearer <access token>` (RFC 6750
//! §2.1). The token is accepted when:
//! 1. it is a JWT access token (RFC 9068): `typ: at+jwt`, RS256/ES256 signed
//!    by a key of the provider's JWKS (one re-discovery for an unknown `kid`),
//!    `iss` the configured issuer, `aud` containing the test-app's client id
//!    (the adapter issues its access tokens to the client), `exp` not past
//!    (the injected clock, [`crate::tokens::LEEWAY_SECS`] of leeway);
//! 2. and, when discovery advertises an `introspection_endpoint`, the
//!    provider says it is `active` (RFC 7662 §2.2), which is how a revoked
//!    token (RFC 7009) is caught. Without that endpoint the answer says so
//!    and only the JWT checks apply.
//!
//! Refusals are RFC 6750 §3 challenges: 401 with `WWW-Authenticate: Bearer`
//! (`error="invalid_token"` and an `error_description` when a token was
//! sent) and the same as a JSON body. An unreachable provider is a 503.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::provider::{basic_authorization, transport_reason};
use crate::startup::AppState;
use crate::tokens::{self, Claims, Expect, TokenError};

/// Path of the protected API.
pub const RESOURCE_PATH: &str = "/api/resource";
/// The realm of the `WWW-Authenticate` challenge (RFC 6750 §3).
pub const REALM: &str = "test-app";

/// Why a request to the protected API is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No Bearer token (RFC 6750 §3.1: no error code).
    NoToken,
    /// The token is expired, revoked, malformed or otherwise invalid
    /// (RFC 6750 §3.1 `invalid_token`).
    InvalidToken(String),
    /// The provider (discovery, JWKS or introspection) could not answer.
    Unavailable(String),
}

/// What the resource server learnt about an accepted token.
#[derive(Debug, Clone)]
pub struct Granted {
    /// The verified claims.
    pub claims: Claims,
    /// The introspection endpoint asked, if discovery advertised one.
    pub introspection_endpoint: Option<String>,
}

/// `GET /api/resource`.
pub async fn api_resource(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(token) = bearer_token(&headers) else {
        return denied(&Denied::NoToken);
    };
    match check_token(&state, &token).await {
        Ok(granted) => Json(answer(&granted)).into_response(),
        Err(why) => denied(&why),
    }
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme
/// is case-insensitive, RFC 9110 §11.1).
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

fn answer(granted: &Granted) -> Value {
    let claim = |name: &str| granted.claims.get(name).cloned().unwrap_or(Value::Null);
    let introspection = match &granted.introspection_endpoint {
        Some(endpoint) => json!({ "endpoint": endpoint, "active": true }),
        None => json!({
            "endpoint": null,
            "note": "the provider advertises no introspection_endpoint: revocation is not checked, \
                     only the JWT checks (signature, iss, aud, exp, typ) apply",
        }),
    };
    json!({
        "resource": "the test-app's protected resource",
        "sub": claim("sub"),
        "client_id": claim("client_id"),
        "aud": claim("aud"),
        "scope": claim("scope"),
        "exp": claim("exp"),
        "checks": ["typ at+jwt", "signature (provider JWKS)", "iss", "aud", "exp"],
        "introspection": introspection,
    })
}

/// The RFC 6750 §3 refusal of `why`.
pub fn denied(why: &Denied) -> Response {
    match why {
        Denied::NoToken => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge(None))],
            Json(json!({ "error_description": "no Bearer access token in the request" })),
        )
            .into_response(),
        Denied::InvalidToken(description) => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                challenge(Some(("invalid_token", description))),
            )],
            Json(json!({ "error": "invalid_token", "error_description": description })),
        )
            .into_response(),
        Denied::Unavailable(description) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "temporarily_unavailable", "error_description": description })),
        )
            .into_response(),
    }
}

/// `Bearer realm="test-app"[, error="..", error_description=".."]`; the
/// description is reduced to the characters RFC 6750 §3 allows in it.
fn challenge(error: Option<(&str, &str)>) -> HeaderValue {
    let mut value = format!("Bearer realm=\"{REALM}\"");
    if let Some((code, description)) = error {
        let safe: String = description
            .chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                ' '..='~' => c,
                _ => '?',
            })
            .collect();
        value.push_str(&format!(", error=\"{code}\", error_description=\"{safe}\""));
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// Checks `token` as described in the module documentation.
pub async fn check_token(state: &AppState, token: &str) -> Result<Granted, Denied> {
    let unavailable = |e: crate::AppError| Denied::Unavailable(e.to_string());
    let provider = state.provider.get().await.map_err(unavailable)?;
    let expect = Expect {
        issuer: &state.config.issuer,
        audience: Some(&state.config.client_id),
        now: state.clock.now(),
    };
    let claims = match tokens::verify_access_token(token, &provider.jwks, expect) {
        Err(TokenError::UnknownKey(_)) => {
            // Key rotation (OIDC Core §10.1.1): one re-discovery.
            let fresh = state
                .provider
                .refresh(&provider)
                .await
                .map_err(unavailable)?;
            tokens::verify_access_token(token, &fresh.jwks, expect)
        }
        other => other,
    }
    .map_err(|e| Denied::InvalidToken(format!("the access token was rejected: {e}")))?;

    let Some(endpoint) = provider.introspection_endpoint() else {
        return Ok(Granted {
            claims,
            introspection_endpoint: None,
        });
    };
    if !introspect(state, endpoint, token).await? {
        return Err(Denied::InvalidToken(
            "the provider's introspection endpoint says the access token is not active \
             (revoked)"
                .into(),
        ));
    }
    Ok(Granted {
        claims,
        introspection_endpoint: Some(endpoint.to_string()),
    })
}

/// RFC 7662 §2.1: asks the provider whether `token` is active, authenticated
/// as the test-app (client_secret_basic).
async fn introspect(state: &AppState, endpoint: &url::Url, token: &str) -> Result<bool, Denied> {
    let mut request = state
        .provider
        .http()
        .post(endpoint.clone())
        .header(header::ACCEPT, "application/json")
        .form(&[("token", token), ("token_type_hint", "access_token")]);
    if let Some(secret) = &state.client_secret {
        request = request.header(
            header::AUTHORIZATION,
            basic_authorization(&state.config.client_id, secret.secret()),
        );
    }
    let response = request.send().await.map_err(|e| {
        Denied::Unavailable(format!("introspection endpoint: {}", transport_reason(&e)))
    })?;
    let status = response.status();
    if !status.is_success() {
        tracing::warn!(%status, "introspection refused");
        return Err(Denied::Unavailable(format!(
            "the introspection endpoint answered {status}"
        )));
    }
    let body: Value = response.json().await.map_err(|_| {
        Denied::Unavailable("the introspection response is not JSON (RFC 7662 §2.2)".into())
    })?;
    // RFC 7662 §2.2: `active` is REQUIRED and boolean.
    body.get("active").and_then(Value::as_bool).ok_or_else(|| {
        Denied::Unavailable(
            "the introspection response has no boolean active (RFC 7662 §2.2)".into(),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer_token(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn challenge_descriptions_are_rfc6750_safe() {
        let v = challenge(Some(("invalid_token", "kid \"k9\" — unknown\\")));
        assert_eq!(
            v.to_str().unwrap(),
            "Bearer realm=\"test-app\", error=\"invalid_token\", \
             error_description=\"kid 'k9' ? unknown'\""
        );
        assert_eq!(challenge(None), "Bearer realm=\"test-app\"");
    }
}
