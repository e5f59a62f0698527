//! Sessions per device and the account pages: the device cookie, one
//! session per user and device, the device list and signing a device out,
//! the local logout, the dashboard, the session-bound CSRF token, and the
//! session cookie's lifetime. Users log in through the local password form
//! of the OIDC flow; each "device" is a reqwest client with a cookie jar of
//! its own and a User-Agent.

use std::sync::Arc;

use adapter::clock::Clock;
use adapter::config::CookieLifetime;
use adapter::provider::account::session_csrf_token;
use adapter::secret::hash;
use adapter::store::{SqlStore, Store};
use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::SET_COOKIE;
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use serde_json::Value;
use url::Url;

use super::support::*;

const SESSION: &str = "AUTH_ADAPTER_SESSION";
const LAPTOP: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const PHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";

/// A browser on one device: its own cookie jar and User-Agent.
struct Device {
    app: TestApp,
    jar: Arc<Jar>,
}

/// The provider with alice and a second user, bob.
async fn spawn() -> TestApp {
    spawn_with(CookieLifetime::Persistent).await
}

async fn spawn_with(lifetime: CookieLifetime) -> TestApp {
    spawn_app_with(move |c| {
        c.local_users.push(
            clients::local_user("bob", "battery staple", "Bob Example", "bob@example.org").unwrap(),
        );
        c.session.cookie_lifetime = lifetime;
    })
    .await
}

fn device(app: &TestApp, user_agent: &str) -> Device {
    let jar = Arc::new(Jar::default());
    let browser = reqwest::Client::builder()
        .redirect(Policy::none())
        .cookie_provider(jar.clone())
        .user_agent(user_agent)
        .build()
        .unwrap();
    Device {
        app: TestApp {
            browser,
            ..TestApp::connect(&app.base)
        },
        jar,
    }
}

/// A client without cookies, for requests with a hand-made Cookie header.
fn bare() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

