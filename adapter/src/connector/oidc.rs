//! The OIDC upstream connector: the adapter as a relying party of an
//! upstream OpenID Provider, on the `openidconnect` crate.
//!
//! Discovery is lazy and cached (an upstream that is down at start-up does
//! not stop the adapter; the next login retries). Every login uses a fresh
//! `state`, `nonce` and PKCE S256 (RFC 9700 §2.1.1, RFC 7636 §4); the ID
//! token is validated per OIDC Core §3.1.3.7 by `openidconnect` (signature
//! with an explicit algorithm allow-list, `iss`, `aud`, `exp`, `nonce`),
//! its signature checked by aws-lc-rs through the key type
//! [`AwsLcJwk`](super::jwk::AwsLcJwk), which the JWKS is parsed into once
//! per discovery; plus `at_hash` (§3.1.3.8) and, when `max_age` was asked for,
//! `auth_time` (§3.1.3.7 item 13) here. The callback's `iss` is checked per
//! RFC 9207 §2.4. An unknown `kid` triggers one throttled re-discovery (OIDC
//! Core §10.1.1: signing keys rotate). The outbound HTTP client follows no
//! redirects (an upstream cannot point it elsewhere), has timeouts and caps
//! response sizes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClientAuthMethod, CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreIdToken,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenResponse,
};
use openidconnect::{
    AccessToken, AccessTokenHash, AdditionalProviderMetadata, AuthorizationCode,
    ClaimsVerificationError, Client, ClientId, ClientSecret, CsrfToken, EmptyAdditionalClaims,
    IssuerUrl, JsonWebKey, Nonce, NonceVerifier, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, ProviderMetadata, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    SignatureVerificationError, StandardErrorResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Mutex, RwLock};

use super::jwk::AwsLcJwk;
use super::{
    begin_response, callback_error, pending_login, BeginRequest, BeginResponse, CallbackConnector,
    ConnectorError, Identity, UpstreamTokens,
};
use crate::clock::SharedClock;
use crate::config::{OnRefresh, UpstreamConfig, UserinfoPolicy};
use crate::keys::EncryptionKey;

/// Cap on any upstream response body.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How long discovered metadata (and its JWKS) is trusted.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// At most one forced re-discovery per this interval (a forged `kid` must
/// not make us hammer the upstream).
const REFRESH_THROTTLE: Duration = Duration::from_secs(30);

/// Errors of the reqwest bridge used by `openidconnect`.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// A 5xx answer: the upstream is in trouble, not the request
    /// (`temporarily_unavailable`, RFC 6749 §4.1.2.1).
    #[error("upstream answered {0}")]
    ServerError(reqwest::StatusCode),
}

/// Total time an outbound request may take unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// The outbound client: no redirects (SSRF), connect and total timeouts.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    http_client_with(DEFAULT_TIMEOUT)
}

/// [`http_client`] with the total timeout `timeout` (an upstream's
/// `timeout_seconds`); connecting takes at most 5 s of it.
pub fn http_client_with(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .build()
}

/// Runs an `openidconnect` request on reqwest 0.13 (`openidconnect` 4.1
/// ships a bridge for reqwest 0.12 only).
pub async fn bridge(
    client: reqwest::Client,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let response = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await?;
    if response.status().is_server_error() {
        return Err(HttpError::ServerError(response.status()));
    }
    read_capped(response).await
}

