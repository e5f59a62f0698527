//! The plain OAuth 2.0 upstream connector (GitHub-style): no discovery, no
//! ID token. The login is an authorization code grant (RFC 6749 §4.1)
//! with `state` and PKCE S256 (RFC 7636 §4; harmless to a server that
//! ignores it), then the access token buys the user's profile at the
//! configured userinfo endpoint (a JSON object, RFC 6750 §2.1 bearer
//! token). The profile is the identity's claims; its `subject_claim`
//! member (a string or a number) is the subject.
//!
//! Outbound calls go through the OIDC connector's client and bridge
//! ([`super::oidc::http_client`], [`super::oidc::bridge`]): no redirects,
//! timeouts, a 1 MiB cap on every body, a 5xx answer as "unavailable".

use std::collections::HashMap;

use ::oauth2::basic::BasicClient;
use ::oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    TokenResponse,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use super::oidc::{bridge, http_client_with, HttpError};
use super::{
    begin_response, callback_error, pending_login, BeginRequest, BeginResponse, CallbackConnector,
    ConnectorError, Identity,
};
use crate::config::{TokenEndpointAuth, UpstreamConfig};

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// What a login keeps server-side between `begin` and `complete`.
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    /// The `state` sent (RFC 6749 §10.12), checked again on the callback.
    state: String,
    /// RFC 7636 §4.5: sent with the code.
    pkce_verifier: String,
}

/// A plain OAuth 2.0 upstream.
pub struct OAuth2Connector {
    id: String,
    client_id: String,
    client_secret: Option<String>,
    auth_type: AuthType,
    authorization_endpoint: AuthUrl,
    token_endpoint: ::oauth2::TokenUrl,
    userinfo_endpoint: String,
    subject_claim: String,
    scopes: Vec<String>,
    http: reqwest::Client,
    metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for OAuth2Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Connector")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl OAuth2Connector {
    /// `client_secret` is already resolved (inline or from the
    /// environment); the endpoints were checked by the configuration.
    pub fn new(
        config: &UpstreamConfig,
        client_secret: Option<String>,
    ) -> Result<Self, ConnectorError> {
        let key = |name: &str| format!("upstreams[{}].{name}", config.id);
        let endpoint = |name: &str, value: &Option<String>| {
            value
                .clone()
                .ok_or_else(|| ConnectorError::Config(format!("{}: required", key(name))))
        };
        let authorization_endpoint = AuthUrl::new(endpoint(
            "authorization_endpoint",
            &config.authorization_endpoint,
        )?)
        .map_err(|e| ConnectorError::Config(format!("{}: {e}", key("authorization_endpoint"))))?;
        let token_endpoint =
            ::oauth2::TokenUrl::new(endpoint("token_endpoint", &config.token_endpoint)?)
                .map_err(|e| ConnectorError::Config(format!("{}: {e}", key("token_endpoint"))))?;
        Ok(OAuth2Connector {
            id: config.id.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            auth_type: match config.token_endpoint_auth_method {
                TokenEndpointAuth::ClientSecretPost => AuthType::RequestBody,
                TokenEndpointAuth::ClientSecretBasic => AuthType::BasicAuth,
            },
            authorization_endpoint,
            token_endpoint,
            userinfo_endpoint: endpoint("userinfo_endpoint", &config.userinfo_endpoint)?,
            subject_claim: config.subject_claim.clone(),
            scopes: config.scopes.clone(),
            http: http_client_with(std::time::Duration::from_secs(config.timeout_seconds))
                .map_err(|e| ConnectorError::Config(e.to_string()))?,
            metrics: crate::metrics::Metrics::default(),
        })
    }

    /// Records this upstream's call latencies and errors in `metrics`.
    pub fn set_metrics(&mut self, metrics: crate::metrics::Metrics) {
        self.metrics = metrics;
    }

    fn client(&self, callback_url: &str) -> Result<Client, ConnectorError> {
        let redirect = RedirectUrl::new(callback_url.to_string())
            .map_err(|e| ConnectorError::Config(format!("callback url: {e}")))?;
        let mut client = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_auth_uri(self.authorization_endpoint.clone())
            .set_token_uri(self.token_endpoint.clone())
            .set_auth_type(self.auth_type.clone())
            .set_redirect_uri(redirect);
        if let Some(secret) = &self.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.clone()));
        }
        Ok(client)
    }

    /// The user's profile: a bearer GET (RFC 6750 §2.1) answered with a
    /// JSON object.
    async fn userinfo(&self, access_token: &str) -> Result<Map<String, Value>, ConnectorError> {
        let unavailable = |e: HttpError| ConnectorError::Unavailable(format!("userinfo: {e}"));
        let request = ::oauth2::http::Request::get(self.userinfo_endpoint.as_str())
            .header("authorization", format!("Bearer {access_token}"))
            .header("accept", "application/json")
            // GitHub's API refuses requests without a User-Agent.
            .header("user-agent", "auth-adapter")
            .body(Vec::new())
            .map_err(|e| ConnectorError::Config(format!("userinfo request: {e}")))?;
        let response = bridge(self.http.clone(), request)
            .await
            .map_err(unavailable)?;
        if !response.status().is_success() {
            return Err(ConnectorError::Invalid(format!(
                "userinfo answered {}",
                response.status()
            )));
        }
        serde_json::from_slice(response.body())
            .map_err(|e| ConnectorError::Invalid(format!("userinfo is not a JSON object: {e}")))
    }
}

