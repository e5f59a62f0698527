//! End-to-end tests of the chain `test-app -> adapter -> upstream-test-server`,
//! on real sockets. Each test cites the RFC or OpenID Connect section it
//! covers.
//!
//! HTTP tests use [`e2e::rp::Agent`]: redirects are never followed, so every
//! `Location` and cookie is asserted; one cookie jar serves all three
//! services, as in a browser. The browser test drives Debian's headless
//! Chromium. Negative tests act as the relying party themselves, or put the
//! tampering [`e2e::fake_upstream::FakeUpstream`] behind the adapter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "chain/brokers.rs"]
mod brokers;
#[path = "chain/fresh.rs"]
mod fresh;
#[path = "chain/logout.rs"]
mod logout;
#[path = "chain/openid_client.rs"]
mod openid_client;
#[path = "chain/passkeys.rs"]
mod passkeys;
#[path = "chain/reauth.rs"]
mod reauth;
#[path = "chain/upstream.rs"]
mod upstream;
#[path = "chain/upstreams.rs"]
mod upstreams;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use e2e::browser::Browser;
use e2e::chain::{
    AuthRequest, CodeGrant, TestChain, Upstream, ADAPTER_CLIENT_ID, ADAPTER_COOKIE, APP_COOKIE,
    PASSWORD, UPSTREAM_COOKIE, UPSTREAM_ID, USERNAME,
};
use e2e::fake_upstream::{FakeUpstream, Options as FakeOpOptions, Tamper};
use e2e::rp::{self, expect_redirect, param, without_query, Agent, ClientAuth, Pkce};
use fantoccini::Locator;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

// ------------------------------------------------------------ helpers ----

