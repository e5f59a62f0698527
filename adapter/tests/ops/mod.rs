//! Operations: readiness, graceful shutdown and garbage collection.

use std::sync::Arc;
use std::time::Duration;

use adapter::clock::Clock;
use adapter::startup::collect_garbage_once;
use adapter::{Application, Config};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::support::*;

/// Builds `config` on a fresh local port with `clock`; the issuer follows
/// the port.
async fn build(mut config: Config, clock: Arc<ManualClock>) -> (Application, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    config.server.issuer = Some(base.clone());
    let app = Application::build_with_clock(config, listener, clock)
        .await
        .unwrap();
    (app, base)
}

async fn readiness(base: &str) -> (StatusCode, Value) {
    let r = reqwest::get(format!("{base}/healthz/ready")).await.unwrap();
    (r.status(), r.json().await.unwrap())
}

/// Polls readiness until it is `want`, for at most `within`.
async fn wait_for_readiness(base: &str, want: StatusCode, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, body) = readiness(base).await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness stayed {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream never discovered makes the adapter unready, naming it (OIDC
/// Discovery §4: without its metadata no login can start); the background
/// discovery retries, and the adapter is ready once the upstream answers.
#[tokio::test]
async fn readiness_waits_for_the_first_upstream_discovery() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on yet: the upstream comes up late.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let issuer = format!("http://{upstream_addr}");
    let mut config = test_config(&format!("sqlite://{}/ops.db", dir.path().display()));
    config.local_users.clear();
    config.upstreams = vec![clients::upstream(
        UPSTREAM_ID,
        "Fake OP",
        &issuer,
        UPSTREAM_CLIENT_ID,
        UPSTREAM_SECRET,
    )
    .unwrap()];
    let (app, base) = build(config, Arc::new(ManualClock::new())).await;
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));

    let (status, body) = readiness(&base).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({ "status": "unavailable", "missing": [format!("upstream:{UPSTREAM_ID}")] })
    );

    let listener = tokio::net::TcpListener::bind(upstream_addr).await.unwrap();
    let _upstream = FakeOp::start_on(listener, UPSTREAM_CLIENT_ID, Tamper::None)
        .await
        .unwrap();
    // The retries pause 1 s, then 2 s, …: the first retry finds it.
    let body = wait_for_readiness(&base, StatusCode::OK, Duration::from_secs(5)).await;
    assert_eq!(body, json!({ "status": "ready" }));

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// On shutdown readiness turns 503 at once while the listener still
/// accepts; after `server.shutdown_grace_seconds` the server stops, but a
/// request in flight is answered first, not cut.
#[tokio::test]
async fn shutdown_turns_unready_then_drains_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&format!("sqlite://{}/ops.db", dir.path().display()));
    config.server.shutdown_grace_seconds = 1;
    let (app, base) = build(config, Arc::new(ManualClock::new())).await;
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    assert_eq!(
        readiness(&base).await,
        (StatusCode::OK, json!({ "status": "ready" }))
    );

    // A token request whose body is still on its way.
    let body = "grant_type=authorization_code&code=unknown";
    let mut slow = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..10]).await.unwrap();

    let started = tokio::time::Instant::now();
    let _ = stop.send(());
    let gone = wait_for_readiness(
        &base,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        gone,
        json!({ "status": "unavailable", "missing": ["shutting_down"] })
    );
    assert!(!server.is_finished(), "stopped before the grace period");

    // After the grace period the listener closes; the request in flight
    // still gets its answer (RFC 6749 §5.2: no client authentication).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    slow.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut response = Vec::new();
    slow.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 401 "),
        "in-flight request not answered: {response:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server did not stop after draining")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
            .await
            .is_err(),
        "the listener is still open"
    );
}

/// Garbage collection follows the injected clock, and each round deletes
/// at most its batch: logins and codes past their lifetime go, in bounded
/// rounds, while the session (longer-lived) stays usable.
#[tokio::test]
async fn garbage_collection_is_bounded_by_the_batch_and_follows_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&format!("sqlite://{}/ops.db", dir.path().display()));
    let ttl = config
        .tokens
        .login_ttl_seconds
        .max(config.tokens.code_ttl_seconds);
    assert!(ttl + 1 < config.session.ttl_seconds);
    let clock = Arc::new(ManualClock::new());
    let (app, base) = build(config, clock.clone()).await;
    let store = app.state().store.clone();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let t = TestApp::connect(&base);
    for _ in 0..3 {
        t.code().await;
    }
    // Nothing has expired yet.
    assert_eq!(
        collect_garbage_once(&*store, clock.now(), 100)
            .await
            .unwrap(),
        0
    );

    clock.advance(ttl + 1);
    let mut rounds = Vec::new();
    loop {
        let n = collect_garbage_once(&*store, clock.now(), 2).await.unwrap();
        rounds.push(n);
        if n == 0 {
            break;
        }
    }
    // The one login that asked for the password and three codes (the
    // other two were single sign-on, OIDC Core §3.1.2.1, without a login
    // record), two per round.
    assert_eq!(rounds, vec![2, 2, 0]);
    // The session outlives them: single sign-on still issues a code.
    let code = t.code().await;
    assert_eq!(t.redeem(&code).await.status(), StatusCode::OK);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
