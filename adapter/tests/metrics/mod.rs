//! `/metrics`: the Prometheus text exposition format (version 0.0.4), one
//! registry per application, bounded labels.

use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde_json::Value;

use super::support::*;

async fn scrape(app: &TestApp) -> String {
    let r = app
        .rp
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()[CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    r.text().await.unwrap()
}

/// The value of the series spelled exactly `series` (name and labels).
fn value(body: &str, series: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_string)
}

fn assert_series(body: &str, series: &str, expected: &str) {
    assert_eq!(
        value(body, series).as_deref(),
        Some(expected),
        "{series} in:\n{body}"
    );
}

/// Browser: a wrong password on the local form (one failed attempt).
async fn wrong_password(app: &TestApp) {
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    let form_url = location(&r);
    let html = app
        .browser
        .get(format!("{}{form_url}", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = app
        .browser
        .post(format!("{}/login/local", app.base))
        .form(&[
            ("req", hidden(&html, "req")),
            ("csrf_token", hidden(&html, "csrf_token")),
            ("username", "alice".into()),
            ("password", "wrong".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the form again");
}

/// After one failed and one successful login and one code redemption, the
/// series count exactly those, under route templates and configured
/// connector ids; no user name, code, token or raw path is in any label.
#[tokio::test]
async fn metrics_count_logins_tokens_and_requests_by_route() {
    let app = spawn_app().await;
    wrong_password(&app).await;
    let code = app.code().await;
    let r = app.redeem(&code).await;
    assert_eq!(r.status(), StatusCode::OK);
    let tokens: Value = r.json().await.unwrap();

    let body = scrape(&app).await;
    // Two logins started at `local` (the failed one, then the good one).
    assert_series(
        &body,
        r#"adapter_logins_started_total{connector="local"}"#,
        "2",
    );
    assert_series(
        &body,
        r#"adapter_logins_succeeded_total{connector="local"}"#,
        "1",
    );
    assert_series(
        &body,
        r#"adapter_logins_failed_total{connector="local",reason="bad_credentials"}"#,
        "1",
    );
    for token in ["access_token", "id_token"] {
        assert_series(
            &body,
            &format!(
                r#"adapter_tokens_issued_total{{grant_type="authorization_code",token="{token}",alg="RS256"}}"#
            ),
            "1",
        );
    }
    assert_series(
        &body,
        r#"adapter_http_requests_total{method="POST",route="/oauth2/token",status="200"}"#,
        "1",
    );
    assert_series(
        &body,
        r#"adapter_http_request_duration_seconds_count{method="POST",route="/oauth2/token",status="200"}"#,
        "1",
    );
    // The form was shown twice (GET) and posted twice: once answered with
    // the form again (401), once with 303 to the client.
    assert_series(
        &body,
        r#"adapter_http_requests_total{method="GET",route="/login/{connector}",status="200"}"#,
        "2",
    );
    assert_series(
        &body,
        r#"adapter_http_requests_total{method="POST",route="/login/{connector}",status="303"}"#,
        "1",
    );
    assert_series(
        &body,
        r#"adapter_http_requests_total{method="POST",route="/login/{connector}",status="401"}"#,
        "1",
    );
    assert_series(&body, "adapter_active_sessions", "1");
    assert_series(
        &body,
        r#"adapter_store_operation_duration_seconds_count{operation="count_sessions"}"#,
        "1",
    );
    // SQLite's writer: each login's record is inserted and saved once
    // (the refusal, the success), the good login's session and code are
    // one job, the redemption another: six jobs, one after the other, so
    // six commits. Nothing else went through it.
    assert_series(&body, "adapter_store_writer_jobs_total", "6");
    assert_series(&body, "adapter_store_writer_commits_total", "6");
    assert_eq!(
        value(&body, "adapter_refresh_token_reuse_detected_total"),
        None
    );

    // Bounded labels: nothing the user or the request chose.
    for secret in [
        code.as_str(),
        "alice",
        "wrong",
        "correct horse",
        tokens["access_token"].as_str().unwrap(),
        tokens["id_token"].as_str().unwrap(),
        "req=",
        "st-123",
        "/login/local",
    ] {
        assert!(!body.contains(secret), "{secret:?} in:\n{body}");
    }
}

/// A request to no route is counted as `unmatched`, never under its path;
/// an upstream login records the upstream's calls under its configured id.
#[tokio::test]
async fn metrics_label_unmatched_routes_and_upstream_calls() {
    let upstream = start_fake_upstream(Tamper::None).await;
    let app = spawn_app_with_upstream(&upstream.issuer).await;
    let r = app
        .rp
        .get(format!("{}/no/such/alice-secret-path", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let loc = app
        .login_through_upstream(&upstream.authorization_endpoint())
        .await;
    assert!(loc.starts_with(REDIRECT), "{loc}");

    let body = scrape(&app).await;
    assert_series(
        &body,
        r#"adapter_http_requests_total{method="GET",route="unmatched",status="404"}"#,
        "1",
    );
    assert!(!body.contains("alice-secret-path"), "{body}");
    let id = UPSTREAM_ID;
    assert_series(
        &body,
        &format!(r#"adapter_logins_succeeded_total{{connector="{id}"}}"#),
        "1",
    );
    assert_series(
        &body,
        &format!(
            r#"adapter_upstream_request_duration_seconds_count{{upstream="{id}",operation="token"}}"#
        ),
        "1",
    );
    assert_series(
        &body,
        &format!(
            r#"adapter_upstream_request_duration_seconds_count{{upstream="{id}",operation="discovery"}}"#
        ),
        "1",
    );
    assert!(!body.contains("adapter_upstream_errors_total{"), "{body}");
}

/// `promtool check metrics` (the Prometheus project's linter) accepts the
/// whole exposition after a login and a redemption.
#[tokio::test]
async fn metrics_pass_promtool_check() {
    let app = spawn_app().await;
    wrong_password(&app).await;
    let code = app.code().await;
    assert_eq!(app.redeem(&code).await.status(), StatusCode::OK);
    let body = scrape(&app).await;

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

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.token(
        &[("grant_type", "refresh_token"), ("refresh_token", token)],
        Some(("app", SECRET)),
    )
    .await
}

/// RFC 9700 §4.14.2: a rotated refresh token presented again is counted
/// once as a reuse; the refresh grant's tokens are counted under
/// `refresh_token`, and the session the reuse ended is no longer active.
#[tokio::test]
async fn metrics_count_refresh_tokens_and_reuse() {
    let app = spawn_app_with(|c| c.clients[0].allowed_scopes.push("offline_access".into())).await;
    let loc = app.login(&[("scope", "openid offline_access")]).await;
    let code = query(&loc)["code"].as_str().unwrap().to_string();
    let t0: Value = app.redeem(&code).await.json().await.unwrap();
    let r0 = t0["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(refresh(&app, &r0).await.status(), StatusCode::OK);
    assert_eq!(
        scrape(&app)
            .await
            .lines()
            .find(|l| l.starts_with("adapter_active_sessions ")),
        Some("adapter_active_sessions 1")
    );
    assert_eq!(refresh(&app, &r0).await.status(), StatusCode::BAD_REQUEST);

    let body = scrape(&app).await;
    assert_series(&body, "adapter_refresh_token_reuse_detected_total", "1");
    assert_series(
        &body,
        r#"adapter_tokens_issued_total{grant_type="refresh_token",token="access_token",alg="RS256"}"#,
        "1",
    );
    assert_series(
        &body,
        r#"adapter_http_requests_total{method="POST",route="/oauth2/token",status="400"}"#,
        "1",
    );
    assert_series(&body, "adapter_active_sessions", "0");
    assert!(!body.contains(&r0), "{body}");
}