/// Claims the demo chain promises for `testuser` (README, "The chain").
/// The adapter issues `aud` as a single string (OIDC Core §2).
fn assert_seed_claims(claims: &Value, chain: &TestChain, aud: &str, what: &str) {
    assert_eq!(
        claims["iss"],
        chain.adapter_issuer.as_str(),
        "{what}: iss (OIDC Core §2) in {claims}"
    );
    assert_eq!(claims["aud"], aud, "{what}: aud (OIDC Core §2) in {claims}");
    assert_eq!(claims["sub"], USERNAME, "{what}: sub in {claims}");
    assert_eq!(
        claims["test_auth_server_sub"], USERNAME,
        "{what}: <upstream id>_sub in {claims}"
    );
    assert_eq!(
        claims["preferred_username"], USERNAME,
        "{what}: preferred_username in {claims}"
    );
    assert_eq!(claims["name"], "Test User", "{what}: name in {claims}");
    let authorities = claims["authorities"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: authorities is not an array in {claims}"));
    assert!(
        authorities.iter().any(|a| a == "ROLE_USER"),
        "{what}: authorities lacks ROLE_USER in {claims}"
    );
    assert!(
        claims["exp"].as_i64().is_some(),
        "{what}: exp (OIDC Core §2) in {claims}"
    );
    assert!(
        claims["iat"].as_i64().is_some(),
        "{what}: iat (OIDC Core §2) in {claims}"
    );
}

/// The names of the cookies the jar holds for `url`.
fn jar_names(agent: &Agent, url: &str) -> Vec<String> {
    agent.cookies(url).into_iter().map(|(k, _)| k).collect()
}

/// Asserts the adapter answered a failed login with an error redirect to
/// the RP carrying exactly `error`, the RP's `state` and the adapter's `iss`,
/// and no code (RFC 6749 §4.1.2.1, RFC 9207 §2).
fn assert_error_redirect(
    resp: &reqwest::Response,
    req: &AuthRequest,
    chain: &TestChain,
    error: &str,
    what: &str,
) {
    let to = expect_redirect(resp, what).unwrap();
    assert_eq!(
        without_query(&to),
        req.client.redirect_uri,
        "{what}: the error goes to the RP's redirect_uri: {to}"
    );
    assert!(
        param(&to, "code").is_none(),
        "{what}: a code was issued: {to}"
    );
    assert_eq!(param(&to, "error").as_deref(), Some(error), "{what}: {to}");
    assert_eq!(
        param(&to, "state").as_deref(),
        Some(req.state.as_str()),
        "{what}: the RP's state in {to}"
    );
    assert_eq!(
        param(&to, "iss").as_deref(),
        Some(chain.adapter_issuer.as_str()),
        "{what}: iss in {to}"
    );
}

/// An error page where no redirect is safe: 400, HTML, no Location
/// (RFC 6749 §4.1.2.1).
async fn assert_error_page(resp: reqwest::Response, what: &str) -> String {
    let status = resp.status();
    assert!(
        resp.headers().get(reqwest::header::LOCATION).is_none(),
        "{what}: must never redirect, got Location {:?}",
        resp.headers().get(reqwest::header::LOCATION)
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: status");
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/html"), "{what}: content-type {ct}");
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("<h1"),
        "{what}: error page has no <h1>: {body}"
    );
    body
}

/// Full login through the test-app with an HTTP agent, lightly asserted
/// (the step-by-step test asserts everything). Returns `/api/me`.
async fn login_via_test_app(chain: &TestChain, agent: &Agent) -> Value {
    let resp = agent.get(&chain.app_path("/authenticated")).await.unwrap();
    let to_adapter = expect_redirect(&resp, "test-app /authenticated").unwrap();
    let resp = agent.get(to_adapter.as_str()).await.unwrap();
    let next = expect_redirect(&resp, "adapter /oauth2/authorize").unwrap();
    let to_app = if next.as_str().starts_with(&chain.upstream_issuer) {
        let callback = chain.login_at_upstream(agent, &next).await.unwrap();
        let resp = agent.get(callback.as_str()).await.unwrap();
        expect_redirect(&resp, "adapter callback").unwrap()
    } else {
        next
    };
    assert_eq!(without_query(&to_app), chain.app.redirect_uri);
    let resp = agent.get(to_app.as_str()).await.unwrap();
    let page = expect_redirect(&resp, "test-app callback").unwrap();
    assert_eq!(page.path(), "/authenticated");
    let resp = agent.get(page.as_str()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = agent.get(&chain.app_path("/api/me")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// The adapter behind the fake upstream, which requires the adapter's
/// client secret at its token endpoint.
async fn fake_chain(tamper: Tamper) -> (FakeUpstream, TestChain) {
    let mut options = FakeOpOptions::new(ADAPTER_CLIENT_ID);
    options.client_secret = Some("fake-upstream-secret".into());
    options.tamper = tamper;
    let fake = FakeUpstream::start_with(options).await.unwrap();
    let chain = TestChain::builder()
        .upstream(Upstream::External {
            issuer: fake.issuer.clone(),
            client_id: ADAPTER_CLIENT_ID.into(),
            client_secret: "fake-upstream-secret".into(),
        })
        .test_app(false)
        .start()
        .await
        .unwrap();
    (fake, chain)
}

// ------------------------------------------------- the chain, by HTTP ----

/// The demo chain, one hop at a time: every Location, every cookie, the
/// final claims (README "The chain"; OIDC Core §3.1.2.1, §3.1.2.5, §3.1.3.3,
/// §5.3; RFC 7636 §4.3; RFC 9207 §2). A value that is absent fails the test.
#[tokio::test]
async fn full_chain_step_by_step() {
    let chain = TestChain::start().await.unwrap();
    let agent = Agent::new().unwrap();

    // 1. test-app without a session -> adapter /oauth2/authorize.
    let resp = agent.get(&chain.app_path("/authenticated")).await.unwrap();
    let to_adapter = expect_redirect(&resp, "test-app /authenticated").unwrap();
    assert_eq!(
        without_query(&to_adapter),
        chain.adapter("/oauth2/authorize")
    );
    assert_eq!(param(&to_adapter, "client_id").as_deref(), Some("test-app"));
    assert_eq!(param(&to_adapter, "response_type").as_deref(), Some("code"));
    assert_eq!(
        param(&to_adapter, "redirect_uri").as_deref(),
        Some(chain.app.redirect_uri.as_str())
    );
    assert!(param(&to_adapter, "scope")
        .unwrap()
        .split(' ')
        .any(|s| s == "openid"));
    assert_eq!(
        param(&to_adapter, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(
        param(&to_adapter, "code_challenge").is_some(),
        "test-app sends PKCE (RFC 7636 §4.3)"
    );
    let app_state = param(&to_adapter, "state").expect("test-app sends state");
    let app_nonce = param(&to_adapter, "nonce").expect("test-app sends nonce");
    assert!(
        !jar_names(&agent, &chain.app_url).is_empty(),
        "test-app keeps its login transaction in a cookie"
    );

    // 2. adapter without a session -> upstream /oauth2/authorize, with its
    //    own state, nonce and PKCE (OIDC Core §3.1.2.1, RFC 7636 §4.3).
    let resp = agent.get(to_adapter.as_str()).await.unwrap();
    let to_upstream = expect_redirect(&resp, "adapter /oauth2/authorize").unwrap();
    assert_eq!(
        without_query(&to_upstream),
        chain.upstream("/oauth2/authorize")
    );
    assert_eq!(
        param(&to_upstream, "client_id").as_deref(),
        Some(ADAPTER_CLIENT_ID)
    );
    assert_eq!(
        param(&to_upstream, "response_type").as_deref(),
        Some("code")
    );
    assert_eq!(
        param(&to_upstream, "redirect_uri").as_deref(),
        Some(chain.upstream_callback().as_str()),
        "a callback specific to the upstream (RFC 9700 §4.4.2.2)"
    );
    assert!(param(&to_upstream, "scope")
        .unwrap()
        .split(' ')
        .any(|s| s == "openid"));
    assert_eq!(
        param(&to_upstream, "code_challenge_method").as_deref(),
        Some("S256"),
        "RFC 7636 §4.3"
    );
    assert_eq!(
        param(&to_upstream, "code_challenge").map(|c| c.len()),
        Some(43),
        "base64url of SHA-256 (RFC 7636 §4.2)"
    );
    let up_state = param(&to_upstream, "state").expect("adapter sends state");
    let up_nonce = param(&to_upstream, "nonce").expect("adapter sends nonce");
    assert!(
        up_state.len() >= 22,
        "state has >=128 bits (RFC 6749 §10.10): {up_state}"
    );
    assert_ne!(up_state, app_state, "the adapter uses its own state");
    assert_ne!(up_nonce, app_nonce, "the adapter uses its own nonce");

    // 3. upstream without a session -> its login form.
    let resp = agent.get(to_upstream.as_str()).await.unwrap();
    let login_page = expect_redirect(&resp, "upstream /oauth2/authorize").unwrap();
    assert_eq!(without_query(&login_page), chain.upstream("/login/local"));
    assert!(param(&login_page, "req").is_some());
    let resp = agent.get(login_page.as_str()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html")));
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("Test Auth Server"),
        "the upstream names itself"
    );
    let (action, hidden) = e2e::chain::login_form(&html, &login_page).unwrap();
    assert_eq!(
        action.origin(),
        login_page.origin(),
        "login form posts to the upstream"
    );

    // 4. POST the form -> 302/303 (never 307, RFC 9700 §4.12) until the
    //    upstream sends us to the adapter.
    let mut form: Vec<(&str, &str)> = hidden
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form.push(("username", USERNAME));
    form.push(("password", PASSWORD));
    let mut resp = agent.post_form(action.as_str(), &form).await.unwrap();
    let mut hops = 0;
    let callback = loop {
        let next = expect_redirect(&resp, "upstream after login").unwrap();
        if next.origin() != login_page.origin() {
            break next;
        }
        hops += 1;
        assert!(hops < 5, "upstream redirect loop");
        resp = agent.get(next.as_str()).await.unwrap();
    };
    assert!(
        jar_names(&agent, &chain.upstream_issuer).contains(&UPSTREAM_COOKIE.to_string()),
        "{UPSTREAM_COOKIE} set after login: {:?}",
        jar_names(&agent, &chain.upstream_issuer)
    );
    assert_eq!(without_query(&callback), chain.upstream_callback());
    assert_eq!(
        param(&callback, "state").as_deref(),
        Some(up_state.as_str()),
        "upstream echoes the adapter's state"
    );
    assert!(
        param(&callback, "code").is_some(),
        "upstream code: {callback}"
    );
    assert_eq!(
        param(&callback, "iss").as_deref(),
        Some(chain.upstream_issuer.as_str()),
        "RFC 9207 iss from the upstream"
    );

    // 5. adapter callback -> test-app callback with the adapter's own code,
    //    the app's state (RFC 6749 §4.1.2) and iss (RFC 9207 §2).
    let resp = agent.get(callback.as_str()).await.unwrap();
    let adapter_cookie = rp::set_cookie(resp.headers(), ADAPTER_COOKIE);
    let to_app = expect_redirect(&resp, "adapter upstream callback").unwrap();
    assert_eq!(without_query(&to_app), chain.app.redirect_uri);
    assert!(
        param(&to_app, "code").is_some(),
        "a code for the test-app: {to_app}"
    );
    assert_ne!(
        param(&to_app, "code"),
        param(&callback, "code"),
        "the adapter issues its own code"
    );
    assert_eq!(
        param(&to_app, "state").as_deref(),
        Some(app_state.as_str()),
        "state echoed (RFC 6749 §4.1.2)"
    );
    assert_eq!(
        param(&to_app, "iss").as_deref(),
        Some(chain.adapter_issuer.as_str()),
        "iss (RFC 9207 §2)"
    );
    assert!(
        jar_names(&agent, &chain.adapter_issuer).contains(&ADAPTER_COOKIE.to_string()),
        "{ADAPTER_COOKIE} set: {:?}",
        jar_names(&agent, &chain.adapter_issuer)
    );
    let set = adapter_cookie.expect("the adapter sets its session cookie at the callback");
    let lower = set.to_ascii_lowercase();
    assert!(
        lower.contains("httponly"),
        "adapter session cookie is HttpOnly (RFC 6265 §4.1.2.6): {set}"
    );
    assert!(
        lower.contains("samesite=lax"),
        "adapter session cookie is SameSite=Lax (RFC 6265bis §4.1.2.7): {set}"
    );

    // 6. test-app callback -> /authenticated, with its session.
    let resp = agent.get(to_app.as_str()).await.unwrap();
    let page = expect_redirect(&resp, "test-app callback").unwrap();
    assert_eq!(page.as_str(), chain.app_path("/authenticated"));
    assert!(
        jar_names(&agent, &chain.app_url).contains(&APP_COOKIE.to_string()),
        "{APP_COOKIE} set: {:?}",
        jar_names(&agent, &chain.app_url)
    );
    // Three sessions, three distinct cookies in the one jar.
    let all = jar_names(&agent, &chain.app_url);
    for name in [APP_COOKIE, ADAPTER_COOKIE, UPSTREAM_COOKIE] {
        assert_eq!(
            all.iter().filter(|n| *n == name).count(),
            1,
            "{name} once in {all:?}"
        );
    }

    // 7. The page shows the mapped claims.
    let resp = agent.get(page.as_str()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    for (id, want) in [
        ("claim-sub", USERNAME),
        ("claim-test_auth_server_sub", USERNAME),
        ("claim-preferred_username", USERNAME),
        ("claim-authorities", "ROLE_USER"),
    ] {
        let text =
            rp::element_text(&html, id).unwrap_or_else(|| panic!("no #{id} on /authenticated"));
        assert!(text.contains(want), "#{id} = {text:?}, expected {want}");
    }

    // 8. /api/me: the claims of both tokens.
    let resp = agent.get(&chain.app_path("/api/me")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let me: Value = resp.json().await.unwrap();
    assert_seed_claims(
        &me["id_token_claims"],
        &chain,
        "test-app",
        "test-app's id_token_claims",
    );
    assert_seed_claims(
        &me["access_token_claims"],
        &chain,
        "test-app",
        "test-app's access_token_claims",
    );
    assert_eq!(
        me["id_token_claims"]["nonce"],
        app_nonce.as_str(),
        "nonce copied into the ID token (OIDC Core §3.1.3.7 step 11)"
    );

    // 9. The raw tokens verify against the adapter's JWKS (RFC 7515 §5.2).
    let jwks_uri = chain.endpoint(&agent.http, "jwks_uri").await.unwrap();
    assert_eq!(jwks_uri, chain.adapter("/oauth2/jwks"));
    let id_token = me["id_token"].as_str().expect("raw id_token");
    let access_token = me["access_token"].as_str().expect("raw access_token");
    let (h, claims) = rp::verify_jwt(
        &agent.http,
        &jwks_uri,
        id_token,
        &chain.adapter_issuer,
        "test-app",
    )
    .await
    .unwrap();
    assert_eq!(
        h["alg"], "RS256",
        "RS256 by default (OIDC Core §3.1.3.7 step 7)"
    );
    assert_eq!(h["typ"], "JWT", "ID token typ");
    assert_seed_claims(&claims, &chain, "test-app", "verified ID token");
    // OIDC Core §3.1.3.6: left half of SHA-256, base64url, computed here.
    let digest = Sha256::digest(access_token.as_bytes());
    assert_eq!(
        claims["at_hash"],
        URL_SAFE_NO_PAD.encode(&digest[..16]).as_str(),
        "at_hash binds the access token"
    );
    assert!(claims["auth_time"].is_i64(), "auth_time");
    let (h, claims) = rp::verify_jwt(
        &agent.http,
        &jwks_uri,
        access_token,
        &chain.adapter_issuer,
        "test-app",
    )
    .await
    .unwrap();
    assert!(
        h["typ"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("at+jwt")),
        "access token typ at+jwt (RFC 9068 §2.1): {h}"
    );
    assert_seed_claims(&claims, &chain, "test-app", "verified access token");

    // 10. userinfo with the access token (OIDC Core §5.3).
    let userinfo = chain
        .endpoint(&agent.http, "userinfo_endpoint")
        .await
        .unwrap();
    let resp = agent
        .http
        .get(&userinfo)
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let info: Value = resp.json().await.unwrap();
    assert_eq!(
        info["sub"], USERNAME,
        "userinfo sub equals the ID token sub (OIDC Core §5.3.2)"
    );
}

/// SSO: once the adapter has a session, a second client and a re-login
/// after the test-app's logout skip the upstream entirely.
#[tokio::test]
async fn sso_second_client_and_relogin_skip_the_upstream() {
    let chain = TestChain::start().await.unwrap();
    let agent = Agent::new().unwrap();
    let me = login_via_test_app(&chain, &agent).await;
    assert_seed_claims(&me["id_token_claims"], &chain, "test-app", "first login");

    // Another client: straight back with a code.
    let req = AuthRequest::new(&chain.second);
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    let to_rp = expect_redirect(&resp, "adapter /oauth2/authorize with a session").unwrap();
    assert_eq!(
        without_query(&to_rp),
        chain.second.redirect_uri,
        "SSO skips the upstream"
    );
    assert_eq!(param(&to_rp, "state").as_deref(), Some(req.state.as_str()));
    let code = param(&to_rp, "code").expect("a code for second-app");
    let grant = e2e::chain::CodeGrant {
        request: req,
        code,
        redirect: to_rp,
    };
    let tokens = chain
        .redeem(&agent, &grant, &chain.second.basic())
        .await
        .unwrap();
    assert_eq!(tokens.status, 200, "{}", tokens.text);
    let id_token = tokens.str("id_token").unwrap();
    let jwks_uri = chain.adapter("/oauth2/jwks");
    let (_, claims) = rp::verify_jwt(
        &agent.http,
        &jwks_uri,
        id_token,
        &chain.adapter_issuer,
        "second-app",
    )
    .await
    .unwrap();
    assert_eq!(claims["sub"], USERNAME);
    assert_eq!(claims["nonce"], grant.request.nonce.as_str());

    // test-app logout ends only the test-app's session.
    // The test-app's logout form is protected by the Origin check (the
    // agent sends its same-origin Origin), it carries no token.
    let resp = agent
        .post_form(&chain.app_path("/logout"), &[])
        .await
        .unwrap();
    let home = expect_redirect(&resp, "POST /logout").unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "POST /logout");
    assert_eq!(home.as_str(), chain.app_path("/"));
    let resp = agent.get(&chain.app_path("/api/me")).await.unwrap();
    assert_eq!(resp.status(), 401, "/api/me after logout");

    // Re-login: test-app -> adapter -> straight back (no upstream hop).
    let resp = agent.get(&chain.app_path("/authenticated")).await.unwrap();
    let to_adapter = expect_redirect(&resp, "test-app after logout").unwrap();
    let resp = agent.get(to_adapter.as_str()).await.unwrap();
    let to_app = expect_redirect(&resp, "adapter with a session").unwrap();
    assert_eq!(
        without_query(&to_app),
        chain.app.redirect_uri,
        "SSO skips the upstream"
    );
    assert!(param(&to_app, "code").is_some());
    let resp = agent.get(to_app.as_str()).await.unwrap();
    let page = expect_redirect(&resp, "test-app callback").unwrap();
    assert_eq!(page.path(), "/authenticated");
    let resp = agent.get(&chain.app_path("/api/me")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let me: Value = resp.json().await.unwrap();
    assert_seed_claims(&me["id_token_claims"], &chain, "test-app", "re-login");
}

// ------------------------------------------------------- the browser ----

/// The same chain in real headless Chromium: open the test-app, fill the
/// upstream's login form, land on the test-app page with the mapped claims.
/// A screenshot of each page goes to `$E2E_OUTPUT_DIR/browser_chain/`.
#[tokio::test]
async fn browser_chain_headless_chromium() {
    let out = e2e::output::test_dir("browser_chain").unwrap();
    let chain = TestChain::start().await.unwrap();
    let browser = Browser::start(&out).await.unwrap();
    let c = &browser.client;

    c.goto(&chain.app_path("/")).await.unwrap();
    browser.screenshot("test-app-home").await.unwrap();

    c.goto(&chain.app_path("/authenticated")).await.unwrap();
    let form = c
        .wait()
        .at_most(std::time::Duration::from_secs(20))
        .for_element(Locator::Id("login-form"))
        .await
        .expect("the upstream login form");
    let url = c.current_url().await.unwrap();
    assert_eq!(
        without_query(&url),
        chain.upstream("/login/local"),
        "browser is on the upstream's form"
    );
    browser.screenshot("upstream-login").await.unwrap();

    Browser::type_credentials(&form, USERNAME, PASSWORD)
        .await
        .unwrap();
    browser.screenshot("upstream-login-filled").await.unwrap();
    form.find(Locator::Id("login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    let sub = c
        .wait()
        .at_most(std::time::Duration::from_secs(20))
        .for_element(Locator::Id("claim-sub"))
        .await
        .expect("the test-app page with #claim-sub");
    let url = c.current_url().await.unwrap();
    assert_eq!(
        url.as_str(),
        chain.app_path("/authenticated"),
        "browser lands on the test-app"
    );
    browser.screenshot("test-app-authenticated").await.unwrap();

    assert_eq!(sub.text().await.unwrap().trim(), USERNAME);
    let text = |id: &'static str| async move {
        c.find(Locator::Id(id)).await.unwrap().text().await.unwrap()
    };
    assert_eq!(text("claim-test_auth_server_sub").await.trim(), USERNAME);
    assert_eq!(text("claim-preferred_username").await.trim(), USERNAME);
    assert!(text("claim-authorities").await.contains("ROLE_USER"));

    // The browser holds all three sessions, one cookie each.
    let cookies = c.get_all_cookies().await.unwrap();
    let names: Vec<String> = cookies.iter().map(|c| c.name().to_string()).collect();
    for name in [APP_COOKIE, ADAPTER_COOKIE, UPSTREAM_COOKIE] {
        assert!(
            names.contains(&name.to_string()),
            "browser has {name}: {names:?}"
        );
    }
    browser.close().await.unwrap();
}

/// The user enrols an authenticator app at the upstream (its TOTP page,
/// with a QR code: screenshot `totp-enrolment`), then logs in through the
/// whole chain with password + TOTP in headless Chromium; the test-app
/// shows how the user authenticated upstream (`amr`, `acr`: OIDC Core §2),
/// passed through the adapter's own tokens.
#[tokio::test]
async fn browser_chain_with_totp_at_the_upstream() {
    let out = e2e::output::test_dir("browser_chain_totp").unwrap();
    let chain = TestChain::start().await.unwrap();
    let browser = Browser::start(&out).await.unwrap();
    let c = &browser.client;
    let wait = |id: &'static str| async move {
        c.wait()
            .at_most(std::time::Duration::from_secs(20))
            .for_element(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
    };
    let fill = |id: &'static str, value: String| async move {
        c.find(Locator::Id(id))
            .await
            .unwrap()
            .send_keys(&value)
            .await
            .unwrap();
    };

    // 1. Sign in at the upstream itself and enrol TOTP.
    c.goto(&chain.upstream("/login")).await.unwrap();
    wait("sign-in-form").await;
    fill("username", USERNAME.into()).await;
    fill("password", PASSWORD.into()).await;
    c.find(Locator::Id("sign-in-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Signed in: the upstream sends the browser to its dashboard.
    c.wait()
        .at_most(std::time::Duration::from_secs(20))
        .for_url(&url::Url::parse(&chain.upstream("/dashboard")).unwrap())
        .await
        .unwrap();
    c.goto(&chain.upstream("/account/totp")).await.unwrap();
    wait("totp-qr").await;
    let qr = c.find(Locator::Css("#totp-qr svg")).await.unwrap();
    assert!(qr.is_displayed().await.unwrap(), "the QR code is shown");
    browser.screenshot("totp-enrolment").await.unwrap();
    let secret = c
        .find(Locator::Id("totp-secret"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let secret = adapter::totp::TotpSecret::from_base32(secret.trim()).unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    fill("code", secret.code_at(now())).await;
    c.find(Locator::Id("totp-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let codes = wait("recovery-codes").await;
    assert_eq!(codes.find_all(Locator::Css("li")).await.unwrap().len(), 10);
    browser.screenshot("totp-recovery-codes").await.unwrap();
    // A fresh browser state: the password-only upstream session goes.
    c.delete_all_cookies().await.unwrap();

    // 2. The chain: the upstream asks for the password, then the code.
    c.goto(&chain.app_path("/authenticated")).await.unwrap();
    wait("login-form").await;
    fill("username", USERNAME.into()).await;
    fill("password", PASSWORD.into()).await;
    c.find(Locator::Id("login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait("code-form").await;
    browser.screenshot("upstream-totp-step").await.unwrap();
    // The enrolment used the current step; the app's next code is one
    // step ahead, inside the allowed skew (RFC 6238 §5.2).
    fill("code", secret.code_at(now() + 30)).await;
    c.find(Locator::Id("code-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let sub = wait("claim-sub").await;
    assert_eq!(sub.text().await.unwrap().trim(), USERNAME);
    browser
        .screenshot("test-app-authenticated-mfa")
        .await
        .unwrap();
    let text = |id: &'static str| async move {
        c.find(Locator::Id(id)).await.unwrap().text().await.unwrap()
    };
    let amr = text("idclaim-amr").await;
    for m in ["pwd", "otp", "mfa"] {
        assert!(amr.contains(m), "amr shows {m}: {amr}");
    }
    assert_eq!(text("idclaim-acr").await.trim(), "2");
    browser.close().await.unwrap();
}

// --------------------------------------- authorization endpoint (A) ----

/// RFC 6749 §4.1.2.1: an unknown client_id gets an error page, never a redirect.
#[tokio::test]
async fn unknown_client_shows_error_page_without_redirect() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let mut req = AuthRequest::new(&chain.app);
    req.client.id = "no-such-client".into();
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    assert_error_page(resp, "unknown client").await;
}

/// RFC 9700 §4.1.3, RFC 6749 §4.1.2.1: redirect_uri must match a registered
/// one exactly; otherwise an error page and no redirect (no prefix, suffix,
/// slash or query leniency).
#[tokio::test]
async fn unregistered_redirect_uri_shows_error_page_without_redirect() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let registered = chain.app.redirect_uri.clone();
    let variants = [
        "http://127.0.0.1:1/attacker/callback".to_string(),
        format!("{registered}/extra"),
        format!("{registered}/"),
        format!("{registered}?x=1"),
        registered.to_uppercase(),
        registered.replace("127.0.0.1", "localhost"),
        chain.second.redirect_uri.clone(), // registered, but for another client
    ];
    for uri in variants {
        let mut req = AuthRequest::new(&chain.app);
        req.client.redirect_uri = uri.clone();
        let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
        assert_error_page(resp, &format!("redirect_uri {uri}")).await;
    }
    // Missing redirect_uri: error page as well.
    let req = AuthRequest::new(&chain.app);
    let url = chain.authorize_url(&req);
    let mut url = Url::parse(&url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "redirect_uri")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let resp = agent.get(url.as_str()).await.unwrap();
    assert_error_page(resp, "missing redirect_uri").await;
}

// ----------------------------------------------- token endpoint (B) ----

/// RFC 6749 §5.2: a wrong client secret gives 401 `invalid_client`, with
/// `WWW-Authenticate` when Basic was tried; the code stays unusable by an
/// unauthenticated caller.
#[tokio::test]
async fn wrong_client_secret_is_invalid_client_401() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let grant = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.app))
        .await
        .unwrap();

    let wrong = ClientAuth::basic(&chain.app.id, "not-the-secret");
    let resp = chain.redeem(&agent, &grant, &wrong).await.unwrap();
    assert_eq!(resp.status, 401, "Basic with a wrong secret: {}", resp.text);
    assert_eq!(resp.error(), Some("invalid_client"), "{}", resp.text);
    let www = resp
        .headers
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        www.to_ascii_lowercase().starts_with("basic"),
        "WWW-Authenticate: Basic (RFC 6749 §5.2), got {www:?}"
    );

    let wrong = ClientAuth::post(&chain.app.id, "not-the-secret");
    let resp = chain.redeem(&agent, &grant, &wrong).await.unwrap();
    assert_eq!(
        resp.status, 401,
        "client_secret_post with a wrong secret: {}",
        resp.text
    );
    assert_eq!(resp.error(), Some("invalid_client"));

    let unknown = ClientAuth::basic("no-such-client", "x");
    let resp = chain.redeem(&agent, &grant, &unknown).await.unwrap();
    assert_eq!(resp.status, 401, "unknown client: {}", resp.text);
    assert_eq!(resp.error(), Some("invalid_client"));
}

/// RFC 6749 §2.3.1: `client_secret_basic` with id and secret form-urlencoded before
/// base64, for a secret with `:`, `%`, space, `+`, `/`, `~`, `&`, `=`; and
/// `client_secret_post` with the same client.
#[tokio::test]
async fn client_secret_basic_is_form_urlencoded_and_post_works() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let grant = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.special))
        .await
        .unwrap();
    let resp = chain
        .redeem(&agent, &grant, &chain.special.basic())
        .await
        .unwrap();
    assert_eq!(
        resp.status, 200,
        "Basic with an encoded secret: {}",
        resp.text
    );
    assert!(resp.str("id_token").is_some() && resp.str("access_token").is_some());
    let cache = resp
        .headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        cache.contains("no-store"),
        "token response Cache-Control: no-store (RFC 6749 §5.1), got {cache:?}"
    );

    // SSO gives a second code without the upstream; redeem it with client_secret_post.
    let grant = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.special))
        .await
        .unwrap();
    let resp = chain
        .redeem(&agent, &grant, &chain.special.post())
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "client_secret_post: {}", resp.text);
}

/// RFC 6749 §4.1.2: a code is single-use; re-use gives `invalid_grant`.
#[tokio::test]
async fn code_reuse_is_invalid_grant() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let grant = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.app))
        .await
        .unwrap();
    let first = chain
        .redeem(&agent, &grant, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(first.status, 200, "first redemption: {}", first.text);
    let again = chain
        .redeem(&agent, &grant, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(again.status, 400, "re-use: {}", again.text);
    assert_eq!(
        again.error(),
        Some("invalid_grant"),
        "re-use: {}",
        again.text
    );
}

/// RFC 6749 §4.1.2: re-using a code also revokes what was issued from it:
/// the access token no longer works at userinfo.
#[tokio::test]
async fn code_reuse_revokes_tokens_issued_from_it() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let grant = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.app))
        .await
        .unwrap();
    let first = chain
        .redeem(&agent, &grant, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(first.status, 200, "{}", first.text);
    let access = first.str("access_token").unwrap().to_string();
    let userinfo = chain
        .endpoint(&agent.http, "userinfo_endpoint")
        .await
        .unwrap();
    let before = agent
        .http
        .get(&userinfo)
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 200, "userinfo before the re-use");
    let again = chain
        .redeem(&agent, &grant, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(again.error(), Some("invalid_grant"));
    let after = agent
        .http
        .get(&userinfo)
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(
        after.status(),
        401,
        "access token from a re-used code must be revoked (RFC 6749 §4.1.2)"
    );
}

/// RFC 6749 §4.1.2: two concurrent redemptions of one code: exactly one succeeds.
#[tokio::test]
async fn code_concurrent_redemption_has_exactly_one_winner() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let grant = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.app))
        .await
        .unwrap();
    let auth = chain.app.basic();
    let (a, b) = tokio::join!(
        chain.redeem(&agent, &grant, &auth),
        chain.redeem(&agent, &grant, &auth)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let ok = [&a, &b].iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1, "exactly one success: {} / {}", a.text, b.text);
    let loser = if a.status == 200 { &b } else { &a };
    assert_eq!(loser.error(), Some("invalid_grant"), "{}", loser.text);
}

