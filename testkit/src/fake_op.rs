//! The one fake OpenID Provider of the workspace's tests.
//!
//! It plays an upstream of the adapter (e2e and adapter tests) and the
//! adapter itself for the test-app's tests. It serves discovery, a JWKS, an
//! `/authorize` that redirects straight back to the `redirect_uri` with a
//! code (no login form), a `/token` endpoint, `/userinfo` and, when
//! [`Options::end_session`] is on, a `/logout` end-session endpoint that
//! records the request and redirects to its `post_logout_redirect_uri` with
//! its `state` (OpenID RP-Initiated Logout 1.0 §2, §3). A test that drives
//! the authorization request itself can instead register a code with
//! [`FakeOp::issue_code`].
//!
//! Token lifecycle, each behind an option: refresh tokens with rotation
//! ([`Options::refresh_tokens`], RFC 6749 §6, RFC 9700 §4.14.2), RFC 7662
//! introspection at `/introspect` ([`Options::introspection`]) and RFC 7009
//! revocation at `/revoke` ([`Options::revocation`]). The provider's clock
//! can be moved forward ([`FakeOp::set_clock_offset`]) so that tests pair it
//! with the relying party's injected clock instead of sleeping.
//!
//! `/token` returns an ID token and an RFC 9068 `at+jwt` access token, both
//! JWS signed with keys generated at run time with aws-lc-rs (RSA-2048 and
//! EC P-256; none is committed). A [`Tamper`] mode, global
//! ([`FakeOp::set_tamper`]) or per code ([`FakeOp::issue_code`]), forges one
//! defect for the negative tests. Everything the provider sees is recorded:
//! authorization and token requests, and how often discovery, the JWKS,
//! `/token` and `/userinfo` were hit.
//!
//! This module uses no workspace crate (no adapter types), so the test-app
//! can use it as an independent provider.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use url::Url;

use crate::rp::{at_hash, random_string, s256};

/// How the tokens returned by `/token` are forged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Valid tokens (positive control).
    None,
    /// ID token signed with a key that is not in the JWKS, under the
    /// published `kid` (OIDC Core §3.1.3.7 step 6).
    BadSignature,
    /// ID token `iss` differs from the discovered issuer (step 2).
    WrongIssuer,
    /// ID token `aud` is another client (step 3).
    WrongAudience,
    /// ID token `nonce` is not the one of the authorization request (step 11).
    WrongNonce,
    /// ID token `exp` ten minutes in the past (step 9).
    Expired,
    /// ID token `at_hash` of another access token (OIDC Core §3.1.3.8).
    WrongAtHash,
    /// ID token "signed" with HS256 keyed by the client secret: an
    /// algorithm the relying party must not accept (OIDC Core §10.1).
    IdHs256WithClientSecret,
    /// Both tokens signed with the second key under its own `kid`, which
    /// the JWKS lists only after [`FakeOp::publish_second_key`] (key
    /// rotation, OIDC Core §10.1.1).
    SecondKey,
    /// ID token signed with a key under a `kid` the JWKS never lists.
    UnpublishedKey,
    /// The token endpoint answers 503 (an overloaded provider).
    TokenEndpointDown,
    /// Access token with `typ: JWT` instead of `at+jwt` (RFC 9068 §2.1).
    AtWrongTyp,
    /// Access token "signed" with HS256 keyed by the client secret.
    AtHs256WithClientSecret,
    /// Access token expired ten minutes ago.
    AtExpired,
    /// Access token from another issuer.
    AtWrongIssuer,
    /// Access token signed with a key not in the JWKS, under the published `kid`.
    AtBadSignature,
    /// Access token about another subject than the ID token.
    AtOtherSubject,
    /// A valid access token signed with the published EC P-256 key (ES256).
    AtEs256,
    /// A valid ID token without `auth_time` (OIDC Core §3.1.2.1, `max_age`).
    NoAuthTime,
    /// Access token signed with a key under a `kid` the JWKS never lists.
    AtUnpublishedKey,
}

