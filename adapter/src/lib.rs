//! Auth Adapter: an OpenID Provider that brokers logins to upstream
//! identity providers and issues its own tokens.
//!
//! Layout:
//! - [`config`]: configuration (defaults, TOML file, environment).
//! - [`startup`]: [`Application`] (bind, build, run) and the router.
//! - [`flow`]: the login-flow engine: a persisted login and one state
//!   machine over its steps (no HTTP types).
//! - [`provider`]: the OpenID Provider's web layer: authorize, login pages,
//!   upstream callbacks, token, userinfo, discovery/JWKS.
//! - [`backchannel`]: OIDC Back-Channel Logout 1.0 (queue and worker).
//! - [`mail`]: outgoing mail (outbox, SMTP, worker, development outbox
//!   page) and e-mail one-time codes.
//! - [`device`]: device cookies, labels and handles of sessions per device.
//! - [`paths`]: every route path, defined once.
//! - [`metrics`]: `/metrics` (Prometheus text format), one registry per application.
//! - [`connector`]: identity sources: the OIDC upstream (federation) and
//!   local accounts.
//! - [`accounts`]: local accounts in the store and their multi-step
//!   authentication (password, TOTP, e-mail codes).
//! - [`customizer`]: maps an identity to the claims of issued tokens;
//!   [`mapping`]: its declarative rules (CEL), the `allow_groups` gate and
//!   the `mapping preview` command.
//! - [`keys`]: signing keys (generated at first start, kept in the store).
//! - [`store`]: the storage trait and its SQLite/PostgreSQL implementation.
//! - [`ratelimit`]: per-IP and per-account limits of attempts.
//! - [`password`]: argon2id hashing, bounded; [`totp`]: RFC 6238 codes
//!   and recovery codes.
//! - [`clock`]: the injected clock; [`secret`]: randomness and hashing;
//!   [`error`]: protocol error codes; [`web`]: pages and response helpers;
//!   [`telemetry`]: logging; [`cli`]: the command line shared by binaries.

pub mod accounts;
pub mod backchannel;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connector;
pub mod customizer;
pub mod device;
pub mod error;
pub mod flow;
pub mod keys;
pub mod mail;
pub mod mapping;
pub mod metrics;
pub mod password;
pub mod paths;
pub mod provider;
pub mod ratelimit;
pub mod route;
pub mod secret;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod totp;
pub mod web;

pub use config::Config;
pub use startup::Application;

/// The allocator of every binary that links the engine. The token and grant
/// paths allocate per request (claims, JSON, headers); mimalloc's per-thread
/// free lists serve them with less CPU than glibc's `malloc` (BENCHMARKS.md,
/// "What changed for this table"). Declared here rather than in each `main` so the bench's
/// services, which re-execute the bench binary, run on the same allocator as
/// the shipped binaries.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
