//! The adapter in-process for its own integration tests: [`spawn_app`] on
//! a random loopback port with a SQLite file and a [`ManualClock`], two
//! confidential clients (`app`, `other`) and one local account (`alice`).
//! [`TestApp`] plays the browser and the relying party with reqwest clients
//! that never follow redirects.
// Test support: a failed step is a failed test, so it panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

pub use adapter::clock::ManualClock;
use adapter::config::{Config, CustomizerKind};
use adapter::Application;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use reqwest::header::{AUTHORIZATION, LOCATION};
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use serde_json::{Map, Value};
use url::Url;

use crate::clients;
use crate::fake_op::{FakeOp, Options as FakeOpOptions, Tamper};
use crate::rp::s256 as pkce_s256;

pub const SECRET: &str = "s3cr:et%with~special-chars";
pub const REDIRECT: &str = "http://127.0.0.1:1/cb";
pub const VERIFIER: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG-._~";

pub struct TestApp {
    pub base: String,
    pub clock: Arc<ManualClock>,
    pub browser: reqwest::Client,
    pub rp: reqwest::Client,
    pub _dir: tempfile::TempDir,
    pub db_url: String,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub handle: Option<tokio::task::JoinHandle<()>>,
}

pub fn test_config(db_url: &str) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    // A placeholder: `start` puts the bound port in before building.
    c.server.issuer = Some("http://127.0.0.1:1".into());
    // Tests stop at once; the ops tests set their own grace.
    c.server.shutdown_grace_seconds = 0;
    c.database.url = db_url.to_string();
    c.claims.customizer = CustomizerKind::Passthrough;
    c.clients = vec![
        clients::client(
            "app",
            Some("Test App"),
            SECRET,
            &[REDIRECT, "http://127.0.0.1:1/other"],
            &["openid", "profile", "email"],
        )
        .unwrap(),
        clients::client("other", None, "other-secret", &[REDIRECT], &["openid"]).unwrap(),
    ];
    c.local_users = vec![clients::local_user(
        "alice",
        "correct horse",
        "Alice Example",
        "alice@example.org",
    )
    .unwrap()];
    c
}

pub fn init_logs() {
    if std::env::var("TEST_LOG").is_ok() {
        adapter::telemetry::init("text");
    }
}

pub async fn start(
    config: Config,
    clock: Arc<ManualClock>,
    port: u16,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    start_wrapped(config, clock, port, Box::new(|c| c)).await
}

/// [`start`] with a code-level token customizer around the configured one
/// (`Application::build_with_customizer`).
pub async fn start_wrapped(
    config: Config,
    clock: Arc<ManualClock>,
    port: u16,
    wrap: adapter::startup::WrapCustomizer,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = config;
    config.server.issuer = Some(format!("http://127.0.0.1:{port}"));
    let app = Application::build_with_customizer(config, listener, clock, wrap)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (port, tx, handle)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] with a last-minute change to the configuration (e.g. an
/// upstream instead of the local accounts).
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_wrapped(tweak, Box::new(|c| c)).await
}

/// [`spawn_app_with`] with a code-level token customizer ([`start_wrapped`]).
pub async fn spawn_app_wrapped(
    tweak: impl FnOnce(&mut Config),
    wrap: adapter::startup::WrapCustomizer,
) -> TestApp {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/adapter.db", dir.path().display());
    let clock = Arc::new(ManualClock::new());
    let mut config = test_config(&db_url);
    tweak(&mut config);
    let (port, tx, handle) = start_wrapped(config, clock.clone(), 0, wrap).await;
    TestApp {
        clock,
        _dir: dir,
        db_url,
        shutdown: Some(tx),
        handle: Some(handle),
        ..TestApp::connect(&format!("http://127.0.0.1:{port}"))
    }
}

pub fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location on {}", r.status()))
        .to_str()
        .unwrap()
        .to_string()
}

pub fn query(url: &str) -> Map<String, Value> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

pub fn jwt_parts(token: &str) -> (Value, Value) {
    let mut p = token.split('.');
    let h = URL_SAFE_NO_PAD.decode(p.next().unwrap()).unwrap();
    let c = URL_SAFE_NO_PAD.decode(p.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&h).unwrap(),
        serde_json::from_slice(&c).unwrap(),
    )
}

