//! Fresh claims (RFC 6749 §6, OIDC Core §12): an upstream with
//! `on_refresh = "refresh_upstream"` is asked again with its own refresh
//! token when the adapter's refresh token is used, so changed groups reach
//! the relying party; an upstream that refuses (`invalid_grant`: the user
//! is gone, the grant revoked) ends the adapter's grant and session. And
//! userinfo (OIDC Core §5.3) is fetched at login only when the ID token
//! lacks a claim the rules read, unless turned off.

use adapter::config::{ClaimRule, OnRefresh, TokenName, UserinfoPolicy};
use e2e::chain::{AuthRequest, CodeGrant, TestChain, Upstream, ADAPTER_CLIENT_ID};
use e2e::fake_upstream::{default_identity, FakeUpstream, Options as FakeOpOptions, Tamper};
use e2e::rp::{self, expect_redirect, param, without_query, Agent, TokenResponse};
use serde_json::{json, Value};

use super::login_through_fake;

const SECRET: &str = "fake-upstream-secret";

/// A chain on a fake upstream that issues (and rotates) refresh tokens.
async fn chain_on_fake(
    tweak: impl FnOnce(&mut adapter::Config) + Send + 'static,
    manual_clock: bool,
) -> (FakeUpstream, TestChain) {
    let mut options = FakeOpOptions::new(ADAPTER_CLIENT_ID);
    options.client_secret = Some(SECRET.into());
    options.refresh_tokens = true;
    let fake = FakeUpstream::start_with(options).await.unwrap();
    let chain = TestChain::builder()
        .upstream(Upstream::External {
            issuer: fake.issuer.clone(),
            client_id: ADAPTER_CLIENT_ID.into(),
            client_secret: SECRET.into(),
        })
        .test_app(false)
        .manual_clock(manual_clock)
        .tweak_adapter(tweak)
        .start()
        .await
        .unwrap();
    (fake, chain)
}

