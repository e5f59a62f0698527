//! The benchmark cases, the table they fill, and the run that starts the
//! services, measures every case and stops them again.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use base64::Engine;
use serde_json::Value;

use adapter::provider::token::RefreshData;
use adapter::secret::{hash, random_token};
use adapter::store::{codec, RefreshRow, SessionRow, SqlStore, Store};

use crate::ceiling::{self, Ceiling};
use crate::flows;
use crate::lean::{Answer, LeanClient};
use crate::load::{self, Sample};
use crate::procstat;
use crate::services::{
    adapter_toml, free_port, service_env, upstream_toml, Binaries, Kind, Layout, PgSchema, Service,
    CLIENT_ID, CLIENT_SECRET,
};

/// How big a run is.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Requests per cheap case (token, userinfo, JWKS, …).
    pub requests: usize,
    /// Concurrent clients of the closed-loop cases.
    pub concurrency: usize,
    /// Full federated logins.
    pub logins: usize,
    /// Concurrent browsers of the login case.
    pub login_concurrency: usize,
    /// Concurrent clients of the second refresh case (grants committed
    /// together; see the SQLite grant writer).
    pub grant_concurrency: usize,
    /// Active-session counts of the memory case (ascending).
    pub sessions: Vec<usize>,
    /// How long each algorithm's one-core signing rate is measured.
    pub ceiling: Duration,
    /// Browsers logging in concurrently during the login flood.
    pub flood_browsers: usize,
    /// How often a case is repeated when other processes used the CPU
    /// during it (more than [`Scale::foreign_limit`] cores).
    pub repeats: usize,
    /// Foreign CPU (cores) above which a case counts as disturbed.
    pub foreign_limit: f64,
    /// Run only the cases whose name contains one of these (all when
    /// empty). A case that needs another one's figure (a case at 70% of
    /// peak needs its peak, the login flood the plain client-credentials
    /// throughput) runs that one too.
    pub only: Vec<String>,
}

impl Scale {
    /// Whether any of the cases `names` is selected by [`Scale::only`].
    pub fn wants(&self, names: &[&str]) -> bool {
        self.only.is_empty()
            || names
                .iter()
                .any(|n| self.only.iter().any(|o| n.contains(o.as_str())))
    }

    /// A few hundred requests per case: the smoke test's size.
    pub fn smoke() -> Scale {
        Scale {
            requests: 200,
            concurrency: 4,
            logins: 4,
            login_concurrency: 2,
            grant_concurrency: 8,
            sessions: vec![100, 300],
            ceiling: Duration::from_millis(200),
            flood_browsers: 2,
            repeats: 0,
            foreign_limit: 2.0,
            only: vec![],
        }
    }

    /// The published table's size.
    pub fn full() -> Scale {
        Scale {
            requests: 10_000,
            concurrency: 8,
            logins: 200,
            login_concurrency: 4,
            grant_concurrency: 32,
            sessions: vec![10_000, 100_000],
            ceiling: Duration::from_secs(2),
            flood_browsers: 8,
            repeats: 2,
            foreign_limit: 0.25,
            only: vec![],
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub case: String,
    pub requests: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU of the measured adapter process per request, µs.
    pub cpu_us: f64,
    /// CPU of the upstream process per request, µs (when it took part).
    pub upstream_cpu_us: Option<f64>,
    /// CPU of the bench process (the load generator, on the same cores)
    /// per request, µs.
    pub generator_cpu_us: f64,
    /// The adapter's resident memory after the case, KiB.
    pub rss_kib: u64,
    /// Throughput per adapter core as a fraction of the one-core signing
    /// rate (signatures per request counted).
    pub vs_ceiling: Option<f64>,
    /// CPU used meanwhile by processes other than the services and the
    /// bench, in cores.
    pub foreign_cores: f64,
    /// How many runs it took (repeats when the machine was loaded).
    pub runs: usize,
    /// Open loop only: the p99 of how late requests started after their
    /// scheduled time, ms (the generator's share of the p99).
    pub start_late_p99_ms: Option<f64>,
    /// Open loop only: the share of the case's requests that the adapter's
    /// own latency histogram (`/metrics`, from routing to the answer) put
    /// above 5 ms.
    pub adapter_over_5ms: Option<f64>,
    pub note: String,
}

impl Row {
    /// The Markdown table header.
    pub fn header() -> String {
        "| case | requests | errors | req/s | p50 ms | p99 ms | adapter CPU µs/req | \
         vs signing ceiling | upstream CPU µs/req | load generator CPU µs/req | adapter RSS MiB | \
         other load (cores) | note |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
            .into()
    }

    /// The Markdown table line.
    pub fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {} | {} | {:.0} | {:.1} | {:.2}{} | {} |",
            self.case,
            self.requests,
            self.errors,
            self.rps,
            self.p50_ms,
            self.p99_ms,
            self.cpu_us,
            self.vs_ceiling
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "–".into()),
            self.upstream_cpu_us
                .map(|u| format!("{u:.0}"))
                .unwrap_or_else(|| "–".into()),
            self.generator_cpu_us,
            self.rss_kib as f64 / 1024.0,
            self.foreign_cores,
            if self.runs > 1 {
                format!(" (run {})", self.runs)
            } else {
                String::new()
            },
            self.note,
        )
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub machine: Vec<String>,
    pub ceilings: Vec<Ceiling>,
    pub rows: Vec<Row>,
}

