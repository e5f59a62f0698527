//! The OpenID Provider's web layer: shared state, registered clients and
//! the routes. Handlers extract, call one domain function (the login-flow
//! engine in [`crate::flow`], or the grant logic of [`token`]), and render.
//!
//! - [`request`]: the validated authorization request;
//! - [`authorize`]: `/oauth2/authorize`; [`login`]: the chooser and the
//!   password form; [`callback`]: the upstream callbacks;
//! - [`browser`]: cookies, CSRF and rendering of the engine's `Next`;
//! - [`redirect`]: responses through the client's redirect URI;
//! - [`token`]: `/oauth2/token`; [`revoke`]: `/oauth2/revoke`;
//!   [`introspect`]: `/oauth2/introspect`; [`client_auth`]: their client
//!   authentication; [`userinfo`]: `/userinfo`;
//! - [`discovery`]: discovery metadata and the JWKS.
//! - [`logout`]: RP-Initiated Logout and the upstream logout callback.
//! - [`account`]: the signed-in user's pages: devices, local logout,
//!   dashboard, with their session-bound CSRF token.

pub mod account;
pub mod authorize;
pub mod browser;
pub mod callback;
pub mod client_auth;
pub mod discovery;
pub mod introspect;
pub mod local_auth;
pub mod login;
pub mod logout;
pub mod passkey_login;
pub mod passkeys;
pub mod redirect;
pub mod request;
pub mod revocation;
pub mod revoke;
pub mod token;
pub mod totp_pages;
pub mod userinfo;

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::{ClientConfig, Config, CookieLifetime, TokenConfig, UiConfig};
use crate::customizer::TokenCustomizer;
use crate::flow::Flows;
use crate::keys::KeyManager;
use crate::store::Store;

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
    pub grant_types: Vec<GrantType>,
    /// Exact post-logout redirect URIs (OpenID RP-Initiated Logout 1.0 §3).
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    /// Algorithm of this client's ID tokens, if not the default.
    pub id_token_alg: Option<String>,
    /// The connectors this client's users may log in with; `None`: all.
    pub upstreams: Option<Vec<String>>,
}

/// The grants a client can be allowed (RFC 6749 §4, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

impl GrantType {
    pub fn parse(s: &str) -> Option<GrantType> {
        match s {
            "authorization_code" => Some(GrantType::AuthorizationCode),
            "refresh_token" => Some(GrantType::RefreshToken),
            "client_credentials" => Some(GrantType::ClientCredentials),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::RefreshToken => "refresh_token",
            GrantType::ClientCredentials => "client_credentials",
        }
    }
}

impl Client {
    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    /// Whether this client's users may log in with connector `id` (its
    /// `upstreams` setting; all connectors without one).
    pub fn allows_connector(&self, id: &str) -> bool {
        connector_allowed(self.upstreams.as_deref(), id)
    }
}

/// Whether a client whose `upstreams` setting is `upstreams` lets its users
/// log in with connector `id`.
pub fn connector_allowed(upstreams: Option<&[String]>, id: &str) -> bool {
    upstreams.is_none_or(|allowed| allowed.iter().any(|a| a == id))
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
        let mut grant_types = Vec::new();
        for g in &c.grant_types {
            let grant = GrantType::parse(g).ok_or_else(|| {
                format!(
                    "{}: {g:?} is not offered (use authorization_code, refresh_token, client_credentials)",
                    key("grant_types")
                )
            })?;
            if grant == GrantType::ClientCredentials && c.public {
                return Err(format!(
                    "{}: a public client cannot use client_credentials",
                    key("grant_types")
                ));
            }
            grant_types.push(grant);
        }
        for uri in &c.post_logout_redirect_uris {
            validate_redirect_uri(uri)
                .map_err(|e| format!("{}: {uri}: {e}", key("post_logout_redirect_uris")))?;
        }
        if let Some(uri) = &c.backchannel_logout_uri {
            validate_redirect_uri(uri)
                .map_err(|e| format!("{}: {uri}: {e}", key("backchannel_logout_uri")))?;
        }
        if let Some(alg) = &c.id_token_signed_response_alg {
            if !matches!(alg.as_str(), "RS256" | "ES256" | "EdDSA") {
                return Err(format!(
                    "{}: {alg:?} (use RS256, ES256 or EdDSA)",
                    key("id_token_signed_response_alg")
                ));
            }
        }
        Ok(Client {
            id: c.id.clone(),
            name: c.name.clone().unwrap_or_else(|| c.id.clone()),
            secret_hash: secret.as_ref().map(|s| crate::secret::hash(s.expose())),
            redirect_uris: c.redirect_uris.clone(),
            allowed_scopes: c.allowed_scopes.clone(),
            public: c.public,
            require_pkce: c.require_pkce || c.public,
            grant_types,
            post_logout_redirect_uris: c.post_logout_redirect_uris.clone(),
            backchannel_logout_uri: c.backchannel_logout_uri.clone(),
            id_token_alg: c.id_token_signed_response_alg.clone(),
            upstreams: c.upstreams.clone(),
        })
    }
}

