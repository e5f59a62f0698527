//! Integration tests of the test-app over real sockets.
//!
//! The app runs on 127.0.0.1:0 and is driven with reqwest (redirects off, every
//! `Location` asserted, cookies handled by hand so their attributes can be
//! checked). The test kit's fake OpenID Provider ([`FakeOp`]) plays the
//! adapter: it serves discovery, a JWKS and a token endpoint that returns an
//! RS256 ID token and an `at+jwt` access token, signed with keys generated at
//! test time with aws-lc-rs (no key is committed). The browser's visit to the provider's
//! authorization endpoint is simulated: the test reads the authorization
//! request from the `Location`, registers a code at the fake OP and calls the
//! callback itself. Tampering modes ([`Tamper`]) produce the negative cases.
//!
//! Each test cites the RFC or OpenID Connect section it covers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

#[path = "api/lifecycle.rs"]
mod lifecycle;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use test_app::clock::{SharedClock, SystemClock};
use test_app::{AppState, Application, Config};
use testkit::fake_op::{FakeOp, Options as FakeOpOptions, Tamper, TokenRecord};
use testkit::rp::s256;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use url::Url;

const CLIENT_ID: &str = "test-app";
/// Has `:` and `%` so client_secret_basic must form-urlencode before base64 (RFC 6749 §2.3.1).
const CLIENT_SECRET: &str = "s3cr:t%value";

// ===================================================================== fake OP

/// Knobs of the fake provider these tests use.
#[derive(Clone, Default)]
struct OpOptions {
    /// Advertise RFC 9207 `authorization_response_iss_parameter_supported`.
    advertise_iss: bool,
    /// Advertise an `end_session_endpoint`.
    end_session: bool,
    /// Serve discovery with this issuer instead of the real one.
    wrong_issuer: Option<String>,
    /// Issue refresh tokens and accept the refresh_token grant (RFC 6749 §6).
    refresh_tokens: bool,
    /// Advertise and serve an RFC 7662 introspection endpoint.
    introspection: bool,
}

/// The fake provider of the workspace's test kit, playing the adapter: it
/// knows the test-app with [`CLIENT_SECRET`] and issues tokens for
/// `testuser` with the claims the adapter maps.
async fn start_op(options: OpOptions) -> FakeOp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_op_on(listener, options).await
}

async fn start_op_on(listener: TcpListener, options: OpOptions) -> FakeOp {
    let mut o = FakeOpOptions::new(CLIENT_ID);
    o.client_secret = Some(CLIENT_SECRET.to_owned());
    o.identity = json!({
        "sub": "testuser",
        "test_auth_server_sub": "testuser",
        "preferred_username": "testuser",
        "name": "Test User",
        "email": "testuser@example.test",
        "authorities": ["ROLE_USER"],
    });
    o.advertise_iss = options.advertise_iss;
    o.end_session = options.end_session;
    o.discovery_issuer = options.wrong_issuer;
    o.refresh_tokens = options.refresh_tokens;
    o.introspection = options.introspection;
    FakeOp::start_on_with(listener, o).await.unwrap()
}

/// The last token request the provider received.
fn last_token_request(op: &FakeOp) -> TokenRecord {
    op.token_requests()
        .last()
        .cloned()
        .expect("a token request")
}

// ===================================================================== logs

/// Everything the app logs in this test process (and stdout too with `TEST_LOG`).
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let echo = std::env::var_os("TEST_LOG").is_some();
        let sink = buf.clone();
        // A fixed filter (not RUST_LOG): the log test below needs these lines.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,test_app=debug,tower_http=debug",
            ))
            .with_ansi(false)
            .with_writer(move || TeeWriter {
                buf: sink.clone(),
                echo,
            })
            .try_init();
        buf
    })
}

struct TeeWriter {
    buf: Arc<Mutex<Vec<u8>>>,
    echo: bool,
}

impl std::io::Write for TeeWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.lock().unwrap().extend_from_slice(data);
        if self.echo {
            std::io::stdout().write_all(data)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ===================================================================== the app

struct TestApp {
    base_url: String,
    http: reqwest::Client,
    /// The app's shared state (the back-channel interface is called on it).
    state: AppState,
    _stop: oneshot::Sender<()>,
}

fn test_config(base_url: &str, issuer: &str) -> Config {
    Config {
        base_url: base_url.to_owned(),
        issuer: issuer.to_owned(),
        client_id: CLIENT_ID.to_owned(),
        client_secret: Some(CLIENT_SECRET.to_owned()),
        ..Config::default()
    }
}

async fn spawn_app(issuer: &str) -> TestApp {
    spawn_app_with_clock(issuer, Arc::new(SystemClock)).await
}

async fn spawn_app_with_clock(issuer: &str, clock: SharedClock) -> TestApp {
    captured_logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let app = Application::build_with_clock(test_config(&base_url, issuer), listener, clock)
        .await
        .unwrap();
    let state = app.state().clone();
    assert_eq!(base_url, format!("http://127.0.0.1:{}", app.port()));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        base_url,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        state,
        _stop: stop,
    }
}

