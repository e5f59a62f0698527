//! [`SqlStore`]: the [`Store`] on SQLite (embedded default, WAL mode) and
//! PostgreSQL, through sqlx's `Any` driver. The SQL is portable: `$n`
//! placeholders (sqlx-sqlite maps them by number), `RETURNING` (SQLite ≥
//! 3.35, bundled), `ON CONFLICT DO NOTHING`, BIGINT unix seconds, TEXT ids
//! and payloads.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::OptionalExtension;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use super::reader::Readers;
use super::writer::{CheckpointPolicy, Durability, GrantWriter};
use super::{
    AccountRow, BackchannelRow, CodeCheck, CodeInsert, FirstRefresh, KeyRecord, LoginRow, Lookup,
    NextRefresh, OutboxRow, Redeemed, RefreshRow, RefreshStatus, RefreshUse, Rotation, SessionRow,
    Store, StoreError, FAMILY_MARKER_PREFIX,
};

/// SQL implementation for SQLite and PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    /// SQLite (a file with a write-ahead log) rather than PostgreSQL.
    sqlite: bool,
    /// SQLite only: the writer thread of the grant paths and of the logins
    /// in progress, which owns a connection of its own and commits queued
    /// writes in groups (see
    /// [`GrantWriter`]). sqlx-sqlite hands every statement to its
    /// connection's worker thread (two thread switches per statement); a
    /// grant here costs one hand-off for all its statements, and a commit
    /// (with its `fsync`) is shared by the grants queued together. SQLite
    /// has one writer at a time anyway.
    grants: Option<GrantWriter>,
    /// SQLite only: connections for the request paths' point reads, run on
    /// the caller's thread instead of a pool worker's (see [`Readers`]).
    readers: Option<Arc<Readers>>,
}

/// How often, and how far apart, a compaction that found the log busy is
/// tried again.
const COMPACT_TRIES: u32 = 50;
const COMPACT_RETRY: Duration = Duration::from_millis(10);

/// Longest a query waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl SqlStore {
    /// Connects and runs the embedded migrations. A `sqlite://` URL creates
    /// the file (and its folder) when missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = prepare_url(url)?;
        let options = AnyConnectOptions::from_str(&url)?;
        let is_sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite {
                1.max(max_connections)
            } else {
                max_connections
            })
            // A request fails within seconds when the database is away,
            // instead of hanging (answered 503 by the web layer).
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A pooled PostgreSQL connection is pinged before each use, so
            // one that a server restart closed is replaced before a query
            // fails on it. A SQLite connection is a file handle of this
            // process that nothing closes behind its back, and the ping is
            // a round trip to its worker thread: one more per statement.
            .test_before_acquire(!is_sqlite)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        // WAL (concurrent readers with one writer), NORMAL sync (durable in WAL mode
                        // except on power loss), FKs on, wait instead of
                        // failing on a locked database.
                        // journal_size_limit: a checkpointed log is cut back to
                        // 64 MiB instead of keeping its high-water size.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; \
                             PRAGMA journal_size_limit = 67108864;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let (grants, readers) = if is_sqlite {
            let grants = GrantWriter::start(
                open_grant_connection(&url)?,
                open_grant_connection(&url)?,
                CheckpointPolicy::default(),
            )?;
            (
                Some(grants),
                Some(Arc::new(Readers::open(sqlite_file(&url))?)),
            )
        } else {
            (None, None)
        };
        Ok(SqlStore {
            pool,
            sqlite: is_sqlite,
            grants,
            readers,
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// Opens the grant paths' SQLite connection on the file of `url` (a
/// prepared `sqlite://` URL; the schema exists), with the pool's settings.
fn open_grant_connection(url: &str) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open_with_flags(
        sqlite_file(url),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // As the pool's connections (see `connect`); the file is in WAL mode
    // already (a persistent setting). But FULL: a grant's commit reaches
    // the disk (`fsync` of the log) before it is answered, and the group
    // commit shares that `fsync` among the grants of a batch. The writer
    // sets NORMAL for the batches that need no `fsync` (its `Durability`).
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA busy_timeout = 5000; PRAGMA journal_size_limit = 67108864;",
    )?;
    Ok(conn)
}

/// The file of a `sqlite://` URL (without its query).
fn sqlite_file(url: &str) -> &str {
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    path.split('?').next().unwrap_or(path)
}

/// Adds `mode=rwc` to SQLite URLs and creates the parent folder.
fn prepare_url(url: &str) -> Result<String, StoreError> {
    let Some(path) = url.strip_prefix("sqlite://") else {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(url.to_string());
        }
        return Err(StoreError::Url(
            "expected sqlite://<path> or postgres://...".into(),
        ));
    };
    let file = path.split('?').next().unwrap_or(path);
    if let Some(parent) = std::path::Path::new(file).parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Url(format!("cannot create {}: {e}", parent.display())))?;
        }
    }
    if url.contains("mode=") {
        Ok(url.to_string())
    } else if url.contains('?') {
        Ok(format!("{url}&mode=rwc"))
    } else {
        Ok(format!("{url}?mode=rwc"))
    }
}

const SESSION_COLUMNS: &str = "id_hash, sid, connector_id, subject, auth_time, data, created_at, \
     expires_at, device_hash, device_label, ip, last_seen_at";
const REFRESH_COLUMNS: &str = "token_hash, family_id, client_id, sid, data, issued_at, expires_at";
const ACCOUNT_COLUMNS: &str = "id, username, email, version, data, created_at";

fn session_row(r: &AnyRow) -> Result<SessionRow, StoreError> {
    Ok(SessionRow {
        id_hash: r.try_get("id_hash")?,
        sid: r.try_get("sid")?,
        connector_id: r.try_get("connector_id")?,
        subject: r.try_get("subject")?,
        auth_time: r.try_get("auth_time")?,
        data: r.try_get("data")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        device_hash: r.try_get("device_hash")?,
        device_label: r.try_get("device_label")?,
        ip: r.try_get("ip")?,
        last_seen_at: r.try_get("last_seen_at")?,
    })
}

