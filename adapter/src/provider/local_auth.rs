//! The local-accounts front ends besides the login form of an authorization
//! request: the multi-step JSON API (`POST /api/auth`), the seed's plain
//! endpoints (`/register`, `/login`, `/verify-otp`), and their HTML pages.
//! Every one of them runs [`crate::accounts::authn::Authenticator::advance`],
//! the same state machine as the login form; none checks a credential
//! itself.
//!
//! These requests come before any session, so there is no session-bound
//! CSRF token yet: they are refused when cross-site (Fetch Metadata, then
//! `Origin`; OWASP ASVS 5.0 V3.5.3), which stops login CSRF. What needs a
//! session afterwards needs its CSRF token too, which a successful login
//! returns in its JSON body.

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum_extra::extract::cookie::CookieJar;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::browser::{cross_site, set_session_cookies, Cookies};
use super::AppState;
use crate::accounts::authn::{
    AuthError, AuthState, Authenticator, CredKind, Credential, Mech, Reply, Step,
};
use crate::accounts::pending::{PendingAuths, PendingError};
use crate::accounts::{AccountError, NewAccount};
use crate::flow::FlowError;
use crate::paths;
use crate::ratelimit::{ClientIp, Scope};
use crate::web;

/// An error of these endpoints, as JSON (`{"error", "error_description"}`)
/// or, for a browser, an HTML page.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
    pub html: bool,
    /// Seconds for `Retry-After` (RFC 9110 §10.2.3) of a 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        description: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            description: description.into(),
            html: false,
            retry_after: None,
        }
    }

    fn rate_limited(retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many attempts; retry in {retry_after} s"),
            )
        }
    }

    pub(super) fn bad(code: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, description)
    }

    fn html(mut self, html: bool) -> Self {
        self.html = html;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

impl ApiError {
    fn response(&self) -> Response {
        if self.html {
            let heading = match self.status {
                StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
                StatusCode::SERVICE_UNAVAILABLE => "Temporarily unavailable",
                StatusCode::FORBIDDEN => "Forbidden",
                StatusCode::NOT_FOUND => "Not found",
                _ => "Invalid request",
            };
            return web::PageError::new(self.status, heading, self.description.clone())
                .into_response();
        }
        (
            self.status,
            Json(json!({"error": self.code, "error_description": self.description})),
        )
            .into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match &e {
            AuthError::Throttled { retry_after } => ApiError::rate_limited(*retry_after),
            AuthError::Account(AccountError::Hash(_)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code(),
                "too many logins in progress; retry shortly",
            ),
            AuthError::Account(_) | AuthError::Codes(_) | AuthError::Passkeys(_) => {
                tracing::error!(error = %e, "local authentication failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "please retry shortly",
                )
            }
            _ => ApiError::bad(e.code(), e.to_string()),
        }
    }
}

impl From<PendingError> for ApiError {
    fn from(e: PendingError) -> Self {
        match e {
            PendingError::Unknown => ApiError::bad("unknown_session", e.to_string()),
            PendingError::Finished => ApiError::bad("finished", e.to_string()),
            PendingError::Conflict => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            PendingError::Storage(s) => storage(s.to_string()),
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::UsernameTaken => {
                ApiError::new(StatusCode::CONFLICT, "username_taken", e.to_string())
            }
            AccountError::EmailTaken => {
                ApiError::new(StatusCode::CONFLICT, "email_taken", e.to_string())
            }
            AccountError::Invalid(m) => ApiError::bad("invalid_request", m),
            AccountError::RegistrationClosed => {
                ApiError::new(StatusCode::FORBIDDEN, "registration_closed", e.to_string())
            }
            AccountError::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such account")
            }
            other => AuthError::Account(other).into(),
        }
    }
}

impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> Self {
        storage(e.to_string())
    }
}

