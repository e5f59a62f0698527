//! Connectors: where identities come from (Dex's shape).
//!
//! A [`CallbackConnector`] sends the browser elsewhere and gets it back on
//! its own callback path (the OIDC upstream, [`oidc::OidcConnector`]; a
//! plain OAuth 2.0 upstream, [`oauth2::OAuth2Connector`]). The
//! local-accounts connector checks credentials typed into our own forms
//! ([`crate::accounts`]). The opaque state a callback
//! connector returns from `begin` is persisted with the login state, so a
//! login survives a restart and can finish on another replica.

pub mod jwk;
pub mod oauth2;
pub mod oidc;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use crate::customizer::Identity;

/// Why a connector could not authenticate.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The upstream cannot be reached or answered with a server error:
    /// `temporarily_unavailable` for the relying party (RFC 6749 §4.1.2.1).
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// The user or the upstream refused (`access_denied`).
    #[error("access denied: {0}")]
    Denied(String),
    /// The upstream's answer failed validation (bad ID token, wrong `iss`, …).
    #[error("upstream response rejected: {0}")]
    Invalid(String),
    /// Local misconfiguration.
    #[error("connector misconfigured: {0}")]
    Config(String),
    #[error("not supported by this connector")]
    NotSupported,
}

/// What a login asks of the upstream (OIDC Core §3.1.2.1).
#[derive(Debug, Clone, Copy)]
pub struct BeginRequest<'a> {
    pub callback_url: &'a str,
    pub state: &'a str,
    /// "login" or "none", forwarded as `prompt`.
    pub prompt: Option<&'a str>,
    pub max_age: Option<i64>,
    pub login_hint: Option<&'a str>,
}

impl ConnectorError {
    /// How this failure reaches the relying party (RFC 6749 §4.1.2.1). The
    /// description is generic: details stay in the log, never in the browser.
    pub fn oauth_error(&self) -> crate::error::OAuthError {
        use crate::error::OAuthError;
        match self {
            ConnectorError::Unavailable(_) => OAuthError::temporarily_unavailable(
                "the identity provider is unreachable; try again later",
            ),
            ConnectorError::Denied(_) => {
                OAuthError::access_denied("the identity provider denied the login")
            }
            ConnectorError::Invalid(_) => {
                OAuthError::access_denied("the identity provider's response failed validation")
            }
            ConnectorError::Config(_) | ConnectorError::NotSupported => {
                OAuthError::server_error("the identity provider is misconfigured")
            }
        }
    }
}

/// What `begin` hands back: where to send the browser, and the state to
/// keep server-side until the callback.
#[derive(Debug, Clone)]
pub struct BeginResponse {
    pub redirect_url: String,
    /// Opaque to the provider; persisted with the login state.
    pub connector_state: String,
}

#[async_trait]
pub trait CallbackConnector: Send + Sync + 'static {
    /// Starts a login. `req.state` is the value the upstream must echo back;
    /// `req.callback_url` is this connector's own callback (RFC 9700 §4.4).
    async fn begin(&self, req: &BeginRequest<'_>) -> Result<BeginResponse, ConnectorError>;

    /// Finishes a login from the callback's query parameters.
    async fn complete(
        &self,
        callback_url: &str,
        params: &HashMap<String, String>,
        connector_state: &str,
    ) -> Result<Identity, ConnectorError>;

    /// Refreshes an identity (used by a later refresh-token grant):
    /// `Denied` when the upstream no longer accepts the user's grant.
    async fn refresh(&self, _identity: &Identity) -> Result<Identity, ConnectorError> {
        Err(ConnectorError::NotSupported)
    }

    /// With a freshness policy (`on_refresh = "refresh_upstream"`): the
    /// oldest claims, in seconds, an adapter refresh keeps before asking
    /// [`Self::refresh`] for fresh ones. `None`: the login's claims stay.
    fn claims_max_age(&self) -> Option<i64> {
        None
    }

    /// Warms caches (discovery) in the background; failures are logged.
    async fn warm_up(&self) {}

    /// True once the upstream's metadata was fetched at least once (OIDC
    /// Discovery §4); readiness waits for it. Cheap: no I/O.
    fn discovered(&self) -> bool {
        true
    }

    /// Where to send the browser to end its session at the upstream (OIDC
    /// RP-Initiated Logout 1.0 §2), when the upstream offers an
    /// `end_session_endpoint`: `id_token_hint`, `client_id`,
    /// `post_logout_redirect_uri` and `state`. `None` when it does not.
    async fn end_session_url(
        &self,
        _upstream: &UpstreamTokens,
        _post_logout_redirect_uri: &str,
        _state: &str,
    ) -> Result<Option<String>, ConnectorError> {
        Ok(None)
    }

    /// Revokes the upstream refresh token at the upstream's RFC 7009
    /// `revocation_endpoint`. True when a revocation was sent and accepted;
    /// false when there is nothing to revoke or nowhere to revoke it.
    async fn revoke_upstream(&self, _upstream: &UpstreamTokens) -> Result<bool, ConnectorError> {
        Ok(false)
    }
}

