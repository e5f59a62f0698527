//! Logging set-up: a `tracing` subscriber filtered by `RUST_LOG` (default
//! given by the caller), text or JSON, writing to the sink the caller picks
//! (stdout for the binary, `std::io::sink` in quiet tests).
//!
//! Request spans carry the `x-request-id` and the path only (never the query,
//! which holds `code` and `state`); tokens, codes and secrets are never logged.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Installs a global subscriber. Returns `false` if one was already set
/// (e.g. by another test in the same process), which is not an error.
pub fn init_subscriber<W>(default_filter: &str, json: bool, sink: W) -> bool
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only on a terminal, and never with NO_COLOR.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        .with_ansi(ansi)
        .with_target(true);
    if json {
        builder.json().try_init().is_ok()
    } else {
        builder.try_init().is_ok()
    }
}

/// For tests: logs to stdout when `TEST_LOG` is set (any value), else nowhere.
pub fn init_test_subscriber() {
    if std::env::var_os("TEST_LOG").is_some() {
        init_subscriber("info,test_app=debug", false, std::io::stdout);
    } else {
        init_subscriber("info", false, std::io::sink);
    }
}
