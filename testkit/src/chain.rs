//! The three real services, in-process, on random loopback ports.
//!
//! [`TestChain::start`] binds three `127.0.0.1:0` listeners first, then
//! builds each configuration with the ports it now knows:
//! - the upstream-test-server (issuer `http://127.0.0.1:{up}`) with its demo
//!   user `testuser`/`password` and one client, `auth-adapter`;
//! - the adapter (issuer `http://127.0.0.1:{ad}`) with the upstream
//!   `test-auth-server` and the relying parties `test-app`, `second-app` and
//!   `special-secret-app`;
//! - the test-app (`http://127.0.0.1:{app}`), a client of the adapter.
//!
//! Each provider gets a fresh SQLite database in its own temp dir; every
//! client secret is random per chain. [`ChainBuilder::upstream`] points the
//! adapter somewhere else instead (a [`crate::fake_op::FakeOp`],
//! or a closed port). Dropping the chain shuts the services down.
//!
//! The `login_*`/`obtain_*` helpers drive the flow as a browser would
//! ([`crate::rp::Agent`]), asserting each redirect on the way, so the
//! negative tests can start from a realistic state.

use std::sync::Arc;

use adapter::clock::{ManualClock, SharedClock, SystemClock};
use anyhow::{anyhow, bail, ensure, Context};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use url::Url;

use crate::clients;
use crate::rp::{self, expect_redirect, param, random_string, Agent, Pkce};
use crate::spawn::{self, temp_sqlite};

/// Id of the upstream in the adapter; also its callback path segment.
pub const UPSTREAM_ID: &str = "test-auth-server";
/// The adapter's client id at the upstream.
pub const ADAPTER_CLIENT_ID: &str = "auth-adapter";
/// Demo user of the upstream-test-server.
pub const USERNAME: &str = "testuser";
pub const PASSWORD: &str = "password";
/// Cookie names of the three services (distinct: browsers share cookies
/// across ports).
pub const APP_COOKIE: &str = "TEST_APP_SESSION";
pub const ADAPTER_COOKIE: &str = "AUTH_ADAPTER_SESSION";
pub const UPSTREAM_COOKIE: &str = "TEST_AUTH_SERVER_SESSION";

/// A relying party registered at the adapter.
#[derive(Debug, Clone)]
pub struct RpClient {
    pub id: String,
    pub secret: String,
    pub redirect_uri: String,
}

impl RpClient {
    pub fn basic(&self) -> rp::ClientAuth {
        rp::ClientAuth::basic(&self.id, &self.secret)
    }
    pub fn post(&self) -> rp::ClientAuth {
        rp::ClientAuth::post(&self.id, &self.secret)
    }
}

/// What the adapter uses as its upstream.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// The real upstream-test-server, started with the chain (default).
    TestServer,
    /// Some other provider at `issuer` (a fake, or a closed port).
    External {
        issuer: String,
        client_id: String,
        client_secret: String,
    },
}

/// A last-minute change to the adapter's configuration.
pub type AdapterTweak = Box<dyn FnOnce(&mut adapter::Config) + Send>;

/// Options of a chain.
pub struct ChainBuilder {
    upstream: Upstream,
    start_test_app: bool,
    manual_clock: bool,
    tweak_adapter: Option<AdapterTweak>,
    localhost_upstream: bool,
    second_upstream: Option<String>,
    tweak_upstream: Option<AdapterTweak>,
    adapter_listener: Option<TcpListener>,
}

/// The running services. Dropping it stops them.
pub struct TestChain {
    pub upstream_issuer: String,
    pub adapter_issuer: String,
    /// Base URL of the test-app (also when it was not started).
    pub app_url: String,
    /// The test-app's registration at the adapter.
    pub app: RpClient,
    /// A second confidential client (SSO, cross-client tests).
    pub second: RpClient,
    /// A client whose secret needs form-urlencoding (RFC 6749 §2.3.1).
    pub special: RpClient,
    /// The adapter's secret at the upstream-test-server.
    pub upstream_client_secret: String,
    /// The adapter's clock, when [`ChainBuilder::manual_clock`] was asked for.
    pub clock: Option<Arc<ManualClock>>,
    /// The issuer of the second upstream-test-server, when
    /// [`ChainBuilder::second_upstream`] asked for one.
    pub second_upstream_issuer: Option<String>,
    shutdowns: Vec<oneshot::Sender<()>>,
    /// The adapter, kept apart so a test can restart it.
    adapter: RunningAdapter,
    _dirs: Vec<tempfile::TempDir>,
    /// The upstream-test-server's configuration (its database, keys), when
    /// it was started: a test changes its accounts with it.
    pub upstream_config: Option<adapter::Config>,
}

