//! The workspace's test kit: what the adapter's, the test-app's and the
//! end-to-end tests share.
//!
//! - [`fake_op`]: the one fake OpenID Provider (tamper modes, RSA and EC
//!   keys, recorded requests, counters). No workspace crate needed.
//! - [`rp`]: a hand-rolled user agent and relying party over reqwest (no
//!   redirects followed, a cookie jar, PKCE, client authentication, HTML
//!   scraping, JWT checks). No workspace crate needed.
//! - [`clients`], [`spawn`], [`adapter_app`] (feature `adapter`): config
//!   builders and the adapter in-process on `127.0.0.1:0` with a manual clock.
//! - [`chain`] (feature `chain`): upstream-test-server, adapter and test-app
//!   in-process, wired together.

pub mod fake_op;
pub mod rp;

#[cfg(feature = "adapter")]
pub mod adapter_app;
#[cfg(feature = "chain")]
pub mod chain;
#[cfg(feature = "adapter")]
pub mod clients;
#[cfg(feature = "adapter")]
pub mod pg;
#[cfg(feature = "adapter")]
pub mod spawn;

pub use fake_op::{FakeOp, FakeUpstream, Tamper};

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