pub(super) fn storage(detail: String) -> ApiError {
    tracing::error!(error = %detail, "storage failure");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the service cannot reach its storage; retry shortly",
    )
}

/// The local-accounts connector, when this provider has one.
pub(super) fn authenticator(st: &AppState) -> Result<&Arc<Authenticator>, ApiError> {
    st.flows.local_accounts().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "local accounts are not enabled",
        )
    })
}

pub(super) fn pending(st: &AppState, authn: &Authenticator) -> PendingAuths {
    PendingAuths::new(
        st.store.clone(),
        st.clock.clone(),
        authn.accounts().config().flow_ttl_seconds,
    )
}

/// A browser (which gets HTML) tells by `Accept`; curl and API clients get JSON.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// A JSON or `application/x-www-form-urlencoded` body.
pub(super) fn parse_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let parsed = if json {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    } else {
        serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| ApiError::bad("invalid_request", format!("malformed request: {e}")))
}

/// The per-client-address quota of `scope` (RFC 6585 §4).
pub(super) fn ip_quota(st: &AppState, scope: Scope, ip: std::net::IpAddr) -> Result<(), ApiError> {
    st.rate_limits
        .check_ip(scope, ip)
        .map_err(|l| ApiError::rate_limited(l.retry_after))
}

pub(super) fn same_site(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if cross_site(st, headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "cross-site request refused",
        ));
    }
    Ok(())
}

/// The session-bound CSRF token of a session cookie (sent back in the
/// `X-CSRF-Token` header or a `csrf_token` field of later requests); the
/// account pages check it ([`super::account::AccountSession`]).
pub use super::account::session_csrf_token;

/// Starts a session for a successful authentication: sets the cookie and
/// answers with the token, its CSRF token and how the user authenticated.
pub(super) async fn logged_in(
    st: &AppState,
    jar: CookieJar,
    browser: &Cookies,
    reply: Reply,
) -> Result<(CookieJar, Value), ApiError> {
    let Reply::Success {
        identity,
        privileged,
    } = reply
    else {
        return Err(ApiError::bad(
            "out_of_order",
            "the authentication is not complete",
        ));
    };
    let browser = browser.browser();
    let authn = authenticator(st)?;
    let started = if privileged {
        let ttl = authn.accounts().config().privileged_session_seconds;
        st.flows.start_session_for(*identity, browser, ttl).await?
    } else {
        st.flows.start_session(*identity, browser).await?
    };
    let s = &started.session;
    let body = json!({
        "state": "success",
        "token": started.cookie,
        "csrf_token": session_csrf_token(&started.cookie),
        "username": s.identity.subject,
        "amr": s.identity.amr,
        "acr": s.identity.acr,
        "privileged": privileged,
        "expires_in": s.expires_at - st.now(),
    });
    let jar = set_session_cookies(
        st,
        jar,
        started.cookie,
        started.device_cookie,
        started.session.expires_at,
    );
    Ok((jar, body))
}

fn reply_json(reply: &Reply) -> Value {
    match reply {
        Reply::Choose(mechs) => json!({
            "state": "choose",
            "mechs": mechs.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        }),
        Reply::Continue {
            allowed,
            retry,
            options,
        } => {
            let mut v = json!({
                "state": "continue",
                "allowed": allowed.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            });
            if let Some(r) = retry {
                v["retry"] = json!(r);
            }
            if let Some(o) = options {
                // WebAuthn L2 §5.5: `{"publicKey": PublicKeyCredentialRequestOptions}`.
                v["options"] = o.clone();
            }
            v
        }
        Reply::Denied(reason) => json!({"state": "denied", "reason": reason}),
        Reply::Success { .. } => json!({"state": "success"}),
    }
}

/// A step of the multi-step API.
#[derive(Deserialize)]
pub struct ApiStep {
    step: String,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    mech: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    totp: Option<String>,
    #[serde(default)]
    email_code: Option<String>,
    /// A passkey assertion (`PublicKeyCredential` JSON, or its text).
    #[serde(default)]
    passkey: Option<Value>,
}