/// A cookie from `Set-Cookie`: value and raw attribute string.
#[derive(Debug)]
struct SetCookie {
    value: String,
    attributes: String,
}

fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<SetCookie> {
    resp.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let s = v.to_str().ok()?;
        let (pair, attributes) = s.split_once(';').unwrap_or((s, ""));
        let (n, value) = pair.split_once('=')?;
        (n.trim() == name).then(|| SetCookie {
            value: value.trim().to_owned(),
            attributes: attributes.to_owned(),
        })
    })
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(LOCATION)
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Undoes askama's HTML escaping of an attribute value.
fn html_unescape(s: &str) -> String {
    s.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#60;", "<")
        .replace("&lt;", "<")
        .replace("&#62;", ">")
        .replace("&gt;", ">")
        .replace("&#38;", "&")
        .replace("&amp;", "&")
}

/// The `data-json` value of the element with `id`, parsed.
fn data_json(html: &str, id: &str) -> Option<Value> {
    let start = html.find(&format!("id=\"{id}\""))?;
    let tag = &html[start..start + html[start..].find('>')?];
    let attr = tag.split("data-json=\"").nth(1)?;
    let raw = &attr[..attr.find('"')?];
    serde_json::from_str(&html_unescape(raw)).ok()
}

/// The text right after the opening tag of the element with `id`, up to the next tag.
fn element_text(html: &str, id: &str) -> Option<String> {
    let start = html.find(&format!("id=\"{id}\""))?;
    let rest = &html[start..];
    let rest = &rest[rest.find('>')? + 1..];
    Some(html_unescape(rest[..rest.find('<')?].trim()))
}

/// A login in progress: the authorization request and the transaction cookie.
struct Login {
    authorize_url: Url,
    params: HashMap<String, String>,
    tx_cookie: String,
}

impl TestApp {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send().await.unwrap()
    }

    async fn start_login(&self) -> Login {
        let resp = self.get("/authenticated", None).await;
        assert_eq!(resp.status(), StatusCode::FOUND);
        let authorize_url = Url::parse(&location(&resp)).unwrap();
        let tx = set_cookie(&resp, "TEST_APP_TX").expect("a transaction cookie");
        Login {
            params: authorize_url.query_pairs().into_owned().collect(),
            authorize_url,
            tx_cookie: format!("TEST_APP_TX={}", tx.value),
        }
    }

    async fn callback(&self, query: &str, cookie: Option<&str>) -> reqwest::Response {
        self.get(&format!("/login/oauth2/code/auth-adapter?{query}"), cookie)
            .await
    }

    /// A full login; returns the `Cookie` header value for the new session.
    async fn login(&self, op: &FakeOp) -> String {
        let login = self.start_login().await;
        let code = op.issue_code(&login.authorize_url, Tamper::None);
        let resp = self
            .callback(
                &format!(
                    "code={code}&state={}&iss={}",
                    login.params["state"],
                    enc(&op.issuer)
                ),
                Some(&login.tx_cookie),
            )
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::SEE_OTHER,
            "{}",
            resp.text().await.unwrap()
        );
        assert_eq!(location(&resp), "/authenticated");
        let session = set_cookie(&resp, "TEST_APP_SESSION").expect("a session cookie");
        format!("TEST_APP_SESSION={}", session.value)
    }

    async fn api_me(&self, cookie: Option<&str>) -> (StatusCode, Value) {
        let resp = self.get("/api/me", cookie).await;
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn post_logout(&self, cookie: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.url("/logout"))
            .header("cookie", cookie)
            .header("origin", &self.base_url)
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn assert_security_headers(resp: &reqwest::Response) {
    let h = resp.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive:?}");
    }
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
}

