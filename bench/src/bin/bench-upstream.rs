//! The `upstream-test-server` binary, built again inside the bench package
//! (see `bench-adapter`). Its `main` is the upstream test server's own.

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
