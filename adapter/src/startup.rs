//! Building and running the server: `Application::build` binds first (port
//! 0 allowed) so tests learn the issuer before anything else; `app()` is the
//! router apart from `main`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::http::{HeaderName, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::connector::local::{LocalConnector, LOCAL_CONNECTOR_ID};
use crate::connector::oidc::OidcConnector;
use crate::connector::{valid_id, Connector, ConnectorKind};
use crate::flow::{Flows, Lifetimes};
use crate::keys::KeyManager;
use crate::provider::{
    authorize, callback, discovery, login, token, userinfo, AppState, Client, CookieSettings, Inner,
};
use crate::store::{SqlStore, Store};
use crate::{customizer, paths, telemetry, web};

/// Largest accepted request body.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often expired records are deleted.
const GC_INTERVAL: Duration = Duration::from_secs(60);

/// A bound, ready-to-run provider.
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
}

impl Application {
    /// Binds `config.server.listen` and builds the provider.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot bind server.listen = {}", config.server.listen))?;
        Self::build_with_listener(config, listener).await
    }

    /// Builds on an already bound listener (tests bind first to learn ports).
    pub async fn build_with_listener(
        config: Config,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        Self::build_with_clock(config, listener, Arc::new(SystemClock)).await
    }

    /// As [`Application::build_with_listener`], with an injected clock.
    pub async fn build_with_clock(
        config: Config,
        listener: TcpListener,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let port = listener.local_addr()?.port();
        let state = build_state(config, clock).await?;
        Ok(Application {
            listener,
            port,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        for c in state.flows.connectors() {
            if let ConnectorKind::Callback(cb) = &c.kind {
                let cb = cb.clone();
                tokio::spawn(async move { cb.warm_up().await });
            }
        }
        let gc = tokio::spawn(collect_garbage(state.store.clone(), state.clock.clone()));
        tracing::info!(issuer = %state.issuer(), port = self.port, "listening");
        let result = axum::serve(self.listener, app(state))
            .with_graceful_shutdown(shutdown)
            .await;
        gc.abort();
        result
    }

    /// Serves until Ctrl-C or SIGTERM.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn collect_garbage(store: Arc<dyn Store>, clock: SharedClock) {
    let mut tick = tokio::time::interval(GC_INTERVAL);
    loop {
        tick.tick().await;
        match store.delete_expired(clock.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired artifacts removed"),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

/// The issuer must be an absolute http(s) URL without trailing slash, query
/// or fragment (OIDC Discovery §3).
fn validate_issuer(issuer: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(issuer)
        .with_context(|| format!("server.issuer = {issuer:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https")
        || url.query().is_some()
        || url.fragment().is_some()
    {
        bail!("server.issuer = {issuer:?}: must be http(s) without query or fragment");
    }
    if issuer.ends_with('/') {
        bail!("server.issuer = {issuer:?}: remove the trailing slash");
    }
    Ok(())
}

/// Lifetimes within safe bounds: codes ≤ 60 s (RFC 6749 §4.1.2 recommends
/// at most 10 min; RFC 9700 keeps them short), login transactions ≤ 10 min,
/// access tokens ≤ 15 min (RFC 9700 §2.2.1 favours short-lived ones).
fn validate_lifetimes(t: &crate::config::TokenConfig) -> anyhow::Result<()> {
    for (key, value, max) in [
        ("tokens.code_ttl_seconds", t.code_ttl_seconds, 60),
        ("tokens.login_ttl_seconds", t.login_ttl_seconds, 600),
        (
            "tokens.access_token_ttl_seconds",
            t.access_token_ttl_seconds,
            900,
        ),
        ("tokens.id_token_ttl_seconds", t.id_token_ttl_seconds, 3600),
    ] {
        if !(1..=max).contains(&value) {
            bail!("{key} = {value}: must be between 1 and {max}");
        }
    }
    Ok(())
}

/// Validates the configuration and assembles the shared state.
pub async fn build_state(config: Config, clock: SharedClock) -> anyhow::Result<AppState> {
    validate_issuer(&config.server.issuer)?;
    validate_lifetimes(&config.tokens)?;

    let mut clients = HashMap::new();
    for c in &config.clients {
        let client = Client::from_config(c).map_err(anyhow::Error::msg)?;
        if clients.insert(c.id.clone(), client).is_some() {
            bail!("clients: id {:?} appears twice", c.id);
        }
    }

    let mut connectors = Vec::new();
    for up in &config.upstreams {
        if !valid_id(&up.id) {
            bail!(
                "upstreams[{}].id: use lowercase letters, digits, '-' or '_'",
                up.id
            );
        }
        if connectors.iter().any(|c: &Connector| c.id == up.id) || up.id == LOCAL_CONNECTOR_ID {
            bail!("upstreams[{}].id appears twice or is reserved", up.id);
        }
        let secret = crate::config::resolve_secret(
            &up.client_secret,
            &up.client_secret_env,
            &format!("upstreams[{}].client_secret", up.id),
        )
        .map_err(anyhow::Error::msg)?;
        let oidc =
            OidcConnector::new(up, secret, clock.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        connectors.push(Connector {
            id: up.id.clone(),
            name: up.name.clone().unwrap_or_else(|| up.id.clone()),
            kind: ConnectorKind::Callback(Arc::new(oidc)),
        });
    }
    if !config.local_users.is_empty() {
        let local = LocalConnector::new(&config.local_users)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        connectors.push(Connector {
            id: LOCAL_CONNECTOR_ID.into(),
            name: "Username and password".into(),
            kind: ConnectorKind::Password(Arc::new(local)),
        });
    }

    let customizer = customizer::from_config(&config).map_err(anyhow::Error::msg)?;
    let store = SqlStore::connect(&config.database.url, config.database.max_connections)
        .await
        .with_context(|| "database.url: cannot open the database".to_string())?;
    let keys = KeyManager::load_or_create(
        &store,
        &config.tokens.signing_alg,
        &config.keys,
        &config.database.url,
        clock.now(),
    )
    .await
    .context("signing keys")?;
    let cookie_secure = config
        .session
        .secure
        .unwrap_or(config.server.issuer.starts_with("https://"));
    let store: Arc<dyn Store> = Arc::new(store);
    let clients = Arc::new(clients);
    let flows = Flows::new(
        store.clone(),
        clients.clone(),
        connectors,
        clock.clone(),
        config.server.issuer.clone(),
        Lifetimes {
            login: config.tokens.login_ttl_seconds,
            code: config.tokens.code_ttl_seconds,
            session: config.session.ttl_seconds,
        },
    );
    // Secrets were hashed or handed to their connectors above; the state
    // kept for the lifetime of the process holds none, and handlers see
    // only what they need.
    Ok(AppState(Arc::new(Inner {
        issuer: config.server.issuer.clone(),
        ui: config.ui.clone(),
        cookies: CookieSettings {
            session: config.session.cookie_name.clone(),
            transaction: config.session.transaction_cookie_name.clone(),
            secure: cookie_secure,
            transaction_ttl: config.tokens.login_ttl_seconds,
        },
        tokens: config.tokens.clone(),
        store,
        keys,
        clients,
        flows,
        customizer,
        clock,
    })))
}

async fn ready(axum::extract::State(st): axum::extract::State<AppState>) -> impl IntoResponse {
    // Readiness depends on our own storage only, never on an upstream (E8).
    match st.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable"),
    }
}

async fn not_found() -> web::PageError {
    web::PageError::new(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing at this address.",
    )
}

/// The provider's routes and middleware.
pub fn app(state: AppState) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    let title: Arc<str> = Arc::from(state.title());
    Router::new()
        .route(
            paths::OPENID_CONFIGURATION,
            get(discovery::openid_configuration),
        )
        .route(
            paths::OAUTH_AUTHORIZATION_SERVER,
            get(discovery::oauth_authorization_server),
        )
        .route(paths::JWKS, get(discovery::jwks))
        .route(
            paths::AUTHORIZE,
            get(authorize::authorize_get).post(authorize::authorize_post),
        )
        .route(paths::TOKEN, post(token::token))
        .route(
            paths::USERINFO,
            get(userinfo::userinfo).post(userinfo::userinfo),
        )
        .route(paths::UPSTREAM_CALLBACK, get(callback::upstream_callback))
        .route(paths::LOGIN_START, get(login::login_start))
        .route(
            paths::LOGIN_FORM,
            get(login::login_form).post(login::login_submit),
        )
        .route(paths::HEALTH_LIVE, get(|| async { "ok" }))
        .route(paths::HEALTH_READY, get(ready))
        .route(paths::STYLE, get(web::style))
        .fallback(not_found)
        .layer(axum::middleware::map_response_with_state(
            title,
            web::render_error_pages,
        ))
        .layer(web::security_headers())
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(
                    x_request_id.clone(),
                    MakeRequestUuid,
                ))
                .layer(SetSensitiveRequestHeadersLayer::new([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::COOKIE,
                ]))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(telemetry::request_span)
                        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::new(x_request_id))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    REQUEST_TIMEOUT,
                ))
                .layer(RequestBodyLimitLayer::new(BODY_LIMIT)),
        )
        .with_state(state)
}
