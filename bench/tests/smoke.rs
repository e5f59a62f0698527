//! The benchmark at smoke size (a few hundred requests per case, a few
//! hundred sessions): every case runs against real service processes and
//! must produce sane figures, so the bench cannot rot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use bench::run::{run, Scale};
use bench::services::Binaries;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_produces_sane_figures() {
    // The bench binary runs the services too (`BENCH_SERVE`).
    let bins = Binaries {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_bench")),
    };
    let report = run(&bins, Scale::smoke()).await.unwrap();

    for alg in ["RS256", "ES256", "EdDSA"] {
        let c = report.ceilings.iter().find(|c| c.alg == alg).unwrap();
        assert!(c.per_core_second > 0.0, "{c:?}");
    }
    let expected = [
        "client_credentials RS256",
        "client_credentials ES256",
        "client_credentials EdDSA",
        "client_credentials ES256 at 70% of peak",
        "authorization_code redemption ES256 SQLite",
        "authorization_code redemption ES256 PostgreSQL",
        "refresh_token rotation ES256 SQLite",
        "refresh_token rotation ES256 SQLite, 8 clients",
        "refresh_token rotation ES256 PostgreSQL",
        "refresh_token rotation ES256 PostgreSQL, 8 clients",
        "full federated login ES256",
        "full federated login ES256, least-cost upstream hash",
        "userinfo",
        "userinfo at 70% of peak",
        "introspection",
        "discovery",
        "JWKS",
        "JWKS at 70% of peak",
        "local-connector process: client_credentials RS256, no flood",
        "local-connector process: client_credentials RS256, login flood",
        "adapter: client_credentials ES256, login flood at the upstream",
        "100 active sessions: refresh each new one",
        "300 active sessions: refresh each new one",
    ];
    for case in expected {
        let row = report.row(case).unwrap_or_else(|| panic!("no row {case}"));
        assert_eq!(row.errors, 0, "{case}: {:?}", row.first_error);
        assert!(row.requests > 0, "{case}: {row:?}");
        assert!(row.rps > 0.0, "{case}: {row:?}");
        assert!(row.p50_ms > 0.0, "{case}: {row:?}");
        assert!(row.p99_ms >= row.p50_ms, "{case}: {row:?}");
        assert!(row.rss_kib > 0, "{case}: {row:?}");
    }
    // A token case's ratio to the signing ceiling, when its CPU time was
    // long enough to count (always in a debug build), is a sane fraction.
    let mut ratios = 0;
    for case in &expected[..10] {
        if let Some(ratio) = report.row(case).unwrap().vs_ceiling {
            assert!(ratio > 0.0 && ratio < 10.0, "{case}: {ratio}");
            ratios += 1;
        }
    }
    if cfg!(debug_assertions) {
        assert_eq!(ratios, 10, "every token case measured against the ceiling");
    }
    // The load generator's own CPU is measured (summed over the cases: a
    // small case may stay under one clock tick).
    let generator_us: f64 = report
        .rows
        .iter()
        .map(|r| r.generator_cpu_us * r.requests as f64)
        .sum();
    assert!(generator_us > 0.0, "no load-generator CPU measured");
    // An open loop's rows say how late its requests started (never later
    // than they ended); a closed loop has no schedule to be late for.
    for case in [
        "client_credentials ES256 at 70% of peak",
        "userinfo at 70% of peak",
        "JWKS at 70% of peak",
    ] {
        let row = report.row(case).unwrap();
        let late = row
            .start_late_p99_ms
            .unwrap_or_else(|| panic!("{case}: no lateness"));
        assert!(late <= row.p99_ms, "{case}: {late} > {}", row.p99_ms);
        assert!(row.note.contains("lateness"), "{case}: {}", row.note);
        // The adapter's own view of the same requests, from `/metrics`.
        let over = row
            .adapter_over_5ms
            .unwrap_or_else(|| panic!("{case}: no histogram share"));
        assert!((0.0..=1.0).contains(&over), "{case}: {over}");
    }
    let closed = report.row("client_credentials ES256").unwrap();
    assert_eq!(
        (closed.start_late_p99_ms, closed.adapter_over_5ms),
        (None, None)
    );
    let login = report.row("full federated login ES256").unwrap();
    // The upstream's share of a login includes an argon2id verification.
    assert!(login.upstream_cpu_us.unwrap() > 0.0, "{login:?}");
    assert_eq!(login.requests, Scale::smoke().logins);
    let idle = report.row("adapter idle").unwrap();
    assert!(idle.rss_kib > 0);
    assert_eq!(
        report
            .row("300 active sessions: refresh each new one")
            .unwrap()
            .requests,
        200,
        "the sessions added from 100 to 300 were each refreshed once"
    );
}

/// `--only`: the report has the selected cases and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_runs_the_selected_cases() {
    let bins = Binaries {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_bench")),
    };
    let scale = Scale {
        only: vec!["discovery".into(), "authorization_code".into()],
        ..Scale::smoke()
    };
    let report = run(&bins, scale).await.unwrap();
    let cases: Vec<&str> = report.rows.iter().map(|r| r.case.as_str()).collect();
    assert_eq!(
        cases,
        [
            "authorization_code redemption ES256 SQLite",
            "authorization_code redemption ES256 PostgreSQL",
            "discovery"
        ],
        "{cases:?}"
    );
    assert!(report.rows.iter().all(|r| r.errors == 0 && r.rps > 0.0));
}
