//! A plain OAuth 2.0 upstream (`kind = "oauth2"`), end to end: the adapter
//! behind a fake GitHub-like server on a real socket (authorize, token and
//! `/user` endpoints, no discovery, no ID token). Every `Location` is
//! asserted: the authorization code grant with `state` and PKCE S256 (RFC
//! 6749 §4.1, RFC 7636 §4), client_secret_post (RFC 6749 §2.3.1), the
//! profile as the identity, the subject from `subject_claim`; the
//! refusals (RFC 6749 §4.1.2.1) and a missing endpoint in the configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use adapter::config::{ClaimRule, CustomizerKind, TokenName, UpstreamConfig};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::*;

const GH_ID: &str = "github";
const GH_CLIENT_ID: &str = "gh-client";
const GH_SECRET: &str = "gh-secret";
const GH_TOKEN: &str = "gho_access-token-of-octo";

/// How the fake misbehaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    /// The callback carries a state of its own.
    ForgedState,
    /// The user refused: `error=access_denied` in the callback.
    Refuse,
    /// The token endpoint answers 500.
    TokenDown,
    /// `/user` has no `id`.
    NoSubject,
}

struct Fake {
    mode: Mode,
    /// code → (code_challenge, redirect_uri)
    codes: HashMap<String, (String, String)>,
    token_requests: Vec<HashMap<String, String>>,
    /// How each token request authenticated: `post` or `basic`.
    client_auth: Vec<&'static str>,
}

type Shared = Arc<Mutex<Fake>>;

struct GitHub {
    base: String,
    state: Shared,
}

impl GitHub {
    async fn start(mode: Mode) -> GitHub {
        let state = Arc::new(Mutex::new(Fake {
            mode,
            codes: HashMap::new(),
            token_requests: Vec::new(),
            client_auth: Vec::new(),
        }));
        let app = Router::new()
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(token))
            .route("/user", get(user))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        GitHub { base, state }
    }

    fn authorization_endpoint(&self) -> String {
        format!("{}/login/oauth/authorize", self.base)
    }

    /// The `[[upstreams]]` block, as TOML would write it.
    fn upstream(&self) -> UpstreamConfig {
        serde_json::from_value(json!({
            "id": GH_ID,
            "name": "GitHub",
            "kind": "oauth2",
            "client_id": GH_CLIENT_ID,
            "client_secret": GH_SECRET,
            "scopes": ["read:user"],
            "authorization_endpoint": self.authorization_endpoint(),
            "token_endpoint": format!("{}/login/oauth/access_token", self.base),
            "userinfo_endpoint": format!("{}/user", self.base),
        }))
        .unwrap()
    }
}

