//! The claim mapping end to end: the adapter with the fake upstream on
//! real sockets, the `allow_groups` gate at login and at single sign-on
//! (a page of the adapter whose link carries RFC 6749 §4.1.2.1
//! `access_denied` with the client's `state`), the size
//! budget failing a login with `server_error`, the mapped claims in the
//! tokens; then golden files of `adapter mapping preview`
//! (`UPDATE_GOLDEN=1` rewrites them).

use std::path::{Path, PathBuf};
use std::process::Command;

use adapter::config::{ClaimRule, CustomizerKind, TokenName};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

/// The adapter in broker mode behind the fake upstream (user `fakeuser`
/// in the group `fakers`), with `tweak` applied last.
async fn broker(tweak: impl FnOnce(&mut adapter::Config) + Send + 'static) -> (FakeOp, TestApp) {
    let fake = start_fake_upstream(Tamper::None).await;
    let app = spawn_app_with_upstream_and(&fake.issuer, move |c| {
        c.claims.customizer = CustomizerKind::Mapped;
        tweak(c);
    })
    .await;
    (fake, app)
}

/// RFC 6749 §4.1.2.1: the error goes to the client's redirect URI with
/// its state (and RFC 9207 §2 `iss`).
fn assert_error_redirect(app: &TestApp, loc: &str, error: &str, description: &str) {
    let q = app.assert_error_at_client(loc, error);
    assert_eq!(q["error_description"], description);
}

/// The gate's refusal is a page of the adapter (403) naming the client,
/// whose "Back to" link carries the client's `access_denied` redirect.
/// Returns that link.
async fn assert_gate_page(app: &TestApp, r: reqwest::Response, client_name: &str) -> String {
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get(reqwest::header::LOCATION).is_none());
    let html = r.text().await.unwrap();
    assert_eq!(
        testkit::rp::element_text(&html, "not-allowed-title").as_deref(),
        Some(format!("You are not allowed to use {client_name}").as_str()),
        "{html}"
    );
    let link = testkit::rp::find_tag(&html, "a", "id", "back-to-client")
        .unwrap_or_else(|| panic!("no #back-to-client link: {html}"));
    assert_eq!(
        testkit::rp::element_text(&html, "back-to-client").as_deref(),
        Some(format!("Back to {client_name}").as_str())
    );
    let href = testkit::rp::attr(link, "href").unwrap();
    assert_error_redirect(
        app,
        &href,
        "access_denied",
        "the user is not in a group allowed to use this application",
    );
    href
}

