//! The authorization endpoint and the login steps behind it.
//!
//! ```text
//! /oauth2/authorize ─ session? ──yes──► code ──► client redirect_uri
//!        │ no
//!        ▼ AuthRequest persisted, browser bound by the transaction cookie
//! callback connector: 302 upstream ─► /login/oauth2/code/{id} ─► session ─► code
//! password connector: /login/{id} form ─► POST ─► session ─► code
//! ```
//!
//! Before the client and its redirect URI are validated, errors are an HTML
//! page and never a redirect (RFC 6749 §4.1.2.1, checklist A2); after, they
//! go to the client with `error`, `state` and `iss` (A9, RFC 9207).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use serde::Deserialize;

use super::{callback_path, AppState, AuthRequest, Client, CodeRecord, LoginState, SessionRecord};
use crate::connector::{Connector, ConnectorError, ConnectorKind, Identity};
use crate::error::{ErrorCode, OAuthError};
use crate::secret::{ct_eq, hash, random_token};
use crate::store::{Kind, TakenJson};
use crate::web::{self, found, see_other, LoginPage};

/// Longest accepted `state`, `nonce`, `redirect_uri`… (checklist F7).
pub const MAX_PARAM_LEN: usize = 2048;

/// `prompt` values we act on (OIDC Core §3.1.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prompt {
    #[default]
    Default,
    /// Never show UI: `login_required` when there is no session.
    None,
    /// Force a fresh login.
    Login,
}

/// A validated authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub prompt: Prompt,
    pub max_age: Option<i64>,
}

/// Why a request was refused, and how to say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// No redirect is safe: show a page.
    Page(&'static str),
    /// Redirect the error to the (validated) redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: OAuthError,
    },
}

/// Decodes `application/x-www-form-urlencoded` pairs (query or body).
pub fn form_pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

impl AuthorizeRequest {
    /// Validates the parameters in the order the spec needs: client and
    /// redirect URI first (page errors), then everything else (redirects).
    pub fn parse(
        params: &[(String, String)],
        clients: &HashMap<String, Client>,
    ) -> Result<Self, AuthorizeError> {
        let mut map: HashMap<&str, &str> = HashMap::new();
        let mut repeated: Option<&str> = None;
        for (k, v) in params {
            // RFC 6749 §3.1: parameters must not be included more than once.
            if map.insert(k.as_str(), v.as_str()).is_some() && repeated.is_none() {
                repeated = Some(k.as_str());
            }
        }
        let get = |k: &str| map.get(k).copied().filter(|v| !v.is_empty());

        let client_id =
            get("client_id").ok_or(AuthorizeError::Page("The request has no client_id."))?;
        if matches!(repeated, Some("client_id" | "redirect_uri")) {
            return Err(AuthorizeError::Page(
                "client_id or redirect_uri is repeated.",
            ));
        }
        let client = clients.get(client_id).ok_or(AuthorizeError::Page(
            "The application (client_id) is not registered.",
        ))?;
        let redirect_uri =
            get("redirect_uri").ok_or(AuthorizeError::Page("The request has no redirect_uri."))?;
        // Checklist A1: exact string match, no normalisation.
        if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
            return Err(AuthorizeError::Page(
                "The redirect_uri is not registered for this application.",
            ));
        }

