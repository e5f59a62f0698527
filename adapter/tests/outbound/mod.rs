//! The adapter's outbound HTTP client, against real misbehaving servers:
//! it follows no redirect (an upstream cannot send it elsewhere, RFC 9700
//! §4.4 and SSRF), caps response bodies at 1 MiB and gives up after the
//! upstream's `timeout_seconds`. Each failure is `Unavailable`, which the
//! relying party sees as `temporarily_unavailable` (RFC 6749 §4.1.2.1).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adapter::clock::SystemClock;
use adapter::config::UpstreamConfig;
use adapter::connector::oidc::OidcConnector;
use adapter::connector::{BeginRequest, CallbackConnector, ConnectorError};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Serves `router` on 127.0.0.1:0; its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// Valid discovery metadata of `issuer` (OIDC Discovery §3).
fn metadata(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })
}

fn connector(issuer: &str, timeout_seconds: u64) -> OidcConnector {
    let config: UpstreamConfig = serde_json::from_value(json!({
        "id": "corp",
        "issuer": issuer,
        "client_id": "adapter",
        "timeout_seconds": timeout_seconds,
    }))
    .unwrap();
    OidcConnector::new(&config, Some("secret".into()), Arc::new(SystemClock)).unwrap()
}

/// `begin` of a login at `connector`: it discovers the upstream first.
async fn begin(connector: &OidcConnector) -> Result<String, ConnectorError> {
    connector
        .begin(&BeginRequest {
            callback_url: "http://127.0.0.1:1/login/oauth2/code/corp",
            state: "state-1",
            prompt: None,
            max_age: None,
            login_hint: None,
        })
        .await
        .map(|r| r.redirect_url)
}

fn unavailable(r: Result<String, ConnectorError>) -> String {
    match r {
        Err(ConnectorError::Unavailable(e)) => e,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// A well-behaved upstream at a router whose discovery is `discovery`.
fn upstream(discovery: axum::routing::MethodRouter) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", discovery)
        .route("/jwks", get(|| async { Json(json!({"keys": []})) }))
}

#[tokio::test]
async fn a_redirect_is_never_followed() {
    // Where the redirect points: a perfectly valid provider that counts.
    let hits = Arc::new(AtomicU32::new(0));
    let counted = hits.clone();
    let elsewhere = serve(Router::new().route(
        "/.well-known/openid-configuration",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::NOT_FOUND }
        }),
    ))
    .await;
    let target = format!("{elsewhere}/.well-known/openid-configuration");
    let redirecting = serve(upstream(get(move || {
        let target = target.clone();
        async move { (StatusCode::FOUND, [(header::LOCATION, target)]).into_response() }
    })))
    .await;
    let e = unavailable(begin(&connector(&redirecting, 15)).await);
    assert!(e.contains("discovery"), "{e}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_refused() {
    let issuer = Arc::new(std::sync::OnceLock::<String>::new());
    let seen = issuer.clone();
    let base = serve(upstream(get(move || {
        let mut m = metadata(seen.get().unwrap());
        // Valid JSON, 1 MiB and a bit.
        m["padding"] = json!("x".repeat(1024 * 1024));
        async move { Json(m) }
    })))
    .await;
    issuer.set(base.clone()).unwrap();
    let e = unavailable(begin(&connector(&base, 15)).await);
    assert!(e.contains("larger than 1048576 bytes"), "{e}");
}

#[tokio::test]
async fn a_slow_upstream_times_out_after_timeout_seconds() {
    let issuer = Arc::new(std::sync::OnceLock::<String>::new());
    let seen = issuer.clone();
    // Valid metadata, three seconds late.
    let base = serve(upstream(get(move || {
        let m = metadata(seen.get().unwrap());
        async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(m)
        }
    })))
    .await;
    issuer.set(base.clone()).unwrap();
    let e = unavailable(begin(&connector(&base, 1)).await);
    assert!(e.contains("discovery"), "{e}");
    // Positive control: the same upstream with time enough is fine.
    let url = begin(&connector(&base, 10)).await.unwrap();
    assert!(url.starts_with(&format!("{base}/authorize?")), "{url}");
}
