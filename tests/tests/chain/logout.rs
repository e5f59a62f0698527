//! Logout through the whole chain: OpenID Connect RP-Initiated Logout 1.0
//! from the test-app through the adapter to the upstream-test-server and
//! back, and Back-Channel Logout 1.0 from the adapter to the test-app.

use std::time::Duration;

use e2e::browser::Browser;
use e2e::chain::{TestChain, ADAPTER_CLIENT_ID, USERNAME};
use e2e::rp::{expect_redirect, param, without_query, Agent};
use fantoccini::Locator;
use reqwest::StatusCode;
use url::Url;

use super::login_via_test_app;

/// The query parameters of `url`, sorted by name.
fn params(url: &Url) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    p.sort();
    p
}

/// The adapter's page that sends the browser on to the upstream's
/// `end_session_endpoint`: its meta refresh target, which its link repeats.
async fn upstream_hop(resp: reqwest::Response) -> Url {
    assert_eq!(resp.status(), StatusCode::OK, "the page to the upstream");
    assert!(resp.headers().get(reqwest::header::LOCATION).is_none());
    let html = resp.text().await.unwrap();
    let between = |start: &str| {
        let i = html
            .find(start)
            .unwrap_or_else(|| panic!("no {start} in {html}"))
            + start.len();
        // askama writes `&` as `&#38;`.
        e2e::rp::html_unescape(&html[i..].split('"').next().unwrap().replace("&#38;", "&"))
    };
    let refresh = between("http-equiv=\"refresh\" content=\"0;url=");
    assert_eq!(between("id=\"upstream-logout-link\" href=\""), refresh);
    Url::parse(&refresh).unwrap()
}

/// Asserts that a login from the test-app asks for the upstream password
/// again: test-app → adapter authorize → upstream authorize → upstream form.
async fn login_asks_for_the_password(chain: &TestChain, agent: &Agent) {
    let resp = agent.get(&chain.app_path("/authenticated")).await.unwrap();
    let to_adapter = expect_redirect(&resp, "test-app /authenticated").unwrap();
    assert_eq!(
        without_query(&to_adapter),
        chain.adapter("/oauth2/authorize")
    );
    let resp = agent.get(to_adapter.as_str()).await.unwrap();
    let to_upstream = expect_redirect(&resp, "adapter without a session").unwrap();
    assert_eq!(
        without_query(&to_upstream),
        chain.upstream("/oauth2/authorize"),
        "the adapter has no session left"
    );
    let resp = agent.get(to_upstream.as_str()).await.unwrap();
    let form = expect_redirect(&resp, "upstream without a session").unwrap();
    assert_eq!(
        without_query(&form),
        chain.upstream("/login/local"),
        "the upstream has no session left: it asks for the password"
    );
}

