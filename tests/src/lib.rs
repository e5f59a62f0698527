//! End-to-end test support for the chain
//! `test-app -> adapter -> upstream-test-server` (issue 2).
//!
//! The integration tests live in `tests/chain.rs`; this library holds what
//! they share:
//! - [`chain`] starts the three real services in-process on random ports;
//! - [`fake_upstream`] is a tampering OpenID Provider for the adapter's
//!   negative tests (checklist E3, E4);
//! - [`browser`] drives Debian's headless Chromium through chromedriver;
//! - [`rp`] is a hand-rolled relying party / user agent over reqwest (no
//!   redirects followed, a cookie jar), with PKCE, HTML scraping and JWT
//!   helpers;
//! - [`output`] decides where screenshots and logs go.

pub mod browser;
pub mod chain;
pub mod fake_upstream;
pub mod output;
pub mod rp;

/// Turns `tracing` output on when `TEST_LOG=1` (filter from `RUST_LOG`,
/// default `info`). Safe to call from every test.
pub fn init_test_log() {
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // A second test in the same process finds a subscriber already set.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}
