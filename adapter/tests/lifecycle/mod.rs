//! The token lifecycle at the token, revocation and introspection
//! endpoints: refresh-token rotation and reuse detection (RFC 6749 §6,
//! RFC 9700 §4.14), revocation (RFC 7009), introspection (RFC 7662) and the
//! client-credentials grant (RFC 6749 §4.4). Time moves with the injected
//! clock, never by sleeping.

use std::sync::Arc;

use adapter::clock::Clock as _;
use adapter::config::{ClientConfig, Config};
use adapter::store::Store as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::support::*;

/// Refresh tokens of `app` die after this long unused…
const IDLE: i64 = 3600;
/// …and after this long however often rotated.
const ABSOLUTE: i64 = 3 * 3600;

fn client_config(v: Value) -> ClientConfig {
    serde_json::from_value(v).unwrap()
}

/// The clients of these tests: `app` (authorization code + refresh, may have
/// offline_access), `other` (same grants, another client), `svc`
/// (client_credentials only), `norefresh` (authorization code only) and
/// `spa` (public).
fn configure(c: &mut Config) {
    c.tokens.refresh_token_idle_ttl_seconds = IDLE;
    c.tokens.refresh_token_absolute_ttl_seconds = ABSOLUTE;
    c.clients[0].allowed_scopes.push("offline_access".into());
    c.clients.push(client_config(json!({
        "id": "svc",
        "secret": "svc-secret",
        "redirect_uris": [REDIRECT],
        "allowed_scopes": ["openid", "api.read", "api.write"],
        "grant_types": ["client_credentials"],
    })));
    c.clients.push(client_config(json!({
        "id": "norefresh",
        "secret": "norefresh-secret",
        "redirect_uris": [REDIRECT],
        "allowed_scopes": ["openid"],
        "grant_types": ["authorization_code"],
    })));
    c.clients.push(client_config(json!({
        "id": "spa",
        "public": true,
        "redirect_uris": [REDIRECT],
        "allowed_scopes": ["openid"],
    })));
}

async fn lifecycle_app() -> TestApp {
    spawn_app_with(configure).await
}

const APP: Option<(&str, &str)> = Some(("app", SECRET));
const OTHER: Option<(&str, &str)> = Some(("other", "other-secret"));

/// Logs in (or uses the browser's session) with `extra` authorization
/// parameters and redeems the code as `app`; the token response.
async fn tokens_with(app: &TestApp, extra: &[(&str, &str)]) -> Value {
    let loc = app.login(extra).await;
    assert!(loc.starts_with(REDIRECT), "{loc}");
    let code = query(&loc)["code"].as_str().unwrap().to_string();
    let r = app.redeem(&code).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn tokens(app: &TestApp) -> Value {
    tokens_with(app, &[]).await
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("no {k} in {v}"))
}

async fn refresh(
    app: &TestApp,
    token: &str,
    scope: Option<&str>,
    basic: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", token)];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    app.token(&form, basic).await
}

/// A successful refresh: the new token response.
async fn refreshed(app: &TestApp, token: &str) -> Value {
    let r = refresh(app, token, None, APP).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn refresh_error(app: &TestApp, token: &str) -> (StatusCode, String) {
    error_of(refresh(app, token, None, APP).await).await
}

fn invalid_grant() -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, "invalid_grant".to_string())
}

/// POSTs a form to `path` with optional Basic credentials.
async fn post(
    app: &TestApp,
    path: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut req = app.rp.post(format!("{}{path}", app.base)).form(form);
    if let Some((id, secret)) = basic {
        req = req.header(AUTHORIZATION, basic_header(id, secret));
    }
    req.send().await.unwrap()
}

/// RFC 6749 §2.3.1: form-urlencode id and secret, then base64.
fn basic_header(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)));
    format!("Basic {raw}")
}

