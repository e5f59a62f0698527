//! `cargo run --release`: the whole local chain in one process.
//!
//! test-app :8080 → adapter :9000 → upstream-test-server :9001, each with
//! its own configuration file under `config/` (optional for the upstream and
//! the test-app) and its own environment prefix.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Run test-app, adapter and upstream-test-server together")]
struct Args {
    /// Folder with adapter.toml, upstream-test-server.toml, test-app.toml.
    #[arg(long, default_value = "config")]
    config_dir: PathBuf,
}

fn optional(path: PathBuf) -> Option<PathBuf> {
    path.exists().then_some(path)
}

fn file(dir: &Path, name: &str) -> Option<PathBuf> {
    optional(dir.join(name))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = &args.config_dir;
    let upstream_cfg = adapter::config::load_from(
        upstream_test_server::default_config(),
        file(dir, "upstream-test-server.toml").as_deref(),
        upstream_test_server::ENV_PREFIX,
    )
    .context("upstream-test-server configuration")?;
    let adapter_cfg = adapter::config::load(
        file(dir, "adapter.toml").as_deref(),
        adapter::config::ENV_PREFIX,
    )
    .context("adapter configuration")?;
    let app_cfg = test_app::Config::load(file(dir, "test-app.toml").as_deref())
        .map_err(|e| anyhow::anyhow!("test-app configuration: {e}"))?;
    adapter::telemetry::init(adapter_cfg.server.log_format.as_str());

    let upstream = adapter::Application::build(upstream_cfg)
        .await
        .context("upstream-test-server")?;
    let broker = adapter::Application::build(adapter_cfg.clone())
        .await
        .context("adapter")?;
    let app_url = app_cfg.base_url.trim_end_matches('/').to_string();
    let app = test_app::Application::build(app_cfg)
        .await
        .context("test-app")?;

    // The start-up lines before the banner, not in the middle of it.
    adapter::telemetry::flush();
    println!();
    println!("  Auth Adapter demo chain is running:");
    println!("    test-app              {app_url}/authenticated");
    println!("    adapter (issuer)      {}", adapter_cfg.server.issuer());
    println!(
        "    upstream-test-server  http://127.0.0.1:{}",
        upstream.port()
    );
    println!("  Log in as  testuser / password   (Ctrl-C stops all three)");
    println!();

    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let (a, b, c) = (stopped(), stopped(), stopped());
    tokio::spawn(async move {
        adapter::startup::shutdown_signal().await;
        let _ = tx.send(true);
    });
    let (r1, r2, r3) = tokio::join!(upstream.run_until(a), broker.run_until(b), app.run_until(c));
    adapter::telemetry::flush();
    r1.context("upstream-test-server")?;
    r2.context("adapter")?;
    r3.context("test-app")?;
    Ok(())
}
