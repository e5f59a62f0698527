//! `prompt`, `max_age` and `auth_time` across the whole chain (OIDC Core
//! §3.1.2.1, §2): the adapter and the upstream-test-server share one manual
//! clock, so both sessions age alike and nothing sleeps.

use e2e::chain::{AuthRequest, TestChain};
use e2e::rp::{self, expect_redirect, param, Agent};
use serde_json::Value;
use url::Url;

async fn chain() -> TestChain {
    TestChain::builder()
        .test_app(false)
        .manual_clock(true)
        .start()
        .await
        .unwrap()
}

/// The authorization URL of `req` with extra parameters.
fn authorize_url(chain: &TestChain, req: &AuthRequest, extra: &[(&str, &str)]) -> String {
    let mut url = Url::parse(&chain.authorize_url(req)).unwrap();
    url.query_pairs_mut().extend_pairs(extra);
    url.to_string()
}

/// Redeems the code in `to_rp` and returns the verified ID token claims.
async fn id_token(chain: &TestChain, agent: &Agent, req: AuthRequest, to_rp: Url) -> Value {
    chain.id_token_claims(agent, req, to_rp).await.unwrap()
}

/// Adapter → upstream: asserts the adapter sends the browser to the
/// upstream's authorization endpoint and returns that URL.
async fn to_upstream(chain: &TestChain, agent: &Agent, url: &str) -> Url {
    let resp = agent.get(url).await.unwrap();
    let next = expect_redirect(&resp, "adapter /oauth2/authorize").unwrap();
    assert!(
        next.as_str()
            .starts_with(&format!("{}/oauth2/authorize?", chain.upstream_issuer)),
        "expected the upstream's authorization endpoint, got {next}"
    );
    next
}

/// Upstream callback → adapter → RP.
async fn back_to_rp(agent: &Agent, callback: &Url) -> Url {
    let resp = agent.get(callback.as_str()).await.unwrap();
    expect_redirect(&resp, "adapter callback").unwrap()
}

/// OIDC Core §3.1.2.1: a client asking `max_age=60` when both the adapter's
/// and the upstream's sessions are older gets a real re-authentication at
/// the upstream (its password form), and the new `auth_time`.
#[tokio::test]
async fn max_age_older_than_both_sessions_reauthenticates_at_the_upstream() {
    let chain = chain().await;
    let clock = chain.clock.clone().unwrap();
    let agent = Agent::new().unwrap();
    let first = AuthRequest::new(&chain.app);
    let grant = chain.obtain_code(&agent, &first).await.unwrap();
    let login_time = clock_now(&clock);
    let claims = id_token(&chain, &agent, first, grant.redirect).await;
    assert_eq!(claims["auth_time"], login_time);

    clock.advance(120);
    // Within max_age=300 both sessions answer: no upstream, same auth_time.
    let req = AuthRequest::new(&chain.app);
    let resp = agent
        .get(&authorize_url(&chain, &req, &[("max_age", "300")]))
        .await
        .unwrap();
    let to_rp = expect_redirect(&resp, "SSO").unwrap();
    assert!(
        to_rp.as_str().starts_with(&chain.app.redirect_uri),
        "{to_rp}"
    );
    assert_eq!(
        id_token(&chain, &agent, req, to_rp).await["auth_time"],
        login_time
    );

    // max_age=60: the adapter goes upstream and says so…
    let req = AuthRequest::new(&chain.app);
    let upstream = to_upstream(
        &chain,
        &agent,
        &authorize_url(&chain, &req, &[("max_age", "60")]),
    )
    .await;
    assert_eq!(param(&upstream, "max_age").as_deref(), Some("60"));
    // …and the upstream, whose session is as old, shows its password form
    // (login_at_upstream fails if it answers from its session).
    let callback = chain.login_at_upstream(&agent, &upstream).await.unwrap();
    let to_rp = back_to_rp(&agent, &callback).await;
    let claims = id_token(&chain, &agent, req, to_rp).await;
    assert_eq!(claims["auth_time"], login_time + 120);
}

/// `prompt=login` goes on to the upstream, which then asks for the
/// password although its session is fresh.
#[tokio::test]
async fn prompt_login_reaches_the_upstream_and_forces_its_form() {
    let chain = chain().await;
    let agent = Agent::new().unwrap();
    let first = AuthRequest::new(&chain.app);
    chain.obtain_code(&agent, &first).await.unwrap();
    let req = AuthRequest::new(&chain.app);
    let upstream = to_upstream(
        &chain,
        &agent,
        &authorize_url(&chain, &req, &[("prompt", "login")]),
    )
    .await;
    assert_eq!(param(&upstream, "prompt").as_deref(), Some("login"));
    let callback = chain.login_at_upstream(&agent, &upstream).await.unwrap();
    let to_rp = back_to_rp(&agent, &callback).await;
    assert!(param(&to_rp, "code").is_some(), "{to_rp}");
}

/// OIDC Core §2: `auth_time` is when the user authenticated. When the
/// adapter's session has ended but the upstream answers from its own
/// session, the token carries the upstream's (older) `auth_time`, not the
/// moment the callback arrived.
#[tokio::test]
async fn auth_time_is_the_upstreams_when_it_answers_from_its_session() {
    let chain = TestChain::builder()
        .test_app(false)
        .manual_clock(true)
        .tweak_adapter(|c| c.session.ttl_seconds = 60)
        .start()
        .await
        .unwrap();
    let clock = chain.clock.clone().unwrap();
    let agent = Agent::new().unwrap();
    let first = AuthRequest::new(&chain.app);
    chain.obtain_code(&agent, &first).await.unwrap();
    let login_time = clock_now(&clock);

    clock.advance(100);
    let req = AuthRequest::new(&chain.app);
    let upstream = to_upstream(&chain, &agent, &chain.authorize_url(&req)).await;
    // The upstream's session answers at once: straight back to the adapter.
    let resp = agent.get(upstream.as_str()).await.unwrap();
    let callback = expect_redirect(&resp, "upstream SSO").unwrap();
    assert_eq!(rp::without_query(&callback), chain.upstream_callback());
    let to_rp = back_to_rp(&agent, &callback).await;
    let claims = id_token(&chain, &agent, req, to_rp).await;
    assert_eq!(claims["auth_time"], login_time);
}

/// OIDC Core §3.1.2.6: `prompt=none` without an adapter session is
/// `login_required` at once, with no page and no upstream.
#[tokio::test]
async fn prompt_none_without_a_session_is_login_required() {
    let chain = chain().await;
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = agent
        .get(&authorize_url(&chain, &req, &[("prompt", "none")]))
        .await
        .unwrap();
    let to_rp = expect_redirect(&resp, "prompt=none").unwrap();
    assert!(
        to_rp.as_str().starts_with(&chain.app.redirect_uri),
        "{to_rp}"
    );
    assert_eq!(param(&to_rp, "error").as_deref(), Some("login_required"));
    assert_eq!(param(&to_rp, "state").as_deref(), Some(req.state.as_str()));
}

fn clock_now(clock: &adapter::clock::ManualClock) -> i64 {
    adapter::clock::Clock::now(clock)
}
