//! Several upstreams behind one adapter (README "Several upstreams"): two
//! fake OpenID Providers (`fake-op`, `partner`) and the local accounts. A
//! client's `upstreams` limits its chooser, its single sign-on and its
//! grants at the token endpoint; `upstream_hint` and `login_hint` e-mail
//! domains skip the chooser.

use adapter::config::{Config, SubjectStrategy};
use reqwest::StatusCode;
use serde_json::Value;

use super::support::*;

const PARTNER: &str = "partner";
const LOCAL: &str = "local";

/// The adapter with its two fake upstreams.
struct Routed {
    corp: FakeOp,
    partner: FakeOp,
    app: TestApp,
}

/// Upstreams `fake-op` and `partner` (users at `partner.example`), besides
/// the local accounts (users at `example.org`). Two user bases: namespaced
/// subjects (OIDC Core §2, `sub` is unique per issuer only).
fn two_upstreams(c: &mut Config, corp: &FakeOp, partner: &FakeOp) {
    c.upstreams = [(UPSTREAM_ID, "Corp", corp), (PARTNER, "Partner", partner)]
        .map(|(id, name, op)| {
            let mut up =
                clients::upstream(id, name, &op.issuer, UPSTREAM_CLIENT_ID, UPSTREAM_SECRET)
                    .unwrap();
            up.subject = SubjectStrategy::Namespaced;
            up
        })
        .into();
    c.upstreams[1].email_domains = vec!["partner.example".into()];
    c.accounts.email_domains = vec!["example.org".into()];
}

/// Lets `client` use only the connectors `ids`.
fn allow(c: &mut Config, client: &str, ids: &[&str]) {
    let client = c.clients.iter_mut().find(|x| x.id == client).unwrap();
    client.upstreams = Some(ids.iter().map(|s| s.to_string()).collect());
}

async fn spawn_routed(tweak: impl FnOnce(&mut Config)) -> Routed {
    let corp = start_fake_upstream(Tamper::None).await;
    let partner = start_fake_upstream(Tamper::None).await;
    let app = spawn_app_with(|c| {
        two_upstreams(c, &corp, &partner);
        tweak(c);
    })
    .await;
    Routed { corp, partner, app }
}

/// Another instance on the same database and clock, with its configuration
/// changed by `tweak` (a redeploy with a new configuration).
async fn spawn_changed(r: &Routed, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(&r.app.db_url);
    two_upstreams(&mut config, &r.corp, &r.partner);
    tweak(&mut config);
    let (port, tx, handle) = start(config, r.app.clock.clone(), 0).await;
    TestApp {
        clock: r.app.clock.clone(),
        shutdown: Some(tx),
        handle: Some(handle),
        ..TestApp::connect(&format!("http://127.0.0.1:{port}"))
    }
}

/// The adapter's answer to an authorization request of `app` with `extra`.
async fn authorize(app: &TestApp, extra: &[(&str, &str)]) -> reqwest::Response {
    app.browser
        .get(app.authorize_url(extra))
        .send()
        .await
        .unwrap()
}

/// The redirect of an authorization request (asserted 302).
async fn redirect(app: &TestApp, extra: &[(&str, &str)]) -> String {
    let r = authorize(app, extra).await;
    assert_eq!(r.status(), StatusCode::FOUND, "{extra:?}");
    location(&r)
}

/// The connector ids of the chooser page an authorization request shows,
/// and the login id of its links.
async fn chooser(app: &TestApp, extra: &[(&str, &str)]) -> (Vec<String>, String) {
    let r = authorize(app, extra).await;
    assert_eq!(r.status(), StatusCode::OK, "{extra:?}: the chooser page");
    let html = r.text().await.unwrap();
    let ids = html
        .split("id=\"connector-")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect();
    let req = html
        .split("?req=")
        .nth(1)
        .expect("a chooser link")
        .split('"')
        .next()
        .unwrap()
        .to_string();
    (ids, req)
}

