//! `/metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! Each [`crate::Application`] owns its own `PrometheusRecorder`; none is
//! installed globally, so several applications in one process (the tests)
//! keep separate registries. The `metrics` macros record into whatever
//! recorder is current on the thread, so every record goes through
//! [`metrics::with_local_recorder`] with this application's recorder, inside
//! a synchronous closure (never across an `.await`).
//!
//! Labels are bounded: route templates (axum's `MatchedPath`, never the raw
//! path), methods, status codes, configured connector and upstream ids,
//! grant types, algorithms and fixed reason names. Never a user name, a
//! token, a code or anything else a request chooses.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde_json::Value;

use crate::provider::AppState;

/// Seconds; from a cached lookup to a slow upstream.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub const HTTP_REQUESTS: &str = "adapter_http_requests_total";
pub const HTTP_DURATION: &str = "adapter_http_request_duration_seconds";
pub const LOGINS_STARTED: &str = "adapter_logins_started_total";
pub const LOGINS_SUCCEEDED: &str = "adapter_logins_succeeded_total";
pub const LOGINS_FAILED: &str = "adapter_logins_failed_total";
pub const TOKENS_ISSUED: &str = "adapter_tokens_issued_total";
pub const REFRESH_REUSE: &str = "adapter_refresh_token_reuse_detected_total";
pub const UPSTREAM_DURATION: &str = "adapter_upstream_request_duration_seconds";
pub const UPSTREAM_ERRORS: &str = "adapter_upstream_errors_total";
pub const STORE_DURATION: &str = "adapter_store_operation_duration_seconds";
pub const STORE_ERRORS: &str = "adapter_store_errors_total";
pub const ACTIVE_SESSIONS: &str = "adapter_active_sessions";
pub const RATE_LIMITED: &str = "adapter_rate_limited_total";
pub const WRITER_JOBS: &str = "adapter_store_writer_jobs_total";
pub const WRITER_COMMITS: &str = "adapter_store_writer_commits_total";

/// Label of a route no template matched (404s): never the raw path.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// Label of a connector id the request named but no connector has.
pub const UNKNOWN_CONNECTOR: &str = "unknown";

/// HELP texts of the counters.
const COUNTERS: &[(&str, &str)] = &[
    (
        HTTP_REQUESTS,
        "HTTP requests by route template, method and status.",
    ),
    (LOGINS_STARTED, "Logins started at a connector."),
    (
        LOGINS_SUCCEEDED,
        "Logins that opened a session, by connector.",
    ),
    (
        LOGINS_FAILED,
        "Logins that failed, by connector and reason.",
    ),
    (
        TOKENS_ISSUED,
        "Signed tokens issued at the token endpoint, by grant type, token and JWS alg.",
    ),
    (
        REFRESH_REUSE,
        "Rotated refresh tokens presented again (RFC 9700 section 4.14.2); each revokes a family.",
    ),
    (
        UPSTREAM_ERRORS,
        "Failed calls to upstream providers, by upstream and operation.",
    ),
    (STORE_ERRORS, "Failed store operations, by operation."),
    (
        RATE_LIMITED,
        "Attempts refused with 429 by a per-IP quota or a per-account throttle, by scope.",
    ),
    (
        WRITER_JOBS,
        "Writes run by the SQLite writer thread: logins in progress, logins' sessions and codes, code redemptions, refresh rotations.",
    ),
    (
        WRITER_COMMITS,
        "Transactions the SQLite writer committed (fsynced when one of their grants issues tokens); jobs per commit is the group size.",
    ),
];

/// HELP texts of the latency histograms (seconds).
const HISTOGRAMS: &[(&str, &str)] = &[
    (
        HTTP_DURATION,
        "HTTP request latency by route template, method and status.",
    ),
    (
        UPSTREAM_DURATION,
        "Latency of calls to upstream providers, by upstream and operation.",
    ),
    (
        STORE_DURATION,
        "Latency of measured store operations (readiness ping, garbage collection, session count).",
    ),
];

struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The request series, by route template, then method and status.
    http: Cached<(&'static str, u16), (metrics::Counter, metrics::Histogram)>,
    /// The issued-token counters, by the JWT's header segment (one per
    /// signing key and type), then grant type and token name.
    tokens: Cached<(&'static str, &'static str), metrics::Counter>,
}

/// Registered handles of the series recorded on every request, so that
/// the hot path looks a series up by its label values (bounded sets, see
/// the module's note) instead of building, hashing and registering its key
/// at every record. A handle stays valid: this exporter never evicts idle
/// series.
struct Cached<S, H>(RwLock<HashMap<String, Vec<(S, H)>>>);

impl<S, H> Default for Cached<S, H> {
    fn default() -> Self {
        Cached(RwLock::new(HashMap::new()))
    }
}

impl<S: Copy + PartialEq, H: Clone> Cached<S, H> {
    /// Runs `f` on the handle of (`key`, `small`), registered by
    /// `register` the first time.
    fn with(&self, key: &str, small: S, register: impl FnOnce() -> H, f: impl FnOnce(&H)) {
        let find = |map: &HashMap<String, Vec<(S, H)>>| {
            map.get(key)
                .and_then(|v| v.iter().find(|(s, _)| *s == small))
                .map(|(_, h)| h.clone())
        };
        if let Some(handle) = self.0.read().ok().and_then(|map| find(&map)) {
            return f(&handle);
        }
        let handle = register();
        f(&handle);
        // A poisoned lock only costs the cache: the next record registers
        // the same series again.
        if let Ok(mut map) = self.0.write() {
            if find(&map).is_none() {
                map.entry(key.to_owned()).or_default().push((small, handle));
            }
        }
    }
}

/// One application's metrics. Cheap to clone; [`Metrics::default`] records
/// nothing (for engines and connectors built outside an application).
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Registry>>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Metrics").field(&self.0.is_some()).finish()
    }
}

