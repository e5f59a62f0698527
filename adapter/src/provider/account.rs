//! The signed-in user's own pages and API: the device list
//! ([`paths::ACCOUNT_DEVICES`]) and signing a device out, the local logout
//! ([`paths::LOGOUT`], not the OIDC end-session endpoint), and the
//! dashboard ([`paths::DASHBOARD`]).
//!
//! One extractor guards them all, [`AccountSession`]: a valid session from
//! the session cookie, and for unsafe methods a session-bound CSRF token
//! ([`session_csrf_token`], sent as `X-CSRF-Token` or as the `csrf_token`
//! form field, compared in constant time) plus the Fetch Metadata /
//! `Origin` check of the login form (OWASP ASVS 5.0 V3.5). Answers are
//! JSON for API callers (`Accept: application/json`, or a request with an
//! `X-CSRF-Token` header) and HTML pages otherwise; failures never
//! redirect.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_extra::extract::cookie::CookieJar;
use serde::Serialize;
use serde_json::{json, Value};

use super::browser::{clear_session_cookie, cookies, cross_site};
use super::logout::{end_local_session, LoggedOutPage};
use super::AppState;
use crate::flow::Session;
use crate::secret::{ct_eq, hash};
use crate::store::StoreError;
use crate::web::{form_pairs, found, see_other, PageError};
use crate::{device, paths};

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(paths::ACCOUNT_DEVICES, get(devices))
        .route(paths::ACCOUNT_DEVICE_REVOKE, post(revoke_device))
        .route(paths::LOGOUT, get(logout_page).post(logout))
        .route(paths::DASHBOARD, get(dashboard).post(dashboard_call))
}

/// The CSRF token of the session whose cookie value is `session_cookie`:
/// derived from the HttpOnly cookie, so a cross-site page can neither read
/// nor forge it, and it dies with the session. The prefix keeps it apart
/// from the login form's token ([`super::browser::csrf_token`]).
pub fn session_csrf_token(session_cookie: &str) -> String {
    hash(&format!("session-csrf:{session_cookie}"))
}

/// The longest form body read for its `csrf_token` field.
const FORM_LIMIT: usize = 16 * 1024;

/// The longest other body (JSON, e.g. a WebAuthn credential) of an unsafe request.
const BODY_LIMIT: usize = 64 * 1024;

/// Why an account request is refused.
#[derive(Debug)]
pub enum AccountErrorKind {
    /// No valid session: 401 `login_required`.
    LoginRequired,
    /// Unsafe method without the right token, or cross-site: 403 `csrf_failed`.
    CsrfFailed,
    /// Nothing of this user at that address: 404 `not_found`.
    NotFound,
    /// The body could not be read: 400 `invalid_request`.
    BadRequest,
    /// Storage failed: 503 `temporarily_unavailable` (logged).
    Storage(StoreError),
}

/// A refused account request, rendered as JSON or as an HTML page.
#[derive(Debug)]
pub struct AccountError {
    pub kind: AccountErrorKind,
    pub json: bool,
}

impl IntoResponse for AccountError {
    fn into_response(self) -> Response {
        let (status, code, heading, message) = match &self.kind {
            AccountErrorKind::LoginRequired => (
                StatusCode::UNAUTHORIZED,
                "login_required",
                "Not signed in",
                "You are not signed in, or your session has ended. Sign in through an application first.",
            ),
            AccountErrorKind::CsrfFailed => (
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "Forbidden",
                "The request could not be verified. Reload the page and try again.",
            ),
            AccountErrorKind::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                "There is no such session of yours.",
            ),
            AccountErrorKind::BadRequest => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Invalid request",
                "The request could not be read.",
            ),
            AccountErrorKind::Storage(e) => {
                tracing::error!(error = %e, "storage failure");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "Temporarily unavailable",
                    "The service cannot reach its storage. Please try again shortly.",
                )
            }
        };
        if self.json {
            (status, Json(json!({ "error": code }))).into_response()
        } else {
            PageError::new(status, heading, message).into_response()
        }
    }
}

/// JSON for API callers: they ask for it, or send the token as a header
/// (which only scripts can). Browsers navigating or posting forms get HTML.
fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    accept.contains("application/json") || headers.contains_key(CSRF_HEADER)
}

