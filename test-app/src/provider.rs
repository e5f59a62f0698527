//! The OpenID Provider (the adapter) as this relying party sees it.
//!
//! - [`ProviderCache`]: discovery of `{issuer}/.well-known/openid-configuration`
//!   and its JWKS, done lazily at first need (the adapter may start after the
//!   test-app), cached for [`DISCOVERY_TTL`], retried on the next request after
//!   a failure, and re-fetched once when a token names an unknown `kid`
//!   (key rotation, OIDC Core §10.1.1).
//! - [`http_bridge`]: the async HTTP client `openidconnect` calls, over a
//!   reqwest 0.13 client that follows no redirects (SSRF), has timeouts and
//!   caps response sizes.
//! - [`oidc_client`]: an `openidconnect` [`CoreClient`] built from the cached
//!   metadata for one request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, ClientId, ClientSecret, DiscoveryError, EndSessionUrl,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IssuerUrl,
    ProviderMetadata, RedirectUrl,
};
use serde::{Deserialize, Serialize};

use crate::error::AppError;

/// How long discovered metadata and keys are reused before being fetched again.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(5 * 60);
/// Largest response body accepted from the provider.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Connect timeout for calls to the provider.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Total timeout for one call to the provider.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Discovery fields beyond OIDC Discovery 1.0 that this RP reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraMetadata {
    /// RP-Initiated Logout 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session_endpoint: Option<EndSessionUrl>,
    /// RFC 9207: the provider sends `iss` in authorization responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response_iss_parameter_supported: Option<bool>,
    /// RFC 8414 §2 / RFC 7662 §2: token introspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint: Option<url::Url>,
    /// RFC 8414 §2 / RFC 7009 §2: token revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<url::Url>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

/// Provider metadata with [`ExtraMetadata`].
pub type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The client type `CoreClient::from_provider_metadata(..).set_redirect_uri(..)` yields.
pub type OidcClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// One successful discovery: metadata, keys, and when it was fetched.
pub struct Provider {
    /// The validated metadata (its `issuer` equals the configured issuer), with the JWKS.
    pub metadata: Metadata,
    /// The same JWKS as `jsonwebtoken` keys, for the access token.
    pub jwks: jsonwebtoken::jwk::JwkSet,
    /// When this snapshot was fetched.
    pub fetched_at: Instant,
    generation: u64,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.metadata.issuer().as_str())
            .field("keys", &self.jwks.keys.len())
            .field("generation", &self.generation)
            .finish()
    }
}

impl Provider {
    /// The provider's RP-Initiated Logout endpoint, if it advertises one.
    pub fn end_session_endpoint(&self) -> Option<&EndSessionUrl> {
        self.metadata
            .additional_metadata()
            .end_session_endpoint
            .as_ref()
    }

    /// The provider's RFC 7662 introspection endpoint, if it advertises one.
    pub fn introspection_endpoint(&self) -> Option<&url::Url> {
        self.metadata
            .additional_metadata()
            .introspection_endpoint
            .as_ref()
    }

    /// Whether the provider promises `iss` in authorization responses (RFC 9207).
    pub fn sends_iss_in_responses(&self) -> bool {
        self.metadata
            .additional_metadata()
            .authorization_response_iss_parameter_supported
            .unwrap_or(false)
    }
}

/// Lazily discovered, cached provider metadata. Cheap to share behind an `Arc`.
pub struct ProviderCache {
    issuer: IssuerUrl,
    http: reqwest::Client,
    current: RwLock<Option<Arc<Provider>>>,
    fetch: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    ttl: Duration,
}

impl ProviderCache {
    /// A cache for `issuer`; nothing is fetched until [`ProviderCache::get`].
    pub fn new(issuer: IssuerUrl, http: reqwest::Client) -> Self {
        ProviderCache {
            issuer,
            http,
            current: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            ttl: DISCOVERY_TTL,
        }
    }

    /// The HTTP client used for the provider.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The last successful discovery, however old, without any network call.
    pub fn cached(&self) -> Option<Arc<Provider>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn fresh(&self) -> Option<Arc<Provider>> {
        self.cached().filter(|p| p.fetched_at.elapsed() < self.ttl)
    }

    /// Fresh metadata: the cached copy, or a new discovery. Concurrent callers
    /// share one fetch. A failure is not cached, so the next call retries.
    pub async fn get(&self) -> Result<Arc<Provider>, AppError> {
        if let Some(p) = self.fresh() {
            return Ok(p);
        }
        let _guard = self.fetch.lock().await;
        if let Some(p) = self.fresh() {
            return Ok(p);
        }
        self.discover().await
    }

