//! [`AppError`]: every way a request can fail, mapped to an HTTP status and
//! rendered as an HTML error page ([`crate::views::ErrorPage`]). Nothing here
//! panics, and no message carries a token, code or secret.
//!
//! | status | cases |
//! |---|---|
//! | 400 | bad or replayed callback (no transaction, `state` mismatch, `iss` mismatch, missing `code`), provider `error=` response; a return to `/logged-out` without the logout in progress or with another `state` |
//! | 403 | cross-site logout POST |
//! | 404 | unknown path |
//! | 502 | provider misbehaved: discovery invalid, token endpoint error, ID or access token rejected, refresh refused |
//! | 503 | provider unreachable (connection refused, timeout, 5xx) |
//! | 500 | an internal error (with a page, never a panic) |

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::views::ErrorPage;

/// The one error type of the test-app.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The callback carries no valid login transaction (no cookie, expired, or already used).
    #[error("no login is in progress in this browser (the login expired, was already completed, or was started elsewhere)")]
    NoTransaction,
    /// The callback's `state` does not match the transaction.
    #[error("the state parameter does not match the login started in this browser")]
    StateMismatch,
    /// The callback is malformed (duplicate or oversized parameters, missing `code`).
    #[error("malformed authorization response: {0}")]
    BadCallback(String),
    /// RFC 9207 `iss` check failed.
    #[error("{}", issuer_mismatch(expected, got.as_deref()))]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The `iss` parameter received (None: missing although advertised).
        got: Option<String>,
    },
    /// The provider returned an OAuth error to the redirect URI.
    #[error("the identity provider returned the error {error}")]
    ProviderRejected {
        /// The `error` code.
        error: String,
        /// The `error_description`, if any.
        description: Option<String>,
    },
    /// The token endpoint answered with an OAuth error.
    #[error("the token endpoint returned the error {error}")]
    TokenEndpoint {
        /// The `error` code.
        error: String,
        /// The `error_description`, if any.
        description: Option<String>,
    },
    /// The ID token failed validation.
    #[error("the ID token was rejected: {0}")]
    IdTokenRejected(String),
    /// The access token failed validation.
    #[error("the access token was rejected: {0}")]
    AccessTokenRejected(String),
    /// The provider answered something unusable.
    #[error("the identity provider misbehaved: {0}")]
    Provider(String),
    /// The provider could not be reached.
    #[error("the identity provider is unreachable: {0}")]
    ProviderUnavailable(String),
    /// The tokens could not be refreshed (RFC 6749 §6); the user logs in again.
    #[error("the tokens could not be refreshed: {0}")]
    RefreshFailed(String),
    /// `/logged-out` without a logout in progress in this browser.
    #[error("no logout is in progress in this browser (it expired, was already completed, or was started elsewhere)")]
    NoLogoutTransaction,
    /// `/logged-out` with a `state` other than the one sent to the provider
    /// (OpenID RP-Initiated Logout 1.0 §3).
    #[error("the state parameter does not match the logout started in this browser")]
    LogoutStateMismatch,
    /// A cross-site POST was refused.
    #[error("cross-site request refused")]
    CrossSite,
    /// No such page.
    #[error("no page at this address")]
    NotFound,
    /// Something that should not happen.
    #[error("internal error: {0}")]
    Internal(String),
}

fn issuer_mismatch(expected: &str, got: Option<&str>) -> String {
    match got {
        Some(got) => format!("the authorization response names issuer {got}, expected {expected}"),
        None => format!(
            "the authorization response has no iss parameter, although {expected} advertises it (RFC 9207)"
        ),
    }
}