impl Device {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app.base)
    }

    /// The value of cookie `name` in this device's jar.
    fn cookie(&self, name: &str) -> Option<String> {
        let header = self.jar.cookies(&Url::parse(&self.app.base).unwrap())?;
        header
            .to_str()
            .unwrap()
            .split("; ")
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")).map(String::from))
    }

    fn session(&self) -> String {
        self.cookie(SESSION).expect("a session cookie")
    }

    fn plant(&self, name: &str, value: &str) {
        self.jar.add_cookie_str(
            &format!("{name}={value}; Path=/"),
            &Url::parse(&self.app.base).unwrap(),
        );
    }

    /// A fresh login (`prompt=login`) as `user`; returns the credential
    /// POST's response (303 to the client, with the cookies).
    async fn login_as(&self, user: &str, password: &str) -> reqwest::Response {
        let r = self
            .app
            .browser
            .get(self.app.authorize_url(&[("prompt", "login")]))
            .send()
            .await
            .unwrap();
        let form_url = location(&r);
        assert!(form_url.starts_with("/login/local?req="), "{form_url}");
        let html = self
            .app
            .browser
            .get(self.url(&form_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let r = self
            .app
            .browser
            .post(self.url("/login/local"))
            .form(&[
                ("req", hidden(&html, "req")),
                ("csrf_token", hidden(&html, "csrf_token")),
                ("username", user.into()),
                ("password", password.into()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        r
    }

    async fn login(&self) -> reqwest::Response {
        self.login_as("alice", "correct horse").await
    }

    /// GET `path` asking for JSON.
    async fn get_json(&self, path: &str) -> reqwest::Response {
        self.app
            .browser
            .get(self.url(path))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
    }

    /// The device list (200 expected).
    async fn sessions(&self) -> Vec<Value> {
        let r = self.get_json("/account/devices").await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["sessions"].as_array().unwrap().clone()
    }

    /// The session's CSRF token, from the dashboard's JSON.
    async fn csrf(&self) -> String {
        let r = self.get_json("/dashboard").await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["csrf_token"].as_str().unwrap().to_string()
    }

    /// POST `path` with the token as `X-CSRF-Token`, same-origin.
    async fn post_with(&self, path: &str, token: &str) -> reqwest::Response {
        self.app
            .browser
            .post(self.url(path))
            .header("accept", "application/json")
            .header("origin", &self.app.base)
            .header("x-csrf-token", token)
            .send()
            .await
            .unwrap()
    }
}

/// GET `path` of `base` with only the session cookie `value`.
async fn with_session(base: &str, path: &str, value: &str) -> reqwest::Response {
    bare()
        .get(format!("{base}{path}"))
        .header("accept", "application/json")
        .header("cookie", format!("{SESSION}={value}"))
        .send()
        .await
        .unwrap()
}

async fn error_is(r: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(r.status(), status);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({ "error": code }));
}

fn set_cookie<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
}

/// OWASP ASVS 5.0 V7.2.4 (session fixation): a session cookie planted
/// before the login, made up or an attacker's own valid session, is never
/// adopted: the login sets a new value, and the planted one is dead.
#[tokio::test]
async fn a_planted_session_cookie_is_never_adopted() {
    let app = spawn().await;
    let attacker = device(&app, LAPTOP);
    attacker.login_as("bob", "battery staple").await;
    let attackers_session = attacker.session();
    for planted in [
        "planted-by-the-attacker-0000000000000000000".to_string(),
        attackers_session.clone(),
    ] {
        let victim = device(&app, PHONE);
        victim.plant(SESSION, &planted);
        victim.login().await;
        let session = victim.session();
        assert_ne!(session, planted, "the planted value was adopted");
        error_is(
            with_session(&app.base, "/account/devices", &planted).await,
            StatusCode::UNAUTHORIZED,
            "login_required",
        )
        .await;
        let r = with_session(&app.base, "/dashboard", &session).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["username"], "alice");
    }
}

/// Sessions per device: two devices, two sessions; a new login on one
/// device replaces that device's session and leaves the other's alone.
#[tokio::test]
async fn each_device_has_its_own_session_and_a_relogin_replaces_it() {
    let app = spawn().await;
    let laptop = device(&app, LAPTOP);
    let phone = device(&app, PHONE);
    laptop.login().await;
    phone.login().await;
    let device_id = laptop.cookie("AUTH_ADAPTER_SESSION_DEVICE").unwrap();
    assert_ne!(
        Some(device_id.clone()),
        phone.cookie("AUTH_ADAPTER_SESSION_DEVICE")
    );
    let sessions = laptop.sessions().await;
    let mut labels: Vec<&str> = sessions
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    labels.sort();
    assert_eq!(labels, ["Chrome on Linux", "Safari on iOS"]);

    let first = laptop.session();
    laptop.login().await;
    let second = laptop.session();
    assert_ne!(first, second);
    assert_eq!(
        laptop.cookie("AUTH_ADAPTER_SESSION_DEVICE"),
        Some(device_id),
        "the device keeps its id"
    );
    let sessions = laptop.sessions().await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    error_is(
        with_session(&app.base, "/account/devices", &first).await,
        StatusCode::UNAUTHORIZED,
        "login_required",
    )
    .await;
    assert_eq!(phone.sessions().await.len(), 2, "the phone's session stays");
    // The browser restarts without its session cookie but with its device
    // cookie: the new login replaces the session it had on this device.
    let restarted = device(&app, LAPTOP);
    restarted.plant(
        "AUTH_ADAPTER_SESSION_DEVICE",
        &laptop.cookie("AUTH_ADAPTER_SESSION_DEVICE").unwrap(),
    );
    restarted.login().await;
    assert_eq!(restarted.sessions().await.len(), 2);
    error_is(
        with_session(&app.base, "/account/devices", &second).await,
        StatusCode::UNAUTHORIZED,
        "login_required",
    )
    .await;
    // A device cookie we did not make is not adopted: a new one is set.
    let forged = device(&app, PHONE);
    forged.plant("AUTH_ADAPTER_SESSION_DEVICE", "forged");
    forged.login().await;
    let id = forged.cookie("AUTH_ADAPTER_SESSION_DEVICE").unwrap();
    assert_eq!(id.len(), 43, "{id}");
    assert_eq!(forged.sessions().await.len(), 3);
    // Another user on the same device does not replace alice's session
    // there: bob's login replaces only the browser's own cookie.
    let shared = device(&app, LAPTOP);
    shared.login().await;
    shared.login_as("bob", "battery staple").await;
    assert_eq!(forged.sessions().await.len(), 3);
}

/// The device list: each session with an opaque handle, its device label
/// (never the raw User-Agent), IP, times and which one is this request's;
/// the last-seen time moves at most once a minute. The HTML page shows the
/// same with a CSRF-protected form per device.
#[tokio::test]
async fn the_device_list_shows_each_session() {
    let app = spawn().await;
    let laptop = device(&app, LAPTOP);
    let phone = device(&app, PHONE);
    let login_time = app.clock.now();
    laptop.login().await;
    app.clock.advance(5);
    phone.login().await;
    let sessions = phone.sessions().await;
    assert_eq!(sessions.len(), 2);
    let (l, p) = (&sessions[0], &sessions[1]);
    let mut keys: Vec<&str> = l.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created_at",
            "current",
            "device",
            "expires_at",
            "handle",
            "ip",
            "last_seen_at"
        ]
    );
    assert_eq!(l["device"], "Chrome on Linux");
    assert_eq!(p["device"], "Safari on iOS");
    assert_eq!(l["ip"], "127.0.0.1");
    assert_eq!(l["created_at"], login_time);
    assert_eq!(p["created_at"], login_time + 5);
    assert_eq!(l["expires_at"], login_time + 8 * 3600);
    assert_eq!(
        (l["current"].as_bool(), p["current"].as_bool()),
        (Some(false), Some(true))
    );
    let handle = l["handle"].as_str().unwrap();
    assert_eq!(handle.len(), 43);
    assert_ne!(l["handle"], p["handle"]);
    assert!(!handle.contains(&laptop.session()));
    assert_eq!(l["last_seen_at"], login_time);

    // Used at +35 s (less than a minute after login): not written.
    app.clock.advance(30);
    let seen = |s: &Vec<Value>| s[0]["last_seen_at"].as_i64().unwrap();
    assert_eq!(seen(&laptop.sessions().await), login_time);
    // Used a minute after login: written.
    app.clock.advance(25);
    assert_eq!(seen(&laptop.sessions().await), login_time + 60);
    app.clock.advance(59);
    assert_eq!(seen(&laptop.sessions().await), login_time + 60);

    let r = laptop
        .app
        .browser
        .get(laptop.url("/account/devices"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("Chrome on Linux") && html.contains("Safari on iOS"));
    assert!(html.contains(&format!("action=\"/account/devices/{handle}/revoke\"")));
    assert_eq!(
        hidden(&html, "csrf_token"),
        session_csrf_token(&laptop.session())
    );
    assert!(!html.contains("AppleWebKit"), "no raw User-Agent");
}

