//! `test-app` binary: parses the command line, loads the configuration, sets
//! up logging and runs [`test_app::Application`] until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use test_app::{Application, Config};

/// Demo OpenID Connect relying party for the Auth Adapter chain.
#[derive(Debug, Parser)]
#[command(name = "test-app", version, about)]
struct Cli {
    /// TOML configuration file (keys as in `test_app::Config`); environment
    /// variables `TEST_APP__<KEY>` override it.
    #[arg(long, short = 'c', env = "TEST_APP_CONFIG")]
    config: Option<PathBuf>,

    /// Print the effective configuration (secret redacted) and exit.
    #[arg(long)]
    check_config: bool,

    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("test-app: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        return match serde_json::to_string_pretty(&config.redacted()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("test-app: {e}");
                ExitCode::FAILURE
            }
        };
    }
    test_app::telemetry::init_subscriber("info,tower_http=info", cli.log_json, std::io::stdout);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "test-app failed");
            eprintln!("test-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until_stopped().await
}
