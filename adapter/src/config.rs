//! Configuration: defaults, then a TOML file, then environment overrides.
//!
//! Every struct denies unknown fields, so a typo in the file or in an
//! `AUTH_ADAPTER__SECTION__KEY` variable stops start-up with a message that
//! names the key and where it came from. Values serde cannot check are
//! checked by [`Config::validate`], which both `serve` and `config check` run.
//!
//! Secrets can be given inline (demo only), or indirectly with `*_env` (the
//! name of an environment variable), never both. Inline secrets are held in
//! [`Secret`], whose `Debug` and `Serialize` print `<redacted>`.

use std::cell::Cell;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keys::KeysConfig;

/// Default prefix of environment overrides: `AUTH_ADAPTER__SERVER__LISTEN=...`.
pub const ENV_PREFIX: &str = "AUTH_ADAPTER__";

/// Default `server.listen`.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9000));

/// The issuer when `server.issuer` is not set; allowed only with [`DEFAULT_LISTEN`].
pub const DEFAULT_ISSUER: &str = "http://127.0.0.1:9000";

/// Longest accepted `session.ttl_seconds`: 30 days. A browser session that
/// outlives a month is a forgotten one; re-authentication is cheap.
pub const MAX_SESSION_TTL_SECONDS: i64 = 30 * 24 * 3600;

/// What [`Secret`]s serialize to, and what `config check` prints for them.
pub const REDACTED: &str = "<redacted>";

/// The whole configuration of one provider instance.
///
/// `Serialize` exists for figment's defaults layer; secrets serialize as
/// `<redacted>` (see [`Secret`]), and [`Config::redacted`] also hides a
/// password in `database.url`.
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
    /// Local accounts in the store: registration, policies, second factors.
    pub accounts: AccountsConfig,
    /// Outgoing mail (one-time codes): the SMTP server and the sender.
    pub mail: MailConfig,
    /// Password hashing: how many argon2id computations run and wait.
    pub passwords: PasswordsConfig,
    /// Per-IP quotas of the attempt endpoints (the per-account throttle
    /// follows a fixed policy, see [`crate::ratelimit`]).
    pub rate_limits: RateLimitsConfig,
    /// Passkeys (WebAuthn) of local accounts; off unless `rp_id` is set.
    pub passkeys: PasskeysConfig,
}

/// `[passkeys]`: the WebAuthn Relying Party of the local accounts. Off
/// unless `rp_id` is set; then `rp_origin` is required.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PasskeysConfig {
    /// The RP ID (WebAuthn L2 §5.1.2): a domain name such as `example.org`
    /// or `localhost`, never an IP address (browsers refuse those).
    pub rp_id: Option<String>,
    /// The exact origin the browser shows, e.g. `https://login.example.org`
    /// (its host is the RP ID or one of its subdomains).
    pub rp_origin: Option<String>,
    /// The name authenticators show; default: the UI title.
    pub rp_name: Option<String>,
    /// Lifetime of a registration or login challenge, seconds.
    pub challenge_ttl_seconds: i64,
    /// What registration asks of the authenticator about a discoverable
    /// credential (WebAuthn L2 §5.4.6 `residentKey`). `preferred` (the
    /// default) makes passkeys that usernameless login can find, where the
    /// authenticator can store one; `discouraged` keeps security keys' slots.
    pub resident_key: ResidentKey,
}

/// WebAuthn L2 §5.4.6 `ResidentKeyRequirement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidentKey {
    Discouraged,
    Preferred,
    Required,
}

impl ResidentKey {
    /// The value in the creation options.
    pub fn as_str(self) -> &'static str {
        match self {
            ResidentKey::Discouraged => "discouraged",
            ResidentKey::Preferred => "preferred",
            ResidentKey::Required => "required",
        }
    }
}

impl Default for PasskeysConfig {
    fn default() -> Self {
        PasskeysConfig {
            rp_id: None,
            rp_origin: None,
            rp_name: None,
            challenge_ttl_seconds: 300,
            resident_key: ResidentKey::Preferred,
        }
    }
}

impl PasskeysConfig {
    /// True when passkeys are configured.
    pub fn enabled(&self) -> bool {
        self.rp_id.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let Some(rp_id) = &self.rp_id else {
            if self.rp_origin.is_some() {
                return Err(ConfigError::new(
                    "passkeys.rp_id",
                    "is required when passkeys.rp_origin is set",
                ));
            }
            return Ok(());
        };
        // WebAuthn L2 §5.1.2: the RP ID is a valid domain string; browsers
        // answer an IP address with a SecurityError.
        if rp_id
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok()
        {
            return Err(ConfigError::new(
                "passkeys.rp_id",
                format!("`{rp_id}` is an IP address; browsers refuse IP addresses as WebAuthn RP IDs: use a domain name (`localhost` on a developer's machine)"),
            ));
        }
        if rp_id.is_empty()
            || rp_id != &rp_id.to_ascii_lowercase()
            || !rp_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(ConfigError::new(
                "passkeys.rp_id",
                "must be a lower-case domain name such as `example.org` or `localhost`",
            ));
        }
        let Some(origin) = &self.rp_origin else {
            return Err(ConfigError::new(
                "passkeys.rp_origin",
                "is required when passkeys.rp_id is set, e.g. `https://login.example.org`",
            ));
        };
        let url = url::Url::parse(origin).map_err(|e| {
            ConfigError::new(
                "passkeys.rp_origin",
                format!("`{origin}` is not a URL: {e}"),
            )
        })?;
        let host_ok = match url.host() {
            Some(url::Host::Domain(d)) => d == rp_id || d.ends_with(&format!(".{rp_id}")),
            _ => false,
        };
        if !matches!(url.scheme(), "https" | "http") || !host_ok || url.path() != "/" {
            return Err(ConfigError::new(
                "passkeys.rp_origin",
                format!("`{origin}` must be an http(s) origin whose host is `{rp_id}` or one of its subdomains"),
            ));
        }
        if !(30..=3600).contains(&self.challenge_ttl_seconds) {
            return Err(ConfigError::new(
                "passkeys.challenge_ttl_seconds",
                "must be from 30 to 3600",
            ));
        }
        Ok(())
    }
}

/// How local accounts log in, for a deployment or one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginPolicy {
    /// A password (two factors once the user enrolled TOTP).
    Password,
    /// A password and a TOTP code, always.
    PasswordTotp,
    /// A one-time code sent by e-mail, no password.
    EmailCode,
    /// A passkey only (WebAuthn L2), username-first or usernameless.
    Passkey,
    /// A password, then a passkey as the second factor.
    PasswordPasskey,
}

impl LoginPolicy {
    /// The name used in config and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginPolicy::Password => "password",
            LoginPolicy::PasswordTotp => "password_totp",
            LoginPolicy::EmailCode => "email_code",
            LoginPolicy::Passkey => "passkey",
            LoginPolicy::PasswordPasskey => "password_passkey",
        }
    }

    /// The policy named `name` (see [`Self::as_str`]).
    pub fn parse(name: &str) -> Option<LoginPolicy> {
        [
            LoginPolicy::Password,
            LoginPolicy::PasswordTotp,
            LoginPolicy::EmailCode,
            LoginPolicy::Passkey,
            LoginPolicy::PasswordPasskey,
        ]
        .into_iter()
        .find(|p| p.as_str() == name)
    }

    /// True when the policy needs a passkey.
    pub fn needs_passkey(self) -> bool {
        matches!(self, LoginPolicy::Passkey | LoginPolicy::PasswordPasskey)
    }
}

/// `[accounts]`: local accounts kept in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// Offer the local-accounts connector even when `local_users` is empty
    /// (accounts made by registration or `users add`).
    pub enabled: bool,
    /// Self-service registration (`/register`).
    pub registration: bool,
    /// Shortest password accepted, in characters (at least 8; no
    /// composition rules, OWASP ASVS 5.0 V6.2).
    pub min_password_length: usize,
    /// The deployment's login policy; a user's own policy overrides it.
    pub policy: LoginPolicy,
    /// Log-in by a code sent by e-mail as a second way in (besides the
    /// policy `email_code`, which makes it the only one).
    pub email_codes: bool,
    /// Lifetime of a session made by `init2` (privileged), seconds.
    pub privileged_session_seconds: i64,
    /// How long an abandoned authentication (API or form) lives, seconds.
    pub flow_ttl_seconds: i64,
    /// E-mail domains whose users log in with the local accounts: an
    /// authorization request with `login_hint=user@<domain>` skips the
    /// connector chooser (README "Several upstreams").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub email_domains: Vec<String>,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            enabled: false,
            registration: false,
            min_password_length: 8,
            policy: LoginPolicy::Password,
            email_codes: false,
            privileged_session_seconds: 300,
            flow_ttl_seconds: 600,
            email_domains: Vec::new(),
        }
    }
}

/// `[rate_limits]`: per-IP quotas, one per attempt kind, each a burst and
/// a steady rate (GCRA: one more attempt every `60 / per_minute` seconds,
/// at most `burst` at once).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Off only for load tests: both the per-IP quotas and the per-account
    /// throttle. Default true.
    pub enabled: bool,
    /// Password submissions.
    pub login: IpQuotaConfig,
    /// Account registrations.
    pub register: IpQuotaConfig,
    /// E-mailed one-time codes entered.
    pub verify_code: IpQuotaConfig,
    /// TOTP (and recovery) codes entered.
    pub verify_totp: IpQuotaConfig,
}