/// RFC 6749 §4.1.3: a code issued to one client cannot be redeemed by another (even
/// with the other's valid credentials).
#[tokio::test]
async fn code_redeemed_by_another_client_is_invalid_grant() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let grant = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.app))
        .await
        .unwrap();
    let mut stolen = grant.clone();
    stolen.request.client = chain.second.clone();
    stolen.request.client.redirect_uri = chain.app.redirect_uri.clone();
    let resp = chain
        .redeem(&agent, &stolen, &chain.second.basic())
        .await
        .unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text);
    assert_eq!(resp.error(), Some("invalid_grant"), "{}", resp.text);
    let mut stolen2 = grant.clone();
    stolen2.request.client = chain.second.clone();
    let resp = chain
        .redeem(&agent, &stolen2, &chain.second.basic())
        .await
        .unwrap();
    assert_eq!(
        resp.error(),
        Some("invalid_grant"),
        "with the other client's redirect_uri: {}",
        resp.text
    );
}

/// RFC 6749 §4.1.2, §5.2: an expired code is `invalid_grant`. The adapter runs on a
/// manual clock: a code is still good 30 s after issue, and dead 61 s
/// after (TTL ≤ 60 s); no sleeping.
#[tokio::test]
async fn expired_code_is_invalid_grant() {
    let chain = TestChain::builder()
        .test_app(false)
        .manual_clock(true)
        .start()
        .await
        .unwrap();
    let clock = chain.clock.clone().unwrap();
    let agent = Agent::new().unwrap();

    let fresh = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.app))
        .await
        .unwrap();
    clock.advance(30);
    let resp = chain
        .redeem(&agent, &fresh, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(
        resp.status, 200,
        "a 30 s old code is still valid: {}",
        resp.text
    );

    // SSO: a second code without the upstream, then let it expire.
    let stale = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.app))
        .await
        .unwrap();
    clock.advance(61);
    let resp = chain
        .redeem(&agent, &stale, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(resp.status, 400, "a 61 s old code: {}", resp.text);
    assert_eq!(resp.error(), Some("invalid_grant"), "{}", resp.text);
}

