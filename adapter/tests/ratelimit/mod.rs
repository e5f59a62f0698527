//! Rate limits of the password form over real sockets (RFC 6585 §4: 429
//! with `Retry-After`, RFC 9110 §10.2.3): the per-IP quota on the injected
//! clock, `X-Forwarded-For` believed only from a trusted proxy, and the
//! per-account throttle kept in the store (SQLite and PostgreSQL).

use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use serde_json::Value;

use super::support::*;

/// A login form opened by one browser: its `req` and CSRF token.
struct Form {
    browser: reqwest::Client,
    req: String,
    csrf: String,
}

fn new_browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

impl Form {
    /// A fresh browser goes through authorize to the password form.
    async fn open(app: &TestApp) -> Form {
        let browser = new_browser();
        let r = browser.get(app.authorize_url(&[])).send().await.unwrap();
        let form_url = location(&r);
        assert!(form_url.starts_with("/login/local?req="), "{form_url}");
        let html = browser
            .get(format!("{}{form_url}", app.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        Form {
            req: hidden(&html, "req"),
            csrf: hidden(&html, "csrf_token"),
            browser,
        }
    }

    /// POSTs credentials, with extra headers.
    async fn submit_with(
        &self,
        app: &TestApp,
        username: &str,
        password: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .browser
            .post(format!("{}/login/local", app.base))
            .form(&[
                ("req", self.req.as_str()),
                ("csrf_token", self.csrf.as_str()),
                ("username", username),
                ("password", password),
            ]);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().await.unwrap()
    }

    async fn submit(&self, app: &TestApp, username: &str, password: &str) -> reqwest::Response {
        self.submit_with(app, username, password, &[]).await
    }
}

fn retry_after(r: &reqwest::Response) -> String {
    r.headers()
        .get(RETRY_AFTER)
        .unwrap_or_else(|| panic!("no Retry-After on {}", r.status()))
        .to_str()
        .unwrap()
        .to_string()
}

async fn scrape(app: &TestApp) -> String {
    app.rp
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn promtool_check(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-test-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\nin:\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// RFC 6585 §4: past the per-IP burst the form answers 429 with the exact
/// wait in `Retry-After` (an HTML page, or JSON when asked for), a forged
/// `X-Forwarded-For` from an untrusted peer does not escape the limit, and
/// moving the injected clock by that wait lifts it. Each refusal is counted
/// in `adapter_rate_limited_total{scope="login"}`, which promtool accepts.
#[tokio::test]
async fn per_ip_quota_answers_429_until_the_clock_moves() {
    let app = spawn_app_with(|c| {
        // Burst 3, then one attempt a minute.
        c.rate_limits.login.burst = 3;
        c.rate_limits.login.per_minute = 1;
    })
    .await;
    let form = Form::open(&app).await;
    // Different user names: only the per-IP quota is in play.
    for user in ["u1", "u2", "u3"] {
        let r = form.submit(&app, user, "wrong").await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{user}: the form again"
        );
    }
    let r = form.submit(&app, "u4", "wrong").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r), "60");
    let body = r.text().await.unwrap();
    assert!(
        body.contains("Too many attempts") && body.contains("60 seconds"),
        "{body}"
    );
    // The client's own X-Forwarded-For is not believed: still limited.
    for forged in ["203.0.113.1", "203.0.113.2, 198.51.100.3"] {
        let r = form
            .submit_with(
                &app,
                "alice",
                "correct horse",
                &[("x-forwarded-for", forged)],
            )
            .await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{forged}");
    }
    // JSON when the request asks for it.
    app.clock.advance(59);
    let r = form
        .submit_with(
            &app,
            "u5",
            "wrong",
            &[(ACCEPT.as_str(), "application/json")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r), "1");
    assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["error"], "rate_limited");
    assert!(json["error_description"]
        .as_str()
        .unwrap()
        .contains("1 second"));
    // The minute is over: one attempt again, then refused again.
    app.clock.advance(1);
    let r = form.submit(&app, "alice", "correct horse").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = Form::open(&app).await.submit(&app, "u6", "wrong").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r), "60");

    let metrics = scrape(&app).await;
    let series = "adapter_rate_limited_total{scope=\"login\"} 5";
    assert!(
        metrics.lines().any(|l| l == series),
        "{series} in:\n{metrics}"
    );
    assert!(
        metrics.contains("# HELP adapter_rate_limited_total"),
        "{metrics}"
    );
    promtool_check(&metrics);
}

