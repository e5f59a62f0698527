//! The services under measurement, each in its own process: the adapter and
//! the upstream test server, started from the bench binary in service mode
//! ([`SERVE_ENV`], running their own `main`s) with a generated
//! configuration file and data directory, on free loopback ports, and
//! considered started once `/healthz/ready` answers 200.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procstat;

/// The secret of the bench's relying party at every service.
pub const CLIENT_SECRET: &str = "bench-client-secret";
/// The adapter's client secret at the upstream.
pub const UPSTREAM_CLIENT_SECRET: &str = "bench-upstream-secret";
/// The redirect URI of the bench's relying party (never contacted).
pub const RP_REDIRECT: &str = "http://127.0.0.1:1/cb";
/// The relying party's client id at the adapter (and at the upstream for
/// the client-credentials grant).
pub const CLIENT_ID: &str = "bench";
/// The upstream's id in the adapter's configuration.
pub const UPSTREAM_ID: &str = "test-auth-server";

/// The environment variable that turns the bench binary into a service:
/// `adapter` runs the adapter's `main`, `upstream` the upstream test
/// server's. One binary, so `cargo run -p bench` always runs services built
/// from the same sources as the bench.
pub const SERVE_ENV: &str = "BENCH_SERVE";

/// Which service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Adapter,
    Upstream,
}

impl Kind {
    /// The value of [`SERVE_ENV`] for this service.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Adapter => "adapter",
            Kind::Upstream => "upstream",
        }
    }
}

/// The binary the services run from: the bench binary itself (see
/// [`SERVE_ENV`]).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub exe: PathBuf,
}

impl Binaries {
    /// The running binary.
    pub fn current() -> anyhow::Result<Self> {
        Ok(Binaries {
            exe: std::env::current_exe()?,
        })
    }
}

/// A free loopback port (bound, then released for the service to bind).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running service process.
pub struct Service {
    pub name: String,
    pub base: String,
    pub pid: u32,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Service {
    /// Writes `config_toml` into `dir`, starts `bin --config <file>` with
    /// `env`, and waits until `/healthz/ready` answers 200.
    pub async fn start(
        name: &str,
        kind: Kind,
        bins: &Binaries,
        dir: &Path,
        port: u16,
        config_toml: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Service> {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, config_toml)?;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(&bins.exe)
            .env(SERVE_ENV, kind.as_str())
            .arg("--config")
            .arg(&config)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bins.exe.display()))?;
        let pid = child.id().context("pid")?;
        let mut service = Service {
            name: name.into(),
            base: format!("http://127.0.0.1:{port}"),
            pid,
            child,
            log,
        };
        service.wait_ready().await?;
        Ok(service)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let url = format!("{}{}", self.base, adapter::paths::HEALTH_READY);
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} not ready within 120 s:\n{}", self.name, self.log_tail())
    }

    /// The last lines of the service's output.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The process's CPU time so far, µs.
    pub fn cpu_us(&self) -> u64 {
        procstat::cpu_us(self.pid).unwrap_or(0)
    }

    /// The process's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        procstat::rss_kib(self.pid).unwrap_or(0)
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Ports and paths shared by the configurations of one run.
#[derive(Debug, Clone)]
pub struct Layout {
    pub upstream_port: u16,
    /// Every adapter port of the run (each is a redirect URI at the upstream).
    pub adapter_ports: Vec<u16>,
}

/// The upstream test server's configuration: its demo user (`testuser` /
/// `password`, hashed at its start with the default cost), a second user
/// whose hash has argon2id's least cost ([`quick_hash`]), the adapter as a
/// client (one redirect URI per adapter of the run), and the bench as a
/// client-credentials client.
pub fn upstream_toml(layout: &Layout, dir: &Path) -> anyhow::Result<String> {
    let up = layout.upstream_port;
    let redirects: Vec<String> = layout
        .adapter_ports
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}/login/oauth2/code/{UPSTREAM_ID}\""))
        .collect();
    Ok(format!(
        r#"[server]
listen = "127.0.0.1:{up}"
issuer = "http://127.0.0.1:{up}"
shutdown_grace_seconds = 0

[database]
url = "sqlite://{db}"

# Every bench login comes from 127.0.0.1: the per-address quotas and the
# per-account throttle would measure themselves, not the login.
[rate_limits]
enabled = false

[[local_users]]
username = "{demo}"
password = "{password}"
name = "Test User"
email = "testuser@example.org"
groups = ["user"]

[[local_users]]
username = "{quick}"
password_hash = "{quick_hash}"
name = "Quick User"
email = "quickuser@example.org"
groups = ["user"]

[[clients]]
id = "auth-adapter"
secret_env = "BENCH_UPSTREAM_CLIENT_SECRET"
redirect_uris = [{redirects}]
grant_types = ["authorization_code", "refresh_token"]

[[clients]]
id = "{CLIENT_ID}"
secret_env = "BENCH_CLIENT_SECRET"
redirect_uris = ["{RP_REDIRECT}"]
allowed_scopes = ["openid", "profile", "email"]
grant_types = ["authorization_code", "client_credentials"]
"#,
        db = dir.join("upstream.db").display(),
        redirects = redirects.join(", "),
        demo = crate::flows::DEMO_USER,
        quick = crate::flows::QUICK_USER,
        password = crate::flows::PASSWORD,
        quick_hash = quick_hash(crate::flows::PASSWORD)?,
    ))
}

