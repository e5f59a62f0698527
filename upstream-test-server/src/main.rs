//! The `upstream-test-server` binary (port 9001). A start-up error is one
//! line on stderr and exit code 1.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    adapter::cli::exit_code(
        adapter::cli::run(
            upstream_test_server::default_config(),
            upstream_test_server::ENV_PREFIX,
        )
        .await,
    )
}