/// RFC 6749 §4.1.3: the redirect_uri at /token must equal the authorization
/// request's; a missing one does not match either (`invalid_grant`, §5.2).
#[tokio::test]
async fn code_with_another_redirect_uri_is_invalid_grant() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let grant = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.app))
        .await
        .unwrap();
    for other in [
        format!("{}/x", chain.app.redirect_uri),
        chain.second.redirect_uri.clone(),
    ] {
        let mut g = grant.clone();
        g.request.client.redirect_uri = other.clone();
        let resp = chain.redeem(&agent, &g, &chain.app.basic()).await.unwrap();
        assert_eq!(resp.status, 400, "redirect_uri {other}: {}", resp.text);
        assert_eq!(
            resp.error(),
            Some("invalid_grant"),
            "redirect_uri {other}: {}",
            resp.text
        );
    }
    // Without redirect_uri at all.
    let resp = rp::token_request(
        &agent.http,
        &chain.adapter("/oauth2/token"),
        &chain.app.basic(),
        &[
            ("grant_type", "authorization_code"),
            ("code", &grant.code),
            ("code_verifier", grant.request.verifier()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 400, "missing redirect_uri: {}", resp.text);
    assert_eq!(
        resp.error(),
        Some("invalid_grant"),
        "missing redirect_uri: {}",
        resp.text
    );
}

/// RFC 7636 §4.6: PKCE verifier mismatch -> `invalid_grant`.
#[tokio::test]
async fn pkce_verifier_mismatch_is_invalid_grant() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let mut grant = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.app))
        .await
        .unwrap();
    grant.request.pkce = Some(Pkce::new()); // a different, well-formed verifier
    let resp = chain
        .redeem(&agent, &grant, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text);
    assert_eq!(resp.error(), Some("invalid_grant"), "{}", resp.text);
}

