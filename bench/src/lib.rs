//! The adapter's benchmark: the services run as their own processes (the
//! bench binary started with `BENCH_SERVE=adapter` or `upstream` runs the
//! adapter's or the upstream test server's own `main`), the load comes
//! from this process over loopback, and every figure of CPU and memory is
//! read from `/proc` for the service's process.
//!
//! - [`services`]: configurations, spawning, readiness, PostgreSQL schema;
//! - [`flows`]: the HTTP conversations (browser logins, token requests);
//! - [`lean`]: the keep-alive client of the cheap cases' load (token
//!   endpoint, userinfo, discovery, JWKS);
//! - [`load`]: closed- and open-loop load with latency quantiles;
//! - [`ceiling`]: the one-core signing rate of each algorithm;
//! - [`procstat`]: `/proc` readings;
//! - [`run`]: the cases and the table.
//!
//! `cargo run --release -p bench -- --full` prints the whole table;
//! `bench/tests/smoke.rs` runs every case small, so the bench cannot rot.

pub mod ceiling;
pub mod flows;
pub mod lean;
pub mod load;
pub mod procstat;
pub mod run;
pub mod services;
