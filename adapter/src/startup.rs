//! Building and running the server: `Application::build` binds first (port
//! 0 allowed) so tests learn the issuer before anything else; `app()` is the
//! router apart from `main`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use axum::{Extension, Json};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::accounts::authn::Authenticator;
use crate::accounts::{Accounts, LOCAL_CONNECTOR_ID};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::config::UpstreamKind;
use crate::connector::oauth2::OAuth2Connector;
use crate::connector::oidc::OidcConnector;
use crate::connector::{Connector, ConnectorKind};
use crate::flow::{Flows, Lifetimes};
use crate::keys::{EncryptionKey, KeyManager, Policy as KeyPolicy};
use crate::mail::{EmailCodes, MailSender, Mailer, SmtpSender};
use crate::password::Hasher;
use crate::provider::{
    authorize, callback, discovery, local_auth, login, logout, token, userinfo, AppState, Client,
    CookieSettings, Inner,
};
use crate::ratelimit::{RateLimits, TrustedProxies};
use crate::store::{SqlStore, Store, StoreError};
use crate::{customizer, paths, telemetry, web};

/// Largest accepted request body.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often expired records are deleted.
const GC_INTERVAL: Duration = Duration::from_secs(60);
/// Most records one garbage-collection round deletes.
pub const GC_BATCH: i64 = 500;
/// Most rounds per [`GC_INTERVAL`]: one tick's work is bounded even when a
/// backlog is large; the rest waits for the next tick.
const GC_MAX_ROUNDS: u32 = 20;
/// Longest the readiness probe waits for the database.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);
/// Discovery retries of an upstream not discovered yet back off up to this.
const DISCOVERY_RETRY_MAX: Duration = Duration::from_secs(60);

/// A bound, ready-to-run provider.
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
    /// `server.shutdown_grace_seconds`.
    grace: Duration,
}