async fn read_capped(
    mut response: reqwest::Response,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let mut out = openidconnect::HttpResponse::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Leeway on `auth_time` against `max_age` (clock skew between us and the
/// upstream).
const AUTH_TIME_LEEWAY: i64 = 30;

/// The algorithms the adapter ever accepts on an upstream ID token: public
/// key signatures only, never `none` (OIDC Core §2: ID tokens MUST be
/// signed) nor HMAC (OIDC Core §3.1.3.7 item 8 keys it with the client
/// secret, which would let whoever holds that secret forge ID tokens).
pub const ACCEPTED_ALGS: [CoreJwsSigningAlgorithm; 4] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// The algorithms accepted on this upstream's ID tokens: those it
/// advertises (`id_token_signing_alg_values_supported`, OIDC Discovery §3)
/// that are also in [`ACCEPTED_ALGS`].
pub fn allowed_algs(advertised: &[CoreJwsSigningAlgorithm]) -> Vec<CoreJwsSigningAlgorithm> {
    ACCEPTED_ALGS
        .iter()
        .filter(|a| advertised.contains(a))
        .cloned()
        .collect()
}

/// Discovery fields `openidconnect` does not model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraProviderMetadata {
    /// RFC 9207 §3: the upstream puts `iss` in every authorization response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response_iss_parameter_supported: Option<bool>,
    /// OIDC RP-Initiated Logout 1.0 §2.1: where to end the user's session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session_endpoint: Option<String>,
    /// RFC 8414 §2 / RFC 7009 §2: where to revoke tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
}

impl AdditionalProviderMetadata for ExtraProviderMetadata {}

/// An upstream's discovery document. Its JWKS (fetched from `jwks_uri` by
/// the discovery) is parsed into [`AwsLcJwk`]s, so the aws-lc-rs keys are
/// made once per discovery, not per login.
pub type UpstreamMetadata = ProviderMetadata<
    ExtraProviderMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    AwsLcJwk,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// `CoreClient` with [`AwsLcJwk`] keys: its `id_token_verifier` is built as
/// `CoreClient`'s (client id, the secret for a confidential client, the
/// discovered issuer and JWKS), and verifies signatures with aws-lc-rs.
type UpstreamClient = Client<
    EmptyAdditionalClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    AwsLcJwk,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    CoreTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// RFC 9207 §2.4: an `iss` in the callback must be the upstream's; when the
/// upstream advertises `authorization_response_iss_parameter_supported`, a
/// callback without `iss` is refused too (it may come from another server,
/// the mix-up attack of RFC 9700 §4.4).
pub fn check_callback_iss(
    params: &HashMap<String, String>,
    issuer: &str,
    iss_advertised: bool,
) -> Result<(), ConnectorError> {
    match params.get("iss") {
        Some(iss) if iss == issuer => Ok(()),
        Some(_) => Err(ConnectorError::Invalid(
            "iss in the callback is not the upstream's".into(),
        )),
        None if iss_advertised => Err(ConnectorError::Invalid(
            "the upstream advertises RFC 9207 but the callback has no iss".into(),
        )),
        None => Ok(()),
    }
}

/// OIDC Core §3.1.3.8 (and §3.3.2.11): `at_hash`, when the ID token has
/// one, is the left half of the hash of the access token, with the hash of
/// the ID token's `alg` (SHA-256 for RS256, PS256, ES256; SHA-512 for
/// EdDSA over Ed25519). `openidconnect` picks the hash from `alg` and `key`
/// (an [`AwsLcJwk`] hashes as the `CoreJsonWebKey` it wraps).
pub fn check_at_hash<K: JsonWebKey<SigningAlgorithm = CoreJwsSigningAlgorithm>>(
    at_hash: Option<&AccessTokenHash>,
    access_token: &AccessToken,
    alg: &CoreJwsSigningAlgorithm,
    key: &K,
) -> Result<(), ConnectorError> {
    let Some(at_hash) = at_hash else {
        return Ok(());
    };
    let expected = AccessTokenHash::from_token(access_token, alg, key)
        .map_err(|e| ConnectorError::Invalid(format!("id token at_hash: {e}")))?;
    if crate::secret::ct_eq(at_hash.as_str(), expected.as_str()) {
        Ok(())
    } else {
        Err(ConnectorError::Invalid("id token at_hash mismatch".into()))
    }
}

/// OIDC Core §3.1.2.1 and §3.1.3.7 item 13: when `max_age` was sent, the ID
/// token must carry `auth_time`, and the user must have authenticated at
/// most `max_age` seconds (plus [`AUTH_TIME_LEEWAY`]) before the request.
pub fn check_auth_time(
    auth_time: Option<i64>,
    max_age: Option<i64>,
    requested_at: i64,
) -> Result<(), ConnectorError> {
    let Some(max_age) = max_age else {
        return Ok(());
    };
    let auth_time = auth_time.ok_or_else(|| {
        ConnectorError::Invalid("max_age was sent but the id token has no auth_time".into())
    })?;
    if auth_time < requested_at - max_age - AUTH_TIME_LEEWAY {
        return Err(ConnectorError::Invalid(format!(
            "the upstream authenticated the user {}s before the request; max_age was {max_age}",
            requested_at - auth_time
        )));
    }
    Ok(())
}

struct Cached {
    metadata: UpstreamMetadata,
    fetched: Instant,
}

/// What `begin` persists for `complete`.
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    nonce: String,
    pkce_verifier: String,
    /// The `max_age` sent upstream, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_age: Option<i64>,
    /// When `begin` ran (the injected clock).
    #[serde(default)]
    requested_at: i64,
}

/// What an ID token proved.
struct Verified {
    subject: String,
    auth_time: Option<i64>,
}

/// Why an ID token was not accepted.
enum Rejected {
    /// No JWKS key matched: the upstream may have rotated its keys.
    NoMatchingKey,
    Other(ConnectorError),
}

