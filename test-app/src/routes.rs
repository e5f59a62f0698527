//! HTTP handlers.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | home page |
//! | `GET /authenticated` | no session: 302 to the provider (code flow, PKCE S256, state, nonce); session: the claims page |
//! | `GET /login/oauth2/code/auth-adapter` | the callback: checks, code exchange, token verification, new session, 303 to `/authenticated` |
//! | `GET /api/me` | the session's claims and tokens as JSON, or 401 `{"error":"unauthenticated"}` |
//! | `GET /api/resource` | the protected API ([`crate::resource`]): Bearer access token, JWT checks + introspection |
//! | `POST /call-api` | the claims page's button ([`crate::lifecycle`]): calls the API, refreshes on expiry |
//! | `GET /logout`, `POST /logout` | confirm page; end the local session (with `everywhere`, also at the provider: RP-Initiated Logout) |
//! | `GET /logged-out` | the provider's return after logout (`post_logout_redirect_uri`); `state` checked |
//! | `GET /healthz/live`, `GET /healthz/ready` | health (readiness does not depend on the provider) |
//! | `GET /assets/*` | the stylesheet and icon (no external assets) |

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreErrorResponseType, CoreJwsSigningAlgorithm, CoreTokenResponse,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClaimsVerificationError, CsrfToken, HttpRequest, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RequestTokenError, Scope,
    SignatureVerificationError, StandardErrorResponse, TokenResponse,
};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;
use url::Url;

use crate::error::AppError;
use crate::provider::{
    error_chain, http_bridge, oidc_client, transport_reason, HttpError, Provider,
};
use crate::startup::AppState;
use crate::store::{
    random_id, LogoutTransaction, Session, Transaction, SESSION_TTL, TRANSACTION_TTL,
};
use crate::tokens::{self, Expect, TokenError};
use crate::views::{now_unix, AuthenticatedPage, HomePage, LoggedOutPage, LogoutPage, Nav};

/// Longest accepted value of a callback parameter.
const MAX_PARAM_LEN: usize = 2048;

const STYLESHEET: &str = include_str!("../../templates/test-app/assets/app.css");
const FAVICON: &str = include_str!("../../templates/test-app/assets/favicon.svg");

// ---------------------------------------------------------------- helpers

fn current_session(state: &AppState, jar: &CookieJar) -> Option<Arc<Session>> {
    current_session_with_id(state, jar).map(|(_, s)| s)
}

/// The session of the request's cookie, with its id.
pub(crate) fn current_session_with_id(
    state: &AppState,
    jar: &CookieJar,
) -> Option<(String, Arc<Session>)> {
    let id = jar.get(&state.config.cookie_name)?.value().to_owned();
    let session = state.sessions.get(&id)?;
    Some((id, session))
}

fn cookie(state: &AppState, name: &str, value: String, max_age_secs: u64) -> Cookie<'static> {
    Cookie::build((name.to_owned(), value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.secure_cookies)
        .max_age(time::Duration::seconds(
            i64::try_from(max_age_secs).unwrap_or(i64::MAX),
        ))
        .build()
}

pub(crate) fn removal(name: &str) -> Cookie<'static> {
    Cookie::build(name.to_owned()).path("/").build()
}

