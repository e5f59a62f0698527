//! The web layer's shared parts: the one error type of handlers
//! ([`WebError`]), askama pages, redirects, cookies, form decoding and
//! security headers.

use std::borrow::Cow;

use askama::Template;
use askama_web::WebTemplate;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde_json::json;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::{ErrorCode, OAuthError};
use crate::store::StoreError;

/// An error page: status, heading and a message safe to show the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageError {
    pub status: StatusCode,
    pub heading: &'static str,
    pub message: Cow<'static, str>,
}

impl PageError {
    pub fn new(
        status: StatusCode,
        heading: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        PageError {
            status,
            heading,
            message: message.into(),
        }
    }

    /// 400 with a heading and message.
    pub fn bad_request(heading: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, heading, message)
    }
}

/// Every way a handler can fail, each rendered as its spec wants:
/// an HTML page where no redirect is safe (RFC 6749 §4.1.2.1), RFC 6749
/// §5.2 JSON at the token endpoint, an RFC 6750 §3 challenge for bearer
/// resources.
#[derive(Debug)]
pub enum WebError {
    Page(PageError),
    /// Storage failed: logged here, a generic 503 page for the user.
    Storage(StoreError),
    /// A token-endpoint error (RFC 6749 §5.2).
    Token(OAuthError),
    /// A protected-resource error (RFC 6750 §3.1); `None` when the request
    /// carried no token at all (no error code then).
    Bearer(StatusCode, Option<OAuthError>),
}

impl From<PageError> for WebError {
    fn from(e: PageError) -> Self {
        WebError::Page(e)
    }
}

/// At the token endpoint an OAuth error is RFC 6749 §5.2 JSON.
impl From<OAuthError> for WebError {
    fn from(e: OAuthError) -> Self {
        WebError::Token(e)
    }
}

impl From<StoreError> for WebError {
    fn from(e: StoreError) -> Self {
        WebError::Storage(e)
    }
}

/// RFC 6749 §5.1: token responses are never cached.
pub fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            WebError::Page(page) => page.into_response(),
            WebError::Storage(e) => {
                tracing::error!(error = %e, "storage failure");
                PageError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Temporarily unavailable",
                    "The service cannot reach its storage. Please try again shortly.",
                )
                .into_response()
            }
            WebError::Token(error) => {
                let body = Json(json!({
                    "error": error.code.as_str(),
                    "error_description": error.description,
                }));
                let status = match error.code {
                    // RFC 6749 §5.2: invalid_client is 401 with a challenge.
                    ErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
                    ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_REQUEST,
                };
                let mut response = (status, no_store(), body).into_response();
                if status == StatusCode::UNAUTHORIZED {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"token\", charset=\"UTF-8\""),
                    );
                }
                response
            }
            WebError::Bearer(status, error) => {
                let challenge = match &error {
                    Some(e) => format!(
                        "Bearer error=\"{}\", error_description=\"{}\"",
                        e.code,
                        e.description.replace(['"', '\\'], "")
                    ),
                    None => "Bearer".to_string(),
                };
                let value =
                    HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer"));
                let mut response = match error {
                    Some(e) => (
                        status,
                        Json(json!({"error": e.code.as_str(), "error_description": e.description})),
                    )
                        .into_response(),
                    None => status.into_response(),
                };
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
                response
            }
        }
    }
}

/// A page error travels to [`render_error_pages`] as a response extension,
/// which renders it with the provider's title.
impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// Middleware: renders every [`PageError`] response as the HTML error page
/// in this provider's look.
pub async fn render_error_pages(
    axum::extract::State(title): axum::extract::State<std::sync::Arc<str>>,
    mut response: Response,
) -> Response {
    match response.extensions_mut().remove::<PageError>() {
        Some(page) => {
            let mut rendered = error_page(&title, page.status, page.heading, &page.message);
            // A 429's or 503's Retry-After (RFC 9110 §10.2.3) survives.
            if let Some(retry) = response.headers().get(header::RETRY_AFTER) {
                rendered
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry.clone());
            }
            rendered
        }
        None => response,
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs (query or body).
pub fn form_pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

/// Style sheet of every page (no third-party assets).
pub const STYLE_CSS: &str = include_str!("../assets/style.css");

#[derive(Template, WebTemplate)]
#[template(path = "adapter/error.html")]
pub struct ErrorPage {
    pub title: String,
    pub heading: String,
    pub message: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "adapter/login.html")]