pub struct OidcConnector {
    id: String,
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    scopes: Vec<String>,
    userinfo: UserinfoPolicy,
    /// The upstream claims the claim rules read (`None`: any may matter);
    /// with [`UserinfoPolicy::Auto`], an ID token lacking one of them
    /// sends us to userinfo.
    claims_read: Option<BTreeSet<String>>,
    /// With `on_refresh = "refresh_upstream"`: the oldest claims an adapter
    /// refresh keeps, in seconds.
    claims_max_age: Option<i64>,
    clock: SharedClock,
    http: reqwest::Client,
    cache: RwLock<Option<Cached>>,
    /// Held while a discovery runs.
    discovering: Mutex<()>,
    last_forced: Mutex<Option<Instant>>,
    /// Set by the first successful discovery, never cleared.
    discovered: AtomicBool,
    /// Seals the upstream refresh token at rest; without it the refresh
    /// token is not kept at all.
    sealing: Option<Arc<EncryptionKey>>,
    metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for OidcConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConnector")
            .field("id", &self.id)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl OidcConnector {
    /// `client_secret` is already resolved (inline or from the environment).
    pub fn new(
        config: &UpstreamConfig,
        client_secret: Option<String>,
        clock: SharedClock,
    ) -> Result<Self, ConnectorError> {
        IssuerUrl::new(config.issuer.clone())
            .map_err(|e| ConnectorError::Config(format!("upstreams[{}].issuer: {e}", config.id)))?;
        Ok(OidcConnector {
            id: config.id.clone(),
            issuer: config.issuer.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            scopes: config.scopes.clone(),
            userinfo: config.userinfo,
            claims_read: Some(BTreeSet::new()),
            claims_max_age: (config.on_refresh == OnRefresh::RefreshUpstream)
                .then_some(config.max_claim_age_seconds),
            clock,
            http: http_client_with(Duration::from_secs(config.timeout_seconds))
                .map_err(|e| ConnectorError::Config(e.to_string()))?,
            cache: RwLock::new(None),
            discovering: Mutex::new(()),
            last_forced: Mutex::new(None),
            discovered: AtomicBool::new(false),
            sealing: None,
            metrics: crate::metrics::Metrics::default(),
        })
    }

    /// Keeps the upstream refresh token, sealed with `key`, in the identity
    /// (to revoke it at logout, RFC 7009).
    pub fn set_sealing_key(&mut self, key: Arc<EncryptionKey>) {
        self.sealing = Some(key);
    }

    /// Records this upstream's call latencies and errors in `metrics`.
    pub fn set_metrics(&mut self, metrics: crate::metrics::Metrics) {
        self.metrics = metrics;
    }

    /// The upstream claims the claim rules read, `None` when any may
    /// matter ([`crate::mapping::upstream_claims_read`]).
    pub fn set_claims_read(&mut self, names: Option<BTreeSet<String>>) {
        self.claims_read = names;
    }

    /// Whether userinfo is asked after an ID token with `claims` (OIDC
    /// Core §5.3: some upstreams put little more than `sub` into it).
    fn wants_userinfo(&self, claims: &Map<String, Value>) -> bool {
        match self.userinfo {
            UserinfoPolicy::Always => true,
            UserinfoPolicy::Never => false,
            UserinfoPolicy::Auto => self
                .claims_read
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| !claims.contains_key(n))),
        }
    }

    /// Associated data of this upstream's sealed refresh tokens.
    fn sealing_context(&self) -> String {
        format!("upstream-refresh-token:{}", self.id)
    }

    async fn cached(&self) -> Option<UpstreamMetadata> {
        self.cache
            .read()
            .await
            .as_ref()
            .filter(|c| c.fetched.elapsed() < DISCOVERY_TTL)
            .map(|c| c.metadata.clone())
    }

    async fn metadata(&self) -> Result<UpstreamMetadata, ConnectorError> {
        if let Some(m) = self.cached().await {
            return Ok(m);
        }
        // Single flight: concurrent logins (and the warm-up) wait for one
        // discovery instead of each fetching.
        let _flight = self.discovering.lock().await;
        if let Some(m) = self.cached().await {
            return Ok(m);
        }
        self.discover().await
    }

    /// Fetches metadata and JWKS. `openidconnect` checks that the metadata's
    /// `issuer` equals the configured one (OIDC Discovery §4.3).
    async fn discover(&self) -> Result<UpstreamMetadata, ConnectorError> {
        let issuer = IssuerUrl::new(self.issuer.clone())
            .map_err(|e| ConnectorError::Config(e.to_string()))?;
        let http = |r| bridge(self.http.clone(), r);
        let metadata = self
            .metrics
            .upstream(
                &self.id,
                "discovery",
                UpstreamMetadata::discover_async(issuer, &http),
            )
            .await
            .map_err(|e| match e {
                openidconnect::DiscoveryError::Validation(v) => {
                    ConnectorError::Invalid(format!("discovery: {v}"))
                }
                other => ConnectorError::Unavailable(format!(
                    "discovery of {}: {}",
                    self.issuer,
                    error_chain(&other)
                )),
            })?;
        *self.cache.write().await = Some(Cached {
            metadata: metadata.clone(),
            fetched: Instant::now(),
        });
        self.discovered.store(true, Ordering::Release);
        Ok(metadata)
    }

    /// Re-discovers at most once per [`REFRESH_THROTTLE`]. True if it did.
    async fn forced_refresh(&self) -> bool {
        let mut last = self.last_forced.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_THROTTLE) {
            return false;
        }
        *last = Some(Instant::now());
        self.discover().await.is_ok()
    }

    /// The `openidconnect` client; `callback_url` for the authorization
    /// code flow, `None` for a refresh (RFC 6749 §6 has no redirect URI).
    fn client(
        &self,
        metadata: UpstreamMetadata,
        callback_url: Option<&str>,
    ) -> Result<UpstreamClient, ConnectorError> {
        let client = UpstreamClient::from_provider_metadata(
            metadata,
            ClientId::new(self.client_id.clone()),
            self.client_secret.clone().map(ClientSecret::new),
        );
        let Some(callback_url) = callback_url else {
            return Ok(client);
        };
        let redirect = RedirectUrl::new(callback_url.to_string())
            .map_err(|e| ConnectorError::Config(format!("callback url: {e}")))?;
        Ok(client.set_redirect_uri(redirect))
    }

    /// The allow-list for this upstream; refuses an upstream that offers
    /// none of [`ACCEPTED_ALGS`].
    fn algs(
        &self,
        metadata: &UpstreamMetadata,
    ) -> Result<Vec<CoreJwsSigningAlgorithm>, ConnectorError> {
        let algs = allowed_algs(metadata.id_token_signing_alg_values_supported());
        if algs.is_empty() {
            return Err(ConnectorError::Config(format!(
                "upstream {} signs ID tokens with none of RS256, PS256, ES256, EdDSA",
                self.id
            )));
        }
        Ok(algs)
    }

    /// Verifies the ID token (OIDC Core §3.1.3.7) with the algorithm
    /// allow-list, then its `at_hash`.
    fn verify(
        &self,
        metadata: &UpstreamMetadata,
        client: &UpstreamClient,
        id_token: &CoreIdToken,
        nonce: impl NonceVerifier,
        access_token: &AccessToken,
    ) -> Result<Verified, Rejected> {
        let algs = self.algs(metadata).map_err(Rejected::Other)?;
        let verifier = client.id_token_verifier().set_allowed_algs(algs);
        let claims = id_token.claims(&verifier, nonce).map_err(|e| match e {
            ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            ) => Rejected::NoMatchingKey,
            e => Rejected::Other(ConnectorError::Invalid(format!("id token: {e}"))),
        })?;
        if let Some(at_hash) = claims.access_token_hash() {
            // The signature verified, so alg and key are the ones it used.
            let invalid = |e: SignatureVerificationError| {
                Rejected::Other(ConnectorError::Invalid(format!("id token: {e}")))
            };
            let alg = id_token.signing_alg().map_err(invalid)?;
            let key = id_token.signing_key(&verifier).map_err(invalid)?;
            check_at_hash(Some(at_hash), access_token, alg, key).map_err(Rejected::Other)?;
        }
        Ok(Verified {
            subject: claims.subject().to_string(),
            auth_time: claims.auth_time().map(|t| t.timestamp()),
        })
    }

    /// [`Self::verify`]; when no key matches, the upstream may have
    /// rotated its keys (OIDC Core §10.1.1): re-discover once, throttled,
    /// and verify again.
    async fn verify_rotating<N: NonceVerifier + Copy>(
        &self,
        metadata: &mut UpstreamMetadata,
        id_token: &CoreIdToken,
        nonce: N,
        access_token: &AccessToken,
    ) -> Result<Verified, ConnectorError> {
        let no_key = || ConnectorError::Invalid("id token: no key of the upstream matches".into());
        let client = self.client(metadata.clone(), None)?;
        match self.verify(metadata, &client, id_token, nonce, access_token) {
            Ok(v) => Ok(v),
            Err(Rejected::NoMatchingKey) if self.forced_refresh().await => {
                *metadata = self.metadata().await?;
                let client = self.client(metadata.clone(), None)?;
                match self.verify(metadata, &client, id_token, nonce, access_token) {
                    Ok(v) => Ok(v),
                    Err(Rejected::NoMatchingKey) => Err(no_key()),
                    Err(Rejected::Other(e)) => Err(e),
                }
            }
            Err(Rejected::NoMatchingKey) => Err(no_key()),
            Err(Rejected::Other(e)) => Err(e),
        }
    }

    /// The upstream refresh token sealed for storage, when there is one and
    /// a key to seal it with.
    fn seal(&self, refresh_token: Option<&RefreshToken>) -> Result<Option<String>, ConnectorError> {
        match (refresh_token, &self.sealing) {
            (Some(rt), Some(key)) => key
                .seal_value(&self.sealing_context(), rt.secret())
                .map(Some)
                .map_err(|e| ConnectorError::Config(e.to_string())),
            _ => Ok(None),
        }
    }

    async fn userinfo(
        &self,
        metadata: &UpstreamMetadata,
        access_token: &str,
        subject: &str,
    ) -> Result<Map<String, Value>, ConnectorError> {
        let Some(endpoint) = metadata.userinfo_endpoint() else {
            return Ok(Map::new());
        };
        let response = self
            .http
            .get(endpoint.url().as_str())
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| ConnectorError::Unavailable(format!("userinfo: {e}")))?;
        if !response.status().is_success() {
            return Err(ConnectorError::Invalid(format!(
                "userinfo answered {}",
                response.status()
            )));
        }
        let body = read_capped(response)
            .await
            .map_err(|e| ConnectorError::Unavailable(format!("userinfo: {e}")))?;
        let claims: Map<String, Value> = serde_json::from_slice(body.body())
            .map_err(|e| ConnectorError::Invalid(format!("userinfo: {e}")))?;
        // OIDC Core §5.3.2: the userinfo `sub` must equal the ID token's.
        if claims.get("sub").and_then(Value::as_str) != Some(subject) {
            return Err(ConnectorError::Invalid(
                "userinfo sub differs from id token".into(),
            ));
        }
        Ok(claims)
    }
}

