//! The command line shared by the provider binaries (the adapter and the
//! upstream test server): `serve` (default), `config check`, `migrate`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::startup::{connect_store, Application};

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
    }
    Ok(())
}