    /// Re-discovers after `seen` turned out to lack a key, unless another task
    /// already replaced `seen` (then that newer snapshot is returned).
    pub async fn refresh(&self, seen: &Provider) -> Result<Arc<Provider>, AppError> {
        let _guard = self.fetch.lock().await;
        if let Some(p) = self.cached() {
            if p.generation != seen.generation {
                return Ok(p);
            }
        }
        self.discover().await
    }

    async fn discover(&self) -> Result<Arc<Provider>, AppError> {
        let http = self.http.clone();
        let client = move |req: HttpRequest| http_bridge(http.clone(), req);
        let metadata = Metadata::discover_async(self.issuer.clone(), &client)
            .await
            .map_err(|e| discovery_error(self.issuer.as_str(), e))?;
        let jwks_json = serde_json::to_value(metadata.jwks())
            .map_err(|e| AppError::Internal(format!("re-serialising the JWKS: {e}")))?;
        let jwks = crate::tokens::jwk_set_from_json(&jwks_json);
        let provider = Arc::new(Provider {
            metadata,
            jwks,
            fetched_at: Instant::now(),
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        });
        tracing::info!(
            issuer = self.issuer.as_str(),
            keys = provider.jwks.keys.len(),
            "discovered the OpenID Provider"
        );
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(provider.clone());
        Ok(provider)
    }
}

fn discovery_error(issuer: &str, e: DiscoveryError<HttpError>) -> AppError {
    match e {
        DiscoveryError::Request(HttpError::Transport(err)) => {
            tracing::warn!(issuer, error = %err, "provider discovery: provider unreachable");
            AppError::ProviderUnavailable(format!(
                "could not reach {issuer}: {}",
                transport_reason(&err)
            ))
        }
        DiscoveryError::Response(status, _, msg) if status.is_server_error() => {
            tracing::warn!(issuer, %status, "provider discovery: server error");
            AppError::ProviderUnavailable(format!("{issuer} answered {status}: {msg}"))
        }
        other => {
            let detail = error_chain(&other);
            tracing::warn!(issuer, error = %detail, "provider discovery failed");
            AppError::Provider(format!("discovery of {issuer} failed: {detail}"))
        }
    }
}

/// A short, secret-free reason for a transport failure.
pub fn transport_reason(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection refused or failed"
    } else {
        "the request failed"
    }
}

/// `err` and its sources, joined with ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Builds the reqwest client for provider calls: no redirects, timeouts.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("auth-adapter-test-app/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Errors of [`http_bridge`].
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, sending or reading failed.
    #[error("HTTP request failed")]
    Transport(#[source] reqwest::Error),
    /// The response body exceeded [`MAX_RESPONSE_BYTES`].
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
    /// The response could not be rebuilt as an `http::Response`.
    #[error("invalid HTTP response: {0}")]
    Invalid(String),
}

/// The HTTP client `openidconnect` uses: sends `request` with `client` and
/// returns the response with its body read (at most [`MAX_RESPONSE_BYTES`]).
pub async fn http_bridge(
    client: reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let mut response = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(HttpError::Transport)?;
    let status = response.status();
    let headers = response.headers().clone();
    let mut buf = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(HttpError::Transport)? {
        if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError::TooLarge(MAX_RESPONSE_BYTES));
        }
        buf.extend_from_slice(&chunk);
    }
    let mut out = openidconnect::http::Response::builder()
        .status(status)
        .body(buf)
        .map_err(|e| HttpError::Invalid(e.to_string()))?;
    *out.headers_mut() = headers;
    Ok(out)
}

/// The per-request `openidconnect` client: from cached metadata, with our
/// client id, secret (client_secret_basic) and redirect URI.
pub fn oidc_client(
    provider: &Provider,
    client_id: &ClientId,
    client_secret: Option<&ClientSecret>,
    redirect_uri: &RedirectUrl,
) -> OidcClient {
    CoreClient::from_provider_metadata(
        provider.metadata.clone(),
        client_id.clone(),
        client_secret.cloned(),
    )
    .set_auth_type(AuthType::BasicAuth)
    .set_redirect_uri(redirect_uri.clone())
}

/// The `Authorization` header value of `client_secret_basic` (RFC 6749
/// §2.3.1): id and secret form-urlencoded, joined by `:`, then base64.
pub fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    use base64::Engine as _;
    let encode = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encode(client_id),
            encode(client_secret)
        ))
    )
}
