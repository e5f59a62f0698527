//! Passkeys through the whole chain in headless Chromium with its virtual
//! authenticator (WebAuthn L2 §11.3): the user registers a passkey on the
//! upstream-test-server's devices page, logs out everywhere, then logs in
//! to the test-app with it, username-first and usernameless; the test-app
//! shows `amr` with `hwk` (RFC 8176 §2), passed through the adapter.
//!
//! The upstream runs at `http://localhost:{port}`: browsers refuse an IP
//! address as the RP ID (WebAuthn L2 §5.1.2), and `localhost` is a secure
//! context on plain http.

use std::time::Duration;

use e2e::browser::Browser;
use e2e::chain::{TestChain, PASSWORD, USERNAME};
use fantoccini::{Client, Locator};

const WAIT: Duration = Duration::from_secs(20);

async fn wait_for(c: &Client, id: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
}

async fn click(c: &Client, id: &str) {
    wait_for(c, id).await.click().await.unwrap();
}

/// The text of `#id`, found again if a reload replaced it meanwhile.
async fn text(c: &Client, id: &str) -> String {
    for _ in 0..20 {
        if let Ok(t) = wait_for(c, id).await.text().await {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("#{id}: no stable text");
}

/// Logs out from the test-app, everywhere (test-app, adapter, upstream).
async fn logout_everywhere(c: &Client, chain: &TestChain) {
    c.goto(&chain.app_path("/logout")).await.unwrap();
    click(c, "logout-everywhere-button").await;
    wait_for(c, "logged-out").await;
}

/// Adds a passkey named `label` on the upstream's devices page (the
/// browser has an upstream session); returns the listed passkeys' text.
async fn add_passkey(c: &Client, chain: &TestChain, label: &str, already: usize) -> String {
    c.goto(&chain.upstream("/account/devices")).await.unwrap();
    wait_for(c, "passkey-label")
        .await
        .send_keys(label)
        .await
        .unwrap();
    click(c, "passkey-add").await;
    // The page reloads with the new passkey.
    for _ in 0..80 {
        if let Ok(found) = c.find_all(Locator::Css("#passkeys .passkey-label")).await {
            if found.len() == already + 1 {
                return text(c, "passkeys").await;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the passkey {label} was not listed");
}

#[tokio::test]
async fn browser_chain_with_a_passkey_at_the_upstream() {
    let out = e2e::output::test_dir("browser_chain_passkey").unwrap();
    let chain = TestChain::builder()
        .localhost_upstream(true)
        .start()
        .await
        .unwrap();
    assert!(chain.upstream_issuer.starts_with("http://localhost:"));
    let browser = Browser::start(&out).await.unwrap();
    let c = &browser.client;
    // First a security key that keeps no discoverable credentials: its
    // passkey is found only from the username (`allowCredentials`).
    let key = browser.add_virtual_authenticator(false).await.unwrap();

    // 1. Log in through the chain with the password.
    c.goto(&chain.app_path("/authenticated")).await.unwrap();
    wait_for(c, "login-form").await;
    wait_for(c, "username")
        .await
        .send_keys(USERNAME)
        .await
        .unwrap();
    wait_for(c, "password")
        .await
        .send_keys(PASSWORD)
        .await
        .unwrap();
    click(c, "login-submit").await;
    assert_eq!(text(c, "claim-sub").await.trim(), USERNAME);
    let amr = text(c, "idclaim-amr").await;
    assert!(amr.contains("pwd"), "a password login: {amr}");

    // 2. Register it on the upstream's devices page.
    c.goto(&chain.upstream("/account/devices")).await.unwrap();
    assert_eq!(text(c, "passkeys-none").await.trim(), "No passkey yet.");
    let listed = add_passkey(c, &chain, "Security key", 0).await;
    assert!(listed.contains("Security key"), "{listed}");
    assert!(listed.contains("last used never"), "{listed}");
    browser.screenshot("devices-with-passkey").await.unwrap();

    // 3. Log out everywhere; log in username-first with the passkey.
    logout_everywhere(c, &chain).await;
    c.goto(&chain.app_path("/authenticated")).await.unwrap();
    wait_for(c, "login-form").await;
    wait_for(c, "username")
        .await
        .send_keys(USERNAME)
        .await
        .unwrap();
    browser.screenshot("passkey-login-page").await.unwrap();
    click(c, "passkey-submit").await;
    assert_eq!(text(c, "claim-sub").await.trim(), USERNAME);
    // A device-bound key (not backup eligible) is a hardware-secured key,
    // `hwk` (RFC 8176 §2); no password was given.
    let amr = text(c, "idclaim-amr").await;
    assert!(amr.contains("hwk"), "amr shows hwk: {amr}");
    assert!(!amr.contains("pwd"), "no password: {amr}");
    browser
        .screenshot("test-app-signed-in-with-passkey")
        .await
        .unwrap();

    // 4. A platform authenticator with discoverable credentials: its
    // passkey signs in without a username, offered by the browser's
    // conditional UI as soon as the login page loads (the virtual
    // authenticator answers at once, as a user picking it would).
    browser.remove_virtual_authenticator(&key).await.unwrap();
    browser.add_virtual_authenticator(true).await.unwrap();
    let listed = add_passkey(c, &chain, "Platform", 1).await;
    assert!(listed.contains("Platform"), "{listed}");
    logout_everywhere(c, &chain).await;
    c.goto(&chain.app_path("/authenticated")).await.unwrap();
    assert_eq!(text(c, "claim-sub").await.trim(), USERNAME);
    let amr = text(c, "idclaim-amr").await;
    assert!(amr.contains("hwk"), "amr shows hwk: {amr}");
    assert!(!amr.contains("pwd"), "no password: {amr}");

    // The devices page shows both passkeys used.
    c.goto(&chain.upstream("/account/devices")).await.unwrap();
    let listed = text(c, "passkeys").await;
    assert!(!listed.contains("last used never"), "{listed}");
    assert!(listed.contains("device-bound"), "{listed}");
    browser
        .screenshot("devices-after-passkey-logins")
        .await
        .unwrap();
    browser.close().await.unwrap();
}

/// Sign-up with a passkey at the upstream (the register page's option):
/// the account, a session, then the passkey; the new user then signs in
/// to the test-app with it and no password, through the chain.
#[tokio::test]
async fn browser_sign_up_with_a_passkey_then_sign_in() {
    let out = e2e::output::test_dir("browser_signup_passkey").unwrap();
    let chain = TestChain::builder()
        .localhost_upstream(true)
        .start()
        .await
        .unwrap();
    let browser = Browser::start(&out).await.unwrap();
    browser.add_virtual_authenticator(true).await.unwrap();
    let c = &browser.client;

    c.goto(&chain.upstream("/register")).await.unwrap();
    for (id, value) in [
        ("username", "newbie"),
        ("email", "newbie@example.org"),
        ("name", "New Bee"),
        ("password", "a long new password"),
    ] {
        wait_for(c, id).await.send_keys(value).await.unwrap();
    }
    assert!(wait_for(c, "register-passkey")
        .await
        .is_selected()
        .await
        .unwrap());
    browser.screenshot("sign-up-page").await.unwrap();
    click(c, "register-submit").await;
    let label = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#passkeys .passkey-label"))
        .await
        .expect("the devices page lists the passkey made at sign-up");
    assert_eq!(label.text().await.unwrap().trim(), "This device");
    assert_eq!(
        c.current_url().await.unwrap().as_str(),
        chain.upstream("/account/devices")
    );
    browser.screenshot("devices-after-sign-up").await.unwrap();
    // A new browser state at the upstream: no session there any more.
    c.delete_all_cookies().await.unwrap();

    c.goto(&chain.app_path("/authenticated")).await.unwrap();
    assert_eq!(text(c, "claim-sub").await.trim(), "newbie");
    let amr = text(c, "idclaim-amr").await;
    assert!(amr.contains("hwk"), "amr shows hwk: {amr}");
    assert!(!amr.contains("pwd"), "no password: {amr}");
    browser.close().await.unwrap();
}
