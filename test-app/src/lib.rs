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
//!   `/api/me`, logout and `/logged-out`, health, static assets).
//! - [`resource`]: the protected API `GET /api/resource`, an RFC 6750 resource
//!   server (JWT access-token checks against the JWKS, RFC 7662 introspection).
//! - [`lifecycle`]: `POST /call-api`, the client side: calls the API with the
//!   session's access token, refreshes it (RFC 6749 §6) when it expired.
//! - [`clock`]: the injected clock token expiry is judged by.
//! - [`provider`]: lazy, cached discovery of the issuer (metadata + JWKS) and the
//!   reqwest 0.13 bridge that `openidconnect` uses for its HTTP calls.
//! - [`tokens`]: access-token (RFC 9068 `at+jwt`) verification with
//!   `jsonwebtoken`, and JWT payload decoding for display.
//! - [`store`]: in-memory, expiring server-side maps for sessions (all tokens
//!   stay server-side), login and logout transactions, random identifiers, and
//!   the back-channel logout record with its interface for the receiver.
//! - [`views`]: askama templates and the view models behind them (claim tables).
//! - [`error`]: [`AppError`], the single error type, rendered as an HTML page
//!   with the right status.
//! - [`telemetry`]: `tracing` subscriber set-up (`RUST_LOG`, `TEST_LOG`).

pub mod backchannel;
pub mod clock;
pub mod config;
pub mod error;
pub mod lifecycle;
pub mod provider;
pub mod resource;
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

/// Path of the `post_logout_redirect_uri` (OpenID RP-Initiated Logout 1.0 §2).
pub const LOGGED_OUT_PATH: &str = "/logged-out";