async fn introspect(app: &TestApp, token: &str, basic: Option<(&str, &str)>) -> Value {
    let r = post(app, "/oauth2/introspect", &[("token", token)], basic).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

async fn revoke(app: &TestApp, token: &str, hint: Option<&str>, basic: Option<(&str, &str)>) {
    let mut form = vec![("token", token)];
    if let Some(hint) = hint {
        form.push(("token_type_hint", hint));
    }
    let r = post(app, "/oauth2/revoke", &form, basic).await;
    // RFC 7009 §2.2: 200 whether or not there was something to revoke.
    assert_eq!(r.status(), StatusCode::OK);
}

async fn userinfo_status(app: &TestApp, access: &str) -> StatusCode {
    app.rp
        .get(format!("{}/userinfo", app.base))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .status()
}

/// True when the browser still has single sign-on: authorize answers
/// straight back to the client.
async fn has_sso(app: &TestApp) -> bool {
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    location(&r).starts_with(REDIRECT)
}

async fn store_of(app: &TestApp) -> adapter::store::SqlStore {
    adapter::store::SqlStore::connect(&app.db_url, 1)
        .await
        .unwrap()
}

/// RFC 6749 §6, RFC 9700 §4.14.2: each refresh answers a new access token
/// and a new refresh token; the presented one is dead afterwards.
#[tokio::test]
async fn refresh_rotates_the_refresh_token() {
    let app = lifecycle_app().await;
    let t0 = tokens(&app).await;
    let r0 = s(&t0, "refresh_token");
    assert_eq!(r0.len(), 43, "256 bits, base64url");
    app.clock.advance(10);
    let t1 = refreshed(&app, r0).await;
    let r1 = s(&t1, "refresh_token");
    assert_ne!(r1, r0);
    assert_ne!(s(&t1, "access_token"), s(&t0, "access_token"));
    assert_eq!(t1["token_type"], "Bearer");
    assert_eq!(
        userinfo_status(&app, s(&t1, "access_token")).await,
        StatusCode::OK
    );
    // The next in line works; the rotated one is dead.
    app.clock.advance(10);
    let t2 = refreshed(&app, r1).await;
    assert_eq!(
        userinfo_status(&app, s(&t2, "access_token")).await,
        StatusCode::OK
    );
    assert_eq!(
        refresh_error(&app, r1).await,
        invalid_grant(),
        "rotated, still alive"
    );
}

/// RFC 9700 §4.14.2: a rotated refresh token presented again revokes the
/// whole family (the newest member too, even an offline one) and the session
/// it came from (its single sign-on, its access tokens, its other
/// session-bound refresh tokens). No grace window.
#[tokio::test]
async fn reuse_revokes_the_family_and_the_session() {
    let app = lifecycle_app().await;
    let t0 = tokens_with(&app, &[("scope", "openid profile offline_access")]).await;
    let r0 = s(&t0, "refresh_token");
    let t1 = refreshed(&app, r0).await;
    let r1 = s(&t1, "refresh_token");
    // Another grant of the same session, bound to it.
    let bound = tokens(&app).await;
    assert_eq!(sid_of(&bound), sid_of(&t0));
    assert!(has_sso(&app).await);
    // The attacker (or a confused client) comes back with r0.
    assert_eq!(refresh_error(&app, r0).await, invalid_grant());
    // The family's newest member is dead…
    assert_eq!(refresh_error(&app, r1).await, invalid_grant());
    // …and the session: no more single sign-on, access tokens refused.
    assert!(!has_sso(&app).await, "the session survived the reuse");
    assert_eq!(
        userinfo_status(&app, s(&t1, "access_token")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        introspect(&app, s(&t1, "access_token"), APP).await,
        json!({"active": false})
    );
    assert_eq!(
        refresh_error(&app, s(&bound, "refresh_token")).await,
        invalid_grant()
    );
}

/// RFC 9700 §4.14.2 on the real databases: N parallel refreshes with one
/// token give exactly one new token pair and N−1 `invalid_grant`; the
/// concurrent uses are reuse, so the winner's new token is revoked too.
async fn parallel_refresh_has_one_winner(db_url: &str, key_env: &str) {
    let clock = Arc::new(ManualClock::new());
    let mut config = test_config(db_url);
    configure(&mut config);
    // Signing keys at rest are encrypted with a key from the environment
    // when the database is shared (PostgreSQL).
    std::env::set_var(
        key_env,
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            &adapter::secret::random_token().as_bytes()[..32],
        ),
    );
    config.keys.encryption_key_env = Some(key_env.into());
    let (port, stop, handle) = start(config, clock, 0).await;
    let app = TestApp::connect(&format!("http://127.0.0.1:{port}"));
    const N: usize = 8;
    for round in 0..5 {
        let t = tokens(&app).await;
        let token = s(&t, "refresh_token").to_string();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..N {
            let (rp, base, token) = (app.rp.clone(), app.base.clone(), token.clone());
            set.spawn(async move {
                rp.post(format!("{base}/oauth2/token"))
                    .header(AUTHORIZATION, basic_header("app", SECRET))
                    .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
                    .send()
                    .await
                    .unwrap()
            });
        }
        let mut winners = Vec::new();
        let mut losers = 0;
        for r in set.join_all().await {
            if r.status() == StatusCode::OK {
                winners.push(r.json::<Value>().await.unwrap());
            } else {
                assert_eq!(error_of(r).await, invalid_grant(), "round {round}");
                losers += 1;
            }
        }
        assert_eq!((winners.len(), losers), (1, N - 1), "round {round}");
        let new = s(&winners[0], "refresh_token");
        assert_eq!(
            refresh_error(&app, new).await,
            invalid_grant(),
            "round {round}"
        );
    }
    let _ = stop.send(());
    handle.await.unwrap();
}

#[tokio::test]
async fn parallel_refresh_has_one_winner_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/lifecycle.db", dir.path().display());
    parallel_refresh_has_one_winner(&url, "AUTH_ADAPTER_TEST_LIFECYCLE_SQLITE_KEY").await;
}

