//! Two upstream-test-servers behind one adapter (README "Several
//! upstreams"), in headless Chromium: the adapter's chooser lists both, the
//! user picks one and logs in there, and the test-app shows a `sub`
//! namespaced per upstream (OIDC Core §2: `sub` is unique per issuer only,
//! so one username at two upstreams is two users).

use std::time::Duration;

use adapter::customizer::namespaced_subject;
use e2e::browser::Browser;
use e2e::chain::{TestChain, PASSWORD, UPSTREAM_ID, USERNAME};
use e2e::rp::without_query;
use fantoccini::Locator;

const SECOND: &str = "second-idp";

/// From the test-app through the chooser (picking `connector`) and the
/// upstream at `issuer`'s login form to the test-app page. Returns the
/// test-app's `sub` and `<upstream>_sub` claims.
async fn login_via(
    browser: &Browser,
    chain: &TestChain,
    connector: &str,
    issuer: &str,
    shot: &str,
) -> (String, String) {
    let c = &browser.client;
    let wait = |id: String| async move {
        c.wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Id(&id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
    };
    c.goto(&chain.app_path("/authenticated")).await.unwrap();
    let choice = wait(format!("connector-{connector}")).await;
    let url = c.current_url().await.unwrap();
    assert_eq!(without_query(&url), chain.adapter("/oauth2/authorize"));
    for id in [UPSTREAM_ID, SECOND] {
        let link = c
            .find(Locator::Id(&format!("connector-{id}")))
            .await
            .unwrap_or_else(|e| panic!("the chooser lists {id}: {e}"));
        assert!(link.is_displayed().await.unwrap(), "{id} is shown");
    }
    browser.screenshot(shot).await.unwrap();
    choice.click().await.unwrap();

    let form = wait("login-form".into()).await;
    let url = c.current_url().await.unwrap();
    assert_eq!(without_query(&url), format!("{issuer}/login/local"));
    Browser::type_credentials(&form, USERNAME, PASSWORD)
        .await
        .unwrap();
    form.find(Locator::Id("login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let sub = wait("claim-sub".into()).await.text().await.unwrap();
    let upstream_claim = format!("claim-{}_sub", connector.replace('-', "_"));
    let upstream_sub = wait(upstream_claim).await.text().await.unwrap();
    (sub.trim().to_string(), upstream_sub.trim().to_string())
}

/// The same demo user at both upstreams: two logins through the chooser,
/// two different `sub`s, each the upstream's subject namespaced by the
/// upstream id. Screenshots of the chooser go to
/// `$E2E_OUTPUT_DIR/browser_two_upstreams/`.
#[tokio::test]
async fn browser_chooser_with_two_upstreams_namespaces_subjects() {
    let out = e2e::output::test_dir("browser_two_upstreams").unwrap();
    let chain = TestChain::builder()
        .second_upstream(SECOND)
        .start()
        .await
        .unwrap();
    let second_issuer = chain.second_upstream_issuer.clone().unwrap();
    let browser = Browser::start(&out).await.unwrap();

    let (sub, upstream_sub) = login_via(&browser, &chain, SECOND, &second_issuer, "chooser").await;
    browser
        .screenshot("second-idp-authenticated")
        .await
        .unwrap();
    assert_eq!(upstream_sub, USERNAME);
    assert_eq!(sub, namespaced_subject(SECOND, USERNAME));

    // A fresh browser state: the same username at the first upstream.
    browser.client.delete_all_cookies().await.unwrap();
    let first_issuer = chain.upstream_issuer.clone();
    let (first_sub, first_upstream_sub) = login_via(
        &browser,
        &chain,
        UPSTREAM_ID,
        &first_issuer,
        "chooser-again",
    )
    .await;
    assert_eq!(first_upstream_sub, USERNAME);
    assert_eq!(first_sub, namespaced_subject(UPSTREAM_ID, USERNAME));
    assert_ne!(sub, first_sub, "one username at two upstreams is two users");
    browser.close().await.unwrap();
}
