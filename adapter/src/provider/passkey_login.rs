//! Passkey login for browsers ([`paths::PASSKEY_LOGIN_BEGIN`],
//! [`paths::PASSKEY_LOGIN_FINISH`]): `begin` answers the WebAuthn request
//! options (`{"publicKey": …}`), username-first when a username is given
//! and usernameless otherwise; `finish` takes the assertion. Both run the
//! authentication state machine of local accounts, so the challenge is
//! kept server-side (any replica finishes what another began), bound to
//! this browser's login, single-use and short-lived.
//!
//! Two homes for the challenge:
//! - with `req` (the login of an authorization request, its transaction
//!   cookie and CSRF token): the login-flow engine keeps it in the login,
//!   and a finished login answers `{"redirect": …}` to the client;
//! - without (the seed's standalone sign-in): a pending authentication in
//!   the store, named by a cookie of this browser; a finished login starts
//!   a session as `POST /login` does.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum_extra::extract::cookie::{Cookie, CookieJar};
use serde::Deserialize;
use serde_json::{json, Value};

use super::browser::{csrf_token, set_session_cookies, Cookies};
use super::local_auth::{
    authenticator, ip_quota, logged_in, parse_body, pending, pending_cookie, same_site, storage,
    ApiError,
};
use super::AppState;
use crate::accounts::authn::{AuthError, Credential, Reply, Step};
use crate::accounts::LOCAL_CONNECTOR_ID;
use crate::flow::{Event, FlowError, LocalInput, Next};
use crate::ratelimit::{ClientIp, Scope};
use crate::secret::ct_eq;
use crate::web;

/// `POST /login/begin`.
#[derive(Deserialize)]
pub struct BeginBody {
    /// Empty or absent: usernameless.
    #[serde(default)]
    username: Option<String>,
    /// The login of an authorization request, with its CSRF token.
    #[serde(default)]
    req: Option<String>,
    #[serde(default)]
    csrf_token: Option<String>,
}

/// `POST /login/finish`.
#[derive(Deserialize)]
pub struct FinishBody {
    /// The `PublicKeyCredential` of `navigator.credentials.get()`.
    credential: Value,
    #[serde(default)]
    req: Option<String>,
    #[serde(default)]
    csrf_token: Option<String>,
}

/// Passkeys on, the request same-origin, and (for an authorization
/// request's login) the transaction-bound CSRF token.
fn admit(
    st: &AppState,
    headers: &HeaderMap,
    cookies: &Cookies,
    req: Option<&str>,
    csrf: Option<&str>,
) -> Result<(), ApiError> {
    same_site(st, headers)?;
    let on = authenticator(st)?.passkeys().is_some();
    if !on {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "passkeys are off",
        ));
    }
    if req.is_some()
        && (cookies.transaction.is_empty()
            || !ct_eq(&csrf_token(&cookies.transaction), csrf.unwrap_or("")))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "the login could not be verified; reload the page",
        ));
    }
    Ok(())
}

/// `POST /login/begin`: the request options of a passkey login.
pub async fn begin(
    State(st): State<AppState>,
    jar: CookieJar,
    cookies: Cookies,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form: BeginBody = parse_body(&headers, &body)?;
    admit(
        &st,
        &headers,
        &cookies,
        form.req.as_deref(),
        form.csrf_token.as_deref(),
    )?;
    let username = form.username.as_deref().unwrap_or("").trim();
    if let Some(req) = &form.req {
        let input = LocalInput::PasskeyBegin { username };
        let next = step(&st, &cookies, req, input).await?;
        return Ok(flow_json(&st, jar, next));
    }
    let authn = authenticator(&st)?;
    let (state, reply) = authn.begin_passkey(username).await?;
    let Reply::Continue {
        options: Some(options),
        ..
    } = reply
    else {
        return Err(ApiError::bad("mech_not_offered", "no passkey login here"));
    };
    let id = pending(&st, authn)
        .start(state)
        .await
        .map_err(|e| storage(e.to_string()))?;
    let jar = jar.add(web::cookie(
        &pending_cookie(&st),
        id,
        st.cookies.secure,
        Some(authn.accounts().config().flow_ttl_seconds),
    ));
    Ok((jar, web::no_store(), Json(options)).into_response())
}

