//! The OIDC upstream connector: the adapter as a relying party of an
//! upstream OpenID Provider, on the `openidconnect` crate.
//!
//! Discovery is lazy and cached (an upstream that is down at start-up does
//! not stop the adapter; the next login retries). Every login uses a fresh
//! `state`, `nonce` and PKCE S256 (checklist E2); the ID token is validated
//! per OIDC Core §3.1.3.7 by `openidconnect` (signature, `iss`, `aud`,
//! `azp`, `exp`, `nonce`), plus `at_hash` here (E4). An unknown `kid`
//! triggers one throttled re-discovery (E5). The outbound HTTP client follows
//! no redirects, has timeouts and caps response sizes (E7).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, Scope, SignatureVerificationError, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

use super::{BeginRequest, BeginResponse, CallbackConnector, ConnectorError, Identity};
use crate::config::UpstreamConfig;

/// Cap on any upstream response body.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How long discovered metadata (and its JWKS) is trusted.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// At most one forced re-discovery per this interval (E5).
const REFRESH_THROTTLE: Duration = Duration::from_secs(30);

/// Errors of the reqwest bridge used by `openidconnect`.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// A 5xx answer: the upstream is in trouble, not the request (E8).
    #[error("upstream answered {0}")]
    ServerError(reqwest::StatusCode),
}

/// The outbound client: no redirects (SSRF), connect and total timeouts.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .build()
}

/// Runs an `openidconnect` request on reqwest 0.13 (crates.md trap T3).
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

struct Cached {
    metadata: CoreProviderMetadata,
    fetched: Instant,
}

/// What `begin` persists for `complete`.
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    nonce: String,
    pkce_verifier: String,
}