/// Runs a login whose token response is tampered with and checks it fails
/// with `status` and `code`, creating no session. Returns the OP for more checks.
async fn assert_login_fails(tamper: Tamper, status: StatusCode, code: &str) -> FakeOp {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let login = app.start_login().await;
    let auth_code = op.issue_code(&login.authorize_url, tamper);
    let resp = app
        .callback(
            &format!("code={auth_code}&state={}", login.params["state"]),
            Some(&login.tx_cookie),
        )
        .await;
    assert_eq!(resp.status(), status, "{tamper:?}");
    assert!(
        set_cookie(&resp, "TEST_APP_SESSION").is_none(),
        "{tamper:?}: no session cookie"
    );
    let tx = set_cookie(&resp, "TEST_APP_TX").expect("the transaction cookie is cleared");
    assert!(tx.attributes.contains("Max-Age=0"), "{tx:?}");
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_security_headers(&resp);
    let body = resp.text().await.unwrap();
    assert_eq!(
        element_text(&body, "error-code").as_deref(),
        Some(code),
        "{tamper:?}: {body}"
    );
    assert_eq!(op.token_hits(), 1, "{tamper:?}: the code was redeemed once");
    // Nothing leaked into a session.
    let (me_status, _) = app.api_me(None).await;
    assert_eq!(me_status, StatusCode::UNAUTHORIZED);
    op
}

// ===================================================================== tests

/// OIDC Core §3.1.2.1, RFC 7636 §4.3: fresh state, nonce, PKCE S256, exact
/// redirect_uri; transaction cookie
/// HttpOnly + SameSite=Lax; discovery only on first need.
#[tokio::test]
async fn authenticated_without_session_redirects_to_the_provider() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;

    let home = app.get("/", None).await;
    assert_eq!(home.status(), StatusCode::OK);
    assert_eq!(op.discovery_hits(), 0, "discovery is lazy");

    let resp = app.get("/authenticated", None).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let loc = Url::parse(&location(&resp)).unwrap();
    assert_eq!(
        format!("{}{}", loc.origin().ascii_serialization(), loc.path()),
        op.authorization_endpoint()
    );
    let q: HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(
        q["redirect_uri"],
        format!("{}/login/oauth2/code/auth-adapter", app.base_url)
    );
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43, "base64url SHA-256");
    let scopes: Vec<&str> = q["scope"].split(' ').collect();
    assert_eq!(
        scopes,
        ["openid", "profile", "email"],
        "openid once, config order"
    );
    assert!(q["state"].len() >= 22, "state carries >=128 bits");
    assert!(q["nonce"].len() >= 22, "nonce carries >=128 bits");

    let tx = set_cookie(&resp, "TEST_APP_TX").unwrap();
    assert!(tx.value.len() >= 43);
    assert!(tx.attributes.contains("HttpOnly"), "{tx:?}");
    assert!(tx.attributes.contains("SameSite=Lax"), "{tx:?}");
    assert!(tx.attributes.contains("Path=/"), "{tx:?}");
    assert_eq!(op.discovery_hits(), 1);

    // A second login gets fresh values; discovery is cached.
    let again = app.start_login().await;
    assert_ne!(again.params["state"], q["state"]);
    assert_ne!(again.params["nonce"], q["nonce"]);
    assert_ne!(again.params["code_challenge"], q["code_challenge"]);
    assert_ne!(again.tx_cookie, format!("TEST_APP_TX={}", tx.value));
    assert_eq!(op.discovery_hits(), 1, "discovery is cached");
}

