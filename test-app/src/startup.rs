//! Wiring: [`AppState`] (resolved configuration, provider cache, session and
//! transaction stores), [`app`] (the router with its middleware: request ids,
//! tracing, timeouts, body limit, security headers) and [`Application`] (binds
//! first so tests learn the port, then serves until shut down).

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{header, HeaderName, HeaderValue, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use openidconnect::{ClientId, ClientSecret, IssuerUrl, RedirectUrl};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;
use url::Url;

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::provider::{self, ProviderCache};
use crate::store::{
    BackchannelLogout, BackchannelLogouts, ExpiringMap, LogoutTransaction, Session, Transaction,
    MAX_ENTRIES, SESSION_TTL, TRANSACTION_TTL,
};
use crate::{lifecycle, resource, routes};

/// Largest request body accepted (only the logout and call-api forms have one).
const BODY_LIMIT: usize = 16 * 1024;
/// Per-request time limit (covers the token call to the provider).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared state of the handlers. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What [`AppState`] holds.
pub struct Inner {
    /// The configuration as loaded.
    pub config: Config,
    /// `base_url` without a trailing slash.
    pub base_url: String,
    /// Our client id.
    pub client_id: ClientId,
    /// Our client secret, resolved from `client_secret_env` or `client_secret`.
    pub client_secret: Option<ClientSecret>,
    /// `{base_url}/login/oauth2/code/auth-adapter`.
    pub redirect_uri: RedirectUrl,
    /// Whether cookies get the `Secure` attribute (base_url is https).
    pub secure_cookies: bool,
    /// The lazily discovered provider.
    pub provider: ProviderCache,
    /// Sessions by session id.
    pub sessions: ExpiringMap<Arc<Session>>,
    /// Login transactions by transaction id.
    pub transactions: ExpiringMap<Transaction>,
    /// RP-initiated logouts in progress, by logout transaction id.
    pub logouts: ExpiringMap<LogoutTransaction>,
    /// Back-channel logouts received (see [`AppState::mark_backchannel`]).
    pub backchannel_logouts: BackchannelLogouts,
    /// The clock token expiry is judged by.
    pub clock: SharedClock,
    /// Where the app itself calls its protected API: the bound address once
    /// [`Application`] knows it, `base_url` otherwise.
    pub api_base: OnceLock<String>,
    /// The Content-Security-Policy sent with every response.
    pub csp: HeaderValue,
    /// Back-channel logouts received (OIDC Back-Channel Logout 1.0).
    pub backchannel: crate::backchannel::Received,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Validates `config` and builds the state. Makes no network call.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// [`AppState::new`] with another clock (tests move a manual one).
    pub fn with_clock(config: Config, clock: SharedClock) -> anyhow::Result<Self> {
        config.validate()?;
        let base_url = config.base_url_trimmed().to_owned();
        let base = Url::parse(&base_url).context("parsing base_url")?;
        let issuer = Url::parse(&config.issuer).context("parsing issuer")?;
        let client_secret = config.resolve_client_secret()?.map(ClientSecret::new);
        let redirect_uri =
            RedirectUrl::new(config.redirect_uri()).context("building the redirect URI")?;
        let http = provider::http_client().context("building the HTTP client")?;
        let provider = ProviderCache::new(
            IssuerUrl::new(config.issuer.clone()).context("parsing issuer")?,
            http,
        );
        // form-action must allow the provider: Chrome applies it to the redirect
        // that follows the logout form when logging out at the provider too.
        let csp = format!(
            "default-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'none'; \
             form-action 'self' {}",
            issuer.origin().ascii_serialization()
        );
        Ok(AppState(Arc::new(Inner {
            client_id: ClientId::new(config.client_id.clone()),
            client_secret,
            redirect_uri,
            secure_cookies: base.scheme() == "https",
            base_url,
            provider,
            sessions: ExpiringMap::new(SESSION_TTL, MAX_ENTRIES),
            transactions: ExpiringMap::new(TRANSACTION_TTL, MAX_ENTRIES),
            logouts: ExpiringMap::new(TRANSACTION_TTL, MAX_ENTRIES),
            backchannel_logouts: BackchannelLogouts::default(),
            clock,
            api_base: OnceLock::new(),
            csp: HeaderValue::from_str(&csp).context("building the CSP header")?,
            backchannel: Default::default(),
            config,
        })))
    }
}

impl AppState {
    /// The one call of the back-channel logout receiver, after it has
    /// validated a logout token (OpenID Back-Channel Logout 1.0 §2.6): ends
    /// the local sessions the token's `sid`/`sub` name (§2.7) and records the
    /// event for the pages. Returns how many sessions ended.
    pub fn mark_backchannel(&self, sid: Option<&str>, sub: Option<&str>) -> usize {
        let ended = self.sessions.end_sessions_of(sid, sub);
        self.backchannel_logouts.mark(BackchannelLogout {
            sid: sid.map(str::to_owned),
            sub: sub.map(str::to_owned),
            received_at: self.clock.now(),
            sessions_ended: ended,
        });
        tracing::info!(sessions_ended = ended, "back-channel logout recorded");
        ended
    }

    /// The base URL the app calls its own protected API at.
    pub fn api_base(&self) -> &str {
        self.api_base.get().map_or(&self.base_url, String::as_str)
    }
}

/// The router with every route and middleware.
pub fn app(state: AppState) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    let csp = state.csp.clone();
    let middleware = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .layer(SetRequestIdLayer::new(
            x_request_id.clone(),
            MakeRequestUuid,
        ))
        .layer(
            TraceLayer::new_for_http()
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                // AppError already logs why; this line only adds the latency.
                .on_failure(DefaultOnFailure::new().level(Level::WARN))
                .make_span_with(move |req: &Request<_>| {
                    let request_id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    // The path only: the query of the callback holds `code` and `state`.
                    tracing::info_span!(
                        "request",
                        request_id,
                        method = %req.method(),
                        path = req.uri().path(),
                    )
                }),
        )
        .layer(PropagateRequestIdLayer::new(x_request_id))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            csp,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));

    Router::new()
        .route("/", get(routes::home))
        .route("/authenticated", get(routes::authenticated))
        .route(crate::CALLBACK_PATH, get(routes::callback))
        .route("/api/me", get(routes::api_me))
        .route(resource::RESOURCE_PATH, get(resource::api_resource))
        .route(lifecycle::CALL_API_PATH, post(lifecycle::call_api))
        .route("/logout", get(routes::logout_page).post(routes::logout))
        .route(crate::LOGGED_OUT_PATH, get(routes::logged_out))
        .route(
            crate::backchannel::PATH,
            axum::routing::post(crate::backchannel::receive),
        )
        .route("/healthz/live", get(routes::live))
        .route("/healthz/ready", get(routes::ready))
        .route("/assets/app.css", get(routes::stylesheet))
        .route("/assets/favicon.svg", get(routes::favicon))
        .fallback(routes::not_found)
        .with_state(state)
        .layer(middleware)
}

