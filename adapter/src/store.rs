//! Persistence: the [`Store`] trait and its SQL implementation.
//!
//! Everything a flow needs between two HTTP requests lives here, so a flow
//! survives a restart and (with PostgreSQL) can finish on another replica:
//! pending authorization requests, upstream login states, authorization
//! codes, browser sessions and signing keys.
//!
//! Short-lived artifacts share one table keyed by `(kind, id)`. Single-use
//! artifacts are consumed with one conditional `UPDATE … WHERE consumed_at IS
//! NULL RETURNING`, so two concurrent redeems give exactly one winner
//! (checklist B5, G1). Ids of secrets (codes, session ids, states) are stored
//! as SHA-256 hashes by the callers ([`crate::secret::hash`]).
//!
//! [`SqlStore`] runs the same portable SQL on SQLite (the embedded default,
//! WAL mode) and PostgreSQL through sqlx's `Any` driver: times are INTEGER
//! unix seconds, ids and payloads TEXT.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};

/// Failure of the storage backend. Never carries secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("invalid database url: {0}")]
    Url(String),
}

/// The kinds of short-lived artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A downstream authorization request waiting for a login.
    AuthRequest,
    /// An upstream login in progress (keyed by the hash of the upstream `state`).
    LoginState,
    /// An authorization code (keyed by its hash).
    Code,
    /// A browser session (keyed by the hash of the cookie value).
    Session,
    /// What a redeemed code issued (keyed by the code's hash), so a replay
    /// can revoke it (RFC 6749 §4.1.2).
    CodeGrant,
    /// A revoked access token (keyed by its `jti`) until it expires.
    RevokedToken,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AuthRequest => "auth_request",
            Kind::LoginState => "login_state",
            Kind::Code => "code",
            Kind::Session => "session",
            Kind::CodeGrant => "code_grant",
            Kind::RevokedToken => "revoked_token",
        }
    }
}

/// Outcome of consuming a single-use artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Consumed now, by this caller. Payload and expiry (unix seconds).
    Fresh { data: String, expires_at: i64 },
    /// Exists but was consumed before (a replay).
    AlreadyUsed,
    /// Never existed, or garbage-collected.
    Missing,
}

/// A signing key as stored. The private key is PKCS#8 PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub kid: String,
    /// Unique: at most one key per generation (0 is the first key).
    pub generation: i64,
    pub alg: String,
    pub private_pem: String,
    pub created_at: i64,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a log line.
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("generation", &self.generation)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The storage seam. Implementations must make `take` atomic.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap liveness query for `/healthz/ready`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts or replaces an artifact.
    async fn put(
        &self,
        kind: Kind,
        id: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// Reads an unconsumed, unexpired artifact without consuming it.
    async fn get(&self, kind: Kind, id: &str, now: i64) -> Result<Option<String>, StoreError>;

    /// Consumes an artifact exactly once. Expiry is left to the caller, which
    /// can then tell "expired" from "replayed".
    async fn take(&self, kind: Kind, id: &str, now: i64) -> Result<Taken, StoreError>;

    /// Deletes an artifact (logout, session replaced).
    async fn delete(&self, kind: Kind, id: &str) -> Result<(), StoreError>;

    /// Removes artifacts that expired before `before`. Returns how many.
    async fn delete_expired(&self, before: i64) -> Result<u64, StoreError>;

    /// All signing keys, by generation.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Adds a signing key unless its kid or generation exists. True if added.
    async fn insert_key(&self, key: &KeyRecord) -> Result<bool, StoreError>;
}

/// Typed helpers over the raw string payloads.
impl dyn Store {
    pub async fn put_json<T: Serialize + Sync>(
        &self,
        kind: Kind,
        id: &str,
        value: &T,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let data = serde_json::to_string(value)?;
        self.put(kind, id, &data, expires_at).await
    }

    pub async fn get_json<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
        now: i64,
    ) -> Result<Option<T>, StoreError> {
        match self.get(kind, id, now).await? {
            Some(data) => Ok(Some(serde_json::from_str(&data)?)),
            None => Ok(None),
        }
    }

    /// Consumes an artifact and decodes it. Expired artifacts are reported
    /// as [`TakenJson::Expired`].
    pub async fn take_json<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
        now: i64,
    ) -> Result<TakenJson<T>, StoreError> {
        Ok(match self.take(kind, id, now).await? {
            Taken::Fresh { expires_at, .. } if expires_at <= now => TakenJson::Expired,
            Taken::Fresh { data, .. } => TakenJson::Fresh(serde_json::from_str(&data)?),
            Taken::AlreadyUsed => TakenJson::AlreadyUsed,
            Taken::Missing => TakenJson::Missing,
        })
    }
}