pub struct LoginPage {
    pub title: String,
    /// The form's action (a path of [`crate::paths`]).
    pub action: String,
    pub req: String,
    pub csrf_token: String,
    pub client_name: Option<String>,
    pub username: String,
    pub error: Option<String>,
    pub hint: Option<String>,
    /// `password`, `totp` or `email_code`: which form to show.
    pub stage: &'static str,
    /// Offer "e-mail me a code" on the password form.
    pub email_codes: bool,
    /// Offer "sign in with a passkey".
    pub passkeys: bool,
    /// The request options of the passkey asked for (`stage` `passkey`).
    pub passkey_options: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "adapter/choose.html")]
pub struct ChoosePage {
    pub title: String,
    /// (id, display name, link)
    pub connectors: Vec<(String, String, String)>,
}

/// The login gate's refusal (`allow_groups`): who may not use what, and
/// the way back to the client with `access_denied` (RFC 6749 §4.1.2.1).
#[derive(Template, WebTemplate)]
#[template(path = "adapter/not_allowed.html")]
pub struct NotAllowedPage {
    pub title: String,
    pub client_name: String,
    /// The client's error redirect.
    pub back: String,
}

/// An HTML error page. Used where no redirect to the client is safe
/// (unknown client, unregistered redirect URI: RFC 6749 §4.1.2.1).
pub fn error_page(title: &str, status: StatusCode, heading: &str, message: &str) -> Response {
    (
        status,
        ErrorPage {
            title: title.to_string(),
            heading: heading.to_string(),
            message: message.to_string(),
        },
    )
        .into_response()
}

/// 302 Found: redirects answering a GET.
pub fn found(location: &str) -> Response {
    redirect(StatusCode::FOUND, location)
}

/// 303 See Other: redirects answering a credential POST (never 307, RFC 9700 §4.12).
pub fn see_other(location: &str) -> Response {
    redirect(StatusCode::SEE_OTHER, location)
}

fn redirect(status: StatusCode, location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => (status, [(header::LOCATION, v)]).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A session-style cookie: HttpOnly, SameSite=Lax, Path=/.
pub fn cookie(name: &str, value: String, secure: bool, max_age: Option<i64>) -> Cookie<'static> {
    let mut c = Cookie::build((name.to_string(), value))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .path("/");
    if let Some(s) = max_age {
        c = c.max_age(time::Duration::seconds(s));
    }
    c.build()
}

/// A cookie that deletes `name` (`Max-Age=0`). It carries the attributes
/// the cookie was set with: a browser ignores a `__Host-` cookie without
/// `Secure`, the deletion included (RFC 6265bis §4.1.3.2).
pub fn removal(name: &str, secure: bool) -> Cookie<'static> {
    let mut c = cookie(name, String::new(), secure, None);
    c.make_removal();
    c
}

/// Security headers on every response unless a handler set its own
/// (OWASP ASVS 5.0 V3.4: CSP with frame-ancestors, no referrer, nosniff).
pub fn security_headers() -> (
    SetResponseHeaderLayer<HeaderValue>,
    SetResponseHeaderLayer<HeaderValue>,
    SetResponseHeaderLayer<HeaderValue>,
    SetResponseHeaderLayer<HeaderValue>,
) {
    (
        SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
            ),
        ),
        SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ),
    )
}

pub async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE_CSS,
    )
}

/// The script of the passkey pages (WebAuthn L2 §5: `navigator.credentials`).
pub const PASSKEYS_JS_SOURCE: &str = include_str!("../assets/passkeys.js");

pub async fn passkeys_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        PASSKEYS_JS_SOURCE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_keeps_the_attributes_of_the_cookie() {
        let c = removal("__Host-S", true).to_string();
        for part in [
            "__Host-S=",
            "Max-Age=0",
            "Secure",
            "HttpOnly",
            "Path=/",
            "SameSite=Lax",
        ] {
            assert!(c.contains(part), "{part} missing: {c}");
        }
        assert!(!c.contains("Domain"), "{c}");
        assert!(!removal("S", false).to_string().contains("Secure"));
    }
}