impl ApiStep {
    fn parse(self) -> Result<(Option<String>, Step), ApiError> {
        let missing = |f: &str| ApiError::bad("invalid_request", format!("`{f}` is required"));
        let step =
            match self.step.as_str() {
                // No username: usernameless, with a discoverable passkey.
                "init" | "init2" => Step::Init {
                    username: self.username.unwrap_or_default(),
                    privileged: self.step == "init2",
                },
                "begin" => {
                    let m = self.mech.ok_or_else(|| missing("mech"))?;
                    Step::Begin(Mech::parse(&m).ok_or_else(|| {
                        ApiError::bad("mech_not_offered", format!("unknown mechanism `{m}`"))
                    })?)
                }
                "cred" => match (self.password, self.totp, self.email_code, self.passkey) {
                    (Some(p), None, None, None) => Step::Cred(Credential::Password(p)),
                    (None, Some(t), None, None) => Step::Cred(Credential::Totp(t)),
                    (None, None, Some(c), None) => Step::Cred(Credential::EmailCode(c)),
                    (None, None, None, Some(Value::String(text))) => {
                        Step::Cred(Credential::Passkey(text))
                    }
                    (None, None, None, Some(v)) => Step::Cred(Credential::Passkey(v.to_string())),
                    _ => return Err(ApiError::bad(
                        "invalid_request",
                        "`cred` carries exactly one of `password`, `totp`, `email_code`, `passkey`",
                    )),
                },
                other => {
                    return Err(ApiError::bad(
                        "invalid_request",
                        format!("unknown step `{other}`"),
                    ))
                }
            };
        Ok((self.session_id, step))
    }
}

/// `POST /api/auth`: one step of the multi-step authentication.
pub async fn api_auth(
    State(st): State<AppState>,
    jar: CookieJar,
    ClientIp(ip): ClientIp,
    browser: Cookies,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    same_site(&st, &headers)?;
    let authn = authenticator(&st)?;
    let (session_id, step) = parse_body::<ApiStep>(&headers, &body)?.parse()?;
    // The per-address quotas count what costs or risks something: a
    // credential checked, or a code mailed; not the steps around them.
    let scope = match &step {
        Step::Cred(Credential::Password(_) | Credential::Passkey(_)) => Some(Scope::Login),
        Step::Cred(Credential::Totp(_)) => Some(Scope::VerifyTotp),
        Step::Cred(Credential::EmailCode(_)) | Step::Begin(Mech::EmailCode) => {
            Some(Scope::VerifyCode)
        }
        _ => None,
    };
    if let Some(scope) = scope {
        ip_quota(&st, scope, ip)?;
    }
    let flows = pending(&st, authn);
    let (id, reply, next) = match (session_id, step) {
        (None, step @ Step::Init { .. }) => {
            let (next, reply) = authn.advance(None, step).await?;
            let id = flows
                .start(next.clone())
                .await
                .map_err(|e| storage(e.to_string()))?;
            (id, reply, next)
        }
        (None, step) => {
            return Err(ApiError::bad(
                "out_of_order",
                format!("`{}` needs the `session_id` of an `init`", step.name()),
            ))
        }
        (Some(_), step @ Step::Init { .. }) => {
            return Err(ApiError::bad(
                "out_of_order",
                format!(
                    "`{}` starts a new authentication; send it without `session_id`",
                    step.name()
                ),
            ))
        }
        (Some(id), step) => {
            let cur = flows.load(&id).await?;
            let (next, reply) = authn.advance(Some(&cur.state), step).await?;
            flows.save(&cur, &next).await?;
            (id, reply, next)
        }
    };
    if let Reply::Success { .. } = reply {
        let (jar, body) = logged_in(&st, jar, &browser, reply).await?;
        return Ok((jar, web::no_store(), Json(body)).into_response());
    }
    let mut body = reply_json(&reply);
    if !matches!(next, AuthState::Denied { .. }) {
        body["session_id"] = json!(id);
    }
    Ok((web::no_store(), Json(body)).into_response())
}

