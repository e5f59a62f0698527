//! A tampering OpenID Provider, used as the adapter's upstream in negative
//! tests (checklist E2, E3, E4).
//!
//! It serves discovery, a JWKS, an `/authorize` that immediately redirects
//! back to the `redirect_uri` with a code (no login), a `/token` that returns
//! an ID token forged according to a [`Tamper`] mode, and `/userinfo`. Its
//! RS256 key pair is generated at start-up with aws-lc-rs and lives only in
//! memory. It records every authorization request so a test can check what
//! the adapter sent (fresh `state`, `nonce`, PKCE S256), and it verifies the
//! PKCE verifier at `/token`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use url::Url;

use crate::rp::{random_string, s256};

/// How the ID token returned by `/token` is forged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// A valid ID token (positive control).
    None,
    /// Signed with a key that is not in the JWKS (same `kid`).
    BadSignature,
    /// `iss` differs from the discovered issuer.
    WrongIssuer,
    /// `aud` is another client.
    WrongAudience,
    /// `nonce` is not the one sent in the authorization request.
    WrongNonce,
    /// `exp` ten minutes in the past (beyond any clock-skew leeway).
    Expired,
    /// Signed with the second key under its own `kid`, which the JWKS lists
    /// only after [`FakeUpstream::publish_second_key`] (key rotation, E5).
    SecondKey,
    /// The token endpoint answers 503 (an overloaded upstream).
    TokenEndpointDown,
    /// A valid ID token without `auth_time` (OIDC Core §3.1.2.1 `max_age`).
    NoAuthTime,
    /// HS256, keyed with the client secret the adapter sent with HTTP Basic
    /// (what an upstream advertising HS256 may do, OIDC Core §3.1.3.7 item 8).
    Hs256WithClientSecret,
}

/// What the fake upstream saw in one authorization request.
#[derive(Debug, Clone, Default)]
pub struct AuthorizeRecord {
    pub params: HashMap<String, String>,
}

