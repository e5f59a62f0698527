//! Protocol errors. [`ErrorCode`]'s `Display` is the RFC 6749 / OIDC error
//! code, so a response never spells a code by hand.

use std::fmt;

/// Error codes of RFC 6749 §4.1.2.1 and §5.2, RFC 6750 §3.1 and OIDC Core §3.1.2.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    InvalidScope,
    AccessDenied,
    ServerError,
    TemporarilyUnavailable,
    LoginRequired,
    RequestNotSupported,
    RequestUriNotSupported,
    InvalidToken,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::UnsupportedResponseType => "unsupported_response_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::ServerError => "server_error",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
            ErrorCode::LoginRequired => "login_required",
            ErrorCode::RequestNotSupported => "request_not_supported",
            ErrorCode::RequestUriNotSupported => "request_uri_not_supported",
            ErrorCode::InvalidToken => "invalid_token",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error to report to the relying party: the code plus a human-readable
/// description (never containing secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: String,
}

impl OAuthError {
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        OAuthError {
            code,
            description: description.into(),
        }
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.description)
    }
}

impl std::error::Error for OAuthError {}

/// Shorthand constructors, one per code used by the provider.
macro_rules! ctor {
    ($($name:ident => $code:ident),* $(,)?) => {
        impl OAuthError {
            $(pub fn $name(description: impl Into<String>) -> Self {
                OAuthError::new(ErrorCode::$code, description)
            })*
        }
    };
}

ctor! {
    invalid_request => InvalidRequest,
    invalid_client => InvalidClient,
    invalid_grant => InvalidGrant,
    invalid_scope => InvalidScope,
    access_denied => AccessDenied,
    server_error => ServerError,
    temporarily_unavailable => TemporarilyUnavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_rfc_code() {
        assert_eq!(ErrorCode::InvalidGrant.to_string(), "invalid_grant");
        assert_eq!(
            ErrorCode::TemporarilyUnavailable.to_string(),
            "temporarily_unavailable"
        );
        assert_eq!(
            OAuthError::invalid_client("bad secret").to_string(),
            "invalid_client: bad secret"
        );
    }
}