/// A `302 Found` to `location` (the authorization request is a plain GET redirect).
fn found(location: &str) -> Result<Response, AppError> {
    let value = HeaderValue::from_str(location)
        .map_err(|_| AppError::Internal("authorization URL is not a valid header".into()))?;
    Ok((StatusCode::FOUND, [(header::LOCATION, value)]).into_response())
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

// ---------------------------------------------------------------- pages

/// `GET /`.
pub async fn home(State(state): State<AppState>, jar: CookieJar) -> HomePage {
    let session = current_session(&state, &jar);
    HomePage {
        nav: Nav::for_session(session.as_deref()),
        issuer: state.config.issuer.clone(),
        client_id: state.config.client_id.clone(),
        redirect_uri: state.redirect_uri.as_str().to_owned(),
        scopes: scopes_sent(&state).join(" "),
        provider_discovered: state.provider.cached().is_some(),
        backchannel_notice: state
            .backchannel
            .notice_for(jar.get(&state.config.cookie_name).map(|c| c.value())),
    }
}

fn scopes_sent(state: &AppState) -> Vec<String> {
    let mut scopes = vec!["openid".to_owned()];
    scopes.extend(
        state
            .config
            .scopes
            .iter()
            .filter(|s| s.as_str() != "openid")
            .cloned(),
    );
    scopes
}

/// `GET /authenticated`: the claims page, or the start of a login.
pub async fn authenticated(
    State(state): State<AppState>,
    jar: CookieJar,
) -> Result<Response, AppError> {
    if let Some(session) = current_session(&state, &jar) {
        let mut page = AuthenticatedPage::new(&session, now_unix());
        page.backchannel = state
            .backchannel_logouts
            .find(session.sid(), session.sub())
            .map(|e| crate::views::backchannel_line(&e, now_unix()));
        return Ok(page.into_response());
    }
    begin_login(&state, jar).await
}

/// Redirects to the provider's authorization endpoint with a fresh state,
/// nonce and PKCE S256 challenge, remembered server-side under a random
/// transaction id carried in the `TEST_APP_TX` cookie.
pub(crate) async fn begin_login(state: &AppState, jar: CookieJar) -> Result<Response, AppError> {
    let provider = state.provider.get().await?;
    let client = oidc_client(
        &provider,
        &state.client_id,
        state.client_secret.as_ref(),
        &state.redirect_uri,
    );
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client.authorize_url(
        CoreAuthenticationFlow::AuthorizationCode,
        CsrfToken::new_random,
        Nonce::new_random,
    );
    // openidconnect always sends `openid` itself.
    for scope in state
        .config
        .scopes
        .iter()
        .filter(|s| s.as_str() != "openid")
    {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let (url, csrf, nonce) = request.set_pkce_challenge(challenge).url();

    let tx_id = random_id();
    state.transactions.insert(
        tx_id.clone(),
        Transaction {
            state: csrf.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        },
    );
    tracing::info!("login started: redirecting to the provider");
    let jar = jar.add(cookie(
        state,
        &state.config.tx_cookie_name,
        tx_id,
        TRANSACTION_TTL.as_secs(),
    ));
    Ok((jar, found(url.as_str())?).into_response())
}

// ---------------------------------------------------------------- callback

/// The parameters of the authorization response this RP reads.
#[derive(Debug, Default)]
struct CallbackParams {
    state: Option<String>,
    code: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn parse_callback(query: &str) -> Result<CallbackParams, AppError> {
    let mut seen: HashMap<String, String> = HashMap::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if !matches!(
            key.as_ref(),
            "state" | "code" | "iss" | "error" | "error_description" | "error_uri"
        ) {
            continue; // unknown parameters are ignored
        }
        if value.len() > MAX_PARAM_LEN {
            return Err(AppError::BadCallback(format!(
                "{key} is longer than {MAX_PARAM_LEN} bytes"
            )));
        }
        if seen.insert(key.to_string(), value.into_owned()).is_some() {
            return Err(AppError::BadCallback(format!(
                "{key} appears more than once"
            )));
        }
    }
    Ok(CallbackParams {
        state: seen.remove("state"),
        code: seen.remove("code"),
        iss: seen.remove("iss"),
        error: seen.remove("error"),
        error_description: seen.remove("error_description"),
    })
}

/// `GET /login/oauth2/code/auth-adapter`: completes the login.
///
/// The transaction is removed first (single use), whatever happens next; the
/// transaction cookie is cleared on every outcome.
pub async fn callback(
    State(state): State<AppState>,
    jar: CookieJar,
    RawQuery(query): RawQuery,
) -> Response {
    let tx_id = jar
        .get(&state.config.tx_cookie_name)
        .map(|c| c.value().to_owned());
    let jar = jar.remove(removal(&state.config.tx_cookie_name));
    match complete_login(&state, tx_id, query.as_deref().unwrap_or("")).await {
        Ok(session_id) => {
            // A new session id on every login (fixation defence); the old one ends.
            if let Some(old) = jar.get(&state.config.cookie_name) {
                state.sessions.take(old.value());
            }
            let jar = jar.add(cookie(
                &state,
                &state.config.cookie_name,
                session_id,
                SESSION_TTL.as_secs(),
            ));
            (jar, Redirect::to("/authenticated")).into_response()
        }
        Err(err) => (jar, err).into_response(),
    }
}

async fn complete_login(
    state: &AppState,
    tx_id: Option<String>,
    query: &str,
) -> Result<String, AppError> {
    let tx = tx_id
        .and_then(|id| state.transactions.take(&id))
        .ok_or(AppError::NoTransaction)?;
    let params = parse_callback(query)?;

    // state first: nothing else in the response is trusted before it matches.
    let returned_state = params.state.as_deref().unwrap_or("");
    if !constant_time_eq(returned_state, &tx.state) {
        return Err(AppError::StateMismatch);
    }

    let provider = state.provider.get().await?;

    // RFC 9207: `iss` must equal the issuer; required if the provider advertises it.
    match params.iss.as_deref() {
        Some(iss) if iss != state.config.issuer => {
            return Err(AppError::IssuerMismatch {
                expected: state.config.issuer.clone(),
                got: Some(iss.to_owned()),
            })
        }
        None if provider.sends_iss_in_responses() => {
            return Err(AppError::IssuerMismatch {
                expected: state.config.issuer.clone(),
                got: None,
            })
        }
        _ => {}
    }

    if let Some(error) = params.error {
        return Err(AppError::ProviderRejected {
            error,
            description: params.error_description,
        });
    }
    let code = params
        .code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| AppError::BadCallback("no code in the response".into()))?;

    let token_response = exchange_code(state, &provider, code, tx.pkce_verifier).await?;
    let nonce = Nonce::new(tx.nonce);

    let verified = match verify_tokens(state, &provider, &token_response, &nonce) {
        Err(Failure::UnknownKey(why)) => {
            // Key rotation (OIDC Core §10.1.1): one re-discovery, then verify again.
            tracing::info!(error = %why, "token signed with an unknown key; refreshing the JWKS");
            let fresh = state.provider.refresh(&provider).await?;
            verify_tokens(state, &fresh, &token_response, &nonce)
        }
        other => other,
    }
    .map_err(Failure::into_error)?;

    let session_id = random_id();
    let sub = verified
        .id_token_claims
        .get("sub")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    state.sessions.insert(
        session_id.clone(),
        Arc::new(Session {
            id_token: verified.id_token,
            access_token: token_response.access_token().secret().clone(),
            refresh_token: token_response.refresh_token().map(|rt| rt.secret().clone()),
            id_token_claims: verified.id_token_claims,
            id_token_header: verified.id_token_header,
            access_token_claims: verified.access_token_claims,
            access_token_header: verified.access_token_header,
            created_at: now_unix(),
            refresh_count: 0,
            refreshed_at: None,
        }),
    );
    tracing::info!(sub, "login completed");
    Ok(session_id)
}

/// Redeems `code` at the token endpoint (client_secret_basic, PKCE verifier).
async fn exchange_code(
    state: &AppState,
    provider: &Provider,
    code: String,
    pkce_verifier: String,
) -> Result<CoreTokenResponse, AppError> {
    let client = oidc_client(
        provider,
        &state.client_id,
        state.client_secret.as_ref(),
        &state.redirect_uri,
    );
    let http = state.provider.http().clone();
    let http_client = move |req: HttpRequest| http_bridge(http.clone(), req);
    client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| AppError::Provider(format!("no token endpoint: {e}")))?
        .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
        .request_async(&http_client)
        .await
        .map_err(token_error)
}

