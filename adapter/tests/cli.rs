//! The `adapter` binary's command line: `config check` and start-up refuse
//! an invalid configuration with one line naming the key, never print a
//! secret, and name an unreachable database at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use adapter::{Application, Config};

/// Nothing listens on port 1: connections are refused at once.
const UNREACHABLE_DB: &str = "postgres://postgres@127.0.0.1:1/test";

/// Writes `config` as `adapter.toml` in `dir`; returns its path.
fn config_file(dir: &Path, config: &str) -> PathBuf {
    let path = dir.join("adapter.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Runs the binary with `--config <file>` and no `AUTH_ADAPTER__*` variables.
fn run(config: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), config);
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

/// The server's log into a pipe (a file, a collector) is plain text: no
/// terminal colour codes.
#[test]
fn serve_logs_without_colour_codes_when_not_on_a_terminal() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nissuer = \"http://127.0.0.1:9000\"\n\
             [database]\nurl = \"sqlite://{}/a.db\"\n",
            dir.path().display()
        ),
    );
    let mut child = adapter_command(&path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening") {
        line.clear();
        assert_ne!(
            stdout.read_line(&mut line).unwrap(),
            0,
            "no `listening` line"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains(" INFO "), "{line:?}");
    assert!(!line.contains('\x1b'), "{line:?}");
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

/// Runs `users …` against the SQLite database `db`, with `stdin` as input.
fn users(dir: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let path = config_file(
        dir,
        &format!(
            "[database]\nurl = \"sqlite://{}/users.db\"\n[accounts]\nenabled = true\n",
            dir.display()
        ),
    );
    let mut child = adapter_command(&path)
        .arg("users")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn users_add_list_disable_and_reset_password() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = users(
        d,
        &[
            "add",
            "alice",
            "--email",
            "Alice@Example.org",
            "--name",
            "Alice",
        ],
        "correct horse battery\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "added alice\n");
    // The same name again is refused with one line.
    let out = users(d, &["add", "alice"], "another password\n");
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim(), "Error: the username is taken");
    // A short password is refused.
    let out = users(d, &["add", "bob"], "short\n");
    assert_eq!(
        stderr(&out).trim(),
        "Error: the password must have at least 8 characters"
    );
    let out = users(d, &["list"], "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice\talice@example.org\tactive\t-\tdefault\n"
    );
    let out = users(d, &["set-policy", "alice", "sms"], "");
    assert_eq!(
        stderr(&out).trim(),
        "Error: policy must be password, password_totp, email_code, passkey, password_passkey or default"
    );
    let out = users(d, &["set-policy", "alice", "password_totp"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = users(d, &["disable", "alice"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = users(d, &["list"], "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice\talice@example.org\tdisabled\t-\tpassword_totp\n"
    );
    let out = users(d, &["reset-password", "nobody"], "long enough pw\n");
    assert_eq!(stderr(&out).trim(), "Error: no such account");
    let out = users(d, &["set-policy", "alice", "default"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = users(d, &["enable", "alice"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = users(d, &["reset-password", "alice"], "a brand new passphrase\n");
    assert!(out.status.success(), "{}", stderr(&out));

    // The server on that database logs alice in with the new password only.
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.issuer = Some("http://127.0.0.1:9000".into());
    config.database.url = format!("sqlite://{}/users.db", d.display());
    config.accounts.enabled = true;
    let app = Application::build(config).await.unwrap();
    let port = app.port();
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();
    let login = |password: &'static str| {
        let http = http.clone();
        async move {
            http.post(format!("http://127.0.0.1:{port}/login"))
                .json(&serde_json::json!({"username": "alice", "password": password}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(login("correct horse battery").await, 401);
    assert_eq!(login("a brand new passphrase").await, 200);
}