/// Decoded outcome of [`Store::take`].
#[derive(Debug, PartialEq, Eq)]
pub enum TakenJson<T> {
    Fresh(T),
    Expired,
    AlreadyUsed,
    Missing,
}

/// SQL implementation for SQLite and PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
}

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
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        // Checklist G2: WAL, NORMAL sync (durable in WAL mode
                        // except on power loss), FKs on, wait instead of
                        // failing on a locked database.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqlStore { pool })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
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

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn put(
        &self,
        kind: Kind,
        id: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO artifacts (kind, id, data, expires_at, consumed_at) \
             VALUES ($1, $2, $3, $4, NULL) \
             ON CONFLICT (kind, id) DO UPDATE SET data = excluded.data, \
             expires_at = excluded.expires_at, consumed_at = NULL",
        )
        .bind(kind.as_str())
        .bind(id)
        .bind(data)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get(&self, kind: Kind, id: &str, now: i64) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT data FROM artifacts WHERE kind = $1 AND id = $2 \
             AND consumed_at IS NULL AND expires_at > $3",
        )
        .bind(kind.as_str())
        .bind(id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<String, _>("data")?),
            None => None,
        })
    }

    async fn take(&self, kind: Kind, id: &str, now: i64) -> Result<Taken, StoreError> {
        // One statement: the database decides the single winner.
        let row = sqlx::query(
            "UPDATE artifacts SET consumed_at = $3 \
             WHERE kind = $1 AND id = $2 AND consumed_at IS NULL \
             RETURNING data, expires_at",
        )
        .bind(kind.as_str())
        .bind(id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(r) = row {
            return Ok(Taken::Fresh {
                data: r.try_get("data")?,
                expires_at: r.try_get("expires_at")?,
            });
        }
        let exists = sqlx::query("SELECT 1 AS one FROM artifacts WHERE kind = $1 AND id = $2")
            .bind(kind.as_str())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(if exists.is_some() {
            Taken::AlreadyUsed
        } else {
            Taken::Missing
        })
    }

    async fn delete(&self, kind: Kind, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM artifacts WHERE kind = $1 AND id = $2")
            .bind(kind.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_expired(&self, before: i64) -> Result<u64, StoreError> {
        let r = sqlx::query("DELETE FROM artifacts WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, generation, alg, private_pem, created_at FROM signing_keys \
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
                })
            })
            .collect()
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<bool, StoreError> {
        // No conflict target: a clash on kid or on generation is ignored.
        let r = sqlx::query(
            "INSERT INTO signing_keys (kid, generation, alg, private_pem, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&key.kid)
        .bind(key.generation)
        .bind(&key.alg)
        .bind(&key.private_pem)
        .bind(key.created_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}

/// The conformance suite every [`Store`] implementation must pass. Called
/// by the tests below for SQLite and PostgreSQL.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use std::sync::Arc;

    pub async fn run_all(store: Arc<dyn Store>) {
        put_get_delete(&*store).await;
        get_hides_expired(&*store).await;
        take_is_single_use(&*store).await;
        take_reports_expiry(&*store).await;
        concurrent_take_has_one_winner(store.clone()).await;
        gc_removes_expired(&*store).await;
        keys_roundtrip(&*store).await;
        store.ping().await.unwrap();
    }

    async fn put_get_delete(s: &dyn Store) {
        s.put(Kind::Session, "s1", "{\"a\":1}", 100).await.unwrap();
        assert_eq!(
            s.get(Kind::Session, "s1", 50).await.unwrap().as_deref(),
            Some("{\"a\":1}")
        );
        // Kinds are separate namespaces.
        assert_eq!(s.get(Kind::Code, "s1", 50).await.unwrap(), None);
        s.delete(Kind::Session, "s1").await.unwrap();
        assert_eq!(s.get(Kind::Session, "s1", 50).await.unwrap(), None);
    }

    async fn get_hides_expired(s: &dyn Store) {
        s.put(Kind::AuthRequest, "r1", "x", 100).await.unwrap();
        assert!(s.get(Kind::AuthRequest, "r1", 99).await.unwrap().is_some());
        assert!(s.get(Kind::AuthRequest, "r1", 100).await.unwrap().is_none());
    }

    async fn take_is_single_use(s: &dyn Store) {
        s.put(Kind::Code, "c1", "payload", 100).await.unwrap();
        assert_eq!(
            s.take(Kind::Code, "c1", 10).await.unwrap(),
            Taken::Fresh {
                data: "payload".into(),
                expires_at: 100
            }
        );
        assert_eq!(
            s.take(Kind::Code, "c1", 11).await.unwrap(),
            Taken::AlreadyUsed
        );
        assert_eq!(s.get(Kind::Code, "c1", 11).await.unwrap(), None);
        assert_eq!(
            s.take(Kind::Code, "nope", 11).await.unwrap(),
            Taken::Missing
        );
    }

    async fn take_reports_expiry(s: &dyn Store) {
        s.put(Kind::Code, "c2", "\"v\"", 100).await.unwrap();
        let t: TakenJson<String> = s.take_json(Kind::Code, "c2", 100).await.unwrap();
        assert_eq!(t, TakenJson::Expired);
        s.put(Kind::Code, "c3", "\"v\"", 100).await.unwrap();
        let t: TakenJson<String> = s.take_json(Kind::Code, "c3", 99).await.unwrap();
        assert_eq!(t, TakenJson::Fresh("v".to_string()));
    }

    async fn concurrent_take_has_one_winner(s: Arc<dyn Store>) {
        s.put(Kind::Code, "race", "x", 1000).await.unwrap();
        let mut handles = Vec::new();
        for _ in 0..8 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                s.take(Kind::Code, "race", 1).await.unwrap()
            }));
        }
        let mut fresh = 0;
        for h in handles {
            if matches!(h.await.unwrap(), Taken::Fresh { .. }) {
                fresh += 1;
            }
        }
        assert_eq!(fresh, 1, "exactly one concurrent take wins (B5)");
    }

    async fn gc_removes_expired(s: &dyn Store) {
        s.put(Kind::LoginState, "old", "x", 10).await.unwrap();
        s.put(Kind::LoginState, "new", "x", 10_000).await.unwrap();
        assert!(s.delete_expired(20).await.unwrap() >= 1);
        assert_eq!(
            s.take(Kind::LoginState, "old", 5).await.unwrap(),
            Taken::Missing
        );
        assert!(s.get(Kind::LoginState, "new", 20).await.unwrap().is_some());
    }

    async fn keys_roundtrip(s: &dyn Store) {
        let k1 = KeyRecord {
            kid: "k1".into(),
            generation: 1,
            alg: "RS256".into(),
            private_pem: "pem1".into(),
            created_at: 5,
        };
        let k0 = KeyRecord {
            kid: "k0".into(),
            generation: 0,
            alg: "ES256".into(),
            private_pem: "pem0".into(),
            created_at: 9,
        };
        assert!(s.insert_key(&k1).await.unwrap());
        assert!(s.insert_key(&k0).await.unwrap());
        // Same kid: ignored.
        let same_kid = KeyRecord {
            private_pem: "other".into(),
            generation: 7,
            ..k1.clone()
        };
        assert!(!s.insert_key(&same_kid).await.unwrap());
        // Same generation (a replica lost the race): ignored.
        let same_generation = KeyRecord {
            kid: "k-late".into(),
            ..k0.clone()
        };
        assert!(!s.insert_key(&same_generation).await.unwrap());
        assert_eq!(s.list_keys().await.unwrap(), vec![k0, k1]);
    }
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
        conformance::run_all(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn sqlite_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/store.db", dir.path().display());
        let a = SqlStore::connect(&url, 1).await.unwrap();
        a.put(Kind::Session, "keep", "x", i64::MAX).await.unwrap();
        drop(a);
        let b = SqlStore::connect(&url, 1).await.unwrap();
        assert!(b.get(Kind::Session, "keep", 0).await.unwrap().is_some());
    }

    /// G4: a database migrated by a newer binary (a migration this binary
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

    /// The same suite on the project's PostgreSQL server (127.0.0.1:5432,
    /// database `test`), in a schema of its own.
    #[tokio::test]
    async fn postgres_conformance() {
        let base = std::env::var("AUTH_ADAPTER_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!(
            "store_test_{}",
            crate::secret::random_token()[..12].to_lowercase()
        )
        .replace('-', "_");
        sqlx::any::install_default_drivers();
        let admin = AnyPool::connect(&base)
            .await
            .expect("PostgreSQL must run at 127.0.0.1:5432 (see scripts/install-test-deps.sh)");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("{base}?options=-c%20search_path%3D{schema}");
        let store = SqlStore::connect(&url, 4).await.unwrap();
        conformance::run_all(Arc::new(store.clone())).await;
        store.pool().close().await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await
            .unwrap();
    }
}
