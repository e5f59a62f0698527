//! Local accounts over real sockets: the multi-step authentication API
//! (`/api/auth`, in the shape of Kanidm's init → choose → begin → continue
//! → cred → success/denied), the seed's `/register` and `/login`, TOTP
//! (RFC 6238) replay and skew with the injected clock, privileged sessions
//! and abandoned flows.

use std::sync::Arc;

use adapter::accounts::Accounts;
use adapter::clock::Clock;
use adapter::store::{SqlStore, Store};
use adapter::totp::TotpSecret;
use serde_json::{json, Value};

use super::*;

/// The accounts of `app`'s database, with the app's clock and key file.
pub(crate) async fn accounts(app: &TestApp) -> Accounts {
    let store: Arc<dyn Store> = Arc::new(SqlStore::connect(&app.db_url, 2).await.unwrap());
    let config = test_config(&app.db_url);
    let hasher = Arc::new(adapter::password::Hasher::new(1, 8).unwrap());
    adapter::startup::accounts_from_config(&config, store, app.clock.clone(), hasher).unwrap()
}

/// Enrols TOTP for `user` and returns the secret (as an authenticator app
/// would hold it). The confirming code uses up the current time step.
async fn enrol_totp(app: &TestApp, user: &str) -> (TotpSecret, Vec<String>) {
    let accounts = accounts(app).await;
    let enrolment = accounts.begin_totp(user).await.unwrap();
    let secret = TotpSecret::from_base32(&enrolment.secret_base32).unwrap();
    let codes = accounts
        .confirm_totp(user, &secret.code_at(app.clock.now()))
        .await
        .unwrap()
        .expect("the first code confirms the enrolment");
    (secret, codes)
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

/// `init` then `begin`; returns the session id.
async fn begun(app: &TestApp, user: &str, mech: &str) -> String {
    let (s, v) = step(app, json!({"step": "init", "username": user})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = v["session_id"].as_str().unwrap().to_string();
    let (s, v) = step(
        app,
        json!({"step": "begin", "session_id": id, "mech": mech}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    id
}

#[tokio::test]
async fn password_policy_walks_init_choose_begin_continue_cred_success() {
    let app = spawn_app().await;
    let (s, v) = step(&app, json!({"step": "init", "username": "alice"})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "choose");
    assert_eq!(v["mechs"], json!(["password"]));
    let id = v["session_id"].as_str().unwrap().to_string();
    let (_, v) = step(
        &app,
        json!({"step": "begin", "session_id": id, "mech": "password"}),
    )
    .await;
    assert_eq!(
        v,
        json!({"state": "continue", "allowed": ["password"], "session_id": id})
    );
    let (s, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "success");
    assert_eq!(v["username"], "alice");
    assert_eq!(v["amr"], json!(["pwd"]));
    assert_eq!(v["acr"], "1");
    assert_eq!(v["privileged"], false);
    assert_eq!(v["expires_in"], 8 * 3600);
    assert_eq!(v["token"].as_str().unwrap().len(), 43);
    assert_eq!(v["csrf_token"].as_str().unwrap().len(), 43);
    // A replayed step finds the authentication over.
    let (s, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("finished"))
    );
}

#[tokio::test]
async fn unknown_user_and_wrong_password_look_the_same() {
    let app = spawn_app().await;
    let (_, known) = step(&app, json!({"step": "init", "username": "alice"})).await;
    let (_, unknown) = step(&app, json!({"step": "init", "username": "mallory"})).await;
    assert_eq!(known["mechs"], unknown["mechs"]);
    let mut answers = Vec::new();
    for user in ["alice", "mallory"] {
        let id = begun(&app, user, "password").await;
        let (s, v) = step(
            &app,
            json!({"step": "cred", "session_id": id, "password": "wrong pw"}),
        )
        .await;
        answers.push((s, v));
    }
    assert_eq!(answers[0].0, StatusCode::OK);
    assert_eq!(
        answers[0].1,
        json!({"state": "denied", "reason": "invalid username or password"})
    );
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test]
async fn steps_out_of_order_are_refused_and_leave_the_state() {
    let app = spawn_app().await;
    let err = |v: &Value| v["error"].as_str().unwrap().to_string();
    // Begin or cred without an init.
    let (s, v) = step(&app, json!({"step": "begin", "mech": "password"})).await;
    assert_eq!(
        (s, err(&v)),
        (StatusCode::BAD_REQUEST, "out_of_order".into())
    );
    let (s, v) = step(&app, json!({"step": "init", "username": "alice"})).await;
    assert_eq!(s, StatusCode::OK);
    let id = v["session_id"].as_str().unwrap().to_string();
    // init again inside a session.
    let (s, v) = step(
        &app,
        json!({"step": "init", "session_id": id, "username": "alice"}),
    )
    .await;
    assert_eq!(
        (s, err(&v)),
        (StatusCode::BAD_REQUEST, "out_of_order".into())
    );
    // cred before begin.
    let (s, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!(
        (s, err(&v)),
        (StatusCode::BAD_REQUEST, "out_of_order".into())
    );
    // A mechanism not offered, and one that does not exist.
    let (s, v) = step(
        &app,
        json!({"step": "begin", "session_id": id, "mech": "password_mfa"}),
    )
    .await;
    assert_eq!(
        (s, err(&v)),
        (StatusCode::BAD_REQUEST, "mech_not_offered".into())
    );
    let (s, v) = step(
        &app,
        json!({"step": "begin", "session_id": id, "mech": "carrier_pigeon"}),
    )
    .await;
    assert_eq!(
        (s, err(&v)),
        (StatusCode::BAD_REQUEST, "mech_not_offered".into())
    );
    // The state is unchanged: begin still works, then the wrong kind of
    // credential is refused, then the right one succeeds.
    let (s, _) = step(
        &app,
        json!({"step": "begin", "session_id": id, "mech": "password"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "totp": "123456"}),
    )
    .await;
    assert_eq!(
        (s, err(&v)),
        (StatusCode::BAD_REQUEST, "wrong_credential".into())
    );
    let (s, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "x", "totp": "1"}),
    )
    .await;
    assert_eq!(
        (s, err(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    let (s, v) = step(&app, json!({"step": "fly", "session_id": id})).await;
    assert_eq!(
        (s, err(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    let (s, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("success")));
    // A forged session id.
    let (s, v) = step(
        &app,
        json!({"step": "begin", "session_id": "forged", "mech": "password"}),
    )
    .await;
    assert_eq!(
        (s, err(&v)),
        (StatusCode::BAD_REQUEST, "unknown_session".into())
    );
    // Malformed JSON.
    let r = app
        .browser
        .post(format!("{}/api/auth", app.base))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_abandoned_authentication_expires() {
    let app = spawn_app().await;
    let id = begun(&app, "alice", "password").await;
    // accounts.flow_ttl_seconds defaults to 600.
    app.clock.advance(600);
    let (s, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_session"))
    );
}

#[tokio::test]
async fn password_and_totp_loop_until_both_are_given() {
    let app = spawn_app().await;
    let (secret, _) = enrol_totp(&app, "alice").await;
    // The confirming code's step is used; the next login comes a step later.
    app.clock.advance(30);
    let (_, v) = step(&app, json!({"step": "init", "username": "alice"})).await;
    assert_eq!(v["mechs"], json!(["password_mfa"]));
    let id = v["session_id"].as_str().unwrap().to_string();
    let (_, v) = step(
        &app,
        json!({"step": "begin", "session_id": id, "mech": "password_mfa"}),
    )
    .await;
    assert_eq!(v["allowed"], json!(["password"]));
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!(
        v,
        json!({"state": "continue", "allowed": ["totp"], "session_id": id})
    );
    // A wrong code may be typed again.
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "totp": "000000"}),
    )
    .await;
    assert_eq!(v["state"], "continue");
    assert_eq!(v["retry"], "the code is not valid");
    let code = secret.code_at(app.clock.now());
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "totp": code}),
    )
    .await;
    assert_eq!(v["state"], "success", "{v}");
    assert_eq!(v["amr"], json!(["pwd", "otp", "mfa"]));
    assert_eq!(v["acr"], "2");
    // RFC 6238 §5.2: the same code cannot be used twice.
    let id = begun(&app, "alice", "password_mfa").await;
    step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "totp": code}),
    )
    .await;
    assert_eq!(v["state"], "continue", "a replayed code is refused: {v}");
}