/// One per-IP quota.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IpQuotaConfig {
    /// Attempts allowed at once.
    pub burst: u32,
    /// Attempts regained per minute.
    pub per_minute: u32,
}

/// Largest `burst` and `per_minute` of a quota.
pub const MAX_QUOTA: u32 = 100_000;

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            enabled: true,
            login: IpQuotaConfig {
                burst: 20,
                per_minute: 20,
            },
            register: IpQuotaConfig {
                burst: 5,
                per_minute: 5,
            },
            verify_code: IpQuotaConfig {
                burst: 10,
                per_minute: 10,
            },
            verify_totp: IpQuotaConfig {
                burst: 10,
                per_minute: 10,
            },
        }
    }
}

impl AccountsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(8..=128).contains(&self.min_password_length) {
            return Err(ConfigError::new(
                "accounts.min_password_length",
                "must be from 8 to 128",
            ));
        }
        if !(30..=3600).contains(&self.privileged_session_seconds) {
            return Err(ConfigError::new(
                "accounts.privileged_session_seconds",
                "must be from 30 to 3600",
            ));
        }
        if !(60..=3600).contains(&self.flow_ttl_seconds) {
            return Err(ConfigError::new(
                "accounts.flow_ttl_seconds",
                "must be from 60 to 3600",
            ));
        }
        Ok(())
    }
}

/// `[passwords]`: bounds of argon2id hashing (each computation takes
/// 19 MiB and a core for tens of milliseconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordsConfig {
    /// Hashes computed at the same time; default: half the CPUs, at least 1.
    pub max_concurrent_hashes: usize,
    /// Further password checks allowed to wait for a turn; beyond them a
    /// check is refused at once (`temporarily_unavailable`), so a login
    /// flood cannot grow memory. Default 64.
    pub max_waiting_hashes: usize,
}

/// Most `passwords.max_concurrent_hashes` (19 MiB each: 1 GiB at 54).
pub const MAX_CONCURRENT_HASHES: usize = 256;
/// Most `passwords.max_waiting_hashes`.
pub const MAX_WAITING_HASHES: usize = 100_000;

impl Default for PasswordsConfig {
    fn default() -> Self {
        PasswordsConfig {
            // Half the cores (at least one): under a login flood the other
            // half keeps serving tokens, userinfo and JWKS.
            max_concurrent_hashes: (std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                / 2)
            .max(1),
            max_waiting_hashes: 64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// The issuer identifier, byte-equal to `iss` in every token and to
    /// `issuer` in discovery (OIDC Discovery §3): an http(s) URL of a host
    /// root, no path, no trailing slash. Unset means [`DEFAULT_ISSUER`], which
    /// is allowed only while `listen` is [`DEFAULT_LISTEN`]; read it with
    /// [`ServerConfig::issuer`].
    pub issuer: Option<String>,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
    /// On shutdown, how long `/healthz/ready` answers 503 while requests
    /// are still served, so load balancers stop sending new ones before the
    /// listener closes and in-flight requests drain. At most
    /// [`MAX_SHUTDOWN_GRACE_SECONDS`].
    pub shutdown_grace_seconds: u64,
    /// Reverse proxies (IP addresses or CIDR blocks, e.g. `10.0.0.0/8`)
    /// whose `X-Forwarded-For` is believed: the client is the rightmost
    /// address in it that is not one of these. From any other peer the
    /// header is ignored (it is the client's to forge). Empty by default.
    pub trusted_proxies: Vec<String>,
}

/// Upper bound of `server.shutdown_grace_seconds`.
pub const MAX_SHUTDOWN_GRACE_SECONDS: u64 = 300;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN,
            issuer: None,
            log_format: LogFormat::Text,
            shutdown_grace_seconds: 5,
            trusted_proxies: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// The effective issuer: `issuer`, or [`DEFAULT_ISSUER`] when unset
    /// ([`Config::validate`] refuses an unset issuer with another `listen`).
    pub fn issuer(&self) -> &str {
        self.issuer.as_deref().unwrap_or(DEFAULT_ISSUER)
    }
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json`, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` (default, embedded) or `postgres://...`.
    /// A password in it is printed as `<redacted>` (see [`redact_url`]).
    pub url: String,
    /// Size of the connection pool; at least 1.
    pub max_connections: u32,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
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
    /// Name of the browser session cookie, an RFC 6265 §4.1.1 token.
    /// Distinct per service: browsers share cookies between ports of one host.
    pub cookie_name: String,
    /// Name of the cookie that binds a login transaction to the browser; an
    /// RFC 6265 §4.1.1 token other than `cookie_name`.
    pub transaction_cookie_name: String,
    /// Absolute session lifetime in seconds: from 1 to
    /// [`MAX_SESSION_TTL_SECONDS`] (30 days).
    pub ttl_seconds: i64,
    /// `Secure` cookie attribute. Unset: secure exactly when the issuer is https.
    pub secure: Option<bool>,
    /// Name of the long-lived cookie that identifies the browser (sessions
    /// are kept per device); an RFC 6265 §4.1.1 token other than the two
    /// above. Unset: `<cookie_name>_DEVICE`.
    pub device_cookie_name: Option<String>,
    /// How long the browser keeps the session cookie.
    pub cookie_lifetime: CookieLifetime,
}

/// `session.cookie_lifetime`: whether the session cookie outlives the
/// browser.
///
/// The default is `persistent`: the server decides how long a session
/// lasts (`ttl_seconds`, absolute), and the cookie then says the same
/// thing, so single sign-on and the device list mean what they show.
/// A browser-session cookie would not make logins reliably shorter
/// (browsers that restore tabs keep such cookies across restarts), only
/// unpredictable; deployments that want "ends when the browser closes"
/// on shared machines can still choose `browser`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CookieLifetime {
    /// No `Max-Age`: the cookie ends with the browser session (or with the
    /// server session, whichever comes first).
    Browser,
    /// `Max-Age` equal to the server session's remaining lifetime.
    #[default]
    Persistent,
}

impl SessionConfig {
    /// The configured device cookie name, or `<cookie_name>_DEVICE`.
    pub fn device_cookie_name(&self) -> String {
        self.device_cookie_name
            .clone()
            .unwrap_or_else(|| format!("{}_DEVICE", self.cookie_name))
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            cookie_name: "AUTH_ADAPTER_SESSION".into(),
            transaction_cookie_name: "AUTH_ADAPTER_TX".into(),
            ttl_seconds: 8 * 3600,
            secure: None,
            device_cookie_name: None,
            cookie_lifetime: CookieLifetime::Persistent,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    pub access_token_ttl_seconds: i64,
    pub id_token_ttl_seconds: i64,
    /// Authorization code lifetime; at most 60 s (RFC 6749 §4.1.2 allows 10 min).
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
    /// Broker mode: claims computed by the mapping rules (`[[claims.rules]]`,
    /// see [`crate::mapping`]).
    Mapped,
    /// Identity-provider mode: the account's own standard claims, filtered by scope.
    Passthrough,
}

/// `[claims]`: how the claims of issued tokens are made (README "Claim
/// mapping"). The old `mappings`, `default_authorities` and
/// `group_authority_prefix` keys are gone: rules say the same.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimsConfig {
    pub customizer: CustomizerKind,
    /// Mapping rules, applied in order (a later rule for the same claim
    /// wins); each upstream's and then each client's rules follow.
    pub rules: Vec<ClaimRule>,
    /// Upstream claim holding the user's group names (for `allow_groups`).
    pub groups_claim: String,
    /// When not empty, only users in at least one of these groups log in
    /// (the client gets `access_denied`, RFC 6749 §4.1.2.1).
    pub allow_groups: Vec<String>,
    /// Size budget of each token's mapped claims.
    pub max_bytes: ClaimsBudget,
}

/// One `[[claims.rules]]` entry: `claim` gets the value of the CEL
/// expression `expr` in the tokens listed, when `when` (a CEL condition)
/// holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimRule {
    /// The claim set; `{upstream}` stands for the upstream's id with `-`
    /// and `.` as `_` (`{upstream}_sub` → `corp_sub`).
    pub claim: String,
    /// A CEL expression; `null` (or reading a claim the upstream did not
    /// send) sets nothing and removes what an earlier rule set.
    pub expr: String,
    /// The tokens the claim goes into (default: all three).
    #[serde(default = "all_token_kinds")]
    pub tokens: Vec<TokenName>,
    /// A CEL condition; the rule applies only when it is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// A token kind as the rules name it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TokenName {
    /// The ID token (OIDC Core §2).
    Id,
    /// The access token (RFC 9068).
    Access,
    /// The UserInfo response (OIDC Core §5.3).
    Userinfo,
}

impl TokenName {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenName::Id => "id",
            TokenName::Access => "access",
            TokenName::Userinfo => "userinfo",
        }
    }
}

fn all_token_kinds() -> Vec<TokenName> {
    vec![TokenName::Id, TokenName::Access, TokenName::Userinfo]
}

/// `[claims.max_bytes]`: the most bytes the mapped claims of each token may
/// take, as compact JSON (the protocol claims and the signature come on
/// top). Over budget, the login fails with `server_error`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimsBudget {
    pub id: usize,
    pub access: usize,
    pub userinfo: usize,
}

impl Default for ClaimsBudget {
    fn default() -> Self {
        // Tokens travel in headers and cookies, which servers cap at 8 KiB
        // or so; userinfo is a response body.
        ClaimsBudget {
            id: 4096,
            access: 4096,
            userinfo: 16384,
        }
    }
}