/// The subject from the profile: the member `claim`, a non-empty string or
/// a number (GitHub's `id` is one), as a string.
fn subject_of(profile: &Map<String, Value>, claim: &str) -> Result<String, ConnectorError> {
    match profile.get(claim) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(ConnectorError::Denied(format!(
            "the userinfo has no `{claim}` (a string or a number)"
        ))),
    }
}

#[async_trait]
impl CallbackConnector for OAuth2Connector {
    async fn begin(&self, req: &BeginRequest<'_>) -> Result<BeginResponse, ConnectorError> {
        let client = self.client(req.callback_url)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = req.state.to_string();
        let mut request = client.authorize_url(move || CsrfToken::new(state));
        for scope in &self.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        // `prompt`, `max_age` and `login_hint` are OIDC (Core §3.1.2.1):
        // a plain OAuth 2.0 server does not know them.
        let (url, _state) = request.set_pkce_challenge(challenge).url();
        let pending = PendingLogin {
            state: req.state.to_string(),
            pkce_verifier: verifier.secret().clone(),
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
        // RFC 6749 §10.12: the callback must carry the state this login sent.
        let state = params.get("state").map_or("", String::as_str);
        if !bool::from(state.as_bytes().ct_eq(pending.state.as_bytes())) {
            return Err(ConnectorError::Invalid(
                "the callback's state is not this login's".into(),
            ));
        }
        callback_error(params)?;
        let code = params
            .get("code")
            .ok_or_else(|| ConnectorError::Invalid("callback without code".into()))?;

        // RFC 6749 §4.1.3, with the PKCE verifier (RFC 7636 §4.5).
        let client = self.client(callback_url)?;
        let http = |r| bridge(self.http.clone(), r);
        let exchange = client
            .exchange_code(AuthorizationCode::new(code.clone()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier));
        let token = self
            .metrics
            .upstream(&self.id, "token", exchange.request_async(&http))
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
        // RFC 6749 §7.1: the type is case-insensitive; only a bearer token
        // (RFC 6750) can be presented to the userinfo endpoint.
        if !token.token_type().as_ref().eq_ignore_ascii_case("bearer") {
            return Err(ConnectorError::Invalid(format!(
                "token endpoint issued a {} token, not a bearer token",
                token.token_type().as_ref()
            )));
        }
        let profile = self
            .metrics
            .upstream(
                &self.id,
                "userinfo",
                self.userinfo(token.access_token().secret()),
            )
            .await?;
        let subject = subject_of(&profile, &self.subject_claim)?;
        Ok(Identity {
            connector_id: self.id.clone(),
            subject,
            claims: profile,
            auth_time: None,
            amr: Vec::new(),
            acr: None,
            upstream: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn connector() -> OAuth2Connector {
        let config: UpstreamConfig = serde_json::from_value(json!({
            "id": "gh", "kind": "oauth2", "client_id": "adapter",
            // Nothing listens there: the checks below come first.
            "authorization_endpoint": "http://127.0.0.1:9/authorize",
            "token_endpoint": "http://127.0.0.1:9/token",
            "userinfo_endpoint": "http://127.0.0.1:9/user",
        }))
        .unwrap();
        OAuth2Connector::new(&config, Some("s".into())).unwrap()
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CALLBACK: &str = "http://127.0.0.1:1/login/oauth2/code/gh";

    #[tokio::test]
    async fn begin_sends_state_and_pkce_s256() {
        let c = connector();
        let begun = c
            .begin(&BeginRequest {
                callback_url: CALLBACK,
                state: "st-1",
                prompt: Some("login"),
                max_age: Some(5),
                login_hint: None,
            })
            .await
            .unwrap();
        let url = url::Url::parse(&begun.redirect_url).unwrap();
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["state"], "st-1");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["redirect_uri"], CALLBACK);
        assert!(!q.contains_key("prompt") && !q.contains_key("max_age"));
        let pending: PendingLogin = serde_json::from_str(&begun.connector_state).unwrap();
        // RFC 7636 §4.2: the challenge is BASE64URL(SHA256(verifier)).
        use base64::Engine;
        use sha2::Digest;
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(pending.pkce_verifier.as_bytes()));
        assert_eq!(q["code_challenge"], expected);
    }

    #[tokio::test]
    async fn a_callback_with_another_state_is_rejected() {
        let c = connector();
        let pending = r#"{"state":"st-1","pkce_verifier":"v"}"#;
        for state in [Some("st-2"), Some(""), None] {
            let mut p = params(&[("code", "c")]);
            if let Some(s) = state {
                p.insert("state".into(), s.into());
            }
            match c.complete(CALLBACK, &p, pending).await {
                Err(ConnectorError::Invalid(m)) => {
                    assert_eq!(m, "the callback's state is not this login's")
                }
                other => panic!("{state:?}: expected Invalid, got {other:?}"),
            }
        }
        // An error response with the right state is the user's refusal.
        let p = params(&[("state", "st-1"), ("error", "access_denied")]);
        match c.complete(CALLBACK, &p, pending).await {
            Err(ConnectorError::Denied(m)) => {
                assert_eq!(m, "upstream returned error=access_denied")
            }
            other => panic!("expected Denied, got {other:?}"),
        }
    }

    #[test]
    fn the_subject_is_a_string_or_a_number() {
        let profile = json!({"id": 12345, "login": "octo", "node": "", "obj": {}})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(subject_of(&profile, "id").unwrap(), "12345");
        assert_eq!(subject_of(&profile, "login").unwrap(), "octo");
        for claim in ["node", "obj", "missing"] {
            assert!(
                matches!(subject_of(&profile, claim), Err(ConnectorError::Denied(_))),
                "{claim}"
            );
        }
    }
}