/// What an OIDC upstream issued at login that logout needs again: its raw
/// ID token (the `id_token_hint` of OIDC RP-Initiated Logout 1.0 §2) and its
/// refresh token, sealed with the configured encryption key
/// ([`crate::keys::EncryptionKey::seal_value`]) so it is never stored in
/// the clear.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTokens {
    pub id_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_refresh_token: Option<String>,
}

impl std::fmt::Debug for UpstreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens never reach a log line.
        f.debug_struct("UpstreamTokens")
            .field("refresh_token", &self.sealed_refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// A configured connector.
#[derive(Clone)]
pub enum ConnectorKind {
    Callback(Arc<dyn CallbackConnector>),
    /// Local accounts: our own forms and the multi-step authentication.
    Local(Arc<crate::accounts::authn::Authenticator>),
}

/// A connector with its id and display name.
#[derive(Clone)]
pub struct Connector {
    pub id: String,
    pub name: String,
    pub kind: ConnectorKind,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What `begin` hands back: `url` and the pending login serialized as the
/// opaque connector state.
pub fn begin_response<T: Serialize>(
    url: String,
    pending: &T,
) -> Result<BeginResponse, ConnectorError> {
    Ok(BeginResponse {
        redirect_url: url,
        connector_state: serde_json::to_string(pending)
            .map_err(|e| ConnectorError::Config(e.to_string()))?,
    })
}

/// The pending login `begin` stored as the connector state.
pub fn pending_login<T: serde::de::DeserializeOwned>(
    connector_state: &str,
) -> Result<T, ConnectorError> {
    serde_json::from_str(connector_state)
        .map_err(|e| ConnectorError::Invalid(format!("login state: {e}")))
}

/// An error response at a callback (RFC 6749 §4.1.2.1): `Denied` with its
/// code only, as upstream descriptions are not trusted (and never shown).
pub fn callback_error(params: &HashMap<String, String>) -> Result<(), ConnectorError> {
    let Some(error) = params.get("error") else {
        return Ok(());
    };
    let code: String = error
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    Err(ConnectorError::Denied(format!(
        "upstream returned error={code}"
    )))
}

/// True for ids usable in paths and claim names.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn oauth_error_maps_each_variant() {
        for (e, code) in [
            (
                ConnectorError::Unavailable("detail-42".into()),
                ErrorCode::TemporarilyUnavailable,
            ),
            (
                ConnectorError::Denied("detail-42".into()),
                ErrorCode::AccessDenied,
            ),
            (
                ConnectorError::Invalid("detail-42".into()),
                ErrorCode::AccessDenied,
            ),
            (
                ConnectorError::Config("detail-42".into()),
                ErrorCode::ServerError,
            ),
            (ConnectorError::NotSupported, ErrorCode::ServerError),
        ] {
            let got = e.oauth_error();
            assert_eq!(got.code, code, "{e:?}");
            // Details stay in the log.
            assert!(
                !got.description.contains("detail-42"),
                "{e:?}: {}",
                got.description
            );
        }
        assert_eq!(
            ConnectorError::Unavailable(String::new())
                .oauth_error()
                .code
                .as_str(),
            "temporarily_unavailable"
        );
    }
}
