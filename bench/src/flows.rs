//! The HTTP conversations the bench drives, as a browser (cookie-keeping
//! client, redirects followed by hand) and as the relying party.

use anyhow::{bail, Context};
use reqwest::redirect::Policy;
use serde_json::Value;
use url::Url;

use adapter::secret::{pkce_s256, random_token};

use crate::services::{CLIENT_ID, CLIENT_SECRET, RP_REDIRECT};

/// A new browser: its own cookie jar, redirects not followed.
pub fn browser() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(Policy::none())
        .cookie_store(true)
        .build()?)
}

/// The relying party's back-channel client (keep-alive, no cookies).
pub fn rp_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(Policy::none())
        .pool_max_idle_per_host(256)
        .build()?)
}

fn location(r: &reqwest::Response) -> anyhow::Result<String> {
    Ok(r.headers()
        .get("location")
        .with_context(|| format!("no Location in a {} answer", r.status()))?
        .to_str()?
        .to_string())
}

fn absolute(base: &str, loc: &str) -> anyhow::Result<String> {
    Ok(Url::parse(base)?.join(loc)?.to_string())
}

fn hidden(html: &str, name: &str) -> anyhow::Result<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .with_context(|| format!("hidden field {name}"))?
        + marker.len();
    Ok(html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The upstream's demo user, whose password hash has the default (OWASP)
/// argon2id cost.
pub const DEMO_USER: &str = "testuser";

/// An upstream user whose password hash has argon2id's least cost (see
/// `services::upstream_toml`): a login through the chain not paced by the
/// upstream's hashing.
pub const QUICK_USER: &str = "quickuser";

/// Both users' password.
pub const PASSWORD: &str = "password";

/// Follows an authorization request at `provider` for `client_id` until the
/// browser is sent to `redirect_uri`; a login form on the way is filled in
/// with [`DEMO_USER`]. Returns the `code`.
pub async fn authorize(
    browser: &reqwest::Client,
    provider: &str,
    client_id: &str,
    redirect_uri: &str,
    verifier: &str,
) -> anyhow::Result<String> {
    authorize_as(
        browser,
        provider,
        client_id,
        redirect_uri,
        verifier,
        DEMO_USER,
    )
    .await
}

/// [`authorize`], a login form on the way filled in with `user`.
pub async fn authorize_as(
    browser: &reqwest::Client,
    provider: &str,
    client_id: &str,
    redirect_uri: &str,
    verifier: &str,
    user: &str,
) -> anyhow::Result<String> {
    let mut url = Url::parse(&format!("{provider}{}", adapter::paths::AUTHORIZE))?;
    url.query_pairs_mut().extend_pairs([
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("response_type", "code"),
        ("scope", "openid profile email"),
        ("state", "bench-state"),
        ("nonce", "bench-nonce"),
        ("code_challenge", &pkce_s256(verifier)),
        ("code_challenge_method", "S256"),
    ]);
    let mut next = url.to_string();
    for _ in 0..12 {
        let r = browser.get(&next).send().await?;
        let loc = if r.status().is_success() {
            // A password form (the upstream's, or a local connector's).
            let page = next.clone();
            let html = r.text().await?;
            let r = browser
                .post(absolute(&page, &adapter::paths::login_form("local"))?)
                .form(&[
                    ("req", hidden(&html, "req")?),
                    ("csrf_token", hidden(&html, "csrf_token")?),
                    ("username", user.into()),
                    ("password", PASSWORD.into()),
                ])
                .send()
                .await?;
            absolute(&page, &location(&r)?)?
        } else {
            absolute(&next, &location(&r)?)?
        };
        if loc.starts_with(redirect_uri) {
            let u = Url::parse(&loc)?;
            return match u.query_pairs().find(|(k, _)| k == "code") {
                Some((_, c)) => Ok(c.into_owned()),
                None => bail!("authorization failed: {loc}"),
            };
        }
        next = loc;
    }
    bail!("too many redirects")
}

/// A code for the bench client at the adapter, with its PKCE verifier.
pub async fn adapter_code(
    browser: &reqwest::Client,
    adapter: &str,
) -> anyhow::Result<(String, String)> {
    adapter_code_as(browser, adapter, DEMO_USER).await
}

/// [`adapter_code`], logging in at the upstream as `user`.
pub async fn adapter_code_as(
    browser: &reqwest::Client,
    adapter: &str,
    user: &str,
) -> anyhow::Result<(String, String)> {
    let verifier = random_token();
    let code = authorize_as(browser, adapter, CLIENT_ID, RP_REDIRECT, &verifier, user).await?;
    Ok((code, verifier))
}

/// Posts a token request as the bench client; an answer without
/// `access_token` is an error.
pub async fn token(
    rp: &reqwest::Client,
    provider: &str,
    form: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let r = rp
        .post(format!("{provider}{}", adapter::paths::TOKEN))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(form)
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await?;
    if !status.is_success() || body.get("access_token").is_none() {
        bail!("token endpoint {status}: {body}");
    }
    Ok(body)
}

/// Redeems an authorization code at the adapter.
pub async fn redeem(
    rp: &reqwest::Client,
    adapter: &str,
    code: &str,
    verifier: &str,
) -> anyhow::Result<Value> {
    token(
        rp,
        adapter,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", RP_REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await
}

/// A whole login: code at the adapter (through the upstream for a new
/// browser, SSO for one with a session) and its redemption.
pub async fn login(
    browser: &reqwest::Client,
    rp: &reqwest::Client,
    adapter: &str,
) -> anyhow::Result<Value> {
    login_as(browser, rp, adapter, DEMO_USER).await
}

/// [`login`], logging in at the upstream as `user`.
pub async fn login_as(
    browser: &reqwest::Client,
    rp: &reqwest::Client,
    adapter: &str,
    user: &str,
) -> anyhow::Result<Value> {
    let (code, verifier) = adapter_code_as(browser, adapter, user).await?;
    redeem(rp, adapter, &code, &verifier).await
}

/// `n` refresh tokens at the adapter: one login through the upstream, then
/// SSO logins of the same browser (one session, `n` grants).
pub async fn refresh_tokens(
    rp: &reqwest::Client,
    adapter: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let b = browser()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = login(&b, rp, adapter).await?;
        out.push(
            t["refresh_token"]
                .as_str()
                .context("no refresh_token")?
                .to_string(),
        );
    }
    Ok(out)
}

/// One password login at `provider` (the upstream's local connector) for
/// the adapter's client there, ending at the adapter's callback URL (not
/// followed): an argon2id verification plus the pages around it.
pub async fn password_login(provider: &str, adapter_port: u16) -> anyhow::Result<()> {
    let b = browser()?;
    let redirect = format!(
        "http://127.0.0.1:{adapter_port}/login/oauth2/code/{}",
        crate::services::UPSTREAM_ID
    );
    authorize(&b, provider, "auth-adapter", &redirect, &random_token()).await?;
    Ok(())
}
