//! Configuration of the test-app: the [`Config`] struct, its defaults, and how
//! it is loaded (figment: built-in defaults, then an optional TOML file, then
//! `TEST_APP__<KEY>` environment variables).
//!
//! Unknown keys and malformed values stop start-up with an error that names
//! the source (file or environment variable) and the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use url::Url;

/// Prefix of the environment variables that override the configuration, e.g.
/// `TEST_APP__ISSUER=http://127.0.0.1:9000`.
pub const ENV_PREFIX: &str = "TEST_APP__";

/// The demo client secret, matching the adapter's demo client registration.
pub const DEMO_CLIENT_SECRET: &str = "test-app-secret";

/// Test-app configuration. Every field has a default, so an empty file is valid.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Socket address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Public base URL of this app, without a trailing slash; the redirect URI
    /// is `{base_url}/login/oauth2/code/auth-adapter`.
    pub base_url: String,
    /// The OpenID Provider's issuer (the adapter). Discovery is fetched from
    /// `{issuer}/.well-known/openid-configuration` at first need.
    pub issuer: String,
    /// OAuth client id registered at the provider.
    pub client_id: String,
    /// Client secret (client_secret_basic). Prefer `client_secret_env`; set
    /// at most one of the two. With neither, the demo secret of the local
    /// chain ([`DEMO_CLIENT_SECRET`]) is used.
    pub client_secret: Option<String>,
    /// Name of an environment variable holding the client secret (not
    /// together with `client_secret`).
    pub client_secret_env: Option<String>,
    /// Scopes to request (`openid` is always sent).
    pub scopes: Vec<String>,
    /// Name of the session cookie.
    pub cookie_name: String,
    /// Name of the short-lived login-transaction cookie.
    pub tx_cookie_name: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            base_url: "http://127.0.0.1:8080".to_owned(),
            issuer: "http://127.0.0.1:9000".to_owned(),
            client_id: "test-app".to_owned(),
            client_secret: None,
            client_secret_env: None,
            scopes: vec!["openid".into(), "profile".into(), "email".into()],
            cookie_name: "TEST_APP_SESSION".to_owned(),
            tx_cookie_name: "TEST_APP_TX".to_owned(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("base_url", &self.base_url)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("client_secret_env", &self.client_secret_env)
            .field("scopes", &self.scopes)
            .field("cookie_name", &self.cookie_name)
            .field("tx_cookie_name", &self.tx_cookie_name)
            .finish()
    }
}

/// Why a configuration could not be loaded or is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Parsing or merging failed; figment's message names the source and the key.
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("invalid configuration: key `{key}`: {message}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// `client_secret_env` names a variable that is not set.
    #[error(
        "invalid configuration: key `client_secret_env`: environment variable `{0}` is not set"
    )]
    MissingSecretEnv(String),
}

impl Config {
    /// The figment behind [`Config::load`]: defaults, then `file` (if given;
    /// it must exist), then `TEST_APP__*` environment variables (`__` separates
    /// nested keys).
    pub fn figment(file: Option<&Path>) -> Figment {
        Self::figment_with_env_prefix(file, ENV_PREFIX)
    }

