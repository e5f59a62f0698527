//! `GET /login/oauth2/code/{connector}`: an upstream sends the browser back
//! (RFC 6749 §4.1.2). The engine finds the login by the callback's state.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum_extra::extract::cookie::CookieJar;

use super::browser::{render, Cookies};
use super::AppState;
use crate::web::{form_pairs, PageError, WebError};

pub async fn upstream_callback(
    State(st): State<AppState>,
    jar: CookieJar,
    cookies: Cookies,
    Path(connector_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, WebError> {
    let pairs = form_pairs(q.unwrap_or_default().as_bytes());
    let mut params = HashMap::new();
    for (k, v) in pairs {
        // RFC 6749 §3.1: a parameter must not be repeated; a repeated state
        // or code is never "the last one wins".
        if params.insert(k, v).is_some() {
            return Err(PageError::bad_request(
                "Invalid callback",
                "A parameter of the callback is repeated.",
            )
            .into());
        }
    }
    let next = st
        .flows
        .callback(&connector_id, &params, cookies.browser())
        .await?;
    Ok(render(&st, jar, &cookies, next, false))
}
