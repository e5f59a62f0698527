//! The client side of the token lifecycle: calling the protected API with the
//! session's access token, and refreshing the tokens when it has expired.
//!
//! `POST /call-api` (the button on the claims page):
//! 1. calls [`crate::resource::RESOURCE_PATH`] with `Authorization: Bearer`
//!    and the session's access token (RFC 6750 §2.1), server to server: the
//!    tokens stay in the session store, never in the browser;
//! 2. on a 401 while the access token's `exp` has passed, uses the refresh
//!    token (RFC 6749 §6), verifies what comes back (the access token as at
//!    login, a new ID token per OIDC Core §12.2), stores the new tokens (a
//!    rotated refresh token replaces the old one) and retries once; the page
//!    says that it refreshed;
//! 3. when the refresh fails (no refresh token, `invalid_grant`, a token that
//!    does not verify), the session ends and the browser is sent to log in
//!    again (a redirect to the provider);
//! 4. any other 401 (e.g. a revoked token) is shown as it is.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use openidconnect::core::CoreJwsSigningAlgorithm;
use openidconnect::{HttpRequest, Nonce, OAuth2TokenResponse, RefreshToken, TokenResponse};
use serde_json::Value;

use crate::error::AppError;
use crate::provider::{error_chain, http_bridge, oidc_client, transport_reason};
use crate::resource::RESOURCE_PATH;
use crate::routes::{begin_login, current_session_with_id, is_same_origin, removal, token_error};
use crate::startup::AppState;
use crate::store::Session;
use crate::tokens::{self, Expect, TokenError};
use crate::views::{ApiCallPage, ApiCallView};

/// Path of the button's form action.
pub const CALL_API_PATH: &str = "/call-api";

/// One answer of the protected API.
#[derive(Debug, Clone)]
pub struct ApiAnswer {
    /// HTTP status.
    pub status: u16,
    /// The JSON body (`null` when it was not JSON).
    pub body: Value,
    /// The `WWW-Authenticate` challenge, if any (RFC 6750 §3).
    pub www_authenticate: Option<String>,
}

/// `POST /call-api`.
pub async fn call_api(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
) -> Result<Response, AppError> {
    if !is_same_origin(&headers, &state.base_url) {
        return Err(AppError::CrossSite);
    }
    let Some((session_id, session)) = current_session_with_id(&state, &jar) else {
        return begin_login(&state, jar).await;
    };
    let first = call_resource(&state, &session.access_token).await?;
    let expired =
        tokens::expiry(&session.access_token_claims).is_some_and(|exp| state.clock.now() > exp);
    if first.status != 401 || !expired {
        return Ok(page(&session, first, None));
    }

    // RFC 6749 §6: the access token expired; refresh, then retry once.
    let refreshed = match refresh(&state, &session).await {
        Ok(refreshed) => Arc::new(refreshed),
        Err(err) => {
            tracing::info!(error = %err, "refresh failed: the user logs in again");
            state.sessions.take(&session_id);
            let jar = jar.remove(removal(&state.config.cookie_name));
            return begin_login(&state, jar).await;
        }
    };
    let stored = refreshed.clone();
    if state.sessions.update(&session_id, |_| stored).is_none() {
        // Logged out (e.g. a back-channel logout) while refreshing.
        return begin_login(&state, jar).await;
    }
    tracing::info!(
        refresh_count = refreshed.refresh_count,
        "access token refreshed"
    );
    let retry = call_resource(&state, &refreshed.access_token).await?;
    Ok(page(&refreshed, retry, Some(first)))
}

fn page(session: &Session, answer: ApiAnswer, before_refresh: Option<ApiAnswer>) -> Response {
    ApiCallPage::new(
        session,
        ApiCallView::from(&answer),
        before_refresh.as_ref().map(ApiCallView::from),
    )
    .into_response()
}

/// Calls the protected API with `access_token` (RFC 6750 §2.1).
pub async fn call_resource(state: &AppState, access_token: &str) -> Result<ApiAnswer, AppError> {
    let url = format!("{}{RESOURCE_PATH}", state.api_base());
    let response = state
        .provider
        .http()
        .get(&url)
        .bearer_auth(access_token)
        .send()
        .await
        .map_err(|e| {
            AppError::Internal(format!(
                "calling the protected API: {}",
                transport_reason(&e)
            ))
        })?;
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Ok(ApiAnswer {
        status,
        body,
        www_authenticate,
    })
}