/// A failed token request (RFC 6749 §5.2) as an [`AppError`].
pub(crate) fn token_error(
    err: RequestTokenError<HttpError, StandardErrorResponse<CoreErrorResponseType>>,
) -> AppError {
    match err {
        RequestTokenError::ServerResponse(resp) => AppError::TokenEndpoint {
            error: resp.error().to_string(),
            description: resp.error_description().cloned(),
        },
        RequestTokenError::Request(HttpError::Transport(e)) => {
            AppError::ProviderUnavailable(format!("token endpoint: {}", transport_reason(&e)))
        }
        RequestTokenError::Request(other) => {
            AppError::Provider(format!("token endpoint: {}", error_chain(&other)))
        }
        // The serde error may quote the body; report only where it failed.
        RequestTokenError::Parse(e, _body) => AppError::Provider(format!(
            "the token response is not a valid OAuth token response (at {})",
            e.path()
        )),
        RequestTokenError::Other(msg) => AppError::Provider(format!("token endpoint: {msg}")),
    }
}

struct Verified {
    id_token: String,
    id_token_claims: tokens::Claims,
    id_token_header: tokens::Claims,
    access_token_claims: tokens::Claims,
    access_token_header: tokens::Claims,
}

enum Failure {
    /// A token names a key the cached JWKS lacks: worth one re-discovery.
    /// Holds the error to report if the fresh JWKS lacks it too.
    UnknownKey(AppError),
    Rejected(AppError),
}