/// The whole happy path: code exchange with client_secret_basic + PKCE (RFC 6749
/// §2.3.1, RFC 7636 §4.5), session cookie attributes (RFC 6265bis §4.1.2.7), /api/me, and the claims page.
#[tokio::test]
async fn happy_path_creates_a_session_and_shows_the_claims() {
    let op = start_op(OpOptions {
        advertise_iss: true,
        ..OpOptions::default()
    })
    .await;
    let app = spawn_app(&op.issuer).await;
    let login = app.start_login().await;
    let code = op.issue_code(&login.authorize_url, Tamper::None);
    let resp = app
        .callback(
            &format!(
                "code={code}&state={}&iss={}",
                login.params["state"],
                enc(&op.issuer)
            ),
            Some(&login.tx_cookie),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/authenticated");
    let session = set_cookie(&resp, "TEST_APP_SESSION").expect("session cookie");
    assert!(session.value.len() >= 43, "session id has >=128 bits");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(
            session.attributes.contains(attr),
            "{session:?} lacks {attr}"
        );
    }
    let tx = set_cookie(&resp, "TEST_APP_TX").expect("transaction cookie cleared");
    assert!(tx.attributes.contains("Max-Age=0"));

    // What the token endpoint received.
    let seen = last_token_request(&op);
    assert_eq!(seen.basic.clone().unwrap().0, CLIENT_ID);
    assert_eq!(
        seen.basic.clone().unwrap().1,
        CLIENT_SECRET,
        "urlencoded then base64 (RFC 6749 §2.3.1)"
    );
    assert_eq!(seen.params["grant_type"], "authorization_code");
    assert_eq!(seen.params["redirect_uri"], login.params["redirect_uri"]);
    assert_eq!(
        s256(&seen.params["code_verifier"]),
        login.params["code_challenge"]
    );
    assert!(
        !seen.params.contains_key("client_secret"),
        "secret only in Basic"
    );

    let cookie = format!("TEST_APP_SESSION={}", session.value);
    let (status, me) = app.api_me(Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    let (issued_id, issued_at) = op.issued().unwrap();
    assert_eq!(me["id_token"], issued_id);
    assert_eq!(me["access_token"], issued_at);
    let at = &me["access_token_claims"];
    assert_eq!(at["iss"], op.issuer);
    assert_eq!(at["sub"], "testuser");
    assert_eq!(at["test_auth_server_sub"], "testuser");
    assert_eq!(at["preferred_username"], "testuser");
    assert_eq!(at["authorities"], json!(["ROLE_USER"]));
    let id = &me["id_token_claims"];
    assert_eq!(id["sub"], "testuser");
    assert_eq!(id["aud"], json!([CLIENT_ID]));
    assert_eq!(id["nonce"], login.params["nonce"]);
    assert_eq!(id["name"], "Test User");

    // The claims page.
    let page = app.get("/authenticated", Some(&cookie)).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_security_headers(&page);
    let html = page.text().await.unwrap();
    assert_eq!(data_json(&html, "claim-sub"), Some(json!("testuser")));
    assert_eq!(
        data_json(&html, "claim-test_auth_server_sub"),
        Some(json!("testuser"))
    );
    assert_eq!(
        data_json(&html, "claim-preferred_username"),
        Some(json!("testuser"))
    );
    assert_eq!(
        data_json(&html, "claim-authorities"),
        Some(json!(["ROLE_USER"]))
    );
    assert_eq!(data_json(&html, "claim-iss"), Some(json!(op.issuer)));
    assert_eq!(data_json(&html, "idclaim-sub"), Some(json!("testuser")));
    assert_eq!(
        data_json(&html, "idclaim-email"),
        Some(json!("testuser@example.test"))
    );
    assert_eq!(
        element_text(&html, "claim-sub").as_deref(),
        Some("testuser")
    );
    assert_eq!(
        element_text(&html, "user-display-name").as_deref(),
        Some("testuser")
    );
    assert!(html.contains("<span class=\"chip\">ROLE_USER</span>"));
    assert!(
        html.contains(" UTC</time>"),
        "exp/iat rendered as UTC times"
    );
    assert!(html.contains("class=\"hl\""), "identity claims highlighted");
    assert!(html.contains(&issued_at), "raw access token shown");
    assert!(html.contains("id=\"raw-id-token\""));
    assert!(
        html.contains("&#34;at+jwt&#34;"),
        "the raw header is shown, escaped"
    );
    assert!(!html.contains("<script"), "no scripts");
    assert!(!html.contains("https://cdn"), "no external assets");

    // The home page now links to the claims.
    let home = app.get("/", Some(&cookie)).await.text().await.unwrap();
    assert!(home.contains("id=\"claims-link\""));
    assert!(!home.contains("id=\"login-button\""));
}

/// RFC 6749 §10.12: a wrong state is refused before the code is redeemed, and no session is made.
#[tokio::test]
async fn callback_with_wrong_state_is_400_and_makes_no_session() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let login = app.start_login().await;
    let code = op.issue_code(&login.authorize_url, Tamper::None);
    let resp = app
        .callback(&format!("code={code}&state=forged"), Some(&login.tx_cookie))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(&resp, "TEST_APP_SESSION").is_none());
    assert_security_headers(&resp);
    let body = resp.text().await.unwrap();
    assert_eq!(
        element_text(&body, "error-code").as_deref(),
        Some("state_mismatch")
    );
    assert_eq!(
        op.token_hits(),
        0,
        "the code was never sent to the token endpoint"
    );

    // The transaction was consumed by the failed attempt: the right state no longer works.
    let resp = app
        .callback(
            &format!("code={code}&state={}", login.params["state"]),
            Some(&login.tx_cookie),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(&resp, "TEST_APP_SESSION").is_none());
}

