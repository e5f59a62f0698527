//! Shared helpers of the adapter's integration tests, from the workspace's
//! test kit: `spawn_app()` on a random port with a SQLite file and a manual
//! clock, and the fake upstream OpenID Provider.
#![allow(unused_imports)]

pub use testkit::adapter_app::*;
pub use testkit::clients;
pub use testkit::fake_op::{FakeOp, Options as FakeOpOptions, Tamper};

/// `adapter --config <file> config check`, the file named `file_name` in a
/// temp dir and holding `toml`, with only the environment `env`.
#[allow(dead_code)] // not every test binary that includes this module runs the binary
pub fn config_check(file_name: &str, toml: &str, env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file_name);
    std::fs::write(&path, toml).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_adapter"))
        .env_clear()
        .envs(env.iter().copied())
        .arg("--config")
        .arg(&path)
        .args(["config", "check"])
        .output()
        .unwrap()
}
