//! The `adapter` binary, built again inside the bench package so that the
//! bench and its smoke test can spawn it from their own target directory
//! (`env!("CARGO_BIN_EXE_bench-adapter")`, or beside the `bench` binary).
//! Its `main` is the adapter's own, line for line.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    adapter::cli::exit_code(
        adapter::cli::run(adapter::Config::default(), adapter::config::ENV_PREFIX).await,
    )
}