impl TestApp {
    /// Clients for a provider started elsewhere (no shutdown handle).
    pub fn connect(base: &str) -> TestApp {
        let client = || {
            reqwest::Client::builder()
                .redirect(Policy::none())
                .cookie_store(true)
                .build()
                .unwrap()
        };
        TestApp {
            base: base.to_string(),
            clock: Arc::new(ManualClock::new()),
            browser: client(),
            rp: client(),
            _dir: tempfile::tempdir().unwrap(),
            db_url: String::new(),
            shutdown: None,
            handle: None,
        }
    }

    pub fn authorize_url(&self, extra: &[(&str, &str)]) -> String {
        let mut url = Url::parse(&format!("{}/oauth2/authorize", self.base)).unwrap();
        let challenge = pkce_s256(VERIFIER);
        let mut params: Vec<(&str, &str)> = vec![
            ("client_id", "app"),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", "openid profile email"),
            ("state", "st-123"),
            ("nonce", "n-456"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        for (k, v) in extra {
            params.retain(|(pk, _)| pk != k);
            if !v.is_empty() {
                params.push((k, v));
            }
        }
        url.query_pairs_mut().extend_pairs(params);
        url.to_string()
    }

    /// Browser: the authorization request with `extra` parameters; the
    /// `Location` it answers with (a 302 is asserted).
    pub async fn authorize_location(&self, extra: &[(&str, &str)]) -> String {
        let r = self
            .browser
            .get(self.authorize_url(extra))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        location(&r)
    }

    /// Browser: authorize → login form → POST credentials (or straight
    /// back when the browser has a session). Returns the client redirect.
    pub async fn login(&self, extra: &[(&str, &str)]) -> String {
        let form_url = self.authorize_location(extra).await;
        if form_url.starts_with(REDIRECT) {
            // Single sign-on: this browser already has a session.
            return form_url;
        }
        assert!(form_url.starts_with("/login/local?req="), "{form_url}");
        let r = self.submit_login(&form_url).await;
        // RFC 9700 §4.12: 303 after a credential POST, never 307.
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        location(&r)
    }

    /// Browser: opens the login form at `form_url` (a path) and submits
    /// alice's credentials. Returns the POST's response.
    pub async fn submit_login(&self, form_url: &str) -> reqwest::Response {
        let r = self
            .browser
            .get(format!("{}{form_url}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let html = r.text().await.unwrap();
        self.browser
            .post(format!("{}/login/local", self.base))
            .form(&[
                ("req", hidden(&html, "req")),
                ("csrf_token", hidden(&html, "csrf_token")),
                ("username", "alice".into()),
                ("password", "correct horse".into()),
            ])
            .send()
            .await
            .unwrap()
    }

    pub async fn code(&self) -> String {
        let loc = self.login(&[]).await;
        assert!(loc.starts_with(REDIRECT), "{loc}");
        let q = query(&loc);
        assert_eq!(q["state"], "st-123", "state echoed (RFC 6749 §4.1.2)");
        assert_eq!(q["iss"], self.base.as_str(), "iss (RFC 9207 §2)");
        q["code"].as_str().unwrap().to_string()
    }

    pub async fn token(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> reqwest::Response {
        let mut req = self
            .rp
            .post(format!("{}/oauth2/token", self.base))
            .form(form);
        if let Some((id, secret)) = basic {
            // RFC 6749 §2.3.1: form-urlencode, then base64.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let raw = STANDARD.encode(format!("{}:{}", enc(id), enc(secret)));
            req = req.header(AUTHORIZATION, format!("Basic {raw}"));
        }
        req.send().await.unwrap()
    }

    pub async fn redeem(&self, code: &str) -> reqwest::Response {
        self.redeem_with_verifier(code, VERIFIER).await
    }

    /// [`Self::redeem`] with another PKCE `code_verifier` (RFC 7636 §4.5).
    pub async fn redeem_with_verifier(&self, code: &str, verifier: &str) -> reqwest::Response {
        self.token(
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
            ],
            Some(("app", SECRET)),
        )
        .await
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }
}

pub async fn error_of(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    (status, v["error"].as_str().unwrap().to_string())
}

/// Id of the OIDC upstream in [`spawn_app_with_upstream`] (callback
/// `/login/oauth2/code/fake-op`).
pub const UPSTREAM_ID: &str = "fake-op";
/// The adapter's client id at that upstream.
pub const UPSTREAM_CLIENT_ID: &str = "adapter-at-fake";
/// The adapter's secret there (needs form-urlencoding, RFC 6749 §2.3.1).
pub const UPSTREAM_SECRET: &str = "upstream:secret%value";

/// The test kit's fake provider, set up as the upstream of
/// [`spawn_app_with_upstream`]: it requires [`UPSTREAM_SECRET`].
pub async fn start_fake_upstream(tamper: Tamper) -> FakeOp {
    let mut options = FakeOpOptions::new(UPSTREAM_CLIENT_ID);
    options.client_secret = Some(UPSTREAM_SECRET.into());
    options.tamper = tamper;
    FakeOp::start_with(options).await.unwrap()
}

/// [`spawn_app`] with one OIDC upstream at `issuer` and no local accounts:
/// `/oauth2/authorize` goes straight to the upstream.
pub async fn spawn_app_with_upstream(issuer: &str) -> TestApp {
    spawn_app_with_upstream_and(issuer, |_| {}).await
}

/// [`spawn_app_with_upstream`] with `tweak` applied last.
pub async fn spawn_app_with_upstream_and(issuer: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let issuer = issuer.to_string();
    spawn_app_with(move |c| {
        c.local_users.clear();
        c.upstreams = vec![clients::upstream(
            UPSTREAM_ID,
            "Fake OP",
            &issuer,
            UPSTREAM_CLIENT_ID,
            UPSTREAM_SECRET,
        )
        .unwrap()];
        tweak(c);
    })
    .await
}

impl TestApp {
    /// Browser: adapter authorize (with `extra` parameters) → the upstream's
    /// `authorization_endpoint`, which answers at once → adapter callback.
    /// Returns the adapter's redirect to the client.
    pub async fn login_through_upstream_with(
        &self,
        authorization_endpoint: &str,
        extra: &[(&str, &str)],
    ) -> String {
        let r = self
            .callback_through_upstream(authorization_endpoint, UPSTREAM_ID, extra)
            .await;
        assert_eq!(r.status(), StatusCode::FOUND, "adapter callback");
        location(&r)
    }

    /// Browser: adapter authorize (with `extra` parameters) → the
    /// `authorization_endpoint` of the upstream `upstream_id`, which answers
    /// at once → that upstream's callback at the adapter. Asserts each
    /// `Location`; returns the callback's response.
    pub async fn callback_through_upstream(
        &self,
        authorization_endpoint: &str,
        upstream_id: &str,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let r = self
            .browser
            .get(self.authorize_url(extra))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        let to_upstream = location(&r);
        assert!(
            to_upstream.starts_with(authorization_endpoint),
            "{to_upstream}"
        );
        self.upstream_callback(&to_upstream, upstream_id).await
    }

    /// Browser: from the adapter's redirect to a fake upstream (which
    /// answers at once) back through upstream `id`'s callback. Returns the
    /// adapter's redirect to the client.
    pub async fn finish_upstream_login(&self, to_upstream: &str, id: &str) -> String {
        let r = self.upstream_callback(to_upstream, id).await;
        assert_eq!(r.status(), StatusCode::FOUND, "adapter callback");
        location(&r)
    }

    /// Browser: the adapter's redirect to a fake upstream, which answers at
    /// once, then upstream `id`'s callback at the adapter (its `Location`
    /// asserted). Returns the callback's response.
    async fn upstream_callback(&self, to_upstream: &str, id: &str) -> reqwest::Response {
        let r = self.browser.get(to_upstream).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        let callback = location(&r);
        assert!(
            callback.starts_with(&format!("{}/login/oauth2/code/{id}?", self.base)),
            "{callback}"
        );
        self.browser.get(&callback).send().await.unwrap()
    }

    /// [`Self::login_through_upstream_with`] with the default request.
    pub async fn login_through_upstream(&self, authorization_endpoint: &str) -> String {
        self.login_through_upstream_with(authorization_endpoint, &[])
            .await
    }
}

impl TestApp {
    /// RFC 6749 §4.1.2.1: `loc` is the error `error` at the client's
    /// redirect URI, with the default request's `state` and (RFC 9207 §2)
    /// this provider's `iss`, and no code. Returns its query.
    pub fn assert_error_at_client(&self, loc: &str, error: &str) -> Map<String, Value> {
        assert!(loc.starts_with(&format!("{REDIRECT}?")), "{loc}");
        let q = query(loc);
        assert_eq!(q["error"], error, "{loc}");
        assert_eq!(q["state"], "st-123", "{loc}");
        assert_eq!(q["iss"], self.base.as_str(), "{loc}");
        assert!(!q.contains_key("code"), "{loc}");
        q
    }
}