impl ClaimsBudget {
    pub fn of(&self, token: TokenName) -> usize {
        match token {
            TokenName::Id => self.id,
            TokenName::Access => self.access,
            TokenName::Userinfo => self.userinfo,
        }
    }
}

/// The shipped mapping (the demo chain's tokens): `{upstream}_sub`, the
/// profile and e-mail claims copied, and `authorities` of `ROLE_USER`, the
/// upstream's own `authorities` (an upstream that is itself an adapter
/// keeps its roles in a chain of brokers) and one `ROLE_<GROUP>` per
/// upstream group. `config/adapter.toml` writes it out.
pub fn default_claim_rules() -> Vec<ClaimRule> {
    let rule = |claim: &str, expr: &str| ClaimRule {
        claim: claim.into(),
        expr: expr.into(),
        tokens: all_token_kinds(),
        when: None,
    };
    vec![
        rule("{upstream}_sub", "subject"),
        rule("preferred_username", "upstream.preferred_username"),
        rule("name", "upstream.name"),
        rule("email", "upstream.email"),
        rule("email_verified", "upstream.email_verified"),
        rule(
            "authorities",
            "(['ROLE_USER'] + upstream.?authorities.orValue([]) + upstream.?groups.orValue([]).map(g, 'ROLE_' + g.constantCase())).distinct()",
        ),
    ]
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        ClaimsConfig {
            customizer: CustomizerKind::Mapped,
            rules: default_claim_rules(),
            groups_claim: "groups".into(),
            allow_groups: Vec::new(),
            max_bytes: ClaimsBudget::default(),
        }
    }
}

/// `[upstreams.claims]`: rules and a login gate for the users of one upstream.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamClaims {
    /// Applied after `[[claims.rules]]`.
    pub rules: Vec<ClaimRule>,
    /// This upstream's claim of group names (default: `claims.groups_claim`).
    pub groups_claim: Option<String>,
    /// Users of this upstream must be in at least one of these groups.
    pub allow_groups: Vec<String>,
}

impl UpstreamClaims {
    pub fn is_empty(&self) -> bool {
        *self == UpstreamClaims::default()
    }
}

/// `[clients.claims]`: rules and a login gate for one relying party.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientClaims {
    /// Applied last, after the global and the upstream's rules.
    pub rules: Vec<ClaimRule>,
    /// Only users in at least one of these groups log in to this client.
    pub allow_groups: Vec<String>,
}

impl ClientClaims {
    pub fn is_empty(&self) -> bool {
        *self == ClientClaims::default()
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
    pub secret: Option<Secret>,
    /// Name of an environment variable holding the client secret (not
    /// together with `secret`).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Exact redirect URIs (no wildcards, RFC 9700 §2.1).
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
    /// Claim rules and a login gate of this client (README "Claim mapping").
    #[serde(default, skip_serializing_if = "ClientClaims::is_empty")]
    pub claims: ClientClaims,
    /// The connectors (upstream ids, `local`) this client's users may log
    /// in with; absent: all of them. Enforced at `/oauth2/authorize` (the
    /// chooser, single sign-on) and at the token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<String>>,
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
    /// The OpenID Provider's issuer (OIDC Discovery §4); required for
    /// `kind = "oidc"`, unused for `kind = "oauth2"`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    pub client_id: String,
    /// Client secret inline (demo only; prefer `client_secret_env`).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Name of an environment variable holding the client secret (not
    /// together with `client_secret`).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default = "default_upstream_scopes")]
    pub scopes: Vec<String>,
    /// When the upstream's userinfo is fetched and merged into the identity
    /// (OIDC Core §5.3): `auto` (default) when the ID token lacks a claim
    /// the claim rules read, `always`, or `never`.
    #[serde(default)]
    pub userinfo: UserinfoPolicy,
    /// How the adapter's `sub` is made from this upstream's subject.
    #[serde(default)]
    pub subject: SubjectStrategy,
    /// With two or more upstreams, `subject = "upstream"` is refused at
    /// start-up (two users could get one `sub`) unless this is set: the
    /// upstreams share one user base on purpose.
    #[serde(default)]
    pub allow_shared_subjects: bool,
    /// Claim rules and a login gate of this upstream's users.
    #[serde(default, skip_serializing_if = "UpstreamClaims::is_empty")]
    pub claims: UpstreamClaims,
    /// E-mail domains of this upstream's users: an authorization request
    /// with `login_hint=user@<domain>` goes straight to this upstream
    /// (exact domain, case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email_domains: Vec<String>,
    /// What an adapter refresh does with the claims of this upstream's
    /// users: `keep` (default) the ones of the login, or `refresh_upstream`:
    /// ask the upstream again with its refresh token (RFC 6749 §6).
    #[serde(default)]
    pub on_refresh: OnRefresh,
    /// With `refresh_upstream`: claims younger than this many seconds are
    /// kept as they are; 0 (default) asks the upstream at every refresh.
    #[serde(default)]
    pub max_claim_age_seconds: i64,
    /// The most seconds any request to this upstream may take (discovery,
    /// JWKS, token, userinfo, revocation; connecting at most 5 of them):
    /// 1 to 120, default 15.
    #[serde(default = "default_upstream_timeout")]
    pub timeout_seconds: u64,
    /// `oidc` (default: discovery and a verified ID token) or `oauth2`
    /// (plain OAuth 2.0 with a userinfo endpoint, GitHub-style).
    #[serde(default)]
    pub kind: UpstreamKind,
    /// `kind = "oauth2"`: the authorization endpoint (RFC 6749 §3.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    /// `kind = "oauth2"`: the token endpoint (RFC 6749 §3.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    /// `kind = "oauth2"`: where the access token buys the user's profile
    /// (a JSON object: the identity's claims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userinfo_endpoint: Option<String>,
    /// `kind = "oauth2"`: the userinfo member holding the user's stable id
    /// (a string or a number), the identity's subject.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// `kind = "oauth2"`: how the client authenticates at the token
    /// endpoint (RFC 6749 §2.3.1): `client_secret_post` (default) or
    /// `client_secret_basic`.
    #[serde(default)]
    pub token_endpoint_auth_method: TokenEndpointAuth,
}

impl UpstreamConfig {
    /// An OpenID Provider upstream with every optional key at its default
    /// (as if only `id`, `issuer` and `client_id` were in the file).
    pub fn oidc(id: &str, issuer: &str, client_id: &str) -> UpstreamConfig {
        UpstreamConfig {
            id: id.into(),
            name: None,
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: None,
            client_secret_env: None,
            scopes: default_upstream_scopes(),
            userinfo: UserinfoPolicy::default(),
            subject: SubjectStrategy::default(),
            allow_shared_subjects: false,
            claims: UpstreamClaims::default(),
            email_domains: Vec::new(),
            on_refresh: OnRefresh::default(),
            max_claim_age_seconds: 0,
            timeout_seconds: default_upstream_timeout(),
            kind: UpstreamKind::default(),
            authorization_endpoint: None,
            token_endpoint: None,
            userinfo_endpoint: None,
            subject_claim: default_subject_claim(),
            token_endpoint_auth_method: TokenEndpointAuth::default(),
        }
    }
}

/// When an OIDC upstream's userinfo is fetched at login.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UserinfoPolicy {
    /// When the ID token lacks a claim that a claim rule reads (some
    /// upstreams put only `sub` into their ID tokens).
    #[default]
    Auto,
    Always,
    Never,
}

/// What an adapter refresh does with an upstream's claims.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnRefresh {
    /// The claims of the login, for the lifetime of the grant.
    #[default]
    Keep,
    /// Fresh claims from the upstream's refresh-token grant; when the
    /// upstream refuses it (the user is gone, the grant revoked), the
    /// adapter's refresh fails with `invalid_grant` and the session ends.
    RefreshUpstream,
}

/// The protocol of an upstream.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// An OpenID Provider ([`crate::connector::oidc`]).
    #[default]
    Oidc,
    /// A plain OAuth 2.0 authorization server with a userinfo endpoint
    /// ([`crate::connector::oauth2`]).
    Oauth2,
}

/// Client authentication at an OAuth 2.0 upstream's token endpoint
/// (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuth {
    /// `client_id` and `client_secret` in the form body (what GitHub expects).
    #[default]
    ClientSecretPost,
    /// HTTP Basic with the form-urlencoded id and secret.
    ClientSecretBasic,
}

fn default_upstream_timeout() -> u64 {
    15
}

fn default_subject_claim() -> String {
    "id".into()
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
    pub password: Option<Secret>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Outgoing mail. Without `smtp_host` no mail leaves the process: mails
/// stay in the outbox and `GET /dev/outbox` shows them (development only).
///
/// The password is read from an environment variable (`smtp_password_env`)
/// or a file (`smtp_password_file`, e.g. a mounted secret), never inline.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// The `From` address (RFC 5322 §3.4: `addr@host` or
    /// `Name <addr@host>`); required with `smtp_host`.
    pub from: Option<String>,
    /// The SMTP server (submission host). Unset: nothing is sent.
    pub smtp_host: Option<String>,
    /// Its port; unset: 25 with `smtp_tls = "none"`, 587 with `starttls`,
    /// 465 with `tls`.
    pub smtp_port: Option<u16>,
    /// Transport security: `none`, `starttls` (default) or `tls`.
    pub smtp_tls: SmtpTls,
    /// User name for SMTP AUTH (RFC 4954); needs a password and TLS.
    pub smtp_username: Option<String>,
    /// Name of an environment variable holding the SMTP password.
    pub smtp_password_env: Option<String>,
    /// Path of a file holding the SMTP password (trailing newline ignored).
    pub smtp_password_file: Option<PathBuf>,
}

