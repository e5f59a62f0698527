//! A PostgreSQL outage mid-run, on a private cluster this test starts on
//! its own port (never the shared server): the adapter answers 503
//! (`temporarily_unavailable` at the token endpoint, RFC 6749 §5.2 JSON;
//! pages elsewhere), never panics nor half-writes a login, reconnects by
//! itself and serves again when the database is back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::support::*;

/// A throw-away PostgreSQL cluster; stopped (immediately) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    /// `runuser -u postgres --` when running as root (initdb refuses root).
    as_user: Vec<String>,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, program: &str, args: &[&str]) {
        let mut command = match self.as_user.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        let out = command.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn init() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        let as_user: Vec<String> = if root {
            let owner = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(owner.success(), "chown of the cluster directory");
            ["runuser", "-u", "postgres", "--"]
                .map(String::from)
                .to_vec()
        } else {
            Vec::new()
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cluster = Cluster { dir, port, as_user };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        cluster
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&self.data()),
                "-o",
                &options,
                "-l",
                path(&log),
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", path(&self.data()), "-m", "fast", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let mut command = match self.as_user.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg("pg_ctl");
                c
            }
            None => Command::new("pg_ctl"),
        };
        let _ = command
            .args(["-D", path(&data), "-m", "immediate", "stop"])
            .output();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The login form's hidden fields, fetched while the database is up.
async fn login_form(app: &TestApp) -> Vec<(&'static str, String)> {
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let form_url = location(&r);
    let r = app
        .browser
        .get(format!("{}{form_url}", app.base))
        .send()
        .await
        .unwrap();
    let html = r.text().await.unwrap();
    vec![
        ("req", hidden(&html, "req")),
        ("csrf_token", hidden(&html, "csrf_token")),
        ("username", "alice".into()),
        ("password", "correct horse".into()),
    ]
}

async fn post_login(app: &TestApp, form: &[(&'static str, String)]) -> reqwest::Response {
    app.browser
        .post(format!("{}/login/local", app.base))
        .form(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn postgres_outage_is_503_and_the_adapter_recovers() {
    let cluster = Cluster::init();
    cluster.start();
    let mut config = test_config(&cluster.url());
    std::env::set_var(
        "AUTH_ADAPTER_TEST_OUTAGE_KEYS_KEY",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            &adapter::secret::random_token().as_bytes()[..32],
        ),
    );
    config.keys.encryption_key_env = Some("AUTH_ADAPTER_TEST_OUTAGE_KEYS_KEY".into());
    let (port, stop, handle) = start(config, Arc::new(ManualClock::new()), 0).await;
    let base = format!("http://127.0.0.1:{port}");
    let app = TestApp::connect(&base);
    let ready = || async {
        let r = reqwest::get(format!("{base}/healthz/ready")).await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(ready().await.0, StatusCode::OK);

    // Before the outage: a code not redeemed yet, and a login form open in
    // a second browser.
    let code = app.code().await;
    let other = TestApp::connect(&base);
    let form = login_form(&other).await;

    cluster.stop();

    // The token endpoint: RFC 6749 §5.2 JSON, 503, within seconds.
    let asked = Instant::now();
    let r = app.redeem(&code).await;
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the token request hung for {:?}",
        asked.elapsed()
    );
    assert_eq!(
        error_of(r).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable".to_string()
        )
    );
    // Pages: a 503 page, not a 500 nor a dropped connection.
    let r = post_login(&other, &form).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.unwrap().contains("Temporarily unavailable"));
    let r = app
        .browser
        .get(app.authorize_url(&[("prompt", "login")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready().await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "unavailable", "missing": ["database"] })
        )
    );

    cluster.start();

    // The pool reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    while ready().await.0 != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "not ready after the database returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing was half-done: the code is still redeemable once, and the
    // login whose submission failed completes now.
    assert_eq!(app.redeem(&code).await.status(), StatusCode::OK);
    let r = post_login(&other, &form).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to_client = location(&r);
    assert!(to_client.starts_with(REDIRECT), "{to_client}");
    let second = query(&to_client)["code"].as_str().unwrap().to_string();
    assert_eq!(other.redeem(&second).await.status(), StatusCode::OK);

    let _ = stop.send(());
    handle.await.unwrap();
    drop(cluster);
}
