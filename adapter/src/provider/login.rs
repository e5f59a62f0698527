//! The login pages: the connector chooser's links and the forms of the
//! local-accounts connector (password, TOTP code, e-mail code). All are
//! steps of the login-flow engine. A form's POST is rate-limited per client
//! address here and per typed user name by the authentication state machine
//! ([`crate::ratelimit`]), both before any password is hashed.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use serde::Deserialize;

use super::browser::{cookies, cross_site, csrf_token, login_page, render, Cookies};
use super::AppState;
use crate::flow::{Event, FlowError, LocalInput};
use crate::ratelimit::{ClientIp, RateLimited, Scope};
use crate::secret::ct_eq;
use crate::web::{PageError, WebError};

fn known_connector(st: &AppState, id: &str) -> Result<(), WebError> {
    match st.flows.connector(id) {
        Some(_) => Ok(()),
        None => Err(FlowError::UnknownConnector.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    req: String,
}

/// `GET /login/start/{connector}?req=…`: a link of the chooser page.
pub async fn login_start(
    State(st): State<AppState>,
    jar: CookieJar,
    Path(connector_id): Path<String>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, WebError> {
    known_connector(&st, &connector_id)?;
    let cookies = cookies(&st, &jar);
    let event = Event::Chose {
        connector_id: &connector_id,
    };
    let next = st.flows.step(&q.req, cookies.browser(), event).await?;
    Ok(render(&st, jar, &cookies, next, false))
}

/// `GET /login/{connector}?req=…`: the login form.
pub async fn login_form(
    State(st): State<AppState>,
    jar: CookieJar,
    Path(connector_id): Path<String>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, WebError> {
    known_connector(&st, &connector_id)?;
    let cookies = cookies(&st, &jar);
    let view = st
        .flows
        .form(&q.req, &connector_id, cookies.browser())
        .await?;
    Ok(login_page(&st, view, &cookies.transaction).into_response())
}

/// A post of one of the local-accounts forms.
#[derive(Deserialize)]
pub struct LoginForm {
    req: String,
    csrf_token: String,
    /// `password` (the default), `email_code` or `code`.
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
}

impl LoginForm {
    fn input(&self) -> Result<LocalInput<'_>, WebError> {
        let incomplete =
            || PageError::bad_request("Invalid request", "The login form is incomplete.");
        Ok(match self.action.as_deref().unwrap_or("password") {
            "password" if !self.username.is_empty() => LocalInput::Password {
                username: &self.username,
                password: &self.password,
            },
            "email_code" if !self.username.is_empty() => LocalInput::RequestCode {
                username: &self.username,
            },
            "code" if !self.code.is_empty() => LocalInput::Code { code: &self.code },
            _ => return Err(incomplete().into()),
        })
    }
}

/// `POST /login/{connector}`: the credentials.
pub async fn login_submit(
    State(st): State<AppState>,
    jar: CookieJar,
    cookies: Cookies,
    Path(connector_id): Path<String>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    known_connector(&st, &connector_id)?;
    // The client address's quota first, before any hashing (RFC 6585 §4).
    if let Err(limited) = st.rate_limits.check_ip(Scope::Login, ip) {
        return Ok(limited.respond(&headers));
    }
    let form = serde_urlencoded::from_bytes::<LoginForm>(&body)
        .map_err(|_| PageError::bad_request("Invalid request", "The login form is incomplete."))?;
    if cross_site(&st, &headers)
        || cookies.transaction.is_empty()
        || !ct_eq(&csrf_token(&cookies.transaction), &form.csrf_token)
    {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The form could not be verified. Reload the page and try again.",
        )
        .into());
    }
    let event = Event::Credentials {
        connector_id: &connector_id,
        input: form.input()?,
    };
    // The per-account throttle is the authentication state machine's.
    let next = match st.flows.step(&form.req, cookies.browser(), event).await {
        Err(FlowError::Throttled { retry_after }) => {
            let limited = RateLimited {
                scope: Scope::Login,
                retry_after,
            };
            return Ok(limited.respond(&headers));
        }
        other => other?,
    };
    Ok(render(&st, jar, &cookies, next, true))
}