/// Transport security of the SMTP connection.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (a relay on the same host or network only).
    None,
    /// RFC 3207: plain connection upgraded with STARTTLS, which is required.
    #[default]
    Starttls,
    /// RFC 8314 §3.3: TLS from the first byte (implicit TLS).
    Tls,
}

impl SmtpTls {
    /// `none`, `starttls` or `tls`, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::None => "none",
            SmtpTls::Starttls => "starttls",
            SmtpTls::Tls => "tls",
        }
    }

    /// The usual port of this mode (RFC 5321 §4.5.4, RFC 6409 §3.1, RFC 8314 §7.3).
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

impl MailConfig {
    /// The effective SMTP port.
    pub fn port(&self) -> u16 {
        self.smtp_port.unwrap_or(self.smtp_tls.default_port())
    }

    /// The SMTP password from `smtp_password_env` or `smtp_password_file`
    /// (not both); `None` when neither is set. Errors name the key.
    pub fn smtp_password(&self) -> Result<Option<Secret>, ConfigError> {
        match (&self.smtp_password_env, &self.smtp_password_file) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "mail.smtp_password_env",
                "mail.smtp_password_env and mail.smtp_password_file are both set: set one",
            )),
            (Some(var), None) => std::env::var(var)
                .map(|v| Some(Secret::from(v)))
                .map_err(|_| {
                    ConfigError::new(
                        "mail.smtp_password_env",
                        format!("environment variable {var} is not set"),
                    )
                }),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|v| Some(Secret::from(v.trim_end_matches(['\r', '\n']))))
                .map_err(|e| {
                    ConfigError::new(
                        "mail.smtp_password_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                }),
            (None, None) => Ok(None),
        }
    }
}

thread_local! {
    /// Set while [`load_from`] turns the defaults into figment values, the
    /// only serialization that must carry the real secrets.
    static EXPOSE_SECRETS: Cell<bool> = const { Cell::new(false) };
}

/// A secret from the configuration (client secret, upstream client secret,
/// demo password). `Debug` and `Serialize` write `<redacted>`, so neither a
/// derived `Debug` of a configuration nor `config check` can print it; the
/// value is read only through [`Secret::expose`] and is zeroized on drop.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The secret itself: hash it or hand it to the code that sends it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    fn redacted() -> Self {
        Secret::new(REDACTED)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        crate::secret::ct_eq(self.expose(), other.expose())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if EXPOSE_SECRETS.with(Cell::get) {
            serializer.serialize_str(self.expose())
        } else {
            serializer.serialize_str(REDACTED)
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::from)
    }
}

/// Serializes `value` into a figment value with the real secrets: the
/// defaults of a binary may carry demo credentials that must survive loading.
fn to_figment_value<T: Serialize>(value: &T) -> Result<figment::value::Value, Box<figment::Error>> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            EXPOSE_SECRETS.with(|e| e.set(false));
        }
    }
    EXPOSE_SECRETS.with(|e| e.set(true));
    let _reset = Reset;
    figment::value::Value::serialize(value).map_err(Box::new)
}

/// A secret given inline or through `<key>_env` (the name of an environment
/// variable), not both. Errors name the key.
pub fn resolve_secret(
    inline: &Option<Secret>,
    env: &Option<String>,
    key: &str,
) -> Result<Option<Secret>, String> {
    match (inline, env) {
        (Some(_), Some(_)) => Err(format!("{key}: {}", both_set(key))),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(var)) => std::env::var(var)
            .map(|v| Some(Secret::from(v)))
            .map_err(|_| format!("{key}_env: environment variable {var} is not set")),
        (None, None) => Ok(None),
    }
}

/// The message of a secret given both inline and through `<key>_env`.
fn both_set(key: &str) -> String {
    format!("both {key} and {key}_env are set: keep one (prefer {key}_env)")
}

/// `url` with its password (userinfo or a `password` query parameter)
/// replaced by `<redacted>`, fit for printing and error messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let start = scheme_end + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let mut out = url[..start].to_owned();
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let rest = &url[end..];
    match rest.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                        format!("{k}={REDACTED}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
        None => out.push_str(rest),
    }
    out
}

/// Loads `defaults <- file <- environment`. Errors name the file and key.
/// Values are not validated: call [`Config::validate`].
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
    let defaults = to_figment_value(&defaults)?;
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::prefixed(env_prefix).split("__"))
        .extract()
        .map_err(Box::new)
}

/// A configuration value that cannot work; the message starts with its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The offending key, e.g. `session.ttl_seconds` or `clients[app].secret`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// RFC 6265 §4.1.1: `cookie-name = token`, and RFC 2616 §2.2: a token is one
/// or more US-ASCII characters other than controls and separators.
fn is_cookie_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && !b"()<>@,;:\\\"/[]?={} \t".contains(&b))
}

