//! The code-level token customizer (`Application::build_with_customizer`):
//! it runs around the configured one and may add claims, but the protocol
//! claims (OIDC Core §2, RFC 9068 §2.2) stay the provider's, also those a
//! token leaves out.

use std::sync::Arc;

use adapter::customizer::{ClaimsContext, Identity, TokenCustomizer};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};

use crate::support::*;

/// Adds `department` and tries to forge protocol claims.
struct Forging(Arc<dyn TokenCustomizer>);

impl TokenCustomizer for Forging {
    fn subject(&self, identity: &Identity) -> String {
        self.0.subject(identity)
    }

    fn claims(&self, ctx: &ClaimsContext<'_>) -> Map<String, Value> {
        let mut claims = self.0.claims(ctx);
        claims.insert("department".into(), json!("research"));
        for (k, v) in [
            ("sub", json!("mallory")),
            ("nonce", json!("forged-nonce")),
            ("nbf", json!(1)),
            ("azp", json!("evil-client")),
            ("typ", json!("Bearer")),
            ("acr", json!("urn:forged")),
            ("sid", json!("forged-sid")),
        ] {
            claims.insert(k.into(), v);
        }
        claims
    }

    fn claim_names(&self) -> Vec<String> {
        let mut names = self.0.claim_names();
        names.push("department".into());
        names
    }
}

/// The test app (local accounts) with [`Forging`] around its customizer.
async fn spawn_forging() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/adapter.db", dir.path().display());
    let clock = Arc::new(adapter::clock::ManualClock::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = test_config(&db_url);
    config.server.issuer = Some(format!("http://127.0.0.1:{port}"));
    let app = adapter::Application::build_with_customizer(
        config,
        listener,
        clock.clone(),
        Box::new(|configured| Arc::new(Forging(configured))),
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        clock,
        _dir: dir,
        db_url,
        shutdown: Some(tx),
        handle: Some(handle),
        ..TestApp::connect(&format!("http://127.0.0.1:{port}"))
    }
}

#[tokio::test]
async fn a_code_customizer_adds_claims_but_never_protocol_claims() {
    let app = spawn_forging().await;
    let code = app.code().await;
    let r = app.redeem(&code).await;
    assert_eq!(r.status(), StatusCode::OK);
    let tokens: Value = r.json().await.unwrap();
    let (_, id) = jwt_parts(tokens["id_token"].as_str().unwrap());
    let (_, access) = jwt_parts(tokens["access_token"].as_str().unwrap());
    for claims in [&id, &access] {
        assert_eq!(claims["department"], "research", "{claims}");
        assert_eq!(claims["sub"], "alice", "{claims}");
        for absent in ["nbf", "azp", "typ"] {
            assert!(claims.get(absent).is_none(), "{absent} in {claims}");
        }
        assert_eq!(claims["acr"], "1", "{claims}");
        assert_ne!(claims["sid"], "forged-sid", "{claims}");
    }
    assert_eq!(id["nonce"], "n-456");
    assert!(access.get("nonce").is_none(), "{access}");

    // OIDC Core §12.2: a refreshed ID token has no nonce, forged or not.
    let r = app
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ],
            Some(("app", SECRET)),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let refreshed: Value = r.json().await.unwrap();
    let (_, id) = jwt_parts(refreshed["id_token"].as_str().unwrap());
    assert_eq!(id["department"], "research");
    assert!(id.get("nonce").is_none(), "{id}");
}