#[tokio::test]
async fn parallel_refresh_has_one_winner_on_postgres() {
    let schema = testkit::pg::PgSchema::create().await.unwrap();
    parallel_refresh_has_one_winner(&schema.url, "AUTH_ADAPTER_TEST_LIFECYCLE_PG_KEY").await;
    schema.drop_schema().await.unwrap();
}

/// RFC 9700 §4.14.2: a refresh token unused for the idle lifetime expires.
#[tokio::test]
async fn idle_refresh_tokens_expire() {
    let app = lifecycle_app().await;
    let t = tokens(&app).await;
    let r0 = s(&t, "refresh_token");
    app.clock.advance(IDLE - 1);
    let r1 = s(&refreshed(&app, r0).await, "refresh_token").to_string();
    app.clock.advance(IDLE);
    assert_eq!(refresh_error(&app, &r1).await, invalid_grant());
}

/// However often rotated, no refresh token outlives the absolute lifetime
/// of its grant.
#[tokio::test]
async fn refresh_tokens_have_an_absolute_lifetime() {
    let app = lifecycle_app().await;
    let t = tokens(&app).await;
    let mut token = s(&t, "refresh_token").to_string();
    // Rotate every 50 minutes: never idle, but the grant ages.
    let mut elapsed = 0;
    while elapsed + 3000 < ABSOLUTE {
        app.clock.advance(3000);
        elapsed += 3000;
        token = s(&refreshed(&app, &token).await, "refresh_token").to_string();
    }
    app.clock.advance(ABSOLUTE - elapsed);
    assert_eq!(refresh_error(&app, &token).await, invalid_grant());
}

/// The `sid` of an ID token.
fn sid_of(t: &Value) -> String {
    let (_, claims) = jwt_parts(s(t, "id_token"));
    claims["sid"].as_str().unwrap().to_string()
}