/// RFC 9700 §4.8.2, RFC 7636 §4.6: a challenge was sent but no verifier
/// (PKCE downgrade): `invalid_grant`.
#[tokio::test]
async fn pkce_missing_verifier_is_invalid_grant() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let mut grant = chain
        .obtain_code(&agent, &AuthRequest::new(&chain.app))
        .await
        .unwrap();
    grant.request.pkce = None;
    let resp = chain
        .redeem(&agent, &grant, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text);
    assert_eq!(resp.error(), Some("invalid_grant"), "{}", resp.text);
}

// ------------------------------------------ the adapter as an RP ----

/// RFC 6749 §10.12: a replayed upstream callback issues no second code,
/// neither in the same browser nor in another one: an error page (the
/// state no longer names a login, so no redirect is safe).
#[tokio::test]
async fn replayed_upstream_callback_is_rejected() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let callback = chain.upstream_callback_for(&agent, &req).await.unwrap();
    let resp = agent.get(callback.as_str()).await.unwrap();
    let first = expect_redirect(&resp, "first callback").unwrap();
    assert!(
        param(&first, "code").is_some(),
        "the genuine callback works: {first}"
    );

    let resp = agent.get(callback.as_str()).await.unwrap();
    assert_error_page(resp, "replayed callback, same browser").await;
    let other = Agent::new().unwrap();
    let resp = other.get(callback.as_str()).await.unwrap();
    assert_error_page(resp, "replayed callback, other browser").await;
}

