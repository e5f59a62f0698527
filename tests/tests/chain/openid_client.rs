//! A certified relying-party library against the adapter: openid-client v6
//! (Node, OpenID Certified; `tests/rp-conformance/rp.mjs`, installed by
//! `scripts/install-test-deps.sh` with `npm ci`). It runs discovery
//! (OIDC Discovery 1.0 §4), the `client_credentials` grant (RFC 6749 §4.4),
//! introspection (RFC 7662 §2), revocation (RFC 7009 §2) and introspection
//! again, then the `refresh_token` grant (RFC 6749 §6; openid-client
//! validates the new ID token, OIDC Core §12.2) and the end-session URL
//! (OpenID RP-Initiated Logout 1.0 §2), and prints what it saw as JSON.
//!
//! The same script first runs against the test kit's fake provider, which
//! has every one of those endpoints: that test keeps the script honest while
//! the adapter's side is compared with it.

use std::path::PathBuf;
use std::time::Duration;

use e2e::chain::{AuthRequest, RpClient, TestChain, USERNAME};
use e2e::fake_upstream::{FakeUpstream as FakeOp, Options as FakeOpOptions, Tamper};
use e2e::rp::{self, random_string, Agent, ClientAuth};
use serde_json::{json, Value};
use url::Url;

const CLIENT_ID: &str = "rp-conformance";
/// Registered, never visited: the agent stops at the redirect.
const REDIRECT_URI: &str = "http://127.0.0.1:9/rp-conformance/callback";
const POST_LOGOUT_REDIRECT_URI: &str = "http://127.0.0.1:9/rp-conformance/logged-out";

fn rp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rp-conformance")
}

/// Runs `rp.mjs` with `env`; returns its JSON output, or panics with what
/// it printed when it failed.
async fn run_openid_client(env: &[(&str, &str)]) -> Value {
    let dir = rp_dir();
    assert!(
        dir.join("node_modules/openid-client").is_dir(),
        "openid-client is not installed in {}: run scripts/install-test-deps.sh \
         (npm ci there)",
        dir.display()
    );
    let mut command = tokio::process::Command::new("node");
    command.arg(dir.join("rp.mjs")).current_dir(&dir);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("openid-client finished within 60 s")
        .expect("node runs (Node.js 20 at /usr/bin/node)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let parsed: Value = serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("openid-client printed no JSON:\n{stdout}\n{stderr}"));
    assert!(
        output.status.success(),
        "openid-client failed at step {}: {}\n(stderr: {stderr})",
        parsed["error"]["step"],
        parsed["error"]
    );
    parsed
}

/// The script against the fake provider: every step succeeds and reports
/// exactly what the fake serves (its ID tokens carry `aud` as an array).
#[tokio::test]
async fn openid_client_script_runs_against_the_fake_provider() {
    let secret = random_string(24);
    let mut options = FakeOpOptions::new(CLIENT_ID);
    options.client_secret = Some(secret.clone());
    options.refresh_tokens = true;
    options.introspection = true;
    options.revocation = true;
    options.end_session = true;
    options.client_credentials = true;
    let op = FakeOp::start_with(options).await.unwrap();
    let issuer = op.issuer.clone();

    // A refresh token from a code grant.
    let authorize = Url::parse_with_params(
        &op.authorization_endpoint(),
        &[("client_id", CLIENT_ID), ("redirect_uri", REDIRECT_URI)],
    )
    .unwrap();
    let code = op.issue_code(&authorize, Tamper::None);
    let tokens = rp::token_request(
        &reqwest::Client::new(),
        &format!("{issuer}/token"),
        &ClientAuth::basic(CLIENT_ID, &secret),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
        ],
    )
    .await
    .unwrap();
    let refresh_token = tokens.str("refresh_token").unwrap().to_owned();

    let out = run_openid_client(&[
        ("ISSUER", issuer.as_str()),
        ("CLIENT_ID", CLIENT_ID),
        ("CLIENT_SECRET", secret.as_str()),
        ("REFRESH_TOKEN", refresh_token.as_str()),
        ("POST_LOGOUT_REDIRECT_URI", POST_LOGOUT_REDIRECT_URI),
    ])
    .await;
    assert_eq!(
        out,
        json!({
            "discovery": {
                "issuer": issuer,
                "token_endpoint": format!("{issuer}/token"),
                "introspection_endpoint": format!("{issuer}/introspect"),
                "revocation_endpoint": format!("{issuer}/revoke"),
                "end_session_endpoint": format!("{issuer}/logout"),
            },
            "client_credentials": {
                "token_type": "bearer",
                "expires_in": 300,
                "scope": null,
                "refresh_token_issued": false,
                "id_token_issued": false,
                "access_token_typ": "at+jwt",
                "access_token_client_id": CLIENT_ID,
                "access_token_sub": CLIENT_ID,
            },
            "introspection": {
                "active": true,
                "client_id": CLIENT_ID,
                "token_type": "Bearer",
                "sub": CLIENT_ID,
                "iss": issuer,
                "exp_matches_token": true,
            },
            "revocation": { "ok": true },
            "introspection_after_revocation": { "active": false, "fields": ["active"] },
            "refresh": {
                "token_type": "bearer",
                "access_token_typ": "at+jwt",
                "id_token_issued": true,
                "refresh_token_rotated": true,
                "id_token_claims": { "iss": issuer, "sub": "fakeuser", "aud": [CLIENT_ID] },
            },
            "end_session": {
                "endpoint": format!("{issuer}/logout"),
                "id_token_hint_is_the_refreshed_id_token": true,
                "post_logout_redirect_uri": POST_LOGOUT_REDIRECT_URI,
                "state": "rp-conformance-state",
                "client_id": CLIENT_ID,
            },
        })
    );
    // What the fake saw: the revocation, and the refresh with the given token.
    assert_eq!(op.revocation_requests().len(), 1);
    assert_eq!(
        op.token_requests()
            .last()
            .unwrap()
            .params
            .get("refresh_token"),
        Some(&refresh_token)
    );
}

