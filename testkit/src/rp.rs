//! A hand-rolled user agent and relying party over reqwest.
//!
//! [`Agent`] is "a browser" for the HTTP-level tests: it never follows a
//! redirect (each `Location` is asserted by the test) and keeps one cookie
//! jar for every port of 127.0.0.1, as a browser would. The free functions
//! build the pieces a relying party needs when a test talks to the adapter
//! directly: PKCE S256 (RFC 7636), client authentication (RFC 6749 §2.3.1),
//! token requests, tiny HTML scraping and JWT checks against a JWKS.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use reqwest::cookie::CookieStore as _;
use reqwest::header::{HeaderMap, HeaderValue, LOCATION, SET_COOKIE};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

/// A user agent: no redirects, one cookie jar.
#[derive(Clone)]
pub struct Agent {
    pub http: reqwest::Client,
    pub jar: Arc<reqwest::cookie::Jar>,
}

impl Agent {
    pub fn new() -> anyhow::Result<Self> {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(jar.clone())
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building reqwest client")?;
        Ok(Agent { http, jar })
    }

    /// `GET url`, no redirect followed.
    pub async fn get(&self, url: &str) -> anyhow::Result<Response> {
        self.http
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))
    }

    /// Form `POST` with an `Origin` header, as a browser sends it for a
    /// same-origin form (Fetch Standard §3.1, the
    /// `Origin` header a CSRF check looks at).
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> anyhow::Result<Response> {
        let origin = origin_of(url)?;
        self.http
            .post(url)
            .header("Origin", origin)
            .form(form)
            .send()
            .await
            .with_context(|| format!("POST {url}"))
    }

    /// `name=value` pairs the jar would send to `url`.
    pub fn cookies(&self, url: &str) -> Vec<(String, String)> {
        let Ok(url) = Url::parse(url) else {
            return Vec::new();
        };
        let Some(header) = self.jar.cookies(&url) else {
            return Vec::new();
        };
        header
            .to_str()
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect()
    }

    /// Value of one cookie the jar would send to `url`.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.cookies(url)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// `scheme://host:port` of a URL.
pub fn origin_of(url: &str) -> anyhow::Result<String> {
    let u = Url::parse(url).with_context(|| format!("bad URL {url}"))?;
    Ok(u.origin().ascii_serialization())
}

/// The `Location` of a redirect, resolved against the request URL.
pub fn location(resp: &Response) -> anyhow::Result<Url> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .ok_or_else(|| anyhow!("no Location on {} from {}", resp.status(), resp.url()))?
        .to_str()
        .context("Location is not ASCII")?;
    resp.url()
        .join(loc)
        .with_context(|| format!("bad Location {loc}"))
}

/// Asserts a 302/303 redirect (never 307: RFC 9700 §4.12) and returns its target.
pub fn expect_redirect(resp: &Response, what: &str) -> anyhow::Result<Url> {
    let status = resp.status();
    if status != StatusCode::FOUND && status != StatusCode::SEE_OTHER {
        bail!(
            "{what}: expected 302/303 from {}, got {status} (Location: {:?})",
            resp.url(),
            resp.headers().get(LOCATION)
        );
    }
    location(resp)
}

/// First value of a query parameter.
pub fn param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `scheme://host:port/path` of a URL (no query, no fragment).
pub fn without_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// Raw `Set-Cookie` headers of a response.
pub fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect()
}

/// The `Set-Cookie` header that sets `name`, if any.
pub fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    set_cookies(headers).into_iter().find(|c| {
        c.split(';')
            .next()
            .and_then(|kv| kv.split_once('='))
            .map(|(k, _)| k.trim())
            == Some(name)
    })
}

/// `count` random bytes, base64url without padding.
pub fn random_string(count: usize) -> String {
    let bytes: Vec<u8> = (0..count).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A PKCE pair with `code_challenge_method=S256` (RFC 7636 §4.1–4.2).
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Self {
        // 32 random bytes -> 43 characters of [A-Za-z0-9-_].
        Self::from_verifier(&random_string(32))
    }

    pub fn from_verifier(verifier: &str) -> Self {
        Pkce {
            verifier: verifier.to_string(),
            challenge: s256(verifier),
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// `BASE64URL(SHA256(ascii))`.
pub fn s256(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(value.as_bytes()))
}

/// `at_hash` of an access token for an RS256/ES256 ID token (OIDC Core
/// §3.1.3.6): base64url of the left half of its SHA-256. Computed here with
/// sha2 and base64 directly, independently of the adapter's own function.
pub fn at_hash(access_token: &str) -> String {
    let digest = Sha256::digest(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `Basic` credentials per RFC 6749 §2.3.1: id and secret are
/// form-urlencoded **before** base64.
pub fn basic_auth(client_id: &str, secret: &str) -> String {
    let raw = format!("{}:{}", form_urlencode(client_id), form_urlencode(secret));
    format!("Basic {}", STANDARD.encode(raw))
}

/// How a test client authenticates at `/oauth2/token`.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// `client_secret_basic`.
    Basic { id: String, secret: String },
    /// `client_secret_post`.
    Post { id: String, secret: String },
    /// Only `client_id` in the body (public client).
    Public { id: String },
}

impl ClientAuth {
    pub fn basic(id: &str, secret: &str) -> Self {
        ClientAuth::Basic {
            id: id.into(),
            secret: secret.into(),
        }
    }
    pub fn post(id: &str, secret: &str) -> Self {
        ClientAuth::Post {
            id: id.into(),
            secret: secret.into(),
        }
    }
}

/// A token endpoint answer.
#[derive(Debug)]
pub struct TokenResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl TokenResponse {
    /// `error` of an error response.
    pub fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }

    /// A string member of the body.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }
}

/// POSTs a form to a token endpoint with the given client authentication.
pub async fn token_request(
    http: &reqwest::Client,
    token_endpoint: &str,
    auth: &ClientAuth,
    form: &[(&str, &str)],
) -> anyhow::Result<TokenResponse> {
    let mut fields: Vec<(String, String)> = form
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut req = http.post(token_endpoint);
    match auth {
        ClientAuth::Basic { id, secret } => {
            let value = HeaderValue::from_str(&basic_auth(id, secret))?;
            req = req.header(reqwest::header::AUTHORIZATION, value);
        }
        ClientAuth::Post { id, secret } => {
            fields.push(("client_id".into(), id.clone()));
            fields.push(("client_secret".into(), secret.clone()));
        }
        ClientAuth::Public { id } => fields.push(("client_id".into(), id.clone())),
    }
    let resp = req
        .form(&fields)
        .send()
        .await
        .with_context(|| format!("POST {token_endpoint}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.context("reading token response")?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(TokenResponse {
        status,
        headers,
        body,
        text,
    })
}

// ---------------------------------------------------------------- HTML ----

/// Decodes the few entities askama's escaper produces (named or numeric).
pub fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#x2f;", "/")
        .replace("&#x2F;", "/")
        .replace("&#47;", "/")
        .replace("&lt;", "<")
        .replace("&#60;", "<")
        .replace("&gt;", ">")
        .replace("&#62;", ">")
        // Last: `&` is the start of every other entity.
        .replace("&amp;", "&")
        .replace("&#38;", "&")
}

/// The start tags `<tag ...>` in `html` (lower-case tag names only).
fn start_tags<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}");
    html.match_indices(open.as_str())
        .filter_map(|(i, _)| {
            let rest = &html[i..];
            let after = rest.as_bytes().get(open.len()).copied();
            if !matches!(after, Some(b' ' | b'\n' | b'\t' | b'\r' | b'>' | b'/')) {
                return None;
            }
            let end = rest.find('>')?;
            Some(&rest[..=end])
        })
        .collect()
}