/// How the fake provider is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The only client the provider knows.
    pub client_id: String,
    /// When set, `/token` requires this secret (`client_secret_basic` or
    /// `client_secret_post`); the HS256 attacks use it as their key. When
    /// unset, any client authentication is accepted.
    pub client_secret: Option<String>,
    /// Tamper mode for codes that do not carry their own.
    pub tamper: Tamper,
    /// The user's claims, copied into both tokens and `/userinfo`.
    pub identity: Value,
    /// Advertise and send RFC 9207 `iss` in authorization responses.
    pub advertise_iss: bool,
    /// Advertise an `end_session_endpoint` (OIDC RP-Initiated Logout §2.1).
    pub end_session: bool,
    /// Serve discovery with this `issuer` instead of the real one.
    pub discovery_issuer: Option<String>,
    /// Issue a refresh token with every code grant and accept the
    /// `refresh_token` grant, rotating the refresh token on each use
    /// (RFC 6749 §6, RFC 9700 §4.14.2).
    pub refresh_tokens: bool,
    /// Advertise and serve `introspection_endpoint` at `/introspect` (RFC 7662).
    pub introspection: bool,
    /// Advertise and serve `revocation_endpoint` at `/revoke` (RFC 7009).
    pub revocation: bool,
    /// Accept the `client_credentials` grant (RFC 6749 §4.4): an access
    /// token whose `sub` is the client (RFC 9068 §2.2), nothing else.
    pub client_credentials: bool,
}

impl Options {
    pub fn new(client_id: &str) -> Self {
        Options {
            client_id: client_id.to_string(),
            client_secret: None,
            tamper: Tamper::None,
            identity: default_identity(),
            advertise_iss: false,
            end_session: false,
            discovery_issuer: None,
            refresh_tokens: false,
            introspection: false,
            revocation: false,
            client_credentials: false,
        }
    }
}

/// The default user: `fakeuser`.
pub fn default_identity() -> Value {
    json!({
        "sub": "fakeuser",
        "name": "Fake User",
        "preferred_username": "fakeuser",
        "email": "fakeuser@example.org",
        "email_verified": true,
        "groups": ["fakers"],
    })
}

/// What the provider saw in one authorization request.
#[derive(Debug, Clone, Default)]
pub struct AuthorizeRecord {
    pub params: HashMap<String, String>,
}

impl AuthorizeRecord {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// What the provider saw in one token request.
#[derive(Debug, Clone, Default)]
pub struct TokenRecord {
    /// The form body.
    pub params: HashMap<String, String>,
    /// The raw `Authorization` header.
    pub authorization: Option<String>,
    /// `client_secret_basic` credentials, form-urldecoded (RFC 6749 §2.3.1).
    pub basic: Option<(String, String)>,
    /// The refresh token this request was answered with, if any.
    pub issued_refresh_token: Option<String>,
}

/// What the provider saw in one request to its end-session endpoint.
#[derive(Debug, Clone, Default)]
pub struct EndSessionRecord {
    pub params: HashMap<String, String>,
}

impl EndSessionRecord {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// What the provider saw in one introspection request (RFC 7662 §2.1).
#[derive(Debug, Clone, Default)]
pub struct IntrospectionRecord {
    /// The form body.
    pub params: HashMap<String, String>,
    /// `client_secret_basic` credentials, form-urldecoded.
    pub basic: Option<(String, String)>,
    /// The `active` the provider answered (None: the request was refused).
    pub active: Option<bool>,
}

/// An RSA key pair and its `kid`.
pub struct RsaKey {
    pub kid: String,
    pair: RsaKeyPair,
}

impl RsaKey {
    fn generate(kid: &str) -> anyhow::Result<Self> {
        Ok(RsaKey {
            kid: kid.to_owned(),
            pair: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|e| anyhow!("RSA key generation: {e}"))?,
        })
    }

    fn jwk(&self) -> Value {
        let public = self.pair.public_key();
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        })
    }

    fn sign(&self, typ: &str, claims: &Value) -> anyhow::Result<String> {
        let input = signing_input(
            &json!({"alg": "RS256", "typ": typ, "kid": self.kid}),
            claims,
        )?;
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|e| anyhow!("RS256 signing: {e}"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// An EC P-256 key pair and its `kid`.
pub struct EcKey {
    pub kid: String,
    pair: EcdsaKeyPair,
}

impl EcKey {
    fn generate(kid: &str) -> anyhow::Result<Self> {
        Ok(EcKey {
            kid: kid.to_owned(),
            pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .map_err(|e| anyhow!("EC key generation: {e}"))?,
        })
    }

    fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref(); // 0x04 || x || y
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn sign(&self, typ: &str, claims: &Value) -> anyhow::Result<String> {
        let input = signing_input(
            &json!({"alg": "ES256", "typ": typ, "kid": self.kid}),
            claims,
        )?;
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|e| anyhow!("ES256 signing: {e}"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
}

fn signing_input(header: &Value, claims: &Value) -> anyhow::Result<String> {
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
    ))
}

/// A JWS with `alg: HS256` keyed by `secret` (RFC 7518 §3.2).
fn sign_hs256(secret: &str, typ: &str, claims: &Value) -> anyhow::Result<String> {
    let input = signing_input(&json!({"alg": "HS256", "typ": typ}), claims)?;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())))
}