async fn authorize(
    State(state): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut fake = state.lock().unwrap();
    assert_eq!(q["client_id"], GH_CLIENT_ID);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "read:user");
    let redirect_uri = q["redirect_uri"].clone();
    let code = format!("code-{}", fake.codes.len());
    fake.codes.insert(
        code.clone(),
        (q["code_challenge"].clone(), redirect_uri.clone()),
    );
    let mut to = url::Url::parse(&redirect_uri).unwrap();
    match fake.mode {
        Mode::Refuse => to
            .query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("state", &q["state"]),
        Mode::ForgedState => to
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", "forged-state"),
        _ => to
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &q["state"]),
    };
    (AxumStatus::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

/// RFC 6749 §4.1.3 with the PKCE verifier; the client authenticates with
/// client_secret_post or client_secret_basic (RFC 6749 §2.3.1).
async fn token(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(mut form): Form<HashMap<String, String>>,
) -> Response {
    let mut fake = state.lock().unwrap();
    fake.token_requests.push(form.clone());
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    match basic.as_deref().and_then(|b| b.split_once(':')) {
        Some((id, secret)) => {
            fake.client_auth.push("basic");
            form.insert("client_id".into(), id.into());
            form.insert("client_secret".into(), secret.into());
        }
        None => fake.client_auth.push("post"),
    }
    if fake.mode == Mode::TokenDown {
        return (AxumStatus::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let refused = || {
        (
            AxumStatus::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response()
    };
    let Some((challenge, redirect_uri)) = form.get("code").and_then(|c| fake.codes.remove(c))
    else {
        return refused();
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let s256 = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if form.get("grant_type").map(String::as_str) != Some("authorization_code")
        || form.get("client_id").map(String::as_str) != Some(GH_CLIENT_ID)
        || form.get("client_secret").map(String::as_str) != Some(GH_SECRET)
        || form.get("redirect_uri") != Some(&redirect_uri)
        || s256 != challenge
    {
        return refused();
    }
    Json(json!({"access_token": GH_TOKEN, "token_type": "bearer", "scope": "read:user"}))
        .into_response()
}

async fn user(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {GH_TOKEN}")) {
        return AxumStatus::UNAUTHORIZED.into_response();
    }
    match state.lock().unwrap().mode {
        Mode::NoSubject => Json(json!({"login": "octo", "name": "Octo Cat"})),
        _ => Json(json!({"id": 12345, "login": "octo", "name": "Octo Cat"})),
    }
    .into_response()
}

/// The adapter in broker mode with the fake as its only upstream; the
/// client `app` gets `gh_login` from `upstream.login`.
async fn adapter_behind(github: &GitHub) -> TestApp {
    let upstream = github.upstream();
    spawn_app_with(move |c| {
        c.local_users.clear();
        c.claims.customizer = CustomizerKind::Mapped;
        c.upstreams = vec![upstream];
        c.clients[0].claims.rules = vec![ClaimRule {
            claim: "gh_login".into(),
            expr: "upstream.login".into(),
            tokens: vec![TokenName::Id, TokenName::Access],
            when: None,
        }];
    })
    .await
}

#[tokio::test]
async fn an_oauth2_upstream_logs_the_user_in_with_its_profile() {
    let github = GitHub::start(Mode::Ok).await;
    let app = adapter_behind(&github).await;
    let r = app
        .callback_through_upstream(&github.authorization_endpoint(), GH_ID, &[])
        .await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let loc = location(&r);
    assert!(loc.starts_with(&format!("{REDIRECT}?code=")), "{loc}");
    let q = query(&loc);
    assert_eq!(q["state"], "st-123");
    assert_eq!(q["iss"], app.base.as_str());
    // The code was redeemed once, with the secret in the body.
    assert_eq!(github.state.lock().unwrap().client_auth, vec!["post"]);

    let r = app.redeem(q["code"].as_str().unwrap()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let (_, id) = jwt_parts(body["id_token"].as_str().unwrap());
    let (_, access) = jwt_parts(body["access_token"].as_str().unwrap());
    for claims in [&id, &access] {
        // `subject = "upstream"` (the default): the profile's `id`, as a string.
        assert_eq!(claims["sub"], "12345");
        assert_eq!(claims["github_sub"], "12345");
        assert_eq!(claims["name"], "Octo Cat");
        assert_eq!(claims["gh_login"], "octo");
        assert_eq!(claims["authorities"], json!(["ROLE_USER"]));
        // Not in the profile: not in the token.
        assert!(claims.get("preferred_username").is_none(), "{claims}");
    }
}

/// With `subject = "namespaced"` the `sub` is derived from the upstream's
/// id and the profile's `id`; `client_secret_basic` puts the secret in
/// the `Authorization` header instead of the body.
#[tokio::test]
async fn the_namespaced_subject_of_an_oauth2_upstream() {
    let github = GitHub::start(Mode::Ok).await;
    let mut upstream = github.upstream();
    upstream.subject = adapter::config::SubjectStrategy::Namespaced;
    upstream.token_endpoint_auth_method = adapter::config::TokenEndpointAuth::ClientSecretBasic;
    let app = spawn_app_with(move |c| {
        c.local_users.clear();
        c.claims.customizer = CustomizerKind::Mapped;
        c.upstreams = vec![upstream];
    })
    .await;
    let r = app
        .callback_through_upstream(&github.authorization_endpoint(), GH_ID, &[])
        .await;
    let code = query(&location(&r))["code"].as_str().unwrap().to_string();
    let body: Value = app.redeem(&code).await.json().await.unwrap();
    let (_, id) = jwt_parts(body["id_token"].as_str().unwrap());
    assert_eq!(
        id["sub"],
        adapter::customizer::namespaced_subject(GH_ID, "12345")
    );
    let fake = github.state.lock().unwrap();
    assert_eq!(fake.client_auth, vec!["basic"]);
    assert!(!fake.token_requests[0].contains_key("client_secret"));
}

/// RFC 6749 §10.12: a callback whose state belongs to no login is refused
/// with a page of the adapter; nothing is redeemed.
#[tokio::test]
async fn a_callback_with_a_forged_state_is_rejected() {
    let github = GitHub::start(Mode::ForgedState).await;
    let app = adapter_behind(&github).await;
    let r = app
        .callback_through_upstream(&github.authorization_endpoint(), GH_ID, &[])
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get(reqwest::header::LOCATION).is_none());
    let html = r.text().await.unwrap();
    assert_eq!(
        testkit::rp::element_text(&html, "error-message").as_deref(),
        Some("The state does not match any login in progress."),
        "{html}"
    );
    assert!(github.state.lock().unwrap().token_requests.is_empty());
}

/// A login through a fake GitHub in `mode` that ends with `error` at the
/// client (RFC 6749 §4.1.2.1); the fake, for what it saw.
async fn failed_login(mode: Mode, error: &str) -> GitHub {
    let github = GitHub::start(mode).await;
    let app = adapter_behind(&github).await;
    let r = app
        .callback_through_upstream(&github.authorization_endpoint(), GH_ID, &[])
        .await;
    assert_eq!(r.status(), StatusCode::FOUND);
    app.assert_error_at_client(&location(&r), error);
    github
}

#[tokio::test]
async fn a_refusal_at_the_upstream_is_access_denied() {
    let github = failed_login(Mode::Refuse, "access_denied").await;
    assert!(github.state.lock().unwrap().token_requests.is_empty());
}

#[tokio::test]
async fn a_token_endpoint_in_trouble_is_temporarily_unavailable() {
    let github = failed_login(Mode::TokenDown, "temporarily_unavailable").await;
    assert_eq!(github.state.lock().unwrap().token_requests.len(), 1);
}

#[tokio::test]
async fn a_profile_without_the_subject_claim_is_access_denied() {
    failed_login(Mode::NoSubject, "access_denied").await;
}

/// Each endpoint is required for `kind = "oauth2"`; the issuer is not.
#[tokio::test]
async fn a_missing_endpoint_is_a_config_error_naming_the_key() {
    let github = GitHub::start(Mode::Ok).await;
    for key in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
    ] {
        let mut config = test_config("sqlite::memory:");
        let mut block = serde_json::to_value(github.upstream()).unwrap();
        block.as_object_mut().unwrap().remove(key);
        config.upstreams = vec![serde_json::from_value(block).unwrap()];
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            format!("upstreams[github].{key}: required for kind = \"oauth2\"")
        );
    }
    let mut config = test_config("sqlite::memory:");
    let mut upstream = github.upstream();
    upstream.token_endpoint = Some("/login/oauth/access_token".into());
    config.upstreams = vec![upstream];
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "upstreams[github].token_endpoint: must be an absolute http(s) URL"
    );
    // An OIDC upstream still needs its issuer.
    let mut config = test_config("sqlite::memory:");
    let oidc: UpstreamConfig =
        serde_json::from_value(json!({"id": "corp", "client_id": "adapter"})).unwrap();
    config.upstreams = vec![oidc];
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "upstreams[corp].issuer: required for kind = \"oidc\""
    );
}