#[tokio::test]
async fn totp_accepts_one_step_of_skew_and_no_more() {
    let app = spawn_app().await;
    let (secret, _) = enrol_totp(&app, "alice").await;
    let t0 = app.clock.now();
    app.clock.advance(300);
    let now = app.clock.now();
    let attempt = |code: String| {
        let app = &app;
        async move {
            let id = begun(app, "alice", "password_mfa").await;
            step(
                app,
                json!({"step": "cred", "session_id": id, "password": "correct horse"}),
            )
            .await;
            let (_, v) = step(app, json!({"step": "cred", "session_id": id, "totp": code})).await;
            v["state"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(
        attempt(secret.code_at(now - 60)).await,
        "continue",
        "two steps behind"
    );
    assert_eq!(
        attempt(secret.code_at(now + 60)).await,
        "continue",
        "two steps ahead"
    );
    assert_eq!(
        attempt(secret.code_at(now - 30)).await,
        "success",
        "one step behind"
    );
    // Once a step is used, older steps are refused too.
    assert_eq!(attempt(secret.code_at(now - 30)).await, "continue");
    assert_eq!(
        attempt(secret.code_at(now + 30)).await,
        "success",
        "one step ahead"
    );
    assert!(t0 < now);
}

#[tokio::test]
async fn a_recovery_code_stands_in_for_totp_once() {
    let app = spawn_app().await;
    let (_, codes) = enrol_totp(&app, "alice").await;
    assert_eq!(codes.len(), 10);
    let with = |code: String| {
        let app = &app;
        async move {
            let id = begun(app, "alice", "password_mfa").await;
            step(
                app,
                json!({"step": "cred", "session_id": id, "password": "correct horse"}),
            )
            .await;
            let (_, v) = step(app, json!({"step": "cred", "session_id": id, "totp": code})).await;
            v["state"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(with(codes[3].to_uppercase()).await, "success");
    assert_eq!(with(codes[3].clone()).await, "continue", "single use");
    assert_eq!(with(codes[4].clone()).await, "success");
}

#[tokio::test]
async fn init2_gives_a_short_privileged_session() {
    let app = spawn_app().await;
    let (_, v) = step(&app, json!({"step": "init2", "username": "alice"})).await;
    let id = v["session_id"].as_str().unwrap().to_string();
    step(
        &app,
        json!({"step": "begin", "session_id": id, "mech": "password"}),
    )
    .await;
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!(v["state"], "success");
    assert_eq!(v["privileged"], true);
    // accounts.privileged_session_seconds defaults to 300.
    assert_eq!(v["expires_in"], 300);
}

async fn post_json(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .browser
        .post(format!("{}{path}", app.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn registration_then_login() {
    let app = spawn_app_with(|c| c.accounts.registration = true).await;
    let long = "a passphrase of more than sixty-four characters is welcome here, really";
    assert!(long.chars().count() > 64);
    let (s, v) = post_json(
        &app,
        "/register",
        json!({"username": "Bob", "email": "bob@example.org", "password": long}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v, json!({"username": "bob", "email": "bob@example.org"}));
    let (s, v) = post_json(
        &app,
        "/register",
        json!({"username": "bob", "password": "12345678"}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("username_taken"))
    );
    let (s, v) = post_json(
        &app,
        "/register",
        json!({"username": "carol", "email": "BOB@example.org", "password": "12345678"}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("email_taken"))
    );
    let (s, v) = post_json(
        &app,
        "/register",
        json!({"username": "dave", "password": "1234567"}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    assert_eq!(
        v["error_description"],
        "the password must have at least 8 characters"
    );
    let (s, v) = post_json(
        &app,
        "/register",
        json!({"username": "bad name", "password": "12345678"}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    // The seed's curl flow: form-encoded login by e-mail, JSON answer.
    let r = app
        .browser
        .post(format!("{}/login", app.base))
        .form(&[("email", "bob@example.org"), ("password", long)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["username"], "bob");
    assert_eq!(v["csrf_token"].as_str().unwrap().len(), 43);
    let (s, v) = post_json(
        &app,
        "/login",
        json!({"username": "bob", "password": "wrong password"}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );
}

#[tokio::test]
async fn registration_can_be_turned_off() {
    let app = spawn_app().await;
    let (s, v) = post_json(
        &app,
        "/register",
        json!({"username": "bob", "password": "12345678"}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("registration_closed"))
    );
    let r = app
        .browser
        .get(format!("{}/register", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn login_needs_the_totp_code_when_enrolled() {
    let app = spawn_app().await;
    let (secret, _) = enrol_totp(&app, "alice").await;
    app.clock.advance(30);
    let (s, v) = post_json(
        &app,
        "/login",
        json!({"username": "alice", "password": "correct horse"}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("credentials_required"))
    );
    assert_eq!(v["error_description"], "also send: totp");
    let code = secret.code_at(app.clock.now());
    let (s, v) = post_json(
        &app,
        "/login",
        json!({"username": "alice", "password": "correct horse", "totp": code}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["amr"], json!(["pwd", "otp", "mfa"]));
}

#[tokio::test]
async fn cross_site_posts_are_refused_before_any_session() {
    let app = spawn_app_with(|c| c.accounts.registration = true).await;
    for (path, body) in [
        (
            "/login",
            json!({"username": "alice", "password": "correct horse"}),
        ),
        (
            "/register",
            json!({"username": "eve", "password": "12345678"}),
        ),
        ("/api/auth", json!({"step": "init", "username": "alice"})),
    ] {
        let r = app
            .browser
            .post(format!("{}{path}", app.base))
            .header("origin", "https://evil.example")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "csrf_failed", "{path}");
    }
}

/// The login form of an authorization request runs the same state machine:
/// password, then a TOTP form, then the code for the client; the ID token
/// says how (OIDC Core §2 `amr`, `acr`).
#[tokio::test]
async fn the_login_form_asks_for_the_totp_code_and_tokens_carry_amr() {
    let app = spawn_app().await;
    let (secret, _) = enrol_totp(&app, "alice").await;
    app.clock.advance(30);
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    let form_url = location(&r);
    let r = app.submit_login(&form_url).await;
    assert_eq!(r.status(), StatusCode::OK, "the TOTP form, not a redirect");
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"code-form\""), "{html}");
    assert!(html.contains("authenticator app"), "{html}");
    let post = |code: String, html: String| {
        let app = &app;
        async move {
            app.browser
                .post(format!("{}/login/local", app.base))
                .form(&[
                    ("req", hidden(&html, "req")),
                    ("csrf_token", hidden(&html, "csrf_token")),
                    ("action", "code".into()),
                    ("code", code),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    // A wrong code shows the form again with the error.
    let r = post("000000".into(), html.clone()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let again = r.text().await.unwrap();
    assert!(again.contains("id=\"code-form\""));
    assert!(again.contains("the code is not valid"), "{again}");
    let r = post(secret.code_at(app.clock.now()), again).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let loc = location(&r);
    assert!(loc.starts_with(REDIRECT), "{loc}");
    let code = query(&loc)["code"].as_str().unwrap().to_string();
    let tokens: Value = app.redeem(&code).await.json().await.unwrap();
    let (_, id) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["amr"], json!(["pwd", "otp", "mfa"]));
    assert_eq!(id["acr"], "2");
    let (_, access) = jwt_parts(tokens["access_token"].as_str().unwrap());
    assert_eq!(access["amr"], json!(["pwd", "otp", "mfa"]));
}

/// A code posted to a login that is not waiting for one is refused, and a
/// password login without TOTP says `pwd` only.
#[tokio::test]
async fn the_login_form_refuses_a_code_out_of_turn() {
    let app = spawn_app().await;
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    let form_url = location(&r);
    let html = app
        .browser
        .get(format!("{}{form_url}", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = app
        .browser
        .post(format!("{}/login/local", app.base))
        .form(&[
            ("req", hidden(&html, "req")),
            ("csrf_token", hidden(&html, "csrf_token")),
            ("action", "code".to_string()),
            ("code", "123456".to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body = r.text().await.unwrap();
    assert!(body.contains("not waiting for this step"), "{body}");
    let code = app.code().await;
    let tokens: Value = app.redeem(&code).await.json().await.unwrap();
    let (_, id) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["amr"], json!(["pwd"]));
    assert_eq!(id["acr"], "1");
}

/// The enrolment pages: a QR code and the secret, a session-bound CSRF
/// token, a first code confirms, recovery codes are shown once; replacing
/// the authenticator needs a session made with it.
#[tokio::test]
async fn totp_enrolment_pages() {
    let app = spawn_app().await;
    let page = format!("{}/account/totp", app.base);
    // Not signed in.
    let r = app.browser.get(&page).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (s, login) = post_json(
        &app,
        "/login",
        json!({"username": "alice", "password": "correct horse"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let html = app
        .browser
        .get(&page)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("<svg"), "a QR code: {html}");
    let secret = html
        .split("id=\"totp-secret\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    let secret = TotpSecret::from_base32(&secret).unwrap();
    let csrf = hidden(&html, "csrf_token");
    assert_eq!(
        csrf,
        login["csrf_token"].as_str().unwrap(),
        "the login's CSRF token"
    );
    let confirm = |csrf: String, code: String, origin: Option<&'static str>| {
        let app = &app;
        let page = page.clone();
        async move {
            let mut req = app
                .browser
                .post(page)
                .form(&[("csrf_token", csrf), ("code", code)]);
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            req.send().await.unwrap()
        }
    };
    let now = app.clock.now();
    let r = confirm("wrong".into(), secret.code_at(now), None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "wrong CSRF token");
    let r = confirm(
        csrf.clone(),
        secret.code_at(now),
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "cross-site");
    let r = confirm(csrf.clone(), "000000".into(), None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("That code is not valid"));
    let r = confirm(csrf.clone(), secret.code_at(now), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert_eq!(html.matches("<li><code>").count(), 10, "{html}");
    // This session was made with a password only: it cannot replace the app.
    let r = app.browser.get(&page).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A session made with the app can.
    app.clock.advance(30);
    let (s, _) = post_json(
        &app,
        "/login",
        json!({"username": "alice", "password": "correct horse", "totp": secret.code_at(app.clock.now())}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let r = app.browser.get(&page).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A per-user policy overrides the deployment's: `password_totp` asks for
/// TOTP after the password, and without an enrolled app the login is denied.
#[tokio::test]
async fn a_users_policy_overrides_the_deployments() {
    let app = spawn_app().await;
    accounts(&app)
        .await
        .set_policy("alice", Some(adapter::config::LoginPolicy::PasswordTotp))
        .await
        .unwrap();
    let (_, v) = step(&app, json!({"step": "init", "username": "alice"})).await;
    assert_eq!(v["mechs"], json!(["password_mfa"]));
    let id = begun(&app, "alice", "password_mfa").await;
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!(v["allowed"], json!(["totp"]));
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "totp": "123456"}),
    )
    .await;
    assert_eq!(
        v,
        json!({"state": "denied", "reason": "no authenticator app is enrolled for this account"})
    );
    // A disabled account is denied like an unknown one.
    let accounts = accounts(&app).await;
    accounts.set_policy("alice", None).await.unwrap();
    accounts.set_disabled("alice", true).await.unwrap();
    let id = begun(&app, "alice", "password").await;
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!(
        v,
        json!({"state": "denied", "reason": "invalid username or password"})
    );
}

/// The code of the newest mail to `to`, read from the outbox (no SMTP is
/// configured: the development outbox holds it).
async fn code_mailed_to(app: &TestApp, to: &str) -> String {
    let store = SqlStore::connect(&app.db_url, 1).await.unwrap();
    let mail = store
        .recent_mail(10)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.recipient == to)
        .unwrap_or_else(|| panic!("no mail to {to}"));
    mail.body
        .split_whitespace()
        .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
        .unwrap()
        .to_string()
}

async fn mails_to(app: &TestApp, to: &str) -> usize {
    let store = SqlStore::connect(&app.db_url, 1).await.unwrap();
    store
        .recent_mail(100)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.recipient == to)
        .count()
}

fn email_policy(c: &mut adapter::Config) {
    c.accounts.registration = true;
    c.accounts.policy = adapter::config::LoginPolicy::EmailCode;
}

/// The seed's e-mail-code mode: registration by address alone sends a
/// code, `/verify-otp` proves the address and starts a session; later
/// logins by address alone work the same way. `amr` says `otp`.
#[tokio::test]
async fn email_code_registration_and_login() {
    let app = spawn_app_with(email_policy).await;
    let (s, v) = post_json(&app, "/register", json!({"email": "Erin@Example.org"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v,
        json!({"username": "erin@example.org", "status": "code_sent"})
    );
    let code = code_mailed_to(&app, "erin@example.org").await;
    // A wrong code first: the attempts left are named.
    let r = app
        .browser
        .post(format!("{}/verify-otp", app.base))
        .form(&[("email", "erin@example.org"), ("otp_code", "000000")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_code");
    assert_eq!(
        v["error_description"],
        "the code is not valid; 4 attempts left"
    );
    let r = app
        .browser
        .post(format!("{}/verify-otp", app.base))
        .form(&[("email", "erin@example.org"), ("otp_code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["username"], "erin@example.org");
    assert_eq!(v["amr"], json!(["otp"]));
    assert_eq!(v["csrf_token"].as_str().unwrap().len(), 43);
    // The code is single-use, and the flow is over.
    let r = app
        .browser
        .post(format!("{}/verify-otp", app.base))
        .form(&[("otp_code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A later login by address. (Mails of one second have no order: the
    // clock moves on so that the newest mail is the new code's.)
    app.clock.advance(1);
    let (s, v) = post_json(&app, "/login", json!({"email": "erin@example.org"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["status"], "code_sent");
    assert_eq!(mails_to(&app, "erin@example.org").await, 2);
    let code = code_mailed_to(&app, "erin@example.org").await;
    let (s, v) = post_json(&app, "/verify-otp", json!({"otp_code": code})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["amr"], json!(["otp"]));
}

/// At most 5 attempts, then a new code is needed; a code expires after 5
/// minutes (injected clock); an unknown address gets the same answer and
/// no mail.
#[tokio::test]
async fn email_codes_limit_attempts_and_expire() {
    let app = spawn_app_with(email_policy).await;
    post_json(&app, "/register", json!({"email": "erin@example.org"})).await;
    let id = begun(&app, "erin@example.org", "email_code").await;
    for left in (1..=4).rev() {
        let (_, v) = step(
            &app,
            json!({"step": "cred", "session_id": id, "email_code": "000000"}),
        )
        .await;
        assert_eq!(
            v["retry"],
            format!("the code is not valid; {left} attempts left")
        );
    }
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "email_code": "000000"}),
    )
    .await;
    // The fifth wrong code uses the code up.
    assert_eq!(
        v,
        json!({"state": "denied", "reason": "too many wrong codes; ask for a new one"})
    );
    // The right code no longer helps: the flow is over.
    let code = code_mailed_to(&app, "erin@example.org").await;
    let (s, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "email_code": code}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("finished"))
    );
    // A new code; it expires after 300 s.
    app.clock.advance(1);
    let id = begun(&app, "erin@example.org", "email_code").await;
    let code = code_mailed_to(&app, "erin@example.org").await;
    app.clock.advance(300);
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "email_code": code}),
    )
    .await;
    assert_eq!(
        v,
        json!({"state": "denied", "reason": "the code has expired; ask for a new one"})
    );
    // Within 5 minutes it works.
    app.clock.advance(1);
    let id = begun(&app, "erin@example.org", "email_code").await;
    let code = code_mailed_to(&app, "erin@example.org").await;
    app.clock.advance(299);
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "email_code": code}),
    )
    .await;
    assert_eq!(v["state"], "success");
    // Unknown address: the same answers, no mail.
    let (_, known) = step(
        &app,
        json!({"step": "init", "username": "erin@example.org"}),
    )
    .await;
    let (_, unknown) = step(
        &app,
        json!({"step": "init", "username": "nobody@example.org"}),
    )
    .await;
    assert_eq!(known["mechs"], unknown["mechs"]);
    let id = begun(&app, "nobody@example.org", "email_code").await;
    assert_eq!(mails_to(&app, "nobody@example.org").await, 0);
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "email_code": "123456"}),
    )
    .await;
    assert_eq!(v["state"], "denied");
}

/// The login form of an authorization request offers "e-mail me a code"
/// when the deployment allows codes beside passwords.
#[tokio::test]
async fn the_login_form_logs_in_by_email_code() {
    let app = spawn_app_with(|c| c.accounts.email_codes = true).await;
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    let form_url = location(&r);
    let html = app
        .browser
        .get(format!("{}{form_url}", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("id=\"email-code-submit\""), "{html}");
    let r = app
        .browser
        .post(format!("{}/login/local", app.base))
        .form(&[
            ("req", hidden(&html, "req")),
            ("csrf_token", hidden(&html, "csrf_token")),
            ("action", "email_code".to_string()),
            ("username", "alice".to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("a 6-digit code is on its way"), "{html}");
    let code = code_mailed_to(&app, "alice@example.org").await;
    let r = app
        .browser
        .post(format!("{}/login/local", app.base))
        .form(&[
            ("req", hidden(&html, "req")),
            ("csrf_token", hidden(&html, "csrf_token")),
            ("action", "code".to_string()),
            ("code", code),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let code = query(&location(&r))["code"].as_str().unwrap().to_string();
    let tokens: Value = app.redeem(&code).await.json().await.unwrap();
    let (_, id) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["amr"], json!(["otp"]));
    assert_eq!(id["email_verified"], true);
}

/// Guessing is slowed per account in the state machine, whatever the front
/// end: after 5 free failures the API answers 429 with `Retry-After`
/// (RFC 6585 §4) before any hashing, also for the right password, until
/// the injected clock passes the wait; a success resets the count.
#[tokio::test]
async fn the_per_account_throttle_covers_the_api_and_the_plain_login() {
    let app = spawn_app().await;
    for _ in 0..5 {
        let id = begun(&app, "alice", "password").await;
        let (s, v) = step(
            &app,
            json!({"step": "cred", "session_id": id, "password": "guess"}),
        )
        .await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("denied")));
    }
    // The sixth failure starts a wait of 2 s.
    let id = begun(&app, "alice", "password").await;
    step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "guess"}),
    )
    .await;
    let id = begun(&app, "alice", "password").await;
    let r = app
        .browser
        .post(format!("{}/api/auth", app.base))
        .json(&json!({"step": "cred", "session_id": id, "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "2");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "rate_limited");
    // The plain login shares the throttle.
    let (s, v) = post_json(
        &app,
        "/login",
        json!({"username": "alice", "password": "correct horse"}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    app.clock.advance(2);
    // The refused step left the flow as it was.
    let (s, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("success")));
    // Reset: one more failure is free again.
    let id = begun(&app, "alice", "password").await;
    let (_, v) = step(
        &app,
        json!({"step": "cred", "session_id": id, "password": "guess"}),
    )
    .await;
    assert_eq!(v["state"], "denied");
}

/// Registration has its own per-address quota (default burst 5).
#[tokio::test]
async fn registration_is_rate_limited_per_address() {
    let app = spawn_app_with(|c| c.accounts.registration = true).await;
    for i in 0..5 {
        let (s, v) = post_json(
            &app,
            "/register",
            json!({"username": format!("user{i}"), "password": "long enough"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let r = app
        .browser
        .post(format!("{}/register", app.base))
        .json(&json!({"username": "user5", "password": "long enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "12");
    app.clock.advance(12);
    let (s, _) = post_json(
        &app,
        "/register",
        json!({"username": "user5", "password": "long enough"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
}