    fn figment_with_env_prefix(file: Option<&Path>, env_prefix: &str) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(Env::prefixed(env_prefix).split("__"))
    }

    /// Loads and validates the configuration.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// Extracts and validates a configuration from any figment (used by tests).
    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_http_url("base_url", &self.base_url)?;
        check_http_url("issuer", &self.issuer)?;
        if self.client_id.trim().is_empty() {
            return Err(invalid("client_id", "must not be empty"));
        }
        if let Some(bad) = self.scopes.iter().find(|s| {
            s.is_empty()
                || s.chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '\\')
        }) {
            return Err(invalid(
                "scopes",
                format!("`{bad}` is not a valid scope token"),
            ));
        }
        for (key, name) in [
            ("cookie_name", &self.cookie_name),
            ("tx_cookie_name", &self.tx_cookie_name),
        ] {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                return Err(invalid(key, "must be a non-empty token of [A-Za-z0-9_.-]"));
            }
        }
        if self.cookie_name == self.tx_cookie_name || self.cookie_name == self.logout_cookie_name()
        {
            return Err(invalid("tx_cookie_name", "must differ from cookie_name"));
        }
        if self.client_secret.is_some() && self.client_secret_env.is_some() {
            return Err(both_secrets_set());
        }
        Ok(())
    }

    /// `base_url` without a trailing slash.
    pub fn base_url_trimmed(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }

    /// The redirect URI registered at the provider.
    pub fn redirect_uri(&self) -> String {
        format!("{}{}", self.base_url_trimmed(), crate::CALLBACK_PATH)
    }

    /// The `post_logout_redirect_uri` sent to the provider's end-session
    /// endpoint (OpenID RP-Initiated Logout 1.0 §2); it must be registered
    /// for the client at the provider.
    pub fn post_logout_redirect_uri(&self) -> String {
        format!("{}{}", self.base_url_trimmed(), crate::LOGGED_OUT_PATH)
    }

    /// Name of the short-lived cookie that binds an RP-initiated logout in
    /// progress to the browser: `{tx_cookie_name}_LOGOUT`.
    pub fn logout_cookie_name(&self) -> String {
        format!("{}_LOGOUT", self.tx_cookie_name)
    }

    /// The client secret to use: the variable named by `client_secret_env`,
    /// or `client_secret`, or with neither the demo secret. Both set is an
    /// error.
    pub fn resolve_client_secret(&self) -> Result<Option<String>, ConfigError> {
        match (&self.client_secret, &self.client_secret_env) {
            (Some(_), Some(_)) => Err(both_secrets_set()),
            (None, Some(var)) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => Ok(Some(value)),
                _ => Err(ConfigError::MissingSecretEnv(var.clone())),
            },
            (Some(secret), None) => Ok(Some(secret.clone())),
            (None, None) => Ok(Some(DEMO_CLIENT_SECRET.to_owned())),
        }
    }

    /// A copy fit for printing: the secret is replaced by `[redacted]`.
    pub fn redacted(&self) -> Config {
        Config {
            client_secret: self.client_secret.as_ref().map(|_| "[redacted]".to_owned()),
            ..self.clone()
        }
    }
}

