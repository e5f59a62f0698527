//! Logout: OpenID Connect RP-Initiated Logout 1.0 at `/oauth2/logout`, the
//! hop to the upstream's `end_session_endpoint` and back through
//! `/logout/callback`, and Back-Channel Logout 1.0 deliveries with their
//! retries (driven by the manual clock, never by sleeping).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapter::backchannel::{self, deliver_due, MAX_ATTEMPTS};
use adapter::clock::Clock;
use adapter::store::{BackchannelRow, SqlStore, Store};
use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use reqwest::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::support::*;

/// Where `app` may be sent after logging out.
const AFTER_LOGOUT: &str = "http://127.0.0.1:1/logged-out?from=adapter";

/// A relying party's back-channel receiver: records every POST body and
/// answers with the status in `status`.
struct Receiver {
    uri: String,
    bodies: Arc<Mutex<Vec<String>>>,
    status: Arc<AtomicU16>,
}

/// What the receiver records, and the status it answers with.
type ReceiverState = (Arc<Mutex<Vec<String>>>, Arc<AtomicU16>);

async fn receiver() -> Receiver {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let status = Arc::new(AtomicU16::new(200));
    let state = (bodies.clone(), status.clone());
    let app = axum::Router::new()
        .route(
            "/bc",
            axum::routing::post(
                |State((bodies, status)): State<ReceiverState>, body: String| async move {
                    bodies.lock().unwrap().push(body);
                    AxumStatus::from_u16(status.load(Ordering::SeqCst)).unwrap()
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}/bc", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        uri,
        bodies,
        status,
    }
}

impl Receiver {
    fn hits(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    /// Waits (polling, at most 10 s) until `n` deliveries arrived.
    async fn wait_for(&self, n: usize) {
        for _ in 0..200 {
            if self.hits() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(self.hits(), n, "deliveries received");
    }

    fn logout_token(&self, i: usize) -> String {
        let body = self.bodies.lock().unwrap()[i].clone();
        url::form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no logout_token in {body}"))
    }
}

/// The adapter with local accounts; client `app` registers [`AFTER_LOGOUT`]
/// and, when given, a back-channel logout URI.
async fn spawn(backchannel_uri: Option<String>) -> TestApp {
    spawn_app_with(move |c| {
        c.clients[0].post_logout_redirect_uris = vec![AFTER_LOGOUT.into()];
        c.clients[0].backchannel_logout_uri = backchannel_uri;
    })
    .await
}

/// Logs in and redeems: (ID token, access token).
async fn tokens(app: &TestApp) -> (String, String) {
    let code = app.code().await;
    let r = app.redeem(&code).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    (
        t["id_token"].as_str().unwrap().to_string(),
        t["access_token"].as_str().unwrap().to_string(),
    )
}

async fn userinfo(app: &TestApp, access_token: &str) -> StatusCode {
    app.rp
        .get(format!("{}/userinfo", app.base))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
        .status()
}

fn logout_url(app: &TestApp, params: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(&format!("{}/oauth2/logout", app.base)).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    url.to_string()
}

/// The next authorization request of the browser asks for the password
/// again (no single sign-on left).
async fn asks_for_login_again(app: &TestApp) -> bool {
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    location(&r).starts_with("/login/local?req=")
}

/// The page that sends the browser on to the upstream: its meta refresh
/// target, which its link repeats.
fn upstream_hop(html: &str) -> String {
    // askama writes `&` as `&#38;`.
    let unescape = |s: &str| s.replace("&#38;", "&").replace("&amp;", "&");
    let between = |start: &str| {
        let i = html
            .find(start)
            .unwrap_or_else(|| panic!("no {start} in {html}"))
            + start.len();
        unescape(html[i..].split('"').next().unwrap())
    };
    let refresh = between("http-equiv=\"refresh\" content=\"0;url=");
    assert_eq!(between("id=\"upstream-logout-link\" href=\""), refresh);
    refresh
}

async fn assert_page(r: reqwest::Response, status: StatusCode, text: &str) {
    assert_eq!(r.status(), status);
    assert!(r.headers().get(LOCATION).is_none(), "no redirect");
    let html = r.text().await.unwrap();
    assert!(html.contains(text), "{text:?} not in {html}");
}

/// RP-Initiated Logout 1.0 §2.1, Back-Channel Logout 1.0 §2.1: discovery
/// advertises the logout endpoints.
#[tokio::test]
async fn discovery_advertises_logout() {
    let app = spawn(None).await;
    let d: Value = reqwest::get(format!("{}/.well-known/openid-configuration", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        d["end_session_endpoint"],
        format!("{}/oauth2/logout", app.base)
    );
    assert_eq!(d["backchannel_logout_supported"], true);
    assert_eq!(d["backchannel_logout_session_supported"], true);
}

/// RP-Initiated Logout 1.0 §2, §3: a GET with `id_token_hint`,
/// `post_logout_redirect_uri` and `state` ends the session (cookie and
/// store), kills its access tokens, and redirects to the registered URI with
/// the state.
#[tokio::test]
async fn rp_initiated_logout_get_ends_the_session_and_returns_with_state() {
    let app = spawn(None).await;
    let (id_token, access_token) = tokens(&app).await;
    assert_eq!(userinfo(&app, &access_token).await, StatusCode::OK);
    let r = app
        .browser
        .get(logout_url(
            &app,
            &[
                ("id_token_hint", &id_token),
                ("post_logout_redirect_uri", AFTER_LOGOUT),
                ("state", "rp-st&ate"),
            ],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(location(&r), format!("{AFTER_LOGOUT}&state=rp-st%26ate"));
    let cookies: Vec<&str> = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("AUTH_ADAPTER_SESSION=;") && c.contains("Max-Age=0")),
        "{cookies:?}"
    );
    // The access token of the session is revoked (RFC 6750 §3.1).
    let r = app
        .rp
        .get(format!("{}/userinfo", app.base))
        .bearer_auth(&access_token)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
    assert!(asks_for_login_again(&app).await);
}

/// RP-Initiated Logout 1.0 §2: POST is supported too; the answer to a POST
/// is 303 (RFC 9700 §4.12). Without `post_logout_redirect_uri` the end is
/// the "You are logged out" page. The ID token may have expired.
#[tokio::test]
async fn rp_initiated_logout_post_with_an_expired_hint() {
    let app = spawn(None).await;
    let (id_token, access_token) = tokens(&app).await;
    app.clock.advance(2 * 3600);
    let r = app
        .browser
        .post(format!("{}/oauth2/logout", app.base))
        .form(&[
            ("id_token_hint", id_token.as_str()),
            ("post_logout_redirect_uri", AFTER_LOGOUT),
            ("state", "s1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), format!("{AFTER_LOGOUT}&state=s1"));
    assert!(asks_for_login_again(&app).await);
    let _ = access_token;

    // Without a post_logout_redirect_uri: the page.
    let app = spawn(None).await;
    let (id_token, _) = tokens(&app).await;
    let r = app
        .browser
        .post(format!("{}/oauth2/logout", app.base))
        .form(&[("id_token_hint", id_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_page(r, StatusCode::OK, "You are logged out").await;
    assert!(asks_for_login_again(&app).await);
}

/// RP-Initiated Logout 1.0 §3: a `post_logout_redirect_uri` the client did
/// not register never receives a redirect: an error page, and the session
/// stays.
#[tokio::test]
async fn unregistered_post_logout_redirect_uri_gets_a_page_and_no_redirect() {
    let app = spawn(None).await;
    let (id_token, access_token) = tokens(&app).await;
    for uri in [
        "http://127.0.0.1:1/evil",
        "http://127.0.0.1:1/logged-out",
        "http://127.0.0.1:1/logged-out?from=adapter&x=1",
        REDIRECT,
    ] {
        let r = app
            .browser
            .get(logout_url(
                &app,
                &[
                    ("id_token_hint", &id_token),
                    ("post_logout_redirect_uri", uri),
                    ("state", "s"),
                ],
            ))
            .send()
            .await
            .unwrap();
        assert_page(
            r,
            StatusCode::BAD_REQUEST,
            "The post_logout_redirect_uri is not registered for this client.",
        )
        .await;
    }
    // With client_id instead of a hint: the same rule.
    let r = app
        .browser
        .get(logout_url(
            &app,
            &[
                ("client_id", "app"),
                ("post_logout_redirect_uri", "http://127.0.0.1:1/evil"),
            ],
        ))
        .send()
        .await
        .unwrap();
    assert_page(
        r,
        StatusCode::BAD_REQUEST,
        "The post_logout_redirect_uri is not registered for this client.",
    )
    .await;
    assert_eq!(userinfo(&app, &access_token).await, StatusCode::OK);
    assert!(!asks_for_login_again(&app).await, "the session stays");
}

/// RP-Initiated Logout 1.0 §2: `id_token_hint` must be an ID token this
/// provider issued; anything else is refused with a page, and nothing ends.
#[tokio::test]
async fn bad_id_token_hint_is_refused_with_a_page() {
    let app = spawn(None).await;
    let (id_token, access_token) = tokens(&app).await;
    let mut parts: Vec<String> = id_token.split('.').map(String::from).collect();
    parts[2] = parts[2].chars().rev().collect();
    let forged = parts.join(".");
    for hint in [forged.as_str(), access_token.as_str(), "not-a-jwt"] {
        let r = app
            .browser
            .get(logout_url(
                &app,
                &[
                    ("id_token_hint", hint),
                    ("post_logout_redirect_uri", AFTER_LOGOUT),
                ],
            ))
            .send()
            .await
            .unwrap();
        assert_page(
            r,
            StatusCode::BAD_REQUEST,
            "The id_token_hint is not an ID token issued here.",
        )
        .await;
    }
    // A client_id other than the hint's audience.
    let r = app
        .browser
        .get(logout_url(
            &app,
            &[("id_token_hint", &id_token), ("client_id", "other")],
        ))
        .send()
        .await
        .unwrap();
    assert_page(
        r,
        StatusCode::BAD_REQUEST,
        "client_id is not the audience of the id_token_hint.",
    )
    .await;
    assert_eq!(userinfo(&app, &access_token).await, StatusCode::OK);
    assert!(!asks_for_login_again(&app).await, "the session stays");
}

/// RP-Initiated Logout 1.0 §2: without `id_token_hint` the user confirms,
/// on a POST form guarded like the login form (CSRF token, same site).
#[tokio::test]
async fn logout_without_a_hint_asks_for_confirmation() {
    let app = spawn(None).await;
    let (_, access_token) = tokens(&app).await;
    let r = app
        .browser
        .get(logout_url(
            &app,
            &[
                ("client_id", "app"),
                ("post_logout_redirect_uri", AFTER_LOGOUT),
                ("state", "s2"),
            ],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"logout-form\""), "{html}");
    assert_eq!(userinfo(&app, &access_token).await, StatusCode::OK);
    let csrf = hidden(&html, "csrf_token");
    let form = |csrf: &str| {
        vec![
            ("csrf_token", csrf.to_string()),
            ("confirm", hidden(&html, "confirm")),
            ("client_id", hidden(&html, "client_id")),
            (
                "post_logout_redirect_uri",
                hidden(&html, "post_logout_redirect_uri"),
            ),
            ("state", hidden(&html, "state")),
        ]
    };
    // A forged token, or a cross-site post: refused.
    let r = app
        .browser
        .post(format!("{}/oauth2/logout", app.base))
        .form(&form("forged"))
        .send()
        .await
        .unwrap();
    assert_page(r, StatusCode::FORBIDDEN, "The form could not be verified.").await;
    let r = app
        .browser
        .post(format!("{}/oauth2/logout", app.base))
        .header("sec-fetch-site", "cross-site")
        .form(&form(&csrf))
        .send()
        .await
        .unwrap();
    assert_page(r, StatusCode::FORBIDDEN, "The form could not be verified.").await;
    assert_eq!(userinfo(&app, &access_token).await, StatusCode::OK);
    // Confirmed.
    let r = app
        .browser
        .post(format!("{}/oauth2/logout", app.base))
        .form(&form(&csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), format!("{AFTER_LOGOUT}&state=s2"));
    assert_eq!(
        userinfo(&app, &access_token).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(asks_for_login_again(&app).await);
}

/// Bad input to the new endpoints: a page with a 4xx, never a 5xx.
#[tokio::test]
async fn bad_logout_requests_get_a_4xx_page() {
    let app = spawn(None).await;
    let b = &app.base;
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            app.browser
                .get(format!("{b}/oauth2/logout?state=a&state=b")),
            StatusCode::BAD_REQUEST,
            "A parameter is repeated.",
        ),
        (
            app.browser.get(format!(
                "{b}/oauth2/logout?post_logout_redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Flogged-out%3Ffrom%3Dadapter"
            )),
            StatusCode::BAD_REQUEST,
            "post_logout_redirect_uri needs client_id or id_token_hint.",
        ),
        (
            app.browser.get(format!("{b}/oauth2/logout?client_id=nobody")),
            StatusCode::BAD_REQUEST,
            "The client is not registered.",
        ),
        (
            app.browser
                .post(format!("{b}/oauth2/logout"))
                .header(CONTENT_TYPE, "application/json")
                .body("{}"),
            StatusCode::BAD_REQUEST,
            "must be application/x-www-form-urlencoded",
        ),
        (
            app.browser.get(format!("{b}/logout/callback")),
            StatusCode::BAD_REQUEST,
            "The logout callback has no state.",
        ),
        (
            app.browser.get(format!("{b}/logout/callback?state=forged")),
            StatusCode::BAD_REQUEST,
            "This logout is unknown, expired or already completed.",
        ),
        (
            app.browser
                .get(format!("{b}/oauth2/logout?id_token_hint=%FF%00")),
            StatusCode::BAD_REQUEST,
            "The id_token_hint is not an ID token issued here.",
        ),
    ];
    for (req, status, text) in cases {
        assert_page(req.send().await.unwrap(), status, text).await;
    }
    let r = app
        .browser
        .delete(format!("{b}/oauth2/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    // No session and no hint: nothing to end, straight to the page.
    let r = app
        .browser
        .get(format!("{b}/oauth2/logout"))
        .send()
        .await
        .unwrap();
    assert_page(r, StatusCode::OK, "You are logged out").await;
}

// ------------------------------------------------ through an upstream ----

/// RP-Initiated Logout 1.0 §2 at the upstream: the adapter sends the browser
/// to the upstream's `end_session_endpoint` with the upstream's ID token as
/// `id_token_hint`, its `client_id`, its own callback and a fresh state; the
/// callback (single use) then returns to the relying party with its state.
#[tokio::test]
async fn logout_goes_through_the_upstream_end_session_endpoint_and_back() {
    let mut options = FakeOpOptions::new(UPSTREAM_CLIENT_ID);
    options.client_secret = Some(UPSTREAM_SECRET.into());
    options.end_session = true;
    let fake = FakeOp::start_with(options).await.unwrap();
    let app = spawn_app_with_upstream_and(&fake.issuer, |c| {
        c.clients[0].post_logout_redirect_uris = vec![AFTER_LOGOUT.into()];
    })
    .await;
    let to_client = app
        .login_through_upstream(&fake.authorization_endpoint())
        .await;
    let code = query(&to_client)["code"].as_str().unwrap().to_string();
    let t: Value = app.redeem(&code).await.json().await.unwrap();
    let id_token = t["id_token"].as_str().unwrap();
    let access_token = t["access_token"].as_str().unwrap();
    let (upstream_id_token, _) = fake.issued().unwrap();

    let r = app
        .browser
        .get(logout_url(
            &app,
            &[
                ("id_token_hint", id_token),
                ("post_logout_redirect_uri", AFTER_LOGOUT),
                ("state", "rp-state"),
            ],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get(LOCATION).is_none());
    let upstream = upstream_hop(&r.text().await.unwrap());
    assert!(
        upstream.starts_with(&format!("{}/logout?", fake.issuer)),
        "{upstream}"
    );
    let q = query(&upstream);
    assert_eq!(q["id_token_hint"], upstream_id_token.as_str());
    assert_eq!(q["client_id"], UPSTREAM_CLIENT_ID);
    assert_eq!(
        q["post_logout_redirect_uri"],
        format!("{}/logout/callback", app.base)
    );
    let state = q["state"].as_str().unwrap().to_string();
    assert!(state.len() >= 43 && state != "rp-state", "{state}");
    assert_eq!(q.len(), 4, "{upstream}");
    // The adapter session is already over.
    assert_eq!(userinfo(&app, access_token).await, StatusCode::UNAUTHORIZED);

    // The upstream sends the browser back.
    let callback = format!("{}/logout/callback?state={state}", app.base);
    let r = app.browser.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(location(&r), format!("{AFTER_LOGOUT}&state=rp-state"));
    // Single use.
    let r = app.browser.get(&callback).send().await.unwrap();
    assert_page(
        r,
        StatusCode::BAD_REQUEST,
        "This logout is unknown, expired or already completed.",
    )
    .await;
    // The next login goes to the upstream again.
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    assert!(location(&r).starts_with(&fake.authorization_endpoint()));
}

// ------------------------------------------------ back-channel logout ----

/// The upstream's refresh token, kept sealed in the session, is revoked at
/// the upstream's RFC 7009 revocation endpoint when the user logs out: it
/// no longer refreshes at the upstream afterwards.
#[tokio::test]
async fn logout_revokes_the_upstream_refresh_token() {
    let mut options = FakeOpOptions::new(UPSTREAM_CLIENT_ID);
    options.client_secret = Some(UPSTREAM_SECRET.into());
    options.refresh_tokens = true;
    options.revocation = true;
    let fake = FakeOp::start_with(options).await.unwrap();
    let issuer = fake.issuer.clone();
    let app = spawn_app_with(move |c| {
        c.local_users.clear();
        c.upstreams = vec![clients::upstream(
            UPSTREAM_ID,
            "Fake OP",
            &issuer,
            UPSTREAM_CLIENT_ID,
            UPSTREAM_SECRET,
        )
        .unwrap()];
    })
    .await;
    let to_client = app
        .login_through_upstream(&fake.authorization_endpoint())
        .await;
    let code = query(&to_client)["code"].as_str().unwrap().to_string();
    let t: Value = app.redeem(&code).await.json().await.unwrap();
    let id_token = t["id_token"].as_str().unwrap();
    let upstream_refresh = fake
        .last_refresh_token()
        .expect("the fake upstream issued a refresh token");

    let r = app
        .browser
        .get(logout_url(&app, &[("id_token_hint", id_token)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the logged-out page");

    let r = reqwest::Client::new()
        .post(format!("{}/token", fake.issuer))
        .basic_auth(UPSTREAM_CLIENT_ID, Some(UPSTREAM_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", upstream_refresh.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
}

/// Logs in, redeems, and ends the session with an RP-initiated logout.
/// Returns the ID token's claims.
async fn login_and_logout(app: &TestApp) -> Value {
    let (id_token, _) = tokens(app).await;
    let r = app
        .browser
        .get(logout_url(app, &[("id_token_hint", &id_token)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    jwt_parts(&id_token).1
}

/// Back-Channel Logout 1.0 §2.4, §2.5: the logout token, checked apart from
/// the adapter's code: verified with the published JWKS, `typ: logout+jwt`,
/// `iss`, `aud`, `iat`, `exp`, `jti`, the session's `sid` and `sub`, the
/// event, and no `nonce`; POSTed as the form parameter `logout_token`.
#[tokio::test]
async fn backchannel_logout_token_has_the_spec_shape() {
    let rx = receiver().await;
    let app = spawn(Some(rx.uri.clone())).await;
    let id = login_and_logout(&app).await;
    rx.wait_for(1).await;
    let token = rx.logout_token(0);

    let jwks: JwkSet = reqwest::get(format!("{}/oauth2/jwks", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[app.base.as_str()]);
    validation.set_audience(&["app"]);
    validation.set_required_spec_claims(&["iss", "aud", "iat", "exp"]);
    let claims =
        jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap()
            .claims;
    assert_eq!(claims["sid"], id["sid"]);
    assert_eq!(claims["sub"], id["sub"]);
    assert_eq!(
        claims["events"],
        json!({"http://schemas.openid.net/event/backchannel-logout": {}})
    );
    assert_eq!(claims["iat"], json!(app.clock.now()));
    assert!(claims["exp"].as_i64().unwrap() > app.clock.now());
    assert!(claims["jti"].as_str().unwrap().len() >= 22);
    let mut keys: Vec<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["aud", "events", "exp", "iat", "iss", "jti", "sid", "sub"]
    );
    assert!(claims.get("nonce").is_none());
}

async fn open_store(app: &TestApp) -> SqlStore {
    SqlStore::connect(&app.db_url, 2).await.unwrap()
}

async fn delivery(store: &SqlStore, sid: &str) -> BackchannelRow {
    let rows = store.backchannel_of_session(sid).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().unwrap()
}

/// The delivery once its attempt is over (the worker may still be reading
/// the receiver's answer when the receiver has recorded the request).
async fn finished(store: &SqlStore, sid: &str) -> BackchannelRow {
    for _ in 0..200 {
        let row = delivery(store, sid).await;
        if row.outcome.is_some() {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the delivery did not finish")
}

/// Back-Channel Logout 1.0 §2.5: a receiver that fails is retried with
/// exponential backoff when the clock says a retry is due, and never more
/// than the bounded number of attempts.
#[tokio::test]
async fn backchannel_delivery_retries_with_the_clock_and_gives_up() {
    let rx = receiver().await;
    rx.status.store(503, Ordering::SeqCst);
    let app = spawn(Some(rx.uri.clone())).await;
    let id = login_and_logout(&app).await;
    let sid = id["sid"].as_str().unwrap();
    rx.wait_for(1).await;
    let store = open_store(&app).await;
    let http = reqwest::Client::new();
    let mut expected_wait = backchannel::FIRST_RETRY_SECONDS;
    for attempt in 2..=MAX_ATTEMPTS {
        let row = delivery(&store, sid).await;
        assert_eq!(row.attempts, attempt - 1);
        assert_eq!(row.next_attempt_at, app.clock.now() + expected_wait);
        assert_eq!(row.outcome, None);
        // Not due one second early.
        app.clock.advance(expected_wait - 1);
        deliver_due(&store, &http, app.clock.now()).await.unwrap();
        assert_eq!(rx.hits(), (attempt - 1) as usize);
        app.clock.advance(1);
        deliver_due(&store, &http, app.clock.now()).await.unwrap();
        rx.wait_for(attempt as usize).await;
        expected_wait *= 2;
    }
    let row = finished(&store, sid).await;
    assert_eq!(row.attempts, MAX_ATTEMPTS);
    assert_eq!(row.outcome.as_deref(), Some("failed"));
    assert_eq!(row.done_at, Some(app.clock.now()));
    // Bounded: no attempt after the last, however late.
    app.clock.advance(24 * 3600 - 1);
    let report = deliver_due(&store, &http, app.clock.now()).await.unwrap();
    assert_eq!(report.attempted, 0);
    assert_eq!(rx.hits(), MAX_ATTEMPTS as usize);
}

/// A receiver that recovers gets the token on the retry, and once only.
#[tokio::test]
async fn backchannel_delivery_succeeds_on_a_retry_once() {
    let rx = receiver().await;
    rx.status.store(500, Ordering::SeqCst);
    let app = spawn(Some(rx.uri.clone())).await;
    let id = login_and_logout(&app).await;
    let sid = id["sid"].as_str().unwrap();
    rx.wait_for(1).await;
    rx.status.store(200, Ordering::SeqCst);
    let store = open_store(&app).await;
    let http = reqwest::Client::new();
    app.clock.advance(backchannel::FIRST_RETRY_SECONDS);
    deliver_due(&store, &http, app.clock.now()).await.unwrap();
    rx.wait_for(2).await;
    let row = finished(&store, sid).await;
    assert_eq!(
        (row.attempts, row.outcome.as_deref()),
        (2, Some("delivered"))
    );
    assert_eq!(rx.logout_token(0), rx.logout_token(1), "the same token");
    app.clock.advance(3600);
    assert_eq!(
        deliver_due(&store, &http, app.clock.now())
            .await
            .unwrap()
            .attempted,
        0
    );
    assert_eq!(rx.hits(), 2);
}

/// Back-Channel Logout 1.0 §2.4: only clients of the session that
/// registered a `backchannel_logout_uri` get a token.
#[tokio::test]
async fn clients_without_a_backchannel_uri_get_nothing() {
    let app = spawn(None).await;
    let id = login_and_logout(&app).await;
    let store = open_store(&app).await;
    assert!(store
        .backchannel_of_session(id["sid"].as_str().unwrap())
        .await
        .unwrap()
        .is_empty());
}
