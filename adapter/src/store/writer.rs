//! The SQLite grant writer: one thread that owns the grant paths' SQLite
//! connection and commits the transactions queued to it in groups.
//!
//! Every grant (a refresh rotation, a code redemption, a new session, a new
//! code) and every write of a login in progress is a job: a closure over a
//! connection. The thread takes the first queued job, then every job queued
//! meanwhile (at most [`MAX_BATCH`]), and runs them back to back in one
//! `BEGIN IMMEDIATE` transaction, each under a savepoint of its own so that a
//! job that fails leaves no trace and does not touch its neighbours. Then it commits once and answers every job of the
//! batch. Nobody is answered before the commit that holds their writes.
//!
//! A batch that holds a [`Durability::Synced`] job (a grant that issues
//! tokens: refresh rotation, code redemption) commits with `synchronous =
//! FULL`: the commit is on disk (`fsync` of the write-ahead log) before any
//! of its jobs is answered, and the batch pays one `fsync` for all its jobs
//! (group commit). A batch of [`Durability::Normal`] jobs only (a login in
//! progress, a login's new session and code) commits with `synchronous =
//! NORMAL`, as the pool's other writes: it survives a crash of the
//! process, and reaches the disk with the next synced commit or checkpoint;
//! a power loss before then loses it, and the user logs in again. Jobs are never
//! delayed to make batches bigger: a batch is what queued while the previous
//! one ran, so a lone request is committed at once.
//!
//! Checkpoints (copying the log back into the database file, with an
//! `fsync` of that file) are not the writer's: a commit that finds the log
//! past SQLite's threshold would run one, and every grant queued behind it
//! would wait. The writer's connection turns the automatic checkpoint off,
//! and a second thread runs a `PASSIVE` checkpoint (which waits for no
//! reader and no writer) on a connection of its own, as its
//! [`CheckpointPolicy`] says: once [`CheckpointPolicy::commits`] commits
//! have gathered in the log, or, when fewer have,
//! [`CheckpointPolicy::at_least_every`] after the last checkpoint. A checkpoint costs two `fsync`s (log
//! and database file) whatever it copies, so it waits for a log worth
//! copying rather than running on a clock: at a few logins a second, a
//! checkpoint every 100 ms cost more than the logins' own commits.
//!
//! The thread's checkpoints copy the log but never let it start over:
//! SQLite starts the log over only when a write begins with every frame
//! already copied, and under a steady stream of grants the writer has
//! always appended more by then. The log would grow as long as grants keep
//! coming (to 277–686 MiB in the bench's memory rows), every commit would
//! extend its file (a costlier `fsync` than one that overwrites), and every
//! read would search a longer log index. So the writer keeps SQLite's
//! automatic checkpoint as a backstop at [`CheckpointPolicy::writer_frames`]
//! frames: a commit that leaves a log that long checkpoints it at once
//! (little is left to copy after the thread's), and the next write starts
//! the log over, cut back to `journal_size_limit`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::StoreError;

/// Most jobs in one transaction: bounds the latency a job adds to the
/// others of its batch.
pub const MAX_BATCH: usize = 64;

/// When the checkpoint thread copies the log into the database file.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// How often the thread looks at the writer's commits.
    pub poll: Duration,
    /// Commits since the last checkpoint that call for the next one at
    /// once. A grant group writes a few pages to tens of pages, so the
    /// default (100) keeps the log near SQLite's own threshold of 1,000
    /// pages.
    pub commits: u64,
    /// Fewer commits call for a checkpoint this long after the last one,
    /// so the log of a quiet database is copied too (at most once per
    /// period).
    pub at_least_every: Duration,
    /// The writer connection's own automatic checkpoint (`PRAGMA
    /// wal_autocheckpoint`): a commit that leaves at least this many frames
    /// in the log checkpoints it, so that the next write starts it over.
    /// 16,384 frames are 64 MiB at SQLite's default page size, the
    /// connections' `journal_size_limit`.
    pub writer_frames: u32,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            poll: Duration::from_millis(100),
            commits: 100,
            at_least_every: Duration::from_secs(1),
            writer_frames: 16_384,
        }
    }
}

