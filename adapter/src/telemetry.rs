//! Logging: `tracing` with text or JSON output and a request id on every
//! request span. Spans carry the method and path only, never the query
//! string (it holds codes and states) nor headers (cookies, credentials).
//!
//! The server's lines go to standard output through [`Batched`]: a thread
//! of its own writes them a few milliseconds late, many lines per
//! `write(2)`, so a request does not pay for a system call of its own.
//! [`flush`] writes what is pending; the provider binaries call it before
//! they exit.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

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
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(stdout_batch()),
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

/// How long the writing thread waits, once a line is pending, for more
/// lines to write with it. Short enough that a line is on its way to the
/// log collector at once for a person; long enough that under load one
/// `write(2)` carries hundreds of lines.
pub const GATHER: Duration = Duration::from_millis(5);

/// Pending bytes beyond which the logging thread itself writes, as a
/// plain `write` would: a blocked standard output holds requests back
/// instead of growing the buffer without bound.
const MAX_PENDING: usize = 1 << 20;

/// The process's batched standard output, started on first use.
static STDOUT_BATCH: OnceLock<Batched> = OnceLock::new();

fn stdout_batch() -> Batched {
    STDOUT_BATCH
        .get_or_init(|| Batched::start(Box::new(std::io::stdout()), GATHER))
        .clone()
}

/// Writes the log lines still pending; a no-op when nothing was batched.
pub fn flush() {
    if let Some(batch) = STDOUT_BATCH.get() {
        batch.flush();
    }
}

/// Log lines appended to a shared buffer and written by a thread of their
/// own, in the order they were appended.
#[derive(Clone)]
pub struct Batched {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Signalled when `pending` stops being empty.
    filled: Condvar,
    /// Where the lines go. Taken while `pending` is held, so lines leave
    /// in the order they came whichever thread writes them.
    out: Mutex<Box<dyn Write + Send>>,
    /// No writing thread could be started: every line is written as it
    /// comes.
    direct: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked mid-append left whole lines or a torn one;
    // either is better than losing the log.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Batched {
    /// Starts the writing thread; lines reach `out` at most about `gather`
    /// after they were appended.
    pub fn start(out: Box<dyn Write + Send>, gather: Duration) -> Batched {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            filled: Condvar::new(),
            out: Mutex::new(out),
            direct: AtomicBool::new(false),
        });
        let worker = Arc::downgrade(&shared);
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_batches(&worker, gather));
        if let Err(e) = spawned {
            // Without the thread every line is written as it comes.
            eprintln!("log lines are written one by one: {e}");
            shared.direct.store(true, Ordering::Relaxed);
        }
        Batched { shared }
    }

    /// Writes every pending line now; returns once every line appended
    /// before the call is written, the writing thread's batch under way
    /// included (the process may exit next).
    pub fn flush(&self) {
        self.shared.drain(&mut Vec::new());
        drop(lock(&self.shared.out));
    }
}

impl Shared {
    /// Writes what is pending, through `spare` (an empty buffer that
    /// leaves with the lines' old buffer, emptied). The appenders wait for
    /// the exchange of the two buffers only, not for the write.
    fn drain(&self, spare: &mut Vec<u8>) {
        let mut out = {
            let mut pending = lock(&self.pending);
            if pending.is_empty() {
                return;
            }
            // Taken before `pending` is let go: whoever drains next writes
            // after this batch, not before it.
            let out = lock(&self.out);
            std::mem::swap(&mut *pending, spare);
            out
        };
        // Nowhere to report a failed log write to; the lines are dropped.
        let _ = out.write_all(spare);
        let _ = out.flush();
        spare.clear();
    }
}

/// The writing thread: sleeps until a line is pending, gathers for
/// `gather`, writes everything pending in one call. Ends with the last
/// handle.
fn write_batches(shared: &std::sync::Weak<Shared>, gather: Duration) {
    let mut spare = Vec::new();
    loop {
        {
            let Some(s) = shared.upgrade() else { return };
            let mut pending = lock(&s.pending);
            while pending.is_empty() {
                let (guard, _) = s
                    .filled
                    .wait_timeout(pending, Duration::from_secs(1))
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                pending = guard;
                if pending.is_empty() && Arc::strong_count(&s) == 1 {
                    return;
                }
            }
        }
        std::thread::sleep(gather);
        let Some(s) = shared.upgrade() else { return };
        s.drain(&mut spare);
        // A burst's buffer is not kept for the quiet that follows.
        if spare.capacity() > 4 * 64 * 1024 {
            spare.shrink_to(64 * 1024);
        }
    }
}