/// OIDC Core §11, OpenID Back-Channel Logout §2.7: without offline_access a
/// refresh token dies with its session; with it, it outlives the session.
#[tokio::test]
async fn only_offline_access_outlives_the_session() {
    let app = lifecycle_app().await;
    let bound = tokens(&app).await;
    let offline = tokens_with(&app, &[("scope", "openid profile offline_access")]).await;
    assert_eq!(sid_of(&bound), sid_of(&offline), "one browser session");
    assert!(store_of(&app)
        .await
        .delete_session_by_sid(&sid_of(&bound))
        .await
        .unwrap());
    assert_eq!(
        refresh_error(&app, s(&bound, "refresh_token")).await,
        invalid_grant()
    );
    let t = refreshed(&app, s(&offline, "refresh_token")).await;
    assert_eq!(
        userinfo_status(&app, s(&t, "access_token")).await,
        StatusCode::OK
    );
    // The ID token still names the session of the grant.
    assert_eq!(sid_of(&t), sid_of(&offline));
    assert!(!has_sso(&app).await);
}

/// RFC 6749 §6: a refresh may narrow the scope, never widen it; the grant
/// keeps its scope for the next refresh.
#[tokio::test]
async fn refresh_narrows_scope_but_never_widens_it() {
    let app = lifecycle_app().await;
    let t = tokens(&app).await;
    assert_eq!(t["scope"], "openid profile email");
    let r = refresh(
        &app,
        s(&t, "refresh_token"),
        Some("openid offline_access"),
        APP,
    )
    .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "invalid_scope".to_string())
    );
    // The refused request did not cost the client its token.
    let r = refresh(&app, s(&t, "refresh_token"), Some("openid email"), APP).await;
    assert_eq!(r.status(), StatusCode::OK);
    let narrowed: Value = r.json().await.unwrap();
    assert_eq!(narrowed["scope"], "openid email");
    let (_, access) = jwt_parts(s(&narrowed, "access_token"));
    assert_eq!(access["scope"], "openid email");
    // The next refresh without scope gets the grant's scope back.
    let again = refreshed(&app, s(&narrowed, "refresh_token")).await;
    assert_eq!(again["scope"], "openid profile email");
}

/// OIDC Core §12.2: the refreshed ID token has the same `sub`, `auth_time`
/// and `sid`, a new `iat`, and no `nonce`.
#[tokio::test]
async fn refresh_answers_a_new_id_token_of_the_same_login() {
    let app = lifecycle_app().await;
    let t0 = tokens(&app).await;
    let (_, id0) = jwt_parts(s(&t0, "id_token"));
    assert_eq!(id0["nonce"], "n-456");
    app.clock.advance(120);
    let t1 = refreshed(&app, s(&t0, "refresh_token")).await;
    let (header, id1) = jwt_parts(s(&t1, "id_token"));
    assert_eq!(header["typ"], "JWT");
    for claim in ["sub", "auth_time", "sid", "iss", "aud"] {
        assert_eq!(id1[claim], id0[claim], "{claim}");
    }
    assert_eq!(
        id1["iat"].as_i64().unwrap(),
        id0["iat"].as_i64().unwrap() + 120
    );
    assert!(id1.get("nonce").is_none(), "{id1}");
}

/// RFC 6749 §4.1.2: a replayed code revokes what it issued, the refresh
/// token included (and its rotations).
#[tokio::test]
async fn replayed_code_revokes_the_refresh_token() {
    let app = lifecycle_app().await;
    let code = app.code().await;
    let r = app.redeem(&code).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t0: Value = r.json().await.unwrap();
    let t1 = refreshed(&app, s(&t0, "refresh_token")).await;
    assert_eq!(
        userinfo_status(&app, s(&t1, "access_token")).await,
        StatusCode::OK
    );
    assert_eq!(error_of(app.redeem(&code).await).await, invalid_grant());
    assert_eq!(
        refresh_error(&app, s(&t1, "refresh_token")).await,
        invalid_grant()
    );
    // Every access token of the grant dies, the refreshed one too (its
    // `jti` names the family).
    for t in [&t0, &t1] {
        assert_eq!(
            userinfo_status(&app, s(t, "access_token")).await,
            StatusCode::UNAUTHORIZED
        );
    }
}