/// RFC 6749 §10.12: a callback without the transaction cookie (e.g. login CSRF) is refused.
#[tokio::test]
async fn callback_without_transaction_is_400() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let login = app.start_login().await;
    let code = op.issue_code(&login.authorize_url, Tamper::None);
    let resp = app
        .callback(
            &format!("code={code}&state={}", login.params["state"]),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(&resp, "TEST_APP_SESSION").is_none());
    let body = resp.text().await.unwrap();
    assert_eq!(
        element_text(&body, "error-code").as_deref(),
        Some("no_transaction")
    );
    assert_eq!(op.token_hits(), 0);
}

/// RFC 6749 §10.12: the transaction is single-use, so replaying a successful callback fails.
#[tokio::test]
async fn replayed_callback_is_400() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let login = app.start_login().await;
    let code = op.issue_code(&login.authorize_url, Tamper::None);
    let query = format!("code={code}&state={}", login.params["state"]);
    let first = app.callback(&query, Some(&login.tx_cookie)).await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);

    let replay = app.callback(&query, Some(&login.tx_cookie)).await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(&replay, "TEST_APP_SESSION").is_none());
    let body = replay.text().await.unwrap();
    assert_eq!(
        element_text(&body, "error-code").as_deref(),
        Some("no_transaction")
    );
    assert_eq!(
        op.token_hits(),
        1,
        "the replayed code was not redeemed again"
    );
}

/// OIDC Core §3.1.3.7: each ID-token defect is caught by the verifier.
#[tokio::test]
async fn id_token_with_wrong_nonce_is_rejected() {
    assert_login_fails(
        Tamper::WrongNonce,
        StatusCode::BAD_GATEWAY,
        "id_token_rejected",
    )
    .await;
}

#[tokio::test]
async fn id_token_with_wrong_audience_is_rejected() {
    assert_login_fails(
        Tamper::WrongAudience,
        StatusCode::BAD_GATEWAY,
        "id_token_rejected",
    )
    .await;
}

#[tokio::test]
async fn id_token_with_bad_signature_is_rejected() {
    assert_login_fails(
        Tamper::BadSignature,
        StatusCode::BAD_GATEWAY,
        "id_token_rejected",
    )
    .await;
}

#[tokio::test]
async fn expired_id_token_is_rejected() {
    assert_login_fails(
        Tamper::Expired,
        StatusCode::BAD_GATEWAY,
        "id_token_rejected",
    )
    .await;
}

#[tokio::test]
async fn id_token_with_wrong_at_hash_is_rejected() {
    assert_login_fails(
        Tamper::WrongAtHash,
        StatusCode::BAD_GATEWAY,
        "id_token_rejected",
    )
    .await;
}

/// OIDC Core §10.1, RFC 8725 §3.1: an HMAC "signed" with our own client secret is not accepted (alg allowlist).
#[tokio::test]
async fn id_token_hmac_with_client_secret_is_rejected() {
    assert_login_fails(
        Tamper::IdHs256WithClientSecret,
        StatusCode::BAD_GATEWAY,
        "id_token_rejected",
    )
    .await;
}

/// RFC 9068 §4: the access token must be an `at+jwt` signed by the provider.
#[tokio::test]
async fn access_token_without_at_jwt_typ_is_rejected() {
    assert_login_fails(
        Tamper::AtWrongTyp,
        StatusCode::BAD_GATEWAY,
        "access_token_rejected",
    )
    .await;
}

#[tokio::test]
async fn access_token_hmac_with_client_secret_is_rejected() {
    assert_login_fails(
        Tamper::AtHs256WithClientSecret,
        StatusCode::BAD_GATEWAY,
        "access_token_rejected",
    )
    .await;
}

#[tokio::test]
async fn access_token_with_bad_signature_is_rejected() {
    assert_login_fails(
        Tamper::AtBadSignature,
        StatusCode::BAD_GATEWAY,
        "access_token_rejected",
    )
    .await;
}

#[tokio::test]
async fn expired_access_token_is_rejected() {
    assert_login_fails(
        Tamper::AtExpired,
        StatusCode::BAD_GATEWAY,
        "access_token_rejected",
    )
    .await;
}

#[tokio::test]
async fn access_token_from_another_issuer_is_rejected() {
    assert_login_fails(
        Tamper::AtWrongIssuer,
        StatusCode::BAD_GATEWAY,
        "access_token_rejected",
    )
    .await;
}

#[tokio::test]
async fn access_token_for_another_subject_is_rejected() {
    assert_login_fails(
        Tamper::AtOtherSubject,
        StatusCode::BAD_GATEWAY,
        "access_token_rejected",
    )
    .await;
}