        let state = get("state")
            .filter(|s| s.len() <= MAX_PARAM_LEN)
            .map(String::from);
        let fail = |error: OAuthError| AuthorizeError::Redirect {
            redirect_uri: redirect_uri.to_string(),
            state: state.clone(),
            error,
        };
        if get("state").is_some_and(|s| s.len() > MAX_PARAM_LEN) {
            return Err(fail(OAuthError::invalid_request("state is too long")));
        }
        if let Some(k) = repeated {
            return Err(fail(OAuthError::invalid_request(format!(
                "parameter {k} is repeated"
            ))));
        }
        // Checklist A12: request objects are not supported.
        if map.contains_key("request") {
            return Err(fail(OAuthError::new(
                ErrorCode::RequestNotSupported,
                "request objects are not supported",
            )));
        }
        if map.contains_key("request_uri") {
            return Err(fail(OAuthError::new(
                ErrorCode::RequestUriNotSupported,
                "request_uri is not supported",
            )));
        }
        // Checklist A4: code flow only.
        match get("response_type") {
            None => {
                return Err(fail(OAuthError::invalid_request(
                    "response_type is required",
                )))
            }
            Some("code") => {}
            Some(_) => {
                return Err(fail(OAuthError::new(
                    ErrorCode::UnsupportedResponseType,
                    "only response_type=code is supported",
                )))
            }
        }
        if get("response_mode").is_some_and(|m| m != "query") {
            return Err(fail(OAuthError::invalid_request(
                "only response_mode=query is supported",
            )));
        }
        // Checklist A6: openid is required; other scopes are limited to the
        // client's allowed set, unknown ones ignored.
        let requested: Vec<&str> = get("scope")
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect();
        if !requested.contains(&"openid") {
            return Err(fail(OAuthError::invalid_scope("scope must contain openid")));
        }
        let mut scopes: Vec<String> = Vec::new();
        for s in requested {
            if (s == "openid" || client.allowed_scopes.iter().any(|a| a == s))
                && !scopes.iter().any(|x| x == s)
            {
                scopes.push(s.to_string());
            }
        }
        let nonce = get("nonce").map(String::from);
        if nonce.as_ref().is_some_and(|n| n.len() > MAX_PARAM_LEN) {
            return Err(fail(OAuthError::invalid_request("nonce is too long")));
        }
        // Checklist A5, RFC 7636 §4.3 and RFC 9700 §2.1.1: S256 only; a
        // missing method means `plain`, which is refused.
        let code_challenge = match (get("code_challenge"), get("code_challenge_method")) {
            (None, Some(_)) => {
                return Err(fail(OAuthError::invalid_request(
                    "code_challenge_method without code_challenge",
                )))
            }
            (None, None) if client.require_pkce => {
                return Err(fail(OAuthError::invalid_request(
                    "PKCE is required: send code_challenge with code_challenge_method=S256",
                )))
            }
            (None, None) => None,
            (Some(c), Some("S256")) => {
                if c.len() != 43
                    || !c
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(fail(OAuthError::invalid_request(
                        "code_challenge is not a base64url SHA-256",
                    )));
                }
                Some(c.to_string())
            }
            (Some(_), _) => {
                return Err(fail(OAuthError::invalid_request(
                    "code_challenge_method must be S256",
                )))
            }
        };
        let prompts: Vec<&str> = get("prompt")
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect();
        let prompt = if prompts.contains(&"none") {
            if prompts.len() > 1 {
                return Err(fail(OAuthError::invalid_request(
                    "prompt=none cannot be combined",
                )));
            }
            Prompt::None
        } else if prompts.contains(&"login") {
            Prompt::Login
        } else {
            Prompt::Default
        };
        let max_age = match get("max_age") {
            None => None,
            Some(v) => Some(v.parse::<i64>().ok().filter(|m| *m >= 0).ok_or_else(|| {
                fail(OAuthError::invalid_request(
                    "max_age must be a non-negative integer",
                ))
            })?),
        };
        Ok(AuthorizeRequest {
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.to_string(),
            scopes,
            state,
            nonce,
            code_challenge,
            prompt,
            max_age,
        })
    }
}

/// `redirect_uri` with `params` appended to its query.
fn client_redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut url = url::Url::parse(redirect_uri).ok()?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    Some(url.to_string())
}

/// Sends an error to the client (A9): `error`, `error_description`, `state`, `iss`.
fn redirect_error(
    st: &AppState,
    redirect_uri: &str,
    state: Option<&str>,
    error: &OAuthError,
) -> Response {
    let mut params = vec![
        ("error", error.code.as_str()),
        ("error_description", error.description.as_str()),
    ];
    if let Some(s) = state {
        params.push(("state", s));
    }
    params.push(("iss", st.issuer()));
    match client_redirect(redirect_uri, &params) {
        Some(location) => found(&location),
        None => st.error_page(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            &error.description,
        ),
    }
}

fn authorize_error(st: &AppState, e: AuthorizeError) -> Response {
    match e {
        AuthorizeError::Page(message) => {
            st.error_page(StatusCode::BAD_REQUEST, "Invalid request", message)
        }
        AuthorizeError::Redirect {
            redirect_uri,
            state,
            error,
        } => redirect_error(st, &redirect_uri, state.as_deref(), &error),
    }
}

