//! The SQLite grant writer: one thread that owns the grant paths' SQLite
//! connection and commits the transactions queued to it in groups.
//!
//! Every grant (a refresh rotation, a code redemption, a new session, a new
//! code) is a job: a closure over a connection. The thread takes the first
//! queued job, then every job queued meanwhile (at most [`MAX_BATCH`]), and
//! runs them back to back in one `BEGIN IMMEDIATE` transaction, each under a
//! savepoint of its own so that a job that fails leaves no trace and does not
//! touch its neighbours. Then it commits once and answers every job of the
//! batch. Nobody is answered before the commit that holds their writes.
//!
//! The connection runs with `synchronous = FULL`: a commit is on disk
//! (`fsync` of the write-ahead log) before any of its jobs is answered, and
//! a batch pays one `fsync` for all its jobs (group commit). Jobs are never
//! delayed to make batches bigger: a batch is what queued while the previous
//! one ran, so a lone request is committed at once.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::StoreError;

/// Most jobs in one transaction: bounds the latency a job adds to the
/// others of its batch.
pub const MAX_BATCH: usize = 64;

/// What a queued job hands back once it ran: the answer to send after the
/// commit (or with the commit's error).
type Answer = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A job gets the batch's transaction, or `None` when it could not begin
/// (then its answer carries that error).
type Job = Box<dyn FnOnce(Option<&mut rusqlite::Transaction<'_>>) -> Answer + Send>;

/// Handle on the writer thread (cheap to clone). The thread ends, closing
/// the connection, when the last handle is dropped.
#[derive(Clone)]
pub struct GrantWriter {
    jobs: mpsc::Sender<Job>,
    stats: Arc<WriterStats>,
}

impl std::fmt::Debug for GrantWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantWriter")
            .field("jobs", &self.stats.jobs.load(Ordering::Relaxed))
            .field("commits", &self.stats.commits.load(Ordering::Relaxed))
            .finish()
    }
}

/// Counters of the writer thread.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Jobs run (committed or not).
    pub jobs: AtomicU64,
    /// Transactions committed: `jobs / commits` is the mean group size.
    pub commits: AtomicU64,
}

impl GrantWriter {
    /// Starts the writer thread on `conn`.
    pub fn start(conn: rusqlite::Connection) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let stats = Arc::new(WriterStats::default());
        let counters = stats.clone();
        std::thread::Builder::new()
            .name("sqlite-grants".into())
            .spawn(move || run(conn, queue, &counters))
            .map_err(|e| StoreError::Url(format!("cannot start the SQLite writer thread: {e}")))?;
        Ok(GrantWriter { jobs, stats })
    }

    /// Queues `job` for the next group transaction (at once, before the
    /// returned future is polled) and answers after its commit. `Err` from
    /// `job` undoes its writes only (its savepoint is rolled back); the
    /// other jobs of the batch commit as usual.
    pub fn run<T, F>(&self, job: F) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let queued: Job = Box::new(move |tx| {
            let out = tx.map(|tx| in_savepoint(tx, job));
            Box::new(move |commit: Result<(), String>| {
                let out = match (out, commit) {
                    (Some(Ok(value)), Ok(())) => Ok(value),
                    (Some(Err(e)), _) => Err(e),
                    (_, Err(e)) => Err(StoreError::Writer(e)),
                    (None, Ok(())) => Err(StoreError::Writer("the grant did not run".into())),
                };
                // The caller may have gone (its request was cancelled).
                let _ = answer.send(out);
            })
        });
        let sent = self.jobs.send(queued);
        async move {
            sent.map_err(|_| StoreError::Writer("the SQLite writer thread has stopped".into()))?;
            answered
                .await
                .map_err(|_| StoreError::Writer("a grant transaction panicked".into()))?
        }
    }

    /// The thread's counters (read by tests; not exported to `/metrics`).
    #[cfg(test)]
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

/// Runs `job` under a savepoint of `tx`: kept on `Ok`, rolled back on `Err`.
fn in_savepoint<T, F>(tx: &rusqlite::Connection, job: F) -> Result<T, StoreError>
where
    F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
{
    let savepoint = Savepoint::begin(tx)?;
    let out = job(tx)?;
    savepoint.release()?;
    Ok(out)
}

/// A savepoint on cached statements (rusqlite's own `Savepoint` prepares
/// its SQL again at every use, twice per grant). Dropped unreleased (the
/// job failed or panicked), it rolls back to its start and is released.
struct Savepoint<'c> {
    conn: &'c rusqlite::Connection,
    open: bool,
}