/// `POST /login/finish`: the assertion; a session on success.
pub async fn finish(
    State(st): State<AppState>,
    jar: CookieJar,
    cookies: Cookies,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The client address's quota of credential checks (RFC 6585 §4).
    ip_quota(&st, Scope::Login, ip)?;
    let form: FinishBody = parse_body(&headers, &body)?;
    admit(
        &st,
        &headers,
        &cookies,
        form.req.as_deref(),
        form.csrf_token.as_deref(),
    )?;
    let credential = match &form.credential {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    if let Some(req) = &form.req {
        let input = LocalInput::Passkey {
            credential: &credential,
        };
        let next = step(&st, &cookies, req, input).await?;
        return Ok(flow_json(&st, jar, next));
    }
    let authn = authenticator(&st)?;
    let flows = pending(&st, authn);
    let name = pending_cookie(&st);
    let id = jar
        .get(&name)
        .map(|c| c.value().to_string())
        .ok_or_else(|| {
            ApiError::bad(
                "unknown_session",
                "no passkey login is under way in this browser; start again",
            )
        })?;
    let cur = flows.load(&id).await?;
    let (next, reply) = authn
        .advance(
            Some(&cur.state),
            Step::Cred(Credential::Passkey(credential)),
        )
        .await?;
    flows.save(&cur, &next).await?;
    let jar = jar.remove(Cookie::build(name).path("/"));
    match reply {
        Reply::Success { .. } => {
            let (jar, body) = logged_in(&st, jar, &cookies, reply).await?;
            Ok((jar, web::no_store(), Json(body)).into_response())
        }
        Reply::Denied(reason) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            reason,
        )),
        Reply::Continue { .. } | Reply::Choose(_) => {
            Err(AuthError::OutOfOrder { step: "cred" }.into())
        }
    }
}

/// One step of an authorization request's login, errors as JSON.
async fn step(
    st: &AppState,
    cookies: &Cookies,
    req: &str,
    input: LocalInput<'_>,
) -> Result<Next, ApiError> {
    let event = Event::Credentials {
        connector_id: LOCAL_CONNECTOR_ID,
        input,
    };
    st.flows
        .step(req, cookies.browser(), event)
        .await
        .map_err(flow_error)
}

fn flow_error(e: FlowError) -> ApiError {
    let bad = |code, m: &str| ApiError::bad(code, m.to_string());
    match e {
        FlowError::Malformed(m) => ApiError::bad("invalid_request", m),
        FlowError::Throttled { retry_after } => {
            ApiError::from(AuthError::Throttled { retry_after })
        }
        FlowError::UnknownLogin | FlowError::AlreadyUsed => bad(
            "unknown_login",
            "this login is unknown, expired or finished",
        ),
        FlowError::OtherBrowser => bad("unknown_login", "this login began in another browser"),
        FlowError::WrongStep => bad(
            "out_of_order",
            "this login is not waiting for a passkey; start again",
        ),
        FlowError::Conflict => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "another request continued this login first",
        ),
        FlowError::UnknownConnector | FlowError::NoConnectors => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "local accounts are not enabled",
        ),
        other => storage(other.to_string()),
    }
}

/// What the engine decided, for the page's script: the options, where to
/// go next (with the session cookies of a finished login), or the denial.
fn flow_json(st: &AppState, jar: CookieJar, next: Next) -> Response {
    match next {
        Next::PasskeyOptions(options) => (jar, web::no_store(), Json(options)).into_response(),
        Next::LoggedIn {
            session_cookie,
            device_cookie,
            expires_at,
            redirect,
        } => {
            let jar = set_session_cookies(st, jar, session_cookie, device_cookie, expires_at);
            (jar, web::no_store(), Json(json!({ "redirect": redirect }))).into_response()
        }
        // The script navigates; a gate refusal goes to the client as before.
        Next::CodeIssued(url)
        | Next::ErrorToClient(url)
        | Next::NotAllowed { back: url, .. }
        | Next::Redirect(url)
        | Next::RedirectUpstream(url) => {
            (jar, web::no_store(), Json(json!({ "redirect": url }))).into_response()
        }
        Next::ShowForm(view) => match view.error {
            // The authentication ended (WebAuthn L2 §7.2 checks, a
            // cloned or unknown passkey): the page shows why.
            Some(reason) => (
                StatusCode::UNAUTHORIZED,
                jar,
                Json(json!({"error": "invalid_credentials", "error_description": reason})),
            )
                .into_response(),
            None => (jar, web::no_store(), Json(json!({ "state": "continue" }))).into_response(),
        },
        Next::ShowChooser(_) => (
            StatusCode::BAD_REQUEST,
            jar,
            Json(json!({"error": "out_of_order", "error_description": "choose a login method first"})),
        )
            .into_response(),
    }
}
