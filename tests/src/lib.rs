//! End-to-end test support for the chain
//! `test-app -> adapter -> upstream-test-server`.
//!
//! The integration tests live in `tests/chain.rs`. Most of what they use
//! comes from the workspace's test kit and is re-exported here under the
//! names the tests know:
//! - [`chain`] starts the three real services in-process on random ports;
//! - [`fake_upstream`] is the fake, tampering OpenID Provider used as the
//!   adapter's upstream in negative tests;
//! - [`rp`] is a hand-rolled relying party / user agent over reqwest.
//!
//! Specific to this crate:
//! - [`browser`] drives Debian's headless Chromium through chromedriver;
//! - [`output`] decides where screenshots and logs go.

pub mod browser;
pub mod output;

pub use testkit::fake_op as fake_upstream;
pub use testkit::{chain, init_test_log, rp};
