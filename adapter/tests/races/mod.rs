//! Races at the token endpoint, on SQLite and on the real PostgreSQL.

use std::sync::Arc;

use reqwest::header::WWW_AUTHENTICATE;
use reqwest::StatusCode;
use serde_json::Value;

use super::support::*;

/// A schema of its own on the project's PostgreSQL server.
struct PgSchema {
    admin: sqlx::AnyPool,
    name: String,
    url: String,
}

impl PgSchema {
    async fn new() -> PgSchema {
        let base = std::env::var("AUTH_ADAPTER_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&base)
            .await
            .expect("PostgreSQL must run at 127.0.0.1:5432 (see scripts/install-test-deps.sh)");
        let name = format!(
            "races_{}",
            adapter::secret::random_token()[..12]
                .to_lowercase()
                .replace('-', "_")
        );
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("{base}?options=-c%20search_path%3D{name}");
        PgSchema { admin, name, url }
    }

    async fn drop(self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

/// RFC 6749 §4.1.2: when a code is used twice, the tokens it issued are
/// revoked — also when the replay arrives at the same moment as the first
/// redemption. Each round redeems one code twice at once: exactly one
/// request wins, and the winner's access token is dead afterwards.
async fn replay_racing_the_redemption_revokes_the_winner(db_url: &str) {
    let clock = Arc::new(ManualClock::new());
    let mut config = test_config(db_url);
    // Signing keys at rest are encrypted with a key from the environment
    // when the database is shared (PostgreSQL).
    std::env::set_var(
        "AUTH_ADAPTER_TEST_RACES_KEYS_KEY",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            &adapter::secret::random_token().as_bytes()[..32],
        ),
    );
    config.keys.encryption_key_env = Some("AUTH_ADAPTER_TEST_RACES_KEYS_KEY".into());
    let (port, stop, handle) = start(config, clock, 0).await;
    let app = TestApp::connect(&format!("http://127.0.0.1:{port}"));
    for round in 0..25 {
        let code = app.code().await;
        let (a, b) = tokio::join!(app.redeem(&code), app.redeem(&code));
        let (winner, loser) = match (a.status(), b.status()) {
            (StatusCode::OK, StatusCode::BAD_REQUEST) => (a, b),
            (StatusCode::BAD_REQUEST, StatusCode::OK) => (b, a),
            other => panic!("round {round}: expected one winner, got {other:?}"),
        };
        assert_eq!(
            error_of(loser).await,
            (StatusCode::BAD_REQUEST, "invalid_grant".to_string())
        );
        let tokens: Value = winner.json().await.unwrap();
        let access = tokens["access_token"].as_str().unwrap();
        let r = app
            .rp
            .get(format!("{}/userinfo", app.base))
            .bearer_auth(access)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "round {round}: the winner's token still works"
        );
        let challenge = r.headers()[WWW_AUTHENTICATE].to_str().unwrap().to_string();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
    let _ = stop.send(());
    handle.await.unwrap();
}

#[tokio::test]
async fn replay_racing_the_redemption_revokes_the_winner_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/races.db", dir.path().display());
    replay_racing_the_redemption_revokes_the_winner(&url).await;
}

#[tokio::test]
async fn replay_racing_the_redemption_revokes_the_winner_on_postgres() {
    let schema = PgSchema::new().await;
    replay_racing_the_redemption_revokes_the_winner(&schema.url).await;
    schema.drop().await;
}
