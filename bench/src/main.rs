//! `cargo run --release -p bench`: figures for the adapter, measured over
//! loopback against in-process services on random ports.
//!
//! Scenarios (each bounded in count):
//! - `chain-login`: a new browser logs in through the adapter at the
//!   upstream (argon2id password check included) and the relying party
//!   redeems the code: 7 HTTP round trips and two token exchanges.
//! - `sso-code`: a browser with an adapter session gets a code and redeems it
//!   (authorize → token): the broker's own cost per login.
//! - `userinfo`: JWT access-token verification + claims.
//! - `jwks`: the public key set.
//!
//! Figures depend on the machine: compare runs on the same machine, or read
//! them as ratios between scenarios.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter::config::{ClientConfig, Config, UpstreamConfig};
use adapter::secret::{pkce_s256, random_token};
use anyhow::{bail, Context};
use clap::Parser;
use reqwest::redirect::Policy;
use serde_json::Value;
use url::Url;

#[derive(Debug, Parser)]
struct Args {
    /// Full chain logins per concurrency level.
    #[arg(long, default_value_t = 100)]
    logins: usize,
    /// Requests for the cheap scenarios.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

const RP_SECRET: &str = "bench-secret";
const RP_REDIRECT: &str = "http://127.0.0.1:1/cb";

struct Chain {
    adapter: String,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_chain() -> anyhow::Result<Chain> {
    let up_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ad_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (up, ad) = (up_l.local_addr()?.port(), ad_l.local_addr()?.port());
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);

    let mut upstream = upstream_test_server::default_config();
    upstream.server.issuer = Some(format!("http://127.0.0.1:{up}"));
    upstream.database.url = format!("sqlite://{}/up.db", d1.path().display());
    upstream.clients[0].redirect_uris = vec![format!(
        "http://127.0.0.1:{ad}/login/oauth2/code/test-auth-server"
    )];

    // Every bench login comes from 127.0.0.1: the per-IP quotas would
    // measure themselves instead of the login path.
    upstream.rate_limits.enabled = false;

    let mut broker = Config::default();
    broker.server.issuer = Some(format!("http://127.0.0.1:{ad}"));
    broker.database.url = format!("sqlite://{}/ad.db", d2.path().display());
    broker.clients = vec![ClientConfig {
        id: "bench".into(),
        name: None,
        secret: Some(RP_SECRET.into()),
        secret_env: None,
        redirect_uris: vec![RP_REDIRECT.into()],
        post_logout_redirect_uris: vec![],
        allowed_scopes: vec!["openid".into(), "profile".into(), "email".into()],
        public: false,
        require_pkce: true,
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        backchannel_logout_uri: None,
        id_token_signed_response_alg: None,
    }];
    broker.upstreams = vec![UpstreamConfig {
        id: "test-auth-server".into(),
        name: None,
        issuer: upstream.server.issuer().to_owned(),
        client_id: "auth-adapter".into(),
        client_secret: upstream.clients[0].secret.clone(),
        client_secret_env: None,
        scopes: vec!["openid".into(), "profile".into(), "email".into()],
        fetch_userinfo: false,
        subject: Default::default(),
        allow_shared_subjects: false,
    }];
    let up_app = adapter::Application::build_with_listener(upstream, up_l).await?;
    let ad_app = adapter::Application::build_with_listener(broker, ad_l).await?;
    tokio::spawn(up_app.run_until(std::future::pending()));
    tokio::spawn(ad_app.run_until(std::future::pending()));
    Ok(Chain {
        adapter: format!("http://127.0.0.1:{ad}"),
        _dirs: vec![d1, d2],
    })
}

fn browser() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(Policy::none())
        .cookie_store(true)
        .build()?)
}

fn location(r: &reqwest::Response) -> anyhow::Result<String> {
    Ok(r.headers()
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_string())
}

fn absolute(base: &str, loc: &str) -> String {
    if loc.starts_with('/') {
        let u = Url::parse(base)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        format!("{u}{loc}")
    } else {
        loc.to_string()
    }
}

fn hidden(html: &str, name: &str) -> anyhow::Result<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).context("hidden field")? + marker.len();
    Ok(html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string())
}