/// The keys of every fake provider of one test process (RSA generation is
/// slow in debug builds, so it happens once).
struct Keys {
    /// Published; signs by default.
    signing: RsaKey,
    /// Same `kid` as `signing`, another key: a forged signature.
    rogue: RsaKey,
    /// Published only after [`FakeOp::publish_second_key`].
    second: RsaKey,
    /// Never published.
    unpublished: RsaKey,
    /// Published EC key.
    ec: EcKey,
}

fn keys() -> anyhow::Result<&'static Keys> {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    if let Some(k) = KEYS.get() {
        return Ok(k);
    }
    let kid = format!("fake-{}", random_string(6));
    let made = Keys {
        signing: RsaKey::generate(&kid)?,
        rogue: RsaKey::generate(&kid)?,
        second: RsaKey::generate(&format!("fake-second-{}", random_string(6)))?,
        unpublished: RsaKey::generate(&format!("never-published-{}", random_string(6)))?,
        ec: EcKey::generate(&format!("fake-ec-{}", random_string(6)))?,
    };
    Ok(KEYS.get_or_init(|| made))
}

struct PendingCode {
    client_id: String,
    nonce: Option<String>,
    code_challenge: Option<String>,
    redirect_uri: String,
    tamper: Option<Tamper>,
}

struct Inner {
    issuer: String,
    options: Options,
    keys: &'static Keys,
    second_published: Mutex<bool>,
    tamper: Mutex<Tamper>,
    wrong_state: Mutex<Option<String>>,
    userinfo_sub: Mutex<Option<String>>,
    /// Replaces [`Options::identity`] from now on ([`FakeOp::set_identity`]).
    identity: Mutex<Option<Value>>,
    codes: Mutex<HashMap<String, PendingCode>>,
    authorize_log: Mutex<Vec<AuthorizeRecord>>,
    token_log: Mutex<Vec<TokenRecord>>,
    issued: Mutex<Option<(String, String)>>,
    discovery_hits: AtomicU32,
    jwks_fetches: AtomicU32,
    pkce_failures: AtomicU32,
    userinfo_calls: AtomicU32,
    /// Overrides discovery's `id_token_signing_alg_values_supported`.
    advertised_algs: Mutex<Option<Vec<String>>>,
    /// RFC 9207 override: (advertised in discovery, `iss` sent in the callback).
    iss_parameter: Mutex<Option<(bool, bool)>>,
    /// Seconds added to the provider's clock ([`FakeOp::set_clock_offset`]).
    clock_offset: AtomicI64,
    /// Live refresh tokens → the client they were issued to.
    refresh_tokens: Mutex<HashMap<String, String>>,
    /// Every access token issued → its `exp` (for introspection).
    access_tokens: Mutex<HashMap<String, i64>>,
    /// Access and refresh tokens revoked (RFC 7009) or by the test.
    revoked: Mutex<HashSet<String>>,
    introspection_log: Mutex<Vec<IntrospectionRecord>>,
    revocation_log: Mutex<Vec<HashMap<String, String>>>,
    end_session_log: Mutex<Vec<EndSessionRecord>>,
}

/// A running fake provider. Stops when dropped.
pub struct FakeOp {
    pub addr: SocketAddr,
    pub issuer: String,
    inner: Arc<Inner>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The name the e2e tests know it by: the adapter's upstream.
pub type FakeUpstream = FakeOp;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Inner {
    /// The provider's time: the real time plus [`FakeOp::set_clock_offset`].
    fn now(&self) -> i64 {
        now() + self.clock_offset.load(Ordering::SeqCst)
    }

    /// The user's claims: [`FakeOp::set_identity`]'s, else the options'.
    fn identity(&self) -> Value {
        lock(&self.identity)
            .clone()
            .unwrap_or_else(|| self.options.identity.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeOp {
    /// Starts on `127.0.0.1:0` for `client_id`, accepting any client
    /// secret, with a global tamper mode.
    pub async fn start(client_id: &str, tamper: Tamper) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, client_id, tamper).await
    }

    /// As [`FakeOp::start`], on a listener the test bound itself (a
    /// provider that comes up late on a port the client already knows).
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        client_id: &str,
        tamper: Tamper,
    ) -> anyhow::Result<Self> {
        let mut options = Options::new(client_id);
        options.tamper = tamper;
        Self::start_on_with(listener, options).await
    }

    /// Starts on `127.0.0.1:0` with every knob.
    pub async fn start_with(options: Options) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on_with(listener, options).await
    }

