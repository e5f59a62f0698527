//! `cargo run --release -p bench -- --full`: the adapter's benchmark table
//! (see the library documentation and BENCHMARKS.md). Without `--full` it
//! runs the smoke-sized cases.
//!
//! With `BENCH_SERVE=adapter` or `BENCH_SERVE=upstream` in its environment
//! this binary is instead the adapter or the upstream test server (their own
//! `main`s): the bench starts its services that way, so they are always
//! built from the same sources as the bench itself.

use std::process::ExitCode;

use bench::services::SERVE_ENV;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    about = "Throughput, latency, CPU and memory of the adapter (loopback, separate processes)"
)]
struct Args {
    /// The full table (several minutes); otherwise a quick smoke-sized run.
    #[arg(long)]
    full: bool,
    /// Override the requests per cheap case.
    #[arg(long)]
    requests: Option<usize>,
    /// Override the closed-loop concurrency.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Override the clients of the second refresh-rotation cases (the
    /// SQLite writer commits the grants queued together).
    #[arg(long)]
    grant_concurrency: Option<usize>,
    /// Override the number of full federated logins.
    #[arg(long)]
    logins: Option<usize>,
    /// Override the active-session counts of the memory case (comma-separated).
    #[arg(long, value_delimiter = ',')]
    sessions: Option<Vec<usize>>,
    /// Run only the cases whose name contains this (repeatable: a case
    /// runs when it matches any). A case at 70% of peak also runs its peak
    /// case, and the login flood the plain client_credentials ES256 case,
    /// whose figures they need.
    #[arg(long, value_name = "SUBSTRING")]
    only: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::var(SERVE_ENV).as_deref() {
        // The adapter's `main`.
        Ok("adapter") => adapter::cli::exit_code(
            adapter::cli::run(adapter::Config::default(), adapter::config::ENV_PREFIX).await,
        ),
        // The upstream test server's `main`.
        Ok("upstream") => adapter::cli::exit_code(
            adapter::cli::run(
                upstream_test_server::default_config(),
                upstream_test_server::ENV_PREFIX,
            )
            .await,
        ),
        _ => adapter::cli::exit_code(bench().await),
    }
}

async fn bench() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut scale = if args.full {
        bench::run::Scale::full()
    } else {
        bench::run::Scale::smoke()
    };
    if let Some(n) = args.requests {
        scale.requests = n;
    }
    if let Some(c) = args.concurrency {
        scale.concurrency = c;
    }
    if let Some(c) = args.grant_concurrency {
        scale.grant_concurrency = c;
    }
    if let Some(l) = args.logins {
        scale.logins = l;
    }
    if let Some(s) = args.sessions {
        scale.sessions = s;
    }
    scale.only = args.only;
    let bins = bench::services::Binaries::current()?;
    let report = bench::run::run(&bins, scale).await?;
    let errors: usize = report.rows.iter().map(|r| r.errors).sum();
    if errors > 0 {
        anyhow::bail!("{errors} requests failed");
    }
    Ok(())
}