#[tokio::test]
async fn a_user_in_none_of_the_allowed_groups_is_denied_at_the_client() {
    let (fake, app) = broker(|c| c.clients[0].claims.allow_groups = vec!["admins".into()]).await;
    let r = app
        .callback_through_upstream(&fake.authorization_endpoint(), UPSTREAM_ID, &[])
        .await;
    let href = assert_gate_page(&app, r, "Test App").await;
    assert_eq!(
        href,
        format!(
            "{REDIRECT}?error=access_denied&error_description=the+user+is+not+in+a+group+allowed+to+use+this+application&state=st-123&iss={}",
            url_encoded(&app.base)
        )
    );
    // No session was started: the next request logs in again.
    let r = app
        .browser
        .get(app.authorize_url(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(location(&r).starts_with(&fake.authorization_endpoint()));
}

#[tokio::test]
async fn single_sign_on_to_a_gated_client_is_denied_too() {
    // `app` lets everyone in; `other` only admins.
    let (fake, app) = broker(|c| c.clients[1].claims.allow_groups = vec!["admins".into()]).await;
    let loc = app
        .login_through_upstream(&fake.authorization_endpoint())
        .await;
    assert!(query(&loc).contains_key("code"), "{loc}");
    let r = app
        .browser
        .get(app.authorize_url(&[("client_id", "other"), ("scope", "openid")]))
        .send()
        .await
        .unwrap();
    // `other` has no display name: the page names its id.
    assert_gate_page(&app, r, "other").await;
    // OIDC Core §3.1.2.6: with prompt=none no page may show; the error
    // goes to the client at once.
    let r = app
        .browser
        .get(app.authorize_url(&[
            ("client_id", "other"),
            ("scope", "openid"),
            ("prompt", "none"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_error_redirect(
        &app,
        &location(&r),
        "access_denied",
        "the user is not in a group allowed to use this application",
    );
}

fn url_encoded(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn an_allowed_user_gets_the_mapped_claims() {
    let (fake, app) = broker(|c| {
        c.claims.allow_groups = vec!["fakers".into()];
        c.clients[0].claims.rules = vec![ClaimRule {
            claim: "app_groups".into(),
            expr: "upstream.groups.map(g, 'app:' + g)".into(),
            tokens: vec![TokenName::Access],
            when: None,
        }];
    })
    .await;
    let loc = app
        .login_through_upstream(&fake.authorization_endpoint())
        .await;
    let code = query(&loc)["code"].as_str().unwrap().to_string();
    let r = app.redeem(&code).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let (_, access) = jwt_parts(body["access_token"].as_str().unwrap());
    let (_, id) = jwt_parts(body["id_token"].as_str().unwrap());
    for claims in [&access, &id] {
        assert_eq!(claims["fake_op_sub"], "fakeuser");
        assert_eq!(claims["authorities"], json!(["ROLE_USER", "ROLE_FAKERS"]));
        assert_eq!(claims["preferred_username"], "fakeuser");
        assert_eq!(claims["name"], "Fake User");
        assert_eq!(claims["email_verified"], json!(true));
    }
    assert_eq!(access["app_groups"], json!(["app:fakers"]));
    assert!(id.get("app_groups").is_none());
}

#[tokio::test]
async fn a_token_over_its_budget_fails_the_login_with_server_error() {
    // {"authorities":["ROLE_USER","ROLE_FAKERS"],"email":"fakeuser@example.org",
    //  "email_verified":true,"fake_op_sub":"fakeuser","name":"Fake User",
    //  "preferred_username":"fakeuser"} is 172 bytes.
    let (fake, app) = broker(|c| c.claims.max_bytes.id = 64).await;
    let loc = app
        .login_through_upstream(&fake.authorization_endpoint())
        .await;
    assert_error_redirect(
        &app,
        &loc,
        "server_error",
        "the claims of the id token take 172 bytes, over the budget of 64 (claims.max_bytes.id)",
    );
}

// ---- golden files of `adapter mapping preview` ----

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mapping/golden")
}

/// Runs `adapter --config <config> mapping preview <args>` in the golden
/// directory.
fn preview(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_adapter"))
        .env_clear()
        .arg("--config")
        .arg(config)
        .args(["mapping", "preview"])
        .args(args)
        .current_dir(golden_dir())
        .output()
        .unwrap()
}

/// [`preview`], asserting its exit code (README "Claim mapping": 0 clean,
/// 1 rule errors or a token over its budget), and compares its standard
/// output with `golden/<name>.txt`.
fn golden(name: &str, config: &Path, args: &[&str], code: i32) {
    let out = preview(config, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let actual = String::from_utf8(out.stdout).unwrap();
    let path = golden_dir().join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "{name}: run with UPDATE_GOLDEN=1 to accept the new output"
    );
}

fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/adapter.toml")
}

/// `mapping preview` of the shipped demo config for `test-app` behind
/// `test-auth-server`, with upstream claims from `claims` and `extra`
/// arguments, against the golden file `name` (exit code 0).
fn golden_demo(name: &str, claims: &str, extra: &[&str]) {
    let mut args = vec![
        "--upstream",
        "test-auth-server",
        "--client",
        "test-app",
        "--claims",
        claims,
    ];
    args.extend_from_slice(extra);
    golden(name, &demo_config(), &args, 0);
}

/// The shipped demo mapping: the seed's token for the demo user.
#[test]
fn golden_demo_mapping_for_the_demo_user() {
    golden_demo("demo-testuser", "testuser.json", &[]);
}

#[test]
fn golden_demo_mapping_without_the_email_scope() {
    golden_demo(
        "demo-testuser-no-email",
        "testuser.json",
        &["--scope", "openid profile"],
    );
}

/// The upstream is itself an adapter: the shipped mapping keeps the
/// inner broker's `authorities` (a chain of brokers).
#[test]
fn golden_demo_mapping_keeps_an_inner_adapters_authorities() {
    golden_demo("demo-inner-adapter", "inner-adapter.json", &[]);
}

/// Every operation, per-client rules, the gate, a rule error and a budget
/// warning, from `golden/examples.toml`.
#[test]
fn golden_examples_mapping() {
    let config = golden_dir().join("examples.toml");
    for (name, client) in [("examples-portal", "portal"), ("examples-admin", "admin")] {
        golden(
            name,
            &config,
            &[
                "--upstream",
                "corp",
                "--client",
                client,
                "--claims",
                "jane.json",
            ],
            1,
        );
    }
}

/// Exit code 2: the preview cannot run (README "Claim mapping").
#[test]
fn preview_refuses_an_unknown_client() {
    let out = preview(
        &demo_config(),
        &["--upstream", "test-auth-server", "--client", "nope"],
    );
    // clap's own usage error: `--claims` is missing.
    assert_eq!(out.status.code(), Some(2));
    let out = preview(
        &demo_config(),
        &[
            "--upstream",
            "test-auth-server",
            "--client",
            "nope",
            "--claims",
            "testuser.json",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error: no client `nope` in the configuration"
    );
    let out = preview(
        &demo_config(),
        &[
            "--upstream",
            "test-auth-server",
            "--client",
            "test-app",
            "--claims",
            "missing.json",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}

/// Exit code 1 for a rule error alone and for a budget overrun alone (the
/// preview is printed all the same); 2 for a configuration that does not
/// load.
#[test]
fn preview_exits_with_1_on_a_rule_error_or_a_budget_overrun() {
    let demo = std::fs::read_to_string(demo_config()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--upstream",
        "test-auth-server",
        "--client",
        "test-app",
        "--claims",
        "testuser.json",
    ];
    let over_budget = demo.replace("id = 4096,", "id = 64,");
    assert_ne!(over_budget, demo);
    let rule_error =
        format!("{demo}\n[[claims.rules]]\nclaim = \"broken\"\nexpr = \"upstream.name + 1\"\n");
    let bad_config = format!("{demo}\n[claims.nope]\n");
    for (name, text, code, stdout) in [
        (
            "over-budget",
            over_budget,
            1,
            "WARNING: over the budget (claims.max_bytes.id)",
        ),
        ("rule-error", rule_error, 1, "claims.rules[6] (broken)"),
        ("bad-config", bad_config, 2, ""),
    ] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = preview(&path, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {err}");
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.contains(stdout), "{name}: {printed}");
        if code == 1 {
            assert_eq!(
                err.trim(),
                "Error: the mapping has rule errors or a token over its budget (see above)"
            );
        }
    }
}

/// A rule that does not compile stops the command (and start-up) with the
/// rule's key and the position.
#[test]
fn a_bad_rule_stops_the_command_naming_rule_and_position() {
    let out = config_check(
        "adapter.toml",
        "[[claims.rules]]\nclaim = \"authorities\"\nexpr = \"['ROLE_USER'] +\"\n",
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "Error: configuration: claims.rules[0].expr: rule for `authorities`: syntax error at \
         line 1, column 16: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', \
         '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, \
         IDENTIFIER}"
    );
}