/// An argon2id hash of `password` at the algorithm's least cost (8 KiB,
/// one pass): about 10 µs to check instead of the default's tens of
/// milliseconds. Made at every run with a fresh salt.
pub fn quick_hash(password: &str) -> anyhow::Result<String> {
    use argon2::PasswordHasher;
    let params = argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None)
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    Ok(hasher
        .hash_password(password.as_bytes())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
        .to_string())
}

/// An adapter's configuration: `alg` signs its tokens, `database_url` is
/// SQLite or PostgreSQL (then the signing keys' encryption key comes from
/// `BENCH_KEYS_KEY`), the bench is its client, the upstream its only
/// connector.
pub fn adapter_toml(layout: &Layout, port: u16, alg: &str, database_url: &str) -> String {
    let keys = if database_url.starts_with("postgres") {
        "[keys]\nencryption_key_env = \"BENCH_KEYS_KEY\"\n"
    } else {
        ""
    };
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
issuer = "http://127.0.0.1:{port}"
shutdown_grace_seconds = 0

[database]
url = "{database_url}"

[tokens]
signing_alg = "{alg}"

{keys}
[[clients]]
id = "{CLIENT_ID}"
secret_env = "BENCH_CLIENT_SECRET"
redirect_uris = ["{RP_REDIRECT}"]
allowed_scopes = ["openid", "profile", "email"]
grant_types = ["authorization_code", "refresh_token", "client_credentials"]

[[upstreams]]
id = "{UPSTREAM_ID}"
issuer = "http://127.0.0.1:{up}"
client_id = "auth-adapter"
client_secret_env = "BENCH_UPSTREAM_CLIENT_SECRET"
"#,
        up = layout.upstream_port,
    )
}

/// The environment every service gets: the client secrets the
/// configurations name, the keys' encryption key, and `RUST_LOG=info` (the
/// default an operator runs: one line per request).
pub fn service_env(keys_key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("BENCH_CLIENT_SECRET", CLIENT_SECRET.into()),
        (
            "BENCH_UPSTREAM_CLIENT_SECRET",
            UPSTREAM_CLIENT_SECRET.into(),
        ),
        ("BENCH_KEYS_KEY", keys_key.into()),
        ("RUST_LOG", "info".into()),
    ]
}

/// A PostgreSQL schema of the bench's own in the project's database
/// (`AUTH_ADAPTER_TEST_POSTGRES`, default `test` at 127.0.0.1:5432),
/// dropped by [`PgSchema::drop_schema`].
pub struct PgSchema {
    base: String,
    name: String,
    /// A database URL whose connections use this schema.
    pub url: String,
}

impl PgSchema {
    pub async fn create() -> anyhow::Result<PgSchema> {
        let base = std::env::var("AUTH_ADAPTER_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!(
            "bench_{}",
            adapter::secret::random_token()
                .to_lowercase()
                .replace('-', "_")
                .chars()
                .take(12)
                .collect::<String>()
        );
        Self::run(&base, &format!("CREATE SCHEMA {name}")).await?;
        let url = format!("{base}?options=-c%20search_path%3D{name}");
        Ok(PgSchema { base, name, url })
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) -> anyhow::Result<()> {
        Self::run(&self.base, &format!("DROP SCHEMA {} CASCADE", self.name)).await
    }

    async fn run(base: &str, sql: &str) -> anyhow::Result<()> {
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(base)
            .await
            .context("PostgreSQL must answer at 127.0.0.1:5432")?;
        sqlx::query(sql).execute(&admin).await?;
        admin.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick user's hash checks the password at argon2id's least cost.
    #[test]
    fn the_quick_hash_is_argon2id_at_its_least_cost() {
        use argon2::PasswordVerifier;
        let phc = quick_hash("password").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{phc}");
        adapter::password::validate_phc(&phc).unwrap();
        let argon = argon2::Argon2::default();
        assert!(argon.verify_password(b"password", phc.as_str()).is_ok());
        assert!(argon.verify_password(b"wrong", phc.as_str()).is_err());
    }
}