/// The header that carries the session's CSRF token.
const CSRF_HEADER: &str = "x-csrf-token";

/// A request of a signed-in user, checked: a valid session and, for
/// unsafe methods, the session's CSRF token from a same-site request.
/// It reads the body of unsafe form posts (for `csrf_token`), so it is the
/// last extractor of a handler; the form's fields are in [`Self::form`].
#[derive(Debug)]
pub struct AccountSession {
    /// The session cookie's value.
    pub cookie: String,
    /// The hash that keys the session in the store.
    pub id_hash: String,
    pub session: Session,
    /// The session's CSRF token ([`session_csrf_token`]).
    pub csrf_token: String,
    /// The caller wants JSON rather than HTML.
    pub json: bool,
    /// The fields of a form-encoded body of an unsafe request.
    pub form: Vec<(String, String)>,
    /// Any other body of an unsafe request (JSON), as sent.
    pub body: axum::body::Bytes,
}

impl AccountSession {
    /// The user's display name: `preferred_username`, else the subject.
    pub fn username(&self) -> String {
        self.session
            .identity
            .claims
            .get("preferred_username")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| self.session.identity.subject.clone())
    }

    /// An error answered in the caller's format.
    pub fn error(&self, kind: AccountErrorKind) -> AccountError {
        AccountError {
            kind,
            json: self.json,
        }
    }
}

impl FromRequest<AppState> for AccountSession {
    type Rejection = AccountError;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, AccountError> {
        let (parts, body) = req.into_parts();
        let json = wants_json(&parts.headers);
        let fail = |kind| AccountError { kind, json };
        let jar = CookieJar::from_headers(&parts.headers);
        let cookie = cookies(st, &jar)
            .session
            .filter(|c| !c.is_empty())
            .ok_or_else(|| fail(AccountErrorKind::LoginRequired))?;
        let session = st
            .flows
            .session(Some(&cookie))
            .await
            .map_err(|e| fail(AccountErrorKind::Storage(e)))?
            .ok_or_else(|| fail(AccountErrorKind::LoginRequired))?;
        let csrf_token = session_csrf_token(&cookie);
        let mut form = Vec::new();
        let mut raw = axum::body::Bytes::new();
        if !parts.method.is_safe() {
            if cross_site(st, &parts.headers) {
                return Err(fail(AccountErrorKind::CsrfFailed));
            }
            let is_form = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            if is_form {
                let bytes = axum::body::to_bytes(body, FORM_LIMIT)
                    .await
                    .map_err(|_| fail(AccountErrorKind::BadRequest))?;
                form = form_pairs(&bytes);
            } else {
                raw = axum::body::to_bytes(body, BODY_LIMIT)
                    .await
                    .map_err(|_| fail(AccountErrorKind::BadRequest))?;
            }
            let sent = match parts.headers.get(CSRF_HEADER) {
                Some(v) => v.to_str().ok(),
                None => form
                    .iter()
                    .find(|(k, _)| k == "csrf_token")
                    .map(|(_, v)| v.as_str()),
            };
            if !sent.is_some_and(|t| ct_eq(&csrf_token, t)) {
                return Err(fail(AccountErrorKind::CsrfFailed));
            }
        }
        Ok(AccountSession {
            id_hash: hash(&cookie),
            cookie,
            session,
            csrf_token,
            json,
            form,
            body: raw,
        })
    }
}

/// One session in the device list.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    /// Opaque handle for [`paths::ACCOUNT_DEVICE_REVOKE`].
    pub handle: String,
    /// "Browser on OS".
    pub device: String,
    pub ip: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    pub expires_at: i64,
    /// The session of this request.
    pub current: bool,
}

/// The sessions of the user of `account`, oldest first.
async fn device_list(
    st: &AppState,
    account: &AccountSession,
) -> Result<Vec<DeviceView>, AccountError> {
    let identity = &account.session.identity;
    let sessions = st
        .flows
        .user_sessions(&identity.connector_id, &identity.subject)
        .await
        .map_err(|e| account.error(AccountErrorKind::Storage(e)))?;
    Ok(sessions
        .into_iter()
        .map(|(id_hash, s)| DeviceView {
            handle: device::handle(&s.sid),
            device: s
                .device_label
                .unwrap_or_else(|| "Unknown device".to_string()),
            ip: s.ip,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: s.expires_at,
            current: id_hash == account.id_hash,
        })
        .collect())
}