/// The seed's `POST /login` (and the standalone sign-in page's form).
#[derive(Deserialize)]
pub struct PlainLogin {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    totp: Option<String>,
}

/// Cookie keeping the e-mail-code authentication of `/login` until `/verify-otp`.
pub(super) fn pending_cookie(st: &AppState) -> String {
    format!("{}_AUTH", st.cookies.session)
}

/// `POST /login`: a password (and TOTP code, when the account has one)
/// in one request; or, with an e-mail address and no password where codes
/// are offered, the first half of an e-mail-code login.
pub async fn login(
    State(st): State<AppState>,
    jar: CookieJar,
    ClientIp(ip): ClientIp,
    browser: Cookies,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (html, authn, form): (_, _, PlainLogin) =
        before_session(&st, Scope::Login, ip, &headers, &body)?;
    let login = form
        .username
        .clone()
        .or(form.email.clone())
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad("invalid_request", "`username` or `email` is required").html(html)
        })?;
    let init = Step::Init {
        username: login,
        privileged: false,
    };
    let result = async {
        let (state, reply) = authn.advance(None, init).await?;
        let Reply::Choose(mechs) = reply else {
            return Err(AuthError::OutOfOrder { step: "init" }.into());
        };
        let Some(password) = form.password.clone() else {
            // An e-mail-code login: the code is sent; `/verify-otp` finishes it.
            let (state, _) = authn
                .advance(Some(&state), Step::Begin(Mech::EmailCode))
                .await?;
            return Ok(Outcome::CodeSent(state));
        };
        let mech = [Mech::PasswordMfa, Mech::Password]
            .into_iter()
            .find(|m| mechs.contains(m))
            .ok_or(AuthError::MechNotOffered)?;
        let (state, _) = authn.advance(Some(&state), Step::Begin(mech)).await?;
        let (state, reply) = authn
            .advance(Some(&state), Step::Cred(Credential::Password(password)))
            .await?;
        match (&reply, form.totp.clone()) {
            (Reply::Continue { allowed, .. }, Some(code)) if allowed.contains(&CredKind::Totp) => {
                let (_, reply) = authn
                    .advance(Some(&state), Step::Cred(Credential::Totp(code)))
                    .await?;
                Ok(Outcome::Replied(reply))
            }
            _ => Ok(Outcome::Replied(reply)),
        }
    }
    .await
    .map_err(|e: ApiError| e.html(html))?;
    match result {
        Outcome::CodeSent(state) => {
            let body =
                json!({"state": "continue", "allowed": ["email_code"], "status": "code_sent"});
            code_sent(&st, authn, jar, state, html, StatusCode::ACCEPTED, body).await
        }
        Outcome::Replied(reply @ Reply::Success { .. }) => {
            let (jar, body) = logged_in(&st, jar, &browser, reply)
                .await
                .map_err(|e| e.html(html))?;
            if html {
                return Ok((jar, web::see_other(paths::DASHBOARD)).into_response());
            }
            Ok((jar, web::no_store(), Json(body)).into_response())
        }
        Outcome::Replied(Reply::Continue { allowed, .. }) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "credentials_required",
            format!(
                "also send: {}",
                allowed
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .html(html)),
        Outcome::Replied(Reply::Denied(reason)) => {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", reason).html(html))
        }
        Outcome::Replied(Reply::Choose(_)) => {
            Err(ApiError::bad("out_of_order", "unexpected step").html(html))
        }
    }
}