impl AuthorizeRecord {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// What the fake upstream saw in one token request.
#[derive(Debug, Clone, Default)]
pub struct TokenRecord {
    pub params: HashMap<String, String>,
    pub authorization: Option<String>,
}

struct PendingCode {
    nonce: Option<String>,
    code_challenge: Option<String>,
    redirect_uri: String,
}

struct Inner {
    issuer: String,
    client_id: String,
    kid: String,
    key: EncodingKey,
    other_key: EncodingKey,
    jwks: Value,
    second_kid: String,
    second_jwk: Value,
    second_published: Mutex<bool>,
    jwks_fetches: Mutex<u32>,
    tamper: Mutex<Tamper>,
    wrong_state: Mutex<Option<String>>,
    codes: Mutex<HashMap<String, PendingCode>>,
    authorize_log: Mutex<Vec<AuthorizeRecord>>,
    token_log: Mutex<Vec<TokenRecord>>,
    pkce_failures: Mutex<u32>,
    userinfo_sub: Mutex<Option<String>>,
    userinfo_calls: Mutex<u32>,
    /// `id_token_signing_alg_values_supported` in discovery.
    advertised_algs: Mutex<Vec<String>>,
    /// RFC 9207: (advertised in discovery, `iss` sent in the callback).
    iss_parameter: Mutex<(bool, bool)>,
}

/// A running fake upstream. Stops when dropped.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub issuer: String,
    inner: Arc<Inner>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// An RS256 key pair made at run time: the signing key and its public JWK.
struct GeneratedKey {
    encoding: EncodingKey,
    n: String,
    e: String,
}

fn generate_rsa() -> anyhow::Result<GeneratedKey> {
    // Key generation is not what this fake tests: reuse the adapter's
    // (aws-lc-rs RSA-2048, PKCS#8 PEM), made fresh at run time.
    let pem = adapter::keys::generate_pem("RS256").map_err(|e| anyhow!("RSA keygen: {e}"))?;
    let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).context("loading generated key")?;
    let jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).context("public key")?;
    let AlgorithmParameters::RSA(rsa) = jwk.algorithm else {
        return Err(anyhow!("generated key is not RSA"));
    };
    Ok(GeneratedKey {
        encoding,
        n: rsa.n,
        e: rsa.e,
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl FakeUpstream {
    /// Starts on `127.0.0.1:0`; the adapter must use `client_id` (any secret
    /// is accepted).
    pub async fn start(client_id: &str, tamper: Tamper) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, client_id, tamper).await
    }

    /// As [`FakeUpstream::start`], on a listener the test bound itself (an
    /// upstream that comes up late on a port the adapter already knows).
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        client_id: &str,
        tamper: Tamper,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let issuer = format!("http://{addr}");
        let good = generate_rsa()?;
        let other = generate_rsa()?;
        let kid = format!("fake-{}", random_string(6));
        let jwks = json!({ "keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": good.n, "e": good.e,
        }]});
        let second_kid = format!("fake-second-{}", random_string(6));
        let second_jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": second_kid, "n": other.n, "e": other.e,
        });
        let inner = Arc::new(Inner {
            issuer: issuer.clone(),
            client_id: client_id.to_string(),
            kid,
            key: good.encoding,
            other_key: other.encoding,
            jwks,
            second_kid,
            second_jwk,
            second_published: Mutex::new(false),
            jwks_fetches: Mutex::new(0),
            tamper: Mutex::new(tamper),
            wrong_state: Mutex::new(None),
            codes: Mutex::new(HashMap::new()),
            authorize_log: Mutex::new(Vec::new()),
            token_log: Mutex::new(Vec::new()),
            pkce_failures: Mutex::new(0),
            userinfo_sub: Mutex::new(None),
            userinfo_calls: Mutex::new(0),
            advertised_algs: Mutex::new(vec!["RS256".into()]),
            iss_parameter: Mutex::new((false, false)),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks_handler))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo).post(userinfo))
            .with_state(inner.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(FakeUpstream {
            addr,
            issuer,
            inner,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Changes how the next ID tokens are forged.
    pub fn set_tamper(&self, tamper: Tamper) {
        if let Ok(mut t) = self.inner.tamper.lock() {
            *t = tamper;
        }
    }

    /// Adds the second key to the JWKS (the upstream rotated its keys).
    pub fn publish_second_key(&self) {
        if let Ok(mut p) = self.inner.second_published.lock() {
            *p = true;
        }
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> u32 {
        self.inner
            .jwks_fetches
            .lock()
            .map(|n| *n)
            .unwrap_or_default()
    }

    /// Makes `/userinfo` answer with this `sub` instead of the ID token's.
    pub fn set_userinfo_sub(&self, sub: Option<&str>) {
        if let Ok(mut s) = self.inner.userinfo_sub.lock() {
            *s = sub.map(str::to_string);
        }
    }

    /// How many times `/userinfo` was called.
    pub fn userinfo_calls(&self) -> u32 {
        self.inner
            .userinfo_calls
            .lock()
            .map(|c| *c)
            .unwrap_or_default()
    }

    /// Makes `/authorize` answer with this `state` instead of the one sent.
    pub fn set_wrong_state(&self, state: Option<&str>) {
        if let Ok(mut s) = self.inner.wrong_state.lock() {
            *s = state.map(str::to_string);
        }
    }

    /// Every authorization request received so far.
    pub fn authorize_requests(&self) -> Vec<AuthorizeRecord> {
        self.inner
            .authorize_log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Every token request received so far.
    pub fn token_requests(&self) -> Vec<TokenRecord> {
        self.inner
            .token_log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Shuts the server down and waits until its socket is closed (for
    /// "upstream went away" tests).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .context("the fake upstream did not stop within 10 s")?
                .context("the fake upstream task failed")?;
        }
        Ok(())
    }

    /// What discovery advertises as `id_token_signing_alg_values_supported`
    /// (tokens are still signed RS256).
    pub fn set_advertised_algs(&self, algs: &[&str]) {
        if let Ok(mut a) = self.inner.advertised_algs.lock() {
            *a = algs.iter().map(|s| s.to_string()).collect();
        }
    }

    /// RFC 9207: whether discovery advertises
    /// `authorization_response_iss_parameter_supported`, and whether the
    /// callback carries `iss` (both off by default).
    pub fn set_iss_parameter(&self, advertised: bool, sent: bool) {
        if let Ok(mut p) = self.inner.iss_parameter.lock() {
            *p = (advertised, sent);
        }
    }

    /// Token requests whose PKCE verifier did not match the challenge.
    pub fn pkce_failures(&self) -> u32 {
        self.inner.pkce_failures.lock().map(|n| *n).unwrap_or(0)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn discovery(State(s): State<Arc<Inner>>) -> Json<Value> {
    let i = &s.issuer;
    let algs = s
        .advertised_algs
        .lock()
        .map(|a| a.clone())
        .unwrap_or_default();
    let (iss_advertised, _) = s.iss_parameter.lock().map(|p| *p).unwrap_or_default();
    let mut doc = json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "scopes_supported": ["openid", "profile", "email"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "name", "preferred_username", "email"],
    });
    if iss_advertised {
        doc["authorization_response_iss_parameter_supported"] = json!(true);
    }
    Json(doc)
}

async fn jwks_handler(State(s): State<Arc<Inner>>) -> Json<Value> {
    if let Ok(mut n) = s.jwks_fetches.lock() {
        *n += 1;
    }
    let mut jwks = s.jwks.clone();
    if s.second_published.lock().map(|p| *p).unwrap_or(false) {
        if let Some(keys) = jwks["keys"].as_array_mut() {
            keys.push(s.second_jwk.clone());
        }
    }
    Json(jwks)
}

fn bad_request(msg: &str) -> Response {
    (StatusCode::BAD_REQUEST, msg.to_string()).into_response()
}

async fn authorize(
    State(s): State<Arc<Inner>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Ok(mut log) = s.authorize_log.lock() {
        log.push(AuthorizeRecord {
            params: params.clone(),
        });
    }
    let Some(redirect_uri) = params.get("redirect_uri") else {
        return bad_request("missing redirect_uri");
    };
    if params.get("client_id") != Some(&s.client_id) {
        return bad_request("unknown client_id");
    }
    let Ok(mut target) = Url::parse(redirect_uri) else {
        return bad_request("bad redirect_uri");
    };
    let code = random_string(24);
    if let Ok(mut codes) = s.codes.lock() {
        codes.insert(
            code.clone(),
            PendingCode {
                nonce: params.get("nonce").cloned(),
                code_challenge: params.get("code_challenge").cloned(),
                redirect_uri: redirect_uri.clone(),
            },
        );
    }
    let state = s
        .wrong_state
        .lock()
        .ok()
        .and_then(|w| w.clone())
        .or_else(|| params.get("state").cloned());
    {
        let mut q = target.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(state) = state {
            q.append_pair("state", &state);
        }
        if s.iss_parameter.lock().is_ok_and(|p| p.1) {
            q.append_pair("iss", &s.issuer);
        }
    }
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

fn token_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "error": error })),
    )
        .into_response()
}