/// How a connector failure reaches the client (E3, E8). Details go to the
/// log, not to the browser.
fn connector_error(e: &ConnectorError) -> OAuthError {
    tracing::warn!(error = %e, "upstream login failed");
    e.oauth_error()
}

/// The session of this browser, if any and still valid.
async fn current_session(
    st: &AppState,
    jar: &CookieJar,
) -> Result<Option<SessionRecord>, Response> {
    let Some(cookie) = jar.get(&st.config.session.cookie_name) else {
        return Ok(None);
    };
    let session: Option<SessionRecord> = st
        .store
        .get_json(Kind::Session, &hash(cookie.value()), st.now())
        .await
        .map_err(|e| st.storage_failure(&e))?;
    Ok(session.filter(|s| st.connector(&s.identity.connector_id).is_some()))
}

/// The transaction cookie's value, created when missing. The cookie is
/// (re)set either way so that it outlives the login being started.
fn transaction(st: &AppState, jar: CookieJar) -> (CookieJar, String) {
    let name = &st.config.session.transaction_cookie_name;
    let value = jar
        .get(name)
        .map(|c| c.value().to_string())
        .filter(|v| v.len() >= 43)
        .unwrap_or_else(random_token);
    let cookie = web::cookie(
        name,
        value.clone(),
        st.cookie_secure,
        Some(st.config.tokens.login_ttl_seconds),
    );
    (jar.add(cookie), value)
}

/// The synchronizer token of the login form: derived from the HttpOnly
/// transaction cookie, so a cross-site page can neither read nor forge it (D6).
fn csrf_token(transaction: &str) -> String {
    hash(&format!("csrf:{transaction}"))
}

fn bound_to_browser(st: &AppState, jar: &CookieJar, ar: &AuthRequest) -> bool {
    jar.get(&st.config.session.transaction_cookie_name)
        .is_some_and(|c| ct_eq(&hash(c.value()), &ar.browser_binding))
}

/// Issues a code for `ar` and redirects to the client.
async fn issue_code(
    st: &AppState,
    ar: &AuthRequest,
    identity: Identity,
    auth_time: i64,
    after_post: bool,
) -> Response {
    let code = random_token();
    let record = CodeRecord {
        client_id: ar.client_id.clone(),
        redirect_uri: ar.redirect_uri.clone(),
        scopes: ar.scopes.clone(),
        nonce: ar.nonce.clone(),
        code_challenge: ar.code_challenge.clone(),
        identity,
        auth_time,
    };
    let expires = st.now() + st.config.tokens.code_ttl_seconds;
    if let Err(e) = st
        .store
        .put_json(Kind::Code, &hash(&code), &record, expires)
        .await
    {
        return st.storage_failure(&e);
    }
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = &ar.state {
        params.push(("state", s));
    }
    params.push(("iss", st.issuer()));
    match client_redirect(&ar.redirect_uri, &params) {
        Some(location) if after_post => see_other(&location),
        Some(location) => found(&location),
        None => st.error_page(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            "Bad redirect URI.",
        ),
    }
}

/// A login succeeded: new session (new id, D2), then a code for the client.
async fn login_success(
    st: &AppState,
    jar: CookieJar,
    ar: &AuthRequest,
    identity: Identity,
    after_post: bool,
) -> Response {
    let name = st.config.session.cookie_name.clone();
    if let Some(old) = jar.get(&name) {
        if let Err(e) = st.store.delete(Kind::Session, &hash(old.value())).await {
            return st.storage_failure(&e);
        }
    }
    let now = st.now();
    let session_id = random_token();
    let record = SessionRecord {
        identity: identity.clone(),
        auth_time: now,
    };
    let expires = now + st.config.session.ttl_seconds;
    if let Err(e) = st
        .store
        .put_json(Kind::Session, &hash(&session_id), &record, expires)
        .await
    {
        return st.storage_failure(&e);
    }
    tracing::info!(connector = %identity.connector_id, client = %ar.client_id, "login succeeded");
    let jar = jar.add(web::cookie(&name, session_id, st.cookie_secure, None));
    (jar, issue_code(st, ar, identity, now, after_post).await).into_response()
}

