//! HTML pages and response helpers shared by the handlers: askama
//! templates, error pages, redirects, cookies and security headers.

use askama::Template;
use askama_web::WebTemplate;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, SameSite};
use tower_http::set_header::SetResponseHeaderLayer;

/// Style sheet of every page (no third-party assets, checklist A16).
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
    pub connector_id: String,
    pub req: String,
    pub csrf_token: String,
    pub client_name: Option<String>,
    pub username: String,
    pub error: Option<String>,
    pub hint: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "adapter/choose.html")]
pub struct ChoosePage {
    pub title: String,
    pub req: String,
    /// (id, display name)
    pub connectors: Vec<(String, String)>,
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

/// A cookie that deletes `name`.
pub fn removal(name: &str) -> Cookie<'static> {
    let mut c = Cookie::build((name.to_string(), "")).path("/").build();
    c.make_removal();
    c
}

/// Security headers on every response unless a handler set its own
/// (checklist A16).
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