/// What it takes to stop the adapter and start it again on the same port
/// and database.
struct RunningAdapter {
    config: adapter::Config,
    clock: SharedClock,
    stop: Option<spawn::Running>,
}

impl Drop for TestChain {
    fn drop(&mut self) {
        for tx in self.shutdowns.drain(..) {
            let _ = tx.send(());
        }
        if let Some(running) = self.adapter.stop.take() {
            let _ = running.stop.send(());
        }
    }
}

pub use crate::pg::PgSchema;

impl TestChain {
    /// Starts another adapter instance with the same configuration and
    /// database (a replica behind a load balancer); returns its base URL.
    pub async fn spawn_adapter_replica(&mut self) -> anyhow::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let running = spawn::provider(
            self.adapter.config.clone(),
            listener,
            self.adapter.clock.clone(),
            "adapter replica",
        )
        .await?;
        self.shutdowns.push(running.stop);
        Ok(base)
    }

    /// Stops the adapter (waiting until its socket is closed) and starts a
    /// new instance on the same port and database: what a deploy or a crash
    /// does between two steps of a login.
    pub async fn restart_adapter(&mut self) -> anyhow::Result<()> {
        if let Some(running) = self.adapter.stop.take() {
            running.shutdown().await?;
        }
        let listener = adapter::startup::bind(self.adapter.config.server.listen)
            .context("re-binding the adapter's port")?;
        let started = spawn::provider(
            self.adapter.config.clone(),
            listener,
            self.adapter.clock.clone(),
            "adapter",
        )
        .await?;
        self.adapter.stop = Some(started);
        Ok(())
    }
}

/// The `[[clients]]` block of a relying party `c` shown as `name`.
pub fn client_config(c: &RpClient, name: &str) -> anyhow::Result<adapter::config::ClientConfig> {
    clients::client(
        &c.id,
        Some(name),
        &c.secret,
        &[c.redirect_uri.as_str()],
        &["openid", "profile", "email"],
    )
}

impl Default for ChainBuilder {
    fn default() -> Self {
        ChainBuilder {
            upstream: Upstream::TestServer,
            start_test_app: true,
            manual_clock: false,
            tweak_adapter: None,
            localhost_upstream: false,
            second_upstream: None,
            tweak_upstream: None,
            adapter_listener: None,
        }
    }
}

impl ChainBuilder {
    /// Points the adapter at another upstream instead of the test server.
    pub fn upstream(mut self, upstream: Upstream) -> Self {
        self.upstream = upstream;
        self
    }

    /// Whether to run the test-app (its port is reserved either way).
    pub fn test_app(mut self, start: bool) -> Self {
        self.start_test_app = start;
        self
    }

    /// Gives the adapter and the upstream-test-server one [`ManualClock`]
    /// (exposed as [`TestChain::clock`])
    /// so a test can move its time forward instead of sleeping.
    pub fn manual_clock(mut self, on: bool) -> Self {
        self.manual_clock = on;
        self
    }

    /// Runs the upstream-test-server at `http://localhost:{port}` (still
    /// bound to 127.0.0.1) with passkeys for RP ID `localhost`: browsers
    /// refuse an IP address as a WebAuthn RP ID (WebAuthn L2 §5.1.2).
    pub fn localhost_upstream(mut self, on: bool) -> Self {
        self.localhost_upstream = on;
        self
    }

    /// Last-minute changes to the adapter's configuration.
    pub fn tweak_adapter(mut self, f: impl FnOnce(&mut adapter::Config) + Send + 'static) -> Self {
        self.tweak_adapter = Some(Box::new(f));
        self
    }

    /// A second upstream-test-server (its own database, so its own users,
    /// with the same demo user) behind the adapter as upstream `id`; both
    /// upstreams then get namespaced subjects.
    pub fn second_upstream(mut self, id: &str) -> Self {
        self.second_upstream = Some(id.to_string());
        self
    }