/// Starts a login with `connector` for the persisted request `ar_id`.
async fn start_login(
    st: &AppState,
    connector: &Connector,
    ar_id: &str,
    ar: &AuthRequest,
) -> Response {
    match &connector.kind {
        ConnectorKind::Password(_) => {
            let location = format!("/login/{}?req={}", connector.id, ar_id);
            found(&location)
        }
        ConnectorKind::Callback(c) => {
            let login_state = random_token();
            let callback_url = format!("{}{}", st.issuer(), callback_path(&connector.id));
            let begin = crate::connector::BeginRequest {
                callback_url: &callback_url,
                state: &login_state,
                prompt: None,
                max_age: None,
                login_hint: None,
            };
            let begun = match c.begin(&begin).await {
                Ok(b) => b,
                Err(e) => {
                    let _ = st.store.delete(Kind::AuthRequest, ar_id).await;
                    return redirect_error(
                        st,
                        &ar.redirect_uri,
                        ar.state.as_deref(),
                        &connector_error(&e),
                    );
                }
            };
            let record = LoginState {
                auth_request_id: ar_id.to_string(),
                connector_id: connector.id.clone(),
                connector_state: begun.connector_state,
            };
            let expires = st.now() + st.config.tokens.login_ttl_seconds;
            if let Err(e) = st
                .store
                .put_json(Kind::LoginState, &hash(&login_state), &record, expires)
                .await
            {
                return st.storage_failure(&e);
            }
            found(&begun.redirect_url)
        }
    }
}

pub async fn authorize_get(
    State(st): State<AppState>,
    jar: CookieJar,
    RawQuery(q): RawQuery,
) -> Response {
    authorize(st, jar, form_pairs(q.unwrap_or_default().as_bytes())).await
}

/// OIDC Core §3.1.2.1: POST with form parameters is accepted too (A13).
pub async fn authorize_post(State(st): State<AppState>, jar: CookieJar, body: Bytes) -> Response {
    authorize(st, jar, form_pairs(&body)).await
}

async fn authorize(st: AppState, jar: CookieJar, params: Vec<(String, String)>) -> Response {
    let req = match AuthorizeRequest::parse(&params, &st.clients) {
        Ok(r) => r,
        Err(e) => return authorize_error(&st, e),
    };
    let now = st.now();
    let session = match current_session(&st, &jar).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let (jar, tx) = transaction(&st, jar);
    let ar = AuthRequest {
        client_id: req.client_id.clone(),
        redirect_uri: req.redirect_uri.clone(),
        scopes: req.scopes.clone(),
        state: req.state.clone(),
        nonce: req.nonce.clone(),
        code_challenge: req.code_challenge.clone(),
        browser_binding: hash(&tx),
    };
    // Single sign-on: an existing session answers at once, unless the
    // client asks for a fresh login or the session is older than max_age (A10, A11).
    if let Some(s) = session {
        let fresh_enough = req.max_age.is_none_or(|m| now - s.auth_time <= m);
        if req.prompt != Prompt::Login && fresh_enough {
            return issue_code(&st, &ar, s.identity, s.auth_time, false).await;
        }
    }
    if req.prompt == Prompt::None {
        let e = OAuthError::new(ErrorCode::LoginRequired, "the user is not logged in");
        return redirect_error(&st, &req.redirect_uri, req.state.as_deref(), &e);
    }
    let ar_id = random_token();
    let expires = now + st.config.tokens.login_ttl_seconds;
    if let Err(e) = st
        .store
        .put_json(Kind::AuthRequest, &ar_id, &ar, expires)
        .await
    {
        return st.storage_failure(&e);
    }
    let response = match st.connectors.as_slice() {
        [] => st.error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "No login method",
            "No identity provider is configured.",
        ),
        [only] => start_login(&st, only, &ar_id, &ar).await,
        many => web::ChoosePage {
            title: st.title().to_string(),
            req: ar_id,
            connectors: many
                .iter()
                .map(|c| (c.id.clone(), c.name.clone()))
                .collect(),
        }
        .into_response(),
    };
    (jar, response).into_response()
}

