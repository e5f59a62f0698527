//! A PostgreSQL schema of its own per test, on the project's server.

use anyhow::Context;

use crate::rp::random_string;

/// A schema of its own in the project's PostgreSQL database (`test` at
/// 127.0.0.1:5432, or `AUTH_ADAPTER_TEST_POSTGRES`).
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
        let name = format!("e2e_{}", random_string(12).to_lowercase().replace('-', "_"));
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
            .context("PostgreSQL must answer at 127.0.0.1:5432 (scripts/install-test-deps.sh)")?;
        sqlx::query(sql).execute(&admin).await?;
        admin.close().await;
        Ok(())
    }
}