/// ES256 is on the allowlist: an ES256 access token from a published EC key works.
#[tokio::test]
async fn es256_access_token_is_accepted() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let login = app.start_login().await;
    let code = op.issue_code(&login.authorize_url, Tamper::AtEs256);
    let resp = app
        .callback(
            &format!("code={code}&state={}", login.params["state"]),
            Some(&login.tx_cookie),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = format!(
        "TEST_APP_SESSION={}",
        set_cookie(&resp, "TEST_APP_SESSION").unwrap().value
    );
    let (status, me) = app.api_me(Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    let at = me["access_token"].as_str().unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(at.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
}

/// The provider's `error=` response is shown (escaped), with no session (RFC 6749 §4.1.2.1).
#[tokio::test]
async fn provider_error_is_shown_on_a_page() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let login = app.start_login().await;
    let resp = app
        .callback(
            &format!(
                "error=access_denied&error_description={}&state={}",
                enc("The user said <script>alert(1)</script> no"),
                login.params["state"]
            ),
            Some(&login.tx_cookie),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(&resp, "TEST_APP_SESSION").is_none());
    let body = resp.text().await.unwrap();
    assert_eq!(
        element_text(&body, "error-code").as_deref(),
        Some("provider_error")
    );
    assert_eq!(
        element_text(&body, "provider-error").as_deref(),
        Some("access_denied")
    );
    assert!(body.contains("The user said"));
    assert!(
        !body.contains("<script>alert(1)"),
        "the description is escaped"
    );
    assert_eq!(op.token_hits(), 0);
}

/// RFC 9207 §2.4: a different `iss`, or none when advertised, is refused.
#[tokio::test]
async fn callback_with_wrong_or_missing_iss_is_400() {
    let op = start_op(OpOptions {
        advertise_iss: true,
        ..OpOptions::default()
    })
    .await;
    let app = spawn_app(&op.issuer).await;

    let login = app.start_login().await;
    let code = op.issue_code(&login.authorize_url, Tamper::None);
    let resp = app
        .callback(
            &format!(
                "code={code}&state={}&iss={}",
                login.params["state"],
                enc("http://evil.example")
            ),
            Some(&login.tx_cookie),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.text().await.unwrap();
    assert_eq!(
        element_text(&body, "error-code").as_deref(),
        Some("issuer_mismatch")
    );

    let login = app.start_login().await;
    let code = op.issue_code(&login.authorize_url, Tamper::None);
    let resp = app
        .callback(
            &format!("code={code}&state={}", login.params["state"]),
            Some(&login.tx_cookie),
        )
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "iss advertised but missing"
    );
    assert_eq!(op.token_hits(), 0);
}

/// A token-endpoint error (here: an unknown code) is shown with its OAuth error code.
#[tokio::test]
async fn token_endpoint_error_is_shown() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let login = app.start_login().await;
    let resp = app
        .callback(
            &format!("code=never-issued&state={}", login.params["state"]),
            Some(&login.tx_cookie),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(set_cookie(&resp, "TEST_APP_SESSION").is_none());
    let body = resp.text().await.unwrap();
    assert_eq!(
        element_text(&body, "error-code").as_deref(),
        Some("token_endpoint_error")
    );
    assert_eq!(
        element_text(&body, "provider-error").as_deref(),
        Some("invalid_grant")
    );
}

/// Lazy discovery: provider down → 503 page; provider up later → the next request works.
#[tokio::test]
async fn provider_down_gives_a_503_page_then_recovers() {
    // Reserve a port, then free it: nothing listens there.
    let reserved = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = reserved.local_addr().unwrap();
    drop(reserved);
    let issuer = format!("http://{addr}");
    let app = spawn_app(&issuer).await;

    let ready = app.get("/healthz/ready", None).await;
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "readiness ignores the provider"
    );

    let resp = app.get("/authenticated", None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        set_cookie(&resp, "TEST_APP_TX").is_none(),
        "no transaction started"
    );
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_security_headers(&resp);
    let body = resp.text().await.unwrap();
    assert_eq!(
        element_text(&body, "error-code").as_deref(),
        Some("provider_unavailable")
    );
    assert!(body.contains(&issuer), "the page names the provider");

    // The adapter starts after the test-app.
    let listener = TcpListener::bind(addr).await.unwrap();
    let op = start_op_on(listener, OpOptions::default()).await;
    let login = app.start_login().await;
    assert!(login.authorize_url.as_str().starts_with(&op.issuer));
    assert_eq!(op.discovery_hits(), 1);
}