#[derive(Debug, Deserialize)]
pub struct ReqQuery {
    req: String,
}

/// Loads a pending request that must belong to this browser.
async fn pending(st: &AppState, jar: &CookieJar, ar_id: &str) -> Result<AuthRequest, Response> {
    let ar: Option<AuthRequest> = st
        .store
        .get_json(Kind::AuthRequest, ar_id, st.now())
        .await
        .map_err(|e| st.storage_failure(&e))?;
    match ar {
        Some(ar) if bound_to_browser(st, jar, &ar) => Ok(ar),
        Some(_) => Err(st.error_page(
            StatusCode::BAD_REQUEST,
            "Login not found",
            "This login was started in another browser.",
        )),
        None => Err(expired_page(st)),
    }
}

fn expired_page(st: &AppState) -> Response {
    st.error_page(
        StatusCode::BAD_REQUEST,
        "Login expired",
        "This login is unknown, expired or already finished.",
    )
}

/// `GET /login/start/{connector}?req=…` from the chooser page.
pub async fn login_start(
    State(st): State<AppState>,
    jar: CookieJar,
    Path(connector_id): Path<String>,
    Query(q): Query<ReqQuery>,
) -> Response {
    let Some(connector) = st.connector(&connector_id).cloned() else {
        return st.error_page(StatusCode::NOT_FOUND, "Not found", "Unknown login method.");
    };
    match pending(&st, &jar, &q.req).await {
        Ok(ar) => start_login(&st, &connector, &q.req, &ar).await,
        Err(page) => page,
    }
}

/// `GET /login/oauth2/code/{connector}`: the upstream sends the browser back.
pub async fn upstream_callback(
    State(st): State<AppState>,
    jar: CookieJar,
    Path(connector_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(state) = params.get("state") else {
        return st.error_page(
            StatusCode::BAD_REQUEST,
            "Invalid callback",
            "The callback has no state.",
        );
    };
    let now = st.now();
    // E3: the state is consumed once; a replayed callback finds it used.
    let ls: LoginState = match st
        .store
        .take_json(Kind::LoginState, &hash(state), now)
        .await
    {
        Ok(TakenJson::Fresh(ls)) => ls,
        Ok(TakenJson::AlreadyUsed) => {
            return st.error_page(
                StatusCode::BAD_REQUEST,
                "Invalid callback",
                "This login response was already used.",
            )
        }
        Ok(TakenJson::Expired) => return expired_page(&st),
        Ok(TakenJson::Missing) => {
            return st.error_page(
                StatusCode::BAD_REQUEST,
                "Invalid callback",
                "The state does not match any login in progress.",
            )
        }
        Err(e) => return st.storage_failure(&e),
    };
    // Mix-up defence (RFC 9700 §4.4): the answer must come back on the
    // callback of the upstream the login went to.
    if ls.connector_id != connector_id {
        return st.error_page(
            StatusCode::BAD_REQUEST,
            "Invalid callback",
            "The response came from another identity provider.",
        );
    }
    let ar: AuthRequest = match st
        .store
        .take_json(Kind::AuthRequest, &ls.auth_request_id, now)
        .await
    {
        Ok(TakenJson::Fresh(ar)) => ar,
        Ok(_) => return expired_page(&st),
        Err(e) => return st.storage_failure(&e),
    };
    if !bound_to_browser(&st, &jar, &ar) {
        return st.error_page(
            StatusCode::BAD_REQUEST,
            "Invalid callback",
            "This login was started in another browser.",
        );
    }
    let Some(ConnectorKind::Callback(connector)) =
        st.connector(&connector_id).map(|c| c.kind.clone())
    else {
        return st.error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "Unknown identity provider.",
        );
    };
    let callback_url = format!("{}{}", st.issuer(), callback_path(&connector_id));
    match connector
        .complete(&callback_url, &params, &ls.connector_state)
        .await
    {
        Ok(identity) => login_success(&st, jar, &ar, identity, false).await,
        Err(e) => redirect_error(
            &st,
            &ar.redirect_uri,
            ar.state.as_deref(),
            &connector_error(&e),
        ),
    }
}

