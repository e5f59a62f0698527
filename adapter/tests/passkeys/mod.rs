//! Passkeys (WebAuthn Level 2) over real sockets, with the software
//! authenticator of `webauthn-authenticator-rs` playing the browser and
//! the authenticator: registration from a signed-in session, username-first
//! login through the multi-step API (`begin` passkey → `continue` with the
//! request options → `cred` with the assertion), single-use and expiring
//! challenges (injected clock), origin checks, the signature counter of a
//! cloned authenticator, and malformed input. The RP is `localhost` with
//! the origin `http://localhost:9001` (the authenticator is told the
//! origin; the server checks what it signed).

use std::sync::Arc;

use adapter::clock::Clock;
use serde_json::{json, Value};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

use super::*;

const ORIGIN: &str = "http://localhost:9001";

fn passkeys_on(c: &mut adapter::Config) {
    c.passkeys.rp_id = Some("localhost".into());
    c.passkeys.rp_origin = Some(ORIGIN.into());
    c.passkeys.rp_name = Some("Test IdP".into());
}

async fn passkey_app() -> TestApp {
    spawn_app_with(passkeys_on).await
}

/// A software authenticator that performs user verification.
fn authenticator() -> SoftPasskey {
    SoftPasskey::new(true)
}

async fn step(app: &TestApp, body: Value) -> (StatusCode, Value) {
    let r = app
        .browser
        .post(format!("{}/api/auth", app.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// Signs alice in with her password through the API (the browser keeps
/// the session cookie); returns the session's CSRF token.
async fn signed_in(app: &TestApp) -> String {
    let (_, v) = step(app, json!({"step": "init", "username": "alice"})).await;
    let id = v["session_id"].as_str().unwrap().to_string();
    step(
        app,
        json!({"step": "begin", "session_id": id, "mech": "password"}),
    )
    .await;
    let (s, v) = step(
        app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "success");
    v["csrf_token"].as_str().unwrap().to_string()
}

async fn post_json(app: &TestApp, path: &str, csrf: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .browser
        .post(format!("{}{path}", app.base))
        .header("x-csrf-token", csrf)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn begin_registration(app: &TestApp, csrf: &str) -> Value {
    let (s, options) = post_json(app, "/webauthn/register/begin", csrf, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{options}");
    options
}

/// `navigator.credentials.create()` with `options`, at `origin`.
fn create(auth: &mut SoftPasskey, origin: &str, options: &Value) -> Value {
    let options: CreationChallengeResponse = serde_json::from_value(options.clone()).unwrap();
    let credential = auth
        .do_registration(Url::parse(origin).unwrap(), options)
        .unwrap();
    serde_json::to_value(credential).unwrap()
}

/// Registers a passkey of `auth` for the signed-in user; returns its view.
async fn register(app: &TestApp, csrf: &str, auth: &mut SoftPasskey, label: &str) -> Value {
    let options = begin_registration(app, csrf).await;
    let credential = create(auth, ORIGIN, &options);
    let (s, v) = post_json(
        app,
        "/webauthn/register/finish",
        csrf,
        json!({"label": label, "credential": credential}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

async fn passkey_list(app: &TestApp) -> Vec<Value> {
    let r = app
        .browser
        .get(format!("{}/webauthn/passkeys", app.base))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    v["passkeys"].as_array().unwrap().clone()
}

/// `init` alice, `begin` passkey: the session id and the request options.
async fn begin_login(app: &TestApp) -> (String, Value) {
    let (s, v) = step(app, json!({"step": "init", "username": "alice"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["mechs"].as_array().unwrap().contains(&json!("passkey")),
        "{v}"
    );
    let id = v["session_id"].as_str().unwrap().to_string();
    let (s, v) = step(
        app,
        json!({"step": "begin", "session_id": id, "mech": "passkey"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "continue");
    assert_eq!(v["allowed"], json!(["passkey"]));
    (id, v["options"].clone())
}

/// `navigator.credentials.get()` with `options`, at `origin`.
fn get(auth: &mut SoftPasskey, origin: &str, options: &Value) -> Value {
    let options: RequestChallengeResponse = serde_json::from_value(options.clone()).unwrap();
    let assertion = auth
        .do_authentication(Url::parse(origin).unwrap(), options)
        .unwrap();
    serde_json::to_value(assertion).unwrap()
}

async fn cred(app: &TestApp, id: &str, passkey: Value) -> (StatusCode, Value) {
    step(
        app,
        json!({"step": "cred", "session_id": id, "passkey": passkey}),
    )
    .await
}

/// A fresh browser (no session) on the same provider.
fn fresh(app: &TestApp) -> TestApp {
    let mut other = TestApp::connect(&app.base);
    other.clock = app.clock.clone();
    other
}

/// Registration, username-first login, single use of a challenge, and the
/// counter of a cloned authenticator: the scenario both stores run.
async fn passkey_lifecycle(app: &TestApp) -> SoftPasskey {
    let csrf = signed_in(app).await;
    let mut auth = authenticator();
    let view = register(app, &csrf, &mut auth, "Laptop").await;
    assert_eq!(view["label"], "Laptop");
    assert_eq!(view["counter"], 0);
    assert_eq!(view["possibly_cloned"], false);
    assert!(view["last_used_at"].is_null());
    let cred_id = view["id"].as_str().unwrap().to_string();

    // WebAuthn L2 §5.4.3: a second registration excludes the first passkey.
    let options = begin_registration(app, &csrf).await;
    let excluded: Vec<&str> = options["publicKey"]["excludeCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(excluded, vec![cred_id.as_str()]);

    // Username-first login (WebAuthn L2 §7.2), from a browser without a session.
    let b = fresh(app);
    let (id, options) = begin_login(&b).await;
    assert_eq!(options["publicKey"]["rpId"], "localhost");
    let allowed: Vec<&str> = options["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(allowed, vec![cred_id.as_str()]);
    let assertion = get(&mut auth, ORIGIN, &options);
    let (s, v) = cred(&b, &id, assertion.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "success", "{v}");
    assert_eq!(v["username"], "alice");
    // RFC 8176 §2: a device-bound key (not backup eligible) is `hwk`.
    assert_eq!(v["amr"], json!(["hwk"]));
    let listed = passkey_list(&b).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["counter"], 1);
    assert_eq!(listed[0]["last_used_at"], json!(app.clock.now()));
    assert_eq!(listed[0]["backup_eligible"], false);

    // The challenge answered once: the same step again finds the flow over,
    // and the same assertion against a new challenge is refused.
    let (s, v) = cred(&b, &id, assertion.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "finished");
    let c = fresh(app);
    let (id2, _) = begin_login(&c).await;
    let (s, v) = cred(&c, &id2, assertion).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "denied");
    assert_eq!(v["reason"], "the passkey answered another challenge");

    // A cloned authenticator: assertion A is made (counter 2) and held,
    // assertion B (counter 3) logs in, then A comes back with a counter
    // that did not increase. WebAuthn L2 §7.2 step 21.
    let d = fresh(app);
    let (id_a, options_a) = begin_login(&d).await;
    let held = get(&mut auth, ORIGIN, &options_a);
    let e = fresh(app);
    let (id_b, options_b) = begin_login(&e).await;
    let (s, v) = cred(&e, &id_b, get(&mut auth, ORIGIN, &options_b)).await;
    assert_eq!((s, v["state"].clone()), (StatusCode::OK, json!("success")));
    let (s, v) = cred(&d, &id_a, held).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "denied");
    assert_eq!(
        v["reason"],
        "this passkey may have been cloned (its signature counter went back); it is blocked"
    );
    let listed = passkey_list(&e).await;
    assert_eq!(listed[0]["possibly_cloned"], true);
    assert_eq!(listed[0]["counter"], 3);
    // Blocked: even a fresh assertion of the (real) authenticator is refused.
    let f = fresh(app);
    let (id_f, options_f) = begin_login(&f).await;
    let (_, v) = cred(&f, &id_f, get(&mut auth, ORIGIN, &options_f)).await;
    assert_eq!(v["state"], "denied");
    assert_eq!(
        v["reason"],
        "this passkey may have been cloned (its signature counter went back); it is blocked"
    );
    auth
}

/// Runs `adapter users <args>` on the database of `app`.
fn users_cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"{}\"\n[passkeys]\nrp_id = \"localhost\"\nrp_origin = \"{ORIGIN}\"\n",
            app.db_url
        ),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_adapter"))
        .env_clear()
        .arg("--config")
        .arg(&path)
        .arg("users")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn passkey_lifecycle_on_sqlite() {
    let app = passkey_app().await;
    let mut auth = passkey_lifecycle(&app).await;

    // The administrator sees the mark and clears it; the passkey works again.
    let out = users_cli(&app, &["passkeys", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let id = listing.split('\t').next().unwrap().to_string();
    assert_eq!(
        listing.trim_end(),
        format!("{id}\tLaptop\t3\tdevice-bound\tpossibly-cloned")
    );
    let out = users_cli(&app, &["clear-passkey-mark", "alice", "--", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = users_cli(&app, &["clear-passkey-mark", "alice", "nope"]);
    assert!(!out.status.success());
    let b = fresh(&app);
    let (sid, options) = begin_login(&b).await;
    let (_, v) = cred(&b, &sid, get(&mut auth, ORIGIN, &options)).await;
    assert_eq!(v["state"], "success", "{v}");
    let listed = passkey_list(&b).await;
    assert_eq!(listed[0]["possibly_cloned"], false);
    assert_eq!(listed[0]["counter"], 5);

    // The owner removes it: it is gone, and so is the mechanism.
    let csrf = signed_in(&b).await;
    let delete = format!("/webauthn/passkeys/{id}/delete");
    let r = b
        .browser
        .post(format!("{}{delete}", b.base))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (s, v) = post_json(&b, &delete, &csrf, json!({})).await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    assert!(passkey_list(&b).await.is_empty());
    let (_, v) = step(&b, json!({"step": "init", "username": "alice"})).await;
    assert_eq!(v["mechs"], json!(["password"]));
}

/// A provider with passkeys on a schema of its own on the project's
/// PostgreSQL server (and an encryption key from the environment variable
/// `key_env`, as a deployment of several replicas has).
pub(super) struct PgPasskeyApp {
    pub app: TestApp,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
    schema: testkit::pg::PgSchema,
}

impl PgPasskeyApp {
    pub async fn start(key_env: &str) -> Self {
        let schema = testkit::pg::PgSchema::create().await.unwrap();
        let clock = Arc::new(ManualClock::new());
        let mut config = test_config(&schema.url);
        passkeys_on(&mut config);
        std::env::set_var(
            key_env,
            base64::engine::general_purpose::STANDARD
                .encode(&adapter::secret::random_token().as_bytes()[..32]),
        );
        config.keys.encryption_key_env = Some(key_env.into());
        let (port, stop, handle) = start(config, clock.clone(), 0).await;
        let mut app = TestApp::connect(&format!("http://127.0.0.1:{port}"));
        app.clock = clock;
        PgPasskeyApp {
            app,
            stop,
            handle,
            schema,
        }
    }

    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.handle.await.unwrap();
        self.schema.drop_schema().await.unwrap();
    }
}

#[tokio::test]
async fn passkey_lifecycle_on_postgres() {
    let pg = PgPasskeyApp::start("AUTH_ADAPTER_TEST_PASSKEYS_PG_KEY").await;
    passkey_lifecycle(&pg.app).await;
    pg.stop().await;
}

/// Without `[passkeys]`, nothing of them is offered.
#[tokio::test]
async fn passkeys_are_off_unless_configured() {
    let app = spawn_app().await;
    let csrf = signed_in(&app).await;
    let (s, v) = post_json(&app, "/webauthn/register/begin", &csrf, json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"], "not_found");
    let (_, v) = step(&app, json!({"step": "init", "username": "alice"})).await;
    assert_eq!(v["mechs"], json!(["password"]));
}

/// Registration needs the session and its CSRF token.
#[tokio::test]
async fn registration_needs_a_session_and_its_csrf_token() {
    let app = passkey_app().await;
    let anonymous = fresh(&app);
    let (s, v) = post_json(&anonymous, "/webauthn/register/begin", "x", json!({})).await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::UNAUTHORIZED, json!("login_required"))
    );
    signed_in(&app).await;
    let (s, v) = post_json(&app, "/webauthn/register/begin", "forged", json!({})).await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::FORBIDDEN, json!("csrf_failed"))
    );
}

/// The login challenge and the registration state expire after
/// `passkeys.challenge_ttl_seconds` (default 300), by the injected clock.
#[tokio::test]
async fn expired_challenges_are_refused() {
    let app = passkey_app().await;
    let csrf = signed_in(&app).await;
    let mut auth = authenticator();
    // Registration: finished after its lifetime.
    let options = begin_registration(&app, &csrf).await;
    let credential = create(&mut auth, ORIGIN, &options);
    app.clock.advance(301);
    let (s, v) = post_json(
        &app,
        "/webauthn/register/finish",
        &csrf,
        json!({"credential": credential}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "passkey_refused");
    assert_eq!(
        v["error_description"],
        "the passkey registration has expired; start again"
    );
    assert!(passkey_list(&app).await.is_empty());
    let mut auth = authenticator();
    register(&app, &csrf, &mut auth, "Key").await;

    // Login: a challenge lives 300 s.
    let b = fresh(&app);
    let (id, options) = begin_login(&b).await;
    app.clock.advance(300);
    let (_, v) = cred(&b, &id, get(&mut auth, ORIGIN, &options)).await;
    assert_eq!(v["state"], "success", "{v}");
    let c = fresh(&app);
    let (id, options) = begin_login(&c).await;
    app.clock.advance(301);
    let (s, v) = cred(&c, &id, get(&mut auth, ORIGIN, &options)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "denied");
    assert_eq!(
        v["reason"],
        "the passkey challenge has expired; start again"
    );
}

/// WebAuthn L2 §7.2 step 13: an assertion made for another origin is refused.
#[tokio::test]
async fn an_assertion_for_another_origin_is_refused() {
    let app = passkey_app().await;
    let csrf = signed_in(&app).await;
    let mut auth = authenticator();
    register(&app, &csrf, &mut auth, "Key").await;
    let b = fresh(&app);
    let (id, options) = begin_login(&b).await;
    let (s, v) = cred(&b, &id, get(&mut auth, "http://localhost:9002", &options)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "denied");
    assert_eq!(v["reason"], "the passkey answered for another origin");
    // Registration from another origin is refused too.
    let options = begin_registration(&app, &csrf).await;
    let credential = create(&mut authenticator(), "http://localhost:9002", &options);
    let (s, v) = post_json(
        &app,
        "/webauthn/register/finish",
        &csrf,
        json!({"credential": credential}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "passkey_refused");
    assert_eq!(passkey_list(&app).await.len(), 1);
}

/// Malformed JSON and bad base64url are a 400 `invalid_request` that
/// leaves the flow (and its challenge) as it was.
#[tokio::test]
async fn malformed_credentials_are_400_and_change_nothing() {
    let app = passkey_app().await;
    let csrf = signed_in(&app).await;
    let mut auth = authenticator();

    // Registration.
    let options = begin_registration(&app, &csrf).await;
    let credential = create(&mut auth, ORIGIN, &options);
    let mut bad = credential.clone();
    bad["rawId"] = json!("not base64url!");
    for body in [
        json!({"credential": bad}),
        json!({"credential": "{not json"}),
    ] {
        let (s, v) = post_json(&app, "/webauthn/register/finish", &csrf, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"], "invalid_request", "{v}");
    }
    let r = app
        .browser
        .post(format!("{}/webauthn/register/finish", app.base))
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/json")
        .body("{\"credential\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    // The pending registration is still there.
    let (s, v) = post_json(
        &app,
        "/webauthn/register/finish",
        &csrf,
        json!({"label": "Key", "credential": credential}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // …and used: a second finish finds none.
    let (s, v) = post_json(
        &app,
        "/webauthn/register/finish",
        &csrf,
        json!({"credential": credential}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        v["error_description"],
        "no passkey registration is pending; start again"
    );

    // Login.
    let b = fresh(&app);
    let (id, options) = begin_login(&b).await;
    let assertion = get(&mut auth, ORIGIN, &options);
    let mut bad = assertion.clone();
    bad["response"]["signature"] = json!("***");
    for passkey in [json!("{not json"), json!({"id": "x"}), bad] {
        let (s, v) = cred(&b, &id, passkey).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"], "invalid_request", "{v}");
        assert!(
            v["error_description"]
                .as_str()
                .unwrap()
                .starts_with("malformed passkey credential: "),
            "{v}"
        );
    }
    let (s, v) = cred(&b, &id, assertion).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "success", "{v}");
}

/// WebAuthn L2 §7.2 step 15: an assertion signed for another RP ID is
/// refused, even from the right origin. The RP is `localhost` at
/// `https://login.localhost`; the authenticator is asked for
/// `login.localhost` (a valid RP ID for that origin, not this RP's).
#[tokio::test]
async fn an_assertion_for_another_rp_id_is_refused() {
    const SUB: &str = "https://login.localhost";
    let app = spawn_app_with(|c| {
        passkeys_on(c);
        c.passkeys.rp_origin = Some(SUB.into());
    })
    .await;
    let csrf = signed_in(&app).await;
    let mut auth = authenticator();
    let options = begin_registration(&app, &csrf).await;
    let credential = create(&mut auth, SUB, &options);
    let (s, v) = post_json(
        &app,
        "/webauthn/register/finish",
        &csrf,
        json!({"credential": credential}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let b = fresh(&app);
    let (id, mut options) = begin_login(&b).await;
    options["publicKey"]["rpId"] = json!("login.localhost");
    let (s, v) = cred(&b, &id, get(&mut auth, SUB, &options)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "denied");
    assert_eq!(v["reason"], "the passkey answered for another RP ID");
}

#[path = "usernameless.rs"]
mod usernameless;