fn refresh_row(r: &AnyRow) -> Result<RefreshRow, StoreError> {
    Ok(RefreshRow {
        token_hash: r.try_get("token_hash")?,
        family_id: r.try_get("family_id")?,
        client_id: r.try_get("client_id")?,
        sid: r.try_get("sid")?,
        data: r.try_get("data")?,
        issued_at: r.try_get("issued_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

fn account_row(r: &AnyRow) -> Result<AccountRow, StoreError> {
    Ok(AccountRow {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        email: r.try_get("email")?,
        version: r.try_get("version")?,
        data: r.try_get("data")?,
        created_at: r.try_get("created_at")?,
    })
}

impl SqlStore {
    /// Classifies a login row read by `column = key`.
    async fn login_where(
        &self,
        column: &str,
        key: &str,
        now: i64,
    ) -> Result<Lookup<LoginRow>, StoreError> {
        let sql = format!(
            "SELECT id_hash, version, data, expires_at, finished_at FROM logins WHERE {column} = $1"
        );
        let found = if let Some(readers) = &self.readers {
            readers.read(|c| {
                c.prepare_cached(&sql)?
                    .query_row([key], |r| {
                        Ok((
                            LoginRow {
                                id_hash: r.get(0)?,
                                version: r.get(1)?,
                                data: r.get(2)?,
                                expires_at: r.get(3)?,
                            },
                            r.get::<_, Option<i64>>(4)?,
                        ))
                    })
                    .optional()
            })?
        } else {
            match sqlx::query(&sql)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?
            {
                Some(r) => Some((
                    LoginRow {
                        id_hash: r.try_get("id_hash")?,
                        version: r.try_get("version")?,
                        data: r.try_get("data")?,
                        expires_at: r.try_get("expires_at")?,
                    },
                    r.try_get::<Option<i64>, _>("finished_at")?,
                )),
                None => None,
            }
        };
        let Some((row, finished)) = found else {
            return Ok(Lookup::Missing);
        };
        Ok(if finished.is_some() {
            Lookup::Finished
        } else if row.expires_at <= now {
            Lookup::Expired
        } else {
            Lookup::Found(row)
        })
    }

    async fn session_where(
        &self,
        column: &str,
        key: &str,
        now: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE {column} = $1 AND expires_at > $2"
        );
        if let Some(readers) = &self.readers {
            return readers.read(|c| {
                c.prepare_cached(&sql)?
                    .query_row(rusqlite::params![key, now], |r| {
                        Ok(SessionRow {
                            id_hash: r.get(0)?,
                            sid: r.get(1)?,
                            connector_id: r.get(2)?,
                            subject: r.get(3)?,
                            auth_time: r.get(4)?,
                            data: r.get(5)?,
                            created_at: r.get(6)?,
                            expires_at: r.get(7)?,
                            device_hash: r.get(8)?,
                            device_label: r.get(9)?,
                            ip: r.get(10)?,
                            last_seen_at: r.get(11)?,
                        })
                    })
                    .optional()
            });
        }
        sqlx::query(&sql)
            .bind(key)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(session_row)
            .transpose()
    }

    async fn account_where(
        &self,
        column: &str,
        key: &str,
    ) -> Result<Option<AccountRow>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {column} = $1");
        sqlx::query(&sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(account_row)
            .transpose()
    }
}

/// A new login (`$1` id hash, `$2` data, `$3` expiry, `$4` state hash).
/// The SQLite grant writer runs it too, binding the `$n` by name.
const INSERT_LOGIN: &str =
    "INSERT INTO logins (id_hash, state_hash, version, data, expires_at, finished_at) \
     VALUES ($1, $4, 0, $2, $3, NULL)";

/// The compare-and-swap of a login: `$1` id hash, `$2` the version read,
/// `$3` data, `$4` new state hash (or keep), `$5` finished at (or not),
/// `$6` now.
const UPDATE_LOGIN: &str = "UPDATE logins SET version = version + 1, data = $3, \
     state_hash = COALESCE($4, state_hash), finished_at = $5 \
     WHERE id_hash = $1 AND version = $2 AND finished_at IS NULL AND expires_at > $6";

/// True when an insert failed on a unique or primary key.
fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_login(
        &self,
        id_hash: &str,
        data: &str,
        expires_at: i64,
        state_hash: Option<&str>,
    ) -> Result<(), StoreError> {
        if let Some(writer) = &self.grants {
            let (id_hash, data) = (id_hash.to_string(), data.to_string());
            let state_hash = state_hash.map(str::to_string);
            return writer
                .run_with(Durability::Normal, move |tx| {
                    tx.prepare_cached(INSERT_LOGIN)?
                        .execute(rusqlite::named_params! {
                            "$1": id_hash, "$2": data, "$3": expires_at, "$4": state_hash,
                        })?;
                    Ok(())
                })
                .await;
        }
        sqlx::query(INSERT_LOGIN)
            .bind(id_hash)
            .bind(data)
            .bind(expires_at)
            .bind(state_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn login(&self, id_hash: &str, now: i64) -> Result<Lookup<LoginRow>, StoreError> {
        self.login_where("id_hash", id_hash, now).await
    }

    async fn login_by_state(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Lookup<LoginRow>, StoreError> {
        self.login_where("state_hash", state_hash, now).await
    }

    async fn update_login(
        &self,
        id_hash: &str,
        version: i64,
        data: &str,
        state_hash: Option<&str>,
        finish: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        // One statement: the database picks the single winner of a race.
        if let Some(writer) = &self.grants {
            let (id_hash, data) = (id_hash.to_string(), data.to_string());
            let state_hash = state_hash.map(str::to_string);
            return writer
                .run_with(Durability::Normal, move |tx| {
                    let updated =
                        tx.prepare_cached(UPDATE_LOGIN)?
                            .execute(rusqlite::named_params! {
                                "$1": id_hash, "$2": version, "$3": data, "$4": state_hash,
                                "$5": finish.then_some(now), "$6": now,
                            })?;
                    Ok(updated == 1)
                })
                .await;
        }
        let r = sqlx::query(UPDATE_LOGIN)
            .bind(id_hash)
            .bind(version)
            .bind(data)
            .bind(state_hash)
            .bind(finish.then_some(now))
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_code(
        &self,
        code_hash: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO codes (code_hash, data, expires_at, redeemed_at, grant_id) \
             VALUES ($1, $2, $3, NULL, NULL)",
        )
        .bind(code_hash)
        .bind(data)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_session(&self, s: &SessionRow) -> Result<(), StoreError> {
        insert_session_query(s).execute(&self.pool).await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<SessionRow>, StoreError> {
        self.session_where("id_hash", id_hash, now).await
    }

    async fn session_by_sid(&self, sid: &str, now: i64) -> Result<Option<SessionRow>, StoreError> {
        self.session_where("sid", sid, now).await
    }

    async fn sessions_of_user(
        &self,
        connector_id: &str,
        subject: &str,
        now: i64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions \
             WHERE connector_id = $1 AND subject = $2 AND expires_at > $3 \
             ORDER BY created_at, sid"
        ))
        .bind(connector_id)
        .bind(subject)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_row).collect()
    }

    async fn delete_session(&self, id_hash: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("DELETE FROM sessions WHERE id_hash = $1 RETURNING sid")
            .bind(id_hash)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let sid: String = r.try_get("sid")?;
        sqlx::query("DELETE FROM session_clients WHERE sid = $1")
            .bind(&sid)
            .execute(&self.pool)
            .await?;
        Ok(Some(sid))
    }

    async fn add_session_client(
        &self,
        sid: &str,
        client_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO session_clients (sid, client_id, first_at, expires_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(sid)
        .bind(client_id)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn session_clients(&self, sid: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT client_id FROM session_clients WHERE sid = $1 ORDER BY first_at, client_id",
        )
        .bind(sid)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("client_id")?)).collect()
    }

    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn any_revoked(&self, ids: &[&str], now: i64) -> Result<bool, StoreError> {
        if ids.is_empty() {
            return Ok(false);
        }
        if let Some(readers) = &self.readers {
            // A point read per id, in one statement (one snapshot):
            // SQLite answers `jti IN (...)` by building a temporary
            // b-tree of the list first, which cost more than the reads.
            let sql = (0..ids.len())
                .map(|i| {
                    format!(
                        "EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = ?{} AND expires_at > ?1)",
                        i + 2
                    )
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            return readers.read(|c| {
                let mut statement = c.prepare_cached(&format!("SELECT {sql}"))?;
                statement.raw_bind_parameter(1, now)?;
                for (i, id) in ids.iter().enumerate() {
                    statement.raw_bind_parameter(i + 2, *id)?;
                }
                let mut rows = statement.raw_query();
                match rows.next()? {
                    Some(row) => row.get::<_, bool>(0),
                    None => Ok(false),
                }
            });
        }
        let placeholders: Vec<String> = (2..ids.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT 1 AS one FROM revoked_tokens WHERE expires_at > $1 AND jti IN ({}) LIMIT 1",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(now);
        for id in ids {
            query = query.bind(*id);
        }
        Ok(query.fetch_optional(&self.pool).await?.is_some())
    }

    async fn insert_refresh(&self, t: &RefreshRow) -> Result<(), StoreError> {
        insert_refresh_query(t).execute(&self.pool).await?;
        Ok(())
    }

    async fn use_refresh(&self, token_hash: &str, now: i64) -> Result<RefreshUse, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE refresh_tokens SET used_at = $2 \
             WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL \
             RETURNING {REFRESH_COLUMNS}"
        ))
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(r) = row {
            return Ok(RefreshUse::Fresh(refresh_row(&r)?));
        }
        let row = sqlx::query(
            "SELECT family_id, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(RefreshUse::Missing);
        };
        let revoked: Option<i64> = r.try_get("revoked_at")?;
        Ok(if revoked.is_some() {
            RefreshUse::Revoked
        } else {
            RefreshUse::Reused {
                family_id: r.try_get("family_id")?,
            }
        })
    }

    async fn revoke_family(&self, family_id: &str, now: i64) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 \
             WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn revoke_refresh_of_session(&self, sid: &str, now: i64) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE sid = $1 AND revoked_at IS NULL",
        )
        .bind(sid)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn insert_account(&self, a: &AccountRow) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&a.id)
        .bind(&a.username)
        .bind(a.email.as_deref())
        .bind(a.version)
        .bind(&a.data)
        .bind(a.created_at)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn account_by_username(&self, username: &str) -> Result<Option<AccountRow>, StoreError> {
        self.account_where("username", username).await
    }

    async fn account_by_email(&self, email: &str) -> Result<Option<AccountRow>, StoreError> {
        self.account_where("email", email).await
    }

    async fn update_account(&self, a: &AccountRow) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE accounts SET username = $3, email = $4, data = $5, version = version + 1 \
             WHERE id = $1 AND version = $2",
        )
        .bind(&a.id)
        .bind(a.version)
        .bind(&a.username)
        .bind(a.email.as_deref())
        .bind(&a.data)
        .execute(&self.pool)
        .await;
        match r {
            Ok(r) => Ok(r.rows_affected() == 1),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_expired(&self, before: i64, limit: i64) -> Result<u64, StoreError> {
        let mut removed: u64 = 0;
        for (table, key) in EXPIRING_TABLES {
            let budget = limit.saturating_sub(i64::try_from(removed).unwrap_or(i64::MAX));
            if budget <= 0 {
                break;
            }
            // A bounded batch, portable between SQLite and PostgreSQL (neither
            // `DELETE … LIMIT` nor `ctid`/`rowid` are): delete by key from a
            // limited sub-select.
            let sql = format!(
                "DELETE FROM {table} WHERE ({key}) IN \
                 (SELECT {key} FROM {table} WHERE expires_at < $1 LIMIT $2)"
            );
            removed += sqlx::query(&sql)
                .bind(before)
                .bind(budget)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(removed)
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, generation, alg, private_pem, created_at, activates_at, retires_at \
             FROM signing_keys \
             ORDER BY generation",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(KeyRecord {
                    kid: r.try_get("kid")?,
                    generation: r.try_get("generation")?,
                    alg: r.try_get("alg")?,
                    private_pem: r.try_get("private_pem")?,
                    created_at: r.try_get("created_at")?,
                    activates_at: r.try_get("activates_at")?,
                    retires_at: r.try_get("retires_at")?,
                })
            })
            .collect()
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<bool, StoreError> {
        // No conflict target: a clash on kid or on generation is ignored.
        let r = sqlx::query(
            "INSERT INTO signing_keys \
             (kid, generation, alg, private_pem, created_at, activates_at, retires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&key.kid)
        .bind(key.generation)
        .bind(&key.alg)
        .bind(&key.private_pem)
        .bind(key.created_at)
        .bind(key.activates_at)
        .bind(key.retires_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- token lifecycle (refresh, revocation, introspection) ---------------

    async fn refresh_status(&self, token_hash: &str) -> Result<Option<RefreshStatus>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {REFRESH_COLUMNS}, used_at, revoked_at FROM refresh_tokens \
             WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(RefreshStatus {
            row: refresh_row(&r)?,
            used_at: r.try_get("used_at")?,
            revoked_at: r.try_get("revoked_at")?,
        }))
    }

    async fn delete_session_by_sid(&self, sid: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM sessions WHERE sid = $1")
            .bind(sid)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM session_clients WHERE sid = $1")
            .bind(sid)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- signing-key rotation ------------------------------------------------

    async fn retire_key(&self, kid: &str, retires_at: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE signing_keys SET retires_at = $2 WHERE kid = $1 AND retires_at IS NULL",
        )
        .bind(kid)
        .bind(retires_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_retired_keys(&self, now: i64) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "DELETE FROM signing_keys WHERE retires_at IS NOT NULL AND retires_at <= $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    // ---- logout (OIDC RP-Initiated and Back-Channel Logout 1.0) ---------------

    async fn insert_logout_state(
        &self,
        state_hash: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO logout_states (state_hash, data, expires_at) VALUES ($1, $2, $3)")
            .bind(state_hash)
            .bind(data)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn take_logout_state(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        // One statement: two callbacks racing on one state get one winner.
        let row = sqlx::query(
            "DELETE FROM logout_states WHERE state_hash = $1 RETURNING data, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let expires_at: i64 = r.try_get("expires_at")?;
        Ok((expires_at > now).then(|| r.try_get("data")).transpose()?)
    }

    async fn enqueue_backchannel(&self, b: &BackchannelRow) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO backchannel_logouts ({BACKCHANNEL_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&b.id)
        .bind(&b.sid)
        .bind(&b.client_id)
        .bind(&b.uri)
        .bind(&b.token)
        .bind(b.attempts)
        .bind(b.next_attempt_at)
        .bind(b.created_at)
        .bind(b.expires_at)
        .bind(b.done_at)
        .bind(b.outcome.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn due_backchannel(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<BackchannelRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BACKCHANNEL_COLUMNS} FROM backchannel_logouts \
             WHERE done_at IS NULL AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(backchannel_row).collect()
    }

    async fn claim_backchannel(
        &self,
        id: &str,
        attempts: i64,
        retry_at: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE backchannel_logouts SET attempts = attempts + 1, next_attempt_at = $3 \
             WHERE id = $1 AND attempts = $2 AND done_at IS NULL",
        )
        .bind(id)
        .bind(attempts)
        .bind(retry_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn finish_backchannel(
        &self,
        id: &str,
        now: i64,
        outcome: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE backchannel_logouts SET done_at = $2, outcome = $3 \
             WHERE id = $1 AND done_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .bind(outcome)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn backchannel(&self, id: &str) -> Result<Option<BackchannelRow>, StoreError> {
        sqlx::query(&format!(
            "SELECT {BACKCHANNEL_COLUMNS} FROM backchannel_logouts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(backchannel_row)
        .transpose()
    }

    async fn backchannel_of_session(&self, sid: &str) -> Result<Vec<BackchannelRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BACKCHANNEL_COLUMNS} FROM backchannel_logouts WHERE sid = $1 \
             ORDER BY created_at, client_id"
        ))
        .bind(sid)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(backchannel_row).collect()
    }

    // ---- metrics ----

    fn writer_counts(&self) -> Option<(u64, u64)> {
        self.grants.as_ref().map(|w| {
            let stats = w.stats();
            (
                stats.jobs.load(std::sync::atomic::Ordering::Relaxed),
                stats.commits.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    async fn count_sessions(&self, now: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE expires_at > $1")
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRow>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(account_row)
        .collect()
    }

    // ---- mail (outbox and e-mail one-time codes) -------------------------------

    async fn enqueue_mail(&self, m: &OutboxRow) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO mail_outbox ({OUTBOX_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&m.id)
        .bind(&m.recipient)
        .bind(&m.subject)
        .bind(&m.body)
        .bind(m.created_at)
        .bind(m.attempts)
        .bind(m.next_attempt_at)
        .bind(m.sent_at)
        .bind(m.failed_at)
        .bind(m.last_error.as_deref())
        .bind(m.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn due_mail(&self, now: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM mail_outbox \
             WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_row).collect()
    }

    async fn claim_mail(&self, id: &str, attempts: i64, retry_at: i64) -> Result<bool, StoreError> {
        // One statement: of two workers claiming one attempt, one wins.
        let r = sqlx::query(
            "UPDATE mail_outbox SET attempts = attempts + 1, next_attempt_at = $3 \
             WHERE id = $1 AND attempts = $2 AND sent_at IS NULL AND failed_at IS NULL",
        )
        .bind(id)
        .bind(attempts)
        .bind(retry_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn mail_sent(&self, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE mail_outbox SET sent_at = $2, body = '', last_error = NULL \
             WHERE id = $1 AND sent_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mail_failed(
        &self,
        id: &str,
        error: &str,
        failed_at: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE mail_outbox SET last_error = $2, failed_at = $3 \
             WHERE id = $1 AND sent_at IS NULL AND failed_at IS NULL",
        )
        .bind(id)
        .bind(error)
        .bind(failed_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mail(&self, id: &str) -> Result<Option<OutboxRow>, StoreError> {
        sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM mail_outbox WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(outbox_row)
        .transpose()
    }

    async fn recent_mail(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM mail_outbox ORDER BY created_at DESC, id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_row).collect()
    }

    async fn put_email_code(
        &self,
        key_hash: &str,
        code_hash: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        // One statement: a new code replaces the old one and its attempts.
        sqlx::query(
            "INSERT INTO email_codes (key_hash, code_hash, attempts, expires_at) \
             VALUES ($1, $2, 0, $3) \
             ON CONFLICT (key_hash) DO UPDATE SET code_hash = excluded.code_hash, \
             attempts = 0, expires_at = excluded.expires_at",
        )
        .bind(key_hash)
        .bind(code_hash)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn check_email_code(
        &self,
        key_hash: &str,
        code_hash: &str,
        max_attempts: i64,
        now: i64,
    ) -> Result<CodeCheck, StoreError> {
        // A replacement between two statements can make the classification
        // below see a live, matching code; a few rounds settle it.
        for _ in 0..3 {
            // The right code, live: consumed by exactly one caller.
            let consumed = sqlx::query(
                "DELETE FROM email_codes WHERE key_hash = $1 AND code_hash = $2 \
                 AND attempts < $3 AND expires_at > $4 RETURNING attempts",
            )
            .bind(key_hash)
            .bind(code_hash)
            .bind(max_attempts)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            if consumed.is_some() {
                return Ok(CodeCheck::Accepted);
            }
            // A wrong code, live: one attempt counted, never past the limit.
            let counted = sqlx::query(
                "UPDATE email_codes SET attempts = attempts + 1 \
                 WHERE key_hash = $1 AND code_hash <> $2 AND attempts < $3 AND expires_at > $4 \
                 RETURNING attempts",
            )
            .bind(key_hash)
            .bind(code_hash)
            .bind(max_attempts)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(r) = counted {
                return Ok(CodeCheck::Wrong {
                    attempts: r.try_get("attempts")?,
                });
            }
            let Some(r) =
                sqlx::query("SELECT attempts, expires_at FROM email_codes WHERE key_hash = $1")
                    .bind(key_hash)
                    .fetch_optional(&self.pool)
                    .await?
            else {
                return Ok(CodeCheck::Missing);
            };
            let attempts: i64 = r.try_get("attempts")?;
            let expires_at: i64 = r.try_get("expires_at")?;
            if attempts >= max_attempts {
                return Ok(CodeCheck::Exhausted);
            }
            if expires_at <= now {
                return Ok(CodeCheck::Expired);
            }
        }
        Ok(CodeCheck::Missing)
    }

    // ---- rate limits (per-account throttles) ----

    async fn throttle_failure(&self, key: &str, now: i64, window: i64) -> Result<i64, StoreError> {
        // One statement, so concurrent failures serialise on the row. The
        // SET expressions all read the row as it was (SQLite and
        // PostgreSQL alike).
        let failures: i64 = sqlx::query_scalar(
            "INSERT INTO throttles \
             (throttle_key, failures, window_start, blocked_until, expires_at) \
             VALUES ($1, 1, $2, 0, $3) \
             ON CONFLICT (throttle_key) DO UPDATE SET \
             failures = CASE WHEN throttles.window_start <= $4 THEN 1 \
                             ELSE throttles.failures + 1 END, \
             window_start = CASE WHEN throttles.window_start <= $4 THEN $2 \
                                 ELSE throttles.window_start END, \
             expires_at = CASE WHEN throttles.window_start <= $4 THEN $3 \
                               ELSE throttles.expires_at END \
             RETURNING failures",
        )
        .bind(key)
        .bind(now)
        .bind(now.saturating_add(window))
        .bind(now.saturating_sub(window))
        .fetch_one(&self.pool)
        .await?;
        Ok(failures)
    }

    async fn throttle_block(&self, key: &str, until: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE throttles SET \
             blocked_until = CASE WHEN blocked_until < $2 THEN $2 ELSE blocked_until END, \
             expires_at = CASE WHEN expires_at < $2 THEN $2 ELSE expires_at END \
             WHERE throttle_key = $1",
        )
        .bind(key)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn throttle_blocked_until(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT blocked_until FROM throttles WHERE throttle_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn clear_throttle(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM throttles WHERE throttle_key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_device_sessions(
        &self,
        connector_id: &str,
        subject: &str,
        device_hash: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "DELETE FROM sessions \
             WHERE connector_id = $1 AND subject = $2 AND device_hash = $3 RETURNING sid",
        )
        .bind(connector_id)
        .bind(subject)
        .bind(device_hash)
        .fetch_all(&self.pool)
        .await?;
        let mut sids = Vec::with_capacity(rows.len());
        for r in &rows {
            let sid: String = r.try_get("sid")?;
            sqlx::query("DELETE FROM session_clients WHERE sid = $1")
                .bind(&sid)
                .execute(&self.pool)
                .await?;
            sids.push(sid);
        }
        Ok(sids)
    }

    async fn touch_session(
        &self,
        id_hash: &str,
        now: i64,
        stale_before: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE sessions SET last_seen_at = $1 \
             WHERE id_hash = $2 AND (last_seen_at IS NULL OR last_seen_at < $3)",
        )
        .bind(now)
        .bind(id_hash)
        .bind(stale_before)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_session_data(&self, sid: &str, data: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE sessions SET data = $1 WHERE sid = $2")
            .bind(data)
            .bind(sid)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn compact(&self) -> Result<(), StoreError> {
        if self.sqlite {
            // With requests always in flight the automatic (passive)
            // checkpoints never reach the log's end, and it grows without
            // bound; a TRUNCATE checkpoint waits for readers, copies the
            // log into the database and empties it. It answers busy
            // (row `(1, -1, -1)`), without waiting, while the grant
            // writer's checkpoint thread runs a checkpoint of its own: then
            // it is tried again shortly.
            for _ in 0..COMPACT_TRIES {
                let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(&self.pool)
                    .await?;
                if row.try_get::<i64, _>(0)? == 0 {
                    return Ok(());
                }
                tokio::time::sleep(COMPACT_RETRY).await;
            }
            tracing::warn!("the write-ahead log stayed busy; compaction waits for its next round");
        }
        Ok(())
    }

    // ---- passkeys (usernameless login) ----

    async fn insert_passkey_handle(
        &self,
        handle: &str,
        account_id: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("INSERT INTO passkey_handles (handle, account_id) VALUES ($1, $2)")
            .bind(handle)
            .bind(account_id)
            .execute(&self.pool)
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn account_by_passkey_handle(
        &self,
        handle: &str,
    ) -> Result<Option<AccountRow>, StoreError> {
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = \
             (SELECT account_id FROM passkey_handles WHERE handle = $1)"
        );
        sqlx::query(&sql)
            .bind(handle)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(account_row)
            .transpose()
    }
    async fn rotate_refresh(
        &self,
        token_hash: &str,
        client_id: &str,
        now: i64,
        next: NextRefresh,
    ) -> Result<Rotation, StoreError> {
        if let Some(writer) = &self.grants {
            let (token_hash, client_id) = (token_hash.to_string(), client_id.to_string());
            return writer
                .run(move |conn| rotate_on_sqlite(conn, &token_hash, &client_id, now, next))
                .await;
        }
        // PostgreSQL: the row is locked by the read (`FOR UPDATE`), so a
        // concurrent rotation waits and then reads it used.
        let mut tx = self.pool.begin().await?;
        let read = sqlx::query(&format!("{GRANT_READ} FOR UPDATE"))
            .bind(token_hash)
            .bind(FAMILY_MARKER_PREFIX)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| {
                Ok::<_, StoreError>(GrantRead {
                    row: refresh_row(&r)?,
                    used_at: r.try_get("used_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                    family_revoked: r.try_get("family_revoked")?,
                    session_alive: r.try_get("session_alive")?,
                })
            })
            .transpose()?;
        let (used, next, session_alive) = match decide_rotation(read, client_id, now, next)? {
            Decision::Stop(outcome) => return Ok(outcome),
            Decision::Rotate {
                used,
                next,
                session_alive,
            } => (used, next, session_alive),
        };
        let consumed = sqlx::query(CONSUME_REFRESH)
            .bind(token_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if consumed != 1 {
            return Ok(Rotation::Reused(used));
        }
        insert_refresh_query(&next).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Rotation::Rotated {
            used,
            session_alive,
        })
    }

    async fn replace_device_sessions(
        &self,
        row: &SessionRow,
        code: Option<&CodeInsert>,
    ) -> Result<Vec<String>, StoreError> {
        if let Some(writer) = &self.grants {
            let row = row.clone();
            let code = code.cloned();
            // A login's session and code need no `fsync` of their own
            // (the writer's `Durability`): lost to a power loss, the login
            // is done again, as with the logins in progress.
            return writer
                .run_with(Durability::Normal, move |tx| {
                    let sids = replace_device_sessions_on_sqlite(tx, &row)?;
                    if let Some(c) = &code {
                        insert_code_on_sqlite(tx, c)?;
                    }
                    Ok(sids)
                })
                .await;
        }
        let mut tx = self.pool.begin().await?;
        let mut sids = Vec::new();
        if let Some(device) = &row.device_hash {
            for r in sqlx::query(DELETE_DEVICE_SESSIONS)
                .bind(&row.connector_id)
                .bind(&row.subject)
                .bind(device)
                .fetch_all(&mut *tx)
                .await?
            {
                sids.push(r.try_get::<String, _>("sid")?);
            }
        }
        for sid in &sids {
            sqlx::query(DELETE_SESSION_CLIENTS)
                .bind(sid)
                .execute(&mut *tx)
                .await?;
        }
        insert_session_query(row).execute(&mut *tx).await?;
        if let Some(code) = code {
            insert_code_in(&mut tx, code).await?;
        }
        tx.commit().await?;
        Ok(sids)
    }

    async fn insert_code_for_session(&self, code: &CodeInsert) -> Result<(), StoreError> {
        if let Some(writer) = &self.grants {
            let c = code.clone();
            return writer
                .run_with(Durability::Normal, move |tx| {
                    Ok(insert_code_on_sqlite(tx, &c)?)
                })
                .await;
        }
        let mut tx = self.pool.begin().await?;
        insert_code_in(&mut tx, code).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn redeem_code_and_issue(
        &self,
        code_hash: &str,
        grant_id: &str,
        now: i64,
        first: FirstRefresh,
    ) -> Result<Redeemed, StoreError> {
        if let Some(writer) = &self.grants {
            let (code_hash, grant_id) = (code_hash.to_string(), grant_id.to_string());
            return writer
                .run(move |tx| {
                    let redeemed = tx
                        .prepare_cached(&SQLITE_REDEEM_CODE)?
                        .query_row(rusqlite::params![code_hash, grant_id, now], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                        })
                        .optional()?;
                    let Some((data, expires_at)) = redeemed else {
                        let used = tx
                            .prepare_cached(&SQLITE_CODE_GRANT)?
                            .query_row(rusqlite::params![code_hash], |r| r.get(0))
                            .optional()?;
                        return Ok(not_redeemed(used));
                    };
                    // An error here rolls this grant's writes back (its
                    // savepoint), the code's consumption included.
                    let refresh = first(&data, expires_at)?;
                    if let Some(row) = &refresh {
                        sqlite_insert_refresh(tx, row)?;
                    }
                    Ok(Redeemed::Fresh {
                        data,
                        expires_at,
                        refresh_issued: refresh.is_some(),
                    })
                })
                .await;
        }
        // PostgreSQL: a concurrent redemption's `UPDATE` waits for the row
        // lock of this one, then finds the code redeemed.
        let mut tx = self.pool.begin().await?;
        let redeemed = sqlx::query(REDEEM_CODE)
            .bind(code_hash)
            .bind(grant_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(r) = redeemed else {
            // The grant id was written by the statement that redeemed the
            // code, so a replay sees it as soon as the code is consumed.
            let used = sqlx::query(CODE_GRANT)
                .bind(code_hash)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get::<Option<String>, _>("grant_id"))
                .transpose()?;
            tx.commit().await?;
            return Ok(not_redeemed(used));
        };
        let (data, expires_at): (String, i64) = (r.try_get("data")?, r.try_get("expires_at")?);
        // An error here drops `tx`, which rolls it back.
        let refresh = first(&data, expires_at)?;
        if let Some(row) = &refresh {
            insert_refresh_query(row).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Redeemed::Fresh {
            data,
            expires_at,
            refresh_issued: refresh.is_some(),
        })
    }
}

/// A code that was not redeemed now: used before (with the grant its
/// redemption recorded), or unknown.
fn not_redeemed(used: Option<Option<String>>) -> Redeemed {
    match used {
        Some(grant_id) => Redeemed::Replayed { grant_id },
        None => Redeemed::Missing,
    }
}

/// Consumes a code once: only the statement that finds it unredeemed
/// returns it, and it records the grant in the same write.
const REDEEM_CODE: &str = "UPDATE codes SET redeemed_at = $3, grant_id = $2 \
     WHERE code_hash = $1 AND redeemed_at IS NULL RETURNING data, expires_at";
const CODE_GRANT: &str = "SELECT grant_id FROM codes WHERE code_hash = $1";

static SQLITE_REDEEM_CODE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| numbered(REDEEM_CODE));
static SQLITE_CODE_GRANT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| numbered(CODE_GRANT));

const DELETE_DEVICE_SESSIONS: &str = "DELETE FROM sessions \
     WHERE connector_id = $1 AND subject = $2 AND device_hash = $3 RETURNING sid";
const DELETE_SESSION_CLIENTS: &str = "DELETE FROM session_clients WHERE sid = $1";
const INSERT_CODE: &str = "INSERT INTO codes (code_hash, data, expires_at, redeemed_at, grant_id) \
     VALUES ($1, $2, $3, NULL, NULL)";
const INSERT_SESSION_CLIENT: &str = "INSERT INTO session_clients \
     (sid, client_id, first_at, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

static INSERT_SESSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    )
});

/// [`INSERT_SESSION`] of `row`, bound (sqlx).
fn insert_session_query(
    row: &SessionRow,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(&INSERT_SESSION)
        .bind(&row.id_hash)
        .bind(&row.sid)
        .bind(&row.connector_id)
        .bind(&row.subject)
        .bind(row.auth_time)
        .bind(&row.data)
        .bind(row.created_at)
        .bind(row.expires_at)
        .bind(&row.device_hash)
        .bind(&row.device_label)
        .bind(&row.ip)
        .bind(row.last_seen_at)
}

/// The refresh grant's one read: the token, its state, its family's
/// revocation marker (`$2` is [`FAMILY_MARKER_PREFIX`]) and whether its
/// session is unexpired at `$3`. Portable (`$n` placeholders).
const GRANT_READ: &str = "SELECT token_hash, family_id, client_id, sid, data, issued_at, \
     expires_at, used_at, revoked_at, \
     EXISTS (SELECT 1 FROM revoked_tokens \
             WHERE revoked_tokens.jti = $2 || refresh_tokens.family_id \
             AND revoked_tokens.expires_at > $3) AS family_revoked, \
     EXISTS (SELECT 1 FROM sessions \
             WHERE sessions.sid = refresh_tokens.sid \
             AND sessions.expires_at > $3) AS session_alive \
     FROM refresh_tokens WHERE token_hash = $1";

const CONSUME_REFRESH: &str = "UPDATE refresh_tokens SET used_at = $2 \
     WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL";

const INSERT_REFRESH: &str = "INSERT INTO refresh_tokens \
     (token_hash, family_id, client_id, sid, data, issued_at, expires_at, used_at, revoked_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)";

/// [`INSERT_REFRESH`] of `row`, bound (sqlx).
fn insert_refresh_query(
    row: &RefreshRow,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(INSERT_REFRESH)
        .bind(&row.token_hash)
        .bind(&row.family_id)
        .bind(&row.client_id)
        .bind(row.sid.as_deref())
        .bind(&row.data)
        .bind(row.issued_at)
        .bind(row.expires_at)
}

/// [`Store::replace_device_sessions`] on the SQLite grant writer, inside
/// its transaction: the sids of the sessions removed.
fn replace_device_sessions_on_sqlite(
    tx: &rusqlite::Connection,
    row: &SessionRow,
) -> rusqlite::Result<Vec<String>> {
    let mut sids = Vec::new();
    if let Some(device) = &row.device_hash {
        let mut delete = tx.prepare_cached(&SQLITE_DELETE_DEVICE_SESSIONS)?;
        let mut found = delete.query(rusqlite::params![row.connector_id, row.subject, device])?;
        while let Some(r) = found.next()? {
            sids.push(r.get::<_, String>(0)?);
        }
    }
    for sid in &sids {
        tx.prepare_cached(&SQLITE_DELETE_SESSION_CLIENTS)?
            .execute([sid])?;
    }
    tx.prepare_cached(&SQLITE_INSERT_SESSION)?
        .execute(rusqlite::params![
            row.id_hash,
            row.sid,
            row.connector_id,
            row.subject,
            row.auth_time,
            row.data,
            row.created_at,
            row.expires_at,
            row.device_hash,
            row.device_label,
            row.ip,
            row.last_seen_at,
        ])?;
    Ok(sids)
}

/// [`Store::insert_code_for_session`]'s writes in a rusqlite transaction.
fn insert_code_on_sqlite(tx: &rusqlite::Connection, c: &CodeInsert) -> rusqlite::Result<()> {
    tx.prepare_cached(&SQLITE_INSERT_CODE)?
        .execute(rusqlite::params![c.code_hash, c.data, c.expires_at])?;
    tx.prepare_cached(&SQLITE_INSERT_SESSION_CLIENT)?
        .execute(rusqlite::params![
            c.sid,
            c.client_id,
            c.now,
            c.session_expires_at
        ])?;
    Ok(())
}

/// [`Store::insert_code_for_session`]'s writes in a sqlx transaction.
async fn insert_code_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    code: &CodeInsert,
) -> Result<(), StoreError> {
    sqlx::query(INSERT_CODE)
        .bind(&code.code_hash)
        .bind(&code.data)
        .bind(code.expires_at)
        .execute(&mut **tx)
        .await?;
    sqlx::query(INSERT_SESSION_CLIENT)
        .bind(&code.sid)
        .bind(&code.client_id)
        .bind(code.now)
        .bind(code.session_expires_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// [`INSERT_REFRESH`] of `row` in a rusqlite transaction.
fn sqlite_insert_refresh(tx: &rusqlite::Connection, row: &RefreshRow) -> rusqlite::Result<()> {
    tx.prepare_cached(&SQLITE_INSERT_REFRESH)?
        .execute(rusqlite::params![
            row.token_hash,
            row.family_id,
            row.client_id,
            row.sid,
            row.data,
            row.issued_at,
            row.expires_at,
        ])?;
    Ok(())
}

/// SQLite numbers `?n` parameters by `n` but `$n` ones by first
/// appearance (they are names there): the rusqlite path uses `?n`.
fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}

static SQLITE_GRANT_READ: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| numbered(GRANT_READ));
static SQLITE_CONSUME_REFRESH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| numbered(CONSUME_REFRESH));
static SQLITE_INSERT_REFRESH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| numbered(INSERT_REFRESH));

static SQLITE_DELETE_DEVICE_SESSIONS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| numbered(DELETE_DEVICE_SESSIONS));
static SQLITE_DELETE_SESSION_CLIENTS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| numbered(DELETE_SESSION_CLIENTS));
static SQLITE_INSERT_SESSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| numbered(&INSERT_SESSION));
static SQLITE_INSERT_CODE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| numbered(INSERT_CODE));
static SQLITE_INSERT_SESSION_CLIENT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| numbered(INSERT_SESSION_CLIENT));

/// What [`GRANT_READ`] found.
struct GrantRead {
    row: RefreshRow,
    used_at: Option<i64>,
    revoked_at: Option<i64>,
    family_revoked: bool,
    session_alive: bool,
}

enum Decision {
    Stop(Rotation),
    Rotate {
        used: RefreshRow,
        next: RefreshRow,
        session_alive: bool,
    },
}

/// The checks of a refresh grant, in the order the token endpoint gives
/// its answers: whose token, revoked, reused, expired, the caller's own
/// check (`next`), the session.
fn decide_rotation(
    read: Option<GrantRead>,
    client_id: &str,
    now: i64,
    next: NextRefresh,
) -> Result<Decision, StoreError> {
    let Some(read) = read else {
        return Ok(Decision::Stop(Rotation::Missing));
    };
    let row = read.row;
    if row.client_id != client_id {
        return Ok(Decision::Stop(Rotation::OtherClient(row)));
    }
    if read.revoked_at.is_some() || read.family_revoked {
        return Ok(Decision::Stop(Rotation::Revoked));
    }
    if read.used_at.is_some() {
        return Ok(Decision::Stop(Rotation::Reused(row)));
    }
    if row.expires_at <= now {
        return Ok(Decision::Stop(Rotation::Expired));
    }
    let Some(next_row) = next(&row)? else {
        return Ok(Decision::Stop(Rotation::Refused(row)));
    };
    if row.sid.is_some() && !read.session_alive {
        return Ok(Decision::Stop(Rotation::SessionEnded));
    }
    Ok(Decision::Rotate {
        used: row,
        next: next_row,
        session_alive: read.session_alive,
    })
}

/// [`Store::rotate_refresh`] on the SQLite grant writer, inside its
/// transaction (which holds the write lock from its start, so the read
/// cannot go stale before the write).
fn rotate_on_sqlite(
    tx: &rusqlite::Connection,
    token_hash: &str,
    client_id: &str,
    now: i64,
    next: NextRefresh,
) -> Result<Rotation, StoreError> {
    let read = tx
        .prepare_cached(&SQLITE_GRANT_READ)?
        .query_row(
            rusqlite::params![token_hash, FAMILY_MARKER_PREFIX, now],
            |r| {
                Ok(GrantRead {
                    row: RefreshRow {
                        token_hash: r.get(0)?,
                        family_id: r.get(1)?,
                        client_id: r.get(2)?,
                        sid: r.get(3)?,
                        data: r.get(4)?,
                        issued_at: r.get(5)?,
                        expires_at: r.get(6)?,
                    },
                    used_at: r.get(7)?,
                    revoked_at: r.get(8)?,
                    family_revoked: r.get(9)?,
                    session_alive: r.get(10)?,
                })
            },
        )
        .optional()?;
    // An early return has written nothing.
    let (used, next, session_alive) = match decide_rotation(read, client_id, now, next)? {
        Decision::Stop(outcome) => return Ok(outcome),
        Decision::Rotate {
            used,
            next,
            session_alive,
        } => (used, next, session_alive),
    };
    let consumed = tx
        .prepare_cached(&SQLITE_CONSUME_REFRESH)?
        .execute(rusqlite::params![token_hash, now])?;
    if consumed != 1 {
        return Ok(Rotation::Reused(used));
    }
    sqlite_insert_refresh(tx, &next)?;
    Ok(Rotation::Rotated {
        used,
        session_alive,
    })
}

/// Every table with an `expires_at`, with its primary key.
const EXPIRING_TABLES: [(&str, &str); 11] = [
    ("logins", "id_hash"),
    ("codes", "code_hash"),
    ("sessions", "id_hash"),
    ("session_clients", "sid, client_id"),
    ("revoked_tokens", "jti"),
    ("refresh_tokens", "token_hash"),
    ("logout_states", "state_hash"),
    ("backchannel_logouts", "id"),
    ("mail_outbox", "id"),
    ("email_codes", "key_hash"),
    ("throttles", "throttle_key"),
];

const BACKCHANNEL_COLUMNS: &str = "id, sid, client_id, uri, token, attempts, next_attempt_at, \
     created_at, expires_at, done_at, outcome";

fn backchannel_row(r: &AnyRow) -> Result<BackchannelRow, StoreError> {
    Ok(BackchannelRow {
        id: r.try_get("id")?,
        sid: r.try_get("sid")?,
        client_id: r.try_get("client_id")?,
        uri: r.try_get("uri")?,
        token: r.try_get("token")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        done_at: r.try_get("done_at")?,
        outcome: r.try_get("outcome")?,
    })
}

const OUTBOX_COLUMNS: &str = "id, recipient, subject, body, created_at, attempts, \
     next_attempt_at, sent_at, failed_at, last_error, expires_at";

fn outbox_row(r: &AnyRow) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id: r.try_get("id")?,
        recipient: r.try_get("recipient")?,
        subject: r.try_get("subject")?,
        body: r.try_get("body")?,
        created_at: r.try_get("created_at")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        sent_at: r.try_get("sent_at")?,
        failed_at: r.try_get("failed_at")?,
        last_error: r.try_get("last_error")?,
        expires_at: r.try_get("expires_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn sqlite_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/nested/store.db", dir.path().display());
        let store = SqlStore::connect(&url, 4).await.unwrap();
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
        crate::store::conformance::run_all(Arc::new(store)).await;
    }

    /// A grant's commit reaches the disk before it is answered: the grant
    /// writer's connection syncs the log at every commit (`FULL` is 2).
    #[tokio::test]
    async fn grants_commit_with_a_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/store.db", dir.path().display());
        let store = SqlStore::connect(&url, 2).await.unwrap();
        let writer = store.grants.as_ref().unwrap();
        let sync: i64 = writer
            .run(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(sync, 2);
    }

    /// A login's removal of the browser's earlier session finds that row
    /// by index (user and device), instead of reading every session of the
    /// user (a login's cost would grow with the user's sessions).
    #[tokio::test]
    async fn device_sessions_are_found_by_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/store.db", dir.path().display());
        let _store = SqlStore::connect(&url, 1).await.unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
        let mut plan = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                *SQLITE_DELETE_DEVICE_SESSIONS
            ))
            .unwrap();
        let details: Vec<String> = plan
            .query_map(["c", "s", "d"], |r| r.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            details,
            ["SEARCH sessions USING COVERING INDEX sessions_user_device \
              (connector_id=? AND subject=? AND device_hash=?)"]
        );
    }

    /// The garbage collector's compaction empties SQLite's write-ahead log.
    #[tokio::test]
    async fn compaction_empties_the_write_ahead_log() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/store.db", dir.path().display());
        let store = SqlStore::connect(&url, 2).await.unwrap();
        let wal = dir.path().join("store.db-wal");
        let payload = "x".repeat(4000);
        for i in 0..500 {
            store
                .insert_login(&format!("l{i}"), &payload, i64::MAX, None)
                .await
                .unwrap();
        }
        let before = std::fs::metadata(&wal).unwrap().len();
        assert!(before > 100_000, "the log grew: {before}");
        store.compact().await.unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        // Nothing was lost.
        assert!(matches!(
            store.login("l499", 0).await.unwrap(),
            Lookup::Found(_)
        ));
    }

    #[tokio::test]
    async fn sqlite_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/store.db", dir.path().display());
        let a = SqlStore::connect(&url, 1).await.unwrap();
        a.insert_code("keep", "x", i64::MAX).await.unwrap();
        drop(a);
        let b = SqlStore::connect(&url, 1).await.unwrap();
        assert!(matches!(
            b.redeem_code_and_issue("keep", "g", 0, Box::new(|_, _| Ok(None)))
                .await
                .unwrap(),
            Redeemed::Fresh { .. }
        ));
    }

    /// A database migrated by a newer binary (a migration this binary
    /// does not know) is refused at start-up instead of being misused.
    #[tokio::test]
    async fn refuses_a_schema_newer_than_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/store.db", dir.path().display());
        let store = SqlStore::connect(&url, 1).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations \
             (version, description, success, checksum, execution_time) \
             VALUES (99990101000000, 'from the future', 1, x'00', 0)",
        )
        .execute(store.pool())
        .await
        .unwrap();
        store.pool().close().await;
        let err = SqlStore::connect(&url, 1).await.unwrap_err();
        assert!(matches!(err, StoreError::Migrate(_)), "{err}");
    }

    /// SQLite's pooled connections serve statements without a ping first
    /// (a round trip to the connection's worker thread each); PostgreSQL's
    /// are pinged, so one a server restart closed is replaced before a
    /// query fails on it.
    #[tokio::test]
    async fn only_server_connections_are_pinged_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/store.db", dir.path().display());
        let sqlite = SqlStore::connect(&url, 2).await.unwrap();
        assert!(!sqlite.pool().options().get_test_before_acquire());
        let pg = crate::store::conformance::TestPostgres::new().await;
        assert!(pg.store.pool().options().get_test_before_acquire());
        pg.drop_schema().await;
    }

    /// The same suite on the project's PostgreSQL server (127.0.0.1:5432,
    /// database `test`), in a schema of its own.
    #[tokio::test]
    async fn postgres_conformance() {
        let pg = crate::store::conformance::TestPostgres::new().await;
        crate::store::conformance::run_all(Arc::new(pg.store.clone())).await;
        pg.drop_schema().await;
    }
}