impl Failure {
    fn into_error(self) -> AppError {
        match self {
            Failure::UnknownKey(e) | Failure::Rejected(e) => e,
        }
    }
}

/// Verifies the ID token with `openidconnect` (signature with an allowlisted
/// algorithm, `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`, plus `at_hash` when
/// present) and the access token with [`tokens::verify_access_token`].
fn verify_tokens(
    state: &AppState,
    provider: &Provider,
    response: &CoreTokenResponse,
    nonce: &Nonce,
) -> Result<Verified, Failure> {
    let id_rejected = |msg: String| Failure::Rejected(AppError::IdTokenRejected(msg));
    let id_token = response
        .id_token()
        .ok_or_else(|| id_rejected("the token response has no id_token".into()))?;
    let client = oidc_client(
        provider,
        &state.client_id,
        state.client_secret.as_ref(),
        &state.redirect_uri,
    );
    // Asymmetric algorithms only: never an HMAC keyed with our client secret.
    let verifier = client.id_token_verifier().set_allowed_algs(vec![
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    ]);
    let claims = match id_token.claims(&verifier, nonce) {
        Ok(claims) => claims,
        Err(ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        )) => {
            return Err(Failure::UnknownKey(AppError::IdTokenRejected(
                "no key in the provider's JWKS matches its kid".into(),
            )))
        }
        Err(e) => return Err(id_rejected(error_chain(&e))),
    };
    if let Some(expected) = claims.access_token_hash() {
        let alg = id_token
            .signing_alg()
            .map_err(|e| id_rejected(error_chain(&e)))?;
        let key = id_token
            .signing_key(&verifier)
            .map_err(|e| id_rejected(error_chain(&e)))?;
        let actual = AccessTokenHash::from_token(response.access_token(), alg, key)
            .map_err(|e| id_rejected(error_chain(&e)))?;
        if actual.as_str() != expected.as_str() {
            return Err(id_rejected(
                "at_hash does not match the access token".into(),
            ));
        }
    }
    let raw_id_token = id_token.to_string();
    let undecodable = |_| id_rejected("the verified ID token could not be decoded".into());
    let id_token_claims = tokens::decode_payload(&raw_id_token).map_err(undecodable)?;
    let id_token_header = tokens::decode_header(&raw_id_token).map_err(undecodable)?;

    let access_token = response.access_token().secret();
    // RFC 9068 §4: `aud` is the resource server's business; the protected
    // API ([`crate::resource`]) checks it.
    let expect = Expect {
        issuer: &state.config.issuer,
        audience: None,
        now: state.clock.now(),
    };
    let access_token_claims = tokens::verify_access_token(access_token, &provider.jwks, expect)
        .map_err(|e| match e {
            TokenError::UnknownKey(_) => {
                Failure::UnknownKey(AppError::AccessTokenRejected(e.to_string()))
            }
            other => Failure::Rejected(AppError::AccessTokenRejected(other.to_string())),
        })?;
    if let (Some(at_sub), Some(id_sub)) =
        (access_token_claims.get("sub"), id_token_claims.get("sub"))
    {
        if at_sub != id_sub {
            return Err(Failure::Rejected(AppError::AccessTokenRejected(
                "its sub differs from the ID token's".into(),
            )));
        }
    }
    let access_token_header = tokens::decode_header(access_token)
        .map_err(|e| Failure::Rejected(AppError::AccessTokenRejected(e.to_string())))?;
    Ok(Verified {
        id_token: raw_id_token,
        id_token_claims,
        id_token_header,
        access_token_claims,
        access_token_header,
    })
}

