//! Usernameless (discoverable) passkey login, the passkey policies, and
//! the seed's browser endpoints `POST /login/begin` / `POST /login/finish`.
//!
//! The software authenticator cannot hold discoverable credentials, so a
//! usernameless answer is made as a discoverable authenticator makes it:
//! the assertion is signed over the server's challenge with the registered
//! credential, and `userHandle` carries the handle given at registration
//! (WebAuthn L2 §5.2.2; the handle is not part of the signature, so the
//! server must find the account by it and then check the credential is
//! that account's). The browser test runs the real thing in Chromium.

use super::*;

/// Registers a passkey for alice; returns (authenticator, credential id,
/// user handle).
async fn alice_with_passkey(app: &TestApp) -> (SoftPasskey, String, String) {
    let csrf = signed_in(app).await;
    let mut auth = authenticator();
    let options = begin_registration(app, &csrf).await;
    // WebAuthn L2 §5.4.6: a discoverable credential is asked for, so the
    // authenticator can find it without a username.
    let selection = &options["publicKey"]["authenticatorSelection"];
    assert_eq!(selection["residentKey"], "preferred", "{options}");
    assert_eq!(selection["requireResidentKey"], false, "{options}");
    let handle = options["publicKey"]["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let credential = create(&mut auth, ORIGIN, &options);
    let (s, v) = post_json(
        app,
        "/webauthn/register/finish",
        &csrf,
        json!({"label": "Phone", "credential": credential}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (auth, v["id"].as_str().unwrap().to_string(), handle)
}

/// The usernameless answer of `auth` to discoverable `options`: signed with
/// `cred_id`, naming `handle` (or no one).
fn discoverable_get(
    auth: &mut SoftPasskey,
    options: &Value,
    cred_id: &str,
    handle: Option<&str>,
) -> Value {
    let allowed = &options["publicKey"]["allowCredentials"];
    assert!(
        allowed.is_null() || allowed.as_array().is_some_and(|a| a.is_empty()),
        "a usernameless challenge lists no credentials: {options}"
    );
    let mut signed = options.clone();
    signed["publicKey"]["allowCredentials"] = json!([{"type": "public-key", "id": cred_id}]);
    let mut assertion = get(auth, ORIGIN, &signed);
    assertion["response"]["userHandle"] = match handle {
        Some(h) => json!(h),
        None => Value::Null,
    };
    assertion
}

/// `adapter users set-policy <user> <policy>` on the database of `app`.
fn set_policy(app: &TestApp, user: &str, policy: &str) {
    let out = users_cli(app, &["set-policy", user, policy]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `init` with `username`, which must be offered `mechs`: the session id.
async fn init_as(app: &TestApp, username: &str, mechs: Value) -> String {
    let (s, v) = step(app, json!({"step": "init", "username": username})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["mechs"], mechs, "{v}");
    v["session_id"].as_str().unwrap().to_string()
}

/// `init` with no username, `begin` passkey: the session id and options.
async fn begin_usernameless(app: &TestApp) -> (String, Value) {
    let (s, v) = step(app, json!({"step": "init"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["mechs"], json!(["passkey"]), "{v}");
    let id = v["session_id"].as_str().unwrap().to_string();
    let (s, v) = step(
        app,
        json!({"step": "begin", "session_id": id, "mech": "passkey"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["allowed"], json!(["passkey"]));
    (id, v["options"].clone())
}

async fn usernameless_login_names_the_account(app: &TestApp) {
    let (mut auth, cred_id, handle) = alice_with_passkey(app).await;

    let b = fresh(app);
    let (id, options) = begin_usernameless(&b).await;
    assert_eq!(options["publicKey"]["rpId"], "localhost");
    assert_eq!(options["publicKey"]["userVerification"], "required");
    let assertion = discoverable_get(&mut auth, &options, &cred_id, Some(&handle));
    let (s, v) = cred(&b, &id, assertion).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "success", "{v}");
    assert_eq!(v["username"], "alice");
    assert_eq!(v["amr"], json!(["hwk"]));

    // No user handle: nobody to look up.
    let c = fresh(app);
    let (id, options) = begin_usernameless(&c).await;
    let assertion = discoverable_get(&mut auth, &options, &cred_id, None);
    let (_, v) = cred(&c, &id, assertion).await;
    assert_eq!(v["state"], "denied", "{v}");
    assert_eq!(v["reason"], "the passkey was not accepted");

    // A handle nobody registered.
    let d = fresh(app);
    let (id, options) = begin_usernameless(&d).await;
    let stranger = URL_SAFE_NO_PAD.encode(uuid_bytes());
    let assertion = discoverable_get(&mut auth, &options, &cred_id, Some(&stranger));
    let (_, v) = cred(&d, &id, assertion).await;
    assert_eq!(v["state"], "denied", "{v}");
    assert_eq!(v["reason"], "the passkey was not accepted");
}

fn uuid_bytes() -> [u8; 16] {
    *webauthn_rs::prelude::Uuid::new_v4().as_bytes()
}

use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[tokio::test]
async fn usernameless_login_on_sqlite() {
    let app = passkey_app().await;
    usernameless_login_names_the_account(&app).await;
}

#[tokio::test]
async fn usernameless_login_on_postgres() {
    let pg = PgPasskeyApp::start("AUTH_ADAPTER_TEST_USERNAMELESS_PG_KEY").await;
    usernameless_login_names_the_account(&pg.app).await;
    pg.stop().await;
}

/// The user handle names an account; the credential must be that
/// account's: bob's handle with alice's passkey is refused.
#[tokio::test]
async fn a_user_handle_must_own_the_credential() {
    let app = spawn_app_with(|c| {
        passkeys_on(c);
        c.local_users.push(
            testkit::clients::local_user("bob", "battery staple", "Bob", "bob@example.org")
                .unwrap(),
        );
    })
    .await;
    let (mut alice_auth, alice_cred, _) = alice_with_passkey(&app).await;
    // Bob signs in and registers his own passkey (so his handle exists).
    let bob = fresh(&app);
    let (_, v) = step(&bob, json!({"step": "init", "username": "bob"})).await;
    let id = v["session_id"].as_str().unwrap().to_string();
    step(
        &bob,
        json!({"step": "begin", "session_id": id, "mech": "password"}),
    )
    .await;
    let (_, v) = step(
        &bob,
        json!({"step": "cred", "session_id": id, "password": "battery staple"}),
    )
    .await;
    let csrf = v["csrf_token"].as_str().unwrap().to_string();
    let options = begin_registration(&bob, &csrf).await;
    let bob_handle = options["publicKey"]["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bob_auth = authenticator();
    let credential = create(&mut bob_auth, ORIGIN, &options);
    let (s, _) = post_json(
        &bob,
        "/webauthn/register/finish",
        &csrf,
        json!({"credential": credential}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);

    let b = fresh(&app);
    let (id, options) = begin_usernameless(&b).await;
    let forged = discoverable_get(&mut alice_auth, &options, &alice_cred, Some(&bob_handle));
    let (_, v) = cred(&b, &id, forged).await;
    assert_eq!(v["state"], "denied", "{v}");
    assert_eq!(v["reason"], "the passkey is not registered");
}

/// Policy `passkey`: only a passkey is offered, to unknown names too
/// (whose challenge lists no credentials, like a name without passkeys).
#[tokio::test]
async fn the_passkey_policy_offers_only_passkeys() {
    let app = passkey_app().await;
    let (mut auth, cred_id, _) = alice_with_passkey(&app).await;
    set_policy(&app, "alice", "passkey");

    let b = fresh(&app);
    let id = init_as(&b, "alice", json!(["passkey"])).await;
    let (s, v) = step(
        &b,
        json!({"step": "begin", "session_id": id, "mech": "password"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "mech_not_offered");
    let (s, v) = step(
        &b,
        json!({"step": "begin", "session_id": id, "mech": "passkey"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = cred(&b, &id, get(&mut auth, ORIGIN, &v["options"])).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "success", "{v}");
    assert_eq!(v["amr"], json!(["hwk"]));

    // A deployment on the passkey policy: an unknown name gets the same
    // offer and a discoverable challenge, which no assertion satisfies.
    let strict = spawn_app_with(|c| {
        passkeys_on(c);
        c.accounts.policy = adapter::config::LoginPolicy::Passkey;
    })
    .await;
    let id = init_as(&strict, "nobody", json!(["passkey"])).await;
    let (s, v) = step(
        &strict,
        json!({"step": "begin", "session_id": id, "mech": "passkey"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let assertion = discoverable_get(&mut auth, &v["options"], &cred_id, None);
    let (_, v) = cred(&strict, &id, assertion).await;
    assert_eq!(v["state"], "denied");
    assert_eq!(v["reason"], "the passkey was not accepted");
}

/// Policy `password_passkey`: the password, then a passkey of the
/// account; `amr` has both and `mfa` (RFC 8176 §2). A usernameless login
/// of such an account is refused: it would skip the password.
#[tokio::test]
async fn password_then_passkey_as_second_factor() {
    let app = passkey_app().await;
    let (mut auth, cred_id, handle) = alice_with_passkey(&app).await;
    set_policy(&app, "alice", "password_passkey");

    let b = fresh(&app);
    let id = init_as(&b, "alice", json!(["password_passkey"])).await;
    let (_, v) = step(
        &b,
        json!({"step": "begin", "session_id": id, "mech": "password_passkey"}),
    )
    .await;
    assert_eq!(v["allowed"], json!(["password"]));
    // The passkey cannot come first.
    let (s, v) = cred(&b, &id, json!({"id": "x"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "wrong_credential");
    let (s, v) = step(
        &b,
        json!({"step": "cred", "session_id": id, "password": "correct horse"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "continue");
    assert_eq!(v["allowed"], json!(["passkey"]));
    let allowed: Vec<&str> = v["options"]["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(allowed, vec![cred_id.as_str()]);
    let (s, v) = cred(&b, &id, get(&mut auth, ORIGIN, &v["options"])).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "success", "{v}");
    assert_eq!(v["amr"], json!(["pwd", "hwk", "mfa"]));

    // A wrong password ends it before any challenge.
    let c = fresh(&app);
    let (_, v) = step(&c, json!({"step": "init", "username": "alice"})).await;
    let id = v["session_id"].as_str().unwrap().to_string();
    step(
        &c,
        json!({"step": "begin", "session_id": id, "mech": "password_passkey"}),
    )
    .await;
    let (_, v) = step(
        &c,
        json!({"step": "cred", "session_id": id, "password": "wrong"}),
    )
    .await;
    assert_eq!(v["state"], "denied");
    assert_eq!(v["reason"], "invalid username or password");

    // Usernameless would skip the password.
    let d = fresh(&app);
    let (id, options) = begin_usernameless(&d).await;
    let assertion = discoverable_get(&mut auth, &options, &cred_id, Some(&handle));
    let (_, v) = cred(&d, &id, assertion).await;
    assert_eq!(v["state"], "denied", "{v}");
    assert_eq!(
        v["reason"],
        "this account signs in with a password and a passkey: enter your username first"
    );
}

/// Without passkeys an `init` needs a username.
#[tokio::test]
async fn usernameless_needs_passkeys() {
    let app = spawn_app().await;
    let (s, v) = step(&app, json!({"step": "init"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "invalid_request");
    assert_eq!(v["error_description"], "a username is required");
}

async fn seed_post(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .browser
        .post(format!("{}{path}", app.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// The seed's `POST /login/begin` → `POST /login/finish`, outside any
/// authorization request: the challenge waits in the store under a cookie
/// of this browser; success starts a session.
#[tokio::test]
async fn seed_login_begin_and_finish() {
    let app = passkey_app().await;
    let (mut auth, cred_id, handle) = alice_with_passkey(&app).await;

    // Username-first.
    let b = fresh(&app);
    let (s, options) = seed_post(&b, "/login/begin", json!({"username": "alice"})).await;
    assert_eq!(s, StatusCode::OK, "{options}");
    assert_eq!(
        options["publicKey"]["allowCredentials"][0]["id"],
        cred_id.as_str()
    );
    let assertion = get(&mut auth, ORIGIN, &options);
    let (s, v) = seed_post(&b, "/login/finish", json!({"credential": assertion})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "success");
    assert_eq!(v["username"], "alice");
    assert_eq!(v["amr"], json!(["hwk"]));
    // The session works: the passkeys list is the account's.
    assert_eq!(passkey_list(&b).await.len(), 1);
    // Single use: the pending login is gone with its cookie.
    let (s, v) = seed_post(&b, "/login/finish", json!({"credential": assertion})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "unknown_session");

    // Usernameless.
    let c = fresh(&app);
    let (s, options) = seed_post(&c, "/login/begin", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{options}");
    let assertion = discoverable_get(&mut auth, &options, &cred_id, Some(&handle));
    let (s, v) = seed_post(&c, "/login/finish", json!({"credential": assertion})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["username"], "alice");

    // Another browser cannot finish what this one began.
    let d = fresh(&app);
    let (_, options) = seed_post(&d, "/login/begin", json!({"username": "alice"})).await;
    let assertion = get(&mut auth, ORIGIN, &options);
    let e = fresh(&app);
    let (s, v) = seed_post(&e, "/login/finish", json!({"credential": assertion})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "unknown_session");

    // Malformed input is a 400 and the challenge still stands.
    let (s, v) = seed_post(&d, "/login/finish", json!({"credential": {"id": 5}})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "invalid_request");
    let (s, v) = seed_post(&d, "/login/finish", json!({"credential": assertion})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["username"], "alice");

    // A wrong answer: 401 with the reason.
    let f = fresh(&app);
    let (_, options) = seed_post(&f, "/login/begin", json!({"username": "alice"})).await;
    let mut other = options.clone();
    other["publicKey"]["challenge"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
    let assertion = get(&mut auth, ORIGIN, &other);
    let (s, v) = seed_post(&f, "/login/finish", json!({"credential": assertion})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error"], "invalid_credentials");
    assert_eq!(
        v["error_description"],
        "the passkey answered another challenge"
    );

    // Cross-site posts are refused before anything (login CSRF).
    let r = fresh(&app)
        .browser
        .post(format!("{}/login/begin", app.base))
        .header("sec-fetch-site", "cross-site")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// The devices page lists the passkeys with their flags and offers to add
/// and remove them.
#[tokio::test]
async fn the_devices_page_lists_passkeys() {
    let app = passkey_app().await;
    let _ = alice_with_passkey(&app).await;
    let html = app
        .browser
        .get(format!("{}/account/devices", app.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains(r#"<strong class="passkey-label">Phone</strong>"#),
        "{html}"
    );
    assert!(html.contains("last used never · device-bound"), "{html}");
    assert!(html.contains(r#"id="passkey-add""#), "{html}");
    assert!(html.contains(r#"<script src="/assets/passkeys.js" defer></script>"#));
    let js = app
        .browser
        .get(format!("{}/assets/passkeys.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let json: Value = app
        .browser
        .get(format!("{}/account/devices", app.base))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["passkeys"][0]["label"], "Phone");
}

/// The login form of an authorization request takes a passkey through the
/// same endpoints, bound to the login (its `req`) and the transaction's
/// CSRF token; a finished login answers where the browser goes next: the
/// client's redirect URI with the code (RFC 6749 §4.1.2).
#[tokio::test]
async fn the_login_form_of_an_authorization_request_takes_a_passkey() {
    let app = passkey_app().await;
    let (mut auth, cred_id, _) = alice_with_passkey(&app).await;
    let b = fresh(&app);
    let r = b.browser.get(b.authorize_url(&[])).send().await.unwrap();
    let form_url = location(&r);
    let html = b
        .browser
        .get(format!("{}{form_url}", b.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"id="passkey-login""#), "{html}");
    assert!(
        html.contains(r#"autocomplete="username webauthn""#),
        "{html}"
    );
    let req = hidden(&html, "req");
    let csrf = hidden(&html, "csrf_token");

    // The transaction's CSRF token is required.
    let (s, v) = seed_post(
        &b,
        "/login/begin",
        json!({"req": req, "csrf_token": "forged", "username": "alice"}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"], "csrf_failed");

    let begin = || async {
        let (s, options) = seed_post(
            &b,
            "/login/begin",
            json!({"req": req, "csrf_token": csrf, "username": "alice"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{options}");
        options
    };
    let finish = |credential: Value| {
        let b = &b;
        let body = json!({"req": req, "csrf_token": csrf, "credential": credential});
        async move { seed_post(b, "/login/finish", body).await }
    };
    let options = begin().await;
    assert_eq!(
        options["publicKey"]["allowCredentials"][0]["id"],
        cred_id.as_str()
    );
    // Malformed: 400, and the challenge stands.
    let (s, v) = finish(json!({"id": 5})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "invalid_request");
    // Another challenge's answer ends this authentication with the reason.
    let mut other = options.clone();
    other["publicKey"]["challenge"] = json!(URL_SAFE_NO_PAD.encode([9u8; 32]));
    let (s, v) = finish(get(&mut auth, ORIGIN, &other)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error"], "invalid_credentials");
    assert_eq!(
        v["error_description"],
        "The passkey answered another challenge."
    );
    // The login goes on: a new challenge, the right answer, the code.
    let options = begin().await;
    let (s, v) = finish(get(&mut auth, ORIGIN, &options)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let to = v["redirect"].as_str().unwrap();
    assert!(to.starts_with(REDIRECT), "{to}");
    let code = query(to)["code"].as_str().unwrap().to_string();
    let tokens: Value = app.redeem(&code).await.json().await.unwrap();
    let (_, id) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["amr"], json!(["hwk"]));
    assert_eq!(id["sub"], "alice");
    // Finished: the login takes no more steps.
    let (s, v) = finish(get(&mut auth, ORIGIN, &options)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "unknown_login");
}