/// Connections the kernel may hold for the server before it accepts them.
/// `TcpListener::bind` (tokio, mio and std alike) asks for 128: a burst of
/// more new connections than that (clients reconnecting after a restart, a
/// load balancer opening its pool) overflows the queue, and each dropped
/// connection attempt is sent again only after a second (RFC 6298 §2.1).
/// Linux caps the value at `net.core.somaxconn` (4,096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (address reused, as `TcpListener::bind` does) with a queue
/// of [`LISTEN_BACKLOG`] connections.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Application {
    /// Binds `config.server.listen` and builds the provider.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = bind(config.server.listen)
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
        Self::build_with_customizer(config, listener, clock, Box::new(|c| c)).await
    }

    /// As [`Application::build_with_clock`], with a code-level token
    /// customizer: `wrap` receives the one the configuration describes (the
    /// claim rules) and returns the one to use, typically a wrapper that
    /// calls it and then adds or changes claims. Protocol claims stay the
    /// provider's whatever it returns.
    pub async fn build_with_customizer(
        config: Config,
        listener: TcpListener,
        clock: SharedClock,
        wrap: WrapCustomizer,
    ) -> anyhow::Result<Self> {
        let port = listener.local_addr()?.port();
        let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
        let state = build_state_with(config, clock, wrap).await?;
        Ok(Application {
            listener,
            port,
            state,
            grace,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves; then `/healthz/ready` answers 503
    /// for `server.shutdown_grace_seconds` while requests are still served,
    /// then the listener closes and in-flight requests drain.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let mut discovery = Vec::new();
        for c in state.flows.connectors() {
            if let ConnectorKind::Callback(cb) = &c.kind {
                discovery.push(tokio::spawn(discover_until_done(cb.clone())));
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
        let mail = state
            .mailer
            .has_smtp()
            .then(|| tokio::spawn(crate::mail::run_worker(state.mailer.clone())));
        tracing::info!(issuer = %state.issuer(), port = self.port, "listening");
        let draining = Draining::default();
        let grace = self.grace;
        let signal = {
            let draining = draining.clone();
            async move {
                shutdown.await;
                draining.0.store(true, Ordering::SeqCst);
                tracing::info!(
                    grace_seconds = grace.as_secs(),
                    "shutting down: not ready; draining after the grace period"
                );
                tokio::time::sleep(grace).await;
            }
        };
        // The peer address reaches handlers as `ConnectInfo` (rate limits,
        // the IP shown in the device list).
        let service = app(state)
            .layer(Extension(draining))
            .into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(self.listener, service)
            .with_graceful_shutdown(signal)
            .await;
        for task in discovery {
            task.abort();
        }
        gc.abort();
        keys.abort();
        backchannel.abort();
        if let Some(mail) = mail {
            mail.abort();
        }
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

/// Set once shutdown began: readiness answers 503 from then on.
#[derive(Debug, Clone, Default)]
struct Draining(Arc<AtomicBool>);

/// Discovers an upstream in the background until it succeeded once, with
/// a doubling pause between attempts (readiness waits for it).
async fn discover_until_done(cb: Arc<dyn crate::connector::CallbackConnector>) {
    let mut pause = Duration::from_secs(1);
    loop {
        cb.warm_up().await;
        if cb.discovered() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(DISCOVERY_RETRY_MAX);
    }
}

/// One garbage-collection round: deletes at most `batch` records that
/// expired before `now`; returns how many.
pub async fn collect_garbage_once(
    store: &dyn Store,
    now: i64,
    batch: i64,
) -> Result<u64, StoreError> {
    let removed = store.delete_expired(now, batch).await?;
    if removed > 0 {
        tracing::debug!(removed, "expired records removed");
    }
    Ok(removed)
}

/// Every [`GC_INTERVAL`], rounds of [`GC_BATCH`] records until a round
/// comes back short, at most [`GC_MAX_ROUNDS`] of them.
async fn collect_garbage(
    store: Arc<dyn Store>,
    clock: SharedClock,
    metrics: crate::metrics::Metrics,
) {
    let mut tick = tokio::time::interval(GC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for _ in 0..GC_MAX_ROUNDS {
            match metrics
                .store(
                    "delete_expired",
                    collect_garbage_once(&*store, clock.now(), GC_BATCH),
                )
                .await
            {
                Ok(n) if n < GC_BATCH.unsigned_abs() => break,
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collection failed");
                    break;
                }
            }
        }
        if let Err(e) = metrics.store("compact", store.compact()).await {
            tracing::warn!(error = %e, "store compaction failed");
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

/// The local accounts of `config` on `store` (the server and the command
/// line's `users` share it).
pub fn accounts_from_config(
    config: &Config,
    store: Arc<dyn Store>,
    clock: SharedClock,
    hasher: Arc<Hasher>,
) -> anyhow::Result<Accounts> {
    Ok(Accounts::new(
        store,
        hasher,
        EncryptionKey::resolve_shared(&config.keys, &config.database.url).context("keys")?,
        clock,
        config.accounts.clone(),
        config.ui.title.clone(),
    ))
}

/// Turns the configured token customizer into the one the provider uses
/// ([`Application::build_with_customizer`]).
pub type WrapCustomizer = Box<
    dyn FnOnce(Arc<dyn customizer::TokenCustomizer>) -> Arc<dyn customizer::TokenCustomizer> + Send,
>;

/// Validates the configuration and assembles the shared state.
pub async fn build_state(config: Config, clock: SharedClock) -> anyhow::Result<AppState> {
    build_state_with(config, clock, Box::new(|c| c)).await
}

/// [`build_state`] with a code-level customizer around the configured one.
pub async fn build_state_with(
    config: Config,
    clock: SharedClock,
    wrap: WrapCustomizer,
) -> anyhow::Result<AppState> {
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
        let secret = secret.map(|s| s.expose().to_owned());
        let built = match up.kind {
            UpstreamKind::Oidc => {
                let mut oidc = OidcConnector::new(up, secret, clock.clone())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                oidc.set_claims_read(crate::mapping::upstream_claims_read(&config, &up.id));
                BuiltUpstream::Oidc(Box::new(oidc))
            }
            UpstreamKind::Oauth2 => BuiltUpstream::OAuth2(Box::new(
                OAuth2Connector::new(up, secret).map_err(|e| anyhow::anyhow!("{e}"))?,
            )),
        };
        oidc_connectors.push((up.id.clone(), up.name.clone(), built));
    }
    let local_accounts = config.accounts.enabled || !config.local_users.is_empty();
    // One argon2id pool for the whole process; its dummy hash is computed
    // off the workers.
    let passwords = config.passwords.clone();
    let hasher = Arc::new(
        tokio::task::spawn_blocking(move || {
            Hasher::new(
                passwords.max_concurrent_hashes,
                passwords.max_waiting_hashes,
            )
        })
        .await
        .context("password hasher")?
        .map_err(|e| anyhow::anyhow!("passwords: {e}"))?,
    );

    let customizer: Arc<dyn customizer::TokenCustomizer> = wrap(Arc::from(
        customizer::from_config(&config).map_err(anyhow::Error::msg)?,
    ));
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
        for (id, name, built) in oidc_connectors {
            let kind: Arc<dyn crate::connector::CallbackConnector> = match built {
                BuiltUpstream::Oidc(oidc) => {
                    let mut oidc = *oidc;
                    oidc.set_sealing_key(sealing.clone());
                    oidc.set_metrics(metrics.clone());
                    Arc::new(oidc)
                }
                BuiltUpstream::OAuth2(oauth2) => {
                    let mut oauth2 = *oauth2;
                    oauth2.set_metrics(metrics.clone());
                    Arc::new(oauth2)
                }
            };
            connectors.push(Connector {
                name: name.unwrap_or_else(|| id.clone()),
                id,
                kind: ConnectorKind::Callback(kind),
            });
        }
    }
    let rate_limits = Arc::new(RateLimits::new(
        &config.rate_limits,
        TrustedProxies::parse(&config.server.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("server.trusted_proxies: {e}"))?,
        store.clone(),
        clock.clone(),
        metrics.clone(),
    ));
    let mailer = Arc::new(build_mailer(&config, store.clone(), clock.clone())?);
    let email_codes = Arc::new(EmailCodes::new(
        store.clone(),
        mailer.clone(),
        clock.clone(),
        config.ui.title.clone(),
    ));
    if local_accounts {
        // E-mail codes as a way in: as the policy, or offered beside it.
        let codes = (config.accounts.email_codes
            || config.accounts.policy == crate::config::LoginPolicy::EmailCode)
            .then(|| email_codes.clone() as Arc<dyn crate::accounts::authn::OneTimeCodes>);
        let accounts = Arc::new(accounts_from_config(
            &config,
            store.clone(),
            clock.clone(),
            hasher.clone(),
        )?);
        let seeded = accounts
            .seed(&config.local_users)
            .await
            .context("local_users")?;
        if seeded > 0 {
            tracing::info!(
                seeded,
                "local users from the configuration added to the store"
            );
        }
        let passkeys = crate::accounts::passkeys::Passkeys::from_config(
            &config.passkeys,
            &config.ui.title,
            clock.clone(),
        )
        .map_err(anyhow::Error::msg)?
        .map(Arc::new);
        connectors.push(Connector {
            id: LOCAL_CONNECTOR_ID.into(),
            name: "Username and password".into(),
            kind: ConnectorKind::Local(Arc::new(
                Authenticator::new(accounts, codes)
                    .with_rate_limits(rate_limits.clone())
                    .with_passkeys(passkeys),
            )),
        });
    }
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
    .with_metrics(metrics.clone())
    .with_admission(customizer.clone())
    .with_email_domains(crate::route::EmailDomains::new(config.email_domains()));
    // Secrets were hashed or handed to their connectors above; the state
    // kept for the lifetime of the process holds none, and handlers see
    // only what they need.
    Ok(AppState(Arc::new(Inner {
        issuer: config.server.issuer().to_string(),
        ui: config.ui.clone(),
        cookies: CookieSettings::from_config(&config),
        tokens: config.tokens.clone(),
        store,
        keys,
        clients,
        flows,
        customizer,
        rate_limits,
        clock,
        metrics,
        mailer,
        email_codes,
        hasher,
    })))
}

/// The mailer `[mail]` configures: SMTP when `mail.smtp_host` is set;
/// otherwise mails stay in the outbox, which `/dev/outbox` shows, and a
/// warning says so.
fn build_mailer(
    config: &Config,
    store: Arc<dyn Store>,
    clock: SharedClock,
) -> anyhow::Result<Mailer> {
    let sender = SmtpSender::from_config(&config.mail)?;
    match &sender {
        Some(_) => tracing::info!(
            host = config.mail.smtp_host.as_deref().unwrap_or_default(),
            port = config.mail.port(),
            tls = config.mail.smtp_tls.as_str(),
            "mail goes out through SMTP"
        ),
        None => tracing::warn!(
            "no SMTP server is configured (mail.smtp_host): mails are not sent; they stay \
             in the outbox and {}{} shows them to anyone who can reach this service. \
             Development only: configure [mail] before real use",
            config.server.issuer(),
            paths::DEV_OUTBOX
        ),
    }
    Ok(Mailer::new(
        store,
        sender.map(|s| Arc::new(s) as Arc<dyn MailSender>),
        clock,
    ))
}

/// `GET /healthz/ready`: 200 when the database answers, a signing key is
/// loaded and every upstream was discovered at least once (a later upstream
/// outage does not make the adapter unready); otherwise 503 naming what is
/// missing. 503 from the start of a shutdown on.
async fn ready(
    axum::extract::State(st): axum::extract::State<AppState>,
    draining: Option<Extension<Draining>>,
) -> Response {
    let mut missing: Vec<String> = Vec::new();
    if draining.is_some_and(|d| d.0 .0.load(Ordering::SeqCst)) {
        missing.push("shutting_down".into());
    }
    match tokio::time::timeout(READY_DB_TIMEOUT, st.metrics.store("ping", st.store.ping())).await {
        Ok(Ok(())) => {}
        _ => missing.push("database".into()),
    }
    if st.keys.algorithms().is_empty() {
        missing.push("signing_key".into());
    }
    for c in st.flows.connectors() {
        if let ConnectorKind::Callback(cb) = &c.kind {
            if !cb.discovered() {
                missing.push(format!("upstream:{}", c.id));
            }
        }
    }
    if missing.is_empty() {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready" })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "missing": missing })),
        )
            .into_response()
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
        .route(
            paths::PASSKEY_LOGIN_BEGIN,
            post(crate::provider::passkey_login::begin),
        )
        .route(
            paths::PASSKEY_LOGIN_FINISH,
            post(crate::provider::passkey_login::finish),
        )
        .route(paths::PASSKEYS_JS, get(web::passkeys_js))
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
        .route(paths::API_AUTH, post(local_auth::api_auth))
        .route(
            paths::ACCOUNT_TOTP,
            get(crate::provider::totp_pages::totp_page)
                .post(crate::provider::totp_pages::totp_confirm),
        )
        .route(
            paths::REGISTER,
            get(local_auth::register_page).post(local_auth::register),
        )
        .route(
            paths::SIGN_IN,
            get(local_auth::sign_in_page).post(local_auth::login),
        )
        .route(
            paths::VERIFY_OTP,
            get(local_auth::verify_otp_page).post(local_auth::verify_otp),
        )
        .merge(crate::provider::account::routes())
        .merge(crate::provider::passkeys::routes())
        .route(paths::HEALTH_LIVE, get(|| async { "ok" }))
        .route(paths::HEALTH_READY, get(ready))
        .route(paths::STYLE, get(web::style))
        .route(paths::METRICS, get(crate::metrics::scrape))
        .merge(crate::mail::dev::routes(&state))
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

/// An upstream connector built from its `[[upstreams]]` block, before the
/// shared parts (sealing key, metrics) are handed to it.
enum BuiltUpstream {
    Oidc(Box<OidcConnector>),
    OAuth2(Box<OAuth2Connector>),
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    /// More connections than `TcpListener::bind`'s queue of 128 wait
    /// unaccepted, and none is dropped: every connect completes at once
    /// instead of waiting a second for its attempt to be sent again.
    #[tokio::test]
    async fn the_listener_queues_bursts_of_connections() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects: Vec<_> = (0..300)
            .map(|_| {
                tokio::spawn(tokio::time::timeout(
                    Duration::from_secs(2),
                    TcpStream::connect(addr),
                ))
            })
            .collect();
        let mut connected = Vec::new();
        for c in connects {
            if let Ok(Ok(stream)) = c.await.unwrap() {
                connected.push(stream);
            }
        }
        assert_eq!(connected.len(), 300);
        drop(listener);
    }
}