pub struct OidcConnector {
    id: String,
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    scopes: Vec<String>,
    fetch_userinfo: bool,
    http: reqwest::Client,
    cache: RwLock<Option<Cached>>,
    /// Held while a discovery runs.
    discovering: Mutex<()>,
    last_forced: Mutex<Option<Instant>>,
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
    ) -> Result<Self, ConnectorError> {
        IssuerUrl::new(config.issuer.clone())
            .map_err(|e| ConnectorError::Config(format!("upstreams[{}].issuer: {e}", config.id)))?;
        Ok(OidcConnector {
            id: config.id.clone(),
            issuer: config.issuer.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            scopes: config.scopes.clone(),
            fetch_userinfo: config.fetch_userinfo,
            http: http_client().map_err(|e| ConnectorError::Config(e.to_string()))?,
            cache: RwLock::new(None),
            discovering: Mutex::new(()),
            last_forced: Mutex::new(None),
        })
    }

    async fn cached(&self) -> Option<CoreProviderMetadata> {
        self.cache
            .read()
            .await
            .as_ref()
            .filter(|c| c.fetched.elapsed() < DISCOVERY_TTL)
            .map(|c| c.metadata.clone())
    }

    async fn metadata(&self) -> Result<CoreProviderMetadata, ConnectorError> {
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
    /// `issuer` equals the configured one (OIDC Discovery §4.3, E1).
    async fn discover(&self) -> Result<CoreProviderMetadata, ConnectorError> {
        let issuer = IssuerUrl::new(self.issuer.clone())
            .map_err(|e| ConnectorError::Config(e.to_string()))?;
        let http = |r| bridge(self.http.clone(), r);
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| match e {
                openidconnect::DiscoveryError::Validation(v) => {
                    ConnectorError::Invalid(format!("discovery: {v}"))
                }
                other => {
                    ConnectorError::Unavailable(format!("discovery of {}: {other}", self.issuer))
                }
            })?;
        *self.cache.write().await = Some(Cached {
            metadata: metadata.clone(),
            fetched: Instant::now(),
        });
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

    fn client(
        &self,
        metadata: CoreProviderMetadata,
        callback_url: &str,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        ConnectorError,
    > {
        let redirect = RedirectUrl::new(callback_url.to_string())
            .map_err(|e| ConnectorError::Config(format!("callback url: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.client_id.clone()),
            self.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect))
    }

    async fn userinfo(
        &self,
        metadata: &CoreProviderMetadata,
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
        let client = self.client(metadata, req.callback_url)?;
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
        let (url, _state, nonce) = request.set_pkce_challenge(challenge).url();
        let pending = PendingLogin {
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        };
        Ok(BeginResponse {
            redirect_url: url.to_string(),
            connector_state: serde_json::to_string(&pending)
                .map_err(|e| ConnectorError::Config(e.to_string()))?,
        })
    }

    async fn complete(
        &self,
        callback_url: &str,
        params: &HashMap<String, String>,
        connector_state: &str,
    ) -> Result<Identity, ConnectorError> {
        if let Some(error) = params.get("error") {
            // Only the code travels on; upstream descriptions are not trusted.
            let code: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(ConnectorError::Denied(format!(
                "upstream returned error={code}"
            )));
        }
        // RFC 9207 §2.4: when the upstream says who it is, it must be our upstream.
        if let Some(iss) = params.get("iss") {
            if iss != &self.issuer {
                return Err(ConnectorError::Invalid(
                    "iss in the callback is not the upstream's".into(),
                ));
            }
        }
        let code = params
            .get("code")
            .ok_or_else(|| ConnectorError::Invalid("callback without code".into()))?;
        let pending: PendingLogin = serde_json::from_str(connector_state)
            .map_err(|e| ConnectorError::Invalid(format!("login state: {e}")))?;

        let metadata = self.metadata().await?;
        let client = self.client(metadata.clone(), callback_url)?;
        let http = |r| bridge(self.http.clone(), r);
        let token = client
            .exchange_code(AuthorizationCode::new(code.clone()))
            .map_err(|e| ConnectorError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier))
            .request_async(&http)
            .await
            .map_err(|e| match e {
                RequestTokenError::Request(e) => {
                    ConnectorError::Unavailable(format!("token endpoint: {e}"))
                }
                RequestTokenError::ServerResponse(r) => {
                    ConnectorError::Invalid(format!("token endpoint: {}", r.error()))
                }
                other => ConnectorError::Invalid(format!("token endpoint: {other}")),
            })?;
        let id_token = token
            .id_token()
            .ok_or_else(|| ConnectorError::Invalid("no id_token in the token response".into()))?;
        let nonce = Nonce::new(pending.nonce);

        let subject = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => claims.subject().to_string(),
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if self.forced_refresh().await => {
                // The upstream may have rotated its keys (E5): verify once more.
                let client = self.client(self.metadata().await?, callback_url)?;
                let verifier = client.id_token_verifier();
                let subject = id_token
                    .claims(&verifier, &nonce)
                    .map_err(|e| ConnectorError::Invalid(format!("id token: {e}")))?
                    .subject()
                    .to_string();
                subject
            }
            Err(e) => return Err(ConnectorError::Invalid(format!("id token: {e}"))),
        };

        let raw = id_token.to_string();
        let mut claims = verified_payload(&raw)?;
        // OIDC Core §3.1.3.8: at_hash, when present, binds the access token.
        // Our allowlist (RS256/ES256/PS256) hashes with SHA-256.
        if let Some(at_hash) = claims.get("at_hash").and_then(Value::as_str) {
            let expected = crate::secret::at_hash(token.access_token().secret());
            if !crate::secret::ct_eq(at_hash, &expected) {
                return Err(ConnectorError::Invalid("id token at_hash mismatch".into()));
            }
        }
        if self.fetch_userinfo {
            let info = self
                .userinfo(&metadata, token.access_token().secret(), &subject)
                .await?;
            for (k, v) in info {
                claims.entry(k).or_insert(v);
            }
        }
        let auth_time = claims.get("auth_time").and_then(Value::as_i64);
        Ok(Identity {
            connector_id: self.id.clone(),
            subject,
            claims,
            auth_time,
        })
    }

    async fn warm_up(&self) {
        if let Err(e) = self.metadata().await {
            tracing::warn!(upstream = %self.id, error = %e, "upstream discovery failed; will retry at the next login");
        }
    }
}
