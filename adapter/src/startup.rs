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
use tokio::net::{TcpListener, TcpStream};
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
use crate::connector::{Connector, ConnectorKind};
use crate::flow::{Flows, Lifetimes};
use crate::keys::{EncryptionKey, KeyManager, Policy as KeyPolicy};
use crate::provider::{
    authorize, callback, discovery, login, logout, token, userinfo, AppState, Client,
    CookieSettings, Inner,
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
        let gc = tokio::spawn(collect_garbage(
            state.store.clone(),
            state.clock.clone(),
            state.metrics.clone(),
        ));
        let keys = tokio::spawn(maintain_keys(state.clone()));
        let backchannel = tokio::spawn(crate::backchannel::run_worker(
            state.store.clone(),
            state.clock.clone(),
        ));
        tracing::info!(issuer = %state.issuer(), port = self.port, "listening");
        let result = axum::serve(self.listener, app(state))
            .with_graceful_shutdown(shutdown)
            .await;
        gc.abort();
        keys.abort();
        backchannel.abort();
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

async fn collect_garbage(
    store: Arc<dyn Store>,
    clock: SharedClock,
    metrics: crate::metrics::Metrics,
) {
    let mut tick = tokio::time::interval(GC_INTERVAL);
    loop {
        tick.tick().await;
        match metrics
            .store("delete_expired", store.delete_expired(clock.now()))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired artifacts removed"),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

/// Every `keys.reload_interval_seconds`: rotation when due, retirements,
/// and a reload of the key set, so every replica picks up the keys another
/// one published (RFC 7517 §5).
async fn maintain_keys(state: AppState) {
    let mut tick = tokio::time::interval(state.keys.reload_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = state.keys.maintain(state.now()).await {
            tracing::warn!(error = %e, "signing-key maintenance failed");
        }
    }
}

/// How long the PostgreSQL pre-flight waits for a TCP connection.
const DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// For a `postgres://` URL, a TCP connection to its host and port (default
/// 5432) within [`DB_CONNECT_TIMEOUT`], so an unreachable database is named
/// with its address and the cause at once instead of after the pool's
/// acquire timeout. Other URLs (SQLite, a Unix socket) pass unchecked.
pub async fn check_database_reachable(url: &str) -> anyhow::Result<()> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Ok(());
    };
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Ok(());
    }
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Ok(());
    };
    let address = format!("{host}:{}", parsed.port().unwrap_or(5432));
    match tokio::time::timeout(DB_CONNECT_TIMEOUT, TcpStream::connect(&address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => bail!("database.url: cannot reach PostgreSQL at {address}: {e}"),
        Err(_) => bail!(
            "database.url: cannot reach PostgreSQL at {address}: no answer within {} s",
            DB_CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// Opens the store: the PostgreSQL pre-flight, then the pool and migrations.
/// Errors name `database.url` without its password.
pub async fn connect_store(url: &str, max_connections: u32) -> anyhow::Result<SqlStore> {
    check_database_reachable(url).await?;
    SqlStore::connect(url, max_connections)
        .await
        .with_context(|| {
            format!(
                "database.url = {}: cannot open the database",
                crate::config::redact_url(url)
            )
        })
}

/// Validates the configuration and assembles the shared state.
pub async fn build_state(config: Config, clock: SharedClock) -> anyhow::Result<AppState> {
    config.validate()?;

    let mut clients = HashMap::new();
    for c in &config.clients {
        let client = Client::from_config(c).map_err(anyhow::Error::msg)?;
        clients.insert(c.id.clone(), client);
    }

    let mut oidc_connectors = Vec::new();
    for up in &config.upstreams {
        let secret = crate::config::resolve_secret(
            &up.client_secret,
            &up.client_secret_env,
            &format!("upstreams[{}].client_secret", up.id),
        )
        .map_err(anyhow::Error::msg)?;
        let oidc = OidcConnector::new(up, secret.map(|s| s.expose().to_owned()), clock.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        oidc_connectors.push((up.id.clone(), up.name.clone(), oidc));
    }
    let local = if config.local_users.is_empty() {
        None
    } else {
        Some(
            LocalConnector::new(&config.local_users)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )
    };

    let customizer = customizer::from_config(&config).map_err(anyhow::Error::msg)?;
    let metrics = crate::metrics::Metrics::new();
    let store: Arc<dyn Store> =
        Arc::new(connect_store(&config.database.url, config.database.max_connections).await?);
    let keys = KeyManager::open(
        store.clone(),
        KeyPolicy::from_config(&config).context("signing keys")?,
        &config.keys,
        &config.database.url,
        clock.clone(),
    )
    .await
    .context("signing keys")?;
    // Upstream refresh tokens are sealed at rest with the key that seals
    // the signing keys (resolved the same way, so it is the same key).
    let mut connectors = Vec::new();
    if !oidc_connectors.is_empty() {
        let sealing =
            EncryptionKey::resolve_shared(&config.keys, &config.database.url).context("keys")?;
        for (id, name, mut oidc) in oidc_connectors {
            oidc.set_sealing_key(sealing.clone());
            oidc.set_metrics(metrics.clone());
            connectors.push(Connector {
                name: name.unwrap_or_else(|| id.clone()),
                id,
                kind: ConnectorKind::Callback(Arc::new(oidc)),
            });
        }
    }
    if let Some(local) = local {
        connectors.push(Connector {
            id: LOCAL_CONNECTOR_ID.into(),
            name: "Username and password".into(),
            kind: ConnectorKind::Password(Arc::new(local)),
        });
    }
    let cookie_secure = config
        .session
        .secure
        .unwrap_or(config.server.issuer().starts_with("https://"));
    let clients = Arc::new(clients);
    let flows = Flows::new(
        store.clone(),
        clients.clone(),
        connectors,
        clock.clone(),
        config.server.issuer().to_string(),
        Lifetimes {
            login: config.tokens.login_ttl_seconds,
            code: config.tokens.code_ttl_seconds,
            session: config.session.ttl_seconds,
        },
    )
    .with_metrics(metrics.clone());
    // Secrets were hashed or handed to their connectors above; the state
    // kept for the lifetime of the process holds none, and handlers see
    // only what they need.
    Ok(AppState(Arc::new(Inner {
        issuer: config.server.issuer().to_string(),
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
        metrics,
    })))
}

async fn ready(axum::extract::State(st): axum::extract::State<AppState>) -> impl IntoResponse {
    // Readiness depends on our own storage only, never on an upstream: an
    // upstream outage must not take the adapter out of its load balancer.
    match st.metrics.store("ping", st.store.ping()).await {
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
        .route(paths::REVOKE, post(crate::provider::revoke::revoke))
        .route(
            paths::INTROSPECT,
            post(crate::provider::introspect::introspect),
        )
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
        .route(
            paths::END_SESSION,
            get(logout::end_session_get).post(logout::end_session_post),
        )
        .route(paths::LOGOUT_CALLBACK, get(logout::logout_callback))
        .route(paths::HEALTH_LIVE, get(|| async { "ok" }))
        .route(paths::HEALTH_READY, get(ready))
        .route(paths::STYLE, get(web::style))
        .route(paths::METRICS, get(crate::metrics::scrape))
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
        // Outermost: sees the final status (error pages, timeouts).
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}