/// RFC 6749 §10.12: a callback whose state does not match the login, or
/// has none, gives an error page and no code.
#[tokio::test]
async fn upstream_callback_state_mismatch_is_rejected() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let callback = chain.upstream_callback_for(&agent, &req).await.unwrap();
    let mut forged = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                format!("{v}x")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let resp = agent.get(forged.as_str()).await.unwrap();
    assert_error_page(resp, "state mismatch").await;

    // A callback without any state.
    let mut no_state = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .filter(|(k, _)| k != "state")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    no_state.query_pairs_mut().clear().extend_pairs(pairs);
    let resp = agent.get(no_state.as_str()).await.unwrap();
    assert_error_page(resp, "no state").await;
    // The genuine callback still works: the forgeries consumed nothing.
    let resp = agent.get(callback.as_str()).await.unwrap();
    let to_rp = expect_redirect(&resp, "genuine callback").unwrap();
    assert!(param(&to_rp, "code").is_some(), "{to_rp}");
    assert_eq!(param(&to_rp, "state").as_deref(), Some(req.state.as_str()));
}

/// RFC 6749 §10.12: the upstream answers with a state it was not given.
#[tokio::test]
async fn upstream_returning_a_wrong_state_is_rejected() {
    let (fake, chain) = fake_chain(Tamper::None).await;
    fake.set_wrong_state(Some("forged-state-value-0123456789"));
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    let to_fake = expect_redirect(&resp, "adapter -> fake upstream").unwrap();
    let resp = agent.get(to_fake.as_str()).await.unwrap();
    let callback = expect_redirect(&resp, "fake upstream -> adapter").unwrap();
    assert_eq!(
        param(&callback, "state").as_deref(),
        Some("forged-state-value-0123456789")
    );
    let resp = agent.get(callback.as_str()).await.unwrap();
    assert_error_page(resp, "wrong state from the upstream").await;
    assert!(
        fake.token_requests().is_empty(),
        "the adapter must not redeem a code for an unknown state"
    );
}

/// Drives one login through the fake upstream; returns the adapter's answer
/// to the callback.
async fn login_through_fake(
    fake: &FakeUpstream,
    chain: &TestChain,
    agent: &Agent,
    req: &AuthRequest,
) -> reqwest::Response {
    let resp = agent.get(&chain.authorize_url(req)).await.unwrap();
    let to_fake = expect_redirect(&resp, "adapter -> fake upstream").unwrap();
    assert_eq!(
        without_query(&to_fake),
        format!("{}/authorize", fake.issuer)
    );
    let resp = agent.get(to_fake.as_str()).await.unwrap();
    let callback = expect_redirect(&resp, "fake upstream -> adapter").unwrap();
    assert_eq!(without_query(&callback), chain.upstream_callback());
    agent.get(callback.as_str()).await.unwrap()
}

/// Positive control for the tampered-token tests: an untampered ID token from
/// the fake upstream is accepted, and the adapter sent its own state, nonce
/// and PKCE S256 (OIDC Core §3.1.2.1, RFC 7636 §4.3), proved the verifier
/// (RFC 7636 §4.5) and authenticated with its client secret (RFC 6749 §2.3.1).
#[tokio::test]
async fn upstream_valid_id_token_is_accepted() {
    let (fake, chain) = fake_chain(Tamper::None).await;
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = login_through_fake(&fake, &chain, &agent, &req).await;
    let to_rp = expect_redirect(&resp, "adapter callback").unwrap();
    assert_eq!(without_query(&to_rp), chain.app.redirect_uri);
    let code = param(&to_rp, "code")
        .unwrap_or_else(|| panic!("valid upstream token, yet no code: {to_rp}"));
    assert_eq!(param(&to_rp, "state").as_deref(), Some(req.state.as_str()));

    let seen = fake.authorize_requests();
    assert_eq!(seen.len(), 1);
    let a = &seen[0];
    assert_eq!(a.get("client_id"), Some(ADAPTER_CLIENT_ID));
    assert_eq!(a.get("code_challenge_method"), Some("S256"));
    assert_eq!(a.get("code_challenge").map(str::len), Some(43));
    assert!(a.get("nonce").is_some_and(|n| n != req.nonce), "own nonce");
    assert!(
        a.get("state")
            .is_some_and(|s| s != req.state && s.len() >= 22),
        "own state"
    );
    assert_eq!(
        a.get("redirect_uri"),
        Some(chain.upstream_callback().as_str())
    );
    let tokens = fake.token_requests();
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        tokens[0].basic,
        Some((
            ADAPTER_CLIENT_ID.to_string(),
            "fake-upstream-secret".to_string()
        )),
        "client_secret_basic"
    );
    assert_eq!(
        fake.pkce_failures(),
        0,
        "the adapter sent the right code_verifier"
    );

    let grant = e2e::chain::CodeGrant {
        request: req,
        code,
        redirect: to_rp,
    };
    let tokens = chain
        .redeem(&agent, &grant, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(tokens.status, 200, "{}", tokens.text);
    let (_, claims) = rp::verify_jwt(
        &agent.http,
        &chain.adapter("/oauth2/jwks"),
        tokens.str("id_token").unwrap(),
        &chain.adapter_issuer,
        "test-app",
    )
    .await
    .unwrap();
    assert_eq!(claims["sub"], "fakeuser");
    assert_eq!(
        claims[format!("{}_sub", UPSTREAM_ID.replace('-', "_"))],
        "fakeuser"
    );
}

/// A login whose upstream token response is forged by `tamper`: the adapter
/// redeems the upstream code once, then answers the RP with exactly
/// `access_denied` (RFC 6749 §4.1.2.1), its state and iss, and no code; and
/// no adapter session was created.
async fn assert_tampered_login_denied(tamper: Tamper) {
    let (fake, chain) = fake_chain(tamper).await;
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = login_through_fake(&fake, &chain, &agent, &req).await;
    assert!(
        rp::set_cookie(resp.headers(), ADAPTER_COOKIE).is_none(),
        "{tamper:?}: no adapter session"
    );
    assert_error_redirect(&resp, &req, &chain, "access_denied", &format!("{tamper:?}"));
    assert_eq!(
        fake.token_requests().len(),
        1,
        "{tamper:?}: the adapter redeemed the upstream code once"
    );
    assert!(
        agent
            .cookie(&chain.adapter_issuer, ADAPTER_COOKIE)
            .is_none(),
        "{tamper:?}: no adapter session in the jar"
    );
}

/// OIDC Core §3.1.3.7 step 6: an upstream ID token signed with a key not in
/// its JWKS is refused.
#[tokio::test]
async fn upstream_id_token_bad_signature_is_access_denied() {
    assert_tampered_login_denied(Tamper::BadSignature).await;
}

/// OIDC Core §3.1.3.7 step 2: `iss` must equal the upstream's issuer exactly.
#[tokio::test]
async fn upstream_id_token_wrong_issuer_is_access_denied() {
    assert_tampered_login_denied(Tamper::WrongIssuer).await;
}

/// OIDC Core §3.1.3.7 step 3: `aud` must contain the adapter's client_id.
#[tokio::test]
async fn upstream_id_token_wrong_audience_is_access_denied() {
    assert_tampered_login_denied(Tamper::WrongAudience).await;
}

/// OIDC Core §3.1.3.7 step 11: `nonce` must equal the one the adapter sent.
#[tokio::test]
async fn upstream_id_token_wrong_nonce_is_access_denied() {
    assert_tampered_login_denied(Tamper::WrongNonce).await;
}

/// OIDC Core §3.1.3.7 step 9: an expired ID token is refused.
#[tokio::test]
async fn upstream_id_token_expired_is_access_denied() {
    assert_tampered_login_denied(Tamper::Expired).await;
}

/// OIDC Core §3.1.3.8: an `at_hash` that is not the access token's is refused.
#[tokio::test]
async fn upstream_id_token_wrong_at_hash_is_access_denied() {
    assert_tampered_login_denied(Tamper::WrongAtHash).await;
}

/// OIDC Core §10.1, RFC 8725 §3.1: an ID token "signed" with HS256 keyed by
/// the adapter's own client secret is refused (algorithm allowlist).
#[tokio::test]
async fn upstream_id_token_hmac_with_client_secret_is_access_denied() {
    assert_tampered_login_denied(Tamper::IdHs256WithClientSecret).await;
}