/// A code is on its way: the authentication waits in the store, its id in
/// a cookie of this browser, until `/verify-otp`.
async fn code_sent(
    st: &AppState,
    authn: &Authenticator,
    jar: CookieJar,
    state: AuthState,
    html: bool,
    status: StatusCode,
    body: Value,
) -> Result<Response, ApiError> {
    let id = pending(st, authn)
        .start(state)
        .await
        .map_err(|e| storage(e.to_string()).html(html))?;
    let jar = jar.add(web::cookie(
        &pending_cookie(st),
        id,
        st.cookies.secure,
        Some(authn.accounts().config().flow_ttl_seconds),
    ));
    if html {
        return Ok((jar, web::see_other(paths::VERIFY_OTP)).into_response());
    }
    Ok((status, jar, Json(body)).into_response())
}

/// The checks every post before a session starts with: the address's
/// quota of `scope`, a same-origin request, local accounts enabled, and a
/// well-formed body. Errors render as a page for a browser.
fn before_session<'a, T: DeserializeOwned>(
    st: &'a AppState,
    scope: Scope,
    ip: std::net::IpAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(bool, &'a Arc<Authenticator>, T), ApiError> {
    let html = wants_html(headers);
    ip_quota(st, scope, ip).map_err(|e| e.html(html))?;
    same_site(st, headers).map_err(|e| e.html(html))?;
    let authn = authenticator(st).map_err(|e| e.html(html))?;
    let form = parse_body(headers, body).map_err(|e| e.html(html))?;
    Ok((html, authn, form))
}

enum Outcome {
    CodeSent(AuthState),
    Replied(Reply),
}

#[derive(Deserialize)]
pub struct VerifyOtp {
    #[serde(default, alias = "code")]
    otp_code: String,
}

/// `POST /verify-otp`: the code of an e-mail-code login begun by `/login`
/// or `/register` in this browser (its flow is in a cookie).
pub async fn verify_otp(
    State(st): State<AppState>,
    jar: CookieJar,
    ClientIp(ip): ClientIp,
    browser: Cookies,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (html, authn, form): (_, _, VerifyOtp) =
        before_session(&st, Scope::VerifyCode, ip, &headers, &body)?;
    let id = jar
        .get(&pending_cookie(&st))
        .map(|c| c.value().to_string())
        .ok_or_else(|| {
            ApiError::bad(
                "unknown_session",
                "no e-mail code login is under way; use /login first",
            )
            .html(html)
        })?;
    let flows = pending(&st, authn);
    let cur = flows
        .load(&id)
        .await
        .map_err(|e| ApiError::from(e).html(html))?;
    let (next, reply) = authn
        .advance(
            Some(&cur.state),
            Step::Cred(Credential::EmailCode(form.otp_code)),
        )
        .await
        .map_err(|e| ApiError::from(e).html(html))?;
    flows
        .save(&cur, &next)
        .await
        .map_err(|e| ApiError::from(e).html(html))?;
    match reply {
        reply @ Reply::Success { .. } => {
            let (jar, body) = logged_in(&st, jar, &browser, reply)
                .await
                .map_err(|e| e.html(html))?;
            let jar = jar.add(web::removal(&pending_cookie(&st), st.cookies.secure));
            if html {
                return Ok((jar, web::see_other(paths::DASHBOARD)).into_response());
            }
            Ok((jar, web::no_store(), Json(body)).into_response())
        }
        Reply::Continue { retry, .. } => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_code",
            retry.unwrap_or_else(|| "the code is not valid".into()),
        )
        .html(html)),
        Reply::Denied(reason) => {
            let jar = jar.add(web::removal(&pending_cookie(&st), st.cookies.secure));
            Ok((
                jar,
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_code", reason).html(html),
            )
                .into_response())
        }
        Reply::Choose(_) => Err(ApiError::bad("out_of_order", "unexpected step").html(html)),
    }
}