    /// Last-minute changes to the upstream-test-server's configuration
    /// (with [`Upstream::TestServer`]).
    pub fn tweak_upstream(mut self, f: impl FnOnce(&mut adapter::Config) + Send + 'static) -> Self {
        self.tweak_upstream = Some(Box::new(f));
        self
    }

    /// Runs the adapter on this listener: its address is known before the
    /// chain starts (to register it as a client elsewhere, e.g. at another
    /// adapter that is its upstream).
    pub fn adapter_listener(mut self, listener: TcpListener) -> Self {
        self.adapter_listener = Some(listener);
        self
    }

    pub async fn start(self) -> anyhow::Result<TestChain> {
        crate::init_test_log();
        let adapter_listener = match self.adapter_listener {
            Some(listener) => listener,
            None => TcpListener::bind("127.0.0.1:0").await?,
        };
        let app_listener = TcpListener::bind("127.0.0.1:0").await?;
        let adapter_addr = adapter_listener.local_addr()?;
        let app_addr = app_listener.local_addr()?;
        let adapter_issuer = format!("http://{adapter_addr}");
        let app_url = format!("http://{app_addr}");

        let mut shutdowns = Vec::new();
        let mut dirs = Vec::new();
        // One clock for the adapter and the upstream-test-server, so a test
        // can age both sessions alike.
        let clock = self.manual_clock.then(|| Arc::new(ManualClock::new()));
        let shared: SharedClock = match &clock {
            Some(c) => c.clone(),
            None => Arc::new(SystemClock),
        };

        // 1. The upstream.
        let mut upstream_config = None;
        let (upstream_issuer, upstream_client_id, upstream_client_secret) = match &self.upstream {
            Upstream::TestServer => {
                let server = UpstreamServer {
                    id: UPSTREAM_ID,
                    localhost: self.localhost_upstream,
                    adapter_issuer: &adapter_issuer,
                    clock: shared.clone(),
                };
                let tweak = self.tweak_upstream;
                let (issuer, secret, config) = server
                    .start(&mut shutdowns, &mut dirs, |c| {
                        if let Some(tweak) = tweak {
                            tweak(c);
                        }
                    })
                    .await?;
                upstream_config = Some(config);
                (issuer, ADAPTER_CLIENT_ID.to_string(), secret)
            }
            Upstream::External {
                issuer,
                client_id,
                client_secret,
            } => (issuer.clone(), client_id.clone(), client_secret.clone()),
        };

        // 2. The adapter.
        let app = RpClient {
            id: "test-app".into(),
            secret: random_string(24),
            redirect_uri: format!("{app_url}{}", test_app::CALLBACK_PATH),
        };
        let second = RpClient {
            id: "second-app".into(),
            secret: random_string(24),
            redirect_uri: format!("{app_url}/second/callback"),
        };
        let special = RpClient {
            id: "special-secret-app".into(),
            // Characters that client_secret_basic must form-urlencode (RFC 6749 §2.3.1).
            secret: format!("p:a%s s+w/o~r-d&={}", random_string(8)),
            redirect_uri: format!("{app_url}/special/callback"),
        };
        let (dir, db) = temp_sqlite("e2e-adapter-")?;
        dirs.push(dir);
        let mut config = adapter::Config::default();
        config.server.listen = adapter_addr;
        config.server.issuer = Some(adapter_issuer.clone());
        config.server.shutdown_grace_seconds = 0;
        config.database.url = db;
        let mut test_app_client = client_config(&app, "Test App")?;
        // The test-app's logout page and back-channel receiver.
        test_app_client.post_logout_redirect_uris = vec![format!("{app_url}/logged-out")];
        test_app_client.backchannel_logout_uri = Some(format!("{app_url}/backchannel-logout"));
        config.clients = vec![
            test_app_client,
            client_config(&second, "Second App")?,
            client_config(&special, "Special Secret App")?,
        ];
        config.upstreams = vec![clients::upstream(
            UPSTREAM_ID,
            "Test Auth Server",
            &upstream_issuer,
            &upstream_client_id,
            &upstream_client_secret,
        )?];
        config.local_users = Vec::new();
        let mut second_upstream_issuer = None;
        if let Some(id) = &self.second_upstream {
            let server = UpstreamServer {
                id,
                localhost: false,
                adapter_issuer: &adapter_issuer,
                clock: shared.clone(),
            };
            // Its own cookies: a browser shares cookies across ports.
            let (issuer, secret, _) = server
                .start(&mut shutdowns, &mut dirs, |c| {
                    c.session.cookie_name = "SECOND_IDP_SESSION".into();
                    c.session.transaction_cookie_name = "SECOND_IDP_TX".into();
                    c.ui.title = "Second IdP".into();
                })
                .await?;
            config.upstreams.push(clients::upstream(
                id,
                "Second IdP",
                &issuer,
                ADAPTER_CLIENT_ID,
                &secret,
            )?);
            // OIDC Core §2: `sub` is unique per issuer only; two user bases
            // behind one adapter need namespaced subjects.
            for up in &mut config.upstreams {
                up.subject = adapter::config::SubjectStrategy::Namespaced;
            }
            second_upstream_issuer = Some(issuer);
        }
        if let Some(tweak) = self.tweak_adapter {
            tweak(&mut config);
        }
        let adapter = RunningAdapter {
            config: config.clone(),
            clock: shared.clone(),
            stop: Some(spawn::provider(config, adapter_listener, shared, "adapter").await?),
        };

        // 3. The test-app.
        if self.start_test_app {
            let config = test_app::Config {
                listen: app_addr,
                base_url: app_url.clone(),
                issuer: adapter_issuer.clone(),
                client_id: app.id.clone(),
                client_secret: Some(app.secret.clone()),
                client_secret_env: None,
                ..test_app::Config::default()
            };
            let built = test_app::Application::build_with_listener(config, app_listener)
                .await
                .context("building the test-app")?;
            let (tx, rx) = oneshot::channel::<()>();
            tokio::spawn(async move {
                let stop = async {
                    let _ = rx.await;
                };
                if let Err(e) = built.run_until(stop).await {
                    eprintln!("test-app stopped with an error: {e}");
                }
            });
            shutdowns.push(tx);
        } else {
            drop(app_listener);
        }

        Ok(TestChain {
            upstream_issuer,
            adapter_issuer,
            app_url,
            app,
            second,
            special,
            upstream_client_secret,
            second_upstream_issuer,
            clock,
            shutdowns,
            adapter,
            _dirs: dirs,
            upstream_config,
        })
    }
}

