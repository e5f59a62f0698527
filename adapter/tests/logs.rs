//! G9 in a test binary of its own: it installs a log subscriber, which
//! must not race with other tests of the same process.
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

/// G9: no code, token, password, secret or session id in any log line, and
/// a request id on request lines. The test runs on a current-thread runtime,
/// so the thread-local subscriber sees the server's logs too.
#[tokio::test]
async fn logs_carry_request_ids_and_no_secrets_g9() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = spawn_app().await;
    let code = app.code().await;
    let tokens: Value = app.redeem(&code).await.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    let r = app
        .rp
        .get(format!("{}/userinfo", app.base))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A failed login and a failed client authentication are logged too.
    let _ = app
        .token(
            &[("grant_type", "authorization_code"), ("code", "guess")],
            Some(("app", "wrong-secret-value")),
        )
        .await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("request_id="),
        "request lines carry an id:\n{text}"
    );
    assert!(
        text.contains("login succeeded"),
        "the login itself is logged"
    );
    for secret in [
        code.as_str(),
        access,
        tokens["id_token"].as_str().unwrap(),
        "correct horse",
        SECRET,
        "wrong-secret-value",
        "n-456",
    ] {
        assert!(
            !text.contains(secret),
            "a secret reached the logs: {secret}"
        );
    }
    assert!(!text.contains("code="), "no query strings in logs");
}
