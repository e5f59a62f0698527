//! Configuration: defaults, then a TOML file, then environment overrides.
//!
//! Every struct denies unknown fields, so a typo in the file or in an
//! `AUTH_ADAPTER__SECTION__KEY` variable stops start-up with a message that
//! names the key and where it came from. Secrets can be given inline (demo
//! only), or indirectly with `*_env` (the name of an environment variable).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::keys::KeysConfig;

/// Default prefix of environment overrides: `AUTH_ADAPTER__SERVER__LISTEN=...`.
pub const ENV_PREFIX: &str = "AUTH_ADAPTER__";

/// The whole configuration of one provider instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub session: SessionConfig,
    pub tokens: TokenConfig,
    pub ui: UiConfig,
    pub claims: ClaimsConfig,
    /// Relying parties allowed to use this provider.
    pub clients: Vec<ClientConfig>,
    /// Upstream OpenID Providers (federation connectors).
    pub upstreams: Vec<UpstreamConfig>,
    /// Local accounts. When non-empty, a password connector with id `local` is offered.
    pub local_users: Vec<LocalUserConfig>,
    /// Encryption at rest of the private signing keys.
    pub keys: KeysConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// The issuer identifier, byte-equal to `iss` in every token and to
    /// `issuer` in discovery (OIDC Discovery §3). No trailing slash.
    pub issuer: String,
    /// Log format: `text` or `json`.
    pub log_format: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            issuer: "http://127.0.0.1:9000".into(),
            log_format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` (default, embedded) or `postgres://...`.
    pub url: String,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://data/adapter.db".into(),
            max_connections: 8,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Name of the browser session cookie. Distinct per service: browsers
    /// share cookies between ports of one host.
    pub cookie_name: String,
    /// Name of the cookie that binds a login transaction to the browser.
    pub transaction_cookie_name: String,
    /// Absolute session lifetime in seconds.
    pub ttl_seconds: i64,
    /// `Secure` cookie attribute. Unset: secure exactly when the issuer is https.
    pub secure: Option<bool>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            cookie_name: "AUTH_ADAPTER_SESSION".into(),
            transaction_cookie_name: "AUTH_ADAPTER_TX".into(),
            ttl_seconds: 8 * 3600,
            secure: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    pub access_token_ttl_seconds: i64,
    pub id_token_ttl_seconds: i64,
    /// Authorization code lifetime; at most 60 s (RFC 6749 §4.1.2: short-lived).
    pub code_ttl_seconds: i64,
    /// Lifetime of a pending login (downstream request + upstream state); at most 600 s.
    pub login_ttl_seconds: i64,
    /// Signing algorithm of new keys: `RS256` (default), `ES256` or `EdDSA`.
    pub signing_alg: String,
    /// A refresh token unused this long expires (RFC 9700 §4.14.2).
    pub refresh_token_idle_ttl_seconds: i64,
    /// No refresh token of a grant outlives this, however often rotated.
    pub refresh_token_absolute_ttl_seconds: i64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            access_token_ttl_seconds: 300,
            id_token_ttl_seconds: 300,
            code_ttl_seconds: 60,
            login_ttl_seconds: 600,
            signing_alg: "RS256".into(),
            refresh_token_idle_ttl_seconds: 24 * 3600,
            refresh_token_absolute_ttl_seconds: 30 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Product name shown on pages (the test IdP calls itself "Test Auth Server").
    pub title: String,
    /// A line shown under the login form (the test IdP names its demo account).
    pub login_hint: Option<String>,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            title: "Auth Adapter".into(),
            login_hint: None,
        }
    }
}

/// Which token customizer builds the claims of issued tokens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CustomizerKind {
    /// Broker mode: claims mapped from the upstream identity (`mappings`,
    /// `<upstream id>_sub`, `authorities`).
    Mapped,
    /// Identity-provider mode: the account's own standard claims, filtered by scope.
    Passthrough,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimsConfig {
    pub customizer: CustomizerKind,
    /// Output claim name -> upstream claim name. Reserved claims
    /// (`iss`, `sub`, `aud`, ...) are refused at start-up.
    pub mappings: BTreeMap<String, String>,
    /// Authorities every user gets.
    pub default_authorities: Vec<String>,
    /// Upstream claim holding group names, each mapped to an authority.
    pub groups_claim: String,
    /// Prefix of an authority made from a group: `admins` -> `ROLE_ADMINS`.
    pub group_authority_prefix: String,
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        let mappings = [
            ("preferred_username", "preferred_username"),
            ("name", "name"),
            ("email", "email"),
            ("email_verified", "email_verified"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        ClaimsConfig {
            customizer: CustomizerKind::Mapped,
            mappings,
            default_authorities: vec!["ROLE_USER".into()],
            groups_claim: "groups".into(),
            group_authority_prefix: "ROLE_".into(),
        }
    }
}

/// A relying party. Adding an application is one such block.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub id: String,
    /// Shown on pages.
    #[serde(default)]
    pub name: Option<String>,
    /// Client secret inline (demo only; prefer `secret_env`). Hashed at load.
    #[serde(default)]
    pub secret: Option<String>,
    /// Name of an environment variable holding the client secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Exact redirect URIs (no wildcards, checklist A1).
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    #[serde(default = "default_client_scopes")]
    pub allowed_scopes: Vec<String>,
    /// A public client has no secret and must use PKCE.
    #[serde(default)]
    pub public: bool,
    /// Confidential clients may opt out of PKCE (legacy apps); public ones never.
    #[serde(default = "default_true")]
    pub require_pkce: bool,
    /// Grants this client may use (RFC 6749 §5.2 `unauthorized_client`
    /// otherwise): `authorization_code`, `refresh_token`, and for
    /// confidential clients `client_credentials`. `password` and `implicit`
    /// are never offered (RFC 9700 §2.1.2, §2.4).
    #[serde(default = "default_grant_types")]
    pub grant_types: Vec<String>,
    /// OpenID Back-Channel Logout 1.0 §2.2: where logout tokens are posted.
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
    /// OpenID Connect Dynamic Client Registration §2: the algorithm of this
    /// client's ID tokens (`RS256`, `ES256` or `EdDSA`); the provider's
    /// default key algorithm when unset.
    #[serde(default)]
    pub id_token_signed_response_alg: Option<String>,
}