/// One login; `browser` keeps its cookies, so a second call is SSO.
async fn login(
    chain: &Chain,
    browser: &reqwest::Client,
    rp: &reqwest::Client,
) -> anyhow::Result<Value> {
    let verifier = random_token();
    let mut url = Url::parse(&format!("{}/oauth2/authorize", chain.adapter))?;
    url.query_pairs_mut().extend_pairs([
        ("client_id", "bench"),
        ("redirect_uri", RP_REDIRECT),
        ("response_type", "code"),
        ("scope", "openid profile"),
        ("state", "s"),
        ("code_challenge", &pkce_s256(&verifier)),
        ("code_challenge_method", "S256"),
    ]);
    let mut next = url.to_string();
    let code = loop {
        let r = browser.get(&next).send().await?;
        if r.status().is_success() {
            // The upstream login form.
            let page_url = next.clone();
            let html = r.text().await?;
            let action = absolute(&page_url, "/login/local");
            let r = browser
                .post(action)
                .form(&[
                    ("req", hidden(&html, "req")?),
                    ("csrf_token", hidden(&html, "csrf_token")?),
                    ("username", "testuser".into()),
                    ("password", "password".into()),
                ])
                .send()
                .await?;
            next = absolute(&page_url, &location(&r)?);
            continue;
        }
        let loc = absolute(&next, &location(&r)?);
        if loc.starts_with(RP_REDIRECT) {
            let u = Url::parse(&loc)?;
            match u.query_pairs().find(|(k, _)| k == "code") {
                Some((_, c)) => break c.into_owned(),
                None => bail!("login failed: {loc}"),
            }
        }
        next = loc;
    };
    let t: Value = rp
        .post(format!("{}/oauth2/token", chain.adapter))
        .basic_auth("bench", Some(RP_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", RP_REDIRECT),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await?
        .json()
        .await?;
    if t.get("access_token").is_none() {
        bail!("token endpoint: {t}");
    }
    Ok(t)
}

struct Figures {
    name: &'static str,
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn print(mut self) {
        self.latencies.sort();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
            self.latencies
                .get(i)
                .map(|d| d.as_secs_f64() * 1000.0)
                .unwrap_or(0.0)
        };
        println!(
            "{:<12} {:>6} ops  {:>9.1} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
            self.name,
            self.count,
            self.count as f64 / self.elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.99)
        );
    }
}

/// Runs `op` `count` times over `concurrency` workers.
async fn measure<F, Fut>(
    name: &'static str,
    count: usize,
    concurrency: usize,
    op: F,
) -> anyhow::Result<Figures>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w;
            while i < count {
                let t = Instant::now();
                op(i).await?;
                lat.push(t.elapsed());
                i += concurrency;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await??);
    }
    Ok(Figures {
        name,
        count,
        elapsed: start.elapsed(),
        latencies,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let chain = Arc::new(start_chain().await?);
    println!(
        "auth-adapter bench: {} cores, concurrency {}, SQLite (WAL) stores, loopback HTTP",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        args.concurrency
    );
    let rp = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()?;

    // Warm up (discovery, connections).
    login(&chain, &browser()?, &rp).await?;

    let (c, r) = (chain.clone(), rp.clone());
    measure("chain-login", args.logins, args.concurrency, move |_| {
        let (c, r) = (c.clone(), r.clone());
        async move { login(&c, &browser()?, &r).await.map(|_| ()) }
    })
    .await?
    .print();

    let sso_browser = browser()?;
    let tokens = login(&chain, &sso_browser, &rp).await?;
    let (c, r, b) = (chain.clone(), rp.clone(), sso_browser.clone());
    measure("sso-code", args.requests, args.concurrency, move |_| {
        let (c, r, b) = (c.clone(), r.clone(), b.clone());
        async move { login(&c, &b, &r).await.map(|_| ()) }
    })
    .await?
    .print();

    let access = tokens["access_token"]
        .as_str()
        .context("access token")?
        .to_string();
    let (c, r) = (chain.clone(), rp.clone());
    measure("userinfo", args.requests, args.concurrency, move |_| {
        let (c, r, a) = (c.clone(), r.clone(), access.clone());
        async move {
            let s = r
                .get(format!("{}/userinfo", c.adapter))
                .bearer_auth(a)
                .send()
                .await?
                .status();
            if !s.is_success() {
                bail!("userinfo {s}");
            }
            Ok(())
        }
    })
    .await?
    .print();

    let (c, r) = (chain.clone(), rp.clone());
    measure("jwks", args.requests, args.concurrency, move |_| {
        let (c, r) = (c.clone(), r.clone());
        async move {
            r.get(format!("{}/oauth2/jwks", c.adapter))
                .send()
                .await?
                .error_for_status()?;
            Ok(())
        }
    })
    .await?
    .print();
    Ok(())
}