impl CheckpointPolicy {
    /// Whether a checkpoint is due, `commits` commits and `elapsed` after
    /// the last one.
    fn due(&self, commits: u64, elapsed: Duration) -> bool {
        commits >= self.commits || (commits > 0 && elapsed >= self.at_least_every)
    }
}

/// What a queued job hands back once it ran: the answer to send after the
/// commit (or with the commit's error).
type Answer = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A job gets the batch's transaction, or `None` when it could not begin
/// (then its answer carries that error).
type Run = Box<dyn FnOnce(Option<&rusqlite::Connection>) -> Answer + Send>;

/// A queued job and the durability its commit needs.
struct Job {
    durability: Durability,
    run: Run,
}

/// What a job's commit must reach before the job is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    /// The operating system (`synchronous = NORMAL`): safe from a crash of
    /// the process, not from a power loss before the next `fsync`.
    Normal,
    /// The disk (`synchronous = FULL`, an `fsync` of the log).
    Synced,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Normal => "PRAGMA synchronous = NORMAL",
            Durability::Synced => "PRAGMA synchronous = FULL",
        }
    }
}

/// Handle on the writer thread (cheap to clone). The thread ends, closing
/// the connection, when the last handle is dropped.
#[derive(Clone)]
pub struct GrantWriter {
    jobs: mpsc::Sender<Job>,
    stats: Arc<WriterStats>,
    /// Never sent on: the checkpoint thread ends when the last handle (and
    /// so this sender) is dropped.
    _checkpoints: mpsc::Sender<()>,
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
    /// Checkpoints the checkpoint thread ran (each copies the log into the
    /// database file).
    pub checkpoints: AtomicU64,
}

