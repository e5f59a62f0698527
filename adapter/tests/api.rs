//! Provider-level tests over real sockets: the engine runs with the local
//! accounts connector (identity-provider mode), a SQLite file and a manual
//! clock; a reqwest client that never follows redirects plays the browser
//! and the relying party. Each test cites the RFC or OpenID Connect section
//! it covers. The last tests put the test kit's fake OpenID Provider behind
//! the adapter as its upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use adapter::config::CustomizerKind;
use adapter::Application;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::header::{LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

mod accounts;
mod customizer;
mod devices;
mod keys;
mod lifecycle;
mod logout;
mod mail;
mod mapping;
mod metrics;
mod oauth2_upstream;
mod ops;
mod outage;
mod outbound;
mod passkeys;
mod races;
mod ratelimit;
mod routing;
mod support;
use support::*;

/// OIDC Discovery §3, RFC 7517 §4: discovery names the endpoints, the JWKS
/// holds public parameters only.
#[tokio::test]
async fn discovery_and_jwks_publish_public_metadata_only() {
    let app = spawn_app().await;
    let d: Value = reqwest::get(format!("{}/.well-known/openid-configuration", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["issuer"], app.base.as_str());
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(d["subject_types_supported"], serde_json::json!(["public"]));
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    assert!(d["id_token_signing_alg_values_supported"]
        .as_array()
        .unwrap()
        .contains(&"RS256".into()));
    for k in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
    ] {
        assert!(d[k].as_str().unwrap().starts_with(&app.base), "{k}");
    }
    let jwks: Value = reqwest::get(d["jwks_uri"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert!(key["kid"].is_string());
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(key.get(private).is_none());
    }
    let live = reqwest::get(format!("{}/healthz/live", app.base))
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let ready = reqwest::get(format!("{}/healthz/ready", app.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

/// OIDC Core §3.1.3.3, RFC 9068 §2: the token response and its claims.
#[tokio::test]
async fn code_flow_issues_valid_tokens_and_userinfo() {
    let app = spawn_app().await;
    let code = app.code().await;
    let r = app.redeem(&code).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["pragma"], "no-cache");
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    let access = t["access_token"].as_str().unwrap();
    let (h, at) = jwt_parts(access);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["alg"], "RS256");
    assert!(h["kid"].is_string());
    assert_eq!(at["iss"], app.base.as_str());
    assert_eq!(at["aud"], "app");
    assert_eq!(at["sub"], "alice");
    assert!(at["jti"].is_string());
    let (h, id) = jwt_parts(t["id_token"].as_str().unwrap());
    assert_eq!(h["typ"], "JWT");
    assert_eq!(id["iss"], app.base.as_str());
    assert_eq!(id["aud"], "app");
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["name"], "Alice Example");
    assert_eq!(id["email"], "alice@example.org");
    // OIDC Core §3.1.3.6: base64url of the left half of SHA-256, computed here.
    let digest = Sha256::digest(access.as_bytes());
    assert_eq!(
        id["at_hash"],
        URL_SAFE_NO_PAD.encode(&digest[..16]).as_str()
    );
    assert!(id["exp"].as_i64().unwrap() > id["iat"].as_i64().unwrap());
    assert!(id["auth_time"].is_i64());

    // OIDC Core §5.3.1, RFC 6750 §2: GET with Bearer, POST with Bearer, POST with form body.
    let u: Value = app
        .rp
        .get(format!("{}/userinfo", app.base))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(u["sub"], "alice");
    assert_eq!(u["email"], "alice@example.org");
    assert!(u.get("iss").is_none() && u.get("jti").is_none());
    let u2 = app
        .rp
        .post(format!("{}/userinfo", app.base))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(u2.status(), StatusCode::OK);
    let u3 = app
        .rp
        .post(format!("{}/userinfo", app.base))
        .form(&[("access_token", access)])
        .send()
        .await
        .unwrap();
    assert_eq!(u3.status(), StatusCode::OK);
}

/// RFC 6750 §3.1: userinfo refuses a missing, foreign, tampered or expired token.
#[tokio::test]
async fn userinfo_rejects_bad_tokens() {
    let app = spawn_app().await;
    let code = app.code().await;
    let t: Value = app.redeem(&code).await.json().await.unwrap();
    let url = format!("{}/userinfo", app.base);
    // No token: 401 with a bare challenge.
    let r = app.rp.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
    // An ID token is not an access token.
    let r = app
        .rp
        .get(&url)
        .bearer_auth(t["id_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()[WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    // Tampered signature.
    let access = t["access_token"].as_str().unwrap();
    let tampered = format!("{}AAAA", &access[..access.len() - 4]);
    let r = app
        .rp
        .get(&url)
        .bearer_auth(&tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Expired (clock moved past exp + leeway).
    app.clock.advance(300 + 31);
    let r = app.rp.get(&url).bearer_auth(access).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// RFC 6749 §4.1.2.1: an unknown client or redirect_uri gets an error page,
/// never a redirect.
#[tokio::test]
async fn authorize_page_errors_never_redirect() {
    let app = spawn_app().await;
    for (k, v) in [
        ("client_id", "unknown"),
        ("redirect_uri", "http://127.0.0.1:1/evil"),
        ("redirect_uri", "http://127.0.0.1:1/cb/"),
        ("redirect_uri", ""),
    ] {
        let r = app
            .browser
            .get(app.authorize_url(&[(k, v)]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{k}={v}");
        assert!(
            r.headers().get(LOCATION).is_none(),
            "{k}={v}: must not redirect"
        );
        for (header, value) in [
            ("referrer-policy", "no-referrer"),
            ("x-content-type-options", "nosniff"),
            ("cache-control", "no-store"),
        ] {
            assert_eq!(r.headers()[header], value, "security header {header}");
        }
        assert!(r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'"));
        let body = r.text().await.unwrap();
        assert!(body.contains("<h1"), "an HTML error page");
    }
}

/// RFC 6749 §4.1.2.1, RFC 9207 §2: protocol errors go back to the client
/// with its state and the issuer.
#[tokio::test]
async fn authorize_protocol_errors_redirect_with_state_and_iss() {
    let app = spawn_app().await;
    for (k, v, code) in [
        ("response_type", "token", "unsupported_response_type"),
        ("code_challenge_method", "plain", "invalid_request"),
        ("code_challenge", "", "invalid_request"),
        ("scope", "profile", "invalid_scope"),
        ("prompt", "none", "login_required"),
    ] {
        let r = app
            .browser
            .get(app.authorize_url(&[(k, v)]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FOUND, "{k}={v}");
        let loc = location(&r);
        assert!(loc.starts_with(REDIRECT));
        let q = query(&loc);
        assert_eq!(q["error"], code, "{k}={v}");
        assert_eq!(q["state"], "st-123");
        assert_eq!(q["iss"], app.base.as_str());
        assert!(q.get("code").is_none());
    }
    // OIDC Core §3.1.2.1: form POST works like GET.
    let url = Url::parse(&app.authorize_url(&[])).unwrap();
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let r = app
        .browser
        .post(format!("{}/oauth2/authorize", app.base))
        .form(&pairs)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(location(&r).starts_with("/login/local?req="));
}

/// OIDC Core §3.1.2.1 (`prompt=login`): SSO, forced re-login, and a new
/// session id at each login (no session fixation).
#[tokio::test]
async fn sso_and_prompt_login_with_new_session_id() {
    let app = spawn_app().await;
    let first = app.login(&[]).await;
    assert!(query(&first).contains_key("code"));
    // Second request: the session answers without a login form.
    let r = app
        .browser
        .get(app.authorize_url(&[("state", "again")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let loc = location(&r);
    assert!(loc.starts_with(REDIRECT), "SSO skips the login: {loc}");
    assert_eq!(query(&loc)["state"], "again");
    // prompt=login forces the form again, and the new login gets a new session id.
    let r = app
        .browser
        .get(app.authorize_url(&[("prompt", "login")]))
        .send()
        .await
        .unwrap();
    assert!(location(&r).starts_with("/login/local"));

    let cookie_value = |r: &reqwest::Response| -> Option<String> {
        r.headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("AUTH_ADAPTER_SESSION="))
            .map(String::from)
    };
    // Log in twice with prompt=login, capture both Set-Cookie values.
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let r = app
            .browser
            .get(app.authorize_url(&[("prompt", "login")]))
            .send()
            .await
            .unwrap();
        let form_url = location(&r);
        let r = app.submit_login(&form_url).await;
        let c = cookie_value(&r).expect("session cookie set at login");
        assert!(c.contains("HttpOnly"), "{c}");
        assert!(c.contains("SameSite=Lax"), "{c}");
        assert!(c.contains("Path=/"), "{c}");
        assert!(!c.contains("Secure"), "http issuer: not Secure");
        sessions.push(c.split(';').next().unwrap().to_string());
    }
    assert_ne!(sessions[0], sessions[1], "session id changes at login");
    // The replaced session id no longer works, the new one does.
    let with_cookie = |cookie: String| {
        let url = app.authorize_url(&[]);
        async move {
            let bare = reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap();
            location(&bare.get(url).header("cookie", cookie).send().await.unwrap())
        }
    };
    assert!(with_cookie(sessions[0].clone())
        .await
        .starts_with("/login/local"));
    assert!(with_cookie(sessions[1].clone()).await.starts_with(REDIRECT));
}

/// RFC 6749 §10.12: the login form needs its CSRF token and a same-site
/// POST; a wrong password and an unknown user get the same answer.
#[tokio::test]
async fn login_form_rejects_bad_password_and_cross_site_posts() {
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
    let req = hidden(&html, "req");
    let csrf = hidden(&html, "csrf_token");
    let post = |user: &'static str, pw: &'static str, csrf: String| {
        app.browser
            .post(format!("{}/login/local", app.base))
            .form(&[
                ("req", req.clone()),
                ("csrf_token", csrf),
                ("username", user.into()),
                ("password", pw.into()),
            ])
    };
    let wrong = post("alice", "wrong", csrf.clone()).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let wrong_body = wrong.text().await.unwrap();
    assert!(wrong_body.contains("Invalid username or password."));
    let unknown = post("mallory", "wrong", csrf.clone()).send().await.unwrap();
    assert_eq!(
        unknown.status(),
        StatusCode::UNAUTHORIZED,
        "no user enumeration: same status"
    );
    assert!(
        unknown
            .text()
            .await
            .unwrap()
            .contains("Invalid username or password."),
        "no user enumeration: same message"
    );
    // Missing or wrong synchronizer token.
    let r = post("alice", "correct horse", "forged".into())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Cross-site POST with the right token is still refused (Fetch Metadata, Origin).
    let r = post("alice", "correct horse", csrf.clone())
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post("alice", "correct horse", csrf.clone())
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Another browser (no transaction cookie) cannot use the pending request.
    let stranger = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let r = stranger
        .get(format!("{}{form_url}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Same origin succeeds.
    let r = post("alice", "correct horse", csrf)
        .header("origin", app.base.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(query(&location(&r)).contains_key("code"));
}

/// RFC 6749 §2.3.1, §5.2: client authentication at the token endpoint.
#[tokio::test]
async fn client_authentication_basic_and_post() {
    let app = spawn_app().await;
    let code = app.code().await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    // Wrong secret over Basic: 401 invalid_client with a challenge.
    let r = app.token(&form, Some(("app", "wrong"))).await;
    assert!(r.headers()[WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert_eq!(
        error_of(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_client".into())
    );
    // Unknown client, and no authentication at all.
    let r = app.token(&form, Some(("nobody", "x"))).await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_client".into())
    );
    let r = app.token(&form, None).await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_client".into())
    );
    // Two methods at once.
    let mut both = form.to_vec();
    both.push(("client_secret", SECRET));
    let r = app.token(&both, Some(("app", SECRET))).await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    // client_secret_post works (and the secret's ':' '%' survive Basic encoding above).
    let mut post = form.to_vec();
    post.push(("client_id", "app"));
    post.push(("client_secret", SECRET));
    let r = app.token(&post, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Unsupported grant type, JSON body.
    let r = app
        .token(&[("grant_type", "password")], Some(("app", SECRET)))
        .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "unsupported_grant_type".into())
    );
    let r = app
        .rp
        .post(format!("{}/oauth2/token", app.base))
        .json(&serde_json::json!({"grant_type": "authorization_code"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
}

/// RFC 6749 §4.1.3, RFC 7636 §4.6: a code is single-use and bound to its
/// client, redirect URI and PKCE challenge, and expires.
#[tokio::test]
async fn codes_are_single_use_and_bound() {
    let app = spawn_app().await;
    let code = app.code().await;
    assert_eq!(app.redeem(&code).await.status(), StatusCode::OK);
    // Reuse (RFC 6749 §4.1.2).
    assert_eq!(
        error_of(app.redeem(&code).await).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );

    // Redeemed by another client (RFC 6749 §4.1.3).
    let code = app.code().await;
    let r = app
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ],
            Some(("other", "other-secret")),
        )
        .await;
    assert_eq!(error_of(r).await.1, "invalid_grant");

    // Another (registered) redirect URI (RFC 6749 §4.1.3).
    let code = app.code().await;
    let r = app
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1:1/other"),
                ("code_verifier", VERIFIER),
            ],
            Some(("app", SECRET)),
        )
        .await;
    assert_eq!(error_of(r).await.1, "invalid_grant");

    // Wrong, missing and malformed verifier (RFC 7636 §4.6; a malformed one is
    // a malformed request, RFC 6749 §5.2).
    let code = app.code().await;
    let wrong = "X".repeat(43);
    let r = app.redeem_with_verifier(&code, &wrong).await;
    assert_eq!(error_of(r).await.1, "invalid_grant");
    let code = app.code().await;
    let r = app
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
            ],
            Some(("app", SECRET)),
        )
        .await;
    assert_eq!(error_of(r).await.1, "invalid_grant");
    let code = app.code().await;
    let r = app
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", "short"),
            ],
            Some(("app", SECRET)),
        )
        .await;
    assert_eq!(error_of(r).await.1, "invalid_request");

    // Expiry: 60 s, with the injected clock.
    let code = app.code().await;
    app.clock.advance(61);
    assert_eq!(error_of(app.redeem(&code).await).await.1, "invalid_grant");
}

/// RFC 6749 §4.1.2: concurrent redemptions of one code have exactly one winner.
#[tokio::test]
async fn code_concurrent_redemption_has_exactly_one_winner() {
    let app = spawn_app().await;
    let code = app.code().await;
    let (a, b, c) = tokio::join!(app.redeem(&code), app.redeem(&code), app.redeem(&code));
    let ok = [a.status(), b.status(), c.status()]
        .iter()
        .filter(|s| **s == StatusCode::OK)
        .count();
    assert_eq!(ok, 1);
}

/// A pending login lives in the store: it survives a restart.
#[tokio::test]
async fn pending_login_survives_a_restart() {
    let mut app = spawn_app().await;
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    let form_url = location(&r);
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
    app.stop().await;
    // Same database, same port, new process state.
    let (_, tx, handle) = start(test_config(&app.db_url), app.clock.clone(), port).await;
    app.shutdown = Some(tx);
    app.handle = Some(handle);
    let r = app.submit_login(&form_url).await;
    let code = query(&location(&r))["code"].as_str().unwrap().to_string();
    assert_eq!(app.redeem(&code).await.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn bad_config_is_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/x.db", dir.path().display());
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let mut c = test_config(&db);
    c.server.issuer = Some("http://127.0.0.1:1/".into());
    let err = Application::build_with_listener(c, listener().await)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("server.issuer"), "{err}");
    let mut c = test_config(&db);
    c.clients[0].redirect_uris = vec!["http://app.example.org/cb".into()];
    let err = Application::build_with_listener(c, listener().await)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("clients[app].redirect_uris"), "{err}");
    let mut c = test_config(&db);
    c.tokens.code_ttl_seconds = 600;
    let err = Application::build_with_listener(c, listener().await)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokens.code_ttl_seconds"), "{err}");
    let mut c = test_config(&db);
    c.claims.customizer = CustomizerKind::Mapped;
    c.claims.rules[0].claim = "sub".into();
    let err = Application::build_with_listener(c, listener().await)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("claims.rules[0].claim: `sub` is a protocol claim"),
        "{err}"
    );
}

/// RFC 6749 §4.1.2: a replayed code revokes the access token it issued.
#[tokio::test]
async fn code_replay_revokes_the_issued_access_token() {
    let app = spawn_app().await;
    let code = app.code().await;
    let t: Value = app.redeem(&code).await.json().await.unwrap();
    let access = t["access_token"].as_str().unwrap();
    let url = format!("{}/userinfo", app.base);
    assert_eq!(
        app.rp
            .get(&url)
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(error_of(app.redeem(&code).await).await.1, "invalid_grant");
    let r = app.rp.get(&url).bearer_auth(access).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()[WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .contains("revoked"));
    // Another login's token is unaffected.
    let other: Value = app.redeem(&app.code().await).await.json().await.unwrap();
    let r = app
        .rp
        .get(&url)
        .bearer_auth(other["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// RFC 6265 §4.1.2.5: behind an https issuer every cookie the adapter sets
/// during a login (the transaction, session and device cookies) is
/// `Secure`, `HttpOnly` and `__Host-` prefixed; the browser-facing flow is
/// otherwise unchanged.
#[tokio::test]
async fn every_cookie_is_secure_behind_an_https_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/x.db", dir.path().display());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let mut c = test_config(&db);
    // What a TLS-terminating proxy in front of the adapter looks like.
    c.server.issuer = Some("https://login.example.org".into());
    let app = Application::build_with_listener(c, listener).await.unwrap();
    tokio::spawn(app.run_until(std::future::pending()));
    // No cookie store: a store would not send `Secure` cookies over http,
    // so the test carries them by hand and sees every Set-Cookie.
    let browser = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let mut set_cookies: Vec<String> = Vec::new();
    let collect = |set_cookies: &mut Vec<String>, r: &reqwest::Response| {
        for v in r.headers().get_all(SET_COOKIE) {
            set_cookies.push(v.to_str().unwrap().to_string());
        }
    };

    let mut url = Url::parse(&format!("{base}/oauth2/authorize")).unwrap();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()));
    url.query_pairs_mut().extend_pairs([
        ("client_id", "app"),
        ("redirect_uri", REDIRECT),
        ("response_type", "code"),
        ("scope", "openid"),
        ("state", "st-secure"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);
    let r = browser.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    collect(&mut set_cookies, &r);
    let form_url = location(&r);
    assert!(form_url.starts_with("/login/local?req="), "{form_url}");
    let tx = set_cookies
        .iter()
        .find(|c| c.starts_with("__Host-AUTH_ADAPTER_TX="))
        .expect("transaction cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let r = browser
        .get(format!("{base}{form_url}"))
        .header("cookie", &tx)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    collect(&mut set_cookies, &r);
    let html = r.text().await.unwrap();
    let r = browser
        .post(format!("{base}/login/local"))
        .header("cookie", &tx)
        .form(&[
            ("req", hidden(&html, "req")),
            ("csrf_token", hidden(&html, "csrf_token")),
            ("username", "alice".into()),
            ("password", "correct horse".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    collect(&mut set_cookies, &r);
    assert!(query(&location(&r)).contains_key("code"));

    let names: Vec<&str> = set_cookies
        .iter()
        .map(|c| c.split('=').next().unwrap())
        .collect();
    // RFC 6265bis §4.1.3.2: host-only names, so no sibling host can set them.
    for expected in [
        "__Host-AUTH_ADAPTER_TX",
        "__Host-AUTH_ADAPTER_SESSION",
        "__Host-AUTH_ADAPTER_SESSION_DEVICE",
    ] {
        assert!(names.contains(&expected), "{expected} set: {set_cookies:?}");
    }
    for cookie in &set_cookies {
        let attributes: Vec<String> = cookie
            .split(';')
            .skip(1)
            .map(|a| a.trim().to_ascii_lowercase())
            .collect();
        assert!(
            attributes.iter().any(|a| a == "secure"),
            "not Secure: {cookie}"
        );
        assert!(
            attributes.iter().any(|a| a == "httponly"),
            "not HttpOnly: {cookie}"
        );
        assert!(
            attributes.iter().any(|a| a == "path=/"),
            "not Path=/: {cookie}"
        );
        assert!(
            !attributes.iter().any(|a| a.starts_with("domain")),
            "a Domain: {cookie}"
        );
    }
}

/// The binary refuses an unknown key naming the file and the key, and
/// `config check` prints the effective configuration without secrets.
#[test]
fn binary_config_check_redacts_and_names_bad_keys() {
    let out = config_check(
        "adapter.toml",
        "[[clients]]\nid = \"c\"\nsecret = \"very-secret-value\"\nredirect_uris = [\"http://127.0.0.1/cb\"]\n",
        &[("AUTH_ADAPTER__SERVER__ISSUER", "https://login.example.org")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("very-secret-value"), "{stdout}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(
        stdout.contains("https://login.example.org"),
        "env overrides the file: {stdout}"
    );

    let out = config_check(
        "bad.toml",
        "[server]\nissuer = \"http://127.0.0.1:9000\"\nlisten_port = 1\n",
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listen_port") && stderr.contains("bad.toml"),
        "{stderr}"
    );
}

/// The session's lifetime is enforced with the injected clock: after
/// `session.ttl_seconds` a new authorization request needs a login again.
#[tokio::test]
async fn session_expires_after_its_lifetime() {
    let app = spawn_app().await;
    assert!(query(&app.login(&[]).await).contains_key("code"));
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    assert!(
        location(&r).starts_with(REDIRECT),
        "SSO while the session lives"
    );
    app.clock.advance(8 * 3600 + 1);
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    assert!(
        location(&r).starts_with("/login/local"),
        "expired session: login again"
    );
}

/// With several connectors the adapter shows a chooser; each choice starts
/// that connector's login, and an unreachable upstream answers
/// `temporarily_unavailable` to the client with its state (RFC 6749 §4.1.2.1).
#[tokio::test]
async fn chooser_lists_connectors_and_starts_the_chosen_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/x.db", dir.path().display());
    let mut config = test_config(&db);
    // An upstream on a port where nothing listens.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    config.upstreams = vec![adapter::config::UpstreamConfig {
        name: Some("Corporate SSO".into()),
        client_secret: Some("x".into()),
        scopes: vec!["openid".into()],
        ..adapter::config::UpstreamConfig::oidc(
            "corp-sso",
            &format!("http://127.0.0.1:{closed_port}"),
            "adapter",
        )
    }];
    let clock = std::sync::Arc::new(ManualClock::new());
    let (port, _stop, _handle) = start(config, clock, 0).await;
    let base = format!("http://127.0.0.1:{port}");
    let app = TestApp::connect(&base);
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("Corporate SSO") && html.contains("id=\"connector-local\""),
        "{html}"
    );
    let link = |id: &str| {
        let marker = format!("id=\"connector-{id}\" href=\"");
        let start = html.find(&marker).unwrap() + marker.len();
        html[start..]
            .split('"')
            .next()
            .unwrap()
            .replace("&amp;", "&")
    };
    let r = app
        .browser
        .get(format!("{base}{}", link("local")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(location(&r).starts_with("/login/local?req="));
    let r = app
        .browser
        .get(format!("{base}{}", link("corp-sso")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let q = query(&location(&r));
    assert_eq!(q["error"], "temporarily_unavailable");
    assert_eq!(q["state"], "st-123");
    // An unknown connector id is a page, not a redirect.
    let r = app
        .browser
        .get(format!("{base}/login/start/nope?req=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// RFC 6749 §5.2, §4.1.2.1: malformed input gets a 4xx answer, never a 5xx or a panic.
#[tokio::test]
async fn malformed_input_never_causes_a_server_error() {
    let app = spawn_app().await;
    let b = &app.base;
    let long = "x".repeat(5000);
    let gets = [
        format!("{b}/oauth2/authorize"),
        format!("{b}/oauth2/authorize?%zz=%%&client_id=%ff%fe"),
        format!("{b}/oauth2/authorize?client_id=app&redirect_uri={REDIRECT}&response_type=code&scope=openid&state={long}"),
        format!("{b}/oauth2/authorize?client_id=app&client_id=app&redirect_uri={REDIRECT}"),
        format!("{b}/login/local"),
        format!("{b}/login/local?req="),
        format!("{b}/login/local?req=%00%01"),
        format!("{b}/login/oauth2/code/local?state=x"),
        format!("{b}/login/oauth2/code/unknown?state=x&code=y"),
        format!("{b}/login/oauth2/code/x"),
        format!("{b}/login/start/local"),
        format!("{b}/userinfo?access_token=abc"),
        format!("{b}/nothing/here"),
    ];
    for url in &gets {
        let r = app.browser.get(url).send().await.unwrap();
        assert!(
            r.status().is_client_error() || r.status().is_redirection(),
            "GET {url}: {}",
            r.status()
        );
    }
    let posts: Vec<(String, &str, Vec<u8>)> = vec![
        (
            format!("{b}/oauth2/token"),
            "application/x-www-form-urlencoded",
            b"grant_type=authorization_code&code=%ff%fe".to_vec(),
        ),
        (
            format!("{b}/oauth2/token"),
            "application/x-www-form-urlencoded",
            vec![0xff, 0xfe, 0x00],
        ),
        (format!("{b}/oauth2/token"), "text/plain", b"hello".to_vec()),
        (
            format!("{b}/oauth2/token"),
            "application/x-www-form-urlencoded",
            vec![b'a'; 100 * 1024],
        ),
        (
            format!("{b}/login/local"),
            "application/x-www-form-urlencoded",
            b"req=1".to_vec(),
        ),
        (
            format!("{b}/login/local"),
            "application/json",
            b"{}".to_vec(),
        ),
        (
            format!("{b}/login/nope"),
            "application/x-www-form-urlencoded",
            b"a=b".to_vec(),
        ),
        (
            format!("{b}/userinfo"),
            "application/x-www-form-urlencoded",
            b"access_token=a.b.c".to_vec(),
        ),
        (
            format!("{b}/oauth2/authorize"),
            "application/x-www-form-urlencoded",
            vec![0xff; 64],
        ),
    ];
    for (url, content_type, body) in posts {
        let r = app
            .rp
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_client_error() || r.status().is_redirection(),
            "POST {url} ({content_type}): {}",
            r.status()
        );
    }
    // Wrong methods.
    let r = app
        .rp
        .get(format!("{b}/oauth2/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = app
        .rp
        .delete(format!("{b}/oauth2/authorize"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

// ------------------------------------------------ through an upstream ----

/// The adapter with the test kit's fake provider as its only upstream.
async fn spawn_with_fake_upstream(tamper: Tamper) -> (FakeOp, TestApp) {
    let fake = start_fake_upstream(tamper).await;
    let app = spawn_app_with_upstream(&fake.issuer).await;
    (fake, app)
}

async fn login_through_fake(app: &TestApp, fake: &FakeOp) -> String {
    app.login_through_upstream(&fake.authorization_endpoint())
        .await
}

/// OIDC Core §3.1.2.1, §3.1.3.1, RFC 7636 §4.3: a login through an OIDC
/// upstream. The adapter sends its own state, nonce and PKCE S256 upstream,
/// authenticates with client_secret_basic (form-urlencoded, RFC 6749
/// §2.3.1), and issues its own code and tokens about the upstream's user.
#[tokio::test]
async fn login_through_an_oidc_upstream_issues_a_code_and_tokens() {
    let (fake, app) = spawn_with_fake_upstream(Tamper::None).await;
    let to_client = login_through_fake(&app, &fake).await;
    assert!(to_client.starts_with(REDIRECT), "{to_client}");
    let q = query(&to_client);
    assert_eq!(q["state"], "st-123");
    assert_eq!(q["iss"], app.base.as_str());
    let code = q["code"].as_str().expect("a code").to_string();

    let seen = fake.authorize_requests();
    assert_eq!(seen.len(), 1);
    let a = &seen[0];
    assert_eq!(a.get("client_id"), Some(UPSTREAM_CLIENT_ID));
    assert_eq!(a.get("response_type"), Some("code"));
    assert_eq!(a.get("code_challenge_method"), Some("S256"));
    assert_eq!(a.get("code_challenge").map(str::len), Some(43));
    assert!(a
        .get("state")
        .is_some_and(|s| s != "st-123" && s.len() >= 22));
    assert!(a
        .get("nonce")
        .is_some_and(|n| n != "n-456" && n.len() >= 22));
    let tokens = fake.token_requests();
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        tokens[0].basic,
        Some((UPSTREAM_CLIENT_ID.to_string(), UPSTREAM_SECRET.to_string()))
    );
    assert_eq!(fake.pkce_failures(), 0);

    let r = app.redeem(&code).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    let (_, id) = jwt_parts(t["id_token"].as_str().unwrap());
    assert_eq!(id["iss"], app.base.as_str());
    assert_eq!(id["aud"], "app");
    assert_eq!(id["sub"], "fakeuser");
    assert_eq!(id["email"], "fakeuser@example.org");
    assert_eq!(id["nonce"], "n-456");
}

/// Runs a login whose upstream tokens are forged by `tamper` and checks the
/// client gets exactly `access_denied` (RFC 6749 §4.1.2.1) with its state and
/// the adapter's iss, and no code; the upstream code was redeemed once.
async fn assert_upstream_login_denied(tamper: Tamper) {
    let (fake, app) = spawn_with_fake_upstream(tamper).await;
    let to_client = login_through_fake(&app, &fake).await;
    assert!(to_client.starts_with(REDIRECT), "{tamper:?}: {to_client}");
    let q = query(&to_client);
    assert_eq!(q["error"], "access_denied", "{tamper:?}: {to_client}");
    assert_eq!(q["state"], "st-123", "{tamper:?}");
    assert_eq!(q["iss"], app.base.as_str(), "{tamper:?}");
    assert!(q.get("code").is_none(), "{tamper:?}: {to_client}");
    assert_eq!(fake.token_hits(), 1, "{tamper:?}");
    // No adapter session was created: the next authorization request goes
    // to the upstream again.
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    assert!(
        location(&r).starts_with(&fake.authorization_endpoint()),
        "{tamper:?}: a session was created"
    );
}

/// OIDC Core §3.1.3.8: an upstream ID token whose `at_hash` is not the
/// access token's fails the login.
#[tokio::test]
async fn upstream_id_token_with_wrong_at_hash_is_access_denied() {
    assert_upstream_login_denied(Tamper::WrongAtHash).await;
}

/// OIDC Core §3.1.3.7 step 6: an upstream ID token with a forged signature
/// under the published `kid` fails the login.
#[tokio::test]
async fn upstream_id_token_with_bad_signature_is_access_denied() {
    assert_upstream_login_denied(Tamper::BadSignature).await;
}

/// OIDC Core §10.1, RFC 8725 §3.1: an upstream ID token "signed" with HS256
/// keyed by the adapter's own client secret fails the login.
#[tokio::test]
async fn upstream_id_token_hmac_with_client_secret_is_access_denied() {
    assert_upstream_login_denied(Tamper::IdHs256WithClientSecret).await;
}

/// RFC 6749 §4.1.2: the code is consumed before it is checked, so a request
/// that fails a check (here a wrong PKCE verifier, RFC 7636 §4.6) burns it:
/// the right verifier afterwards gets nothing either.
#[tokio::test]
async fn a_failed_check_burns_the_code() {
    let app = spawn_app().await;
    let code = app.code().await;
    let wrong = "X".repeat(43);
    let r = app.redeem_with_verifier(&code, &wrong).await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    assert_eq!(
        error_of(app.redeem(&code).await).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
}
