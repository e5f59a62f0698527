//! Signing-key rotation seen from outside (RFC 7517 §5, OIDC Core
//! §10.1.1): a relying party that caches the JWKS as discovery allows keeps
//! verifying tokens signed before and after a rotation; replicas sharing a
//! database pick up a new key without a restart; each client gets ID tokens
//! signed with its registered algorithm (OIDC Registration §2). Time moves
//! by the manual clock only; the key maintenance a server runs every
//! `keys.reload_interval_seconds` is triggered by hand with the clock's time.

use std::sync::Arc;

use adapter::clock::Clock;
use adapter::config::{Config, TokenConfig};
use adapter::keys::{KeysConfig, Schedule};
use adapter::provider::AppState;
use adapter::Application;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::header::CACHE_CONTROL;
use reqwest::StatusCode;
use serde_json::Value;

use super::support::*;

const DAY: u64 = 86_400;

/// [`spawn_app_with`], keeping the server's state (for its key manager),
/// on database `db_url` (a fresh one when `None`) and `clock`.
async fn spawn_replica(
    db: Option<(&str, Arc<ManualClock>)>,
    tweak: impl FnOnce(&mut Config),
) -> (TestApp, AppState) {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (db_url, clock) = match db {
        Some((url, clock)) => (url.to_string(), clock),
        None => (
            format!("sqlite://{}/adapter.db", dir.path().display()),
            Arc::new(ManualClock::new()),
        ),
    };
    let mut config = test_config(&db_url);
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // Replicas share an issuer: a tweak may set it; the placeholder of
    // `test_config` becomes this server's address.
    if config.server.issuer.as_deref() == Some("http://127.0.0.1:1") {
        config.server.issuer = Some(base.clone());
    }
    let app = Application::build_with_clock(config, listener, clock.clone())
        .await
        .unwrap();
    let state = app.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let app = TestApp {
        clock,
        _dir: dir,
        db_url,
        shutdown: Some(tx),
        handle: Some(handle),
        ..TestApp::connect(&base)
    };
    (app, state)
}

/// The relying party fetches the JWKS; returns it with its `max-age`.
async fn fetch_jwks(app: &TestApp) -> (JwkSet, i64) {
    let r = reqwest::get(format!("{}/oauth2/jwks", app.base))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cache = r.headers()[CACHE_CONTROL].to_str().unwrap().to_string();
    let max_age = cache
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .unwrap_or_else(|| panic!("no max-age in {cache}"))
        .parse()
        .unwrap();
    (r.json().await.unwrap(), max_age)
}

fn kids(jwks: &JwkSet) -> Vec<String> {
    jwks.keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// The relying party's check of an ID token (OIDC Core §3.1.3.7) with its
/// cached key set only: the key named by `kid`, that key's algorithm, `iss`,
/// `aud`, and `exp` against the test's clock.
fn rp_verify(jwks: &JwkSet, token: &str, issuer: &str, aud: &str, now: i64) -> Value {
    let kid = kid_of(token);
    let jwk = jwks
        .find(&kid)
        .unwrap_or_else(|| panic!("kid {kid} is not in the cached JWKS"));
    let alg: Algorithm = jwk
        .common
        .key_algorithm
        .unwrap()
        .to_string()
        .parse()
        .unwrap();
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[aud]);
    validation.validate_exp = false;
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims;
    assert!(claims["exp"].as_i64().unwrap() > now, "expired");
    claims
}

/// Logs alice in at `client` (SSO after the first time) and redeems the
/// code: (ID token, access token).
async fn tokens_for(app: &TestApp, client: &str, secret: &str) -> (String, String) {
    let loc = app
        .login(&[("client_id", client), ("scope", "openid")])
        .await;
    let code = query(&loc)["code"].as_str().unwrap().to_string();
    let r = app
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ],
            Some((client, secret)),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    (
        v["id_token"].as_str().unwrap().to_string(),
        v["access_token"].as_str().unwrap().to_string(),
    )
}

async fn tokens(app: &TestApp) -> (String, String) {
    tokens_for(app, "app", SECRET).await
}

async fn userinfo_status(app: &TestApp, access_token: &str) -> StatusCode {
    app.rp
        .get(format!("{}/userinfo", app.base))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
        .status()
}