/// RFC 6749 §4.1.2.1: the upstream is down (closed port). The adapter still
/// starts, but is not ready before the upstream was discovered once (its
/// readiness names the upstream); a login gets `temporarily_unavailable`
/// with the RP's state and the adapter's iss — never a 500.
#[tokio::test]
async fn upstream_down_gives_temporarily_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let chain = TestChain::builder()
        .upstream(Upstream::External {
            issuer: format!("http://127.0.0.1:{port}"),
            client_id: ADAPTER_CLIENT_ID.into(),
            client_secret: "unused".into(),
        })
        .test_app(false)
        .start()
        .await
        .unwrap();
    let agent = Agent::new().unwrap();
    let ready = agent.get(&chain.adapter("/healthz/ready")).await.unwrap();
    assert_eq!(
        ready.status(),
        503,
        "an upstream never discovered makes the adapter unready"
    );
    let body: Value = ready.json().await.unwrap();
    assert_eq!(
        body["missing"],
        serde_json::json!([format!("upstream:{UPSTREAM_ID}")])
    );

    let req = AuthRequest::new(&chain.app);
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    assert_error_redirect(
        &resp,
        &req,
        &chain,
        "temporarily_unavailable",
        "upstream down",
    );
}

/// RFC 6749 §4.1.2.1: the upstream dies between the redirect and the
/// callback (the token request fails): `temporarily_unavailable`, no code.
#[tokio::test]
async fn upstream_dies_mid_login_gives_temporarily_unavailable() {
    let (fake, chain) = fake_chain(Tamper::None).await;
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    let to_fake = expect_redirect(&resp, "adapter -> fake upstream").unwrap();
    let resp = agent.get(to_fake.as_str()).await.unwrap();
    let callback = expect_redirect(&resp, "fake upstream -> adapter").unwrap();
    let addr = fake.addr;
    fake.stop().await.unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the fake upstream is really down"
    );
    let resp = agent.get(callback.as_str()).await.unwrap();
    assert_error_redirect(
        &resp,
        &req,
        &chain,
        "temporarily_unavailable",
        "upstream down at the callback",
    );
}

/// The adapter starts while its upstream is unreachable, and retries
/// discovery (OIDC Discovery §4): once the upstream is up, the next login works.
#[tokio::test]
async fn adapter_recovers_when_the_upstream_comes_up_later() {
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let chain = TestChain::builder()
        .upstream(Upstream::External {
            issuer: format!("http://{addr}"),
            client_id: ADAPTER_CLIENT_ID.into(),
            client_secret: "fake-upstream-secret".into(),
        })
        .test_app(false)
        .start()
        .await
        .unwrap();
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    assert_error_redirect(
        &resp,
        &req,
        &chain,
        "temporarily_unavailable",
        "upstream not up yet",
    );

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let fake = FakeUpstream::start_on(listener, ADAPTER_CLIENT_ID, Tamper::None)
        .await
        .unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = login_through_fake(&fake, &chain, &agent, &req).await;
    let to_rp = expect_redirect(&resp, "adapter callback once the upstream is up").unwrap();
    assert!(
        param(&to_rp, "code").is_some(),
        "login works after the upstream came up: {to_rp}"
    );
    assert_eq!(param(&to_rp, "state").as_deref(), Some(req.state.as_str()));
}