/// Value of attribute `name` in one start tag.
pub fn attr(tag: &str, name: &str) -> Option<String> {
    let bytes = tag.as_bytes();
    let mut from = 0;
    while let Some(pos) = tag[from..].find(name) {
        let i = from + pos;
        from = i + name.len();
        let before_ok = i > 0 && bytes[i - 1].is_ascii_whitespace();
        let rest = tag[i + name.len()..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let rest = rest[1..].trim_start();
        let quote = rest.chars().next()?;
        if quote == '"' || quote == '\'' {
            let body = &rest[1..];
            let end = body.find(quote)?;
            return Some(html_unescape(&body[..end]));
        }
        let end = rest
            .find(|c: char| c.is_ascii_whitespace() || c == '>')
            .unwrap_or(rest.len());
        return Some(html_unescape(&rest[..end]));
    }
    None
}

/// The first start tag `<tag ...>` whose attribute `name` equals `value`.
pub fn find_tag<'a>(html: &'a str, tag: &str, name: &str, value: &str) -> Option<&'a str> {
    start_tags(html, tag)
        .into_iter()
        .find(|t| attr(t, name).as_deref() == Some(value))
}

/// `value` of the `<input name=...>` in `html`.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    find_tag(html, "input", "name", name).and_then(|t| attr(t, "value"))
}

/// Text content (tags stripped, whitespace collapsed) of the element with
/// `id`, up to its closing tag.
pub fn element_text(html: &str, id: &str) -> Option<String> {
    let needle_dq = format!("id=\"{id}\"");
    let needle_sq = format!("id='{id}'");
    let pos = html.find(&needle_dq).or_else(|| html.find(&needle_sq))?;
    let tag_start = html[..pos].rfind('<')?;
    let name: String = html[tag_start + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let content_start = pos + html[pos..].find('>')? + 1;
    let close = format!("</{name}>");
    let content_end = content_start + html[content_start..].find(&close)?;
    let mut text = String::new();
    let mut in_tag = false;
    for c in html[content_start..content_end].chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    Some(html_unescape(
        &text.split_whitespace().collect::<Vec<_>>().join(" "),
    ))
}

// ----------------------------------------------------------------- JWT ----

/// Header and claims of a compact JWS, **without** checking anything.
pub fn decode_unverified(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not a compact JWS: {} parts", token.split('.').count());
    };
    let header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h)?)?;
    let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c)?)?;
    Ok((header, claims))
}

/// Verifies a JWT against the JWKS at `jwks_uri` (signature with the key
/// named by `kid`, algorithm from the key, `iss`, `aud`, `exp`) and returns
/// its header and claims (RFC 7515 §5.2, RFC 7519 §7.2).
pub async fn verify_jwt(
    http: &reqwest::Client,
    jwks_uri: &str,
    token: &str,
    issuer: &str,
    audience: &str,
) -> anyhow::Result<(Value, Value)> {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    let jwks: JwkSet = http
        .get(jwks_uri)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
        .context("JWKS is not a JWK set")?;
    let (header, _) = decode_unverified(token)?;
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("JWS header has no kid (RFC 7515 §4.1.4): {header}"))?;
    let jwk = jwks
        .find(kid)
        .ok_or_else(|| anyhow!("kid {kid} not in the JWKS"))?;
    // Allowlist (RFC 8725 §3.1): the algorithm comes from our expectations, not the token.
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Algorithm::RS256,
        Some("ES256") => Algorithm::ES256,
        Some("EdDSA") => Algorithm::EdDSA,
        other => bail!("unexpected alg {other:?}"),
    };
    let key = DecodingKey::from_jwk(jwk).context("JWK unusable")?;
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 5;
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|e| anyhow!("JWT rejected: {e}"))?;
    Ok((header, data.claims))
}