/// RFC 6749 §5.2: a client not allowed the refresh_token grant gets no
/// refresh token, and `unauthorized_client` when it tries the grant.
#[tokio::test]
async fn clients_without_the_grant_get_no_refresh_token() {
    let app = lifecycle_app().await;
    let loc = app.login(&[("client_id", "norefresh")]).await;
    let code = query(&loc)["code"].as_str().unwrap().to_string();
    let r = app
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ],
            Some(("norefresh", "norefresh-secret")),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert!(t.get("refresh_token").is_none(), "{t}");
    let r = refresh(
        &app,
        "whatever",
        None,
        Some(("norefresh", "norefresh-secret")),
    )
    .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "unauthorized_client".to_string())
    );
    // RFC 9700 §2.4: the password grant is not offered at all.
    let r = app
        .token(
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "x"),
            ],
            APP,
        )
        .await;
    assert_eq!(
        error_of(r).await,
        (
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type".to_string()
        )
    );
}

/// RFC 9700 §4.14.2, RFC 6749 §6: a refresh token is bound to its client.
/// Presented by another, it is refused and its family revoked.
#[tokio::test]
async fn refresh_token_of_another_client_is_refused_and_revoked() {
    let app = lifecycle_app().await;
    let t = tokens(&app).await;
    let token = s(&t, "refresh_token");
    assert_eq!(
        error_of(refresh(&app, token, None, OTHER).await).await,
        invalid_grant()
    );
    assert_eq!(refresh_error(&app, token).await, invalid_grant());
}

/// RFC 7009 §2.1 then RFC 6750 §3.1 / RFC 7662 §2.2: a revoked access token
/// stops working at userinfo and is inactive at introspection.
#[tokio::test]
async fn revoked_access_token_stops_working() {
    let app = lifecycle_app().await;
    let t = tokens(&app).await;
    let access = s(&t, "access_token");
    assert_eq!(introspect(&app, access, APP).await["active"], true);
    revoke(&app, access, Some("access_token"), APP).await;
    assert_eq!(
        userinfo_status(&app, access).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        introspect(&app, access, APP).await,
        json!({"active": false})
    );
    // The refresh token of the grant is untouched.
    refreshed(&app, s(&t, "refresh_token")).await;
}

/// RFC 7009 §2.1: revoking a refresh token revokes its family; the hint
/// is only a hint (a wrong one still finds the token).
#[tokio::test]
async fn revoked_refresh_token_kills_its_family() {
    let app = lifecycle_app().await;
    let t0 = tokens(&app).await;
    let t1 = refreshed(&app, s(&t0, "refresh_token")).await;
    let r1 = s(&t1, "refresh_token");
    assert_eq!(introspect(&app, r1, APP).await["active"], true);
    assert_eq!(
        userinfo_status(&app, s(&t0, "access_token")).await,
        StatusCode::OK
    );
    revoke(&app, r1, Some("access_token"), APP).await;
    assert_eq!(refresh_error(&app, r1).await, invalid_grant());
    assert_eq!(introspect(&app, r1, APP).await, json!({"active": false}));
    // The access tokens of the same grant go too (RFC 7009 §2.1): the one
    // issued with it, and the first, from the code.
    for t in [&t0, &t1] {
        assert_eq!(
            userinfo_status(&app, s(t, "access_token")).await,
            StatusCode::UNAUTHORIZED
        );
    }
}

