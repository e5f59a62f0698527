//! The token lifecycle of the test-app against the fake provider: the
//! protected API (RFC 6750, RFC 9068 §4, RFC 7662), refresh on expiry
//! (RFC 6749 §6), RP-Initiated Logout 1.0 with its `state`, and the
//! back-channel logout interface. Time moves with the app's manual clock and
//! the provider's clock offset, never with sleeps.

use super::*;

use test_app::clock::ManualClock;

/// Ten minutes: past the fake tokens' 300 s lifetime plus the 60 s leeway.
const LATER: i64 = 600;

fn lifecycle_op() -> OpOptions {
    OpOptions {
        refresh_tokens: true,
        introspection: true,
        end_session: true,
        ..OpOptions::default()
    }
}

impl TestApp {
    /// The claims page's "Call the protected API" button.
    async fn call_api(&self, cookie: &str) -> reqwest::Response {
        self.http
            .post(self.url("/call-api"))
            .header("cookie", cookie)
            .header("origin", &self.base_url)
            .send()
            .await
            .unwrap()
    }

    /// `GET /api/resource` with `Authorization: Bearer <token>`.
    async fn resource(&self, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url("/api/resource"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }
}

/// What the API-call page shows.
#[derive(Debug)]
struct ApiPage {
    status: String,
    refreshed: bool,
    body: Value,
    error: Option<String>,
    www_authenticate: Option<String>,
    html: String,
}

async fn api_page(resp: reqwest::Response) -> ApiPage {
    assert_eq!(resp.status(), StatusCode::OK, "the page itself renders");
    let html = resp.text().await.unwrap();
    ApiPage {
        status: element_text(&html, "api-status").expect("an api-status"),
        refreshed: html.contains("data-refreshed=\"true\""),
        body: serde_json::from_str(&element_text(&html, "api-body").unwrap()).unwrap(),
        error: element_text(&html, "api-error"),
        www_authenticate: element_text(&html, "api-www-authenticate"),
        html,
    }
}

fn grant_types(op: &FakeOp) -> Vec<String> {
    op.token_requests()
        .iter()
        .map(|r| r.params["grant_type"].clone())
        .collect()
}

/// RFC 6750 §2.1, RFC 9068 §4, RFC 7662 §2: the button calls the API with
/// the session's access token; the API checks it against the JWKS and asks
/// the introspection endpoint, authenticated as the test-app.
#[tokio::test]
async fn api_call_with_the_session_token_succeeds() {
    let op = start_op(lifecycle_op()).await;
    let app = spawn_app(&op.issuer).await;
    let cookie = app.login(&op).await;
    let (_, me) = app.api_me(Some(&cookie)).await;
    let access_token = me["access_token"].as_str().unwrap().to_owned();

    let page = api_page(app.call_api(&cookie).await).await;
    assert_eq!(page.status, "200", "{}", page.html);
    assert!(!page.refreshed);
    assert_eq!(page.body["sub"], "testuser");
    assert_eq!(page.body["aud"], CLIENT_ID);
    assert_eq!(
        page.body["introspection"],
        json!({ "endpoint": format!("{}/introspect", op.issuer), "active": true })
    );
    assert!(
        !page.html.contains(&access_token),
        "the API page does not show the token"
    );

    let seen = op.introspection_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].params["token"], access_token);
    assert_eq!(seen[0].params["token_type_hint"], "access_token");
    assert_eq!(
        seen[0].basic,
        Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())),
        "client_secret_basic, form-urlencoded (RFC 6749 §2.3.1)"
    );
    assert_eq!(seen[0].active, Some(true));
    assert_eq!(grant_types(&op), ["authorization_code"], "no refresh");

    // The API itself: RFC 6750 §3 challenges.
    let resp = app.resource(None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"test-app\""
    );
    let resp = app.resource(Some("not-a-jwt")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"test-app\", error=\"invalid_token\", \
         error_description=\"the access token was rejected: not a JWT\""
    );
    let resp = app.resource(Some(&access_token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

/// RFC 9068 §4: an access token for another audience is refused by the API.
#[tokio::test]
async fn api_refuses_a_token_for_another_audience() {
    let op = start_op(lifecycle_op()).await;
    let app = spawn_app(&op.issuer).await;
    let cookie = app.login(&op).await;
    let (_, me) = app.api_me(Some(&cookie)).await;
    let token = me["access_token"].as_str().unwrap();
    // Another app in front of the same provider, registered as another client.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = test_config(&base, &op.issuer);
    config.client_id = "someone-else".into();
    let built = Application::build_with_listener(config, listener)
        .await
        .unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(built.run_until(async {
        let _ = stopped.await;
    }));
    let resp = app
        .http
        .get(format!("{base}/api/resource"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "error": "invalid_token",
            "error_description": "the access token was rejected: its aud does not contain \"someone-else\"",
        })
    );
}

/// RFC 7662 has no endpoint in discovery: the API says so and relies on the JWT checks.
#[tokio::test]
async fn api_without_introspection_endpoint_says_so() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let cookie = app.login(&op).await;
    let page = api_page(app.call_api(&cookie).await).await;
    assert_eq!(page.status, "200");
    assert_eq!(
        page.body["introspection"],
        json!({
            "endpoint": null,
            "note": "the provider advertises no introspection_endpoint: revocation is not \
                     checked, only the JWT checks (signature, iss, aud, exp, typ) apply",
        })
    );
    assert!(op.introspection_requests().is_empty());
}