/// One authorization request a test sends to the adapter as an RP.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    pub client: RpClient,
    pub state: String,
    pub nonce: String,
    pub pkce: Option<Pkce>,
    pub scope: String,
}

impl AuthRequest {
    pub fn new(client: &RpClient) -> Self {
        AuthRequest {
            client: client.clone(),
            state: random_string(16),
            nonce: random_string(16),
            pkce: Some(Pkce::new()),
            scope: "openid profile email".into(),
        }
    }

    pub fn verifier(&self) -> &str {
        self.pkce
            .as_ref()
            .map(|p| p.verifier.as_str())
            .unwrap_or("")
    }
}

/// An authorization code the adapter issued, with its request.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub request: AuthRequest,
    pub code: String,
    /// The full redirect the RP received.
    pub redirect: Url,
}

impl TestChain {
    /// A chain with the real upstream-test-server and the test-app.
    pub async fn start() -> anyhow::Result<TestChain> {
        ChainBuilder::default().start().await
    }

    pub fn builder() -> ChainBuilder {
        ChainBuilder::default()
    }

    /// Adapter endpoint URL for a path like `/oauth2/token`.
    pub fn adapter(&self, path: &str) -> String {
        format!("{}{path}", self.adapter_issuer)
    }

    /// Upstream endpoint URL for a path.
    pub fn upstream(&self, path: &str) -> String {
        format!("{}{path}", self.upstream_issuer)
    }

    /// Test-app URL for a path.
    pub fn app_path(&self, path: &str) -> String {
        format!("{}{path}", self.app_url)
    }

    /// The adapter's upstream callback (one per upstream, RFC 9700 §4.4.2.2).
    pub fn upstream_callback(&self) -> String {
        self.adapter(&format!("/login/oauth2/code/{UPSTREAM_ID}"))
    }

    /// The adapter's discovery document.
    pub async fn discovery(&self, http: &reqwest::Client) -> anyhow::Result<Value> {
        let url = self.adapter("/.well-known/openid-configuration");
        let resp = http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
        resp.json().await.context("discovery is not JSON")
    }