#[derive(Deserialize)]
pub struct Registration {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// `POST /register`: a new account. With a password, it is ready to log
/// in; in the e-mail-code policy (no password), a code is sent at once and
/// `/verify-otp` proves the address and logs in.
pub async fn register(
    State(st): State<AppState>,
    jar: CookieJar,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (html, authn, form): (_, _, Registration) =
        before_session(&st, Scope::Register, ip, &headers, &body)?;
    let non_empty = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let email = non_empty(&form.email);
    let username = non_empty(&form.username)
        .or(email.clone())
        .ok_or_else(|| ApiError::bad("invalid_request", "`username` is required").html(html))?;
    let password = form.password.filter(|p| !p.is_empty());
    let account = authn
        .accounts()
        .register(NewAccount {
            username: &username,
            email: email.as_deref(),
            password: password.as_deref(),
            name: non_empty(&form.name).as_deref(),
        })
        .await
        .map_err(|e| ApiError::from(e).html(html))?;
    tracing::info!("account registered");
    if password.is_none() {
        // E-mail-code accounts log in by proving the address.
        let (state, _) = authn
            .advance(
                None,
                Step::Init {
                    username: account.username().to_string(),
                    privileged: false,
                },
            )
            .await
            .map_err(|e| ApiError::from(e).html(html))?;
        let (state, _) = authn
            .advance(Some(&state), Step::Begin(Mech::EmailCode))
            .await
            .map_err(|e| ApiError::from(e).html(html))?;
        let body = json!({"username": account.username(), "status": "code_sent"});
        return code_sent(&st, authn, jar, state, html, StatusCode::CREATED, body).await;
    }
    if html {
        return Ok(web::see_other(&format!("{}?registered=1", paths::SIGN_IN)));
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"username": account.username(), "email": account.row.email})),
    )
        .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "adapter/account_form.html")]
pub struct AccountFormPage {
    pub title: String,
    /// `register`, `sign_in` or `verify_otp`.
    pub form: &'static str,
    pub action: &'static str,
    pub notice: Option<&'static str>,
    pub min_password_length: usize,
    pub email_codes: bool,
    pub registration: bool,
    /// Offer a passkey at sign-up (passkeys are configured).
    pub passkeys: bool,
}

fn form_page(
    st: &AppState,
    authn: &Authenticator,
    form: &'static str,
    action: &'static str,
    notice: Option<&'static str>,
) -> AccountFormPage {
    let config = authn.accounts().config();
    AccountFormPage {
        title: st.title().to_string(),
        form,
        action,
        notice,
        min_password_length: config.min_password_length,
        email_codes: authn.has_codes() && config.email_codes,
        registration: config.registration,
        passkeys: authn.passkeys().is_some(),
    }
}

#[derive(Deserialize)]
pub struct SignInQuery {
    #[serde(default)]
    registered: Option<String>,
}

/// `GET /register`: the registration page.
pub async fn register_page(State(st): State<AppState>) -> Result<Response, ApiError> {
    let authn = authenticator(&st).map_err(|e| e.html(true))?;
    if !authn.accounts().config().registration {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "registration_closed",
            "Registration is turned off.",
        )
        .html(true));
    }
    Ok(form_page(&st, authn, "register", paths::REGISTER, None).into_response())
}

/// `GET /login`: the standalone sign-in page (outside any authorization request).
pub async fn sign_in_page(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<SignInQuery>,
) -> Result<Response, ApiError> {
    let authn = authenticator(&st).map_err(|e| e.html(true))?;
    let notice = q.registered.map(|_| "Your account is ready. Sign in.");
    Ok(form_page(&st, authn, "sign_in", paths::SIGN_IN, notice).into_response())
}

/// `GET /verify-otp`: the form for the code sent by e-mail.
pub async fn verify_otp_page(State(st): State<AppState>) -> Result<Response, ApiError> {
    let authn = authenticator(&st).map_err(|e| e.html(true))?;
    Ok(form_page(&st, authn, "verify_otp", paths::VERIFY_OTP, None).into_response())
}