/// Behind a trusted proxy the client is the rightmost `X-Forwarded-For`
/// address that is not a proxy: clients are limited one by one, and a
/// client's forged leftmost entry changes nothing.
#[tokio::test]
async fn forwarded_for_is_honoured_from_a_trusted_proxy() {
    let app = spawn_app_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
        c.rate_limits.login.burst = 2;
        c.rate_limits.login.per_minute = 1;
    })
    .await;
    let form = Form::open(&app).await;
    let client = [("x-forwarded-for", "203.0.113.7")];
    for user in ["u1", "u2"] {
        let r = form.submit_with(&app, user, "wrong", &client).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = form.submit_with(&app, "u3", "wrong", &client).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r), "60");
    // The same client forging an earlier hop: the proxy appended .7.
    let r = form
        .submit_with(
            &app,
            "u3",
            "wrong",
            &[("x-forwarded-for", "198.51.100.1, 203.0.113.7")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy has its own quota.
    let r = form
        .submit_with(&app, "u4", "wrong", &[("x-forwarded-for", "203.0.113.8")])
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A request of the proxy itself (no header) is the proxy's.
    let r = form.submit(&app, "u5", "wrong").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// Five failures of one account in the window are free; from the sixth on
/// each failure blocks the account for 2, 4, 8, 16, then at most 30
/// seconds, whatever the address and even for the right password; other
/// accounts are not affected; a success forgets the failures.
async fn account_throttle_doubles_to_30_seconds_and_success_resets(db_url: Option<&str>) {
    let app = spawn_app_with(|c| {
        if let Some(url) = db_url {
            c.database.url = url.to_string();
            // PostgreSQL means replicas: the signing keys are sealed with
            // a key they share.
            std::env::set_var(
                "AUTH_ADAPTER_TEST_RATELIMIT_KEYS_KEY",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &adapter::secret::random_token().as_bytes()[..32],
                ),
            );
            c.keys.encryption_key_env = Some("AUTH_ADAPTER_TEST_RATELIMIT_KEYS_KEY".into());
        }
        // Only the per-account throttle is in play.
        c.rate_limits.login.burst = 1000;
    })
    .await;
    let form = Form::open(&app).await;
    for i in 1..=5 {
        let r = form.submit(&app, "alice", "wrong").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "free failure {i}");
    }
    for expected in [2, 4, 8, 16, 30, 30] {
        // This failure starts the block...
        let r = form.submit(&app, "alice", "wrong").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // ...which refuses even the right password, under any spelling.
        for user in ["alice", " ALICE"] {
            let r = form.submit(&app, user, "correct horse").await;
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{user}");
            assert_eq!(retry_after(&r), expected.to_string());
        }
        // Another account is free to try.
        let r = form.submit(&app, "bob", "wrong").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        app.clock.advance(expected - 1);
        let r = form.submit(&app, "alice", "correct horse").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry_after(&r), "1");
        app.clock.advance(1);
    }
    // The block is over: the right password logs in and resets the count.
    let r = form.submit(&app, "alice", "correct horse").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // Counting starts over: five free failures, and the sixth blocks for
    // 2 seconds again.
    let form = Form::open(&app).await;
    for i in 1..=6 {
        let r = form.submit(&app, "alice", "wrong").await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "failure {i} after reset"
        );
    }
    let r = form.submit(&app, "alice", "correct horse").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r), "2");
}

#[tokio::test]
async fn account_throttle_on_sqlite() {
    account_throttle_doubles_to_30_seconds_and_success_resets(None).await;
}

#[tokio::test]
async fn account_throttle_on_postgres() {
    let schema = testkit::pg::PgSchema::create().await.unwrap();
    account_throttle_doubles_to_30_seconds_and_success_resets(Some(&schema.url)).await;
    schema.drop_schema().await.unwrap();
}

/// With `rate_limits.enabled = false` nothing is limited (load tests).
#[tokio::test]
async fn disabled_limits_refuse_nothing() {
    let app = spawn_app_with(|c| {
        c.rate_limits.enabled = false;
        c.rate_limits.login.burst = 1;
    })
    .await;
    let form = Form::open(&app).await;
    for _ in 0..8 {
        let r = form.submit(&app, "alice", "wrong").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}