/// A device as the HTML page shows it.
pub struct DeviceRow {
    pub handle: String,
    pub label: String,
    pub ip: Option<String>,
    pub created: String,
    pub last_seen: String,
    pub current: bool,
    pub revoke_action: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "adapter/devices.html")]
pub struct DevicesPage {
    pub title: String,
    pub username: String,
    pub csrf_token: String,
    pub devices: Vec<DeviceRow>,
    pub dashboard: String,
    /// The user's passkeys; `None` when passkeys are off or the user is
    /// not a local account.
    pub passkeys: Option<Vec<PasskeyRow>>,
}

/// A passkey as the devices page shows it.
pub struct PasskeyRow {
    pub id: String,
    pub label: String,
    pub created: String,
    pub last_used: String,
    /// WebAuthn L2 §6.1 flags BE / BS.
    pub synced: &'static str,
    pub possibly_cloned: bool,
    pub remove_action: String,
}

/// The passkeys of the session's local account, when passkeys are on.
async fn passkeys_of(
    st: &AppState,
    account: &AccountSession,
) -> Result<Option<Vec<crate::accounts::passkeys::PasskeyView>>, AccountError> {
    let identity = &account.session.identity;
    let Some(authn) = st.flows.local_accounts() else {
        return Ok(None);
    };
    let Some(passkeys) = authn.passkeys() else {
        return Ok(None);
    };
    if identity.connector_id != crate::accounts::LOCAL_CONNECTOR_ID {
        return Ok(None);
    }
    match passkeys.list(authn.accounts(), &identity.subject).await {
        Ok(list) => Ok(Some(list)),
        Err(crate::accounts::passkeys::PasskeyError::Account(
            crate::accounts::AccountError::Storage(e),
        )) => Err(AccountError {
            kind: AccountErrorKind::Storage(e),
            json: account.json,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "passkeys could not be listed");
            Ok(None)
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "adapter/dashboard.html")]
pub struct DashboardPage {
    pub title: String,
    pub username: String,
    pub csrf_token: String,
    pub devices: String,
    pub logout: String,
}

/// Unix seconds as `2026-12-01 15:30 UTC`.
fn when(t: Option<i64>) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|d| d.format(&format).ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// `GET /account/devices`: the user's sessions.
async fn devices(
    State(st): State<AppState>,
    account: AccountSession,
) -> Result<Response, AccountError> {
    let list = device_list(&st, &account).await?;
    let passkeys = passkeys_of(&st, &account).await?;
    if account.json {
        let mut body = json!({ "sessions": list });
        if let Some(p) = &passkeys {
            body["passkeys"] = json!(p);
        }
        return Ok(Json(body).into_response());
    }
    let passkeys = passkeys.map(|list| {
        list.into_iter()
            .map(|p| PasskeyRow {
                remove_action: paths::WEBAUTHN_PASSKEY_DELETE.replace("{id}", &p.id),
                created: when(Some(p.created_at)),
                last_used: p
                    .last_used_at
                    .map_or_else(|| "never".into(), |t| when(Some(t))),
                synced: match (p.backup_eligible, p.backup_state) {
                    (false, _) => "device-bound",
                    (true, false) => "syncable, not backed up",
                    (true, true) => "synced",
                },
                possibly_cloned: p.possibly_cloned,
                id: p.id,
                label: p.label,
            })
            .collect()
    });
    let devices = list
        .into_iter()
        .map(|d| DeviceRow {
            revoke_action: paths::device_revoke(&d.handle),
            created: when(Some(d.created_at)),
            last_seen: when(d.last_seen_at),
            handle: d.handle,
            label: d.device,
            ip: d.ip,
            current: d.current,
        })
        .collect();
    Ok(DevicesPage {
        title: st.title().to_string(),
        username: account.username(),
        csrf_token: account.csrf_token.clone(),
        devices,
        dashboard: paths::DASHBOARD.to_string(),
        passkeys,
    }
    .into_response())
}

/// `POST /account/devices/{handle}/revoke`: ends one of the user's
/// sessions as a logout does. A handle of anybody else's session is 404,
/// like one that never existed.
async fn revoke_device(
    State(st): State<AppState>,
    jar: CookieJar,
    Path(handle): Path<String>,
    account: AccountSession,
) -> Result<Response, AccountError> {
    let identity = &account.session.identity;
    let sessions = st
        .flows
        .user_sessions(&identity.connector_id, &identity.subject)
        .await
        .map_err(|e| account.error(AccountErrorKind::Storage(e)))?;
    let Some((id_hash, session)) = sessions
        .into_iter()
        .find(|(_, s)| ct_eq(&device::handle(&s.sid), &handle))
    else {
        return Err(account.error(AccountErrorKind::NotFound));
    };
    end_local_session(&st, &id_hash, &session)
        .await
        .map_err(|e| account.error(AccountErrorKind::Storage(e)))?;
    let current = id_hash == account.id_hash;
    let jar = if current {
        clear_session_cookie(&st, jar)
    } else {
        jar
    };
    if account.json {
        return Ok((jar, Json(json!({ "revoked": true, "current": current }))).into_response());
    }
    let next = if current {
        paths::LOGOUT
    } else {
        paths::ACCOUNT_DEVICES
    };
    Ok((jar, see_other(next)).into_response())
}

/// `POST /logout`: ends this session (as a logout does) and deletes its
/// cookie. JSON callers get 200, browsers a 303 to the logged-out page.
async fn logout(
    State(st): State<AppState>,
    jar: CookieJar,
    account: AccountSession,
) -> Result<Response, AccountError> {
    end_local_session(&st, &account.id_hash, &account.session)
        .await
        .map_err(|e| account.error(AccountErrorKind::Storage(e)))?;
    let jar = clear_session_cookie(&st, jar);
    if account.json {
        return Ok((jar, Json(json!({ "logged_out": true }))).into_response());
    }
    Ok((jar, see_other(paths::LOGOUT)).into_response())
}

/// `GET /logout`: where a browser lands after logging out. With a session
/// still alive it goes to the dashboard, whose form logs out (a GET never
/// ends a session).
async fn logout_page(State(st): State<AppState>, jar: CookieJar) -> Response {
    let values = cookies(&st, &jar);
    match st.flows.session(values.session.as_deref()).await {
        Ok(Some(_)) => found(paths::DASHBOARD),
        Ok(None) => LoggedOutPage {
            title: st.title().to_string(),
        }
        .into_response(),
        Err(e) => AccountError {
            kind: AccountErrorKind::Storage(e),
            json: false,
        }
        .into_response(),
    }
}

/// `GET /dashboard`: who is signed in, a link to the devices and a logout
/// form (JSON on request, with the CSRF token).
async fn dashboard(State(st): State<AppState>, account: AccountSession) -> Response {
    if account.json {
        return Json(json!({
            "username": account.username(),
            "sub": account.session.identity.subject,
            "csrf_token": account.csrf_token,
        }))
        .into_response();
    }
    DashboardPage {
        title: st.title().to_string(),
        username: account.username(),
        csrf_token: account.csrf_token.clone(),
        devices: paths::ACCOUNT_DEVICES.to_string(),
        logout: paths::LOGOUT.to_string(),
    }
    .into_response()
}

/// `POST /dashboard`: the protected call of the account API (session
/// cookie and `X-CSRF-Token`).
async fn dashboard_call(account: AccountSession) -> Response {
    Json(json!({
        "username": account.username(),
        "sub": account.session.identity.subject,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_csrf_tokens_are_bound_and_separated() {
        assert_eq!(session_csrf_token("a"), session_csrf_token("a"));
        assert_ne!(session_csrf_token("a"), session_csrf_token("b"));
        // Not the login form's token of the same value.
        assert_ne!(
            session_csrf_token("a"),
            super::super::browser::csrf_token("a")
        );
    }

    #[test]
    fn json_for_api_callers_html_for_browsers() {
        let mut h = HeaderMap::new();
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, "text/html,*/*".parse().unwrap());
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert!(wants_json(&h));
        let mut h = HeaderMap::new();
        h.insert(CSRF_HEADER, "t".parse().unwrap());
        assert!(wants_json(&h));
    }

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(when(Some(0)), "1970-01-01 00:00 UTC");
        assert_eq!(when(None), "unknown");
    }
}