fn default_grant_types() -> Vec<String> {
    ["authorization_code", "refresh_token"]
        .map(String::from)
        .to_vec()
}

fn default_client_scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(String::from).to_vec()
}

fn default_upstream_scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(String::from).to_vec()
}

fn default_true() -> bool {
    true
}

/// An upstream OpenID Provider the adapter logs users in with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Stable id: used in the callback path and in the `<id>_sub` claim
    /// (dashes become underscores).
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub issuer: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default = "default_upstream_scopes")]
    pub scopes: Vec<String>,
    /// Also fetch the upstream's userinfo and merge it into the identity.
    #[serde(default)]
    pub fetch_userinfo: bool,
    /// How the adapter's `sub` is made from this upstream's subject.
    #[serde(default)]
    pub subject: SubjectStrategy,
    /// With two or more upstreams, `subject = "upstream"` is refused at
    /// start-up (two users could get one `sub`) unless this is set: the
    /// upstreams share one user base on purpose.
    #[serde(default)]
    pub allow_shared_subjects: bool,
}

/// A local account (identity-provider mode).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalUserConfig {
    pub username: String,
    /// PHC string of an argon2id hash.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Plain demo password, hashed with argon2id at start-up and then dropped.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A secret given inline or through `<key>_env` (the name of an environment
/// variable). Errors name the key.
pub fn resolve_secret(
    inline: &Option<String>,
    env: &Option<String>,
    key: &str,
) -> Result<Option<String>, String> {
    match (inline, env) {
        (Some(s), _) => Ok(Some(s.clone())),
        (None, Some(var)) => std::env::var(var)
            .map(Some)
            .map_err(|_| format!("{key}_env: environment variable {var} is not set")),
        (None, None) => Ok(None),
    }
}

/// Loads `defaults <- file <- environment`. Errors name the file and key.
pub fn load(file: Option<&Path>, env_prefix: &str) -> Result<Config, Box<figment::Error>> {
    load_from(Config::default(), file, env_prefix)
}

/// As [`load`], starting from the given defaults (each binary has its own).
pub fn load_from<T>(
    defaults: T,
    file: Option<&Path>,
    env_prefix: &str,
) -> Result<T, Box<figment::Error>>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::prefixed(env_prefix).split("__"))
        .extract()
        .map_err(Box::new)
}

impl Config {
    /// A copy safe to print: every inline secret replaced.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for client in &mut c.clients {
            if client.secret.is_some() {
                client.secret = Some("<redacted>".into());
            }
        }
        for up in &mut c.upstreams {
            if up.client_secret.is_some() {
                up.client_secret = Some("<redacted>".into());
            }
        }
        for u in &mut c.local_users {
            if u.password.is_some() {
                u.password = Some("<redacted>".into());
            }
        }
        c
    }
}

/// How the adapter's `sub` is derived from an upstream's subject (OIDC Core
/// §2: `sub` is unique only within one issuer).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `sub` is the upstream's subject as is (one upstream; the demo).
    #[default]
    Upstream,
    /// `sub` is derived from the upstream id and its subject, so two
    /// upstreams never collide (see `customizer::namespaced_subject`).
    Namespaced,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "[server]\nlisen = \"127.0.0.1:1\"\n").unwrap();
        let err = load(Some(&path), "AUTH_ADAPTER_TEST_UNUSED__")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("a.toml"), "{err}");
    }

    #[test]
    fn file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(
            &path,
            "[server]\nissuer = \"http://x\"\n[[clients]]\nid = \"c\"\nredirect_uris = [\"http://127.0.0.1/cb\"]\n",
        )
        .unwrap();
        let c = load(Some(&path), "AUTH_ADAPTER_TEST_UNUSED__").unwrap();
        assert_eq!(c.server.issuer, "http://x");
        assert_eq!(c.clients[0].allowed_scopes, default_client_scopes());
        assert!(c.clients[0].require_pkce);
        assert_eq!(c.database.url, "sqlite://data/adapter.db");
    }
}
