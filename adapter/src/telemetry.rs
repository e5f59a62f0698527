//! Logging: `tracing` with text or JSON output and a request id on every
//! request span. Spans carry the method and path only, never the query
//! string (it holds codes and states) nor headers (cookies, credentials).

use std::io::IsTerminal;

use axum::http::Request;
use tracing::Span;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are no-ops.
/// `RUST_LOG` filters (default `info`).
pub fn init(format: &str) {
    init_to(format, false)
}

/// [`init`], writing to standard error when `stderr` (commands whose
/// standard output is their result, such as `users list`).
pub fn init_to(format: &str, stderr: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, terminal) = if stderr {
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        )
    } else {
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        )
    };
    // Colours only on a terminal: in a file or a log collector the escape
    // codes are noise (and cost formatting on every line).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(writer);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The span of one HTTP request.
pub fn request_span<B>(request: &Request<B>) -> Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
    )
}