/// RFC 7009 §2.1–2.2: a client cannot revoke another client's tokens; the
/// answer is 200 as for an unknown token, and nothing is revoked.
#[tokio::test]
async fn clients_cannot_revoke_each_others_tokens() {
    let app = lifecycle_app().await;
    let t = tokens(&app).await;
    revoke(&app, s(&t, "refresh_token"), None, OTHER).await;
    revoke(&app, s(&t, "access_token"), None, OTHER).await;
    revoke(&app, "no-such-token", None, OTHER).await;
    assert_eq!(
        userinfo_status(&app, s(&t, "access_token")).await,
        StatusCode::OK
    );
    refreshed(&app, s(&t, "refresh_token")).await;
}

/// RFC 7662 §2.2: the fields of an active access token and of an active
/// refresh token.
#[tokio::test]
async fn introspection_describes_active_tokens() {
    let app = lifecycle_app().await;
    let t = tokens(&app).await;
    let (_, claims) = jwt_parts(s(&t, "access_token"));
    let a = introspect(&app, s(&t, "access_token"), APP).await;
    assert_eq!(a["active"], true);
    assert_eq!(a["token_type"], "Bearer");
    for k in [
        "sub",
        "client_id",
        "scope",
        "exp",
        "iat",
        "iss",
        "aud",
        "jti",
        "sid",
    ] {
        assert_eq!(a[k], claims[k], "{k}");
    }
    assert_eq!(a["client_id"], "app");
    // A resource server (another client) may introspect access tokens.
    assert_eq!(
        introspect(&app, s(&t, "access_token"), OTHER).await["active"],
        true
    );
    let r = introspect(&app, s(&t, "refresh_token"), APP).await;
    let now = app.clock.now();
    assert_eq!(
        r,
        json!({
            "active": true,
            "sub": claims["sub"],
            "client_id": "app",
            "scope": "openid profile email",
            "exp": now + IDLE,
            "iat": now,
            "token_type": "refresh_token",
        })
    );
    // Another client's refresh token is none of its business.
    assert_eq!(
        introspect(&app, s(&t, "refresh_token"), OTHER).await,
        json!({"active": false})
    );
}

/// RFC 7662 §2.2: expired, foreign, garbage and revoked tokens are
/// `{"active": false}` and nothing more.
#[tokio::test]
async fn introspection_of_dead_tokens_is_inactive() {
    let app = lifecycle_app().await;
    let t = tokens(&app).await;
    let inactive = json!({"active": false});
    // Signed by another key (of another provider), in the same shape.
    let foreign_app = lifecycle_app().await;
    let foreign = tokens(&foreign_app).await;
    assert_eq!(
        introspect(&app, s(&foreign, "access_token"), APP).await,
        inactive
    );
    assert_eq!(
        introspect(&app, s(&foreign, "refresh_token"), APP).await,
        inactive
    );
    // Garbage, and an ID token (not an access token, RFC 9068 §4).
    assert_eq!(introspect(&app, "garbage", APP).await, inactive);
    assert_eq!(introspect(&app, "a.b.c", APP).await, inactive);
    assert_eq!(introspect(&app, s(&t, "id_token"), APP).await, inactive);
    // Revoked.
    let t2 = tokens(&app).await;
    revoke(&app, s(&t2, "refresh_token"), None, APP).await;
    assert_eq!(
        introspect(&app, s(&t2, "refresh_token"), APP).await,
        inactive
    );
    // Expired: the access token at its exp, the refresh token when idle.
    let access = s(&t, "access_token");
    let (_, claims) = jwt_parts(access);
    app.clock.set(claims["exp"].as_i64().unwrap());
    assert_eq!(introspect(&app, access, APP).await, inactive);
    app.clock.advance(IDLE);
    assert_eq!(
        introspect(&app, s(&t, "refresh_token"), APP).await,
        inactive
    );
}

/// RFC 7662 §2.1: only authenticated (confidential) clients may introspect.
#[tokio::test]
async fn introspection_needs_a_confidential_client() {
    let app = lifecycle_app().await;
    let t = tokens(&app).await;
    let access = s(&t, "access_token");
    for (form, basic) in [
        (vec![("token", access), ("client_id", "spa")], None),
        (vec![("token", access)], None),
        (vec![("token", access)], Some(("app", "wrong"))),
    ] {
        let r = post(&app, "/oauth2/introspect", &form, basic).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{form:?}");
        assert!(r.headers().contains_key(WWW_AUTHENTICATE));
        assert_eq!(error_of(r).await.1, "invalid_client");
    }
}

