//! The `adapter` binary: the OpenID broker. A start-up error is one line on
//! stderr and exit code 1.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    adapter::cli::exit_code(
        adapter::cli::run(adapter::Config::default(), adapter::config::ENV_PREFIX).await,
    )
}