impl Metrics {
    /// A fresh registry with every series described.
    pub fn new() -> Self {
        // Histograms (not the exporter's default summaries), so replicas
        // can be aggregated.
        let builder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let m = Metrics(Some(Arc::new(Registry {
            recorder,
            handle,
            http: Cached::default(),
            tokens: Cached::default(),
        })));
        m.record(|| {
            for (name, help) in COUNTERS {
                metrics::describe_counter!(*name, *help);
            }
            for (name, help) in HISTOGRAMS {
                metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help);
            }
            metrics::describe_gauge!(
                ACTIVE_SESSIONS,
                "Unexpired browser sessions in the store, counted at scrape time."
            );
        });
        m
    }

    /// Runs `f` with this application's recorder current (no-op when
    /// disabled). `f` is synchronous: the recorder is thread-local.
    fn record(&self, f: impl FnOnce()) {
        if let Some(r) = &self.0 {
            metrics::with_local_recorder(&r.recorder, f);
        }
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        self.0
            .as_ref()
            .map(|r| r.handle.render())
            .unwrap_or_default()
    }

    /// `method` is one of a fixed set ([`track`]), `route` a route
    /// template.
    pub fn http_request(
        &self,
        method: &'static str,
        route: &str,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let Some(r) = &self.0 else {
            return;
        };
        let register = || {
            let labels = [
                ("method", method.to_owned()),
                ("route", route.to_owned()),
                ("status", status.as_u16().to_string()),
            ];
            metrics::with_local_recorder(&r.recorder, || {
                (
                    metrics::counter!(HTTP_REQUESTS, &labels),
                    metrics::histogram!(HTTP_DURATION, &labels),
                )
            })
        };
        r.http
            .with(route, (method, status.as_u16()), register, |(n, d)| {
                n.increment(1);
                d.record(elapsed.as_secs_f64());
            });
    }

    pub fn login_started(&self, connector: &str) {
        let connector = connector.to_owned();
        self.record(|| metrics::counter!(LOGINS_STARTED, "connector" => connector).increment(1));
    }

    pub fn login_succeeded(&self, connector: &str) {
        let connector = connector.to_owned();
        self.record(|| metrics::counter!(LOGINS_SUCCEEDED, "connector" => connector).increment(1));
    }

    /// `reason` is a fixed name (a `FlowError` variant or an RFC 6749
    /// error code), never a message.
    pub fn login_failed(&self, connector: &str, reason: &'static str) {
        let connector = connector.to_owned();
        self.record(|| {
            metrics::counter!(LOGINS_FAILED, "connector" => connector, "reason" => reason)
                .increment(1)
        });
    }

    /// Counts the JWTs of a successful token response: the access token
    /// and, when present, the ID token, each with its header's `alg`.
    pub fn tokens_issued(&self, grant_type: &'static str, response: &Value) {
        let Some(r) = &self.0 else {
            return;
        };
        for token in ["access_token", "id_token"] {
            let Some(jwt) = response.get(token).and_then(Value::as_str) else {
                continue;
            };
            // The header segment names the key and `alg`: decoded once.
            let header = jwt.split('.').next().unwrap_or_default();
            let register = || {
                let alg = jsonwebtoken::decode_header(jwt)
                    .map(|h| format!("{:?}", h.alg))
                    .unwrap_or_else(|_| "unknown".into());
                let labels = [
                    ("grant_type", grant_type.to_owned()),
                    ("token", token.to_owned()),
                    ("alg", alg),
                ];
                metrics::with_local_recorder(&r.recorder, || {
                    metrics::counter!(TOKENS_ISSUED, &labels)
                })
            };
            r.tokens
                .with(header, (grant_type, token), register, |n| n.increment(1));
        }
    }

    pub fn refresh_reuse_detected(&self) {
        self.record(|| metrics::counter!(REFRESH_REUSE).increment(1));
    }

    /// Awaits a call to upstream `upstream` (a configured id), recording
    /// its latency and, when it fails, an error.
    pub async fn upstream<T, E>(
        &self,
        upstream: &str,
        operation: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = call.await;
        let elapsed = started.elapsed().as_secs_f64();
        let upstream = upstream.to_owned();
        let failed = result.is_err();
        self.record(|| {
            let labels = [("upstream", upstream), ("operation", operation.to_owned())];
            metrics::histogram!(UPSTREAM_DURATION, &labels).record(elapsed);
            if failed {
                metrics::counter!(UPSTREAM_ERRORS, &labels).increment(1);
            }
        });
        result
    }

    /// Awaits a store operation, recording its latency and its failure.
    pub async fn store<T, E>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = call.await;
        let elapsed = started.elapsed().as_secs_f64();
        let failed = result.is_err();
        self.record(|| {
            metrics::histogram!(STORE_DURATION, "operation" => operation).record(elapsed);
            if failed {
                metrics::counter!(STORE_ERRORS, "operation" => operation).increment(1);
            }
        });
        result
    }

    /// `scope` is a fixed name ([`crate::ratelimit::Scope::as_str`]).
    pub fn rate_limited(&self, scope: &'static str) {
        self.record(|| metrics::counter!(RATE_LIMITED, "scope" => scope).increment(1));
    }

    fn active_sessions(&self, count: u64) {
        self.record(|| metrics::gauge!(ACTIVE_SESSIONS).set(count as f64));
    }

    /// The SQLite writer's counters, read at scrape time.
    fn writer(&self, jobs: u64, commits: u64) {
        self.record(|| {
            metrics::counter!(WRITER_JOBS).absolute(jobs);
            metrics::counter!(WRITER_COMMITS).absolute(commits);
        });
    }
}

/// Middleware: counts and times every request under its route template.
pub async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Extension methods are one label value, so a client cannot mint series.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    metrics.http_request(method, route, response.status(), started.elapsed());
    response
}

/// `GET /metrics`: the active-session gauge is counted now and the SQLite
/// writer's counters read, then every series is rendered.
pub async fn scrape(State(st): State<AppState>) -> Response {
    let now = st.now();
    match st
        .metrics
        .store("count_sessions", st.store.count_sessions(now))
        .await
    {
        Ok(n) => st.metrics.active_sessions(n),
        Err(e) => tracing::warn!(error = %e, "active sessions not counted"),
    }
    if let Some((jobs, commits)) = st.store.writer_counts() {
        st.metrics.writer(jobs, commits);
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], st.metrics.render()).into_response()
}