/// RFC 6749 §6: the access token expired, the API answers 401, the app
/// refreshes with the refresh token, stores the rotated one, retries once
/// and the page says it refreshed.
#[tokio::test]
async fn expired_access_token_is_refreshed_and_the_call_retried() {
    let op = start_op(lifecycle_op()).await;
    let clock = Arc::new(ManualClock::new());
    let app = spawn_app_with_clock(&op.issuer, clock.clone()).await;
    let cookie = app.login(&op).await;
    let first_refresh_token = op.last_refresh_token().unwrap();
    let (_, before) = app.api_me(Some(&cookie)).await;

    clock.advance(LATER);
    op.set_clock_offset(LATER);
    let page = api_page(app.call_api(&cookie).await).await;
    assert_eq!(page.status, "200", "{}", page.html);
    assert!(page.refreshed, "{}", page.html);
    assert!(
        page.html.contains(
            "the API answered <code>401</code>: the access token was rejected: it has expired"
        ),
        "{}",
        page.html
    );
    assert_eq!(grant_types(&op), ["authorization_code", "refresh_token"]);
    let refresh = last_token_request(&op);
    assert_eq!(refresh.params["refresh_token"], first_refresh_token);
    assert_eq!(
        refresh.basic,
        Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned()))
    );

    // The session holds the new tokens; the page shows the refresh.
    let (_, after) = app.api_me(Some(&cookie)).await;
    assert_ne!(after["access_token"], before["access_token"]);
    assert_ne!(after["id_token"], before["id_token"]);
    let html = app
        .get("/authenticated", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        element_text(&html, "refresh-count")
            .unwrap()
            .starts_with("1 (last"),
        "{html}"
    );
    // RFC 6749 §10.4: the refresh tokens appear nowhere but in the store.
    let logs = String::from_utf8(captured_logs().lock().unwrap().clone()).unwrap();
    for rt in [
        first_refresh_token.clone(),
        op.last_refresh_token().unwrap(),
    ] {
        assert!(!html.contains(&rt), "a refresh token on the page");
        assert!(!logs.contains(&rt), "a refresh token in the logs");
        let (_, me) = app.api_me(Some(&cookie)).await;
        assert!(!me.to_string().contains(&rt), "a refresh token in /api/me");
    }

    // A second call needs no refresh.
    let page = api_page(app.call_api(&cookie).await).await;
    assert_eq!(page.status, "200");
    assert!(!page.refreshed);

    // Rotation: the next refresh uses the refresh token the first one returned.
    let second_refresh_token = op.last_refresh_token().unwrap();
    assert_ne!(second_refresh_token, first_refresh_token);
    clock.advance(LATER);
    op.set_clock_offset(2 * LATER);
    let page = api_page(app.call_api(&cookie).await).await;
    assert_eq!(page.status, "200");
    assert!(page.refreshed);
    assert_eq!(
        last_token_request(&op).params["refresh_token"],
        second_refresh_token
    );
}