/// Absolute, no fragment, and `http:` only on loopback (RFC 8252 §7.3, RFC 9700 §2.6).
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

/// The cookies of the provider.
#[derive(Debug, Clone)]
pub struct CookieSettings {
    /// The browser session cookie.
    pub session: String,
    /// The cookie that binds logins in progress to the browser.
    pub transaction: String,
    /// The long-lived cookie that identifies the browser ([`crate::device`]).
    pub device: String,
    /// `Secure` attribute.
    pub secure: bool,
    /// Lifetime of the transaction cookie, seconds.
    pub transaction_ttl: i64,
    /// Whether the session cookie carries a `Max-Age`.
    pub lifetime: CookieLifetime,
}

/// RFC 6265bis §4.1.3.2: a `__Host-` cookie is accepted only when it is
/// `Secure`, has `Path=/` and no `Domain`, so neither a sibling subdomain
/// nor a plain-http page can set or shadow it.
const HOST_PREFIX: &str = "__Host-";

impl CookieSettings {
    /// The cookies of `config`. Behind an https issuer every cookie is
    /// `Secure` and its name gets the `__Host-` prefix (all of them are
    /// host-only with `Path=/`); over plain http (local tests) browsers
    /// would refuse such names, so they stay as configured.
    pub fn from_config(config: &Config) -> CookieSettings {
        let https = config.server.issuer().starts_with("https://");
        let name = |n: &str| {
            if https && !n.starts_with(HOST_PREFIX) {
                format!("{HOST_PREFIX}{n}")
            } else {
                n.to_string()
            }
        };
        CookieSettings {
            session: name(&config.session.cookie_name),
            transaction: name(&config.session.transaction_cookie_name),
            device: name(&config.session.device_cookie_name()),
            secure: https || config.session.secure.unwrap_or(false),
            transaction_ttl: config.tokens.login_ttl_seconds,
            lifetime: config.session.cookie_lifetime,
        }
    }
}

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

/// What handlers need, and nothing of the configuration besides.
pub struct Inner {
    /// Exactly the configured issuer (validated: no trailing slash, no path).
    pub issuer: String,
    pub ui: UiConfig,
    pub cookies: CookieSettings,
    /// Token lifetimes.
    pub tokens: TokenConfig,
    pub store: Arc<dyn Store>,
    pub keys: KeyManager,
    pub clients: Arc<HashMap<String, Client>>,
    pub flows: Flows,
    pub customizer: Arc<dyn TokenCustomizer>,
    pub clock: SharedClock,
    /// This application's own registry (`/metrics`).
    pub metrics: crate::metrics::Metrics,
    /// Outgoing mail: the outbox and its delivery.
    pub mailer: Arc<crate::mail::Mailer>,
    /// E-mail one-time codes (registration and login of local accounts).
    pub email_codes: Arc<crate::mail::EmailCodes>,
    /// The argon2id pool every password check goes through.
    pub hasher: Arc<crate::password::Hasher>,
    /// Per-IP quotas and per-account throttles of attempts.
    pub rate_limits: Arc<crate::ratelimit::RateLimits>,
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

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn title(&self) -> &str {
        &self.ui.title
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_issuers_get_secure_host_prefixed_cookies() {
        let mut c = Config::default();
        c.server.issuer = Some("https://login.example.org".into());
        let https = CookieSettings::from_config(&c);
        assert!(https.secure);
        assert_eq!(https.session, "__Host-AUTH_ADAPTER_SESSION");
        assert_eq!(https.transaction, "__Host-AUTH_ADAPTER_TX");
        assert_eq!(https.device, "__Host-AUTH_ADAPTER_SESSION_DEVICE");
        assert_eq!(https.lifetime, CookieLifetime::Persistent);
        // A name configured with the prefix keeps one prefix.
        c.session.cookie_name = "__Host-sid".into();
        assert_eq!(CookieSettings::from_config(&c).session, "__Host-sid");
        assert_eq!(CookieSettings::from_config(&c).device, "__Host-sid_DEVICE");

        let http = CookieSettings::from_config(&Config::default());
        assert!(!http.secure);
        assert_eq!(http.session, "AUTH_ADAPTER_SESSION");
        assert_eq!(http.device, "AUTH_ADAPTER_SESSION_DEVICE");
        // `secure = true` over http (a test behind a proxy): Secure, but
        // the names stay (browsers refuse `__Host-` from http origins).
        let mut c = Config::default();
        c.session.secure = Some(true);
        let forced = CookieSettings::from_config(&c);
        assert!(forced.secure);
        assert_eq!(forced.session, "AUTH_ADAPTER_SESSION");
    }

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
            grant_types: vec!["authorization_code".into()],
            backchannel_logout_uri: None,
            id_token_signed_response_alg: None,
            claims: Default::default(),
            upstreams: None,
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
