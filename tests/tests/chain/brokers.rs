//! A chain of two brokers: test-app → outer adapter → inner adapter →
//! upstream-test-server. The outer adapter is an OpenID relying party of
//! the inner one like of any OpenID Provider; with the shipped mapping the
//! roles the inner broker made from the user's groups reach the test-app
//! (the inner adapter releases `authorities` in its ID token, the outer's
//! default rule keeps an upstream's own `authorities`).

use e2e::chain::{AuthRequest, RpClient, TestChain, Upstream, UPSTREAM_ID};
use e2e::rp::{self, expect_redirect, param, random_string, without_query, Agent};
use serde_json::json;
use tokio::net::TcpListener;

/// The outer adapter's client id at the inner one.
const OUTER_AT_INNER: &str = "outer-adapter";
/// A group of the demo user at the upstream-test-server.
const GROUP: &str = "chain-admins";

/// The inner chain (upstream-test-server and inner adapter, no test-app)
/// and the outer one (outer adapter and test-app, the inner adapter as its
/// upstream).
async fn two_brokers() -> (TestChain, TestChain) {
    let outer_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outer_issuer = format!("http://{}", outer_listener.local_addr().unwrap());
    let secret = random_string(24);
    let outer_client = RpClient {
        id: OUTER_AT_INNER.into(),
        secret: secret.clone(),
        // The outer adapter's callback for its upstream (RFC 9700 §4.4.2.2).
        redirect_uri: format!("{outer_issuer}/login/oauth2/code/{UPSTREAM_ID}"),
    };
    let inner = TestChain::builder()
        .test_app(false)
        .tweak_upstream(|c| c.local_users[0].groups.push(GROUP.into()))
        .tweak_adapter(move |c| {
            // Browsers share cookies between the ports of one host.
            c.session.cookie_name = "INNER_ADAPTER_SESSION".into();
            c.session.transaction_cookie_name = "INNER_ADAPTER_TXN".into();
            c.clients
                .push(e2e::chain::client_config(&outer_client, "Outer Adapter").unwrap());
        })
        .start()
        .await
        .unwrap();
    let outer = TestChain::builder()
        .adapter_listener(outer_listener)
        .upstream(Upstream::External {
            issuer: inner.adapter_issuer.clone(),
            client_id: OUTER_AT_INNER.into(),
            client_secret: secret,
        })
        .start()
        .await
        .unwrap();
    (inner, outer)
}

#[tokio::test]
async fn the_outer_broker_keeps_the_inner_brokers_roles() {
    let (inner, outer) = two_brokers().await;
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&outer.app);

    // test-app → outer adapter → inner adapter (OIDC Core §3.1.2.1).
    let resp = agent.get(&outer.authorize_url(&req)).await.unwrap();
    let to_inner = expect_redirect(&resp, "outer /oauth2/authorize").unwrap();
    assert_eq!(without_query(&to_inner), inner.adapter("/oauth2/authorize"));
    assert_eq!(
        param(&to_inner, "client_id").as_deref(),
        Some(OUTER_AT_INNER)
    );
    assert_eq!(
        param(&to_inner, "redirect_uri"),
        Some(outer.upstream_callback())
    );
    // inner adapter → upstream-test-server, its login form, and back.
    let resp = agent.get(to_inner.as_str()).await.unwrap();
    let to_upstream = expect_redirect(&resp, "inner /oauth2/authorize").unwrap();
    assert_eq!(
        without_query(&to_upstream),
        inner.upstream("/oauth2/authorize")
    );
    let to_inner_callback = inner.login_at_upstream(&agent, &to_upstream).await.unwrap();
    assert_eq!(without_query(&to_inner_callback), inner.upstream_callback());
    // inner adapter → outer adapter's callback, with its `iss` (RFC 9207 §2).
    let resp = agent.get(to_inner_callback.as_str()).await.unwrap();
    let to_outer_callback = expect_redirect(&resp, "inner callback").unwrap();
    assert_eq!(without_query(&to_outer_callback), outer.upstream_callback());
    assert_eq!(
        param(&to_outer_callback, "iss").as_deref(),
        Some(inner.adapter_issuer.as_str())
    );
    // outer adapter → the test-app with a code.
    let resp = agent.get(to_outer_callback.as_str()).await.unwrap();
    let to_app = expect_redirect(&resp, "outer callback").unwrap();
    assert_eq!(without_query(&to_app), outer.app.redirect_uri);
    assert_eq!(param(&to_app, "state").as_deref(), Some(req.state.as_str()));
    assert_eq!(
        param(&to_app, "iss").as_deref(),
        Some(outer.adapter_issuer.as_str())
    );

    let code = param(&to_app, "code").unwrap();
    let grant = e2e::chain::CodeGrant {
        request: req.clone(),
        code,
        redirect: to_app,
    };
    let tokens = outer
        .redeem(&agent, &grant, &outer.app.basic())
        .await
        .unwrap();
    assert_eq!(tokens.status, 200, "{}", tokens.text);
    let (_, id) = rp::verify_jwt(
        &agent.http,
        &outer.adapter("/oauth2/jwks"),
        tokens.str("id_token").unwrap(),
        &outer.adapter_issuer,
        &outer.app.id,
    )
    .await
    .unwrap();
    let (_, access) = rp::decode_unverified(tokens.str("access_token").unwrap()).unwrap();
    let roles = json!(["ROLE_USER", "ROLE_CHAIN_ADMINS"]);
    for (what, claims) in [("id token", &id), ("access token", &access)] {
        assert_eq!(claims["iss"], outer.adapter_issuer.as_str(), "{what}");
        assert_eq!(claims["sub"], "testuser", "{what}: {claims}");
        assert_eq!(claims["authorities"], roles, "{what}: {claims}");
    }
}