/// A failed token request (RFC 6749 §5.2). An `invalid_grant` answer means
/// the upstream no longer accepts the code or the refresh token: the user
/// is gone, or the grant was revoked.
fn token_error(
    e: RequestTokenError<HttpError, StandardErrorResponse<CoreErrorResponseType>>,
) -> ConnectorError {
    match e {
        RequestTokenError::Request(e) => {
            ConnectorError::Unavailable(format!("token endpoint: {}", error_chain(&e)))
        }
        RequestTokenError::ServerResponse(r)
            if *r.error() == CoreErrorResponseType::InvalidGrant =>
        {
            ConnectorError::Denied(format!("token endpoint: {}", r.error()))
        }
        RequestTokenError::ServerResponse(r) => {
            ConnectorError::Invalid(format!("token endpoint: {}", r.error()))
        }
        other => ConnectorError::Invalid(format!("token endpoint: {other}")),
    }
}

/// `e` and its sources, for the log: `openidconnect` says "Request
/// failed" and keeps why (timeout, size cap, redirect) in its source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The payload of a JWS whose signature has already been verified.
fn verified_payload(jwt: &str) -> Result<Map<String, Value>, ConnectorError> {
    let payload = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| ConnectorError::Invalid("id token is not a JWS".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| ConnectorError::Invalid(format!("id token payload: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ConnectorError::Invalid(format!("id token payload: {e}")))
}

#[async_trait]
impl CallbackConnector for OidcConnector {
    async fn begin(&self, req: &BeginRequest<'_>) -> Result<BeginResponse, ConnectorError> {
        let metadata = self.metadata().await?;
        // An upstream we could never verify is refused before the user
        // types a password there.
        self.algs(&metadata)?;
        let client = self.client(metadata, Some(req.callback_url))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = req.state.to_string();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state),
            Nonce::new_random,
        );
        for scope in self.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        // OIDC Core §3.1.2.1: what the relying party asked of us, asked of
        // the upstream in turn.
        if let Some(prompt) = req.prompt {
            request = request.add_extra_param("prompt", prompt.to_string());
        }
        if let Some(max_age) = req.max_age {
            request = request.add_extra_param("max_age", max_age.to_string());
        }
        if let Some(hint) = req.login_hint {
            request = request.add_extra_param("login_hint", hint.to_string());
        }
        let (url, _state, nonce) = request.set_pkce_challenge(challenge).url();
        let pending = PendingLogin {
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            max_age: req.max_age,
            requested_at: self.clock.now(),
        };
        begin_response(url.to_string(), &pending)
    }

    async fn complete(
        &self,
        callback_url: &str,
        params: &HashMap<String, String>,
        connector_state: &str,
    ) -> Result<Identity, ConnectorError> {
        let pending: PendingLogin = pending_login(connector_state)?;
        let mut metadata = self.metadata().await?;
        // RFC 9207 §2.4: error responses carry `iss` too, so check it first.
        check_callback_iss(
            params,
            &self.issuer,
            metadata
                .additional_metadata()
                .authorization_response_iss_parameter_supported
                == Some(true),
        )?;
        callback_error(params)?;
        let code = params
            .get("code")
            .ok_or_else(|| ConnectorError::Invalid("callback without code".into()))?;

        let client = self.client(metadata.clone(), Some(callback_url))?;
        let http = |r| bridge(self.http.clone(), r);
        let exchange = client
            .exchange_code(AuthorizationCode::new(code.clone()))
            .map_err(|e| ConnectorError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier));
        let token = self
            .metrics
            .upstream(&self.id, "token", exchange.request_async(&http))
            .await
            .map_err(token_error)?;
        let id_token = token
            .id_token()
            .ok_or_else(|| ConnectorError::Invalid("no id_token in the token response".into()))?;
        let nonce = Nonce::new(pending.nonce);
        let access_token = token.access_token();
        let verified = self
            .verify_rotating(&mut metadata, id_token, &nonce, access_token)
            .await?;
        check_auth_time(verified.auth_time, pending.max_age, pending.requested_at)?;

        let raw = id_token.to_string();
        let mut claims = verified_payload(&raw)?;
        if self.wants_userinfo(&claims) {
            let info = self
                .metrics
                .upstream(
                    &self.id,
                    "userinfo",
                    self.userinfo(&metadata, access_token.secret(), &verified.subject),
                )
                .await?;
            for (k, v) in info {
                claims.entry(k).or_insert(v);
            }
        }
        // Kept for logout: the ID token as `id_token_hint` (OIDC
        // RP-Initiated Logout 1.0 §2), the refresh token, sealed, for its
        // revocation (RFC 7009).
        let sealed_refresh_token = self.seal(token.refresh_token())?;
        // OIDC Core §2: how the user authenticated upstream travels on to
        // our own tokens.
        let amr = claims
            .get("amr")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let acr = claims.get("acr").and_then(Value::as_str).map(String::from);
        Ok(Identity {
            connector_id: self.id.clone(),
            subject: verified.subject,
            claims,
            auth_time: verified.auth_time,
            amr,
            acr,
            upstream: Some(UpstreamTokens {
                id_token: raw,
                sealed_refresh_token,
            }),
        })
    }

    async fn end_session_url(
        &self,
        upstream: &UpstreamTokens,
        post_logout_redirect_uri: &str,
        state: &str,
    ) -> Result<Option<String>, ConnectorError> {
        let metadata = self.metadata().await?;
        let Some(endpoint) = &metadata.additional_metadata().end_session_endpoint else {
            return Ok(None);
        };
        let mut url = url::Url::parse(endpoint)
            .map_err(|e| ConnectorError::Invalid(format!("end_session_endpoint: {e}")))?;
        // OIDC RP-Initiated Logout 1.0 §2.
        url.query_pairs_mut()
            .append_pair("id_token_hint", &upstream.id_token)
            .append_pair("client_id", &self.client_id)
            .append_pair("post_logout_redirect_uri", post_logout_redirect_uri)
            .append_pair("state", state);
        Ok(Some(url.to_string()))
    }

    async fn revoke_upstream(&self, upstream: &UpstreamTokens) -> Result<bool, ConnectorError> {
        let (Some(sealed), Some(key)) = (&upstream.sealed_refresh_token, &self.sealing) else {
            return Ok(false);
        };
        let metadata = self.metadata().await?;
        let Some(endpoint) = &metadata.additional_metadata().revocation_endpoint else {
            return Ok(false);
        };
        let refresh_token = key
            .open_value(&self.sealing_context(), sealed)
            .map_err(|e| ConnectorError::Config(e.to_string()))?;
        // RFC 7009 §2.1, with the client authentication of the token
        // endpoint (RFC 6749 §2.3.1: form-urlencoded, then Basic).
        let mut request = self.http.post(endpoint);
        let mut form = vec![
            ("token", refresh_token),
            ("token_type_hint", "refresh_token".to_string()),
        ];
        match &self.client_secret {
            Some(secret) => {
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                request = request.basic_auth(enc(&self.client_id), Some(enc(secret)));
            }
            None => form.push(("client_id", self.client_id.clone())),
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| ConnectorError::Unavailable(format!("revocation endpoint: {e}")))?;
        // RFC 7009 §2.2: 200 whether or not the token was still valid.
        if response.status().is_success() {
            Ok(true)
        } else {
            Err(ConnectorError::Invalid(format!(
                "revocation endpoint answered {}",
                response.status()
            )))
        }
    }

    /// Asks the upstream again with its refresh token (RFC 6749 §6) for
    /// fresh claims. A new ID token is verified like the first one, without
    /// a nonce, and must name the same subject (OIDC Core §12.2); without
    /// one, userinfo gives the claims. `Denied` when the upstream refuses
    /// the refresh token (`invalid_grant`: the user is gone or the grant
    /// revoked); `NotSupported` when no upstream refresh token was kept.
    async fn refresh(&self, identity: &Identity) -> Result<Identity, ConnectorError> {
        let upstream = identity
            .upstream
            .as_ref()
            .ok_or(ConnectorError::NotSupported)?;
        let (Some(sealed), Some(key)) = (&upstream.sealed_refresh_token, &self.sealing) else {
            return Err(ConnectorError::NotSupported);
        };
        let refresh_token = RefreshToken::new(
            key.open_value(&self.sealing_context(), sealed)
                .map_err(|e| ConnectorError::Config(e.to_string()))?,
        );
        let mut metadata = self.metadata().await?;
        let client = self.client(metadata.clone(), None)?;
        let http = |r| bridge(self.http.clone(), r);
        let request = client
            .exchange_refresh_token(&refresh_token)
            .map_err(|e| ConnectorError::Config(e.to_string()))?;
        let token = self
            .metrics
            .upstream(&self.id, "refresh", request.request_async(&http))
            .await
            .map_err(token_error)?;
        let access_token = token.access_token();
        let (mut claims, id_token, auth_time) = match token.id_token() {
            Some(id_token) => {
                let no_nonce = |_: Option<&Nonce>| Ok(());
                let verified = self
                    .verify_rotating(&mut metadata, id_token, no_nonce, access_token)
                    .await?;
                // OIDC Core §12.2: the same `sub` as the original ID token.
                if verified.subject != identity.subject {
                    return Err(ConnectorError::Invalid(
                        "the refreshed id token names another subject".into(),
                    ));
                }
                let raw = id_token.to_string();
                (verified_payload(&raw)?, raw, verified.auth_time)
            }
            None => (Map::new(), upstream.id_token.clone(), None),
        };
        let fetched_id_token = token.id_token().is_some();
        if !fetched_id_token || self.wants_userinfo(&claims) {
            let info = self
                .metrics
                .upstream(
                    &self.id,
                    "userinfo",
                    self.userinfo(&metadata, access_token.secret(), &identity.subject),
                )
                .await?;
            if !fetched_id_token && info.is_empty() {
                // Neither an ID token nor a userinfo endpoint: the upstream
                // accepted the refresh (the user is still there) but says
                // nothing new, so the claims of the login stay.
                claims = identity.claims.clone();
            }
            for (k, v) in info {
                claims.entry(k).or_insert(v);
            }
        }
        // RFC 6749 §6: the upstream may rotate its refresh token; if it
        // does not, the one we hold stays valid.
        let sealed_refresh_token = match self.seal(token.refresh_token())? {
            Some(rotated) => Some(rotated),
            None => upstream.sealed_refresh_token.clone(),
        };
        Ok(Identity {
            connector_id: self.id.clone(),
            subject: identity.subject.clone(),
            claims,
            // A refresh is no new authentication (OIDC Core §12.2).
            auth_time: auth_time.or(identity.auth_time),
            amr: identity.amr.clone(),
            acr: identity.acr.clone(),
            upstream: Some(UpstreamTokens {
                id_token,
                sealed_refresh_token,
            }),
        })
    }

    fn claims_max_age(&self) -> Option<i64> {
        self.claims_max_age
    }

    async fn warm_up(&self) {
        if let Err(e) = self.metadata().await {
            tracing::warn!(upstream = %self.id, error = %e, "upstream discovery failed; will retry at the next login");
        }
    }

    fn discovered(&self) -> bool {
        self.discovered.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openidconnect::core::CoreJsonWebKey;
    use serde_json::json;
    use sha2::{Digest, Sha256, Sha512};

    const TOKEN: &str = "an-access-token-from-the-upstream";

    fn key(v: Value) -> CoreJsonWebKey {
        serde_json::from_value(v).unwrap()
    }

    fn rsa() -> CoreJsonWebKey {
        key(
            json!({"kty": "RSA", "use": "sig", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"}),
        )
    }

    fn ec() -> CoreJsonWebKey {
        key(json!({"kty": "EC", "use": "sig", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}))
    }

    fn ed25519() -> CoreJsonWebKey {
        key(json!({"kty": "OKP", "use": "sig", "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}))
    }

    /// `at_hash` computed here with `sha2`, apart from the code under test.
    fn sha256_half(token: &str) -> AccessTokenHash {
        AccessTokenHash::new(URL_SAFE_NO_PAD.encode(&Sha256::digest(token.as_bytes())[..16]))
    }

    fn sha512_half(token: &str) -> AccessTokenHash {
        AccessTokenHash::new(URL_SAFE_NO_PAD.encode(&Sha512::digest(token.as_bytes())[..32]))
    }

    fn at(token: &str) -> AccessToken {
        AccessToken::new(token.into())
    }

    fn invalid(r: Result<(), ConnectorError>) -> String {
        match r {
            Err(ConnectorError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn at_hash_uses_sha256_for_rs256_ps256_es256() {
        use CoreJwsSigningAlgorithm::*;
        for (alg, key) in [
            (RsaSsaPkcs1V15Sha256, rsa()),
            (RsaSsaPssSha256, rsa()),
            (EcdsaP256Sha256, ec()),
        ] {
            let good = sha256_half(TOKEN);
            check_at_hash(Some(&good), &at(TOKEN), &alg, &key).unwrap();
            // Another token, or another hash, is refused.
            let m = invalid(check_at_hash(Some(&good), &at("other"), &alg, &key));
            assert_eq!(m, "id token at_hash mismatch", "{alg:?}");
            let m = invalid(check_at_hash(
                Some(&sha512_half(TOKEN)),
                &at(TOKEN),
                &alg,
                &key,
            ));
            assert_eq!(m, "id token at_hash mismatch", "{alg:?}");
        }
    }

    #[test]
    fn at_hash_uses_sha512_for_eddsa_ed25519() {
        let alg = CoreJwsSigningAlgorithm::EdDsa;
        check_at_hash(Some(&sha512_half(TOKEN)), &at(TOKEN), &alg, &ed25519()).unwrap();
        let m = invalid(check_at_hash(
            Some(&sha256_half(TOKEN)),
            &at(TOKEN),
            &alg,
            &ed25519(),
        ));
        assert_eq!(m, "id token at_hash mismatch");
    }

    #[test]
    fn at_hash_absent_is_accepted_and_a_mismatched_key_refused() {
        let alg = CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256;
        check_at_hash(None, &at(TOKEN), &alg, &rsa()).unwrap();
        let m = invalid(check_at_hash(
            Some(&sha256_half(TOKEN)),
            &at(TOKEN),
            &alg,
            &ec(),
        ));
        assert!(m.starts_with("id token at_hash: "), "{m}");
    }

    fn algs(names: &[&str]) -> Vec<CoreJwsSigningAlgorithm> {
        names
            .iter()
            .map(|n| serde_json::from_value(json!(n)).unwrap())
            .collect()
    }

    #[test]
    fn allow_list_intersects_the_advertised_algorithms() {
        assert_eq!(allowed_algs(&algs(&["HS256", "none"])), vec![]);
        assert_eq!(
            allowed_algs(&algs(&["none", "HS256", "RS256", "ES384", "RS512"])),
            algs(&["RS256"])
        );
        assert_eq!(
            allowed_algs(&algs(&["EdDSA", "HS512", "ES256", "PS256", "RS256"])),
            algs(&["RS256", "PS256", "ES256", "EdDSA"])
        );
        assert_eq!(allowed_algs(&algs(&["ES256"])), algs(&["ES256"]));
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rfc9207_iss_rule() {
        let up = "https://up.example";
        let with = params(&[("code", "c"), ("iss", up)]);
        let without = params(&[("code", "c")]);
        let other = params(&[("code", "c"), ("iss", "https://evil.example")]);
        check_callback_iss(&with, up, true).unwrap();
        check_callback_iss(&with, up, false).unwrap();
        check_callback_iss(&without, up, false).unwrap();
        assert_eq!(
            invalid(check_callback_iss(&without, up, true)),
            "the upstream advertises RFC 9207 but the callback has no iss"
        );
        for advertised in [true, false] {
            assert_eq!(
                invalid(check_callback_iss(&other, up, advertised)),
                "iss in the callback is not the upstream's"
            );
        }
    }

    #[test]
    fn auth_time_is_checked_against_max_age() {
        let t = 1_700_000_000;
        // No max_age: nothing to check.
        check_auth_time(None, None, t).unwrap();
        check_auth_time(Some(t - 100_000), None, t).unwrap();
        // max_age sent: auth_time required.
        assert_eq!(
            invalid(check_auth_time(None, Some(300), t)),
            "max_age was sent but the id token has no auth_time"
        );
        // Within max_age, and within the leeway.
        check_auth_time(Some(t - 300), Some(300), t).unwrap();
        check_auth_time(Some(t - 300 - AUTH_TIME_LEEWAY), Some(300), t).unwrap();
        check_auth_time(Some(t + 5), Some(0), t).unwrap();
        // Beyond it.
        let m = invalid(check_auth_time(
            Some(t - 301 - AUTH_TIME_LEEWAY),
            Some(300),
            t,
        ));
        assert!(m.contains("max_age was 300"), "{m}");
    }

    #[test]
    fn upstream_refresh_tokens_are_sealed_under_their_upstream() {
        let key = EncryptionKey::generate().unwrap();
        let sealed = key.seal_value("upstream-refresh-token:a", "rt-1").unwrap();
        assert!(sealed.starts_with("enc:v1:") && !sealed.contains("rt-1"));
        assert_eq!(
            key.open_value("upstream-refresh-token:a", &sealed).unwrap(),
            "rt-1"
        );
        // Bound to its context, its key, and its bytes.
        assert!(key.open_value("upstream-refresh-token:b", &sealed).is_err());
        let other = EncryptionKey::generate().unwrap();
        assert!(other
            .open_value("upstream-refresh-token:a", &sealed)
            .is_err());
        assert!(key.open_value("upstream-refresh-token:a", "rt-1").is_err());
        // The upstream tokens never show in Debug.
        let t = UpstreamTokens {
            id_token: "the-id-token".into(),
            sealed_refresh_token: Some(sealed),
        };
        assert!(!format!("{t:?}").contains("the-id-token"));
    }

    #[test]
    fn metadata_reads_the_rfc9207_flag() {
        let doc = |extra: Value| {
            let mut d = json!({
                "issuer": "https://up.example",
                "authorization_endpoint": "https://up.example/authorize",
                "jwks_uri": "https://up.example/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            });
            d.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<UpstreamMetadata>(d).unwrap()
        };
        let m = doc(json!({
            "end_session_endpoint": "https://up.example/logout",
            "revocation_endpoint": "https://up.example/revoke",
        }));
        let extra = m.additional_metadata();
        assert_eq!(
            extra.end_session_endpoint.as_deref(),
            Some("https://up.example/logout")
        );
        assert_eq!(
            extra.revocation_endpoint.as_deref(),
            Some("https://up.example/revoke")
        );
        let m = doc(json!({"authorization_response_iss_parameter_supported": true}));
        assert_eq!(
            m.additional_metadata()
                .authorization_response_iss_parameter_supported,
            Some(true)
        );
        let m = doc(json!({}));
        assert_eq!(
            m.additional_metadata()
                .authorization_response_iss_parameter_supported,
            None
        );
    }
}
