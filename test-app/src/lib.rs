//! `test-app`: the demo OpenID Connect relying party of the Auth Adapter chain.
//!
//! It is deliberately built on the [`openidconnect`] crate and shares no code
//! with the adapter, so that the chain tests two independent implementations
//! against each other.
//!
//! ```text
//! browser ─► test-app :8080 ──/authorize──► adapter :9000 ──► upstream :9001
//!            test-app ──/token (client_secret_basic, PKCE)──► adapter
//! ```
//!
//! Crate layout:
//! - [`config`]: [`Config`] (serde, figment: defaults → TOML file → `TEST_APP__*` env).
//! - [`startup`][]: [`Application`] (binds first, then serves; graceful shutdown)
//!   and [`app`], the axum [`Router`](axum::Router) with its middleware.
//! - [`routes`]: the HTTP handlers (home, `/authenticated`, the OAuth callback,
//!   `/api/me`, logout, health, static assets).
//! - [`provider`]: lazy, cached discovery of the issuer (metadata + JWKS) and the
//!   reqwest 0.13 bridge that `openidconnect` uses for its HTTP calls.
//! - [`tokens`]: access-token (RFC 9068 `at+jwt`) verification with
//!   `jsonwebtoken`, and JWT payload decoding for display.
//! - [`store`]: in-memory, expiring server-side maps for sessions and login
//!   transactions, and random identifiers.
//! - [`views`]: askama templates and the view models behind them (claim tables).
//! - [`error`]: [`AppError`], the single error type, rendered as an HTML page
//!   with the right status.
//! - [`telemetry`]: `tracing` subscriber set-up (`RUST_LOG`, `TEST_LOG`).

pub mod backchannel;
pub mod config;
pub mod error;
pub mod provider;
pub mod routes;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod views;

pub use config::Config;
pub use error::AppError;
pub use startup::{app, AppState, Application};

/// Path of the OAuth 2.0 redirect URI (the authorization callback), relative to `base_url`.
pub const CALLBACK_PATH: &str = "/login/oauth2/code/auth-adapter";
