//! The browser side of a login: the session, transaction and device
//! cookies, the form's CSRF defences, and rendering the engine's [`Next`]
//! and [`FlowError`] as HTTP responses.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar};

use super::AppState;
use crate::config::CookieLifetime;
use crate::flow::{Browser, FlowError, FormStage, FormView, Next};
use crate::secret::{hash, random_token};
use crate::web::{self, found, see_other, ChoosePage, LoginPage, PageError, WebError};
use crate::{device, paths};

/// What a request says about the browser: its cookie values, address and
/// User-Agent. As an extractor it reads all of them; [`cookies`] reads the
/// cookies only.
#[derive(Debug, Clone, Default)]
pub struct Cookies {
    pub transaction: String,
    pub session: Option<String>,
    /// The device cookie ([`crate::device`]).
    pub device: Option<String>,
    /// The client's IP address.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Cookies {
    pub fn browser(&self) -> Browser<'_> {
        Browser {
            transaction: &self.transaction,
            session: self.session.as_deref(),
            device: self.device.as_deref(),
            ip: self.ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
        }
    }
}

/// Reads the cookies without setting any.
pub fn cookies(st: &AppState, jar: &CookieJar) -> Cookies {
    let value = |name: &str| jar.get(name).map(|c| c.value().to_string());
    Cookies {
        transaction: value(&st.cookies.transaction).unwrap_or_default(),
        session: value(&st.cookies.session),
        device: value(&st.cookies.device),
        ip: None,
        user_agent: None,
    }
}

/// The client's address: the connection's peer, or the address a trusted
/// proxy forwarded (`server.trusted_proxies`, the same rule as the rate
/// limits'); `None` when the server records no peer.
fn client_ip(parts: &Parts, st: &AppState) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| {
            st.rate_limits
                .trusted_proxies
                .client_ip(addr.ip(), &parts.headers)
        })
}

/// Cookies, address and User-Agent of the request (never fails).
impl FromRequestParts<AppState> for Cookies {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Infallible> {
        let jar = CookieJar::from_headers(&parts.headers);
        let mut values = cookies(st, &jar);
        values.ip = client_ip(parts, st).map(|ip| ip.to_string());
        values.user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        Ok(values)
    }
}

/// The session cookie for a session that ends on the server at
/// `expires_at`: with `Max-Age` equal to its remaining lifetime when
/// `session.cookie_lifetime` is `persistent`, so the browser forgets it
/// when the server does; without one for `browser`.
pub fn session_cookie(st: &AppState, value: String, expires_at: i64) -> Cookie<'static> {
    let max_age = match st.cookies.lifetime {
        CookieLifetime::Persistent => Some(expires_at.saturating_sub(st.now()).max(0)),
        CookieLifetime::Browser => None,
    };
    web::cookie(&st.cookies.session, value, st.cookies.secure, max_age)
}

/// Sets the cookies of a session just started (see
/// [`crate::flow::Flows::start_session`]): the session cookie and the
/// device cookie (a year from now, at every login).
pub fn set_session_cookies(
    st: &AppState,
    jar: CookieJar,
    session: String,
    device_cookie: String,
    expires_at: i64,
) -> CookieJar {
    let device = web::cookie(
        &st.cookies.device,
        device_cookie,
        st.cookies.secure,
        Some(device::COOKIE_TTL_SECONDS),
    );
    jar.add(session_cookie(st, session, expires_at)).add(device)
}

/// Deletes the session cookie (`Max-Age=0`); the device cookie stays.
pub fn clear_session_cookie(st: &AppState, jar: CookieJar) -> CookieJar {
    jar.remove(web::removal(&st.cookies.session, st.cookies.secure))
}

/// The transaction cookie's value, created when missing; the cookie is
/// (re)set either way so that it outlives the login being started.
pub fn with_transaction(st: &AppState, jar: CookieJar) -> (CookieJar, Cookies) {
    let mut values = cookies(st, &jar);
    if values.transaction.len() < 43 {
        values.transaction = random_token();
    }
    let cookie = web::cookie(
        &st.cookies.transaction,
        values.transaction.clone(),
        st.cookies.secure,
        Some(st.cookies.transaction_ttl),
    );
    (jar.add(cookie), values)
}

/// The synchronizer token of the login form: derived from the HttpOnly
/// transaction cookie, so a cross-site page can neither read nor forge it
/// (OWASP ASVS 5.0 V3.5).
pub fn csrf_token(transaction: &str) -> String {
    hash(&format!("csrf:{transaction}"))
}