/// RFC 6749 §4.4, RFC 7662 §2, RFC 7009 §2, RFC 6749 §6, OIDC Core §12.2,
/// OpenID RP-Initiated Logout 1.0 §2: openid-client's whole token lifecycle
/// against the adapter, for a confidential client allowed every grant.
#[tokio::test]
async fn openid_client_runs_the_token_lifecycle_against_the_adapter() {
    let secret = random_string(24);
    let client_secret = secret.clone();
    let chain = TestChain::builder()
        .test_app(false)
        .tweak_adapter(move |config| {
            let mut client = testkit::clients::client(
                CLIENT_ID,
                Some("openid-client conformance"),
                &client_secret,
                &[REDIRECT_URI],
                &["openid", "profile", "email", "offline_access"],
            )
            .expect("a client config");
            client.grant_types = ["authorization_code", "refresh_token", "client_credentials"]
                .map(String::from)
                .to_vec();
            client.post_logout_redirect_uris = vec![POST_LOGOUT_REDIRECT_URI.to_owned()];
            config.clients.push(client);
        })
        .start()
        .await
        .unwrap();
    let issuer = chain.adapter_issuer.clone();

    // A user login for the refresh token (authorization code + PKCE).
    let agent = Agent::new().unwrap();
    let client = RpClient {
        id: CLIENT_ID.into(),
        secret: secret.clone(),
        redirect_uri: REDIRECT_URI.into(),
    };
    let mut request = AuthRequest::new(&client);
    request.scope = "openid profile email offline_access".into();
    let grant = chain.obtain_code(&agent, &request).await.unwrap();
    let tokens = chain.redeem(&agent, &grant, &client.basic()).await.unwrap();
    assert_eq!(tokens.status, 200, "code redemption: {}", tokens.text);
    let refresh_token = tokens.str("refresh_token").unwrap_or_else(|| {
        let members: Vec<&String> = tokens
            .body
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        panic!(
            "the adapter issued no refresh token to a client allowed the refresh_token \
             grant (RFC 6749 §6, §5.1); the token response has only {members:?}"
        )
    });

    let out = run_openid_client(&[
        ("ISSUER", issuer.as_str()),
        ("CLIENT_ID", CLIENT_ID),
        ("CLIENT_SECRET", secret.as_str()),
        ("REFRESH_TOKEN", refresh_token),
        ("POST_LOGOUT_REDIRECT_URI", POST_LOGOUT_REDIRECT_URI),
    ])
    .await;

    // Discovery: the endpoints the adapter now advertises.
    let discovery = &out["discovery"];
    assert_eq!(discovery["issuer"], issuer.as_str(), "{out}");
    assert_eq!(
        discovery["token_endpoint"],
        format!("{issuer}/oauth2/token"),
        "{out}"
    );
    assert_eq!(
        discovery["introspection_endpoint"],
        format!("{issuer}/oauth2/introspect"),
        "RFC 8414 §2: {out}"
    );
    assert_eq!(
        discovery["revocation_endpoint"],
        format!("{issuer}/oauth2/revoke"),
        "RFC 8414 §2: {out}"
    );
    let end_session_endpoint = discovery["end_session_endpoint"]
        .as_str()
        .unwrap_or_else(|| panic!("RP-Initiated Logout §2.1: no end_session_endpoint: {out}"));
    assert!(
        end_session_endpoint.starts_with(&format!("{issuer}/")),
        "{out}"
    );

    // client_credentials: no user, so no ID token and no refresh token
    // (RFC 6749 §4.4.3); an RFC 9068 access token whose sub is the client
    // (RFC 9068 §2.2).
    let cc = &out["client_credentials"];
    assert_eq!(
        cc["token_type"], "bearer",
        "openid-client lowercases it: {out}"
    );
    assert!(cc["expires_in"].as_u64().is_some_and(|s| s > 0), "{out}");
    assert_eq!(cc["refresh_token_issued"], false, "RFC 6749 §4.4.3: {out}");
    assert_eq!(cc["id_token_issued"], false, "{out}");
    assert_eq!(cc["access_token_typ"], "at+jwt", "RFC 9068 §2.1: {out}");
    assert_eq!(
        cc["access_token_client_id"], CLIENT_ID,
        "RFC 9068 §2.2: {out}"
    );
    assert_eq!(cc["access_token_sub"], CLIENT_ID, "RFC 9068 §2.2: {out}");

    // Introspection before and after revocation.
    assert_eq!(out["introspection"]["active"], true, "RFC 7662 §2.2: {out}");
    assert_eq!(out["introspection"]["client_id"], CLIENT_ID, "{out}");
    assert_eq!(out["revocation"], json!({ "ok": true }), "{out}");
    assert_eq!(
        out["introspection_after_revocation"],
        json!({ "active": false, "fields": ["active"] }),
        "RFC 7009 §2.2, RFC 7662 §2.2 (nothing but active for an inactive token): {out}"
    );

    // Refresh: rotated refresh token, a new ID token openid-client validated.
    assert_eq!(
        out["refresh"],
        json!({
            "token_type": "bearer",
            "access_token_typ": "at+jwt",
            "id_token_issued": true,
            "refresh_token_rotated": true,
            "id_token_claims": { "iss": issuer, "sub": USERNAME, "aud": CLIENT_ID },
        }),
        "RFC 6749 §6, RFC 9700 §4.14.2, OIDC Core §12.2: {out}"
    );

    // RP-Initiated Logout 1.0 §2.
    assert_eq!(
        out["end_session"],
        json!({
            "endpoint": end_session_endpoint,
            "id_token_hint_is_the_refreshed_id_token": true,
            "post_logout_redirect_uri": POST_LOGOUT_REDIRECT_URI,
            "state": "rp-conformance-state",
            "client_id": CLIENT_ID,
        }),
        "{out}"
    );
}