/// An error the adapter sent to the client: its code, checked to carry the
/// client's state and the adapter's issuer (RFC 6749 §4.1.2.1, RFC 9207 §2).
fn client_error(app: &TestApp, loc: &str) -> String {
    assert!(loc.starts_with(REDIRECT), "{loc}");
    let q = query(loc);
    assert_eq!(q["state"], "st-123", "{loc}");
    assert_eq!(q["iss"], app.base.as_str(), "{loc}");
    assert!(q.get("code").is_none(), "{loc}");
    q["error"].as_str().unwrap().to_string()
}

/// The chooser offers only the connectors the client allows; a crafted
/// link to another one finds no connector.
#[tokio::test]
async fn the_chooser_shows_only_the_clients_upstreams() {
    let r = spawn_routed(|c| allow(c, "app", &[LOCAL, UPSTREAM_ID])).await;
    let (ids, req) = chooser(&r.app, &[]).await;
    assert_eq!(ids, [UPSTREAM_ID, LOCAL]);
    let crafted = r
        .app
        .browser
        .get(format!("{}/login/start/{PARTNER}?req={req}", r.app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(crafted.status(), StatusCode::NOT_FOUND);
    // A client without the setting may use all of them.
    let (ids, _) = chooser(&r.app, &[("client_id", "other")]).await;
    assert_eq!(ids, [UPSTREAM_ID, PARTNER, LOCAL]);
}

/// One allowed connector: no chooser, the browser goes straight to it and
/// the login finishes there.
#[tokio::test]
async fn a_single_allowed_upstream_skips_the_chooser() {
    let r = spawn_routed(|c| allow(c, "other", &[PARTNER])).await;
    let to_upstream = redirect(&r.app, &[("client_id", "other")]).await;
    assert!(
        to_upstream.starts_with(&r.partner.authorization_endpoint()),
        "{to_upstream}"
    );
    let to_client = r.app.finish_upstream_login(&to_upstream, PARTNER).await;
    assert!(query(&to_client).contains_key("code"), "{to_client}");
}

/// OIDC Core §3.1.2.1: a session answers without a login only for a client
/// that allows the connector it was made with; another client's user logs
/// in with an allowed one, or gets `login_required` with `prompt=none`
/// (OIDC Core §3.1.2.6).
#[tokio::test]
async fn a_session_of_an_upstream_the_client_does_not_allow_is_not_reused() {
    let r = spawn_routed(|c| allow(c, "other", &[PARTNER])).await;
    let app = &r.app;
    let first = app.login(&[("upstream_hint", LOCAL)]).await;
    assert!(query(&first).contains_key("code"), "{first}");
    // `app` allows the local accounts: single sign-on.
    let sso = redirect(app, &[]).await;
    assert!(query(&sso).contains_key("code"), "{sso}");
    // `other` does not.
    let loc = redirect(app, &[("client_id", "other")]).await;
    assert!(
        loc.starts_with(&r.partner.authorization_endpoint()),
        "{loc}"
    );
    let loc = redirect(app, &[("client_id", "other"), ("prompt", "none")]).await;
    assert_eq!(client_error(app, &loc), "login_required");
}

/// `upstream_hint` (this provider's extension parameter) names the
/// connector; an unknown one, or one the client may not use, is
/// `invalid_request` at the client (RFC 6749 §4.1.2.1).
#[tokio::test]
async fn upstream_hint_goes_straight_to_the_named_upstream() {
    let r = spawn_routed(|c| allow(c, "other", &[UPSTREAM_ID, LOCAL])).await;
    let app = &r.app;
    let loc = redirect(app, &[("upstream_hint", PARTNER)]).await;
    assert!(
        loc.starts_with(&r.partner.authorization_endpoint()),
        "{loc}"
    );
    // Its own callback (RFC 9700 §4.4.2).
    assert_eq!(
        query(&loc)["redirect_uri"],
        format!("{}/login/oauth2/code/{PARTNER}", app.base).as_str()
    );
    let loc = redirect(app, &[("upstream_hint", LOCAL)]).await;
    assert!(loc.starts_with("/login/local?req="), "{loc}");
    for extra in [
        &[("upstream_hint", "nope")][..],
        &[("upstream_hint", "Not An Id")][..],
        &[("upstream_hint", PARTNER), ("client_id", "other")][..],
    ] {
        let loc = redirect(app, extra).await;
        assert_eq!(client_error(app, &loc), "invalid_request", "{extra:?}");
    }
}

/// A `login_hint` e-mail address goes to the connector claiming its domain
/// (exact, case-insensitive), and on to that upstream (OIDC Core
/// §3.1.2.1); no match shows the chooser.
#[tokio::test]
async fn login_hint_domains_pick_the_upstream() {
    let r = spawn_routed(|_| {}).await;
    let app = &r.app;
    let loc = redirect(app, &[("login_hint", "bob@Partner.EXAMPLE")]).await;
    assert!(
        loc.starts_with(&r.partner.authorization_endpoint()),
        "{loc}"
    );
    assert_eq!(query(&loc)["login_hint"], "bob@Partner.EXAMPLE");
    let loc = redirect(app, &[("login_hint", "alice@example.org")]).await;
    assert!(loc.starts_with("/login/local?req="), "{loc}");
    for hint in [
        "carol@elsewhere.example",
        "dave@sub.partner.example",
        "partner.example",
    ] {
        let (ids, _) = chooser(app, &[("login_hint", hint)]).await;
        assert_eq!(ids, [UPSTREAM_ID, PARTNER, LOCAL], "{hint}");
    }
}

/// RFC 6749 §5.2: the configuration changed after the login; the client no
/// longer allows the connector of the grant, so neither its code nor its
/// refresh token yields tokens (`invalid_grant`), and the refusal leaves
/// the refresh token as it was.
#[tokio::test]
async fn grants_of_an_upstream_the_client_no_longer_allows_are_refused() {
    let r = spawn_routed(|_| {}).await;
    let app = &r.app;
    let unused = query(&app.login(&[("upstream_hint", LOCAL)]).await)["code"]
        .as_str()
        .unwrap()
        .to_string();
    let sso = redirect(app, &[("state", "second")]).await;
    let code = query(&sso)["code"].as_str().unwrap().to_string();
    let t: Value = app.redeem(&code).await.json().await.unwrap();
    // Another instance with the same configuration refreshes…
    let same = spawn_changed(&r, |_| {}).await;
    let rotated = refresh(&same, t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: Value = rotated.json().await.unwrap();
    // …one where `app` allows the partner only refuses both grants.
    let changed = spawn_changed(&r, |c| allow(c, "app", &[PARTNER])).await;
    assert_eq!(
        error_of(changed.redeem(&unused).await).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    let refused = refresh(&changed, rotated["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        error_of(refused).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    // The refusal consumed nothing: where the upstream is allowed again,
    // the same token rotates (a consumed one would count as reused).
    let again = refresh(&same, rotated["refresh_token"].as_str().unwrap()).await;
    assert_eq!(again.status(), StatusCode::OK);
}

/// RFC 6749 §6: a refresh of client `app`.
async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    let form = [("grant_type", "refresh_token"), ("refresh_token", token)];
    app.token(&form, Some(("app", SECRET))).await
}

/// A client naming a connector that is not configured stops start-up,
/// naming the key.
#[test]
fn a_client_naming_an_unknown_upstream_is_a_config_error() {
    let out = config_check(
        "adapter.toml",
        r#"
[[clients]]
id = "c"
secret = "very-secret-value"
redirect_uris = ["http://127.0.0.1/cb"]
upstreams = ["corp", "nope"]

[[upstreams]]
id = "corp"
issuer = "https://idp.example.org"
client_id = "adapter"
client_secret = "upstream-secret"
"#,
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("clients[c].upstreams") && stderr.contains("\"nope\""),
        "{stderr}"
    );
}