async fn token(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Ok(mut log) = s.token_log.lock() {
        log.push(TokenRecord {
            params: params.clone(),
            authorization,
        });
    }
    if params.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return token_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let pending = params
        .get("code")
        .and_then(|c| s.codes.lock().ok().and_then(|mut codes| codes.remove(c)));
    let Some(pending) = pending else {
        return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    if params.get("redirect_uri") != Some(&pending.redirect_uri) {
        return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    if let Some(challenge) = &pending.code_challenge {
        let ok = params
            .get("code_verifier")
            .is_some_and(|v| &s256(v) == challenge);
        if !ok {
            if let Ok(mut n) = s.pkce_failures.lock() {
                *n += 1;
            }
            return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
    }
    let tamper = s.tamper.lock().map(|t| *t).unwrap_or(Tamper::None);
    let now = now();
    let mut claims = json!({
        "iss": s.issuer,
        "sub": "fakeuser",
        "aud": s.client_id,
        "iat": now,
        "exp": now + 300,
        "auth_time": now,
        "name": "Fake User",
        "preferred_username": "fakeuser",
        "email": "fakeuser@example.org",
        "email_verified": true,
        "groups": ["fakers"],
    });
    if let Some(nonce) = &pending.nonce {
        claims["nonce"] = json!(nonce);
    }
    let mut key = &s.key;
    let mut kid = s.kid.clone();
    let mut alg = Algorithm::RS256;
    let hmac_key;
    match tamper {
        Tamper::None => {}
        Tamper::BadSignature => key = &s.other_key,
        Tamper::SecondKey => {
            key = &s.other_key;
            kid = s.second_kid.clone();
        }
        Tamper::TokenEndpointDown => {
            return (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
        }
        Tamper::WrongIssuer => claims["iss"] = json!(format!("{}/someone-else", s.issuer)),
        Tamper::WrongAudience => claims["aud"] = json!("some-other-client"),
        Tamper::WrongNonce => claims["nonce"] = json!(random_string(16)),
        Tamper::Hs256WithClientSecret => {
            use base64::Engine;
            let secret = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.split_once(':').map(|(_, p)| p.to_string()))
                .unwrap_or_default();
            hmac_key = EncodingKey::from_secret(secret.as_bytes());
            key = &hmac_key;
            alg = Algorithm::HS256;
        }
        Tamper::NoAuthTime => {
            if let Some(c) = claims.as_object_mut() {
                c.remove("auth_time");
            }
        }
        Tamper::Expired => {
            claims["iat"] = json!(now - 1200);
            claims["auth_time"] = json!(now - 1200);
            claims["exp"] = json!(now - 600);
        }
    }
    let mut header = Header::new(alg);
    header.kid = Some(kid);
    header.typ = Some("JWT".into());
    let id_token = match jsonwebtoken::encode(&header, &claims, key) {
        Ok(t) => t,
        Err(_) => return token_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    };
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "access_token": random_string(24),
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "openid profile email",
            "id_token": id_token,
        })),
    )
        .into_response()
}

/// Userinfo carries one claim the ID token does not: `department`.
async fn userinfo(State(inner): State<Arc<Inner>>) -> Json<Value> {
    if let Ok(mut c) = inner.userinfo_calls.lock() {
        *c += 1;
    }
    let sub = inner
        .userinfo_sub
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .unwrap_or_else(|| "fakeuser".to_string());
    Json(json!({
        "sub": sub,
        "name": "Fake User",
        "preferred_username": "fakeuser",
        "email": "fakeuser@example.org",
        "department": "fake-dept",
    }))
}