/// Logs in through the fake and redeems the code: the token response.
async fn login(fake: &FakeUpstream, chain: &TestChain, agent: &Agent) -> TokenResponse {
    let req = AuthRequest::new(&chain.app);
    let resp = login_through_fake(fake, chain, agent, &req).await;
    let to_app = expect_redirect(&resp, "adapter callback").unwrap();
    let code = param(&to_app, "code").expect("a code");
    let grant = CodeGrant {
        request: req,
        code,
        redirect: to_app,
    };
    let tokens = chain
        .redeem(agent, &grant, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(tokens.status, 200, "{}", tokens.text);
    tokens
}

/// The adapter's refresh-token grant.
async fn refresh(chain: &TestChain, agent: &Agent, refresh_token: &str) -> TokenResponse {
    rp::token_request(
        &agent.http,
        &chain.adapter("/oauth2/token"),
        &chain.app.basic(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
    .unwrap()
}

fn access_claims(tokens: &TokenResponse) -> Value {
    rp::decode_unverified(tokens.str("access_token").unwrap())
        .unwrap()
        .1
}

/// How many refresh-token grants the fake upstream answered.
fn upstream_refreshes(fake: &FakeUpstream) -> usize {
    fake.token_requests()
        .iter()
        .filter(|r| r.params.get("grant_type").map(String::as_str) == Some("refresh_token"))
        .count()
}

fn refresh_upstream(max_age: i64) -> impl FnOnce(&mut adapter::Config) + Send + 'static {
    move |c| {
        c.upstreams[0].on_refresh = OnRefresh::RefreshUpstream;
        c.upstreams[0].max_claim_age_seconds = max_age;
    }
}

/// Groups changed upstream reach the next adapter refresh and the adapter
/// session (single sign-on); the upstream's rotated refresh token is the
/// one used next; an upstream that refuses the
/// refresh (`invalid_grant`) ends the adapter's grant and its session.
#[tokio::test]
async fn refresh_upstream_brings_fresh_groups_and_a_refusal_ends_the_grant() {
    let (fake, chain) = chain_on_fake(refresh_upstream(0), false).await;
    let agent = Agent::new().unwrap();
    let tokens = login(&fake, &chain, &agent).await;
    let claims = access_claims(&tokens);
    assert_eq!(claims["authorities"], json!(["ROLE_USER", "ROLE_FAKERS"]));
    assert_eq!(claims["name"], "Fake User");
    let first_upstream_rt = fake.last_refresh_token().unwrap();

    // The user changes upstream: a new group, a new name.
    let mut changed = default_identity();
    changed["groups"] = json!(["fakers", "admins"]);
    changed["name"] = json!("Renamed User");
    fake.set_identity(changed);

    let refreshed = refresh(&chain, &agent, tokens.str("refresh_token").unwrap()).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    let claims = access_claims(&refreshed);
    assert_eq!(
        claims["authorities"],
        json!(["ROLE_USER", "ROLE_FAKERS", "ROLE_ADMINS"])
    );
    assert_eq!(claims["name"], "Renamed User");
    let id = rp::decode_unverified(refreshed.str("id_token").unwrap())
        .unwrap()
        .1;
    assert_eq!(id["name"], "Renamed User");
    assert_eq!(id["sub"], "fakeuser");
    // The session has them too: single sign-on to another client, with no
    // trip to the upstream, issues the fresh groups.
    let authorize_hits = fake.authorize_requests().len();
    let req = AuthRequest::new(&chain.second);
    let sso = chain.obtain_code(&agent, &req).await.unwrap();
    assert_eq!(fake.authorize_requests().len(), authorize_hits);
    let second = chain
        .redeem(&agent, &sso, &chain.second.basic())
        .await
        .unwrap();
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(
        access_claims(&second)["authorities"],
        json!(["ROLE_USER", "ROLE_FAKERS", "ROLE_ADMINS"])
    );
    // It presented the refresh token of the login.
    let asked = fake.token_requests();
    let last = asked.last().unwrap();
    assert_eq!(last.params["grant_type"], "refresh_token");
    assert_eq!(last.params["refresh_token"], first_upstream_rt);

    // The upstream rotated its token: the next refresh presents the new
    // one (the fake refuses a used one).
    let second_upstream_rt = fake.last_refresh_token().unwrap();
    assert_ne!(second_upstream_rt, first_upstream_rt);
    let again = refresh(&chain, &agent, refreshed.str("refresh_token").unwrap()).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(
        fake.token_requests().last().unwrap().params["refresh_token"],
        second_upstream_rt
    );
    assert_eq!(upstream_refreshes(&fake), 2);

    // The grant ends upstream (user deleted, consent revoked).
    fake.revoke_all_refresh_tokens();
    let refused = refresh(&chain, &agent, again.str("refresh_token").unwrap()).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!(refused.error(), Some("invalid_grant"));
    assert_eq!(
        refused.body["error_description"],
        "the identity provider no longer accepts this login"
    );
    // Its family is revoked: the same token again is refused without
    // asking the upstream.
    let asked_before = fake.token_hits();
    let replay = refresh(&chain, &agent, again.str("refresh_token").unwrap()).await;
    assert_eq!(replay.error(), Some("invalid_grant"));
    assert_eq!(fake.token_hits(), asked_before);
    // The adapter session ended too: the next authorization request goes
    // to the upstream instead of single sign-on.
    let req = AuthRequest::new(&chain.app);
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    let to = expect_redirect(&resp, "authorize after the grant ended").unwrap();
    assert_eq!(without_query(&to), format!("{}/authorize", fake.issuer));
}

/// Claims younger than `max_claim_age_seconds` are kept without asking
/// the upstream; older ones are refreshed. An upstream that is down gives
/// `temporarily_unavailable` and leaves the adapter's token usable; a
/// refreshed ID token with a bad signature or another `sub` (OIDC Core
/// §12.2) ends the grant.
#[tokio::test]
async fn claims_are_refreshed_only_when_older_than_their_maximum_age() {
    let (fake, chain) = chain_on_fake(refresh_upstream(600), true).await;
    let clock = chain.clock.clone().unwrap();
    let agent = Agent::new().unwrap();
    let tokens = login(&fake, &chain, &agent).await;
    move_to_admins(&fake);

    // Young claims: the login's, no upstream call.
    clock.advance(599);
    let kept = refresh_keeping_the_login_claims(&fake, &chain, &agent, &tokens).await;

    // Old claims, upstream down: 503, and the presented token survives.
    clock.advance(2);
    fake.set_tamper(Tamper::TokenEndpointDown);
    let down = refresh(&chain, &agent, kept.str("refresh_token").unwrap()).await;
    assert_eq!(down.status, 503, "{}", down.text);
    assert_eq!(down.error(), Some("temporarily_unavailable"));
    fake.set_tamper(Tamper::None);
    let fresh = refresh(&chain, &agent, kept.str("refresh_token").unwrap()).await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert_eq!(
        access_claims(&fresh)["authorities"],
        json!(["ROLE_USER", "ROLE_ADMINS"])
    );
    // Fresh again: the next refresh within the age asks nobody.
    let hits = upstream_refreshes(&fake);
    let young = refresh(&chain, &agent, fresh.str("refresh_token").unwrap()).await;
    assert_eq!(young.status, 200, "{}", young.text);
    assert_eq!(upstream_refreshes(&fake), hits);

    // A refreshed ID token about someone else is refused.
    clock.advance(601);
    let mut other = default_identity();
    other["sub"] = json!("someone-else");
    fake.set_identity(other);
    let refused = refresh(&chain, &agent, young.str("refresh_token").unwrap()).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!(refused.error(), Some("invalid_grant"));

    // A refreshed ID token with a bad signature too (another login).
    fake.set_identity(default_identity());
    let tokens = login(&fake, &chain, &Agent::new().unwrap()).await;
    clock.advance(601);
    fake.set_tamper(Tamper::BadSignature);
    let refused = refresh(&chain, &agent, tokens.str("refresh_token").unwrap()).await;
    assert_eq!(refused.error(), Some("invalid_grant"), "{}", refused.text);
}

/// Without a freshness policy (`on_refresh = "keep"`, the default) a
/// refresh never asks the upstream and the claims of the login stay.
#[tokio::test]
async fn keep_never_asks_the_upstream() {
    let (fake, chain) = chain_on_fake(|_| {}, false).await;
    let agent = Agent::new().unwrap();
    let tokens = login(&fake, &chain, &agent).await;
    move_to_admins(&fake);
    refresh_keeping_the_login_claims(&fake, &chain, &agent, &tokens).await;
}

/// The user's groups change upstream: `admins` only.
fn move_to_admins(fake: &FakeUpstream) {
    let mut changed = default_identity();
    changed["groups"] = json!(["admins"]);
    fake.set_identity(changed);
}

/// A refresh of `tokens` that keeps the login's claims (`fakers`) without
/// asking the upstream; the token response.
async fn refresh_keeping_the_login_claims(
    fake: &FakeUpstream,
    chain: &TestChain,
    agent: &Agent,
    tokens: &TokenResponse,
) -> TokenResponse {
    let kept = refresh(chain, agent, tokens.str("refresh_token").unwrap()).await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    assert_eq!(
        access_claims(&kept)["authorities"],
        json!(["ROLE_USER", "ROLE_FAKERS"])
    );
    assert_eq!(upstream_refreshes(fake), 0);
    kept
}

/// A rule reading `department`, a claim only the fake's userinfo has.
pub(crate) fn department_rule(c: &mut adapter::Config) {
    c.claims.rules.push(ClaimRule {
        claim: "department".into(),
        expr: "upstream.department".into(),
        tokens: vec![TokenName::Access],
        when: None,
    });
}

/// `userinfo = "auto"` (the default): an ID token carrying every claim the
/// rules read needs no userinfo call (the seed rules read only profile
/// claims and groups, all in the fake's ID token).
#[tokio::test]
async fn userinfo_auto_is_not_called_when_the_id_token_has_the_claims() {
    let (fake, chain) = chain_on_fake(|_| {}, false).await;
    let tokens = login(&fake, &chain, &Agent::new().unwrap()).await;
    assert_eq!(fake.userinfo_calls(), 0);
    assert_eq!(access_claims(&tokens)["name"], "Fake User");
}

/// `userinfo = "never"`: not even for a claim only userinfo has.
#[tokio::test]
async fn userinfo_never_is_not_called() {
    let (fake, chain) = chain_on_fake(
        |c| {
            department_rule(c);
            c.upstreams[0].userinfo = UserinfoPolicy::Never;
        },
        false,
    )
    .await;
    let tokens = login(&fake, &chain, &Agent::new().unwrap()).await;
    assert_eq!(fake.userinfo_calls(), 0);
    let claims = access_claims(&tokens);
    assert!(claims.get("department").is_none(), "{claims}");
}

/// The whole chain with the real upstream-test-server: with
/// `refresh_upstream`, each adapter refresh is a refresh at the upstream,
/// which reads its account again. A user disabled at the upstream is gone
/// for the adapter at the next refresh: `invalid_grant`, and the adapter's
/// session ends.
#[tokio::test]
async fn a_user_disabled_upstream_loses_the_adapter_grant_at_the_next_refresh() {
    let chain = TestChain::builder()
        .test_app(false)
        .tweak_adapter(refresh_upstream(0))
        .start()
        .await
        .unwrap();
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let grant = chain.obtain_code(&agent, &req).await.unwrap();
    let tokens = chain
        .redeem(&agent, &grant, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(tokens.status, 200, "{}", tokens.text);

    // The upstream renames the user: the adapter's refresh carries it.
    let upstream = chain.upstream_config.clone().unwrap();
    let store: std::sync::Arc<dyn adapter::store::Store> = std::sync::Arc::new(
        adapter::store::SqlStore::connect(&upstream.database.url, 2)
            .await
            .unwrap(),
    );
    let hasher = std::sync::Arc::new(adapter::password::Hasher::new(1, 8).unwrap());
    let clock: adapter::clock::SharedClock = std::sync::Arc::new(adapter::clock::SystemClock);
    let accounts = adapter::startup::accounts_from_config(&upstream, store, clock, hasher).unwrap();
    let user = accounts.find("testuser").await.unwrap().unwrap();
    let mut data = user.data.clone();
    data.name = Some("Test User Renamed".into());
    accounts.save(&user, &data).await.unwrap();
    let refreshed = refresh(&chain, &agent, tokens.str("refresh_token").unwrap()).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    assert_eq!(access_claims(&refreshed)["name"], "Test User Renamed");
    assert_eq!(access_claims(&refreshed)["sub"], "testuser");

    accounts.set_disabled("testuser", true).await.unwrap();
    let refused = refresh(&chain, &agent, refreshed.str("refresh_token").unwrap()).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!(refused.error(), Some("invalid_grant"));
    // The adapter's session ended: the next request goes upstream again.
    let resp = agent
        .get(&chain.authorize_url(&AuthRequest::new(&chain.app)))
        .await
        .unwrap();
    let to = expect_redirect(&resp, "authorize after the grant ended").unwrap();
    assert_eq!(
        without_query(&to),
        format!("{}/oauth2/authorize", chain.upstream_issuer)
    );
}