/// RFC 6749 §4.4: an access token for the client itself; no ID token, no
/// refresh token; the scope limited to the allowed ones, without openid.
#[tokio::test]
async fn client_credentials_grant() {
    let app = lifecycle_app().await;
    let svc = Some(("svc", "svc-secret"));
    let r = app
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("scope", "openid api.read admin"),
            ],
            svc,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert!(
        t.get("id_token").is_none() && t.get("refresh_token").is_none(),
        "{t}"
    );
    assert_eq!(t["scope"], "api.read");
    assert_eq!(t["token_type"], "Bearer");
    let (header, claims) = jwt_parts(s(&t, "access_token"));
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(claims["sub"], "svc");
    assert_eq!(claims["client_id"], "svc");
    assert!(claims.get("sid").is_none());
    let a = introspect(&app, s(&t, "access_token"), APP).await;
    assert_eq!(
        (a["active"].clone(), a["sub"].clone()),
        (json!(true), json!("svc"))
    );
    // Without a scope: all the allowed ones but openid.
    let t: Value = app
        .token(&[("grant_type", "client_credentials")], svc)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t["scope"], "api.read api.write");
}

/// RFC 6749 §4.4, §5.2: refused to clients not allowed it, and to public
/// clients (which cannot be allowed it).
#[tokio::test]
async fn client_credentials_refused_without_the_grant() {
    let app = lifecycle_app().await;
    let unauthorized = (StatusCode::BAD_REQUEST, "unauthorized_client".to_string());
    let r = app
        .token(&[("grant_type", "client_credentials")], APP)
        .await;
    assert_eq!(error_of(r).await, unauthorized);
    let r = app
        .token(
            &[("grant_type", "client_credentials"), ("client_id", "spa")],
            None,
        )
        .await;
    assert_eq!(error_of(r).await, unauthorized);
    // svc may not use the authorization code grant either.
    let r = app
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("redirect_uri", REDIRECT),
            ],
            Some(("svc", "svc-secret")),
        )
        .await;
    assert_eq!(error_of(r).await, unauthorized);
}