/// Polls the test-app's `/api/me` until it answers 401 (the back-channel
/// logout is delivered right after the logout, asynchronously).
async fn wait_until_app_session_gone(chain: &TestChain, agent: &Agent) {
    for _ in 0..100 {
        let resp = agent.get(&chain.app_path("/api/me")).await.unwrap();
        if resp.status() == StatusCode::UNAUTHORIZED {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the back-channel logout did not end the test-app session");
}

/// RP-Initiated Logout 1.0 §2, §3 through the chain, every `Location`
/// asserted: test-app → adapter `end_session_endpoint` (its ID token as
/// hint) → upstream `end_session_endpoint` (the upstream's ID token as
/// hint, the adapter's callback) → adapter `/logout/callback` → the
/// test-app's registered post-logout page. Afterwards, logging in asks for
/// the upstream password again.
#[tokio::test]
async fn logout_through_the_whole_chain_with_every_location() {
    let chain = TestChain::start().await.unwrap();
    let agent = Agent::new().unwrap();
    let me = login_via_test_app(&chain, &agent).await;
    let app_id_token = me["id_token"].as_str().unwrap().to_string();

    let resp = agent
        .post_form(&chain.app_path("/logout"), &[("everywhere", "1")])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let to_adapter = expect_redirect(&resp, "test-app POST /logout").unwrap();
    assert_eq!(without_query(&to_adapter), chain.adapter("/oauth2/logout"));
    let app_state = param(&to_adapter, "state").expect("the test-app sends a state");
    assert_eq!(
        params(&to_adapter),
        vec![
            ("client_id".to_string(), "test-app".to_string()),
            ("id_token_hint".to_string(), app_id_token),
            (
                "post_logout_redirect_uri".to_string(),
                chain.app_path("/logged-out")
            ),
            ("state".to_string(), app_state.clone()),
        ]
    );

    let resp = agent.get(to_adapter.as_str()).await.unwrap();
    let to_upstream = upstream_hop(resp).await;
    assert_eq!(
        without_query(&to_upstream),
        chain.upstream("/oauth2/logout")
    );
    assert_eq!(
        param(&to_upstream, "client_id").as_deref(),
        Some(ADAPTER_CLIENT_ID)
    );
    assert_eq!(
        param(&to_upstream, "post_logout_redirect_uri"),
        Some(chain.adapter("/logout/callback"))
    );
    let state = param(&to_upstream, "state").unwrap();
    let upstream_hint = param(&to_upstream, "id_token_hint").unwrap();
    let (_, hint_claims) = e2e::rp::decode_unverified(&upstream_hint).unwrap();
    assert_eq!(hint_claims["iss"], chain.upstream_issuer.as_str());
    assert_eq!(hint_claims["aud"], ADAPTER_CLIENT_ID);
    assert_eq!(hint_claims["sub"], USERNAME);
    assert_eq!(to_upstream.query_pairs().count(), 4, "{to_upstream}");

    let resp = agent.get(to_upstream.as_str()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let back = expect_redirect(&resp, "upstream /oauth2/logout").unwrap();
    assert_eq!(
        back.as_str(),
        format!("{}?state={state}", chain.adapter("/logout/callback"))
    );

    let resp = agent.get(back.as_str()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let end = expect_redirect(&resp, "adapter /logout/callback").unwrap();
    assert_eq!(
        end.as_str(),
        format!("{}?state={app_state}", chain.app_path("/logged-out"))
    );
    let resp = agent.get(end.as_str()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("id=\"logged-out\""));

    // Every session is gone: the access token is revoked at the adapter…
    let resp = agent
        .http
        .get(chain.adapter("/userinfo"))
        .bearer_auth(me["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // …and the next login asks for the upstream password.
    login_asks_for_the_password(&chain, &agent).await;
}

/// Back-Channel Logout 1.0 §2.5: a logout at the adapter itself (here with
/// its confirmation page, RP-Initiated Logout 1.0 §2, no hint) reaches the
/// test-app, which drops its session and says so on its home page.
#[tokio::test]
async fn adapter_logout_reaches_the_test_app_by_back_channel() {
    let chain = TestChain::start().await.unwrap();
    let agent = Agent::new().unwrap();
    login_via_test_app(&chain, &agent).await;

    let resp = agent.get(&chain.adapter("/oauth2/logout")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the confirmation page");
    let html = resp.text().await.unwrap();
    let csrf = e2e::rp::input_value(&html, "csrf_token").unwrap();
    let resp = agent
        .post_form(
            &chain.adapter("/oauth2/logout"),
            &[("csrf_token", csrf.as_str()), ("confirm", "yes")],
        )
        .await
        .unwrap();
    let to_upstream = upstream_hop(resp).await;
    assert_eq!(
        without_query(&to_upstream),
        chain.upstream("/oauth2/logout")
    );
    let resp = agent.get(to_upstream.as_str()).await.unwrap();
    let back = expect_redirect(&resp, "upstream /oauth2/logout").unwrap();
    assert_eq!(without_query(&back), chain.adapter("/logout/callback"));
    let resp = agent.get(back.as_str()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("You are logged out"));

    wait_until_app_session_gone(&chain, &agent).await;
    let resp = agent.get(&chain.app_path("/")).await.unwrap();
    let home = resp.text().await.unwrap();
    let notice = e2e::rp::element_text(&home, "backchannel-notice").expect("the notice");
    assert!(notice.contains("back-channel logout"), "{notice}");
    login_asks_for_the_password(&chain, &agent).await;
}

/// Bad logout tokens at the test-app's receiver get 400
/// `invalid_request` (Back-Channel Logout 1.0 §2.8), never a 5xx.
#[tokio::test]
async fn test_app_refuses_bad_logout_tokens() {
    let chain = TestChain::start().await.unwrap();
    let agent = Agent::new().unwrap();
    // An ID token is not a logout token (typ, events).
    let me = login_via_test_app(&chain, &agent).await;
    let url = chain.app_path("/backchannel-logout");
    for body in [
        vec![],
        vec![("logout_token", "garbage")],
        vec![("logout_token", me["id_token"].as_str().unwrap())],
        vec![("logout_token", me["access_token"].as_str().unwrap())],
    ] {
        let resp = agent.http.post(&url).form(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body:?}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "invalid_request");
    }
    let resp = agent.get(&chain.app_path("/api/me")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the session stays");
}

/// In headless Chromium: log in, log out at the adapter (confirmation page),
/// see the back-channel notice on the test-app, log in again (the upstream
/// asks for the password), then log out everywhere from the test-app and
/// land on its home page; the next login asks for the password again.
#[tokio::test]
async fn browser_logout_asks_for_the_password_again() {
    let out = e2e::output::test_dir("browser_logout").unwrap();
    let chain = TestChain::start().await.unwrap();
    let browser = Browser::start(&out).await.unwrap();
    let c = &browser.client;
    let wait = Duration::from_secs(20);

    let login = || async {
        c.goto(&chain.app_path("/authenticated")).await.unwrap();
        let form = c
            .wait()
            .at_most(wait)
            .for_element(Locator::Id("login-form"))
            .await
            .expect("the upstream asks for the password");
        assert_eq!(
            without_query(&c.current_url().await.unwrap()),
            chain.upstream("/login/local")
        );
        Browser::type_credentials(&form, USERNAME, e2e::chain::PASSWORD)
            .await
            .unwrap();
        form.find(Locator::Id("login-submit"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.wait()
            .at_most(wait)
            .for_element(Locator::Id("claim-sub"))
            .await
            .expect("the test-app page");
    };

    login().await;
    // Log out at the adapter, confirming on its page.
    c.goto(&chain.adapter("/oauth2/logout")).await.unwrap();
    c.wait()
        .at_most(wait)
        .for_element(Locator::Id("logout-submit"))
        .await
        .expect("the confirmation page")
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(wait)
        .for_element(Locator::Id("logged-out-title"))
        .await
        .expect("the logged-out page");
    browser.screenshot("adapter-logged-out").await.unwrap();
    // The back-channel logout reached the test-app.
    let mut notice = None;
    for _ in 0..50 {
        c.goto(&chain.app_path("/")).await.unwrap();
        if let Ok(e) = c.find(Locator::Id("backchannel-notice")).await {
            notice = Some(e.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let notice = notice.expect("the back-channel notice on the test-app");
    assert!(notice.contains("back-channel logout"), "{notice}");
    browser
        .screenshot("test-app-backchannel-notice")
        .await
        .unwrap();

    // Logged out everywhere: the password again.
    login().await;
    // Now from the test-app, everywhere.
    c.goto(&chain.app_path("/logout")).await.unwrap();
    c.wait()
        .at_most(wait)
        .for_element(Locator::Id("logout-everywhere-button"))
        .await
        .expect("the test-app's logout page")
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(wait)
        .for_element(Locator::Id("logged-out"))
        .await
        .expect("back on the test-app's logged-out page");
    assert_eq!(
        without_query(&c.current_url().await.unwrap()),
        chain.app_path("/logged-out")
    );
    browser
        .screenshot("test-app-after-logout-everywhere")
        .await
        .unwrap();
    login().await;
    browser.close().await.unwrap();
}