/// Refuses cross-site form posts: Fetch Metadata first, then `Origin`
/// (OWASP ASVS 5.0 V3.5.3).
pub fn cross_site(st: &AppState, headers: &HeaderMap) -> bool {
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

/// How each flow error looks to the user.
impl From<FlowError> for WebError {
    fn from(e: FlowError) -> Self {
        let bad = |heading, message| WebError::Page(PageError::bad_request(heading, message));
        match e {
            FlowError::UnknownLogin => bad(
                "Login expired",
                "This login is unknown, expired or already finished.",
            ),
            FlowError::AlreadyUsed => {
                bad("Invalid callback", "This login response was already used.")
            }
            FlowError::MissingState => bad("Invalid callback", "The callback has no state."),
            FlowError::UnknownState => bad(
                "Invalid callback",
                "The state does not match any login in progress.",
            ),
            FlowError::OtherBrowser => bad(
                "Login not found",
                "This login was started in another browser.",
            ),
            FlowError::MixUp => bad(
                "Invalid callback",
                "The response came from another identity provider.",
            ),
            FlowError::WrongStep => bad(
                "Login not found",
                "This login is not waiting for this step. Start again from the application.",
            ),
            FlowError::Conflict => bad(
                "Login already continued",
                "This login was continued in another tab or request.",
            ),
            FlowError::BadRedirect => bad("Invalid request", "Bad redirect URI."),
            FlowError::Malformed(m) => WebError::Page(PageError::bad_request("Invalid request", m)),
            FlowError::UnknownConnector => WebError::Page(PageError::new(
                StatusCode::NOT_FOUND,
                "Not found",
                "Unknown login method.",
            )),
            FlowError::NoConnectors => WebError::Page(PageError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "No login method",
                "No identity provider is configured.",
            )),
            FlowError::ConnectorFailed(detail) => {
                tracing::error!(error = %detail, "password connector failed");
                WebError::Page(PageError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Temporarily unavailable",
                    "Please try again shortly.",
                ))
            }
            FlowError::Throttled { .. } => WebError::Page(PageError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts",
                "Too many attempts. Wait a moment and try again.",
            )),
            FlowError::Busy => WebError::Page(PageError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                "Too many logins are in progress. Please try again shortly.",
            )),
            FlowError::Storage(e) => WebError::Storage(e),
        }
    }
}

/// The login page for a form view.
pub fn login_page(st: &AppState, view: FormView, transaction: &str) -> LoginPage {
    LoginPage {
        title: st.title().to_string(),
        action: paths::login_form(&view.connector_id),
        req: view.login_id,
        csrf_token: csrf_token(transaction),
        client_name: view.client_name,
        username: view.username,
        error: view.error,
        hint: st.ui.login_hint.clone(),
        stage: match view.stage {
            FormStage::Password => "password",
            FormStage::Totp => "totp",
            FormStage::EmailCode => "email_code",
            FormStage::Passkey => "passkey",
        },
        email_codes: view.email_codes,
        passkeys: view.passkeys,
        passkey_options: view.passkey_options,
    }
}

/// Renders what the engine decided. `after_post` answers a form post with
/// 303 (never 307: RFC 9700 §4.12); GETs get 302.
pub fn render(
    st: &AppState,
    jar: CookieJar,
    cookies: &Cookies,
    next: Next,
    after_post: bool,
) -> Response {
    let go = |location: &str| {
        if after_post {
            see_other(location)
        } else {
            found(location)
        }
    };
    match next {
        Next::RedirectUpstream(url) | Next::Redirect(url) => (jar, found(&url)).into_response(),
        Next::CodeIssued(url) | Next::ErrorToClient(url) => (jar, go(&url)).into_response(),
        Next::LoggedIn {
            session_cookie,
            device_cookie,
            expires_at,
            redirect,
        } => {
            let jar = set_session_cookies(st, jar, session_cookie, device_cookie, expires_at);
            (jar, go(&redirect)).into_response()
        }
        Next::NotAllowed { client_name, back } => (
            StatusCode::FORBIDDEN,
            jar,
            web::NotAllowedPage {
                title: st.title().to_string(),
                client_name,
                back,
            },
        )
            .into_response(),
        Next::ShowChooser(connectors) => (
            jar,
            ChoosePage {
                title: st.title().to_string(),
                connectors,
            },
        )
            .into_response(),
        Next::PasskeyOptions(options) => {
            (jar, web::no_store(), axum::Json(options)).into_response()
        }
        Next::ShowForm(view) => {
            let status = if view.error.is_some() {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            };
            let page = login_page(st, view, &cookies.transaction);
            (status, jar, page).into_response()
        }
    }
}
