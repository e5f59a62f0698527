//! SQLite point reads on the caller's thread.
//!
//! `sqlx-sqlite` runs every statement on its connection's worker thread:
//! the request's task sends the statement there and waits for the rows, two
//! thread switches per statement, and under load the worker threads queue
//! for a core behind the runtime's. The hot reads of the request paths
//! (is this access token revoked, the login of this `state`, the session of
//! this cookie) are point reads by a key: a few microseconds of SQLite work
//! once the page is cached. [`Readers`] runs them where the request already
//! runs, on a connection of its own, as any other CPU work of the request.
//!
//! Why that does not stall the runtime: the database is in WAL mode, where
//! a reader takes a snapshot of the last commit and never waits for the
//! writer (<https://sqlite.org/wal.html>, "Concurrency"). A reader waits
//! only in rare moments (recovering the log after a crash, or the instant
//! another connection resets the log index), bounded by the connection's
//! `busy_timeout`.
//!
//! Each read is its own transaction (autocommit), so it sees every commit
//! that was answered before it began: the grant writer's and the pool's.

use std::sync::Mutex;

use super::StoreError;

/// Idle connections kept for reuse. A read holds its connection only while
/// it runs and never across an `.await`, so the connections in use at once
/// are at most the threads that read at once (the runtime's workers and
/// its blocking threads); past this many idle ones, a returned connection
/// is closed.
const MAX_IDLE: usize = 16;

/// How long a read waits on a lock before it fails (see the module
/// documentation for when it can happen at all). Shorter than the pool's
/// 5 s: a read holds a runtime thread while it waits.
const BUSY_TIMEOUT_MS: u32 = 250;

/// Page cache of each read connection, in KiB (SQLite's default is 2 MiB).
/// A point read touches a few pages, and a reader drops its cached pages
/// anyway when another connection has committed since its last read.
const CACHE_KIB: u32 = 256;

/// Read connections to one SQLite file.
pub struct Readers {
    /// The database file.
    file: String,
    /// Connections not in use, each with its prepared statements cached.
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Readers {
    /// Read connections to `file` (whose schema exists). Opens one at once,
    /// so that a file that cannot be read fails here and not at the first
    /// request.
    pub fn open(file: &str) -> Result<Self, StoreError> {
        let first = open_reader(file)?;
        Ok(Readers {
            file: file.to_string(),
            idle: Mutex::new(vec![first]),
        })
    }

    /// Runs `read` on the caller's thread, on an idle connection (or a new
    /// one when all are in use).
    pub fn read<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let conn = match self.lock().pop() {
            Some(conn) => conn,
            None => open_reader(&self.file)?,
        };
        let result = read(&conn);
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        Ok(result?)
    }

    /// The idle list. A panic while it was locked cannot leave it
    /// inconsistent (a push or a pop), so a poisoned lock is used as is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<rusqlite::Connection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections idle now (for tests).
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.lock().len()
    }
}

/// A connection that only reads (`query_only`: a write through it is an
/// error, not a second writer beside the grant writer).
fn open_reader(file: &str) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open_with_flags(
        file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch(&format!(
        "PRAGMA query_only = ON; PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; \
         PRAGMA cache_size = -{CACHE_KIB};"
    ))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("r.db").to_string_lossy().into_owned();
        let conn = rusqlite::Connection::open(&file).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER);",
        )
        .expect("schema");
        (dir, file)
    }

    #[test]
    fn reads_see_every_commit_made_before_them() {
        let (_dir, file) = database();
        let writer = rusqlite::Connection::open(&file).expect("open");
        let readers = Readers::open(&file).expect("readers");
        let get = |k: &str| {
            readers.read(|c| {
                c.prepare_cached("SELECT v FROM t WHERE k = ?1")?
                    .query_row([k], |r| r.get::<_, i64>(0))
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })
            })
        };
        assert_eq!(get("a").expect("read"), None);
        writer
            .execute("INSERT INTO t VALUES ('a', 1)", [])
            .expect("insert");
        assert_eq!(get("a").expect("read"), Some(1));
        writer
            .execute("UPDATE t SET v = 2 WHERE k = 'a'", [])
            .expect("update");
        assert_eq!(get("a").expect("read"), Some(2));
    }

    #[test]
    fn a_reader_cannot_write() {
        let (_dir, file) = database();
        let readers = Readers::open(&file).expect("readers");
        let err = readers
            .read(|c| c.execute("INSERT INTO t VALUES ('b', 1)", []))
            .expect_err("query_only");
        assert!(
            err.to_string().contains("readonly"),
            "unexpected error: {err}"
        );
    }

    #[test]
    fn connections_are_reused_and_opened_when_all_are_busy() {
        let (_dir, file) = database();
        let readers = Readers::open(&file).expect("readers");
        assert_eq!(readers.idle(), 1);
        // A read inside a read needs a second connection; both are kept.
        readers
            .read(|_| {
                readers
                    .read(|_| Ok(()))
                    .map_err(|_| rusqlite::Error::InvalidQuery)
            })
            .expect("nested reads");
        assert_eq!(readers.idle(), 2);
        readers.read(|_| Ok(())).expect("read");
        assert_eq!(readers.idle(), 2);
    }
}