// ---------------------------------------------------------------- API

/// `GET /api/me`: the session's verified claims and raw tokens.
pub async fn api_me(State(state): State<AppState>, jar: CookieJar) -> Response {
    match current_session(&state, &jar) {
        Some(s) => Json(json!({
            "id_token_claims": s.id_token_claims,
            "access_token_claims": s.access_token_claims,
            "access_token": s.access_token,
            "id_token": s.id_token,
        }))
        .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "unauthenticated" })),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------- logout

/// `GET /logout`: a confirm page with the POST buttons.
pub async fn logout_page(State(state): State<AppState>, jar: CookieJar) -> LogoutPage {
    let session = current_session(&state, &jar);
    LogoutPage {
        nav: Nav::for_session(session.as_deref()),
        provider_logout: state
            .provider
            .cached()
            .is_some_and(|p| p.end_session_endpoint().is_some()),
    }
}

/// The logout form.
#[derive(Debug, Default, Deserialize)]
pub struct LogoutForm {
    /// Any value: also log out at the provider (RP-Initiated Logout) if it
    /// advertises an `end_session_endpoint`.
    #[serde(default)]
    pub everywhere: Option<String>,
}

/// Refuses cross-origin form posts: `Sec-Fetch-Site` must be `same-origin`
/// or `none` when sent; otherwise an `Origin`, when sent, must be ours.
pub(crate) fn is_same_origin(headers: &HeaderMap, base_url: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.to_str(), Ok("same-origin" | "none"));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let ours = Url::parse(base_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    if origin == ours {
        return true;
    }
    // Reached under another name (e.g. localhost instead of 127.0.0.1).
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| {
            Url::parse(origin).is_ok_and(|o| {
                o.host_str().is_some()
                    && o.origin().ascii_serialization() == format!("{}://{host}", o.scheme())
            })
        })
}

/// `POST /logout`: deletes the server-side session, expires the cookie, and
/// 303s to `/`; with `everywhere` and a provider that advertises an
/// `end_session_endpoint`, 303s there instead (OpenID RP-Initiated Logout
/// 1.0 §2) with `id_token_hint`, `post_logout_redirect_uri` (`/logged-out`),
/// `client_id` and a fresh `state`, remembered server-side under a random id
/// in the logout cookie and checked on return ([`logged_out`]).
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Result<Response, AppError> {
    if !is_same_origin(&headers, &state.base_url) {
        return Err(AppError::CrossSite);
    }
    let form = form.map(|Form(f)| f).unwrap_or_default();
    let session = jar
        .get(&state.config.cookie_name)
        .and_then(|c| state.sessions.take(c.value()));
    let jar = jar.remove(removal(&state.config.cookie_name));
    if session.is_some() {
        tracing::info!("logged out");
    }
    let (Some(session), true) = (session, form.everywhere.is_some()) else {
        return Ok((jar, Redirect::to("/")).into_response());
    };
    // The metadata may have changed since login (a provider that gained an
    // end_session_endpoint); a provider that is down now gets the cached copy.
    let provider = match state.provider.get().await {
        Ok(p) => Some(p),
        Err(_) => state.provider.cached(),
    };
    let Some(endpoint) = provider
        .as_ref()
        .and_then(|p| p.end_session_endpoint())
        .map(|e| e.url().clone())
    else {
        return Ok((jar, Redirect::to("/")).into_response());
    };
    let logout_state = random_id();
    let logout_id = random_id();
    state.logouts.insert(
        logout_id.clone(),
        LogoutTransaction {
            state: logout_state.clone(),
            sid: session.sid().map(str::to_owned),
            sub: session.sub().map(str::to_owned),
        },
    );
    let mut url = endpoint;
    url.query_pairs_mut()
        .append_pair("id_token_hint", &session.id_token)
        .append_pair(
            "post_logout_redirect_uri",
            &state.config.post_logout_redirect_uri(),
        )
        .append_pair("client_id", state.client_id.as_str())
        .append_pair("state", &logout_state);
    tracing::info!("RP-initiated logout: redirecting to the provider");
    let jar = jar.add(cookie(
        &state,
        &state.config.logout_cookie_name(),
        logout_id,
        TRANSACTION_TTL.as_secs(),
    ));
    Ok((jar, Redirect::to(url.as_str())).into_response())
}