/// RFC 6749 §6 with the session's refresh token; returns the session with
/// the new tokens. The access token is verified as at login; an ID token in
/// the response is verified per OIDC Core §12.2 (signature, `iss`, `aud`,
/// `exp`, same `sub`; no `nonce` or the original one).
pub async fn refresh(state: &AppState, session: &Session) -> Result<Session, AppError> {
    let refresh_token = session
        .refresh_token
        .clone()
        .ok_or_else(|| AppError::RefreshFailed("the session holds no refresh token".into()))?;
    let provider = state.provider.get().await?;
    let client = oidc_client(
        &provider,
        &state.client_id,
        state.client_secret.as_ref(),
        &state.redirect_uri,
    );
    let http = state.provider.http().clone();
    let http_client = move |req: HttpRequest| http_bridge(http.clone(), req);
    let refresh_token = RefreshToken::new(refresh_token);
    let response = client
        .exchange_refresh_token(&refresh_token)
        .map_err(|e| AppError::Provider(format!("no token endpoint: {e}")))?
        .request_async(&http_client)
        .await
        .map_err(token_error)?;

    let rejected = |why: String| AppError::RefreshFailed(why);
    let sub = session.sub().unwrap_or_default().to_owned();

    // The access token, as at login (RFC 9068 §4), about the same user.
    let access_token = response.access_token().secret().clone();
    let expect = Expect {
        issuer: &state.config.issuer,
        audience: None,
        now: state.clock.now(),
    };
    let access_token_claims =
        match tokens::verify_access_token(&access_token, &provider.jwks, expect) {
            Err(TokenError::UnknownKey(_)) => {
                let fresh = state.provider.refresh(&provider).await?;
                tokens::verify_access_token(&access_token, &fresh.jwks, expect)
            }
            other => other,
        }
        .map_err(|e| rejected(format!("the new access token was rejected: {e}")))?;
    if access_token_claims.get("sub").and_then(Value::as_str) != Some(sub.as_str()) {
        return Err(rejected(
            "the new access token is about another user".into(),
        ));
    }

    // OIDC Core §12.2: an ID token is optional in a refresh response.
    let (id_token, id_token_claims, id_token_header) = match response.id_token() {
        None => (
            session.id_token.clone(),
            session.id_token_claims.clone(),
            session.id_token_header.clone(),
        ),
        Some(id_token) => {
            let verifier = client.id_token_verifier().set_allowed_algs(vec![
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            ]);
            let original_nonce = session
                .id_token_claims
                .get("nonce")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let nonce_check = move |nonce: Option<&Nonce>| match (nonce, &original_nonce) {
                (None, _) => Ok(()),
                (Some(n), Some(original)) if n.secret() == original => Ok(()),
                (Some(_), _) => Err("a nonce other than the original one".to_owned()),
            };
            let claims = id_token.claims(&verifier, nonce_check).map_err(|e| {
                rejected(format!(
                    "the new ID token was rejected: {}",
                    error_chain(&e)
                ))
            })?;
            if claims.subject().as_str() != sub {
                return Err(rejected("the new ID token is about another user".into()));
            }
            let raw = id_token.to_string();
            let undecodable = |_| rejected("the new ID token could not be decoded".into());
            (
                raw.clone(),
                tokens::decode_payload(&raw).map_err(undecodable)?,
                tokens::decode_header(&raw).map_err(undecodable)?,
            )
        }
    };
    let access_token_header = tokens::decode_header(&access_token)
        .map_err(|e| rejected(format!("the new access token was rejected: {e}")))?;
    Ok(Session {
        id_token,
        access_token,
        // RFC 6749 §6: a new refresh token replaces the old one (rotation);
        // without one, the old one stays valid.
        refresh_token: Some(
            response
                .refresh_token()
                .map_or_else(|| refresh_token.secret().clone(), |rt| rt.secret().clone()),
        ),
        id_token_claims,
        id_token_header,
        access_token_claims,
        access_token_header,
        created_at: session.created_at,
        refresh_count: session.refresh_count.saturating_add(1),
        refreshed_at: Some(state.clock.now()),
    })
}