/// Signing a device out ends its session as a logout does: its cookie is
/// dead, its refresh token revoked; the device that did it stays signed in.
#[tokio::test]
async fn revoking_a_device_ends_its_session_and_tokens() {
    let app = spawn().await;
    let laptop = device(&app, LAPTOP);
    let phone = device(&app, PHONE);
    laptop.login().await;
    let to_client = location(&phone.login().await);
    let code = query(&to_client)["code"].as_str().unwrap().to_string();
    let tokens: Value = app.redeem(&code).await.json().await.unwrap();
    let refresh_token = tokens["refresh_token"].as_str().expect("a refresh token");
    let phone_session = phone.session();

    let sessions = laptop.sessions().await;
    let phone_handle = sessions.iter().find(|s| s["current"] == false).unwrap()["handle"]
        .as_str()
        .unwrap()
        .to_string();
    let token = laptop.csrf().await;
    let r = laptop
        .post_with(&format!("/account/devices/{phone_handle}/revoke"), &token)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        set_cookie(&r, SESSION).is_none(),
        "the laptop keeps its cookie"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"revoked": true, "current": false}));

    error_is(
        with_session(&app.base, "/dashboard", &phone_session).await,
        StatusCode::UNAUTHORIZED,
        "login_required",
    )
    .await;
    assert_eq!(laptop.sessions().await.len(), 1);
    // The refresh token of the ended session is revoked (not merely
    // orphaned), and the token endpoint refuses it.
    let store = SqlStore::connect(&app.db_url, 1).await.unwrap();
    let status = store
        .refresh_status(&hash(refresh_token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.revoked_at, Some(app.clock.now()));
    let r = app
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
            Some(("app", SECRET)),
        )
        .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    // The handle is spent.
    error_is(
        laptop
            .post_with(&format!("/account/devices/{phone_handle}/revoke"), &token)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

/// A handle of another user's session is not found (404), and that
/// session lives on.
#[tokio::test]
async fn revoking_another_users_handle_is_not_found() {
    let app = spawn().await;
    let alice = device(&app, LAPTOP);
    let bob = device(&app, PHONE);
    alice.login().await;
    bob.login_as("bob", "battery staple").await;
    let bobs = bob.sessions().await;
    let handle = bobs[0]["handle"].as_str().unwrap();
    let token = alice.csrf().await;
    error_is(
        alice
            .post_with(&format!("/account/devices/{handle}/revoke"), &token)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    error_is(
        alice
            .post_with("/account/devices/no-such-handle/revoke", &token)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(bob.sessions().await.len(), 1);
    assert_eq!(alice.sessions().await.len(), 1);
}

/// OWASP ASVS 5.0 V3.5: unsafe account requests need the session's CSRF
/// token (header or form field) and a same-site origin; safe ones and
/// everything else need the session.
#[tokio::test]
async fn account_posts_need_the_session_csrf_token_from_the_same_site() {
    let app = spawn().await;
    let laptop = device(&app, LAPTOP);
    laptop.login().await;
    let token = laptop.csrf().await;
    assert_eq!(token, session_csrf_token(&laptop.session()));
    let post = || {
        laptop
            .app
            .browser
            .post(laptop.url("/dashboard"))
            .header("accept", "application/json")
    };
    error_is(
        post().send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "csrf_failed",
    )
    .await;
    error_is(
        post().header("x-csrf-token", "wrong").send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "csrf_failed",
    )
    .await;
    // The login form's token of the same browser is not this token.
    error_is(
        post()
            .header("x-csrf-token", session_csrf_token("other-session"))
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "csrf_failed",
    )
    .await;
    error_is(
        post()
            .header("x-csrf-token", &token)
            .header("origin", "http://evil.example")
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "csrf_failed",
    )
    .await;
    error_is(
        post()
            .header("x-csrf-token", &token)
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "csrf_failed",
    )
    .await;
    let r = post()
        .header("x-csrf-token", &token)
        .header("origin", &app.base)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"username": "alice", "sub": "alice"}));

    // A browser's form without the token gets the HTML page, no redirect.
    let r = laptop
        .app
        .browser
        .post(laptop.url("/logout"))
        .header("accept", "text/html")
        .form(&[("csrf_token", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("location").is_none());
    assert!(r.text().await.unwrap().contains("<h1"));
    // Without a session: 401, JSON or a page, never a redirect.
    error_is(
        bare()
            .post(format!("{}/dashboard", app.base))
            .header("x-csrf-token", &token)
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "login_required",
    )
    .await;
    let r = bare()
        .get(format!("{}/account/devices", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("location").is_none());
    assert!(r.text().await.unwrap().contains("Not signed in"));
    // The right token in the form field of a same-site form logs out.
    let r = laptop
        .app
        .browser
        .post(laptop.url("/logout"))
        .header("accept", "text/html")
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/logout");
}

/// The local logout (`POST /logout`): the session is deleted, its cookie
/// cleared (`Max-Age=0`), and single sign-on ends; the other device stays.
#[tokio::test]
async fn post_logout_clears_the_cookie_and_ends_the_session() {
    let app = spawn().await;
    let laptop = device(&app, LAPTOP);
    let phone = device(&app, PHONE);
    laptop.login().await;
    phone.login().await;
    let session = laptop.session();
    let token = laptop.csrf().await;
    let r = laptop.post_with("/logout", &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let cleared = set_cookie(&r, SESSION).expect("the cookie is cleared");
    assert!(cleared.starts_with(&format!("{SESSION}=;")), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert!(
        set_cookie(&r, "AUTH_ADAPTER_SESSION_DEVICE").is_none(),
        "the device stays known"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"logged_out": true}));
    error_is(
        with_session(&app.base, "/dashboard", &session).await,
        StatusCode::UNAUTHORIZED,
        "login_required",
    )
    .await;
    let r = bare()
        .get(app.authorize_url(&[]))
        .header("cookie", format!("{SESSION}={session}"))
        .send()
        .await
        .unwrap();
    assert!(
        location(&r).starts_with("/login/local"),
        "no single sign-on"
    );
    assert_eq!(phone.sessions().await.len(), 1);
    // The logged-out page.
    let r = laptop
        .app
        .browser
        .get(laptop.url("/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("You are logged out"));
}

/// `session.cookie_lifetime = "persistent"` (the default): the session
/// cookie's Max-Age is the server session's remaining lifetime; the device
/// cookie lives a year. Both are HttpOnly, SameSite=Lax, Path=/.
#[tokio::test]
async fn a_persistent_session_cookie_lives_as_long_as_the_server_session() {
    let app = spawn().await;
    let laptop = device(&app, LAPTOP);
    let r = laptop.login().await;
    let session = set_cookie(&r, SESSION).unwrap().to_string();
    let device = set_cookie(&r, "AUTH_ADAPTER_SESSION_DEVICE")
        .unwrap()
        .to_string();
    let listed = &laptop.sessions().await[0];
    let remaining = listed["expires_at"].as_i64().unwrap() - app.clock.now();
    assert_eq!(remaining, 8 * 3600);
    assert!(
        session.contains(&format!("Max-Age={remaining}")),
        "{session}"
    );
    assert!(device.contains("Max-Age=31536000"), "{device}");
    for c in [&session, &device] {
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(c.contains(attribute), "{attribute}: {c}");
        }
        assert!(!c.contains("Domain"), "{c}");
    }
}

/// `session.cookie_lifetime = "browser"`: no Max-Age on the session cookie.
#[tokio::test]
async fn a_browser_session_cookie_has_no_max_age() {
    let app = spawn_with(CookieLifetime::Browser).await;
    let laptop = device(&app, LAPTOP);
    let r = laptop.login().await;
    let session = set_cookie(&r, SESSION).unwrap();
    assert!(!session.contains("Max-Age"), "{session}");
    assert!(!session.contains("Expires"), "{session}");
    let device = set_cookie(&r, "AUTH_ADAPTER_SESSION_DEVICE").unwrap();
    assert!(device.contains("Max-Age=31536000"), "{device}");
}

/// The seed's curl flow on the account API: `POST /login` answers the
/// session's CSRF token in its body and sets the session and device
/// cookies; `POST /dashboard` with the cookie and `X-CSRF-Token` is the
/// protected call; `POST /logout` ends it.
#[tokio::test]
async fn the_seeds_login_dashboard_logout_flow() {
    let app = spawn().await;
    let curl = device(&app, "curl/8.5.0");
    let r = curl
        .app
        .browser
        .post(curl.url("/login"))
        .form(&[("username", "alice"), ("password", "correct horse")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(set_cookie(&r, "AUTH_ADAPTER_SESSION_DEVICE").is_some());
    let body: Value = r.json().await.unwrap();
    let token = body["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(token, session_csrf_token(&curl.session()));
    let protected = || {
        curl.app
            .browser
            .post(curl.url("/dashboard"))
            .header("x-csrf-token", &token)
    };
    let r = protected().send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"username": "alice", "sub": "alice"}));
    assert_eq!(curl.sessions().await[0]["device"], "curl");
    let r = curl
        .app
        .browser
        .post(curl.url("/logout"))
        .header("x-csrf-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    error_is(
        protected().send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "login_required",
    )
    .await;
}