/// RFC 7517 §5, OIDC Core §10.1.1: the next key is in the JWKS for longer
/// than a relying party may cache it before it signs, and the old key stays
/// until every token it signed has expired; an RP that refreshes its cache
/// only when `max-age` allows verifies old and new tokens alike.
#[tokio::test]
async fn cached_jwks_verifies_tokens_across_a_rotation() {
    let (app, state) = spawn_replica(None, |c| c.keys.rotation_period_seconds = DAY).await;
    let schedule = Schedule::new(
        &KeysConfig {
            rotation_period_seconds: DAY,
            ..KeysConfig::default()
        },
        &TokenConfig::default(),
    );
    let clock = app.clock.clone();
    let start = clock.now();

    // Not due yet: maintenance publishes nothing.
    clock.advance(DAY as i64 - 1);
    assert!(state.keys.maintain(clock.now()).await.unwrap().is_empty());
    let (id_first, _) = tokens(&app).await;
    let old = kid_of(&id_first);
    // The RP caches the key set just before the rotation.
    let (cached, max_age) = fetch_jwks(&app).await;
    assert_eq!(kids(&cached), vec![old.clone()]);
    assert!(schedule.publish_lead > max_age);
    rp_verify(&cached, &id_first, &app.base, "app", clock.now());

    // The rotation publishes the next key: in the JWKS, not signing.
    clock.advance(1);
    let published_at = clock.now();
    assert_eq!(published_at, start + DAY as i64);
    let new = state.keys.maintain(published_at).await.unwrap().remove(0);
    assert_eq!(kids(&fetch_jwks(&app).await.0), [old.clone(), new.clone()]);
    let (id_during, _) = tokens(&app).await;
    assert_eq!(kid_of(&id_during), old);
    rp_verify(&cached, &id_during, &app.base, "app", clock.now());

    // The RP's cache expires; it fetches the key set again.
    clock.set(published_at - 1 + max_age);
    let (cached, _) = fetch_jwks(&app).await;
    assert_eq!(kids(&cached), [old.clone(), new.clone()]);

    // Last tokens of the old key, then the activation.
    let activation = published_at + schedule.publish_lead;
    clock.set(activation - 1);
    let (id_old, at_old) = tokens(&app).await;
    assert_eq!(kid_of(&id_old), old);
    clock.set(activation);
    let (id_new, at_new) = tokens(&app).await;
    assert_eq!(kid_of(&id_new), new);
    assert_eq!(kid_of(&at_new), new);
    // The RP verifies both with the key set it cached before the activation.
    let now = clock.now();
    assert_eq!(
        rp_verify(&cached, &id_old, &app.base, "app", now)["sub"],
        rp_verify(&cached, &id_new, &app.base, "app", now)["sub"]
    );
    assert_eq!(userinfo_status(&app, &at_old).await, StatusCode::OK);
    assert_eq!(userinfo_status(&app, &at_new).await, StatusCode::OK);

    // The old key stays until the last token it signed has expired...
    let retires = activation + schedule.retire_after;
    let id_old_exp = rp_verify(&cached, &id_old, &app.base, "app", now)["exp"]
        .as_i64()
        .unwrap();
    assert!(id_old_exp + 30 < retires);
    clock.set(retires - 1);
    state.keys.maintain(retires - 1).await.unwrap();
    assert_eq!(kids(&fetch_jwks(&app).await.0), [old.clone(), new.clone()]);
    // ...then leaves the JWKS; new tokens still verify with the key set
    // cached before.
    clock.set(retires);
    state.keys.maintain(retires).await.unwrap();
    assert_eq!(kids(&fetch_jwks(&app).await.0), vec![new.clone()]);
    let (id_late, _) = tokens(&app).await;
    rp_verify(&cached, &id_late, &app.base, "app", clock.now());
}

/// Two replicas on one database: a key one of them publishes reaches the
/// other's JWKS at its next reload, without a restart, and both sign with
/// it from its activation on.
#[tokio::test]
async fn a_second_replica_picks_up_the_new_key_without_a_restart() {
    let (a, a_state) = spawn_replica(None, |_| {}).await;
    let issuer = a.base.clone();
    let (b, b_state) = spawn_replica(Some((&a.db_url, a.clock.clone())), |c| {
        c.server.issuer = Some(issuer)
    })
    .await;
    let clock = a.clock.clone();
    let (jwks_a, _) = fetch_jwks(&a).await;
    assert_eq!(jwks_a, fetch_jwks(&b).await.0);
    let old = kids(&jwks_a).remove(0);

    let new = a_state.keys.rotate(clock.now()).await.unwrap().remove(0);
    assert_eq!(kids(&fetch_jwks(&a).await.0), [old.clone(), new.clone()]);
    assert_eq!(kids(&fetch_jwks(&b).await.0), vec![old.clone()]);
    b_state.keys.reload(clock.now()).await.unwrap();
    assert_eq!(kids(&fetch_jwks(&b).await.0), [old.clone(), new.clone()]);

    clock.advance(KeysConfig::default().reload_interval_seconds as i64 + 300);
    let (id_a, _) = tokens(&a).await;
    let (id_b, at_b) = tokens(&b).await;
    assert_eq!((kid_of(&id_a), kid_of(&id_b)), (new.clone(), new));
    // Either replica accepts the other's access tokens.
    assert_eq!(userinfo_status(&a, &at_b).await, StatusCode::OK);
}

/// OIDC Registration §2: a client registered with
/// `id_token_signed_response_alg` ES256 or EdDSA gets its ID tokens signed
/// so; other clients get the default (RS256). Discovery lists exactly the
/// algorithms with a key (OIDC Discovery §3).
#[tokio::test]
async fn each_client_gets_id_tokens_in_its_algorithm() {
    let (app, _state) = spawn_replica(None, |c| {
        for (id, alg) in [("es", "ES256"), ("ed", "EdDSA")] {
            let mut client = clients::client(id, None, SECRET, &[REDIRECT], &["openid"]).unwrap();
            client.id_token_signed_response_alg = Some(alg.into());
            c.clients.push(client);
        }
    })
    .await;
    let d: Value = reqwest::get(format!("{}/.well-known/openid-configuration", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256", "EdDSA", "RS256"])
    );
    let (jwks, _) = fetch_jwks(&app).await;
    assert_eq!(jwks.keys.len(), 3);
    for (client, alg) in [("app", "RS256"), ("es", "ES256"), ("ed", "EdDSA")] {
        let (id_token, access_token) = tokens_for(&app, client, SECRET).await;
        let header = jsonwebtoken::decode_header(&id_token).unwrap();
        assert_eq!(format!("{:?}", header.alg), alg, "{client}");
        // Access tokens stay with the default algorithm.
        assert_eq!(
            jsonwebtoken::decode_header(&access_token).unwrap().alg,
            Algorithm::RS256
        );
        let claims = rp_verify(&jwks, &id_token, &app.base, client, app.clock.now());
        assert_eq!(claims["aud"], client);
    }
}