/// The pending request and the upstream login state live in the
/// store, so the adapter can be restarted between its redirect to the
/// upstream and the upstream's callback, and the login still completes.
#[tokio::test]
async fn login_survives_an_adapter_restart_between_redirect_and_callback() {
    let mut chain = TestChain::start().await.unwrap();
    let agent = Agent::new().unwrap();
    let resp = agent.get(&chain.app_path("/authenticated")).await.unwrap();
    let to_adapter = expect_redirect(&resp, "test-app /authenticated").unwrap();
    let resp = agent.get(to_adapter.as_str()).await.unwrap();
    let to_upstream = expect_redirect(&resp, "adapter /oauth2/authorize").unwrap();
    assert!(to_upstream.as_str().starts_with(&chain.upstream_issuer));
    let callback = chain.login_at_upstream(&agent, &to_upstream).await.unwrap();
    assert_eq!(without_query(&callback), chain.upstream_callback());

    chain.restart_adapter().await.unwrap();

    let resp = agent.get(callback.as_str()).await.unwrap();
    let to_app = expect_redirect(&resp, "adapter callback after restart").unwrap();
    assert_eq!(without_query(&to_app), chain.app.redirect_uri);
    assert!(
        param(&to_app, "code").is_some(),
        "a code after the restart: {to_app}"
    );
    let resp = agent.get(to_app.as_str()).await.unwrap();
    let page = expect_redirect(&resp, "test-app callback").unwrap();
    assert_eq!(page.path(), "/authenticated");
    let me: Value = agent
        .get(&chain.app_path("/api/me"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["access_token_claims"]["sub"], "testuser");
    assert_eq!(
        me["access_token_claims"]["test_auth_server_sub"],
        "testuser"
    );
}

/// OIDC Core §5.3.2: with `userinfo = "auto"` (the default) and a rule
/// reading a claim the ID token lacks, the upstream's userinfo is fetched
/// and merged (the claim reaches the token); a userinfo `sub` that differs
/// from the ID token's fails the login.
#[tokio::test]
async fn upstream_userinfo_is_fetched_and_its_sub_checked() {
    let fake = FakeUpstream::start(ADAPTER_CLIENT_ID, Tamper::None)
        .await
        .unwrap();
    let chain = TestChain::builder()
        .upstream(Upstream::External {
            issuer: fake.issuer.clone(),
            client_id: ADAPTER_CLIENT_ID.into(),
            client_secret: "any-secret".into(),
        })
        .test_app(false)
        .tweak_adapter(fresh::department_rule)
        .start()
        .await
        .unwrap();
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = login_through_fake(&fake, &chain, &agent, &req).await;
    let to_app = expect_redirect(&resp, "adapter callback").unwrap();
    let code = param(&to_app, "code").expect("a code");
    assert_eq!(fake.userinfo_calls(), 1, "userinfo was fetched");
    let grant = CodeGrant {
        request: req,
        code,
        redirect: to_app,
    };
    let tokens = chain
        .redeem(&agent, &grant, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(tokens.status, 200, "{}", tokens.text);
    let access = tokens.str("access_token").unwrap();
    let (_, claims) = rp::decode_unverified(access).unwrap();
    assert_eq!(claims["department"], "fake-dept", "{claims}");
    assert_eq!(claims["sub"], "fakeuser");

    // A userinfo answer about someone else is refused.
    fake.set_userinfo_sub(Some("someone-else"));
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = login_through_fake(&fake, &chain, &agent, &req).await;
    assert_error_redirect(
        &resp,
        &req,
        &chain,
        "access_denied",
        "userinfo sub mismatch",
    );
    assert_eq!(fake.userinfo_calls(), 2);
}

/// OIDC Core §10.1.1: an ID token signed with a key the cached JWKS lacks
/// makes the adapter fetch the JWKS once more, so a rotated key that is now
/// published is accepted; another unknown `kid` soon after (within the 30 s
/// throttle) triggers no fetch at all and fails. Exact fetch counts: without
/// the throttle the third login would fetch a third time.
#[tokio::test]
async fn upstream_key_rotation_triggers_one_throttled_jwks_refetch() {
    let (fake, chain) = fake_chain(Tamper::None).await;
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = login_through_fake(&fake, &chain, &agent, &req).await;
    let to_app = expect_redirect(&resp, "first login").unwrap();
    assert!(
        param(&to_app, "code").is_some(),
        "positive control: {to_app}"
    );
    assert_eq!(fake.jwks_fetches(), 1, "discovery fetched the JWKS once");

    // The upstream rotates: new tokens carry the second key's kid, which
    // the JWKS now lists. One refetch and the login succeeds.
    fake.set_tamper(Tamper::SecondKey);
    fake.publish_second_key();
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = login_through_fake(&fake, &chain, &agent, &req).await;
    let to_app = expect_redirect(&resp, "login after rotation").unwrap();
    assert!(
        param(&to_app, "code").is_some(),
        "rotated key accepted: {to_app}"
    );
    assert_eq!(
        fake.jwks_fetches(),
        2,
        "exactly one refetch for the new kid"
    );

    // Right after, a kid the upstream never publishes: the refetch is
    // throttled, so no fetch happens and the login fails.
    fake.set_tamper(Tamper::UnpublishedKey);
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = login_through_fake(&fake, &chain, &agent, &req).await;
    assert_error_redirect(&resp, &req, &chain, "access_denied", "unpublished kid");
    assert_eq!(
        fake.jwks_fetches(),
        2,
        "a second unknown kid within the throttle window triggers no fetch"
    );
}

/// OIDC Core §10.1.1: a `kid` the upstream never publishes fails after
/// exactly one refetch, and a second attempt right after fetches nothing.
#[tokio::test]
async fn upstream_unpublished_kid_fails_and_refetch_is_throttled() {
    let (fake, chain) = fake_chain(Tamper::UnpublishedKey).await;
    // Discovery (1) + one forced refetch (1); then the throttle holds.
    for (attempt, fetches) in [(1, 2), (2, 2)] {
        let agent = Agent::new().unwrap();
        let req = AuthRequest::new(&chain.app);
        let resp = login_through_fake(&fake, &chain, &agent, &req).await;
        assert_error_redirect(
            &resp,
            &req,
            &chain,
            "access_denied",
            &format!("unpublished kid, attempt {attempt}"),
        );
        assert_eq!(
            fake.jwks_fetches(),
            fetches,
            "JWKS fetches after attempt {attempt}"
        );
    }
}

/// RFC 9207 §2.4: a callback whose `iss` is not the upstream's is refused
/// (mix-up defence), even with a valid state and code.
#[tokio::test]
async fn upstream_callback_with_another_iss_is_refused() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    let to_upstream = expect_redirect(&resp, "adapter -> upstream").unwrap();
    let callback = chain.login_at_upstream(&agent, &to_upstream).await.unwrap();
    assert_eq!(
        param(&callback, "iss").as_deref(),
        Some(chain.upstream_issuer.as_str()),
        "the upstream sends iss (RFC 9207)"
    );
    let mut forged = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "iss" {
                "http://127.0.0.1:1".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let resp = agent.get(forged.as_str()).await.unwrap();
    assert_error_redirect(
        &resp,
        &req,
        &chain,
        "access_denied",
        "callback with a foreign iss",
    );
}

/// RFC 6749 §4.1.2.1: the upstream answers `error=access_denied` (the user
/// refused): the RP gets `access_denied` with its own state and the
/// adapter's `iss`, and not the upstream's text.
#[tokio::test]
async fn upstream_access_denied_reaches_the_rp() {
    let chain = TestChain::builder().test_app(false).start().await.unwrap();
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    let to_upstream = expect_redirect(&resp, "adapter -> upstream").unwrap();
    let up_state = param(&to_upstream, "state").unwrap();
    let mut denied = Url::parse(&chain.upstream_callback()).unwrap();
    denied.query_pairs_mut().extend_pairs([
        ("error", "access_denied"),
        ("error_description", "<script>user said no</script>"),
        ("state", up_state.as_str()),
        ("iss", chain.upstream_issuer.as_str()),
    ]);
    let resp = agent.get(denied.as_str()).await.unwrap();
    let to_app = expect_redirect(&resp, "adapter after upstream denial").unwrap();
    assert_eq!(without_query(&to_app), chain.app.redirect_uri);
    assert_eq!(param(&to_app, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&to_app, "state").as_deref(), Some(req.state.as_str()));
    assert_eq!(
        param(&to_app, "iss").as_deref(),
        Some(chain.adapter_issuer.as_str())
    );
    assert!(param(&to_app, "code").is_none());
    let description = param(&to_app, "error_description").unwrap_or_default();
    assert!(
        !description.contains("<script>"),
        "upstream text is not relayed: {description}"
    );
    // The state was consumed: the same denial cannot be replayed.
    let resp = agent.get(denied.as_str()).await.unwrap();
    assert_error_page(resp, "replayed denial").await;
}

/// Two adapter replicas on one PostgreSQL database serve one login
/// together: authorize on replica 1, the upstream callback on replica 2, the
/// token on replica 1, userinfo on replica 2. Both publish the same key, and
/// a code redeemed on one replica is spent on the other.
#[tokio::test]
async fn two_replicas_on_postgres_share_every_step() {
    let schema = e2e::chain::PgSchema::create().await.unwrap();
    let url = schema.url.clone();
    // Replicas on PostgreSQL share the key that encrypts signing keys at rest.
    std::env::set_var(
        "AUTH_ADAPTER_E2E_KEYS_KEY",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [42u8; 32]),
    );
    let mut chain = TestChain::builder()
        .test_app(false)
        .tweak_adapter(move |c| {
            c.database.url = url;
            c.keys.encryption_key_env = Some("AUTH_ADAPTER_E2E_KEYS_KEY".into());
        })
        .start()
        .await
        .unwrap();
    let replica = chain.spawn_adapter_replica().await.unwrap();
    let agent = Agent::new().unwrap();

    let jwks = |base: String| {
        let http = agent.http.clone();
        async move {
            http.get(format!("{base}/oauth2/jwks"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        jwks(chain.adapter_issuer.clone()).await,
        jwks(replica.clone()).await,
        "replicas publish the same keys"
    );

    let req = AuthRequest::new(&chain.app);
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    let to_upstream = expect_redirect(&resp, "replica 1 /oauth2/authorize").unwrap();
    let callback = chain.login_at_upstream(&agent, &to_upstream).await.unwrap();
    // The load balancer sends the callback to the other replica.
    let on_replica = callback
        .as_str()
        .replacen(&chain.adapter_issuer, &replica, 1);
    assert_ne!(on_replica, callback.as_str());
    let resp = agent.get(&on_replica).await.unwrap();
    let to_app = expect_redirect(&resp, "replica 2 callback").unwrap();
    let code = param(&to_app, "code").expect("replica 2 issued a code");
    let grant = CodeGrant {
        request: req,
        code,
        redirect: to_app,
    };
    let tokens = chain
        .redeem(&agent, &grant, &chain.app.basic())
        .await
        .unwrap();
    assert_eq!(tokens.status, 200, "replica 1 redeems: {}", tokens.text);
    let access = tokens.str("access_token").unwrap().to_string();

    let info = agent
        .http
        .get(format!("{replica}/userinfo"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200, "replica 2 accepts replica 1's token");
    let info: Value = info.json().await.unwrap();
    assert_eq!(info["sub"], "testuser");

    // Single use across replicas: replaying the code on replica 2 fails.
    let replay = rp::token_request(
        &agent.http,
        &format!("{replica}/oauth2/token"),
        &chain.app.basic(),
        &[
            ("grant_type", "authorization_code"),
            ("code", grant.code.as_str()),
            ("redirect_uri", chain.app.redirect_uri.as_str()),
            ("code_verifier", grant.request.verifier()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(replay.error(), Some("invalid_grant"));
    drop(chain);
    schema.drop_schema().await.unwrap();
}

/// RFC 6749 §4.1.2.1: an upstream whose token endpoint answers 5xx makes the
/// login fail with `temporarily_unavailable` (not `access_denied`): retrying
/// is right.
#[tokio::test]
async fn upstream_token_endpoint_5xx_is_temporarily_unavailable() {
    let (fake, chain) = fake_chain(Tamper::TokenEndpointDown).await;
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = login_through_fake(&fake, &chain, &agent, &req).await;
    assert_error_redirect(
        &resp,
        &req,
        &chain,
        "temporarily_unavailable",
        "token endpoint 503",
    );
}