    /// An endpoint from the adapter's discovery document.
    pub async fn endpoint(&self, http: &reqwest::Client, name: &str) -> anyhow::Result<String> {
        let d = self.discovery(http).await?;
        d.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("discovery has no {name}: {d}"))
    }

    /// The adapter's `/oauth2/authorize` URL for a request.
    pub fn authorize_url(&self, req: &AuthRequest) -> String {
        let mut url = match Url::parse(&self.adapter("/oauth2/authorize")) {
            Ok(u) => u,
            Err(_) => return String::new(),
        };
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &req.client.id)
                .append_pair("redirect_uri", &req.client.redirect_uri)
                .append_pair("scope", &req.scope)
                .append_pair("state", &req.state)
                .append_pair("nonce", &req.nonce);
            if let Some(p) = &req.pkce {
                q.append_pair("code_challenge", &p.challenge)
                    .append_pair("code_challenge_method", "S256");
            }
        }
        url.to_string()
    }

    /// From the upstream's `/oauth2/authorize` to the redirect back to the
    /// adapter: the login form is filled with the demo user. Asserts every
    /// hop stays on the upstream with 302/303, and returns the callback URL
    /// (not yet requested).
    pub async fn login_at_upstream(
        &self,
        agent: &Agent,
        upstream_authorize: &Url,
    ) -> anyhow::Result<Url> {
        let upstream_origin = rp::origin_of(&self.upstream_issuer)?;
        let resp = agent.get(upstream_authorize.as_str()).await?;
        let mut page_url = if resp.status().is_redirection() {
            expect_redirect(&resp, "upstream /oauth2/authorize without a session")?
        } else {
            bail!(
                "upstream /oauth2/authorize: expected a redirect to its login page, got {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        };
        ensure!(
            page_url.origin().ascii_serialization() == upstream_origin
                && page_url.path() == "/login/local",
            "upstream should send the browser to its /login/local form, went to {page_url}"
        );
        ensure!(
            param(&page_url, "req").is_some(),
            "login page URL has no req: {page_url}"
        );
        let resp = agent.get(page_url.as_str()).await?;
        ensure!(resp.status() == 200, "GET {page_url}: {}", resp.status());
        let html = resp.text().await?;
        let (action, fields) = login_form(&html, &page_url)?;
        let mut form: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        form.push(("username", USERNAME));
        form.push(("password", PASSWORD));
        let mut resp = agent.post_form(action.as_str(), &form).await?;
        // Follow the upstream's own redirects until it sends the browser away.
        for _ in 0..5 {
            let next = expect_redirect(&resp, "upstream after the login POST")?;
            if next.origin().ascii_serialization() != upstream_origin {
                return Ok(next);
            }
            page_url = next;
            resp = agent.get(page_url.as_str()).await?;
        }
        bail!("the upstream kept redirecting to itself after login (last {page_url})")
    }

    /// Sends `req` to the adapter and, if it asks for an upstream login,
    /// performs it. Returns the adapter's redirect to the RP (asserted to be
    /// a 302/303 to `req.client.redirect_uri`).
    pub async fn authorize(&self, agent: &Agent, req: &AuthRequest) -> anyhow::Result<Url> {
        let resp = agent.get(&self.authorize_url(req)).await?;
        let status = resp.status();
        if !status.is_redirection() {
            bail!(
                "adapter /oauth2/authorize: expected a redirect, got {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        let next = expect_redirect(&resp, "adapter /oauth2/authorize")?;
        let to_rp = if next.as_str().starts_with(&req.client.redirect_uri) {
            next // SSO: the adapter session was enough.
        } else {
            ensure!(
                next.as_str()
                    .starts_with(&format!("{}/", self.upstream_issuer)),
                "adapter sent the browser neither to the RP nor to the upstream: {next}"
            );
            let callback = self.login_at_upstream(agent, &next).await?;
            ensure!(
                rp::without_query(&callback) == self.upstream_callback(),
                "upstream redirected to {callback}, expected the adapter's callback {}",
                self.upstream_callback()
            );
            let resp = agent.get(callback.as_str()).await?;
            if !resp.status().is_redirection() {
                bail!(
                    "adapter callback: expected a redirect to the RP, got {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            }
            expect_redirect(&resp, "adapter upstream callback")?
        };
        ensure!(
            rp::without_query(&to_rp) == req.client.redirect_uri,
            "adapter redirected to {to_rp}, expected {}",
            req.client.redirect_uri
        );
        Ok(to_rp)
    }

    /// [`Self::authorize`], then checks the code response (`state`: RFC 6749 §4.1.2; `iss`: RFC 9207 §2).
    pub async fn obtain_code(&self, agent: &Agent, req: &AuthRequest) -> anyhow::Result<CodeGrant> {
        let redirect = self.authorize(agent, req).await?;
        if let Some(err) = param(&redirect, "error") {
            bail!("adapter returned error={err} to the RP: {redirect}");
        }
        let code = param(&redirect, "code").ok_or_else(|| anyhow!("no code in {redirect}"))?;
        ensure!(
            param(&redirect, "state").as_deref() == Some(req.state.as_str()),
            "state not echoed (RFC 6749 §4.1.2): {redirect}"
        );
        ensure!(
            param(&redirect, "iss").as_deref() == Some(self.adapter_issuer.as_str()),
            "iss missing or wrong (RFC 9207 §2): {redirect}"
        );
        Ok(CodeGrant {
            request: req.clone(),
            code,
            redirect,
        })
    }

    /// Redeems a code at the adapter's token endpoint.
    pub async fn redeem(
        &self,
        agent: &Agent,
        grant: &CodeGrant,
        auth: &rp::ClientAuth,
    ) -> anyhow::Result<rp::TokenResponse> {
        let token_endpoint = self.adapter("/oauth2/token");
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", grant.code.as_str()),
            ("redirect_uri", grant.request.client.redirect_uri.as_str()),
        ];
        if grant.request.pkce.is_some() {
            form.push(("code_verifier", grant.request.verifier()));
        }
        rp::token_request(&agent.http, &token_endpoint, auth, &form).await
    }

    /// Redeems the code in `to_rp` (the adapter's redirect to the RP of
    /// `req`) and returns the claims of the verified ID token.
    pub async fn id_token_claims(
        &self,
        agent: &Agent,
        req: AuthRequest,
        to_rp: Url,
    ) -> anyhow::Result<Value> {
        let code = param(&to_rp, "code").ok_or_else(|| anyhow!("no code in {to_rp}"))?;
        let auth = req.client.basic();
        let client_id = req.client.id.clone();
        let grant = CodeGrant {
            request: req,
            code,
            redirect: to_rp,
        };
        let tokens = self.redeem(agent, &grant, &auth).await?;
        ensure!(tokens.status == 200, "token endpoint: {}", tokens.text);
        let id_token = tokens
            .str("id_token")
            .ok_or_else(|| anyhow!("no id_token: {}", tokens.text))?;
        let (_, claims) = rp::verify_jwt(
            &agent.http,
            &self.adapter("/oauth2/jwks"),
            id_token,
            &self.adapter_issuer,
            &client_id,
        )
        .await?;
        Ok(claims)
    }

    /// Starts a login at the adapter and stops at the upstream's redirect
    /// back to the adapter: returns the callback URL, not yet requested.
    pub async fn upstream_callback_for(
        &self,
        agent: &Agent,
        req: &AuthRequest,
    ) -> anyhow::Result<Url> {
        let resp = agent.get(&self.authorize_url(req)).await?;
        let upstream_authorize = expect_redirect(&resp, "adapter /oauth2/authorize")?;
        ensure!(
            upstream_authorize
                .as_str()
                .starts_with(&format!("{}/", self.upstream_issuer)),
            "expected a redirect to the upstream, got {upstream_authorize}"
        );
        let callback = self.login_at_upstream(agent, &upstream_authorize).await?;
        ensure!(
            rp::without_query(&callback) == self.upstream_callback(),
            "upstream redirected to {callback}, expected {}",
            self.upstream_callback()
        );
        Ok(callback)
    }
}

/// The action URL and hidden fields of `form#login-form`.
pub fn login_form(html: &str, page_url: &Url) -> anyhow::Result<(Url, Vec<(String, String)>)> {
    let form_tag = rp::find_tag(html, "form", "id", "login-form")
        .ok_or_else(|| anyhow!("no <form id=\"login-form\"> on the login page:\n{html}"))?;
    ensure!(
        rp::attr(form_tag, "method").is_some_and(|m| m.eq_ignore_ascii_case("post")),
        "login form is not method=post: {form_tag}"
    );
    let action = match rp::attr(form_tag, "action") {
        Some(a) if !a.is_empty() => page_url.join(&a)?,
        _ => page_url.clone(),
    };
    let start = html.find(form_tag).unwrap_or(0);
    let end = html[start..]
        .find("</form>")
        .map(|e| start + e)
        .unwrap_or(html.len());
    let form_html = &html[start..end];
    for (name, id) in [("username", "username"), ("password", "password")] {
        let tag = rp::find_tag(form_html, "input", "name", name)
            .ok_or_else(|| anyhow!("login form has no input name={name}"))?;
        ensure!(
            rp::attr(tag, "id").as_deref() == Some(id),
            "input {name} has no id={id}: {tag}"
        );
    }
    ensure!(
        rp::find_tag(form_html, "button", "id", "login-submit").is_some()
            || rp::find_tag(form_html, "input", "id", "login-submit").is_some(),
        "login form has no #login-submit"
    );
    let csrf = rp::input_value(form_html, "csrf_token")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow!("login form has no csrf_token value (RFC 6749 §10.12)"))?;
    let mut fields = vec![("csrf_token".to_string(), csrf)];
    // Any other hidden field the form carries (e.g. the pending request id).
    let mut rest = form_html;
    while let Some(i) = rest.find("<input") {
        let tail = &rest[i..];
        let Some(end) = tail.find('>') else { break };
        let tag = &tail[..=end];
        if rp::attr(tag, "type").is_some_and(|t| t.eq_ignore_ascii_case("hidden")) {
            if let (Some(n), Some(v)) = (rp::attr(tag, "name"), rp::attr(tag, "value")) {
                if n != "csrf_token" {
                    fields.push((n, v));
                }
            }
        }
        rest = &tail[end..];
    }
    Ok((action, fields))
}

/// An upstream-test-server to start for the adapter at `adapter_issuer`,
/// where the adapter is client [`ADAPTER_CLIENT_ID`] with the callback of
/// upstream `id`.
struct UpstreamServer<'a> {
    id: &'a str,
    /// Issuer `http://localhost:{port}` (passkeys need a host name).
    localhost: bool,
    adapter_issuer: &'a str,
    clock: SharedClock,
}

impl UpstreamServer<'_> {
    /// Starts it with a fresh SQLite database and a random client secret,
    /// after `tweak` changed its configuration; returns its issuer, the
    /// adapter's secret there and its configuration.
    async fn start(
        self,
        shutdowns: &mut Vec<oneshot::Sender<()>>,
        dirs: &mut Vec<tempfile::TempDir>,
        tweak: impl FnOnce(&mut adapter::Config),
    ) -> anyhow::Result<(String, String, adapter::Config)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let issuer = if self.localhost {
            format!("http://localhost:{}", addr.port())
        } else {
            format!("http://{addr}")
        };
        let secret = random_string(24);
        let (dir, db) = temp_sqlite("e2e-upstream-")?;
        let mut config = upstream_test_server::default_config();
        // The passkeys' origin follows the port (the RP ID is `localhost`).
        config.passkeys.rp_origin = Some(format!("http://localhost:{}", addr.port()));
        config.server.listen = addr;
        config.server.issuer = Some(issuer.clone());
        config.server.shutdown_grace_seconds = 0;
        config.database.url = db;
        let adapter_issuer = self.adapter_issuer;
        let mut adapter_client = client_config(
            &RpClient {
                id: ADAPTER_CLIENT_ID.into(),
                secret: secret.clone(),
                redirect_uri: format!("{adapter_issuer}/login/oauth2/code/{}", self.id),
            },
            "Auth Adapter",
        )?;
        // The adapter's logout callback (OIDC RP-Initiated Logout 1.0 §3).
        adapter_client.post_logout_redirect_uris =
            vec![format!("{adapter_issuer}/logout/callback")];
        config.clients = vec![adapter_client];
        tweak(&mut config);
        let running =
            spawn::provider(config.clone(), listener, self.clock, "upstream-test-server").await?;
        shutdowns.push(running.stop);
        dirs.push(dir);
        Ok((issuer, secret, config))
    }
}