/// OIDC Discovery §4.3: discovery whose `issuer` differs from the configured one is refused.
#[tokio::test]
async fn discovery_with_wrong_issuer_is_502() {
    let op = start_op(OpOptions {
        wrong_issuer: Some("http://evil.example".into()),
        ..OpOptions::default()
    })
    .await;
    let app = spawn_app(&op.issuer).await;
    let resp = app.get("/authenticated", None).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body = resp.text().await.unwrap();
    assert_eq!(
        element_text(&body, "error-code").as_deref(),
        Some("provider_misbehaved")
    );
}

/// OIDC Core §10.1.1: a token signed with a key published after discovery triggers one JWKS refresh.
#[tokio::test]
async fn rotated_signing_key_is_picked_up_by_one_refresh() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let login = app.start_login().await;
    assert_eq!(op.discovery_hits(), 1);
    op.publish_second_key();
    let code = op.issue_code(&login.authorize_url, Tamper::SecondKey);
    let resp = app
        .callback(
            &format!("code={code}&state={}", login.params["state"]),
            Some(&login.tx_cookie),
        )
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "{}",
        resp.text().await.unwrap()
    );
    assert_eq!(op.discovery_hits(), 2, "exactly one re-discovery");
}

/// OIDC Core §10.1.1: a kid still unknown after the one refresh fails, without a refetch loop.
#[tokio::test]
async fn key_unknown_even_after_refresh_is_rejected() {
    let op = assert_login_fails(
        Tamper::UnpublishedKey,
        StatusCode::BAD_GATEWAY,
        "id_token_rejected",
    )
    .await;
    assert_eq!(op.discovery_hits(), 2, "one refresh, then give up");
    let op = assert_login_fails(
        Tamper::AtUnpublishedKey,
        StatusCode::BAD_GATEWAY,
        "access_token_rejected",
    )
    .await;
    assert_eq!(op.discovery_hits(), 2, "one refresh, then give up");
}

/// Logout deletes the server-side session and expires the cookie.
#[tokio::test]
async fn logout_ends_the_session() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let cookie = app.login(&op).await;
    assert_eq!(app.api_me(Some(&cookie)).await.0, StatusCode::OK);

    let confirm = app.get("/logout", Some(&cookie)).await;
    assert_eq!(confirm.status(), StatusCode::OK);
    let html = confirm.text().await.unwrap();
    assert!(html.contains("method=\"post\" action=\"/logout\""));
    assert!(html.contains("id=\"logout-button\""));
    assert_eq!(op.discovery_hits(), 1);

    let resp = app.post_logout(&cookie, &[]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/");
    let cleared = set_cookie(&resp, "TEST_APP_SESSION").expect("cookie expired");
    assert!(cleared.attributes.contains("Max-Age=0"), "{cleared:?}");

    // The old cookie no longer works: the record is gone server-side.
    let (status, body) = app.api_me(Some(&cookie)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({"error": "unauthenticated"}));
    let page = app.get("/authenticated", Some(&cookie)).await;
    assert_eq!(
        page.status(),
        StatusCode::FOUND,
        "back to the login redirect"
    );
}

/// RP-initiated logout when the provider advertises an end_session_endpoint.
#[tokio::test]
async fn logout_everywhere_redirects_to_the_end_session_endpoint() {
    let op = start_op(OpOptions {
        end_session: true,
        ..OpOptions::default()
    })
    .await;
    let app = spawn_app(&op.issuer).await;
    let cookie = app.login(&op).await;
    let (_, me) = app.api_me(Some(&cookie)).await;

    let confirm = app
        .get("/logout", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(confirm.contains("id=\"logout-everywhere-button\""));

    let resp = app.post_logout(&cookie, &[("everywhere", "1")]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let loc = Url::parse(&location(&resp)).unwrap();
    assert_eq!(loc.path(), "/logout");
    let q: HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["id_token_hint"], me["id_token"].as_str().unwrap());
    assert_eq!(
        q["post_logout_redirect_uri"],
        format!("{}/logged-out", app.base_url)
    );
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["state"].len(), 43, "a fresh 256-bit state");
    assert_eq!(app.api_me(Some(&cookie)).await.0, StatusCode::UNAUTHORIZED);
}

/// RFC 6749 §10.12 (CSRF): a cross-site logout POST is refused and the session survives.
#[tokio::test]
async fn cross_site_logout_is_refused() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let cookie = app.login(&op).await;
    let resp = app
        .http
        .post(app.url("/logout"))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.api_me(Some(&cookie)).await.0, StatusCode::OK);
}