impl Config {
    /// Checks what serde cannot: every rule here stops start-up (`serve`)
    /// and `config check` with one line naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_database()?;
        self.validate_session()?;
        self.validate_lifetimes()?;
        self.validate_clients()?;
        self.validate_upstreams()?;
        self.validate_components()?;
        self.accounts.validate()?;
        self.validate_mail()?;
        self.validate_email_login()?;
        self.validate_passwords()?;
        self.validate_rate_limits()?;
        self.passkeys.validate()?;
        self.validate_passkey_policy()?;
        self.validate_routes()?;
        Ok(())
    }

    /// A policy that needs a passkey needs a Relying Party to check one.
    fn validate_passkey_policy(&self) -> Result<(), ConfigError> {
        if self.accounts.policy.needs_passkey() && !self.passkeys.enabled() {
            return Err(ConfigError::new(
                "accounts.policy",
                "the policies `passkey` and `password_passkey` need [passkeys] \
                 (rp_id and rp_origin)",
            ));
        }
        Ok(())
    }

    /// Without SMTP, codes wait on the development outbox page, which anyone
    /// who reaches the service can read: e-mail-code login is refused then,
    /// unless the issuer is plain http on a loopback address (a developer's
    /// machine).
    fn validate_email_login(&self) -> Result<(), ConfigError> {
        let codes = self.accounts.email_codes || self.accounts.policy == LoginPolicy::EmailCode;
        if !codes || self.mail.smtp_host.is_some() {
            return Ok(());
        }
        let local = url::Url::parse(self.server.issuer()).ok().is_some_and(|u| {
            u.scheme() == "http"
                && match u.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                }
        });
        if local {
            return Ok(());
        }
        let key = if self.accounts.email_codes {
            "accounts.email_codes"
        } else {
            "accounts.policy"
        };
        Err(ConfigError::new(
            key,
            "e-mail codes need mail.smtp_host: without SMTP they would wait on the \
             public development outbox page",
        ))
    }

    /// `[mail]`: a sender address with a server, credentials only in pairs
    /// and never over plain text, no server settings without a server.
    fn validate_mail(&self) -> Result<(), ConfigError> {
        let m = &self.mail;
        if let Some(from) = &m.from {
            from.parse::<lettre::message::Mailbox>().map_err(|e| {
                ConfigError::new(
                    "mail.from",
                    format!("{from:?} is not an address (addr@host or Name <addr@host>): {e}"),
                )
            })?;
        }
        let password = m.smtp_password()?;
        let Some(host) = &m.smtp_host else {
            for (key, set) in [
                ("mail.smtp_port", m.smtp_port.is_some()),
                ("mail.smtp_username", m.smtp_username.is_some()),
                ("mail.smtp_password_env", m.smtp_password_env.is_some()),
                ("mail.smtp_password_file", m.smtp_password_file.is_some()),
            ] {
                if set {
                    return Err(ConfigError::new(
                        key,
                        "is set, but mail.smtp_host is not: set the SMTP server too \
                         (without it no mail is sent)",
                    ));
                }
            }
            return Ok(());
        };
        if host.trim().is_empty() || host.contains(['/', ' ', ':']) {
            return Err(ConfigError::new(
                "mail.smtp_host",
                format!("{host:?} is not a host name or address (the port goes in mail.smtp_port)"),
            ));
        }
        if m.smtp_port == Some(0) {
            return Err(ConfigError::new("mail.smtp_port", "must not be 0"));
        }
        if m.from.is_none() {
            return Err(ConfigError::new(
                "mail.from",
                "required with mail.smtp_host: the sender address of every mail",
            ));
        }
        match (&m.smtp_username, &password) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "mail.smtp_password_env",
                    "mail.smtp_username is set without a password: set \
                     mail.smtp_password_env or mail.smtp_password_file",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "mail.smtp_username",
                    "a password is set without a user name",
                ))
            }
            (Some(_), Some(_)) if m.smtp_tls == SmtpTls::None => {
                return Err(ConfigError::new(
                    "mail.smtp_tls",
                    "\"none\" would send the SMTP password in clear: use \"starttls\" or \"tls\"",
                ))
            }
            _ => {}
        }
        self.validate_passwords()?;
        self.validate_rate_limits()?;
        Ok(())
    }

    fn validate_rate_limits(&self) -> Result<(), ConfigError> {
        let r = &self.rate_limits;
        for (scope, q) in [
            ("login", r.login),
            ("register", r.register),
            ("verify_code", r.verify_code),
            ("verify_totp", r.verify_totp),
        ] {
            for (key, value) in [("burst", q.burst), ("per_minute", q.per_minute)] {
                if !(1..=MAX_QUOTA).contains(&value) {
                    return Err(ConfigError::new(
                        format!("rate_limits.{scope}.{key}"),
                        format!("{value} must be between 1 and {MAX_QUOTA}"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_passwords(&self) -> Result<(), ConfigError> {
        let p = &self.passwords;
        if !(1..=MAX_CONCURRENT_HASHES).contains(&p.max_concurrent_hashes) {
            return Err(ConfigError::new(
                "passwords.max_concurrent_hashes",
                format!(
                    "{} must be between 1 and {MAX_CONCURRENT_HASHES}",
                    p.max_concurrent_hashes
                ),
            ));
        }
        if p.max_waiting_hashes > MAX_WAITING_HASHES {
            return Err(ConfigError::new(
                "passwords.max_waiting_hashes",
                format!(
                    "{} is more than the maximum of {MAX_WAITING_HASHES}",
                    p.max_waiting_hashes
                ),
            ));
        }
        Ok(())
    }

    /// What `serve` builds from the configuration without I/O: every
    /// client (redirect URIs, secrets, grants) and the token customizer
    /// (claim rules, subject strategies). `config check` thus refuses exactly
    /// what `serve` would.
    fn validate_components(&self) -> Result<(), ConfigError> {
        // Their messages start with the key: "clients[app].redirect_uris: …".
        let split = |m: String| match m.split_once(": ") {
            // "upstreams[corp].subject = \"upstream\": …" names the key first.
            Some((key, message)) => {
                ConfigError::new(key.split(" = ").next().unwrap_or(key), message)
            }
            None => ConfigError::new("configuration", m),
        };
        for c in &self.clients {
            crate::provider::Client::from_config(c).map_err(split)?;
        }
        crate::customizer::from_config(self).map_err(split)?;
        Ok(())
    }

    /// The issuer must be an absolute http(s) URL of a host root, without
    /// query or fragment (OIDC Discovery §3); it is set whenever `listen`
    /// is not the default.
    fn validate_server(&self) -> Result<(), ConfigError> {
        if self.server.shutdown_grace_seconds > MAX_SHUTDOWN_GRACE_SECONDS {
            return Err(ConfigError::new(
                "server.shutdown_grace_seconds",
                format!(
                    "{} is more than the maximum of {MAX_SHUTDOWN_GRACE_SECONDS}",
                    self.server.shutdown_grace_seconds
                ),
            ));
        }
        crate::ratelimit::TrustedProxies::parse(&self.server.trusted_proxies)
            .map_err(|m| ConfigError::new("server.trusted_proxies", m))?;
        let key = "server.issuer";
        let Some(issuer) = &self.server.issuer else {
            if self.server.listen != DEFAULT_LISTEN {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "not set, while server.listen = {} is not the default {DEFAULT_LISTEN}; \
                         set the URL clients use to reach this service",
                        self.server.listen
                    ),
                ));
            }
            return Ok(());
        };
        let url = url::Url::parse(issuer)
            .map_err(|e| ConfigError::new(key, format!("{issuer:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::new(
                key,
                format!("{issuer:?}: must be an http(s) URL with a host"),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::new(
                key,
                format!("{issuer:?}: must not have a query or fragment"),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::new(
                key,
                format!("{:?}: must not contain credentials", redact_url(issuer)),
            ));
        }
        if issuer.ends_with('/') {
            return Err(ConfigError::new(
                key,
                format!("{issuer:?}: remove the trailing slash"),
            ));
        }
        if url.path() != "/" {
            return Err(ConfigError::new(
                key,
                format!(
                    "{issuer:?}: a path is not supported; pages and redirects are \
                     root-relative, so serve this service at the root of its own host"
                ),
            ));
        }
        Ok(())
    }

    fn validate_database(&self) -> Result<(), ConfigError> {
        if self.database.max_connections == 0 {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_session(&self) -> Result<(), ConfigError> {
        let s = &self.session;
        if !(1..=MAX_SESSION_TTL_SECONDS).contains(&s.ttl_seconds) {
            return Err(ConfigError::new(
                "session.ttl_seconds",
                format!(
                    "{} must be between 1 and {MAX_SESSION_TTL_SECONDS} (30 days)",
                    s.ttl_seconds
                ),
            ));
        }
        let device = s.device_cookie_name();
        for (key, name) in [
            ("session.cookie_name", &s.cookie_name),
            (
                "session.transaction_cookie_name",
                &s.transaction_cookie_name,
            ),
            ("session.device_cookie_name", &device),
        ] {
            if !is_cookie_token(name) {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{name:?} is not a cookie name: use ASCII letters, digits and \
                         !#$%&'*+-.^_`|~ (RFC 6265 §4.1.1)"
                    ),
                ));
            }
        }
        if s.cookie_name == s.transaction_cookie_name {
            return Err(ConfigError::new(
                "session.transaction_cookie_name",
                format!(
                    "{:?} is also session.cookie_name; the two cookies need different names",
                    s.transaction_cookie_name
                ),
            ));
        }
        if device == s.cookie_name || device == s.transaction_cookie_name {
            return Err(ConfigError::new(
                "session.device_cookie_name",
                format!("{device:?} is also the name of the session or transaction cookie"),
            ));
        }
        if s.secure == Some(false) && self.server.issuer().starts_with("https://") {
            return Err(ConfigError::new(
                "session.secure",
                "false with an https issuer would let browsers send the session cookie \
                 over plain http; remove the key (secure follows the issuer) or set true",
            ));
        }
        Ok(())
    }

    /// Lifetimes within their bounds: codes at most 60 s (RFC 6749 §4.1.2
    /// allows up to 10 minutes; shorter narrows replay), login transactions
    /// at most 10 min, access tokens at most 15 min, ID tokens at most 1 h.
    fn validate_lifetimes(&self) -> Result<(), ConfigError> {
        let t = &self.tokens;
        for (key, value, max) in [
            ("tokens.code_ttl_seconds", t.code_ttl_seconds, 60),
            ("tokens.login_ttl_seconds", t.login_ttl_seconds, 600),
            (
                "tokens.access_token_ttl_seconds",
                t.access_token_ttl_seconds,
                900,
            ),
            ("tokens.id_token_ttl_seconds", t.id_token_ttl_seconds, 3600),
        ] {
            if !(1..=max).contains(&value) {
                return Err(ConfigError::new(
                    key,
                    format!("{value} must be between 1 and {max}"),
                ));
            }
        }
        Ok(())
    }

    fn validate_clients(&self) -> Result<(), ConfigError> {
        for (i, c) in self.clients.iter().enumerate() {
            if c.id.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("clients[{i}].id"),
                    "must not be empty",
                ));
            }
            if self.clients[..i].iter().any(|other| other.id == c.id) {
                return Err(ConfigError::new(
                    format!("clients[{}].id", c.id),
                    "appears twice; client ids must be unique",
                ));
            }
            if c.secret.is_some() && c.secret_env.is_some() {
                let key = format!("clients[{}].secret", c.id);
                return Err(ConfigError::new(key.clone(), both_set(&key)));
            }
        }
        Ok(())
    }

    fn validate_upstreams(&self) -> Result<(), ConfigError> {
        use crate::accounts::LOCAL_CONNECTOR_ID;
        for (i, up) in self.upstreams.iter().enumerate() {
            let key = format!("upstreams[{}].id", up.id);
            if !crate::connector::valid_id(&up.id) {
                return Err(ConfigError::new(
                    key,
                    "use 1 to 64 lowercase letters, digits, '-' or '_'",
                ));
            }
            if up.id == LOCAL_CONNECTOR_ID {
                return Err(ConfigError::new(
                    key,
                    format!("{LOCAL_CONNECTOR_ID:?} is reserved for local accounts"),
                ));
            }
            if self.upstreams[..i].iter().any(|other| other.id == up.id) {
                return Err(ConfigError::new(
                    key,
                    "appears twice; upstream ids must be unique",
                ));
            }
            if up.client_secret.is_some() && up.client_secret_env.is_some() {
                let key = format!("upstreams[{}].client_secret", up.id);
                return Err(ConfigError::new(key.clone(), both_set(&key)));
            }
            if !(1..=120).contains(&up.timeout_seconds) {
                return Err(ConfigError::new(
                    format!("upstreams[{}].timeout_seconds", up.id),
                    "must be 1 to 120",
                ));
            }
            if up.max_claim_age_seconds < 0 {
                return Err(ConfigError::new(
                    format!("upstreams[{}].max_claim_age_seconds", up.id),
                    "must be 0 (every refresh) or more",
                ));
            }
            validate_upstream_kind(up)?;
        }
        Ok(())
    }

    /// A copy safe to print and to keep: every inline secret replaced by
    /// `<redacted>`, a password in `database.url` too, and the effective
    /// issuer filled in.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.server.issuer = Some(self.server.issuer().to_owned());
        c.database.url = redact_url(&self.database.url);
        for client in &mut c.clients {
            if client.secret.is_some() {
                client.secret = Some(Secret::redacted());
            }
        }
        for up in &mut c.upstreams {
            if up.client_secret.is_some() {
                up.client_secret = Some(Secret::redacted());
            }
        }
        for u in &mut c.local_users {
            if u.password.is_some() {
                u.password = Some(Secret::redacted());
            }
        }
        c
    }

    /// The ids of the connectors this configuration offers: every upstream,
    /// then the local accounts when they are on.
    pub fn connector_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.upstreams.iter().map(|u| u.id.clone()).collect();
        if self.accounts.enabled || !self.local_users.is_empty() {
            ids.push(crate::accounts::LOCAL_CONNECTOR_ID.to_string());
        }
        ids
    }

    /// The e-mail-domain rules of the connectors, as (key, connector id,
    /// domains) for validation and routing.
    fn email_domain_rules(&self) -> Vec<(String, String, &[String])> {
        let mut rules: Vec<(String, String, &[String])> = self
            .upstreams
            .iter()
            .map(|u| {
                (
                    format!("upstreams[{}].email_domains", u.id),
                    u.id.clone(),
                    u.email_domains.as_slice(),
                )
            })
            .collect();
        rules.push((
            "accounts.email_domains".into(),
            crate::accounts::LOCAL_CONNECTOR_ID.into(),
            self.accounts.email_domains.as_slice(),
        ));
        rules
    }

    /// The e-mail domains (lowercase) that route a `login_hint` straight
    /// to a connector: domain → connector id. Validated by
    /// [`Config::validate`].
    pub fn email_domains(&self) -> std::collections::HashMap<String, String> {
        self.email_domain_rules()
            .into_iter()
            .flat_map(|(_, id, domains)| {
                domains
                    .iter()
                    .map(move |d| (d.to_ascii_lowercase(), id.clone()))
            })
            .collect()
    }

    /// Per-client connectors name configured connectors; each e-mail
    /// domain routes to one connector that exists.
    fn validate_routes(&self) -> Result<(), ConfigError> {
        let known = self.connector_ids();
        for c in &self.clients {
            let Some(allowed) = &c.upstreams else {
                continue;
            };
            let key = format!("clients[{}].upstreams", c.id);
            if allowed.is_empty() {
                return Err(ConfigError::new(
                    key,
                    "names no connector; leave it out to allow all of them",
                ));
            }
            if let Some(unknown) = allowed.iter().find(|id| !known.contains(id)) {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{unknown:?} is not a configured connector (configured: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        let mut seen: Vec<String> = Vec::new();
        for (key, id, domains) in self.email_domain_rules() {
            if !domains.is_empty() && !known.contains(&id) {
                return Err(ConfigError::new(key, "the local accounts are not enabled"));
            }
            for domain in domains {
                let d = domain.to_ascii_lowercase();
                let valid = !d.is_empty()
                    && d.len() <= 253
                    && !d.starts_with(['.', '-'])
                    && !d.ends_with('.')
                    && d.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                if !valid {
                    return Err(ConfigError::new(
                        key,
                        format!("{domain:?} is not a domain name (write example.org, no '@')"),
                    ));
                }
                if seen.contains(&d) {
                    return Err(ConfigError::new(
                        key,
                        format!("{domain:?} is routed to another connector already"),
                    ));
                }
                seen.push(d);
            }
        }
        Ok(())
    }
}

/// What each upstream kind needs: an `issuer` for OIDC (discovery); the
/// three endpoints for plain OAuth 2.0, which has no discovery.
fn validate_upstream_kind(up: &UpstreamConfig) -> Result<(), ConfigError> {
    let key = |name: &str| format!("upstreams[{}].{name}", up.id);
    match up.kind {
        UpstreamKind::Oidc => {
            if up.issuer.is_empty() {
                return Err(ConfigError::new(
                    key("issuer"),
                    "required for kind = \"oidc\"",
                ));
            }
        }
        UpstreamKind::Oauth2 => {
            for (name, value) in [
                ("authorization_endpoint", &up.authorization_endpoint),
                ("token_endpoint", &up.token_endpoint),
                ("userinfo_endpoint", &up.userinfo_endpoint),
            ] {
                let Some(value) = value else {
                    return Err(ConfigError::new(
                        key(name),
                        "required for kind = \"oauth2\"",
                    ));
                };
                match url::Url::parse(value) {
                    Ok(u) if matches!(u.scheme(), "https" | "http") => {}
                    _ => {
                        return Err(ConfigError::new(
                            key(name),
                            "must be an absolute http(s) URL",
                        ))
                    }
                }
            }
            if up.subject_claim.is_empty() {
                return Err(ConfigError::new(key("subject_claim"), "must not be empty"));
            }
        }
    }
    Ok(())
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

    #[test]
    fn email_codes_without_smtp_only_on_a_loopback_issuer() {
        let mut c = Config::default();
        c.accounts.email_codes = true;
        c.validate().unwrap();
        c.server.listen = "0.0.0.0:443".parse().unwrap();
        c.server.issuer = Some("https://login.example.org".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("accounts.email_codes: e-mail codes need mail.smtp_host"),
            "{e}"
        );
        c.mail.from = Some("login@example.org".into());
        c.mail.smtp_host = Some("smtp.example.org".into());
        c.validate().unwrap();
    }

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
        assert_eq!(c.server.issuer.as_deref(), Some("http://x"));
        assert_eq!(c.clients[0].allowed_scopes, default_client_scopes());
        assert!(c.clients[0].require_pkce);
        assert_eq!(c.database.url, "sqlite://data/adapter.db");
    }

    fn client(id: &str) -> ClientConfig {
        ClientConfig {
            id: id.into(),
            name: None,
            secret: Some("client-secret-value".into()),
            secret_env: None,
            redirect_uris: vec!["https://app.example.org/cb".into()],
            post_logout_redirect_uris: vec![],
            allowed_scopes: default_client_scopes(),
            public: false,
            require_pkce: true,
            grant_types: default_grant_types(),
            backchannel_logout_uri: None,
            id_token_signed_response_alg: None,
            claims: ClientClaims::default(),
            upstreams: None,
        }
    }

    fn upstream(id: &str) -> UpstreamConfig {
        UpstreamConfig {
            client_secret: Some("upstream-secret-value".into()),
            ..UpstreamConfig::oidc(id, "https://idp.example.org", "adapter")
        }
    }

    /// The error of `c.validate()`, checked to name `key` first.
    fn error_of(c: &Config, key: &str) -> String {
        let err = c.validate().unwrap_err();
        assert_eq!(err.key, key, "{err}");
        let text = err.to_string();
        assert!(text.starts_with(&format!("{key}: ")), "{text}");
        text
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().server.issuer(), DEFAULT_ISSUER);
    }

    #[test]
    fn unset_issuer_with_another_listen_is_refused() {
        let mut c = Config::default();
        c.server.listen = "0.0.0.0:8000".parse().unwrap();
        let err = error_of(&c, "server.issuer");
        assert!(err.contains("0.0.0.0:8000"), "{err}");
        c.server.issuer = Some("https://login.example.org".into());
        c.validate().unwrap();
        assert_eq!(c.server.issuer(), "https://login.example.org");
    }

    #[test]
    fn issuer_with_a_path_is_refused() {
        let mut c = Config::default();
        c.server.issuer = Some("http://h/auth".into());
        let err = error_of(&c, "server.issuer");
        assert!(err.contains("path"), "{err}");
        c.server.issuer = Some("http://h".into());
        c.validate().unwrap();
    }

    #[test]
    fn malformed_issuers_are_refused() {
        for bad in [
            "not a url",
            "ftp://h",
            "http://h/",
            "http://h?x=1",
            "http://h#f",
            "http://u:p@h",
        ] {
            let mut c = Config::default();
            c.server.issuer = Some(bad.into());
            let err = error_of(&c, "server.issuer");
            assert!(!err.contains("u:p@"), "credentials echoed: {err}");
        }
    }

    #[test]
    fn session_ttl_must_be_positive_and_at_most_30_days() {
        for bad in [0, -1, MAX_SESSION_TTL_SECONDS + 1] {
            let mut c = Config::default();
            c.session.ttl_seconds = bad;
            error_of(&c, "session.ttl_seconds");
        }
        let mut c = Config::default();
        c.session.ttl_seconds = MAX_SESSION_TTL_SECONDS;
        c.validate().unwrap();
    }

    #[test]
    fn cookie_names_must_differ() {
        let mut c = Config::default();
        c.session.transaction_cookie_name = c.session.cookie_name.clone();
        error_of(&c, "session.transaction_cookie_name");
    }

    #[test]
    fn cookie_names_must_be_rfc6265_tokens() {
        for bad in ["", "A B", "A;B", "A=B", "Ä", "A\"B", "A\tB"] {
            let mut c = Config::default();
            c.session.cookie_name = bad.into();
            error_of(&c, "session.cookie_name");
            let mut c = Config::default();
            c.session.transaction_cookie_name = bad.into();
            error_of(&c, "session.transaction_cookie_name");
        }
        let mut c = Config::default();
        c.session.cookie_name = "__Host-sid!#$%&'*+-.^_`|~".into();
        c.validate().unwrap();
    }

    #[test]
    fn unknown_log_format_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "[server]\nlog_format = \"xml\"\n").unwrap();
        let err = load(Some(&path), "AUTH_ADAPTER_TEST_UNUSED__")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.log_format"), "{err}");
        assert!(err.contains("xml"), "{err}");
        std::fs::write(&path, "[server]\nlog_format = \"json\"\n").unwrap();
        let c = load(Some(&path), "AUTH_ADAPTER_TEST_UNUSED__").unwrap();
        assert_eq!(c.server.log_format, LogFormat::Json);
    }

    #[test]
    fn empty_client_id_is_refused() {
        let c = Config {
            clients: vec![client("a"), client(" ")],
            ..Config::default()
        };
        error_of(&c, "clients[1].id");
    }

    #[test]
    fn what_serve_builds_is_checked_too() {
        let mut c = Config {
            clients: vec![client("app")],
            ..Config::default()
        };
        c.clients[0].redirect_uris = vec!["http://app.example.org/cb".into()];
        error_of(&c, "clients[app].redirect_uris");
        let mut c = Config::default();
        c.claims.rules[1].claim = "sub".into();
        error_of(&c, "claims.rules[1].claim");
    }

    #[test]
    fn duplicate_client_ids_are_refused() {
        let c = Config {
            clients: vec![client("a"), client("b"), client("a")],
            ..Config::default()
        };
        let err = error_of(&c, "clients[a].id");
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn upstream_ids_must_be_valid_unique_and_not_local() {
        let mut c = Config {
            upstreams: vec![upstream("Corp SSO")],
            ..Config::default()
        };
        error_of(&c, "upstreams[Corp SSO].id");
        c.upstreams = vec![upstream("local")];
        error_of(&c, "upstreams[local].id");
        c.upstreams = vec![upstream("corp"), upstream("corp")];
        error_of(&c, "upstreams[corp].id");
        c.upstreams = vec![upstream("corp"), upstream("other")];
        // Two upstreams sharing the `upstream` subject strategy collide.
        error_of(&c, "upstreams[corp].subject");
        for up in &mut c.upstreams {
            up.subject = SubjectStrategy::Namespaced;
        }
        c.validate().unwrap();
    }

    #[test]
    fn client_upstreams_and_email_domains_name_configured_connectors() {
        let mut c = Config {
            clients: vec![client("a")],
            upstreams: vec![upstream("corp")],
            ..Config::default()
        };
        c.clients[0].upstreams = Some(vec!["corp".into(), "nope".into()]);
        assert!(error_of(&c, "clients[a].upstreams").contains("\"nope\""));
        // `local` exists only with the local accounts on.
        c.clients[0].upstreams = Some(vec!["local".into()]);
        error_of(&c, "clients[a].upstreams");
        c.accounts.enabled = true;
        c.validate().unwrap();
        c.clients[0].upstreams = Some(vec![]);
        error_of(&c, "clients[a].upstreams");
        c.clients[0].upstreams = None;

        c.upstreams[0].email_domains = vec!["Example.org".into()];
        c.accounts.email_domains = vec!["local.example".into()];
        c.validate().unwrap();
        assert_eq!(
            c.email_domains(),
            std::collections::HashMap::from([
                ("example.org".to_string(), "corp".to_string()),
                ("local.example".to_string(), "local".to_string()),
            ])
        );
        c.accounts.email_domains = vec!["example.ORG".into()];
        error_of(&c, "accounts.email_domains");
        c.accounts.email_domains = vec!["alice@local.example".into()];
        error_of(&c, "accounts.email_domains");
        c.accounts.email_domains = vec!["local.example".into()];
        c.accounts.enabled = false;
        error_of(&c, "accounts.email_domains");
    }

    #[test]
    fn insecure_cookies_with_an_https_issuer_are_refused() {
        let mut c = Config::default();
        c.server.issuer = Some("https://login.example.org".into());
        c.session.secure = Some(false);
        error_of(&c, "session.secure");
        c.session.secure = None;
        c.validate().unwrap();
    }

    #[test]
    fn shutdown_grace_defaults_and_is_bounded() {
        let parse = |toml: &str| -> Config { Figment::from(Toml::string(toml)).extract().unwrap() };
        assert_eq!(parse("[server]\n").server.shutdown_grace_seconds, 5);
        let c = parse("[server]\nshutdown_grace_seconds = 2\n");
        assert_eq!(c.server.shutdown_grace_seconds, 2);
        let mut c = Config::default();
        c.server.shutdown_grace_seconds = MAX_SHUTDOWN_GRACE_SECONDS + 1;
        let text = error_of(&c, "server.shutdown_grace_seconds");
        assert!(text.contains("maximum of 300"), "{text}");
        c.server.shutdown_grace_seconds = 0;
        c.validate().unwrap();
    }

    #[test]
    fn password_hashing_bounds() {
        let parse = |toml: &str| -> Config { Figment::from(Toml::string(toml)).extract().unwrap() };
        let c = parse("[passwords]\n");
        assert!(c.passwords.max_concurrent_hashes >= 1);
        assert_eq!(c.passwords.max_waiting_hashes, 64);
        let c = parse("[passwords]\nmax_concurrent_hashes = 3\nmax_waiting_hashes = 0\n");
        assert_eq!(c.passwords.max_concurrent_hashes, 3);
        c.validate().unwrap();
        let mut c = Config::default();
        c.passwords.max_concurrent_hashes = 0;
        error_of(&c, "passwords.max_concurrent_hashes");
        let mut c = Config::default();
        c.passwords.max_waiting_hashes = MAX_WAITING_HASHES + 1;
        error_of(&c, "passwords.max_waiting_hashes");
    }

    #[test]
    fn rate_limits_and_trusted_proxies_are_validated() {
        let parse = |toml: &str| -> Config { Figment::from(Toml::string(toml)).extract().unwrap() };
        let c = parse("[rate_limits]\n");
        assert!(c.rate_limits.enabled);
        assert_eq!(c.rate_limits.login.burst, 20);
        let c = parse(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n\
             [rate_limits]\nenabled = false\n[rate_limits.verify_totp]\nburst = 3\nper_minute = 1\n",
        );
        assert!(!c.rate_limits.enabled);
        assert_eq!(c.rate_limits.verify_totp.per_minute, 1);
        c.validate().unwrap();
        let mut c = Config::default();
        c.rate_limits.register.per_minute = 0;
        error_of(&c, "rate_limits.register.per_minute");
        let mut c = Config::default();
        c.rate_limits.login.burst = MAX_QUOTA + 1;
        error_of(&c, "rate_limits.login.burst");
        let mut c = Config::default();
        c.server.trusted_proxies = vec!["10.0.0.0/33".into()];
        let text = error_of(&c, "server.trusted_proxies");
        assert!(text.contains("10.0.0.0/33"), "{text}");
    }

    #[test]
    fn device_cookie_name_defaults_and_must_differ() {
        let mut c = Config::default();
        assert_eq!(
            c.session.device_cookie_name(),
            "AUTH_ADAPTER_SESSION_DEVICE"
        );
        c.validate().unwrap();
        for clash in ["AUTH_ADAPTER_SESSION", "AUTH_ADAPTER_TX", "bad name"] {
            c.session.device_cookie_name = Some(clash.into());
            error_of(&c, "session.device_cookie_name");
        }
        c.session.device_cookie_name = Some("DEV".into());
        c.validate().unwrap();
    }

    #[test]
    fn cookie_lifetime_defaults_to_persistent_and_parses() {
        let parse = |toml: &str| {
            Figment::from(Toml::string(toml))
                .extract::<Config>()
                .map_err(|e| e.to_string())
        };
        let lifetime = |toml: &str| parse(toml).unwrap().session.cookie_lifetime;
        assert_eq!(lifetime("[session]\n"), CookieLifetime::Persistent);
        assert_eq!(
            lifetime("[session]\ncookie_lifetime = \"browser\"\n"),
            CookieLifetime::Browser
        );
        assert_eq!(
            lifetime("[session]\ncookie_lifetime = \"persistent\"\n"),
            CookieLifetime::Persistent
        );
        let err = parse("[session]\ncookie_lifetime = \"forever\"\n").unwrap_err();
        assert!(err.contains("forever"), "{err}");
    }

    #[test]
    fn zero_database_connections_are_refused() {
        let mut c = Config::default();
        c.database.max_connections = 0;
        error_of(&c, "database.max_connections");
    }

    #[test]
    fn token_lifetimes_are_bounded() {
        let mut c = Config::default();
        c.tokens.code_ttl_seconds = 61;
        error_of(&c, "tokens.code_ttl_seconds");
        let mut c = Config::default();
        c.tokens.access_token_ttl_seconds = 0;
        error_of(&c, "tokens.access_token_ttl_seconds");
    }

    #[test]
    fn inline_secret_and_env_together_are_refused() {
        let mut c = Config::default();
        let mut both = client("a");
        both.secret_env = Some("PATH".into());
        c.clients = vec![both.clone()];
        let err = error_of(&c, "clients[a].secret");
        assert!(err.contains("clients[a].secret_env"), "{err}");
        assert_eq!(
            resolve_secret(&both.secret, &both.secret_env, "clients[a].secret").unwrap_err(),
            err
        );

        let mut c = Config::default();
        let mut up = upstream("corp");
        up.client_secret_env = Some("PATH".into());
        c.upstreams = vec![up];
        error_of(&c, "upstreams[corp].client_secret");
    }

    #[test]
    fn resolve_secret_reads_inline_or_env() {
        let inline = Some(Secret::from("inline"));
        let got = resolve_secret(&inline, &None, "k").unwrap().unwrap();
        assert_eq!(got.expose(), "inline");
        // PATH is always set; it stands in for a secret here.
        let got = resolve_secret(&None, &Some("PATH".into()), "k")
            .unwrap()
            .unwrap();
        assert_eq!(Some(got.expose().to_owned()), std::env::var("PATH").ok());
        let err =
            resolve_secret(&None, &Some("AUTH_ADAPTER_TEST_SURELY_UNSET".into()), "k").unwrap_err();
        assert!(err.starts_with("k_env: "), "{err}");
        assert!(resolve_secret(&None, &None, "k").unwrap().is_none());
    }

    fn config_with_secrets() -> Config {
        let mut c = Config::default();
        c.database.url = "postgres://adapter:db-password-value@db.example.org:5432/auth".into();
        c.clients = vec![client("a")];
        c.upstreams = vec![upstream("corp")];
        c.local_users = vec![LocalUserConfig {
            username: "alice".into(),
            password_hash: None,
            password: Some("user-password-value".into()),
            name: None,
            email: None,
            groups: vec![],
        }];
        c
    }

    const SECRET_VALUES: [&str; 4] = [
        "client-secret-value",
        "upstream-secret-value",
        "user-password-value",
        "db-password-value",
    ];

    #[test]
    fn debug_prints_no_secret() {
        let c = config_with_secrets();
        let debug = format!("{c:?} {:#?}", c);
        for secret in SECRET_VALUES {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(
            debug.contains("adapter:<redacted>@db.example.org:5432"),
            "{debug}"
        );
    }

    #[test]
    fn serialized_and_redacted_configs_print_no_secret() {
        let c = config_with_secrets();
        // Plain serialization already hides the `Secret`s (not the URL).
        let plain = serde_json::to_string(&c).unwrap();
        for secret in &SECRET_VALUES[..3] {
            assert!(!plain.contains(secret), "{secret} in {plain}");
        }
        let printed = serde_json::to_string(&c.redacted()).unwrap();
        for secret in SECRET_VALUES {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("\"secret\":\"<redacted>\""), "{printed}");
        assert!(
            printed.contains("postgres://adapter:<redacted>@db.example.org:5432/auth"),
            "{printed}"
        );
        assert!(
            printed.contains(DEFAULT_ISSUER),
            "effective issuer: {printed}"
        );
    }

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://user:pw@host:5432/db?sslmode=require"),
            "postgres://user:<redacted>@host:5432/db?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://user@host/db?password=pw&sslmode=disable"),
            "postgresql://user@host/db?password=<redacted>&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://u:p%40ss@h/db"),
            "postgres://u:<redacted>@h/db"
        );
        assert_eq!(
            redact_url("sqlite://data/adapter.db"),
            "sqlite://data/adapter.db"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:1/test"),
            "postgres://postgres@127.0.0.1:1/test"
        );
    }

    #[test]
    fn defaults_keep_their_real_secrets_through_loading() {
        let defaults = config_with_secrets();
        let c = load_from(defaults.clone(), None, "AUTH_ADAPTER_TEST_UNUSED__").unwrap();
        assert_eq!(
            c.clients[0].secret.as_ref().unwrap().expose(),
            "client-secret-value"
        );
        assert_eq!(
            c.upstreams[0].client_secret.as_ref().unwrap().expose(),
            "upstream-secret-value"
        );
        assert_eq!(c, defaults);
        // Exposure ends with the load.
        assert!(!serde_json::to_string(&c)
            .unwrap()
            .contains("client-secret-value"));
    }

    fn smtp_config() -> Config {
        let mut c = Config::default();
        c.mail.smtp_host = Some("smtp.example.org".into());
        c.mail.from = Some("Auth <login@example.org>".into());
        c
    }

    #[test]
    fn mail_section_is_read_with_its_defaults() {
        let parse = |toml: &str| -> Config { Figment::from(Toml::string(toml)).extract().unwrap() };
        let c = parse("[mail]\nsmtp_host = \"smtp.example.org\"\nfrom = \"a@example.org\"\n");
        assert_eq!(c.mail.smtp_tls, SmtpTls::Starttls);
        assert_eq!(c.mail.port(), 587);
        let c = parse("[mail]\nsmtp_tls = \"tls\"\n");
        assert_eq!(c.mail.port(), 465);
        let c = parse("[mail]\nsmtp_tls = \"none\"\nsmtp_port = 2525\n");
        assert_eq!(c.mail.port(), 2525);
        let err = Figment::from(Toml::string("[mail]\nsmtp_tls = \"ssl\"\n"))
            .extract::<Config>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mail.smtp_tls") && err.contains("ssl"),
            "{err}"
        );
        let err = Figment::from(Toml::string("[mail]\nsmtp_pasword_env = \"X\"\n"))
            .extract::<Config>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("smtp_pasword_env"), "{err}");
        Config::default().validate().unwrap();
        smtp_config().validate().unwrap();
    }

    #[test]
    fn mail_settings_are_validated_naming_the_key() {
        let mut c = smtp_config();
        c.mail.from = None;
        error_of(&c, "mail.from");
        c.mail.from = Some("not an address".into());
        error_of(&c, "mail.from");
        let mut c = smtp_config();
        c.mail.smtp_host = Some("smtp.example.org:587".into());
        error_of(&c, "mail.smtp_host");
        let mut c = smtp_config();
        c.mail.smtp_port = Some(0);
        error_of(&c, "mail.smtp_port");
        // Server settings without a server would silently send nothing.
        let mut c = Config::default();
        c.mail.smtp_port = Some(25);
        error_of(&c, "mail.smtp_port");
        let mut c = Config::default();
        c.mail.smtp_username = Some("u".into());
        error_of(&c, "mail.smtp_username");
        // Credentials come in pairs.
        let mut c = smtp_config();
        c.mail.smtp_username = Some("u".into());
        error_of(&c, "mail.smtp_password_env");
        let mut c = smtp_config();
        c.mail.smtp_password_env = Some("PATH".into());
        error_of(&c, "mail.smtp_username");
        c.mail.smtp_username = Some("u".into());
        c.validate().unwrap();
        // Never a password in clear.
        c.mail.smtp_tls = SmtpTls::None;
        let text = error_of(&c, "mail.smtp_tls");
        assert!(text.contains("starttls"), "{text}");
        // env and file: one of them, and each must be readable.
        let mut c = smtp_config();
        c.mail.smtp_username = Some("u".into());
        c.mail.smtp_password_env = Some("PATH".into());
        c.mail.smtp_password_file = Some("/nonexistent".into());
        error_of(&c, "mail.smtp_password_env");
        c.mail.smtp_password_env = None;
        let text = error_of(&c, "mail.smtp_password_file");
        assert!(text.contains("/nonexistent"), "{text}");
        c.mail.smtp_password_file = None;
        c.mail.smtp_password_env = Some("AUTH_ADAPTER_TEST_SURELY_UNSET".into());
        let text = error_of(&c, "mail.smtp_password_env");
        assert!(text.contains("AUTH_ADAPTER_TEST_SURELY_UNSET"), "{text}");
    }

    #[test]
    fn smtp_password_is_read_from_a_file_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smtp");
        std::fs::write(&path, "smtp-password-value\n").unwrap();
        let mut c = smtp_config();
        c.mail.smtp_username = Some("u".into());
        c.mail.smtp_password_file = Some(path);
        c.validate().unwrap();
        let password = c.mail.smtp_password().unwrap().unwrap();
        assert_eq!(password.expose(), "smtp-password-value");
        let printed = format!(
            "{c:?} {password:?} {}",
            serde_json::to_string(&c.redacted()).unwrap()
        );
        assert!(!printed.contains("smtp-password-value"), "{printed}");
    }

    #[test]
    fn passkeys_refuse_an_ip_rp_id_and_a_foreign_origin() {
        let mut c = Config::default();
        c.validate().unwrap();
        assert!(!c.passkeys.enabled());
        let err = |c: &Config| c.validate().unwrap_err().to_string();
        c.passkeys.rp_id = Some("127.0.0.1".into());
        c.passkeys.rp_origin = Some("http://127.0.0.1:9001".into());
        let e = err(&c);
        assert!(
            e.starts_with("passkeys.rp_id: `127.0.0.1` is an IP address; browsers refuse"),
            "{e}"
        );
        c.passkeys.rp_id = Some("::1".into());
        assert!(err(&c).starts_with("passkeys.rp_id: `::1` is an IP address"));
        c.passkeys.rp_id = Some("localhost".into());
        c.passkeys.rp_origin = None;
        assert!(err(&c).starts_with("passkeys.rp_origin: is required"));
        c.passkeys.rp_origin = Some("http://127.0.0.1:9001".into());
        assert!(err(&c).starts_with(
            "passkeys.rp_origin: `http://127.0.0.1:9001` must be an http(s) origin whose host is `localhost`"
        ));
        c.passkeys.rp_id = Some("example.org".into());
        c.passkeys.rp_origin = Some("https://badexample.org".into());
        assert!(err(&c).starts_with("passkeys.rp_origin: `https://badexample.org` must be"));
        c.passkeys.rp_origin = Some("https://login.example.org".into());
        c.validate().unwrap();
        c.passkeys.rp_id = Some("localhost".into());
        c.passkeys.rp_origin = Some("http://localhost:9001".into());
        c.validate().unwrap();
        assert!(c.passkeys.enabled());
        c.passkeys.challenge_ttl_seconds = 5;
        assert!(err(&c).starts_with("passkeys.challenge_ttl_seconds: must be from 30 to 3600"));
        c.passkeys.challenge_ttl_seconds = 300;
        c.passkeys.rp_id = None;
        assert!(err(&c).starts_with("passkeys.rp_id: is required when passkeys.rp_origin"));
    }
}
