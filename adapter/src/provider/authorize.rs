//! `/oauth2/authorize` (RFC 6749 §4.1.1, OIDC Core §3.1.2), GET and POST.
//!
//! Parses the request into an [`AuthorizeRequest`], then hands it to the
//! login-flow engine. Before the client and its redirect URI are validated,
//! errors are an HTML page and never a redirect (RFC 6749 §4.1.2.1); after,
//! they go to the client with `error`, `state` and `iss` (RFC 9207).

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum_extra::extract::cookie::CookieJar;

use super::browser::{render, with_transaction};
use super::redirect::error_redirect;
use super::request::{AuthorizeError, AuthorizeRequest};
use super::AppState;
use crate::web::{form_pairs, found, PageError, WebError};

pub async fn authorize_get(
    State(st): State<AppState>,
    jar: CookieJar,
    RawQuery(q): RawQuery,
) -> Result<Response, WebError> {
    authorize(st, jar, form_pairs(q.unwrap_or_default().as_bytes())).await
}

/// OIDC Core §3.1.2.1: POST with form parameters is accepted too.
pub async fn authorize_post(
    State(st): State<AppState>,
    jar: CookieJar,
    body: Bytes,
) -> Result<Response, WebError> {
    authorize(st, jar, form_pairs(&body)).await
}

async fn authorize(
    st: AppState,
    jar: CookieJar,
    params: Vec<(String, String)>,
) -> Result<Response, WebError> {
    let request = match AuthorizeRequest::parse(&params, &st.clients) {
        Ok(r) => r,
        Err(AuthorizeError::Page(message)) => {
            return Err(PageError::bad_request("Invalid request", message).into())
        }
        Err(AuthorizeError::Redirect {
            redirect_uri,
            state,
            error,
        }) => {
            return error_redirect(&redirect_uri, state.as_deref(), &error, st.issuer())
                .map(|location| found(&location))
                .ok_or_else(|| {
                    PageError::bad_request("Invalid request", "Bad redirect URI.").into()
                })
        }
    };
    let (jar, cookies) = with_transaction(&st, jar);
    let next = st.flows.authorize(request, cookies.browser()).await?;
    Ok(render(&st, jar, &cookies, next, false))
}