/// RFC 6749 §5.2, RFC 7009 §2.2.1, RFC 7662 §2.3: bad requests get a JSON
/// error with a 4xx status, never a 5xx.
#[tokio::test]
async fn bad_input_to_the_new_endpoints_is_a_4xx() {
    let app = lifecycle_app().await;
    let invalid_request = (StatusCode::BAD_REQUEST, "invalid_request".to_string());
    for path in ["/oauth2/revoke", "/oauth2/introspect", "/oauth2/token"] {
        let url = format!("{}{path}", app.base);
        // Wrong content type.
        let r = app
            .rp
            .post(&url)
            .header(AUTHORIZATION, basic_header("app", SECRET))
            .header(CONTENT_TYPE, "application/json")
            .body(r#"{"token":"x","grant_type":"refresh_token"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(r).await, invalid_request, "{path}: content type");
        // Repeated parameters.
        let r = app
            .rp
            .post(&url)
            .header(AUTHORIZATION, basic_header("app", SECRET))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("token=a&token=b&grant_type=refresh_token&refresh_token=a&refresh_token=b")
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(r).await, invalid_request, "{path}: repeated");
        // Missing token.
        let r = post(&app, path, &[("grant_type", "refresh_token")], APP).await;
        assert_eq!(error_of(r).await, invalid_request, "{path}: missing token");
        // No client authentication.
        let r = post(
            &app,
            path,
            &[("token", "x"), ("grant_type", "refresh_token")],
            None,
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(r.headers().contains_key(WWW_AUTHENTICATE), "{path}");
        assert_eq!(error_of(r).await.1, "invalid_client");
        // A huge token within the body limit: unknown.
        let huge = "A".repeat(60 * 1024);
        let form: &[(&str, &str)] = if path == "/oauth2/token" {
            &[("grant_type", "refresh_token"), ("refresh_token", &huge)]
        } else {
            &[("token", &huge)]
        };
        let r = post(&app, path, form, APP).await;
        match path {
            "/oauth2/revoke" => assert_eq!(r.status(), StatusCode::OK),
            "/oauth2/introspect" => {
                assert_eq!(r.json::<Value>().await.unwrap(), json!({"active": false}))
            }
            _ => assert_eq!(error_of(r).await, invalid_grant()),
        }
        // Beyond the body limit: refused before parsing.
        let huger = "A".repeat(70 * 1024);
        let r = post(&app, path, &[("token", &huger)], APP).await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }
    // The refresh grant's own bad input.
    let r = app.token(&[("grant_type", "refresh_token")], APP).await;
    assert_eq!(error_of(r).await, invalid_request);
    let r = refresh(&app, "garbage", None, APP).await;
    assert_eq!(error_of(r).await, invalid_grant());
}

/// RFC 8414 §2: discovery names the new endpoints, their client
/// authentication methods and exactly the grants offered.
#[tokio::test]
async fn discovery_lists_the_lifecycle_endpoints() {
    let app = lifecycle_app().await;
    let d: Value = reqwest::get(format!("{}/.well-known/openid-configuration", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        d["revocation_endpoint"],
        format!("{}/oauth2/revoke", app.base)
    );
    assert_eq!(
        d["introspection_endpoint"],
        format!("{}/oauth2/introspect", app.base)
    );
    assert_eq!(
        d["revocation_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post", "none"])
    );
    assert_eq!(
        d["introspection_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(
        d["grant_types_supported"],
        json!(["authorization_code", "refresh_token", "client_credentials"])
    );
    // Without a client allowed client_credentials, it is not offered.
    let plain = spawn_app().await;
    let d: Value = reqwest::get(format!("{}/.well-known/openid-configuration", plain.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        d["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
}

/// A local account is read again at every refresh: a changed name reaches
/// the refreshed tokens; a disabled account's refresh is `invalid_grant`
/// and ends its grant (enabling it again does not revive the token) and
/// its session (the next authorization request asks for a login).
#[tokio::test]
async fn refresh_reads_the_local_account_again() {
    let app = lifecycle_app().await;
    let t0 = tokens(&app).await;
    let (_, id0) = jwt_parts(s(&t0, "id_token"));
    let accounts = super::accounts::accounts(&app).await;
    let alice = accounts.find("alice").await.unwrap().unwrap();
    let mut data = alice.data.clone();
    data.name = Some("Alice Renamed".into());
    accounts.save(&alice, &data).await.unwrap();

    let t1 = refreshed(&app, s(&t0, "refresh_token")).await;
    let (_, id1) = jwt_parts(s(&t1, "id_token"));
    assert_eq!(id1["name"], "Alice Renamed");
    assert_ne!(id1["name"], id0["name"]);
    // The login's authentication stays (OIDC Core §12.2).
    for claim in ["sub", "auth_time", "amr", "acr", "sid"] {
        assert_eq!(id1[claim], id0[claim], "{claim}");
    }

    accounts.set_disabled("alice", true).await.unwrap();
    let token = s(&t1, "refresh_token");
    let body: Value = refresh(&app, token, None, APP).await.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "error": "invalid_grant",
            "error_description": "the identity provider no longer accepts this login"
        })
    );
    accounts.set_disabled("alice", false).await.unwrap();
    assert_eq!(refresh_error(&app, token).await, invalid_grant());
    // No single sign-on: the session ended with the grant.
    let to = app.authorize_location(&[]).await;
    assert!(to.starts_with("/login/local?req="), "{to}");
}
