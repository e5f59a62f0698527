//! Customizing claims: the rules for userinfo (OIDC Core §5.3.2), and the
//! code-level token customizer (`Application::build_with_customizer`):
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
    spawn_app_wrapped(|_| {}, Box::new(|configured| Arc::new(Forging(configured)))).await
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

/// A rule for userinfo only is served by `/userinfo` (OIDC Core §5.3.2)
/// and kept out of the access token; a rule for the access token only is
/// kept out of userinfo. The protocol claims stay (`sub` of the token).
#[tokio::test]
async fn userinfo_runs_the_rules_for_userinfo() {
    let app = spawn_app_with(|c| {
        c.claims.customizer = adapter::config::CustomizerKind::Mapped;
        for (claim, expr, token) in [
            ("office", "'B-204'", adapter::config::TokenName::Userinfo),
            (
                "api_roles",
                "['reader']",
                adapter::config::TokenName::Access,
            ),
        ] {
            c.claims.rules.push(adapter::config::ClaimRule {
                claim: claim.into(),
                expr: expr.into(),
                tokens: vec![token],
                when: None,
            });
        }
    })
    .await;
    let code = app.code().await;
    let tokens: Value = app.redeem(&code).await.json().await.unwrap();
    let access_token = tokens["access_token"].as_str().unwrap();
    let (_, access) = jwt_parts(access_token);
    assert_eq!(access["api_roles"], json!(["reader"]));
    assert!(access.get("office").is_none(), "{access}");

    let r = app
        .rp
        .get(format!("{}/userinfo", app.base))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["office"], "B-204", "{info}");
    assert!(info.get("api_roles").is_none(), "{info}");
    assert_eq!(info["sub"], access["sub"]);
    assert_eq!(info["name"], "Alice Example", "{info}");
}
