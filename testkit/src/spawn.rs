//! Runs an `adapter::Application` (the adapter or the upstream-test-server,
//! which is the same engine) in-process on a listener the caller bound.

use adapter::clock::SharedClock;
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running provider: send on (or drop) `stop` to shut it down, then await
/// `handle` to know its socket is closed.
pub struct Running {
    pub stop: oneshot::Sender<()>,
    pub handle: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the provider and waits until it has shut down.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.handle.await.context("joining the stopped provider")
    }
}

/// Builds and runs `config` on `listener` with `clock`. `what` names the
/// service in errors.
pub async fn provider(
    config: adapter::Config,
    listener: TcpListener,
    clock: SharedClock,
    what: &str,
) -> anyhow::Result<Running> {
    let app = adapter::Application::build_with_clock(config, listener, clock)
        .await
        .with_context(|| format!("building the {what}"))?;
    let (stop, rx) = oneshot::channel::<()>();
    let what = what.to_string();
    let handle = tokio::spawn(async move {
        let until = async {
            let _ = rx.await;
        };
        if let Err(e) = app.run_until(until).await {
            eprintln!("{what} stopped with an error: {e}");
        }
    });
    Ok(Running { stop, handle })
}

/// A fresh SQLite database URL in a temp dir of its own (kept alive by the
/// returned guard).
pub fn temp_sqlite(prefix: &str) -> anyhow::Result<(tempfile::TempDir, String)> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("creating a temp dir for SQLite")?;
    let url = format!("sqlite://{}/x.db", dir.path().display());
    Ok((dir, url))
}
