//! Shared helpers of the adapter's integration tests, from the workspace's
//! test kit: `spawn_app()` on a random port with a SQLite file and a manual
//! clock, and the fake upstream OpenID Provider.
#![allow(unused_imports)]

pub use testkit::adapter_app::*;
pub use testkit::clients;
pub use testkit::fake_op::{FakeOp, Options as FakeOpOptions, Tamper};
