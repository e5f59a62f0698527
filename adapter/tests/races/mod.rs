//! Races at the token endpoint, on SQLite and on the real PostgreSQL.

use std::sync::Arc;

use reqwest::header::WWW_AUTHENTICATE;
use reqwest::StatusCode;
use serde_json::Value;

use super::support::*;

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
    let schema = testkit::pg::PgSchema::create().await.unwrap();
    replay_racing_the_redemption_revokes_the_winner(&schema.url).await;
    schema.drop_schema().await.unwrap();
}