fn login_page(
    st: &AppState,
    connector_id: &str,
    ar_id: &str,
    ar: &AuthRequest,
    tx: &str,
) -> LoginPage {
    LoginPage {
        title: st.title().to_string(),
        connector_id: connector_id.to_string(),
        req: ar_id.to_string(),
        csrf_token: csrf_token(tx),
        client_name: st.clients.get(&ar.client_id).map(|c| c.name.clone()),
        username: String::new(),
        error: None,
        hint: st.config.ui.login_hint.clone(),
    }
}

fn password_connector(
    st: &AppState,
    id: &str,
) -> Option<std::sync::Arc<dyn crate::connector::PasswordConnector>> {
    match st.connector(id).map(|c| &c.kind) {
        Some(ConnectorKind::Password(p)) => Some(p.clone()),
        _ => None,
    }
}

/// `GET /login/{connector}?req=…`: the login form of a password connector.
pub async fn login_form(
    State(st): State<AppState>,
    jar: CookieJar,
    Path(connector_id): Path<String>,
    Query(q): Query<ReqQuery>,
) -> Response {
    if password_connector(&st, &connector_id).is_none() {
        return st.error_page(StatusCode::NOT_FOUND, "Not found", "Unknown login method.");
    }
    let ar = match pending(&st, &jar, &q.req).await {
        Ok(ar) => ar,
        Err(page) => return page,
    };
    let tx = jar
        .get(&st.config.session.transaction_cookie_name)
        .map(|c| c.value().to_string())
        .unwrap_or_default();
    login_page(&st, &connector_id, &q.req, &ar, &tx).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    req: String,
    csrf_token: String,
    username: String,
    password: String,
}

/// D6: refuse cross-site form posts (Fetch Metadata, then Origin).
fn cross_site(st: &AppState, headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    match headers.get("origin").and_then(|v| v.to_str().ok()) {
        Some(origin) => url::Url::parse(st.issuer())
            .map(|u| u.origin().ascii_serialization() != origin)
            .unwrap_or(true),
        None => false,
    }
}