impl Report {
    /// The row of `case`.
    pub fn row(&self, case: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.case == case)
    }
}

type Op =
    Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

/// How a case is loaded.
#[derive(Clone, Copy)]
enum Mode {
    /// `concurrency` workers back to back: peak throughput.
    Closed { concurrency: usize },
    /// A fixed rate, at `route` (the route template whose latency
    /// histogram the adapter's `/metrics` is read for).
    Open { rate: f64, route: &'static str },
}

struct Case<'a> {
    name: String,
    target: &'a Service,
    upstream: Option<&'a Service>,
    count: usize,
    mode: Mode,
    /// Signatures of `alg` per request, for the ceiling ratio.
    signatures: Option<(&'a str, f64)>,
    repeatable: bool,
}

impl<'a> Case<'a> {
    /// A repeatable closed-loop case of `count` requests at `concurrency`
    /// against `target` alone, with no signing ceiling.
    fn closed(
        name: impl Into<String>,
        target: &'a Service,
        count: usize,
        concurrency: usize,
    ) -> Self {
        Case {
            name: name.into(),
            target,
            upstream: None,
            count,
            mode: Mode::Closed { concurrency },
            signatures: None,
            repeatable: true,
        }
    }
}

struct Runner {
    scale: Scale,
    /// Every service process alive (their CPU is not "foreign").
    live: Vec<u32>,
    ceilings: BTreeMap<String, Ceiling>,
    report: Report,
}

impl Runner {
    fn say(&self, line: &str) {
        println!("{line}");
    }

    async fn measure(&mut self, case: Case<'_>, op: Op) -> Row {
        let mut best: Option<Row> = None;
        let tries = if case.repeatable {
            1 + self.scale.repeats
        } else {
            1
        };
        for run in 1..=tries {
            let histogram0 = match &case.mode {
                Mode::Open { route, .. } => histogram_counts(&case.target.base, route).await.ok(),
                Mode::Closed { .. } => None,
            };
            let machine0 = procstat::machine_busy_us().unwrap_or(0);
            let self0 = procstat::self_cpu_us().unwrap_or(0);
            let live0: u64 = self
                .live
                .iter()
                .map(|p| procstat::cpu_us(*p).unwrap_or(0))
                .sum();
            let t0 = case.target.cpu_us();
            let u0 = case.upstream.map(|u| u.cpu_us());
            let o = op.clone();
            let sample: Sample = match case.mode {
                Mode::Closed { concurrency } => {
                    load::closed_loop(case.count, concurrency, move |i| o(i)).await
                }
                Mode::Open { rate, .. } => {
                    load::open_loop(case.count, rate, 512, move |i| o(i)).await
                }
            };
            let t1 = case.target.cpu_us();
            let u1 = case.upstream.map(|u| u.cpu_us());
            let live1: u64 = self
                .live
                .iter()
                .map(|p| procstat::cpu_us(*p).unwrap_or(0))
                .sum();
            let self1 = procstat::self_cpu_us().unwrap_or(0);
            let machine1 = procstat::machine_busy_us().unwrap_or(0);
            let ours = (live1.saturating_sub(live0)) + (self1.saturating_sub(self0));
            let foreign = machine1.saturating_sub(machine0).saturating_sub(ours) as f64
                / sample.elapsed.as_secs_f64().max(1e-9)
                / 1e6;
            let ok = sample.latencies.len().max(1) as f64;
            let cpu_us = t1.saturating_sub(t0) as f64 / ok;
            // `/proc` counts CPU in clock ticks (10 ms): below five ticks the
            // ratio would be noise (or a division by zero), so none is given.
            let tick_us = 1_000_000 / procstat::clock_ticks();
            let resolved = t1.saturating_sub(t0) >= 5 * tick_us;
            let vs_ceiling = case.signatures.filter(|_| resolved).and_then(|(alg, n)| {
                self.ceilings
                    .get(alg)
                    .map(|c| n * c.us_per_signature / cpu_us.max(1e-9))
            });
            let row = Row {
                case: case.name.clone(),
                requests: sample.count(),
                errors: sample.errors,
                first_error: sample.first_error.clone(),
                rps: sample.rps(),
                p50_ms: sample.quantile_ms(0.5),
                p99_ms: sample.quantile_ms(0.99),
                cpu_us,
                upstream_cpu_us: match (u0, u1) {
                    (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / ok),
                    _ => None,
                },
                generator_cpu_us: self1.saturating_sub(self0) as f64 / ok,
                rss_kib: case.target.rss_kib(),
                vs_ceiling,
                foreign_cores: (foreign * 100.0).round() / 100.0,
                runs: run,
                start_late_p99_ms: sample.late_quantile_ms(0.99),
                adapter_over_5ms: match (&case.mode, histogram0) {
                    (Mode::Open { route, .. }, Some(h0)) => {
                        histogram_counts(&case.target.base, route)
                            .await
                            .ok()
                            .and_then(|h1| h1.share_over(&h0))
                    }
                    _ => None,
                },
                note: String::new(),
            };
            let disturbed = row.foreign_cores > self.scale.foreign_limit;
            if let Some(e) = &row.first_error {
                self.say(&format!("  {}: first error: {e}", row.case));
            }
            let better = best
                .as_ref()
                .is_none_or(|b| row.foreign_cores < b.foreign_cores);
            if better {
                best = Some(row);
            }
            if !disturbed {
                break;
            }
            if run < tries {
                self.say(&format!(
                    "  {}: other processes used {:.2} cores meanwhile; repeating",
                    case.name, foreign
                ));
            }
        }
        best.unwrap_or_default()
    }

