//! The `adapter` binary: the OpenID broker.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    adapter::cli::run(adapter::Config::default(), adapter::config::ENV_PREFIX).await
}