/// RFC 6749 §5.2 `invalid_grant` on refresh: the session ends and the browser
/// goes to the provider to log in again.
#[tokio::test]
async fn failed_refresh_sends_the_user_to_log_in_again() {
    let op = start_op(lifecycle_op()).await;
    let clock = Arc::new(ManualClock::new());
    let app = spawn_app_with_clock(&op.issuer, clock.clone()).await;
    let cookie = app.login(&op).await;

    clock.advance(LATER);
    op.set_clock_offset(LATER);
    op.revoke_all_refresh_tokens();
    let resp = app.call_api(&cookie).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let to = Url::parse(&location(&resp)).unwrap();
    assert_eq!(
        format!("{}{}", to.origin().ascii_serialization(), to.path()),
        op.authorization_endpoint()
    );
    assert!(set_cookie(&resp, "TEST_APP_TX").is_some(), "a new login");
    let cleared = set_cookie(&resp, "TEST_APP_SESSION").expect("the session cookie is cleared");
    assert!(cleared.attributes.contains("Max-Age=0"), "{cleared:?}");
    assert_eq!(grant_types(&op), ["authorization_code", "refresh_token"]);
    assert_eq!(app.api_me(Some(&cookie)).await.0, StatusCode::UNAUTHORIZED);
}

/// Without a refresh token, an expired access token also means logging in again.
#[tokio::test]
async fn expired_token_without_refresh_token_sends_the_user_to_log_in() {
    let op = start_op(OpOptions::default()).await;
    let clock = Arc::new(ManualClock::new());
    let app = spawn_app_with_clock(&op.issuer, clock.clone()).await;
    let cookie = app.login(&op).await;
    clock.advance(LATER);
    let resp = app.call_api(&cookie).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert!(location(&resp).starts_with(&op.authorization_endpoint()));
    assert_eq!(
        grant_types(&op),
        ["authorization_code"],
        "nothing to refresh with"
    );
}

/// RFC 7009 / RFC 7662 §2.2: a revoked token (introspection says inactive)
/// is refused with 401 and shown; no refresh is attempted (it has not expired).
#[tokio::test]
async fn revoked_access_token_is_refused_with_401() {
    let op = start_op(lifecycle_op()).await;
    let app = spawn_app(&op.issuer).await;
    let cookie = app.login(&op).await;
    let (_, me) = app.api_me(Some(&cookie)).await;
    op.revoke(me["access_token"].as_str().unwrap());

    let page = api_page(app.call_api(&cookie).await).await;
    let description =
        "the provider's introspection endpoint says the access token is not active (revoked)";
    assert_eq!(page.status, "401", "{}", page.html);
    assert!(!page.refreshed);
    assert_eq!(page.error.as_deref(), Some(description));
    assert_eq!(
        page.www_authenticate.as_deref(),
        Some(
            format!(
                "Bearer realm=\"test-app\", error=\"invalid_token\", \
                 error_description=\"{description}\""
            )
            .as_str()
        )
    );
    assert_eq!(
        page.body,
        json!({ "error": "invalid_token", "error_description": description })
    );
    assert_eq!(op.introspection_requests()[0].active, Some(false));
    assert_eq!(grant_types(&op), ["authorization_code"], "no refresh");
}