fn both_secrets_set() -> ConfigError {
    invalid(
        "client_secret",
        "client_secret and client_secret_env are both set: keep one (prefer client_secret_env)",
    )
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

fn check_http_url(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let url =
        Url::parse(value).map_err(|e| invalid(key, format!("`{value}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(key, format!("`{value}` must be an http(s) URL")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            key,
            format!("`{value}` must not have a query or fragment"),
        ));
    }
    if url.host_str().is_none() {
        return Err(invalid(key, format!("`{value}` has no host")));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic
mod tests {
    use super::*;
    use std::io::Write as _;

    fn temp_toml(name: &str, contents: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "test-app-config-{}-{}-{name}.toml",
            std::process::id(),
            crate::store::random_id()
        ));
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        path
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        // No env layer: tests run in parallel and must not see each other's variables.
        Config::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::file_exact(path)),
        )
    }

    #[test]
    fn defaults_are_the_seed_values() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.base_url, "http://127.0.0.1:8080");
        assert_eq!(c.issuer, "http://127.0.0.1:9000");
        assert_eq!(c.client_id, "test-app");
        assert_eq!(c.client_secret, None);
        assert_eq!(
            c.resolve_client_secret().unwrap().as_deref(),
            Some("test-app-secret")
        );
        assert_eq!(c.scopes, ["openid", "profile", "email"]);
        assert_eq!(c.cookie_name, "TEST_APP_SESSION");
        assert_eq!(c.tx_cookie_name, "TEST_APP_TX");
        assert_eq!(
            c.redirect_uri(),
            "http://127.0.0.1:8080/login/oauth2/code/auth-adapter"
        );
        assert_eq!(
            c.post_logout_redirect_uri(),
            "http://127.0.0.1:8080/logged-out"
        );
        assert_eq!(c.logout_cookie_name(), "TEST_APP_TX_LOGOUT");
        c.validate().unwrap();
    }

    #[test]
    fn file_overrides_defaults() {
        let path = temp_toml(
            "ok",
            "issuer = \"http://127.0.0.1:9100\"\nbase_url = \"http://localhost:8081/\"\nscopes = [\"openid\"]\n",
        );
        let c = from_file(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(c.issuer, "http://127.0.0.1:9100");
        assert_eq!(c.scopes, ["openid"]);
        assert_eq!(
            c.redirect_uri(),
            "http://localhost:8081/login/oauth2/code/auth-adapter"
        );
        assert_eq!(c.client_id, "test-app", "untouched keys keep defaults");
    }

    #[test]
    fn unknown_key_names_the_key_and_the_file() {
        let path = temp_toml(
            "unknown",
            "issuer = \"http://127.0.0.1:9000\"\nclient_sekret = \"x\"\n",
        );
        let err = from_file(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(err.contains("client_sekret"), "{err}");
        assert!(
            err.contains(path.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
    }

    #[test]
    fn malformed_value_names_the_key_and_the_file() {
        let path = temp_toml("malformed", "listen = \"not an address\"\n");
        let err = from_file(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(err.contains("listen"), "{err}");
        assert!(
            err.contains(path.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let path = std::env::temp_dir().join("test-app-config-does-not-exist.toml");
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("does-not-exist"), "{err}");
    }

    #[test]
    fn bad_urls_are_rejected_with_the_key() {
        let path = temp_toml("badurl", "issuer = \"ftp://example.com\"\n");
        let err = from_file(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(err.contains("`issuer`"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_unknown_env_key_is_named() {
        // A prefix of its own, so no other test sees these variables.
        let prefix = "TEST_APP_UNIT_ENV__";
        let path = temp_toml(
            "env",
            "client_id = \"from-file\"\nissuer = \"http://127.0.0.1:9100\"\n",
        );
        std::env::set_var("TEST_APP_UNIT_ENV__CLIENT_ID", "from-env");
        let c = Config::from_figment(Config::figment_with_env_prefix(Some(&path), prefix)).unwrap();
        assert_eq!(c.client_id, "from-env");
        assert_eq!(c.issuer, "http://127.0.0.1:9100");

        std::env::set_var("TEST_APP_UNIT_ENV__NO_SUCH_KEY", "1");
        let err = Config::from_figment(Config::figment_with_env_prefix(Some(&path), prefix))
            .unwrap_err()
            .to_string();
        std::env::remove_var("TEST_APP_UNIT_ENV__CLIENT_ID");
        std::env::remove_var("TEST_APP_UNIT_ENV__NO_SUCH_KEY");
        std::fs::remove_file(&path).ok();
        // figment names the variable as prefix + key.
        assert!(err.contains("no_such_key"), "{err}");
        assert!(err.contains("NO_SUCH_KEY"), "{err}");
        assert!(err.contains("TEST_APP_UNIT_ENV__"), "{err}");
    }

    #[test]
    fn debug_and_redacted_hide_the_secret() {
        let c = Config {
            client_secret: Some("inline-secret-value".into()),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("inline-secret-value"));
        assert_eq!(c.redacted().client_secret.as_deref(), Some("[redacted]"));
    }

    #[test]
    fn inline_secret_and_secret_env_together_are_refused() {
        let c = Config {
            client_secret: Some("inline".into()),
            client_secret_env: Some("PATH".into()),
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid configuration: key `client_secret`: client_secret and client_secret_env \
             are both set: keep one (prefer client_secret_env)"
        );
        assert_eq!(c.resolve_client_secret().unwrap_err().to_string(), err);
        // The same from a file: the env variable name does not hide the inline secret.
        let path = temp_toml(
            "both",
            "client_secret = \"inline\"\nclient_secret_env = \"PATH\"\n",
        );
        let err = from_file(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(err.contains("`client_secret`"), "{err}");
    }

    #[test]
    fn secret_env_is_used_and_must_exist() {
        let c = Config {
            client_secret_env: Some("TEST_APP_UNIT_TEST_SURELY_UNSET_VAR".into()),
            ..Config::default()
        };
        assert!(matches!(
            c.resolve_client_secret(),
            Err(ConfigError::MissingSecretEnv(_))
        ));
        // PATH is always set; it stands in for a secret here.
        let c = Config {
            client_secret_env: Some("PATH".into()),
            ..Config::default()
        };
        assert_eq!(
            c.resolve_client_secret().unwrap(),
            std::env::var("PATH").ok()
        );
    }
}