/// `GET /logged-out`: the provider's redirect after an RP-initiated logout
/// (OpenID RP-Initiated Logout 1.0 §3). The logout transaction of the
/// logout cookie is taken (single use) and its `state` must come back
/// unchanged; otherwise a 400 page. The cookie is cleared on every outcome.
pub async fn logged_out(
    State(state): State<AppState>,
    jar: CookieJar,
    RawQuery(query): RawQuery,
) -> Response {
    let name = state.config.logout_cookie_name();
    let logout_id = jar.get(&name).map(|c| c.value().to_owned());
    let jar = jar.remove(removal(&name));
    let tx = logout_id.and_then(|id| state.logouts.take(&id));
    let Some(tx) = tx else {
        return (jar, AppError::NoLogoutTransaction).into_response();
    };
    let mut returned: Option<String> = None;
    for (key, value) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        if key == "state" {
            if returned.is_some() || value.len() > MAX_PARAM_LEN {
                return (jar, AppError::LogoutStateMismatch).into_response();
            }
            returned = Some(value.into_owned());
        }
    }
    if !constant_time_eq(returned.as_deref().unwrap_or(""), &tx.state) {
        return (jar, AppError::LogoutStateMismatch).into_response();
    }
    tracing::info!("RP-initiated logout completed at the provider");
    let session = current_session(&state, &jar);
    let page = LoggedOutPage {
        nav: Nav::for_session(session.as_deref()),
        backchannel: state
            .backchannel_logouts
            .find(tx.sid.as_deref(), tx.sub.as_deref())
            .map(|e| crate::views::backchannel_line(&e, now_unix())),
    };
    (jar, page).into_response()
}

// ---------------------------------------------------------------- health, assets

/// `GET /healthz/live`.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "live" }))
}

/// `GET /healthz/ready`: ready once serving; the provider's state is reported
/// but never makes the app unready.
pub async fn ready(State(state): State<AppState>) -> Json<serde_json::Value> {
    let provider = if state.provider.cached().is_some() {
        "discovered"
    } else {
        "not yet discovered"
    };
    Json(json!({ "status": "ready", "provider": provider }))
}

/// `GET /assets/app.css`.
pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

/// `GET /assets/favicon.svg`.
pub async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Any other path: a 404 page.
pub async fn not_found() -> AppError {
    AppError::NotFound
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic
mod tests {
    use super::*;

    #[test]
    fn callback_params_reject_duplicates_and_oversize() {
        assert!(matches!(
            parse_callback("state=a&state=b"),
            Err(AppError::BadCallback(_))
        ));
        let long = "x".repeat(MAX_PARAM_LEN + 1);
        assert!(matches!(
            parse_callback(&format!("code={long}")),
            Err(AppError::BadCallback(_))
        ));
        let p = parse_callback("code=c&state=s&iss=http%3A%2F%2Fi&foo=1&foo=2").unwrap();
        assert_eq!(p.code.as_deref(), Some("c"));
        assert_eq!(p.iss.as_deref(), Some("http://i"));
    }

    #[test]
    fn same_origin_check() {
        let base = "http://127.0.0.1:8080";
        let mut h = HeaderMap::new();
        assert!(is_same_origin(&h, base), "no headers: a non-browser client");
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(is_same_origin(&h, base));
        h.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert!(!is_same_origin(&h, base));
        h.insert("host", HeaderValue::from_static("localhost:8080"));
        h.insert("origin", HeaderValue::from_static("http://localhost:8080"));
        assert!(is_same_origin(&h, base), "same origin under another name");
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(!is_same_origin(&h, base));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(is_same_origin(&h, base));
    }

    #[test]
    fn constant_time_eq_handles_lengths() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abcd"));
        assert!(!constant_time_eq("", "a"));
    }
}