/// Session fixation (OWASP ASVS 4.0 V3.2.1): a new login replaces the session id;
/// the old id stops working.
#[tokio::test]
async fn a_new_login_rotates_the_session_id() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let first = app.login(&op).await;

    let login = app.start_login().await;
    let code = op.issue_code(&login.authorize_url, Tamper::None);
    let resp = app
        .callback(
            &format!("code={code}&state={}", login.params["state"]),
            Some(&format!("{}; {first}", login.tx_cookie)),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let second = format!(
        "TEST_APP_SESSION={}",
        set_cookie(&resp, "TEST_APP_SESSION").unwrap().value
    );
    assert_ne!(first, second);
    assert_eq!(app.api_me(Some(&first)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.api_me(Some(&second)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn api_me_without_session_is_401_json() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let resp = app.get("/api/me", Some("TEST_APP_SESSION=made-up")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": "unauthenticated"})
    );
}

#[tokio::test]
async fn health_assets_request_ids_and_404() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;

    let live = app.get("/healthz/live", None).await;
    assert_eq!(live.status(), StatusCode::OK);
    assert!(
        live.headers().contains_key("x-request-id"),
        "request id generated"
    );
    let ready = app.get("/healthz/ready", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");

    let echoed = app
        .http
        .get(app.url("/healthz/live"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-42");

    let css = app.get("/assets/app.css", None).await;
    assert_eq!(css.status(), StatusCode::OK);
    assert!(css.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));

    let home = app.get("/", None).await;
    assert_security_headers(&home);
    let html = home.text().await.unwrap();
    assert!(html.contains("href=\"/assets/app.css\""));
    assert!(html.contains("id=\"login-button\""));
    for external in ["https://fonts", "cdn.", "<script"] {
        assert!(!html.contains(external), "home page loads {external}");
    }

    let missing = app.get("/no/such/page", None).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing
        .text()
        .await
        .unwrap()
        .contains("id=\"error-code\">not_found<"));
}

/// A malformed config or unknown key stops start-up with the file and key named.
#[tokio::test]
async fn unknown_config_key_is_named_with_its_file() {
    let path = std::env::temp_dir().join(format!(
        "test-app-api-unknown-key-{}.toml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "issuer = \"http://127.0.0.1:9000\"\nredirect_url = \"x\"\n",
    )
    .unwrap();
    let err = Config::load(Some(&path)).unwrap_err().to_string();
    std::fs::remove_file(&path).ok();
    assert!(err.contains("redirect_url"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");

    // And an invalid value is refused by Application::build too.
    let bad = Config {
        issuer: "not a url".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let err = Application::build(bad).await.err().unwrap().to_string();
    assert!(err.contains("issuer"), "{err}");
}

/// RFC 6749 §10.3, §10.5: a full login and logout leave no code, state, nonce, PKCE verifier,
/// token, client secret or cookie value in the logs; the request id is there.
#[tokio::test]
async fn logs_carry_no_codes_tokens_or_secrets() {
    let op = start_op(OpOptions::default()).await;
    let app = spawn_app(&op.issuer).await;
    let login = app.start_login().await;
    let code = op.issue_code(&login.authorize_url, Tamper::None);
    let resp = app
        .http
        .get(app.url(&format!(
            "/login/oauth2/code/auth-adapter?code={code}&state={}",
            login.params["state"]
        )))
        .header("cookie", &login.tx_cookie)
        .header("x-request-id", "log-test-callback-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let session = set_cookie(&resp, "TEST_APP_SESSION").unwrap().value;
    let cookie = format!("TEST_APP_SESSION={session}");
    let (_, me) = app.api_me(Some(&cookie)).await;
    app.post_logout(&cookie, &[]).await;

    let seen = last_token_request(&op);
    let logs = String::from_utf8(captured_logs().lock().unwrap().clone()).unwrap();
    let callback_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("log-test-callback-7f3a"))
        .collect();
    assert!(
        callback_lines.iter().any(|l| l.contains("login completed")),
        "the callback is logged with its request id:\n{logs}"
    );
    let secrets = [
        ("code", code.as_str()),
        ("state", login.params["state"].as_str()),
        ("nonce", login.params["nonce"].as_str()),
        ("pkce verifier", seen.params["code_verifier"].as_str()),
        ("access token", me["access_token"].as_str().unwrap()),
        ("id token", me["id_token"].as_str().unwrap()),
        ("client secret", CLIENT_SECRET),
        ("session id", session.as_str()),
        (
            "transaction id",
            login.tx_cookie.trim_start_matches("TEST_APP_TX="),
        ),
    ];
    for (what, value) in secrets {
        assert!(!logs.contains(value), "the {what} appears in the logs");
    }
}