    /// Starts on `listener` with every knob.
    pub async fn start_on_with(
        listener: tokio::net::TcpListener,
        options: Options,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let issuer = format!("http://{addr}");
        let inner = Arc::new(Inner {
            issuer: issuer.clone(),
            keys: keys()?,
            second_published: Mutex::new(false),
            tamper: Mutex::new(options.tamper),
            wrong_state: Mutex::new(None),
            userinfo_sub: Mutex::new(None),
            identity: Mutex::new(None),
            codes: Mutex::new(HashMap::new()),
            authorize_log: Mutex::new(Vec::new()),
            token_log: Mutex::new(Vec::new()),
            issued: Mutex::new(None),
            discovery_hits: AtomicU32::new(0),
            jwks_fetches: AtomicU32::new(0),
            pkce_failures: AtomicU32::new(0),
            userinfo_calls: AtomicU32::new(0),
            advertised_algs: Mutex::new(None),
            iss_parameter: Mutex::new(None),
            clock_offset: AtomicI64::new(0),
            refresh_tokens: Mutex::new(HashMap::new()),
            access_tokens: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashSet::new()),
            introspection_log: Mutex::new(Vec::new()),
            revocation_log: Mutex::new(Vec::new()),
            end_session_log: Mutex::new(Vec::new()),
            options,
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks_handler))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo).post(userinfo))
            .route("/introspect", post(introspect))
            .route("/revoke", post(revoke))
            .route("/logout", get(end_session))
            .with_state(inner.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(FakeOp {
            addr,
            issuer,
            inner,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `{issuer}/authorize`.
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/authorize", self.issuer)
    }

    /// Changes how the tokens of codes without their own mode are forged.
    pub fn set_tamper(&self, tamper: Tamper) {
        *lock(&self.inner.tamper) = tamper;
    }

    /// Plays the authorization endpoint for a request the test intercepted:
    /// registers a code for the request in `authorize_url` (its client,
    /// redirect URI, nonce and PKCE challenge) with its own tamper mode.
    pub fn issue_code(&self, authorize_url: &Url, tamper: Tamper) -> String {
        let q: HashMap<String, String> = authorize_url.query_pairs().into_owned().collect();
        let code = format!("code-{}", random_string(16));
        lock(&self.inner.codes).insert(
            code.clone(),
            PendingCode {
                client_id: q.get("client_id").cloned().unwrap_or_default(),
                nonce: q.get("nonce").cloned(),
                code_challenge: q.get("code_challenge").cloned(),
                redirect_uri: q.get("redirect_uri").cloned().unwrap_or_default(),
                tamper: Some(tamper),
            },
        );
        code
    }

    /// Adds the second key to the JWKS (the provider rotated its keys).
    pub fn publish_second_key(&self) {
        *lock(&self.inner.second_published) = true;
    }

    /// The user's claims from now on, in tokens and `/userinfo` (the user
    /// changed upstream: new groups, a new name).
    pub fn set_identity(&self, identity: Value) {
        *lock(&self.inner.identity) = Some(identity);
    }

    /// Makes `/userinfo` answer with this `sub` instead of the user's.
    pub fn set_userinfo_sub(&self, sub: Option<&str>) {
        *lock(&self.inner.userinfo_sub) = sub.map(str::to_string);
    }

    /// What discovery advertises as `id_token_signing_alg_values_supported`
    /// (tokens are still signed as before).
    pub fn set_advertised_algs(&self, algs: &[&str]) {
        *lock(&self.inner.advertised_algs) = Some(algs.iter().map(|a| a.to_string()).collect());
    }

    /// RFC 9207: whether discovery advertises
    /// `authorization_response_iss_parameter_supported`, and whether the
    /// callback carries `iss`, independently.
    pub fn set_iss_parameter(&self, advertised: bool, sent: bool) {
        *lock(&self.inner.iss_parameter) = Some((advertised, sent));
    }

    /// Makes `/authorize` answer with this `state` instead of the one sent.
    pub fn set_wrong_state(&self, state: Option<&str>) {
        *lock(&self.inner.wrong_state) = state.map(str::to_string);
    }

    /// Moves the provider's clock `secs` seconds ahead of the real time: the
    /// `iat`/`exp` of the tokens it issues from now on, and the expiry its
    /// introspection endpoint checks, follow (pair it with the relying
    /// party's injected clock instead of sleeping).
    pub fn set_clock_offset(&self, secs: i64) {
        self.inner.clock_offset.store(secs, Ordering::SeqCst);
    }

    /// Revokes a token as if its owner had called `/revoke` (RFC 7009 §2):
    /// introspection answers `active: false`, a refresh token stops working.
    pub fn revoke(&self, token: &str) {
        lock(&self.inner.revoked).insert(token.to_string());
        lock(&self.inner.refresh_tokens).remove(token);
    }

    /// Forgets every live refresh token (a provider that ended the grant):
    /// the next `refresh_token` grant gets `invalid_grant` (RFC 6749 §5.2).
    pub fn revoke_all_refresh_tokens(&self) {
        let mut live = lock(&self.inner.refresh_tokens);
        lock(&self.inner.revoked).extend(live.keys().cloned());
        live.clear();
    }

    /// The refresh token of the last token response that carried one.
    pub fn last_refresh_token(&self) -> Option<String> {
        lock(&self.inner.token_log)
            .iter()
            .rev()
            .find_map(|r| r.issued_refresh_token.clone())
    }

    /// Every introspection request received so far.
    pub fn introspection_requests(&self) -> Vec<IntrospectionRecord> {
        lock(&self.inner.introspection_log).clone()
    }

    /// The form bodies of every revocation request received so far.
    pub fn revocation_requests(&self) -> Vec<HashMap<String, String>> {
        lock(&self.inner.revocation_log).clone()
    }

    /// Every request received at the end-session endpoint so far.
    pub fn end_session_requests(&self) -> Vec<EndSessionRecord> {
        lock(&self.inner.end_session_log).clone()
    }

    /// How many times discovery was fetched.
    pub fn discovery_hits(&self) -> u32 {
        self.inner.discovery_hits.load(Ordering::SeqCst)
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> u32 {
        self.inner.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times `/userinfo` was called.
    pub fn userinfo_calls(&self) -> u32 {
        self.inner.userinfo_calls.load(Ordering::SeqCst)
    }

    /// Token requests whose PKCE verifier did not match the challenge.
    pub fn pkce_failures(&self) -> u32 {
        self.inner.pkce_failures.load(Ordering::SeqCst)
    }

    /// Every authorization request received at `/authorize` so far.
    pub fn authorize_requests(&self) -> Vec<AuthorizeRecord> {
        lock(&self.inner.authorize_log).clone()
    }

    /// Every token request received so far.
    pub fn token_requests(&self) -> Vec<TokenRecord> {
        lock(&self.inner.token_log).clone()
    }

    /// How many token requests were received.
    pub fn token_hits(&self) -> usize {
        lock(&self.inner.token_log).len()
    }

    /// The ID token and access token of the last successful token response.
    pub fn issued(&self) -> Option<(String, String)> {
        lock(&self.inner.issued).clone()
    }

    /// Shuts the server down and waits until its socket is closed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .context("the fake provider did not stop within 10 s")?
                .context("the fake provider task failed")?;
        }
        Ok(())
    }
}

impl Drop for FakeOp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn discovery(State(s): State<Arc<Inner>>) -> Json<Value> {
    s.discovery_hits.fetch_add(1, Ordering::SeqCst);
    let i = &s.issuer;
    let mut doc = json!({
        "issuer": s.options.discovery_issuer.clone().unwrap_or_else(|| i.clone()),
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": lock(&s.advertised_algs)
            .clone()
            .unwrap_or_else(|| vec!["RS256".into(), "ES256".into()]),
        "scopes_supported": ["openid", "profile", "email"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "name", "preferred_username", "email"],
    });
    let (iss_advertised, _) =
        lock(&s.iss_parameter).unwrap_or((s.options.advertise_iss, s.options.advertise_iss));
    if iss_advertised {
        doc["authorization_response_iss_parameter_supported"] = json!(true);
    }
    if s.options.end_session {
        doc["end_session_endpoint"] = json!(format!("{i}/logout"));
    }
    let mut grants = vec!["authorization_code"];
    if s.options.refresh_tokens {
        grants.push("refresh_token");
    }
    if s.options.client_credentials {
        grants.push("client_credentials");
    }
    doc["grant_types_supported"] = json!(grants);
    if s.options.introspection {
        doc["introspection_endpoint"] = json!(format!("{i}/introspect"));
    }
    if s.options.revocation {
        doc["revocation_endpoint"] = json!(format!("{i}/revoke"));
    }
    Json(doc)
}

async fn jwks_handler(State(s): State<Arc<Inner>>) -> Json<Value> {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let mut keys = vec![s.keys.signing.jwk(), s.keys.ec.jwk()];
    if *lock(&s.second_published) {
        keys.push(s.keys.second.jwk());
    }
    Json(json!({ "keys": keys }))
}

fn bad_request(msg: &str) -> Response {
    (StatusCode::BAD_REQUEST, msg.to_string()).into_response()
}

async fn authorize(
    State(s): State<Arc<Inner>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    lock(&s.authorize_log).push(AuthorizeRecord {
        params: params.clone(),
    });
    let Some(redirect_uri) = params.get("redirect_uri") else {
        return bad_request("missing redirect_uri");
    };
    if params.get("client_id") != Some(&s.options.client_id) {
        return bad_request("unknown client_id");
    }
    let Ok(mut target) = Url::parse(redirect_uri) else {
        return bad_request("bad redirect_uri");
    };
    let code = random_string(24);
    lock(&s.codes).insert(
        code.clone(),
        PendingCode {
            client_id: s.options.client_id.clone(),
            nonce: params.get("nonce").cloned(),
            code_challenge: params.get("code_challenge").cloned(),
            redirect_uri: redirect_uri.clone(),
            tamper: None,
        },
    );
    let state = lock(&s.wrong_state)
        .clone()
        .or_else(|| params.get("state").cloned());
    {
        let mut q = target.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(state) = state {
            q.append_pair("state", &state);
        }
        let (_, iss_sent) =
            lock(&s.iss_parameter).unwrap_or((s.options.advertise_iss, s.options.advertise_iss));
        if iss_sent {
            q.append_pair("iss", &s.issuer);
        }
    }
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// `client_secret_basic` credentials: base64, then form-urldecode each half
/// (RFC 6749 §2.3.1).
fn basic_credentials(authorization: Option<&str>) -> Option<(String, String)> {
    let raw = STANDARD
        .decode(authorization?.strip_prefix("Basic ")?)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((decode(id), decode(secret)))
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
    let basic = basic_credentials(authorization.as_deref());
    lock(&s.token_log).push(TokenRecord {
        params: params.clone(),
        authorization,
        basic: basic.clone(),
        issued_refresh_token: None,
    });
    let (client_id, secret) = match (&basic, params.get("client_id")) {
        (Some((id, secret)), _) => (id.clone(), Some(secret.clone())),
        (None, Some(id)) => (id.clone(), params.get("client_secret").cloned()),
        (None, None) => (String::new(), None),
    };
    if let Some(expected) = &s.options.client_secret {
        if client_id != s.options.client_id || secret.as_ref() != Some(expected) {
            return token_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "bad credentials",
            );
        }
    }
    match params.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {}
        Some("refresh_token") if s.options.refresh_tokens => {
            return refresh_grant(&s, &params);
        }
        Some("client_credentials") if s.options.client_credentials => {
            return client_credentials_grant(&s);
        }
        _ => return token_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", ""),
    }
    let pending = params.get("code").and_then(|c| lock(&s.codes).remove(c));
    let Some(pending) = pending else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown or used code",
        );
    };
    if (!client_id.is_empty() && client_id != pending.client_id)
        || params.get("redirect_uri") != Some(&pending.redirect_uri)
    {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "client or redirect_uri mismatch",
        );
    }
    if let Some(challenge) = &pending.code_challenge {
        let ok = params
            .get("code_verifier")
            .is_some_and(|v| &s256(v) == challenge);
        if !ok {
            s.pkce_failures.fetch_add(1, Ordering::SeqCst);
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "PKCE verification failed",
            );
        }
    }
    let tamper = pending.tamper.unwrap_or_else(|| *lock(&s.tamper));
    if tamper == Tamper::TokenEndpointDown {
        return (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
    }
    token_response(&s, &pending, tamper)
}