/// OpenID RP-Initiated Logout 1.0 §2–§3: the end-session URL carries the
/// hint, the registered `/logged-out` and a state; the provider's return
/// with that state shows the logged-out page, once.
#[tokio::test]
async fn rp_initiated_logout_round_trip_checks_the_state() {
    let op = start_op(lifecycle_op()).await;
    let app = spawn_app(&op.issuer).await;
    let cookie = app.login(&op).await;
    let (_, me) = app.api_me(Some(&cookie)).await;

    let resp = app.post_logout(&cookie, &[("everywhere", "1")]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let logout_cookie = set_cookie(&resp, "TEST_APP_TX_LOGOUT").expect("a logout cookie");
    assert!(logout_cookie.attributes.contains("HttpOnly"));
    assert!(logout_cookie.attributes.contains("SameSite=Lax"));
    let logout_cookie = format!("TEST_APP_TX_LOGOUT={}", logout_cookie.value);
    let end_session = Url::parse(&location(&resp)).unwrap();
    assert_eq!(
        format!(
            "{}{}",
            end_session.origin().ascii_serialization(),
            end_session.path()
        ),
        format!("{}/logout", op.issuer)
    );
    let q: HashMap<String, String> = end_session.query_pairs().into_owned().collect();
    let state = q["state"].clone();
    assert_eq!(
        q,
        HashMap::from([
            (
                "id_token_hint".to_owned(),
                me["id_token"].as_str().unwrap().to_owned()
            ),
            (
                "post_logout_redirect_uri".to_owned(),
                format!("{}/logged-out", app.base_url)
            ),
            ("client_id".to_owned(), CLIENT_ID.to_owned()),
            ("state".to_owned(), state.clone()),
        ])
    );

    // The provider sends the browser back with the state.
    let resp = app.http.get(end_session.as_str()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let back = location(&resp);
    assert_eq!(
        back,
        format!("{}/logged-out?state={}", app.base_url, enc(&state))
    );
    assert_eq!(op.end_session_requests().len(), 1);

    let resp = app
        .http
        .get(&back)
        .header("cookie", &logout_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cleared = set_cookie(&resp, "TEST_APP_TX_LOGOUT").expect("the logout cookie is cleared");
    assert!(cleared.attributes.contains("Max-Age=0"));
    let html = resp.text().await.unwrap();
    assert!(html.contains("id=\"logged-out\""), "{html}");
    assert_eq!(
        element_text(&html, "backchannel-status").as_deref(),
        Some("No back-channel logout has arrived for that session.")
    );

    // Single use: the same return again is refused.
    let resp = app
        .http
        .get(&back)
        .header("cookie", &logout_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let html = resp.text().await.unwrap();
    assert_eq!(
        element_text(&html, "error-code").as_deref(),
        Some("no_logout_transaction")
    );
}

/// OpenID RP-Initiated Logout 1.0 §3: a return with another state (or none)
/// is refused, and the logout in progress is used up.
#[tokio::test]
async fn logged_out_with_a_wrong_state_is_refused() {
    let op = start_op(lifecycle_op()).await;
    let app = spawn_app(&op.issuer).await;
    for query in ["?state=forged", "", "?state=a&state=b"] {
        let cookie = app.login(&op).await;
        let resp = app.post_logout(&cookie, &[("everywhere", "1")]).await;
        let logout_cookie = format!(
            "TEST_APP_TX_LOGOUT={}",
            set_cookie(&resp, "TEST_APP_TX_LOGOUT").unwrap().value
        );
        let resp = app
            .get(&format!("/logged-out{query}"), Some(&logout_cookie))
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
        assert!(
            set_cookie(&resp, "TEST_APP_TX_LOGOUT")
                .unwrap()
                .attributes
                .contains("Max-Age=0"),
            "{query}"
        );
        let html = resp.text().await.unwrap();
        assert_eq!(
            element_text(&html, "error-code").as_deref(),
            Some("logout_state_mismatch"),
            "{query}"
        );
    }
    // Without the logout cookie: nothing to compare with.
    let resp = app.get("/logged-out?state=forged", None).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let html = resp.text().await.unwrap();
    assert_eq!(
        element_text(&html, "error-code").as_deref(),
        Some("no_logout_transaction")
    );
}

/// OpenID Back-Channel Logout 1.0 §2.7: the receiver's call ends the
/// session it names, and the logged-out page shows that it arrived.
#[tokio::test]
async fn backchannel_mark_ends_the_session_and_the_page_shows_it() {
    let op = start_op(lifecycle_op()).await;
    let app = spawn_app(&op.issuer).await;
    let other = app.login(&op).await;
    let cookie = app.login(&op).await;

    let resp = app.post_logout(&cookie, &[("everywhere", "1")]).await;
    let logout_cookie = format!(
        "TEST_APP_TX_LOGOUT={}",
        set_cookie(&resp, "TEST_APP_TX_LOGOUT").unwrap().value
    );
    let end_session = Url::parse(&location(&resp)).unwrap();
    // What the receiver does once it has validated a logout token for the user.
    assert_eq!(app.state.mark_backchannel(None, Some("testuser")), 1);
    assert_eq!(
        app.api_me(Some(&other)).await.0,
        StatusCode::UNAUTHORIZED,
        "the other session of that user ended"
    );

    let back = location(&app.http.get(end_session.as_str()).send().await.unwrap());
    let html = app
        .http
        .get(&back)
        .header("cookie", &logout_cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = element_text(&html, "backchannel-status").unwrap();
    assert!(
        line.starts_with("A back-channel logout for every session of sub testuser arrived at "),
        "{line}"
    );
    assert!(line.ends_with("; it ended 1 local session(s)."), "{line}");
}
