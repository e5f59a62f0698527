//! The login pages: the connector chooser's links and the password form of
//! a password connector. Both are steps of the login-flow engine. The
//! password form's POST is rate-limited per client address and per typed
//! user name ([`crate::ratelimit`]) before any password is hashed.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use serde::Deserialize;

use super::browser::{cookies, cross_site, csrf_token, login_page, render};
use super::AppState;
use crate::flow::{Event, FlowError, Next};
use crate::ratelimit::{ClientIp, Scope};
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

#[derive(Deserialize)]
pub struct LoginForm {
    req: String,
    csrf_token: String,
    username: String,
    password: String,
}

/// `POST /login/{connector}`: the credentials. Per-IP quota first, then
/// the typed user name's throttle, both before any hashing; the outcome
/// feeds the throttle back.
pub async fn login_submit(
    State(st): State<AppState>,
    jar: CookieJar,
    Path(connector_id): Path<String>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    known_connector(&st, &connector_id)?;
    if let Err(limited) = st.rate_limits.check_ip(Scope::Login, ip) {
        return Ok(limited.respond(&headers));
    }
    let form = serde_urlencoded::from_bytes::<LoginForm>(&body)
        .map_err(|_| PageError::bad_request("Invalid request", "The login form is incomplete."))?;
    let cookies = cookies(&st, &jar);
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
    if let Err(limited) = st
        .rate_limits
        .check_account(Scope::Login, &form.username)
        .await
    {
        return Ok(limited.respond(&headers));
    }
    let event = Event::Credentials {
        connector_id: &connector_id,
        username: &form.username,
        password: &form.password,
    };
    let next = st.flows.step(&form.req, cookies.browser(), event).await?;
    match &next {
        // The form again: the credentials were refused.
        Next::ShowForm(_) => st.rate_limits.failed(Scope::Login, &form.username).await?,
        Next::LoggedIn { .. } => {
            st.rate_limits
                .succeeded(Scope::Login, &form.username)
                .await?
        }
        _ => {}
    }
    Ok(render(&st, jar, &cookies, next, true))
}