    fn push(&mut self, mut row: Row, note: impl Into<String>) -> Row {
        row.note = note.into();
        self.say(&row.line());
        self.report.rows.push(row.clone());
        row
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn base64_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// Runs every case at `scale` with the service binaries `bins`, printing
/// the table as it fills; returns it.
pub async fn run(bins: &Binaries, scale: Scale) -> anyhow::Result<Report> {
    let mut r = Runner {
        scale: scale.clone(),
        live: vec![],
        ceilings: BTreeMap::new(),
        report: Report::default(),
    };
    let machine = vec![
        format!(
            "cores (nproc): {}, CPU: {}",
            procstat::cores(),
            procstat::cpu_model()
        ),
        format!("load average at start: {}", procstat::loadavg()),
        format!(
            "loopback HTTP/1.1 without TLS; services are separate processes; {} closed-loop clients",
            scale.concurrency
        ),
    ];
    for m in &machine {
        r.say(m);
    }
    r.report.machine = machine;

    // The ceiling, measured first, on one thread.
    r.say("\none-core signing rate (aws-lc-rs, key parsed once, typical access-token claims):");
    for alg in ceiling::ALGS {
        let d = scale.ceiling;
        let c = tokio::task::spawn_blocking(move || ceiling::measure(alg, d)).await??;
        r.say(&format!(
            "  {alg:<6} {:>8.0} signatures per core-second ({:.1} µs each)",
            c.per_core_second, c.us_per_signature
        ));
        r.ceilings.insert(alg.to_string(), c.clone());
        r.report.ceilings.push(c);
    }

    let dir = tempfile::tempdir()?;
    let keys_key = base64_key();
    let env = service_env(&keys_key);
    let layout = Layout {
        upstream_port: free_port()?,
        adapter_ports: (0..6).map(|_| free_port()).collect::<Result<_, _>>()?,
    };
    let pg = PgSchema::create().await?;
    let result = run_cases(&mut r, bins, dir.path(), &layout, &env, &pg.url).await;
    if std::env::var_os("BENCH_KEEP_LOGS").is_some() {
        // The services' configurations and logs, for a look afterwards.
        r.say(&format!("logs kept in {}", dir.keep().display()));
    }
    let dropped = pg.drop_schema().await;
    result?;
    dropped?;
    Ok(r.report)
}

async fn run_cases(
    r: &mut Runner,
    bins: &Binaries,
    dir: &Path,
    layout: &Layout,
    env: &[(&str, String)],
    pg_url: &str,
) -> anyhow::Result<()> {
    let scale = r.scale.clone();
    let n = scale.requests;
    let conc = scale.concurrency;
    let upstream = Service::start(
        "upstream",
        Kind::Upstream,
        bins,
        dir,
        layout.upstream_port,
        &upstream_toml(layout, dir)?,
        env,
    )
    .await?;
    r.live.push(upstream.pid);
    let sqlite = |name: &str| format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let ports = &layout.adapter_ports;
    let mut adapters: BTreeMap<&str, Service> = BTreeMap::new();
    for (i, alg) in ceiling::ALGS.iter().enumerate() {
        let name = format!("adapter-{}", alg.to_lowercase());
        let s = Service::start(
            &name,
            Kind::Adapter,
            bins,
            dir,
            ports[i],
            &adapter_toml(layout, ports[i], alg, &sqlite(&name)),
            env,
        )
        .await?;
        r.live.push(s.pid);
        adapters.insert(alg, s);
    }
    let pg_adapter = Service::start(
        "adapter-pg",
        Kind::Adapter,
        bins,
        dir,
        ports[3],
        &adapter_toml(layout, ports[3], "ES256", pg_url),
        env,
    )
    .await?;
    r.live.push(pg_adapter.pid);
    let es = adapters.get("ES256").context("ES256 adapter")?;
    let rp = flows::rp_client()?;
    r.say(&format!("\n{}", Row::header()));

    // client_credentials per algorithm (RFC 6749 §4.4): one signature each.
    const CC_70: &str = "client_credentials ES256 at 70% of peak";
    const FLOOD: [&str; 3] = [
        "local-connector process: client_credentials RS256, no flood",
        "local-connector process: client_credentials RS256, login flood",
        "adapter: client_credentials ES256, login flood at the upstream",
    ];
    let mut cc_peak = 0.0;
    for alg in ceiling::ALGS {
        let name = format!("client_credentials {alg}");
        let needed = alg == "ES256" && (scale.wants(&[CC_70]) || scale.wants(&FLOOD));
        if !scale.wants(&[&name]) && !needed {
            continue;
        }
        let svc = adapters.get(alg).context("adapter")?;
        let row = r
            .measure(
                Case {
                    name,
                    target: svc,
                    upstream: None,
                    count: if alg == "RS256" { n / 2 } else { n },
                    mode: Mode::Closed { concurrency: conc },
                    signatures: Some((alg, 1.0)),
                    repeatable: true,
                },
                cc_op(&svc.base)?,
            )
            .await;
        if alg == "ES256" {
            cc_peak = row.rps;
        }
        r.push(row, "1 signature per request");
    }
    if scale.wants(&[CC_70]) {
        let row = r
            .measure(
                Case {
                    name: "client_credentials ES256 at 70% of peak".into(),
                    target: es,
                    upstream: None,
                    count: n,
                    mode: Mode::Open {
                        rate: 0.7 * cc_peak,
                        route: adapter::paths::TOKEN,
                    },
                    signatures: Some(("ES256", 1.0)),
                    repeatable: true,
                },
                cc_op(&es.base)?,
            )
            .await;
        let rate = 0.7 * cc_peak;
        let note = open_loop_note(rate, &row);
        r.push(row, note);
    }

    // Authorization-code redemption alone: codes made beforehand by a
    // browser with an adapter session.
    let browser = flows::browser()?;
    let first = flows::login(&browser, &rp, &es.base).await?;
    // Code redemption on each store. Codes come from a browser with a
    // session at that adapter (SSO, no upstream login per code); each
    // adapter gets a browser of its own, as cookies do not tell ports apart.
    for (label, svc) in [("SQLite", es), ("PostgreSQL", &pg_adapter)] {
        let name = format!("authorization_code redemption ES256 {label}");
        if !scale.wants(&[&name]) {
            continue;
        }
        let browser = if label == "SQLite" {
            browser.clone()
        } else {
            let b = flows::browser()?;
            flows::login(&b, &rp, &svc.base).await?;
            b
        };
        let codes_n = n.min(3000);
        let codes = make_codes(&browser, &svc.base, codes_n, conc).await?;
        let codes = Arc::new(codes);
        let (rp2, base) = (rp.clone(), svc.base.clone());
        let row = r
            .measure(
                Case {
                    name,
                    target: svc,
                    upstream: None,
                    count: codes_n,
                    mode: Mode::Closed { concurrency: conc },
                    signatures: Some(("ES256", 2.0)),
                    repeatable: false,
                },
                op(move |i| {
                    let (rp, base, codes) = (rp2.clone(), base.clone(), codes.clone());
                    async move {
                        let (code, verifier) = &codes[i];
                        flows::redeem(&rp, &base, code, verifier).await.map(|_| ())
                    }
                }),
            )
            .await;
        r.push(
            row,
            "ID + access token (2 signatures), code consumed and refresh token stored in one transaction",
        );
    }

    // Refresh with rotation (RFC 9700 §4.14.2) on SQLite and PostgreSQL,
    // with the closed loop's clients and with `grant_concurrency` of them:
    // the SQLite writer commits the grants queued together in one
    // transaction with one `fsync`, so its throughput grows with them.
    let grant_conc = scale.grant_concurrency;
    let mut cases = Vec::new();
    for (label, svc) in [("SQLite", es), ("PostgreSQL", &pg_adapter)] {
        cases.push((label, svc, conc));
        if grant_conc != conc {
            cases.push((label, svc, grant_conc));
        }
    }
    for (label, svc, clients) in cases {
        let name = if clients == conc {
            format!("refresh_token rotation ES256 {label}")
        } else {
            format!("refresh_token rotation ES256 {label}, {clients} clients")
        };
        if !scale.wants(&[&name]) {
            continue;
        }
        let chains = flows::refresh_tokens(&rp, &svc.base, clients).await?;
        let row = r
            .measure(
                Case {
                    name,
                    target: svc,
                    upstream: None,
                    count: n,
                    mode: Mode::Closed {
                        concurrency: clients,
                    },
                    signatures: Some(("ES256", 2.0)),
                    repeatable: true,
                },
                refresh_op(&svc.base, chains)?,
            )
            .await;
        let note = if label == "SQLite" {
            "ID + access token; old token consumed and new one inserted, committed with fsync (group commit) before the answer"
        } else {
            "same; the database's own CPU is in the PostgreSQL server, not in the adapter's column"
        };
        r.push(row, note);
    }

    // The full federated login: adapter → upstream login form (argon2id)
    // → adapter callback → code → token, each with a new browser. Then
    // the same login for a user whose upstream hash has argon2id's least
    // cost: the browsers are no longer paced by the upstream's hashing
    // (what that pacing adds to the adapter's CPU per login).
    let logins = [
        (
            "full federated login ES256",
            flows::DEMO_USER,
            "new browser: every redirect through both services, then the code redemption; upstream CPU includes the argon2id check",
        ),
        (
            "full federated login ES256, least-cost upstream hash",
            flows::QUICK_USER,
            "as above for a user whose upstream hash is argon2id at 8 KiB and one pass",
        ),
    ];
    for (name, user, note) in logins {
        if !scale.wants(&[name]) {
            continue;
        }
        let (rp2, base) = (rp.clone(), es.base.clone());
        let row = r
            .measure(
                Case {
                    name: name.into(),
                    target: es,
                    upstream: Some(&upstream),
                    count: scale.logins,
                    mode: Mode::Closed {
                        concurrency: scale.login_concurrency,
                    },
                    signatures: None,
                    repeatable: true,
                },
                op(move |_| {
                    let (rp, base) = (rp2.clone(), base.clone());
                    async move {
                        flows::login_as(&flows::browser()?, &rp, &base, user)
                            .await
                            .map(|_| ())
                    }
                }),
            )
            .await;
        r.push(row, note);
    }

    // Userinfo, introspection, discovery, JWKS.
    let access = first["access_token"]
        .as_str()
        .context("access_token")?
        .to_string();
    const USERINFO_70: &str = "userinfo at 70% of peak";
    if scale.wants(&["userinfo", USERINFO_70]) {
        let bearer = format!("Bearer {access}");
        let userinfo = get_op(
            &es.base,
            adapter::paths::USERINFO,
            &[("authorization", &bearer)],
        )?;
        let peak = r
            .measure(Case::closed("userinfo", es, n, conc), userinfo.clone())
            .await;
        let rate = 0.7 * peak.rps;
        r.push(peak, "JWT verification + revocation check + claims");
        if scale.wants(&[USERINFO_70]) {
            let row = r
                .measure(
                    Case {
                        name: USERINFO_70.into(),
                        target: es,
                        upstream: None,
                        count: n,
                        mode: Mode::Open {
                            rate,
                            route: adapter::paths::USERINFO,
                        },
                        signatures: None,
                        repeatable: true,
                    },
                    userinfo,
                )
                .await;
            let note = open_loop_note(rate, &row);
            r.push(row, note);
        }
    }

    if scale.wants(&["introspection"]) {
        let access = access.clone();
        let introspect = {
            let (rp, url) = (
                rp.clone(),
                format!("{}{}", es.base, adapter::paths::INTROSPECT),
            );
            op(move |_| {
                let (rp, url, access) = (rp.clone(), url.clone(), access.clone());
                async move {
                    let v: Value = rp
                        .post(&url)
                        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                        .form(&[("token", access.as_str())])
                        .send()
                        .await?
                        .json()
                        .await?;
                    if v["active"] != Value::Bool(true) {
                        bail!("introspection: {v}");
                    }
                    Ok(())
                }
            })
        };
        let row = r
            .measure(Case::closed("introspection", es, n, conc), introspect)
            .await;
        r.push(row, "RFC 7662, client authenticated");
    }

    const JWKS_70: &str = "JWKS at 70% of peak";
    for (name, path) in [
        ("discovery", adapter::paths::OPENID_CONFIGURATION),
        ("JWKS", adapter::paths::JWKS),
    ] {
        let wanted = if name == "JWKS" {
            vec![name, JWKS_70]
        } else {
            vec![name]
        };
        if !scale.wants(&wanted) {
            continue;
        }
        let get = get_op(&es.base, path, &[])?;
        let peak = r
            .measure(Case::closed(name, es, n, conc), get.clone())
            .await;
        let rate = 0.7 * peak.rps;
        r.push(peak, "");
        if name == "JWKS" && scale.wants(&[JWKS_70]) {
            let row = r
                .measure(
                    Case {
                        name: JWKS_70.into(),
                        target: es,
                        upstream: None,
                        count: n,
                        mode: Mode::Open {
                            rate,
                            route: adapter::paths::JWKS,
                        },
                        signatures: None,
                        repeatable: true,
                    },
                    get,
                )
                .await;
            let note = open_loop_note(rate, &row);
            r.push(row, note);
        }
    }

    if scale.wants(&FLOOD) {
        login_flood(r, &upstream, es, ports[0]).await?;
    }
    let memory_cases: Vec<String> = ["adapter idle", "warm-up: client_credentials ES256"]
        .into_iter()
        .map(String::from)
        .chain(
            scale
                .sessions
                .iter()
                .map(|s| format!("{s} active sessions: refresh each new one")),
        )
        .collect();
    if scale.wants(&memory_cases.iter().map(String::as_str).collect::<Vec<_>>()) {
        memory(r, bins, dir, layout, env, &rp, ports[4]).await?;
    }

    for (_, s) in adapters {
        s.stop().await;
    }
    pg_adapter.stop().await;
    upstream.stop().await;
    Ok(())
}

/// The lean client of `base`'s token endpoint, as the bench client.
fn token_client(base: &str) -> anyhow::Result<Arc<LeanClient>> {
    Ok(Arc::new(LeanClient::new(
        base,
        adapter::paths::TOKEN,
        CLIENT_ID,
        CLIENT_SECRET,
    )?))
}

/// Client-credentials grants (RFC 6749 §4.4) over the lean client.
fn cc_op(base: &str) -> anyhow::Result<Op> {
    let client = token_client(base)?;
    Ok(op(move |_| {
        let client = client.clone();
        async move {
            let answer = client.post("grant_type=client_credentials").await?;
            token_answer(&answer).map(|_| ())
        }
    }))
}

/// The token answer's fields the load reads; any other answer than a
/// 200 with an access token is an error.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    /// Required, never read: an answer without it fails to parse.
    #[serde(rename = "access_token")]
    _access_token: serde::de::IgnoredAny,
    refresh_token: Option<String>,
}

/// Redeems `refresh_token` (RFC 6749 §6) through the lean client.
async fn refresh(client: &LeanClient, refresh_token: &str) -> anyhow::Result<TokenAnswer> {
    // Refresh tokens are URL-safe (base64url): no encoding needed.
    let answer = client
        .post(&format!(
            "grant_type=refresh_token&refresh_token={refresh_token}"
        ))
        .await?;
    token_answer(&answer)
}

fn token_answer(answer: &Answer) -> anyhow::Result<TokenAnswer> {
    if answer.status != 200 {
        bail!(
            "token endpoint {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    serde_json::from_slice(&answer.body).context("a token answer without access_token")
}

/// `GET`s `path` of `base` through the lean client; any answer but a 200
/// is an error.
fn get_op(base: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Op> {
    let client = Arc::new(LeanClient::get(base, path, headers)?);
    let path = path.to_string();
    Ok(op(move |_| {
        let (client, path) = (client.clone(), path.clone());
        async move {
            let answer = client.fetch().await?;
            if answer.status != 200 {
                bail!("{path}: {}", answer.status);
            }
            Ok(())
        }
    }))
}

/// Each worker `w` rotates chain `w` (worker `w` runs the i with
/// `i % chains == w`, one at a time).
fn refresh_op(base: &str, chains: Vec<String>) -> anyhow::Result<Op> {
    let n = chains.len();
    let chains: Arc<Vec<Mutex<String>>> = Arc::new(chains.into_iter().map(Mutex::new).collect());
    let client = token_client(base)?;
    Ok(op(move |i| {
        let (client, chains) = (client.clone(), chains.clone());
        async move {
            let chain = &chains[i % n];
            let current = chain
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .clone();
            let next = refresh(&client, &current)
                .await?
                .refresh_token
                .context("no rotated refresh_token")?;
            *chain.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = next;
            Ok(())
        }
    }))
}

async fn make_codes(
    browser: &reqwest::Client,
    base: &str,
    n: usize,
    conc: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let out = Arc::new(Mutex::new(vec![(String::new(), String::new()); n]));
    let (b, base2, out2) = (browser.clone(), base.to_string(), out.clone());
    let s = load::closed_loop(n, conc, move |i| {
        let (b, base, out) = (b.clone(), base2.clone(), out2.clone());
        async move {
            let c = flows::adapter_code(&b, &base).await?;
            out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[i] = c;
            Ok(())
        }
    })
    .await;
    if let Some(e) = s.first_error {
        bail!("making codes: {e}");
    }
    let v = out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    Ok(v)
}

/// Many concurrent password logins at the upstream (its local connector
/// hashes with argon2id) while the token endpoint is measured: the
/// upstream's own (same process as the hashing) and the adapter's.
async fn login_flood(
    r: &mut Runner,
    upstream: &Service,
    es: &Service,
    adapter_port: u16,
) -> anyhow::Result<()> {
    let n = r.scale.requests;
    let conc = r.scale.concurrency;
    let case = |name: &str, target| Case {
        name: name.into(),
        target,
        upstream: None,
        count: n,
        mode: Mode::Closed { concurrency: conc },
        signatures: Some(("RS256", 1.0)),
        repeatable: false,
    };
    let base_up = r
        .measure(
            case(
                "local-connector process: client_credentials RS256, no flood",
                upstream,
            ),
            cc_op(&upstream.base)?,
        )
        .await;
    let base_up_rps = base_up.rps;
    r.push(
        base_up,
        "the upstream test server is the adapter engine with the local connector",
    );
    let base_ad_rps = r
        .report
        .row("client_credentials ES256")
        .map(|x| x.rps)
        .unwrap_or(0.0);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..r.scale.flood_browsers {
        let (stop, done, failed, base) = (
            stop.clone(),
            done.clone(),
            failed.clone(),
            upstream.base.clone(),
        );
        flood.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match flows::password_login(&base, adapter_port).await {
                    Ok(()) => done.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                };
            }
        }));
    }
    // Let the flood fill the hashing queue first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let up = r
        .measure(
            case(
                "local-connector process: client_credentials RS256, login flood",
                upstream,
            ),
            cc_op(&upstream.base)?,
        )
        .await;
    let ratio = up.rps / base_up_rps.max(1e-9);
    // This process also hashes the flood's passwords: its CPU per token
    // request means nothing here.
    let up = Row {
        vs_ceiling: None,
        ..up
    };
    r.push(
        up,
        format!(
            "{} browsers logging in meanwhile (CPU column includes their argon2id); \
             {ratio:.2} of the throughput without the flood",
            r.scale.flood_browsers
        ),
    );
    let mut ad_case = case(
        "adapter: client_credentials ES256, login flood at the upstream",
        es,
    );
    ad_case.signatures = Some(("ES256", 1.0));
    let ad = r.measure(ad_case, cc_op(&es.base)?).await;
    let ratio = ad.rps / base_ad_rps.max(1e-9);
    r.push(
        ad,
        format!("{ratio:.2} of the throughput without the flood (other process, same 2 cores)"),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flood {
        let _ = f.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (ok, bad) = (
        done.load(std::sync::atomic::Ordering::Relaxed),
        failed.load(std::sync::atomic::Ordering::Relaxed),
    );
    r.say(&format!(
        "  login flood: {ok} password logins ({:.1}/s), {bad} failed",
        ok as f64 / secs
    ));
    if ok == 0 || bad > 0 {
        bail!("the login flood logged nobody in, or failed {bad} times");
    }
    Ok(())
}

/// Resident memory of an adapter idle, and with many active sessions, each
/// with a refresh token. Sessions are made by copying the rows of one real
/// login (new ids, cookie hashes, refresh tokens and `sid`s) through the
/// store API into the adapter's SQLite file, then every copied refresh token
/// is redeemed over HTTP, so the adapter has served each session.
async fn memory(
    r: &mut Runner,
    bins: &Binaries,
    dir: &Path,
    layout: &Layout,
    env: &[(&str, String)],
    rp: &reqwest::Client,
    port: u16,
) -> anyhow::Result<()> {
    let db = dir.join("adapter-mem.db");
    let url = format!("sqlite://{}", db.display());
    let svc = Service::start(
        "adapter-mem",
        Kind::Adapter,
        bins,
        dir,
        port,
        &adapter_toml(layout, port, "ES256", &url),
        env,
    )
    .await?;
    r.live.push(svc.pid);
    let idle = svc.rss_kib();
    r.say(&format!(
        "  adapter RSS idle (ready, no request served): {:.1} MiB",
        idle as f64 / 1024.0
    ));
    let mut row = Row {
        case: "adapter idle".into(),
        rss_kib: idle,
        runs: 1,
        ..Row::default()
    };
    row.note = "after /healthz/ready answered, before any other request".into();
    r.say(&row.line());
    r.report.rows.push(row);

    // One real login gives the template rows.
    let b = flows::browser()?;
    let t = flows::login(&b, rp, &svc.base).await?;
    let rt = t["refresh_token"].as_str().context("refresh_token")?;
    let store = SqlStore::connect(&url, 4).await?;
    let status = store
        .refresh_status(&hash(rt))
        .await?
        .context("template refresh row")?;
    let data: RefreshData = codec::decode(&status.row.data)?;
    let session = store
        .session_by_sid(&data.sid, now())
        .await?
        .context("template session row")?;
    let warm = r
        .measure(
            Case {
                name: "warm-up: client_credentials ES256".into(),
                target: &svc,
                upstream: None,
                count: 200,
                mode: Mode::Closed {
                    concurrency: r.scale.concurrency,
                },
                signatures: None,
                repeatable: false,
            },
            cc_op(&svc.base)?,
        )
        .await;
    let warm_rss = warm.rss_kib;
    r.push(warm, "RSS after one login and 200 token requests");

    let mut have = 0usize;
    let size0 = store_bytes(&store, &db).await?;
    for target in r.scale.sessions.clone() {
        let add = target.saturating_sub(have);
        let tokens = insert_sessions(&store, &session, &status.row, &data, add).await?;
        have = target;
        let size = store_bytes(&store, &db).await?;
        let per_session = (size.saturating_sub(size0)) as f64 / have as f64;
        let tokens = Arc::new(tokens);
        let client = token_client(&svc.base)?;
        let row = r
            .measure(
                Case {
                    name: format!("{have} active sessions: refresh each new one"),
                    target: &svc,
                    upstream: None,
                    count: add,
                    mode: Mode::Closed {
                        concurrency: r.scale.concurrency,
                    },
                    signatures: Some(("ES256", 2.0)),
                    repeatable: false,
                },
                op(move |i| {
                    let (client, tokens) = (client.clone(), tokens.clone());
                    async move { refresh(&client, &tokens[i]).await.map(|_| ()) }
                }),
            )
            .await;
        let rss_per = (row.rss_kib.saturating_sub(warm_rss)) as f64 * 1024.0 / have as f64;
        // The write-ahead log as the adapter left it (its own checkpoints
        // only), before the bench checkpoints it for the next size reading.
        let wal_mib = wal_bytes(&db) as f64 / (1024.0 * 1024.0);
        r.push(
            row,
            format!(
                "store: {per_session:.0} bytes/session (session + refresh row); RSS growth over warm: \
                 {rss_per:.0} bytes/session; WAL after serving: {wal_mib:.0} MiB"
            ),
        );
    }
    store.pool().close().await;
    svc.stop().await;
    Ok(())
}

/// Bytes of the SQLite write-ahead log of `db` now.
fn wal_bytes(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(Path::new(&wal))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Bytes of the SQLite database once its WAL is checkpointed.
async fn store_bytes(store: &SqlStore, db: &Path) -> anyhow::Result<u64> {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(store.pool())
        .await?;
    let len = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    Ok(len + wal_bytes(db))
}

/// Inserts `n` copies of a real session and its refresh token, each with
/// its own cookie hash, `sid`, family and token; returns the tokens.
async fn insert_sessions(
    store: &SqlStore,
    session: &SessionRow,
    refresh: &RefreshRow,
    data: &RefreshData,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let now = now();
    let mut tasks = Vec::new();
    let workers = 4;
    for w in 0..workers {
        let (store, session, refresh, data) = (
            store.clone(),
            session.clone(),
            refresh.clone(),
            data.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            for _ in (w..n).step_by(workers) {
                let sid = random_token();
                store
                    .insert_session(&SessionRow {
                        id_hash: hash(&random_token()),
                        sid: sid.clone(),
                        created_at: now,
                        auth_time: now,
                        ..session.clone()
                    })
                    .await?;
                store
                    .add_session_client(&sid, &refresh.client_id, now, session.expires_at)
                    .await?;
                let token = random_token();
                let d = RefreshData {
                    sid: sid.clone(),
                    access_jti: random_token(),
                    ..data.clone()
                };
                store
                    .insert_refresh(&RefreshRow {
                        token_hash: hash(&token),
                        family_id: random_token(),
                        sid: Some(sid),
                        data: codec::encode(&d)?,
                        issued_at: now,
                        ..refresh.clone()
                    })
                    .await?;
                tokens.push(token);
            }
            anyhow::Ok(tokens)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// The note of an open-loop row: its rate, how late its requests started
/// at p99 (the part of the p99 spent before the request left the
/// generator), and the share the adapter itself took over 5 ms for.
fn open_loop_note(rate: f64, row: &Row) -> String {
    let mut note = format!("open loop at {rate:.0}/s");
    if let Some(late) = row.start_late_p99_ms {
        note.push_str(&format!("; p99 of the start's lateness {late:.2} ms"));
    }
    if let Some(over) = row.adapter_over_5ms {
        note.push_str(&format!(
            "; over 5 ms in the adapter's own histogram: {:.2}%",
            over * 100.0
        ));
    }
    note
}

/// Counts of one route's latency histogram in the adapter's `/metrics`,
/// summed over its methods and statuses.
#[derive(Debug, Clone, Copy, PartialEq)]
struct HistogramCounts {
    /// Requests at or under 5 ms.
    within_5ms: f64,
    /// All requests.
    all: f64,
}

impl HistogramCounts {
    /// The share over 5 ms of the requests counted since `before`.
    fn share_over(&self, before: &HistogramCounts) -> Option<f64> {
        let all = self.all - before.all;
        (all > 0.0).then(|| 1.0 - (self.within_5ms - before.within_5ms) / all)
    }
}

/// Reads `route`'s counts from the Prometheus text at `base`/metrics.
async fn histogram_counts(base: &str, route: &str) -> anyhow::Result<HistogramCounts> {
    let text = reqwest::get(format!("{base}{}", adapter::paths::METRICS))
        .await?
        .error_for_status()?
        .text()
        .await?;
    parse_histogram(&text, route)
}

/// `route`'s counts in the Prometheus text `text`; an error when the
/// histogram has no 5 ms bucket (every request would count as over it).
fn parse_histogram(text: &str, route: &str) -> anyhow::Result<HistogramCounts> {
    let prefix = format!("{}_bucket{{", adapter::metrics::HTTP_DURATION);
    let route_label = format!("route=\"{route}\"");
    let mut counts = HistogramCounts {
        within_5ms: 0.0,
        all: 0.0,
    };
    let mut bucket_5ms = false;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.split(',').any(|l| l == route_label) {
            continue;
        }
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        if labels.split(',').any(|l| l == "le=\"0.005\"") {
            counts.within_5ms += value;
            bucket_5ms = true;
        } else if labels.split(',').any(|l| l == "le=\"+Inf\"") {
            counts.all += value;
        }
    }
    anyhow::ensure!(
        bucket_5ms || counts.all == 0.0,
        "{} has no 5 ms bucket",
        adapter::metrics::HTTP_DURATION
    );
    Ok(counts)
}

#[cfg(test)]
mod tests {
    /// One route's buckets are summed over its statuses; other routes and
    /// other buckets are left out.
    #[test]
    fn the_adapter_histogram_is_read_per_route() {
        let text = "\
# TYPE adapter_http_request_duration_seconds histogram
adapter_http_request_duration_seconds_bucket{method=\"POST\",route=\"/oauth/token\",status=\"200\",le=\"0.001\"} 5
adapter_http_request_duration_seconds_bucket{method=\"POST\",route=\"/oauth/token\",status=\"200\",le=\"0.005\"} 90
adapter_http_request_duration_seconds_bucket{method=\"POST\",route=\"/oauth/token\",status=\"200\",le=\"+Inf\"} 100
adapter_http_request_duration_seconds_bucket{method=\"POST\",route=\"/oauth/token\",status=\"400\",le=\"0.005\"} 10
adapter_http_request_duration_seconds_bucket{method=\"POST\",route=\"/oauth/token\",status=\"400\",le=\"+Inf\"} 10
adapter_http_request_duration_seconds_bucket{method=\"GET\",route=\"/userinfo\",status=\"200\",le=\"+Inf\"} 7
adapter_http_request_duration_seconds_count{method=\"POST\",route=\"/oauth/token\",status=\"200\"} 100
";
        let token = super::parse_histogram(text, "/oauth/token").unwrap();
        assert_eq!(
            token,
            super::HistogramCounts {
                within_5ms: 100.0,
                all: 110.0
            }
        );
        // 50 requests since, 10 of them over 5 ms.
        let before = super::HistogramCounts {
            within_5ms: 60.0,
            all: 60.0,
        };
        let over = token.share_over(&before).unwrap();
        assert!((over - 0.2).abs() < 1e-9, "{over}");
        assert_eq!(token.share_over(&token), None);
        // Without the 5 ms bucket every request would look slow.
        let userinfo = super::parse_histogram(text, "/userinfo");
        assert!(userinfo.is_err(), "{userinfo:?}");
    }

    use super::Scale;

    #[test]
    fn only_selects_cases_by_substring() {
        let mut s = Scale::smoke();
        assert!(s.wants(&["JWKS"]), "no filter: every case");
        s.only = vec!["refresh_token".into(), "JWKS".into()];
        assert!(s.wants(&["refresh_token rotation ES256 SQLite"]));
        assert!(s.wants(&["JWKS at 70% of peak"]));
        assert!(s.wants(&["discovery", "JWKS"]), "any of the names");
        assert!(!s.wants(&["authorization_code redemption ES256"]));
        assert!(!s.wants(&[]));
    }
}