/// The successful token response for `pending` (RFC 6749 §5.1), with a
/// fresh refresh token when [`Options::refresh_tokens`] is on.
fn token_response(s: &Inner, pending: &PendingCode, tamper: Tamper) -> Response {
    match forge_tokens(s, pending, tamper) {
        Ok((id_token, access_token)) => {
            *lock(&s.issued) = Some((id_token.clone(), access_token.clone()));
            let mut body = json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "openid profile email",
                "id_token": id_token,
            });
            if s.options.refresh_tokens {
                let refresh_token = format!("rt-{}", random_string(24));
                lock(&s.refresh_tokens).insert(refresh_token.clone(), pending.client_id.clone());
                if let Some(last) = lock(&s.token_log).last_mut() {
                    last.issued_refresh_token = Some(refresh_token.clone());
                }
                body["refresh_token"] = json!(refresh_token);
            }
            (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store")],
                Json(body),
            )
                .into_response()
        }
        Err(e) => token_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &e.to_string(),
        ),
    }
}

/// RFC 6749 §6: the refresh token is single use (rotation, RFC 9700
/// §4.14.2); the new ID token carries no `nonce` (OIDC Core §12.2).
fn refresh_grant(s: &Inner, params: &HashMap<String, String>) -> Response {
    // A provider that is down consumes nothing.
    let tamper = *lock(&s.tamper);
    if tamper == Tamper::TokenEndpointDown {
        return (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
    }
    let Some(client_id) = params
        .get("refresh_token")
        .and_then(|rt| lock(&s.refresh_tokens).remove(rt))
    else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown, used or revoked refresh token",
        );
    };
    let pending = PendingCode {
        client_id,
        nonce: None,
        code_challenge: None,
        redirect_uri: String::new(),
        tamper: None,
    };
    token_response(s, &pending, tamper)
}