/// `POST /login/{connector}`: checks the credentials.
pub async fn login_submit(
    State(st): State<AppState>,
    jar: CookieJar,
    Path(connector_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(connector) = password_connector(&st, &connector_id) else {
        return st.error_page(StatusCode::NOT_FOUND, "Not found", "Unknown login method.");
    };
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return st.error_page(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            "The login form is incomplete.",
        );
    };
    let tx = jar
        .get(&st.config.session.transaction_cookie_name)
        .map(|c| c.value().to_string())
        .unwrap_or_default();
    if cross_site(&st, &headers) || tx.is_empty() || !ct_eq(&csrf_token(&tx), &form.csrf_token) {
        return st.error_page(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The form could not be verified. Reload the page and try again.",
        );
    }
    let ar = match pending(&st, &jar, &form.req).await {
        Ok(ar) => ar,
        Err(page) => return page,
    };
    let identity = match connector.login(&form.username, &form.password).await {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            tracing::info!(connector = %connector_id, "login failed: bad credentials");
            let mut page = login_page(&st, &connector_id, &form.req, &ar, &tx);
            page.username = form.username;
            page.error = Some("Invalid username or password.".into());
            return (StatusCode::UNAUTHORIZED, page).into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "password connector failed");
            return st.error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                "Please try again shortly.",
            );
        }
    };
    // The pending request is single-use: a double submit finds it gone.
    match st
        .store
        .take_json::<AuthRequest>(Kind::AuthRequest, &form.req, st.now())
        .await
    {
        Ok(TakenJson::Fresh(_)) => login_success(&st, jar, &ar, identity, true).await,
        Ok(_) => expired_page(&st),
        Err(e) => st.storage_failure(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::pkce_s256;

    fn clients(require_pkce: bool) -> HashMap<String, Client> {
        let c = Client {
            id: "app".into(),
            name: "App".into(),
            secret_hash: Some(hash("s")),
            redirect_uris: vec!["http://127.0.0.1:8080/cb".into()],
            allowed_scopes: vec!["openid".into(), "profile".into()],
            public: false,
            require_pkce,
        };
        HashMap::from([("app".to_string(), c)])
    }

    fn params(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let challenge = pkce_s256(&"v".repeat(43));
        let mut p: Vec<(String, String)> = vec![
            ("client_id".into(), "app".into()),
            ("redirect_uri".into(), "http://127.0.0.1:8080/cb".into()),
            ("response_type".into(), "code".into()),
            ("scope".into(), "openid profile email".into()),
            ("state".into(), "st".into()),
            ("code_challenge".into(), challenge),
            ("code_challenge_method".into(), "S256".into()),
        ];
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            if !v.is_empty() {
                p.push((k.to_string(), v.to_string()));
            }
        }
        p
    }

    fn redirect_code(r: Result<AuthorizeRequest, AuthorizeError>) -> ErrorCode {
        match r {
            Err(AuthorizeError::Redirect { error, state, .. }) => {
                assert_eq!(state.as_deref(), Some("st"), "state is echoed (A7)");
                error.code
            }
            other => panic!("expected a redirect error, got {other:?}"),
        }
    }

    #[test]
    fn valid_request_parses_and_filters_scopes() {
        let r = AuthorizeRequest::parse(&params(&[("nonce", "n")]), &clients(true)).unwrap();
        assert_eq!(
            r.scopes,
            vec!["openid", "profile"],
            "email is not allowed for this client"
        );
        assert_eq!(r.nonce.as_deref(), Some("n"));
    }

    #[test]
    fn client_and_redirect_errors_never_redirect() {
        let c = clients(true);
        for p in [
            params(&[("client_id", "")]),
            params(&[("client_id", "evil")]),
            params(&[("redirect_uri", "")]),
            params(&[("redirect_uri", "http://127.0.0.1:8080/cb/")]),
            params(&[("redirect_uri", "http://127.0.0.1:8080/CB")]),
            params(&[("redirect_uri", "http://127.0.0.1:8080/cb?x=1")]),
        ] {
            assert!(
                matches!(
                    AuthorizeRequest::parse(&p, &c),
                    Err(AuthorizeError::Page(_))
                ),
                "{p:?}"
            );
        }
        let mut dup = params(&[]);
        dup.push(("redirect_uri".into(), "http://evil/cb".into()));
        assert!(matches!(
            AuthorizeRequest::parse(&dup, &c),
            Err(AuthorizeError::Page(_))
        ));
    }

    #[test]
    fn protocol_errors_redirect_with_rfc_codes() {
        let c = clients(true);
        let parse = |p: Vec<(String, String)>| redirect_code(AuthorizeRequest::parse(&p, &c));
        assert_eq!(
            parse(params(&[("response_type", "")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("response_type", "token")])),
            ErrorCode::UnsupportedResponseType
        );
        assert_eq!(
            parse(params(&[("response_type", "code id_token")])),
            ErrorCode::UnsupportedResponseType
        );
        assert_eq!(
            parse(params(&[("scope", "profile")])),
            ErrorCode::InvalidScope
        );
        assert_eq!(
            parse(params(&[("code_challenge", "")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("code_challenge_method", "plain")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("code_challenge_method", "")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("code_challenge", "short")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("request", "eyJ")])),
            ErrorCode::RequestNotSupported
        );
        assert_eq!(
            parse(params(&[("request_uri", "https://x")])),
            ErrorCode::RequestUriNotSupported
        );
        assert_eq!(
            parse(params(&[("response_mode", "fragment")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("max_age", "-1")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("prompt", "none login")])),
            ErrorCode::InvalidRequest
        );
        let mut dup = params(&[]);
        dup.push(("scope".into(), "openid".into()));
        assert_eq!(parse(dup), ErrorCode::InvalidRequest);
    }

    #[test]
    fn pkce_optional_only_for_opted_out_confidential_clients() {
        let p = params(&[("code_challenge", ""), ("code_challenge_method", "")]);
        assert!(AuthorizeRequest::parse(&p, &clients(false))
            .unwrap()
            .code_challenge
            .is_none());
        assert_eq!(
            redirect_code(AuthorizeRequest::parse(&p, &clients(true))),
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn unknown_parameters_are_ignored() {
        let r = AuthorizeRequest::parse(
            &params(&[("ui_locales", "de"), ("foo", "bar")]),
            &clients(true),
        );
        assert!(r.is_ok());
    }
}
