//! The `adapter` binary's command line: `config check` and start-up refuse
//! an invalid configuration with one line naming the key, never print a
//! secret, and name an unreachable database at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use adapter::{Application, Config};

/// Nothing listens on port 1: connections are refused at once.
const UNREACHABLE_DB: &str = "postgres://postgres@127.0.0.1:1/test";

/// Runs the binary with `--config <file>` and no `AUTH_ADAPTER__*` variables.
fn run(config: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.toml");
    std::fs::write(&path, config).unwrap();
    adapter_command(&path).args(args).output().unwrap()
}

fn adapter_command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_adapter"));
    cmd.env_clear().arg("--config").arg(config);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn config_check_refuses_an_invalid_config_with_the_key() {
    let out = run("[session]\nttl_seconds = 0\n", &["config", "check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(
        err.trim(),
        "Error: configuration: session.ttl_seconds: 0 must be between 1 and 2592000 (30 days)"
    );
    assert!(out.stdout.is_empty(), "nothing printed before the check");
}

#[test]
fn serve_refuses_an_unset_issuer_with_another_listen() {
    // The database is unreachable too, so a missing check fails fast
    // with another message instead of serving.
    let config =
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{UNREACHABLE_DB}\"\n");
    for args in [&["config", "check"][..], &["serve"][..]] {
        let out = run(&config, args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.trim()
                .starts_with("Error: configuration: server.issuer: not set"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn config_check_prints_no_password_of_the_database_url() {
    let config = "[database]\nurl = \"postgres://adapter:db-pass-word@db.example.org/auth\"\n\
                  [[clients]]\nid = \"app\"\nsecret = \"client-sec-ret\"\n\
                  redirect_uris = [\"https://app.example.org/cb\"]\n";
    let out = run(config, &["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains("db-pass-word"), "{printed}");
    assert!(!printed.contains("client-sec-ret"), "{printed}");
    assert!(
        printed.contains("postgres://adapter:<redacted>@db.example.org/auth"),
        "{printed}"
    );
    assert!(printed.contains("\"secret\": \"<redacted>\""), "{printed}");
}

#[test]
fn migrate_names_an_unreachable_database() {
    let out = run(
        &format!("[database]\nurl = \"{UNREACHABLE_DB}\"\n"),
        &["migrate"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("database.url: cannot reach PostgreSQL at 127.0.0.1:1: "),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_database_is_named_within_seconds() {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.issuer = Some("http://127.0.0.1:9000".into());
    config.database.url = UNREACHABLE_DB.into();
    let started = Instant::now();
    let err = Application::build(config).await.err().unwrap();
    let elapsed = started.elapsed();
    let err = format!("{err:#}");
    assert!(
        err.starts_with("database.url: cannot reach PostgreSQL at 127.0.0.1:1: "),
        "{err}"
    );
    assert!(err.contains("refused"), "the cause: {err}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}
