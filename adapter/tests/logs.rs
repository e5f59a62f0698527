//! Secrets never reach the logs (RFC 6749 §10.3, §10.5), in a test binary
//! of its own: it installs a log subscriber, which must not race with other
//! tests of the same process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;

mod support;
use support::*;

/// A `MakeWriter` that keeps everything logged in memory.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// RFC 6749 §10.3, §10.5, §10.12; RFC 7636 §4.1: no secret of a login in
/// any log line, and a request id on request lines. Secrets looked for: the
/// client's state and nonce, the login form's pending-request id and CSRF
/// token, the transaction and session cookie values, the password, the
/// code, the PKCE verifier, the tokens and the client secrets; for a login
/// through an upstream also the adapter's upstream state, nonce and PKCE
/// challenge and verifier, the upstream's code and tokens, and the
/// adapter's secret at the upstream. The test runs on a current-thread
/// runtime, so the thread-local subscriber sees the server's logs too.
#[tokio::test]
async fn logs_carry_request_ids_and_no_secrets() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut secrets: Vec<(&str, String)> = Vec::new();

    // 1. A local login, step by step, keeping every secret it produces.
    let app = spawn_app().await;
    let state = random_string(16);
    let nonce = random_string(16);
    secrets.push(("client state", state.clone()));
    secrets.push(("client nonce", nonce.clone()));
    let r = app
        .browser
        .get(app.authorize_url(&[("state", &state), ("nonce", &nonce)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    secrets.push(("transaction cookie", cookie_value(&r, "AUTH_ADAPTER_TX")));
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
    let req = hidden(&html, "req");
    let csrf = hidden(&html, "csrf_token");
    secrets.push(("pending request id", req.clone()));
    secrets.push(("csrf token", csrf.clone()));
    secrets.push(("password", "correct horse".into()));
    let r = app
        .browser
        .post(format!("{}/login/local", app.base))
        .form(&[
            ("req", req),
            ("csrf_token", csrf),
            ("username", "alice".into()),
            ("password", "correct horse".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    secrets.push(("session cookie", cookie_value(&r, "AUTH_ADAPTER_SESSION")));
    let q = query(&location(&r));
    assert_eq!(q["state"], state.as_str());
    let code = q["code"].as_str().unwrap().to_string();
    secrets.push(("code", code.clone()));
    let tokens: Value = app.redeem(&code).await.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_string();
    secrets.push(("access token", access.clone()));
    secrets.push(("id token", tokens["id_token"].as_str().unwrap().into()));
    secrets.push(("PKCE verifier", VERIFIER.into()));
    secrets.push(("client secret", SECRET.into()));
    let r = app
        .rp
        .get(format!("{}/userinfo", app.base))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A failed client authentication is logged too.
    let _ = app
        .token(
            &[("grant_type", "authorization_code"), ("code", "guess")],
            Some(("app", "wrong-secret-value")),
        )
        .await;
    secrets.push(("wrong client secret", "wrong-secret-value".into()));

    // 2. A login through an OIDC upstream.
    let fake = start_fake_upstream(Tamper::None).await;
    let behind = spawn_app_with_upstream(&fake.issuer).await;
    let up_state = random_string(16);
    let to_client = behind
        .login_through_upstream_with(&fake.authorization_endpoint(), &[("state", &up_state)])
        .await;
    secrets.push(("client state (upstream login)", up_state));
    let code = query(&to_client)["code"].as_str().unwrap().to_string();
    secrets.push(("code (upstream login)", code.clone()));
    let tokens: Value = behind.redeem(&code).await.json().await.unwrap();
    secrets.push((
        "access token (upstream login)",
        tokens["access_token"].as_str().unwrap().into(),
    ));
    secrets.push((
        "id token (upstream login)",
        tokens["id_token"].as_str().unwrap().into(),
    ));
    let sent = &fake.authorize_requests()[0];
    for name in ["state", "nonce", "code_challenge"] {
        secrets.push((name, sent.get(name).unwrap().to_string()));
    }
    let redeemed = &fake.token_requests()[0];
    for name in ["code", "code_verifier"] {
        secrets.push((name, redeemed.params[name].clone()));
    }
    let (up_id, up_access) = fake.issued().unwrap();
    secrets.push(("upstream id token", up_id));
    secrets.push(("upstream access token", up_access));
    secrets.push(("upstream client secret", UPSTREAM_SECRET.into()));

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("request_id="),
        "request lines carry an id:\n{text}"
    );
    assert!(
        text.contains("login succeeded"),
        "the login itself is logged"
    );
    assert!(
        text.contains("connector=fake-op"),
        "the upstream login is logged:\n{text}"
    );
    for (what, secret) in &secrets {
        assert!(
            secret.len() >= 8,
            "{what} is too short to search for: {secret:?}"
        );
        assert!(
            !text.contains(secret.as_str()),
            "the {what} reached the logs: {secret}"
        );
    }
    assert!(!text.contains("code="), "no query strings in logs");
}

/// The value of the cookie `name` set by `r`.
fn cookie_value(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.split(';')
                .next()?
                .strip_prefix(&format!("{name}="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no {name} cookie set"))
}

fn random_string(bytes: usize) -> String {
    testkit::rp::random_string(bytes)
}

/// Mail logs name the recipient's domain and, without SMTP, where to read
/// the mail; never the address, the body or the code in it.
#[tokio::test]
async fn mail_logs_name_the_domain_only() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        // Timestamps carry 6-digit fractions: none may pass for the code.
        .without_time()
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = test_config(&format!("sqlite://{}/m.db", dir.path().display()));
    config.server.issuer = Some(format!(
        "http://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    ));
    let app =
        adapter::Application::build_with_clock(config, listener, Arc::new(ManualClock::new()))
            .await
            .unwrap();
    let st = app.state();
    st.email_codes
        .issue("login", "zed.secret-name@mail.example")
        .await
        .unwrap();
    let body = st.store.recent_mail(1).await.unwrap().remove(0).body;
    let code = body
        .split_whitespace()
        .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
        .unwrap()
        .to_owned();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("no SMTP server is configured") && text.contains("/dev/outbox"),
        "the start-up warning:\n{text}"
    );
    let queued = text
        .lines()
        .find(|l| l.contains("mail queued"))
        .unwrap_or_else(|| panic!("no queued line:\n{text}"));
    assert!(queued.contains("domain=mail.example"), "{queued}");
    assert!(queued.contains("/dev/outbox"), "{queued}");
    assert!(
        !text.contains("zed.secret-name"),
        "the address reached the logs:\n{text}"
    );
    assert!(!text.contains(&code), "the code reached the logs:\n{text}");
}