/// The running test-app: a bound listener plus the router.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    state: AppState,
}

impl Application {
    /// Binds `config.listen` (port 0 allowed) and builds the app.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Self::build_with_listener(config, listener).await
    }

    /// Builds the app on an already bound listener (`config.listen` is ignored).
    pub async fn build_with_listener(
        config: Config,
        listener: TcpListener,
    ) -> anyhow::Result<Application> {
        Self::build_with_clock(config, listener, Arc::new(SystemClock)).await
    }

    /// [`Application::build_with_listener`] with another clock.
    pub async fn build_with_clock(
        config: Config,
        listener: TcpListener,
        clock: SharedClock,
    ) -> anyhow::Result<Application> {
        let local_addr = listener.local_addr().context("reading the bound address")?;
        let state = AppState::with_clock(config, clock)?;
        // The app calls its own API on the loopback interface it listens on.
        let mut api_addr = local_addr;
        if api_addr.ip().is_unspecified() {
            api_addr.set_ip(match api_addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = state.api_base.set(format!("http://{api_addr}"));
        Ok(Application {
            listener,
            local_addr,
            router: app(state.clone()),
            state,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until Ctrl-C or SIGTERM, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(
            address = %self.local_addr,
            base_url = %self.state.base_url,
            redirect_uri = %self.state.redirect_uri.as_str(),
            issuer = %self.state.config.issuer,
            "test-app listening"
        );
        let public_port = Url::parse(&self.state.base_url)
            .ok()
            .and_then(|u| u.port_or_known_default());
        if public_port != Some(self.local_addr.port()) {
            tracing::warn!(
                base_url = %self.state.base_url,
                port = self.local_addr.port(),
                "base_url's port differs from the listening port: fine behind a proxy, \
                 otherwise the provider will redirect browsers to the wrong place"
            );
        }
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")?;
        tracing::info!("test-app stopped");
        Ok(())
    }
}

/// Completes on Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
