//! The command line shared by the provider binaries (the adapter and the
//! upstream test server): `serve` (default), `config check`, `migrate`,
//! `keys list`, `keys rotate`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config};
use crate::keys::{describe_keys, KeyManager, Policy};
use crate::startup::{connect_store, Application};
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// TOML configuration file (environment overrides still apply).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (default).
    Serve,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Signing keys (RFC 7517 §5).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Print each signing key's kid, algorithm, generation, schedule and
    /// state (next, active, retiring); never any private material.
    List,
    /// Publish the next key of each algorithm in use now; it signs once
    /// cached key sets hold it, and the key it replaces retires once the
    /// tokens it signed have expired.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate, then print the effective configuration with secrets
    /// (and a password in `database.url`) redacted.
    Check,
}

/// Turns the outcome of [`run`] into the process exit code: an error is
/// printed as one line (`Error: cause: cause…`, never a backtrace) and
/// exits with 1.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Entry point of a provider binary with its own defaults and env prefix.
pub async fn run(defaults: Config, env_prefix: &str) -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = config::load_from(defaults, cli.config.as_deref(), env_prefix)
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    // The same checks as `serve`, before anything is printed or opened.
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    crate::telemetry::init(config.server.log_format.as_str());
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(config).await?;
            app.run_until_stopped().await?;
        }
        Command::Config {
            action: ConfigAction::Check,
        } => {
            println!("{}", serde_json::to_string_pretty(&config.redacted())?);
        }
        Command::Migrate => {
            connect_store(&config.database.url, 1).await?;
            println!("schema is up to date");
        }
        Command::Keys { action } => {
            let store: Arc<dyn Store> = Arc::new(connect_store(&config.database.url, 1).await?);
            let now = SystemClock.now();
            if let KeysAction::Rotate = action {
                let keys = KeyManager::open(
                    store.clone(),
                    Policy::from_config(&config)?,
                    &config.keys,
                    &config.database.url,
                    Arc::new(SystemClock),
                )
                .await?;
                let published = keys.rotate(now).await?;
                if published.is_empty() {
                    println!("a next key is already waiting to activate; nothing published");
                } else {
                    println!("published: {}", published.join(", "));
                }
            }
            print!("{}", describe_keys(&store.list_keys().await?, now));
        }
    }
    Ok(())
}
