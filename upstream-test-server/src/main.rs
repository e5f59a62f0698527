//! The `upstream-test-server` binary (port 9001).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    adapter::cli::run(
        upstream_test_server::default_config(),
        upstream_test_server::ENV_PREFIX,
    )
    .await
}