impl GrantWriter {
    /// Starts the writer thread on `conn` and the checkpoint thread on
    /// `checkpointer` (two connections to the same database file).
    pub fn start(
        conn: rusqlite::Connection,
        checkpointer: rusqlite::Connection,
        policy: CheckpointPolicy,
    ) -> Result<Self, StoreError> {
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {}",
            policy.writer_frames
        ))?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (checkpoints, stop) = mpsc::channel::<()>();
        let stats = Arc::new(WriterStats::default());
        let counters = stats.clone();
        let observed = stats.clone();
        let thread_failed =
            |e: std::io::Error| StoreError::Writer(format!("cannot start a SQLite thread: {e}"));
        std::thread::Builder::new()
            .name("sqlite-grants".into())
            .spawn(move || run(conn, queue, &counters))
            .map_err(thread_failed)?;
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_until_dropped(&checkpointer, &stop, policy, &observed))
            .map_err(thread_failed)?;
        Ok(GrantWriter {
            jobs,
            stats,
            _checkpoints: checkpoints,
        })
    }

    /// Queues `job` for the next group transaction (at once, before the
    /// returned future is polled) and answers after its commit, which is on
    /// disk ([`Durability::Synced`]). `Err` from `job` undoes its writes
    /// only (its savepoint is rolled back); the other jobs of the batch
    /// commit as usual.
    pub fn run<T, F>(&self, job: F) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_with(Durability::Synced, job)
    }

    /// [`GrantWriter::run`] with the durability its commit needs.
    pub fn run_with<T, F>(
        &self,
        durability: Durability,
        job: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let run: Run = Box::new(move |tx| {
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
        let sent = self.jobs.send(Job { durability, run });
        async move {
            sent.map_err(|_| StoreError::Writer("the SQLite writer thread has stopped".into()))?;
            answered
                .await
                .map_err(|_| StoreError::Writer("a grant transaction panicked".into()))?
        }
    }

    /// The thread's counters (`/metrics` reads them at scrape time).
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
        self.conn.prepare_cached("RELEASE grant")?.execute([])?;
        // Only once released: a failed release is rolled back by `drop`.
        self.open = false;
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

/// The checkpoint thread: a `PASSIVE` checkpoint whenever `policy` finds
/// one due, until every handle of the writer is gone.
fn checkpoint_until_dropped(
    conn: &rusqlite::Connection,
    stop: &mpsc::Receiver<()>,
    policy: CheckpointPolicy,
    stats: &WriterStats,
) {
    // The counters start with the writer: whatever it committed before
    // this thread ran is in the log.
    let mut copied = 0;
    let mut last = Instant::now();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(policy.poll) {
        let commits = stats.commits.load(Ordering::Relaxed);
        if !policy.due(commits.saturating_sub(copied), last.elapsed()) {
            continue;
        }
        // Returns (busy, frames in the log, frames checkpointed); a failure
        // is retried at the next round, and the log only grows meanwhile.
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) => {
                copied = commits;
                last = Instant::now();
                stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed"),
        }
    }
}

/// The writer thread: batches until every handle is gone.
fn run(mut conn: rusqlite::Connection, queue: mpsc::Receiver<Job>, stats: &WriterStats) {
    // The connection opens with `synchronous = FULL`.
    let mut level = Durability::Synced;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let jobs = batch.len() as u64;
        // The batch commits as its most demanding job needs.
        let wanted = batch
            .iter()
            .map(|job| job.durability)
            .max()
            .unwrap_or(Durability::Synced);
        let (answers, commit) = if wanted == level {
            run_batch(&mut conn, batch)
        } else {
            match conn.execute_batch(wanted.pragma()) {
                Ok(()) => {
                    level = wanted;
                    run_batch(&mut conn, batch)
                }
                // Nothing runs: a synced job must not commit unsynced.
                Err(e) => (
                    batch.into_iter().map(|job| (job.run)(None)).collect(),
                    Err(e.to_string()),
                ),
            }
        };
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
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            // Nothing runs: every job of the batch is answered the error.
            let answers = batch.into_iter().map(|job| (job.run)(None)).collect();
            return (answers, Err(e.to_string()));
        }
    };
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        // A panicking job rolled its savepoint back while unwinding; its
        // caller sees its answer channel dropped. The others go on.
        if let Ok(answer) = std::panic::catch_unwind(AssertUnwindSafe(|| (job.run)(Some(&tx)))) {
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
        writer_with(dir, CheckpointPolicy::default())
    }

    fn writer_with(dir: &tempfile::TempDir, policy: CheckpointPolicy) -> GrantWriter {
        let conn = rusqlite::Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER PRIMARY KEY); \
             CREATE TABLE big (v TEXT)",
        )
        .unwrap();
        let checkpointer = rusqlite::Connection::open(dir.path().join("w.db")).unwrap();
        GrantWriter::start(conn, checkpointer, policy).unwrap()
    }

    /// One commit of 100 KB: far below SQLite's automatic threshold
    /// (1,000 pages), so only the checkpoint thread moves these pages into
    /// the database file.
    async fn commit_100_kb(writer: &GrantWriter) {
        let payload = "x".repeat(2000);
        writer
            .run(move |c| {
                for _ in 0..50 {
                    c.execute("INSERT INTO big (v) VALUES (?1)", [&payload])?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    fn db_size(dir: &tempfile::TempDir) -> u64 {
        std::fs::metadata(dir.path().join("w.db")).unwrap().len()
    }

    fn checkpoints(writer: &GrantWriter) -> u64 {
        writer.stats().checkpoints.load(Ordering::Relaxed)
    }

    /// Waits (at most 10 s) for the checkpoint thread's first checkpoint.
    async fn first_checkpoint(writer: &GrantWriter) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while checkpoints(writer) == 0 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

    fn sync_level(c: &rusqlite::Connection) -> Result<i64, StoreError> {
        Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?)
    }

    /// A batch of `Normal` jobs commits without the log's `fsync`
    /// (`NORMAL` is 1); one `Synced` job makes its whole batch sync (`FULL`
    /// is 2), and the level follows each batch.
    #[tokio::test]
    async fn a_batch_syncs_when_one_of_its_jobs_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer_on(&dir);
        let normal = writer.run_with(Durability::Normal, sync_level);
        assert_eq!(normal.await.unwrap(), 1);
        assert_eq!(writer.run(sync_level).await.unwrap(), 2);

        let (entered, inside) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let first = writer.run_with(Durability::Normal, move |c| {
            entered.send(()).unwrap();
            released.recv().unwrap();
            sync_level(c)
        });
        inside.recv().unwrap();
        // Queued together behind the first: one batch.
        let unsynced = writer.run_with(Durability::Normal, sync_level);
        let synced = writer.run(sync_level);
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(unsynced.await.unwrap(), 2);
        assert_eq!(synced.await.unwrap(), 2);
        assert_eq!(writer.stats().commits.load(Ordering::Relaxed), 4);

        let normal = writer.run_with(Durability::Normal, sync_level);
        assert_eq!(normal.await.unwrap(), 1);
    }

    /// The writer's own checkpoint waits for a long log; the checkpoint thread
    /// leaves the log alone until it holds `commits` commits, then copies
    /// it into the database file.
    #[tokio::test]
    async fn checkpoints_wait_for_enough_commits() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer_with(
            &dir,
            CheckpointPolicy {
                poll: Duration::from_millis(5),
                commits: 3,
                at_least_every: Duration::from_secs(3600),
                writer_frames: 1_000_000,
            },
        );
        let auto: i64 = writer
            .run(|c| Ok(c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(auto, 1_000_000);
        let before = db_size(&dir);
        // Two commits (the pragma's transaction and this one) in 60 polls.
        commit_100_kb(&writer).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(checkpoints(&writer), 0, "two commits are not enough");
        assert_eq!(db_size(&dir), before);
        // The third.
        commit_100_kb(&writer).await;
        first_checkpoint(&writer).await;
        assert!(db_size(&dir) > before + 100_000);
    }

    /// Fewer commits than the policy's count are copied once
    /// `at_least_every` has passed.
    #[tokio::test]
    async fn a_quiet_log_is_checkpointed_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer_with(
            &dir,
            CheckpointPolicy {
                poll: Duration::from_millis(5),
                commits: 1000,
                at_least_every: Duration::from_millis(50),
                writer_frames: 1_000_000,
            },
        );
        let before = db_size(&dir);
        commit_100_kb(&writer).await;
        first_checkpoint(&writer).await;
        assert!(db_size(&dir) > before + 90_000);
    }

    /// The frames in the log now (`PRAGMA wal_checkpoint` answers busy,
    /// log frames, copied frames), read through a connection of its own.
    fn log_frames(dir: &tempfile::TempDir) -> i64 {
        let conn = rusqlite::Connection::open(dir.path().join("w.db")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            // (busy, frames in the log, frames copied): busy, and -1
            // frames, while the checkpoint thread runs one of its own.
            let (busy, frames): (i64, i64) = conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap();
            if busy == 0 {
                return frames;
            }
            assert!(std::time::Instant::now() < deadline, "the log stayed busy");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The thread's checkpoints copy the log but it keeps growing; a commit
    /// that leaves `writer_frames` frames checkpoints it, and the next write
    /// starts it over.
    #[tokio::test]
    async fn a_long_log_starts_over() {
        // 100 KB are about 25 frames of 4 KiB.
        let policy = |writer_frames| CheckpointPolicy {
            poll: Duration::from_millis(5),
            commits: 1,
            at_least_every: Duration::from_secs(3600),
            writer_frames,
        };
        let dir = tempfile::tempdir().unwrap();
        let thread_only = writer_with(&dir, policy(1_000_000));
        for _ in 0..3 {
            commit_100_kb(&thread_only).await;
        }
        first_checkpoint(&thread_only).await;
        assert!(log_frames(&dir) >= 75, "{}", log_frames(&dir));

        let dir = tempfile::tempdir().unwrap();
        let writer = writer_with(&dir, policy(40));
        for _ in 0..3 {
            commit_100_kb(&writer).await;
        }
        // The second commit left about 50 frames and checkpointed them; the
        // third started the log over.
        assert!(log_frames(&dir) < 40, "{}", log_frames(&dir));
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