impl<'c> Savepoint<'c> {
    fn begin(conn: &'c rusqlite::Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("SAVEPOINT grant")?.execute([])?;
        Ok(Savepoint { conn, open: true })
    }

    fn release(mut self) -> rusqlite::Result<()> {
        self.open = false;
        self.conn.prepare_cached("RELEASE grant")?.execute([])?;
        Ok(())
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if self.open {
            for sql in ["ROLLBACK TO grant", "RELEASE grant"] {
                // On failure the batch's commit fails too, or (when the
                // connection is gone) the batch was lost anyway.
                let _ = self
                    .conn
                    .prepare_cached(sql)
                    .and_then(|mut s| s.execute([]));
            }
        }
    }
}

/// The writer thread: batches until every handle is gone.
fn run(mut conn: rusqlite::Connection, queue: mpsc::Receiver<Job>, stats: &WriterStats) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let jobs = batch.len() as u64;
        let (answers, commit) = run_batch(&mut conn, batch);
        stats.jobs.fetch_add(jobs, Ordering::Relaxed);
        if commit.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        for answer in answers {
            answer(commit.clone());
        }
    }
}

/// One group transaction: the answers of the jobs that ran, and how the
/// commit went.
fn run_batch(
    conn: &mut rusqlite::Connection,
    batch: Vec<Job>,
) -> (Vec<Answer>, Result<(), String>) {
    let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            // Nothing runs: every job of the batch is answered the error.
            let answers = batch.into_iter().map(|job| job(None)).collect();
            return (answers, Err(e.to_string()));
        }
    };
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        // A panicking job rolled its savepoint back while unwinding; its
        // caller sees its answer channel dropped. The others go on.
        if let Ok(answer) = std::panic::catch_unwind(AssertUnwindSafe(|| job(Some(&mut tx)))) {
            answers.push(answer);
        }
    }
    let commit = tx.commit().map_err(|e| e.to_string());
    (answers, commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer_on(dir: &tempfile::TempDir) -> GrantWriter {
        let conn = rusqlite::Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .unwrap();
        GrantWriter::start(conn).unwrap()
    }

    /// The committed rows, read through a connection of their own.
    fn committed(dir: &tempfile::TempDir) -> Vec<i64> {
        let conn = rusqlite::Connection::open(dir.path().join("w.db")).unwrap();
        let mut rows = conn.prepare("SELECT x FROM t ORDER BY x").unwrap();
        let xs = rows.query_map([], |r| r.get(0)).unwrap();
        xs.map(Result::unwrap).collect()
    }

    fn insert(x: i64) -> impl FnOnce(&rusqlite::Connection) -> Result<(), StoreError> {
        move |c| {
            c.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
            Ok(())
        }
    }

    /// Grants queued while a transaction runs share the next commit; one
    /// that fails or panics undoes its own writes only, and every caller
    /// is answered after the commit.
    #[tokio::test]
    async fn queued_grants_share_one_commit_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer_on(&dir);
        let (entered, inside) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let first = writer.run(move |c| {
            entered.send(()).unwrap();
            released.recv().unwrap();
            insert(0)(c)
        });
        inside.recv().unwrap();
        // The writer is inside the first grant: these queue behind it.
        let before: Vec<_> = (1..=5).map(|x| writer.run(insert(x))).collect();
        let failing = writer.run(|c| {
            insert(100)(c)?;
            Err::<(), _>(StoreError::Url("refused".into()))
        });
        let panicking = writer.run(|c| -> Result<(), StoreError> {
            insert(200)(c)?;
            panic!("a bug in a grant")
        });
        let after: Vec<_> = (6..=8).map(|x| writer.run(insert(x))).collect();
        release.send(()).unwrap();

        first.await.unwrap();
        for grant in before.into_iter().chain(after) {
            grant.await.unwrap();
        }
        assert!(matches!(failing.await, Err(StoreError::Url(m)) if m == "refused"));
        assert!(
            matches!(panicking.await, Err(StoreError::Writer(m)) if m == "a grant transaction panicked")
        );
        assert_eq!(committed(&dir), (0..=8).collect::<Vec<_>>());
        // One commit for the first grant, one for the ten queued behind it.
        assert_eq!(writer.stats().jobs.load(Ordering::Relaxed), 11);
        assert_eq!(writer.stats().commits.load(Ordering::Relaxed), 2);
    }

    /// A grant answered `Ok` is committed: a fresh connection reads it.
    #[tokio::test]
    async fn an_answered_grant_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer_on(&dir);
        writer.run(insert(7)).await.unwrap();
        assert_eq!(committed(&dir), vec![7]);
    }
}