/// One log line's writer: `tracing-subscriber` formats a whole event and
/// hands it over in one `write_all`.
pub struct BatchedLine<'a> {
    shared: &'a Shared,
}

impl Write for BatchedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (was_empty, full) = {
            let mut pending = lock(&self.shared.pending);
            let was_empty = pending.is_empty();
            pending.extend_from_slice(buf);
            (was_empty, pending.len() > MAX_PENDING)
        };
        if full || self.shared.direct.load(Ordering::Relaxed) {
            self.shared.drain(&mut Vec::new());
        } else if was_empty {
            self.shared.filled.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Batched {
    type Writer = BatchedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        BatchedLine {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    /// A sink that records every `write` call it gets.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(batch: &Batched, text: &str) {
        batch.make_writer().write_all(text.as_bytes()).unwrap();
    }

    /// Lines from several threads arrive whole, each thread's in its
    /// order, and many of them in one write.
    #[test]
    fn lines_leave_in_order_and_in_batches() {
        let sink = Calls::default();
        let batch = Batched::start(Box::new(sink.clone()), Duration::from_millis(20));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let batch = batch.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        line(&batch, &format!("thread {t} line {i}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let total = || sink.0.lock().unwrap().iter().map(Vec::len).sum::<usize>();
        let expected: usize = (0..4)
            .flat_map(|t| (0..500).map(move |i| format!("thread {t} line {i}\n").len()))
            .sum();
        while total() < expected && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let calls = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(calls.concat()).unwrap();
        for t in 0..4 {
            let mine: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .map(str::to_owned)
                .collect();
            let want: Vec<String> = (0..500).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, want);
        }
        assert_eq!(text.lines().count(), 2000);
        // One write per line would be 2,000 calls.
        assert!(calls.len() < 100, "{} writes for 2,000 lines", calls.len());
    }

    /// `flush` writes what is pending at once, without the gathering wait.
    #[test]
    fn flush_writes_what_is_pending_now() {
        let sink = Calls::default();
        let batch = Batched::start(Box::new(sink.clone()), Duration::from_secs(3600));
        line(&batch, "first\n");
        line(&batch, "second\n");
        batch.flush();
        assert_eq!(sink.0.lock().unwrap().concat(), b"first\nsecond\n");
    }

    /// A sink whose first write waits until released.
    struct Stalled {
        entered: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
        stalled: bool,
        out: Calls,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.stalled {
                self.stalled = true;
                self.entered.send(()).unwrap();
                self.release.recv().unwrap();
            }
            self.out.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A line is appended while the thread's write is still under way
    /// (a slow standard output): the request does not wait for it.
    #[test]
    fn appending_does_not_wait_for_a_write() {
        let (entered, inside) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel();
        let out = Calls::default();
        let sink = Stalled {
            entered,
            release: released,
            stalled: false,
            out: out.clone(),
        };
        let batch = Batched::start(Box::new(sink), Duration::from_millis(1));
        line(&batch, "first\n");
        inside.recv_timeout(Duration::from_secs(5)).unwrap();
        let (done, appended) = std::sync::mpsc::channel();
        let appender = batch.clone();
        std::thread::spawn(move || {
            line(&appender, "second\n");
            done.send(()).unwrap();
        });
        let waited = appended.recv_timeout(Duration::from_secs(2));
        release.send(()).unwrap();
        assert!(waited.is_ok(), "the append waited for the write");
        batch.flush();
        assert_eq!(out.0.lock().unwrap().concat(), b"first\nsecond\n");
    }

    /// Past the bound, the appending thread writes itself.
    #[test]
    fn a_full_buffer_is_written_by_the_appender() {
        let sink = Calls::default();
        let batch = Batched::start(Box::new(sink.clone()), Duration::from_secs(3600));
        let big = "x".repeat(MAX_PENDING) + "\n";
        line(&batch, &big);
        assert_eq!(sink.0.lock().unwrap().concat().len(), big.len());
    }
}