impl AppError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::NoTransaction
            | AppError::StateMismatch
            | AppError::NoLogoutTransaction
            | AppError::LogoutStateMismatch
            | AppError::BadCallback(_)
            | AppError::IssuerMismatch { .. }
            | AppError::ProviderRejected { .. } => StatusCode::BAD_REQUEST,
            AppError::CrossSite => StatusCode::FORBIDDEN,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::TokenEndpoint { .. }
            | AppError::IdTokenRejected(_)
            | AppError::AccessTokenRejected(_)
            | AppError::RefreshFailed(_)
            | AppError::Provider(_) => StatusCode::BAD_GATEWAY,
            AppError::ProviderUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable code, shown on the page as `id="error-code"`.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::NoTransaction => "no_transaction",
            AppError::StateMismatch => "state_mismatch",
            AppError::BadCallback(_) => "bad_callback",
            AppError::IssuerMismatch { .. } => "issuer_mismatch",
            AppError::ProviderRejected { .. } => "provider_error",
            AppError::TokenEndpoint { .. } => "token_endpoint_error",
            AppError::IdTokenRejected(_) => "id_token_rejected",
            AppError::AccessTokenRejected(_) => "access_token_rejected",
            AppError::Provider(_) => "provider_misbehaved",
            AppError::RefreshFailed(_) => "refresh_failed",
            AppError::NoLogoutTransaction => "no_logout_transaction",
            AppError::LogoutStateMismatch => "logout_state_mismatch",
            AppError::ProviderUnavailable(_) => "provider_unavailable",
            AppError::CrossSite => "cross_site",
            AppError::NotFound => "not_found",
            AppError::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            AppError::NoTransaction | AppError::StateMismatch => {
                "This login link is not valid here"
            }
            AppError::BadCallback(_) => "Malformed response from the identity provider",
            AppError::IssuerMismatch { .. } => "Response from the wrong identity provider",
            AppError::ProviderRejected { .. } => "The identity provider did not log you in",
            AppError::TokenEndpoint { .. } => "The identity provider refused to issue tokens",
            AppError::IdTokenRejected(_) => "The ID token failed verification",
            AppError::AccessTokenRejected(_) => "The access token failed verification",
            AppError::Provider(_) => "The identity provider misbehaved",
            AppError::RefreshFailed(_) => "The tokens could not be refreshed",
            AppError::NoLogoutTransaction | AppError::LogoutStateMismatch => {
                "This logout confirmation is not valid here"
            }
            AppError::ProviderUnavailable(_) => "The identity provider is not reachable",
            AppError::CrossSite => "Request refused",
            AppError::NotFound => "Page not found",
            AppError::Internal(_) => "Something went wrong",
        }
    }

    fn hint(&self) -> &'static str {
        match self {
            AppError::NoTransaction | AppError::StateMismatch => {
                "Logins are single-use and expire after 10 minutes. Start a new login from this browser."
            }
            AppError::ProviderUnavailable(_) => {
                "Is the adapter running? The test-app discovers it on demand, so you can start it now and try again."
            }
            AppError::ProviderRejected { .. } | AppError::TokenEndpoint { .. } => {
                "No session was created. You can try logging in again."
            }
            AppError::IdTokenRejected(_) | AppError::AccessTokenRejected(_) | AppError::Provider(_) => {
                "No session was created. The adapter's logs (same time) should say more."
            }
            AppError::CrossSite => "Use the button on this site's logout page.",
            AppError::NoLogoutTransaction | AppError::LogoutStateMismatch => {
                "Your session in the test-app has ended either way. Log in again if you want."
            }
            _ => "",
        }
    }

    /// Whether a "try again" login button makes sense on the page.
    fn offers_retry(&self) -> bool {
        !matches!(self, AppError::NotFound | AppError::CrossSite)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), code = self.code(), error = %self, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), code = self.code(), error = %self, "request refused");
        }
        let (provider_error, provider_error_description) = match &self {
            AppError::ProviderRejected { error, description }
            | AppError::TokenEndpoint { error, description } => {
                (Some(error.clone()), description.clone())
            }
            _ => (None, None),
        };
        let page = ErrorPage {
            nav: crate::views::Nav::anonymous(),
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error").to_owned(),
            code: self.code().to_owned(),
            title: self.title().to_owned(),
            message: self.to_string(),
            hint: self.hint().to_owned(),
            provider_error,
            provider_error_description,
            retry: self.offers_retry(),
        };
        (status, page).into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(AppError::StateMismatch.status(), StatusCode::BAD_REQUEST);
        assert_eq!(AppError::NoTransaction.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            AppError::IdTokenRejected("x".into()).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            AppError::ProviderUnavailable("x".into()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn error_page_is_html_with_status() {
        let resp = AppError::ProviderUnavailable("down".into()).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let ct = resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(ct.starts_with("text/html"), "{ct}");
    }
}