/// RFC 6749 §4.4.3: an access token only (no refresh token, no ID token).
fn client_credentials_grant(s: &Inner) -> Response {
    let now = s.now();
    let client_id = &s.options.client_id;
    let claims = json!({
        "iss": s.issuer, "sub": client_id, "aud": client_id, "client_id": client_id,
        "iat": now, "exp": now + 300, "jti": random_string(16),
    });
    match s.keys.signing.sign("at+jwt", &claims) {
        Ok(access_token) => {
            lock(&s.access_tokens).insert(access_token.clone(), now + 300);
            (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({
                    "access_token": access_token,
                    "token_type": "Bearer",
                    "expires_in": 300,
                })),
            )
                .into_response()
        }
        Err(e) => token_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &e.to_string(),
        ),
    }
}

/// RFC 7662 §2: client authentication required; `active` is true for an
/// access token this provider issued, not revoked and not expired (by its
/// possibly offset clock); an inactive token gets `{"active": false}` only.
async fn introspect(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    let basic = basic_credentials(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let mut record = IntrospectionRecord {
        params: params.clone(),
        basic: basic.clone(),
        active: None,
    };
    let authenticated = match (&basic, &s.options.client_secret) {
        (Some((id, secret)), Some(expected)) => id == &s.options.client_id && secret == expected,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if !authenticated {
        lock(&s.introspection_log).push(record);
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "bad credentials",
        );
    }
    let token = params.get("token").cloned().unwrap_or_default();
    let exp = lock(&s.access_tokens).get(&token).copied();
    let active = exp.is_some_and(|exp| exp > s.now()) && !lock(&s.revoked).contains(&token);
    record.active = Some(active);
    lock(&s.introspection_log).push(record);
    let body = match (active, crate::rp::decode_unverified(&token)) {
        (true, Ok((_, claims))) => json!({
            "active": true,
            "client_id": claims["client_id"],
            "sub": claims["sub"],
            "scope": claims["scope"],
            "exp": claims["exp"],
            "iat": claims["iat"],
            "iss": claims["iss"],
            "token_type": "Bearer",
        }),
        _ => json!({ "active": false }),
    };
    // RFC 7662 §2.2: members without a value are left out, not null.
    let body = match body {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    };
    Json(body).into_response()
}

/// RFC 7009 §2: revokes the token (any kind); unknown tokens also get 200.
async fn revoke(
    State(s): State<Arc<Inner>>,
    Form(params): Form<HashMap<String, String>>,
) -> StatusCode {
    if let Some(token) = params.get("token") {
        lock(&s.revoked).insert(token.clone());
        lock(&s.refresh_tokens).remove(token);
    }
    lock(&s.revocation_log).push(params);
    StatusCode::OK
}

/// OpenID RP-Initiated Logout 1.0 §2–§3: records the request, then
/// redirects to `post_logout_redirect_uri` with `state` when given, else
/// answers with a plain page.
async fn end_session(
    State(s): State<Arc<Inner>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    lock(&s.end_session_log).push(EndSessionRecord {
        params: params.clone(),
    });
    let Some(target) = params.get("post_logout_redirect_uri") else {
        return (StatusCode::OK, "logged out").into_response();
    };
    let Ok(mut target) = Url::parse(target) else {
        return bad_request("bad post_logout_redirect_uri");
    };
    if let Some(state) = params.get("state") {
        target.query_pairs_mut().append_pair("state", state);
    }
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

/// The ID token and access token for one code, with `tamper` applied.
fn forge_tokens(s: &Inner, pending: &PendingCode, t: Tamper) -> anyhow::Result<(String, String)> {
    let keys = s.keys;
    let now = s.now();
    let client_id = &s.options.client_id;
    let identity: Map<String, Value> = s.identity().as_object().cloned().unwrap_or_default();
    let hs256_key = s.options.client_secret.as_deref().unwrap_or("fake-secret");
    let signing = if t == Tamper::SecondKey {
        &keys.second
    } else {
        &keys.signing
    };

    // Access token (RFC 9068 §2.2).
    let mut at = Value::Object(identity.clone());
    at["iss"] = json!(if t == Tamper::AtWrongIssuer {
        "http://evil.example".to_owned()
    } else {
        s.issuer.clone()
    });
    at["aud"] = json!(client_id);
    at["client_id"] = json!(client_id);
    at["scope"] = json!("openid profile email");
    at["iat"] = json!(now);
    at["exp"] = json!(if t == Tamper::AtExpired {
        now - 600
    } else {
        now + 300
    });
    at["jti"] = json!(random_string(16));
    if t == Tamper::AtOtherSubject {
        at["sub"] = json!("someone-else");
    }
    let typ = if t == Tamper::AtWrongTyp {
        "JWT"
    } else {
        "at+jwt"
    };
    let access_token = match t {
        Tamper::AtHs256WithClientSecret => sign_hs256(hs256_key, "at+jwt", &at)?,
        Tamper::AtBadSignature => keys.rogue.sign(typ, &at)?,
        Tamper::AtEs256 => keys.ec.sign(typ, &at)?,
        Tamper::AtUnpublishedKey => keys.unpublished.sign(typ, &at)?,
        _ => signing.sign(typ, &at)?,
    };
    lock(&s.access_tokens).insert(access_token.clone(), at["exp"].as_i64().unwrap_or(now));

    // ID token (OIDC Core §2).
    let mut id = Value::Object(identity);
    id["iss"] = json!(if t == Tamper::WrongIssuer {
        format!("{}/someone-else", s.issuer)
    } else {
        s.issuer.clone()
    });
    id["aud"] = json!([if t == Tamper::WrongAudience {
        "some-other-client"
    } else {
        client_id.as_str()
    }]);
    id["iat"] = json!(now);
    id["auth_time"] = json!(now - 5);
    id["exp"] = json!(now + 300);
    if t == Tamper::Expired {
        id["iat"] = json!(now - 1200);
        id["auth_time"] = json!(now - 1200);
        id["exp"] = json!(now - 600);
    }
    if t == Tamper::NoAuthTime {
        if let Some(claims) = id.as_object_mut() {
            claims.remove("auth_time");
        }
    }
    if t == Tamper::WrongNonce {
        id["nonce"] = json!(random_string(16));
    } else if let Some(nonce) = &pending.nonce {
        id["nonce"] = json!(nonce);
    }
    id["at_hash"] = json!(if t == Tamper::WrongAtHash {
        at_hash("some other access token")
    } else {
        at_hash(&access_token)
    });
    let id_token = match t {
        Tamper::BadSignature => keys.rogue.sign("JWT", &id)?,
        Tamper::UnpublishedKey => keys.unpublished.sign("JWT", &id)?,
        Tamper::IdHs256WithClientSecret => sign_hs256(hs256_key, "JWT", &id)?,
        _ => signing.sign("JWT", &id)?,
    };
    Ok((id_token, access_token))
}

/// The user's claims plus `department`, a claim the ID token lacks.
async fn userinfo(State(s): State<Arc<Inner>>) -> Json<Value> {
    s.userinfo_calls.fetch_add(1, Ordering::SeqCst);
    let mut claims = s.identity();
    if let Some(sub) = lock(&s.userinfo_sub).clone() {
        claims["sub"] = json!(sub);
    }
    claims["department"] = json!("fake-dept");
    Json(claims)
}
