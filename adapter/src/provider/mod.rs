//! The OpenID Provider engine: shared state, registered clients, the records
//! a flow persists, and the routes of the provider.
//!
//! - `/oauth2/authorize`, the connector login steps and the upstream
//!   callbacks are in [`authorize`];
//! - `/oauth2/token` is in [`token`], `/userinfo` in [`userinfo`];
//! - `/.well-known/openid-configuration` and `/oauth2/jwks` are in [`discovery`].

pub mod authorize;
pub mod discovery;
pub mod token;
pub mod userinfo;

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::config::{ClientConfig, Config};
use crate::connector::Connector;
use crate::customizer::{Identity, TokenCustomizer};
use crate::keys::KeyManager;
use crate::store::{Store, StoreError};
use crate::web;

/// Path of the upstream callback of connector `id` (own path per upstream,
/// RFC 9700 §4.4).
pub fn callback_path(id: &str) -> String {
    format!("/login/oauth2/code/{id}")
}

/// A registered client, secret hashed.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret; `None` for public clients.
    pub secret_hash: Option<String>,
    pub redirect_uris: Vec<String>,
    pub allowed_scopes: Vec<String>,
    pub public: bool,
    /// Always true for public clients.
    pub require_pkce: bool,
}

impl Client {
    /// Resolves the secret (inline or `secret_env`) and hashes it.
    pub fn from_config(c: &ClientConfig) -> Result<Self, String> {
        let key = |k: &str| format!("clients[{}].{k}", c.id);
        let secret = crate::config::resolve_secret(&c.secret, &c.secret_env, &key("secret"))?;
        match (c.public, &secret) {
            (false, None) => {
                return Err(format!(
                    "{}: a confidential client needs a secret",
                    key("secret")
                ))
            }
            (true, Some(_)) => {
                return Err(format!("{}: a public client has no secret", key("secret")))
            }
            _ => {}
        }
        if c.redirect_uris.is_empty() {
            return Err(format!(
                "{}: at least one is required",
                key("redirect_uris")
            ));
        }
        for uri in &c.redirect_uris {
            validate_redirect_uri(uri)
                .map_err(|e| format!("{}: {uri}: {e}", key("redirect_uris")))?;
        }
        Ok(Client {
            id: c.id.clone(),
            name: c.name.clone().unwrap_or_else(|| c.id.clone()),
            secret_hash: secret.as_ref().map(|s| crate::secret::hash(s.expose())),
            redirect_uris: c.redirect_uris.clone(),
            allowed_scopes: c.allowed_scopes.clone(),
            public: c.public,
            require_pkce: c.require_pkce || c.public,
        })
    }
}

/// Absolute, no fragment, and `http:` only on loopback (checklist A3).
pub fn validate_redirect_uri(uri: &str) -> Result<(), &'static str> {
    let url = url::Url::parse(uri).map_err(|_| "not an absolute URL")?;
    if url.fragment().is_some() {
        return Err("must not contain a fragment");
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" => match url.host_str() {
            Some("127.0.0.1") | Some("localhost") | Some("[::1]") => Ok(()),
            _ => Err("http is allowed only for loopback hosts"),
        },
        // Private-use schemes of native apps (RFC 8252 §7.1).
        s if s.contains('.') => Ok(()),
        _ => Err("scheme must be https (or http on loopback)"),
    }
}

/// A downstream authorization request waiting for a login (persisted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    /// Hash of the transaction cookie of the browser that started it (D8).
    pub browser_binding: String,
}

/// An upstream login in progress (persisted, single-use).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginState {
    pub auth_request_id: String,
    pub connector_id: String,
    pub connector_state: String,
}

/// What an authorization code stands for (persisted under its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeRecord {
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub identity: Identity,
    pub auth_time: i64,
}

/// A logged-in browser (persisted under the hash of the cookie value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub identity: Identity,
    pub auth_time: i64,
}

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub keys: KeyManager,
    pub clients: HashMap<String, Client>,
    pub connectors: Vec<Connector>,
    pub customizer: Box<dyn TokenCustomizer>,
    pub clock: SharedClock,
    pub cookie_secure: bool,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Exactly the configured issuer (validated: no trailing slash).
    pub fn issuer(&self) -> &str {
        self.config.server.issuer()
    }

    pub fn title(&self) -> &str {
        &self.config.ui.title
    }

    pub fn connector(&self, id: &str) -> Option<&Connector> {
        self.connectors.iter().find(|c| c.id == id)
    }

    /// An HTML error page in this provider's look.
    pub fn error_page(&self, status: StatusCode, heading: &str, message: &str) -> Response {
        web::error_page(self.title(), status, heading, message)
    }

    /// The page shown when storage fails: logged, never detailed to the user.
    pub fn storage_failure(&self, e: &StoreError) -> Response {
        tracing::error!(error = %e, "storage failure");
        self.error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Temporarily unavailable",
            "The service cannot reach its storage. Please try again shortly.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uri_rules() {
        assert!(validate_redirect_uri("https://app.example.org/cb").is_ok());
        assert!(validate_redirect_uri("http://127.0.0.1:8080/cb").is_ok());
        assert!(validate_redirect_uri("http://localhost/cb").is_ok());
        assert!(validate_redirect_uri("http://app.example.org/cb").is_err());
        assert!(validate_redirect_uri("https://app.example.org/cb#x").is_err());
        assert!(validate_redirect_uri("/relative").is_err());
        assert!(validate_redirect_uri("javascript:alert(1)").is_err());
    }

    #[test]
    fn client_needs_consistent_secret() {
        let mut c = ClientConfig {
            id: "c".into(),
            name: None,
            secret: None,
            secret_env: None,
            redirect_uris: vec!["https://a/cb".into()],
            post_logout_redirect_uris: vec![],
            allowed_scopes: vec!["openid".into()],
            public: false,
            require_pkce: false,
        };
        assert!(Client::from_config(&c)
            .unwrap_err()
            .contains("clients[c].secret"));
        c.secret_env = Some("AUTH_ADAPTER_TEST_SURELY_UNSET".into());
        assert!(Client::from_config(&c)
            .unwrap_err()
            .contains("AUTH_ADAPTER_TEST_SURELY_UNSET"));
        c.secret_env = None;
        c.secret = Some("s".into());
        let client = Client::from_config(&c).unwrap();
        assert_eq!(
            client.secret_hash.as_deref(),
            Some(crate::secret::hash("s").as_str())
        );
        assert!(!client.require_pkce);
        c.public = true;
        assert!(Client::from_config(&c).is_err());
        c.secret = None;
        assert!(
            Client::from_config(&c).unwrap().require_pkce,
            "public clients always need PKCE"
        );
    }
}
