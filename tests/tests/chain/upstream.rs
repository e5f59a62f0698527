//! The adapter as a relying party of its upstreams, against real servers:
//! the algorithm allow-list (OIDC Core §2, §3.1.3.7 items 7–8), `prompt` /
//! `max_age` / `auth_time` (OIDC Core §3.1.2.1, §3.1.3.7 item 13), the
//! callback's `iss` (RFC 9207 §2.4), subject strategies across upstreams
//! (OIDC Core §2: `sub` is unique only per issuer) and what discovery
//! promises (OIDC Discovery §3, RFC 8414 §3).

use std::collections::HashMap;
use std::sync::Arc;

use adapter::clock::{ManualClock, SharedClock};
use adapter::config::{SubjectStrategy, UpstreamConfig};
use adapter::connector::oidc::OidcConnector;
use adapter::connector::{BeginRequest, CallbackConnector, ConnectorError, Identity};
use adapter::error::ErrorCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use e2e::chain::{AuthRequest, TestChain, Upstream, ADAPTER_CLIENT_ID, UPSTREAM_ID};
use e2e::fake_upstream::{AuthorizeRecord, FakeUpstream, Tamper};
use e2e::rp::{self, expect_redirect, param, random_string, without_query, Agent};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use url::Url;

const FAKE_SECRET: &str = "fake-upstream-secret";

/// Runs a provider until the returned sender is dropped.
async fn spawn(config: adapter::Config, listener: TcpListener) -> oneshot::Sender<()> {
    let app = adapter::Application::build_with_listener(config, listener)
        .await
        .unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = app
            .run_until(async {
                let _ = rx.await;
            })
            .await;
    });
    tx
}

/// A chain whose adapter uses `fake` as its only upstream.
async fn chain_on(fake: &FakeUpstream) -> TestChain {
    TestChain::builder()
        .upstream(Upstream::External {
            issuer: fake.issuer.clone(),
            client_id: ADAPTER_CLIENT_ID.into(),
            client_secret: FAKE_SECRET.into(),
        })
        .test_app(false)
        .start()
        .await
        .unwrap()
}

/// Adapter -> fake upstream -> adapter callback; returns the adapter's
/// redirect to the RP.
async fn login_through(fake: &FakeUpstream, chain: &TestChain, req: &AuthRequest) -> Url {
    let agent = Agent::new().unwrap();
    let resp = agent.get(&chain.authorize_url(req)).await.unwrap();
    let to_fake = expect_redirect(&resp, "adapter -> fake upstream").unwrap();
    assert_eq!(
        without_query(&to_fake),
        format!("{}/authorize", fake.issuer)
    );
    let resp = agent.get(to_fake.as_str()).await.unwrap();
    let callback = expect_redirect(&resp, "fake upstream -> adapter").unwrap();
    assert_eq!(without_query(&callback), chain.upstream_callback());
    let resp = agent.get(callback.as_str()).await.unwrap();
    let to_rp = expect_redirect(&resp, "adapter callback -> RP").unwrap();
    assert_eq!(without_query(&to_rp), chain.app.redirect_uri);
    to_rp
}

/// Asserts an error redirect to the RP: exactly `error`, the RP's state,
/// the adapter's `iss`, no code.
fn assert_error(to_rp: &Url, error: &str, req: &AuthRequest, chain: &TestChain) {
    assert_eq!(param(to_rp, "error").as_deref(), Some(error), "{to_rp}");
    assert_eq!(param(to_rp, "state").as_deref(), Some(req.state.as_str()));
    assert_eq!(
        param(to_rp, "iss").as_deref(),
        Some(chain.adapter_issuer.as_str())
    );
    assert!(param(to_rp, "code").is_none(), "{to_rp}");
}

/// Redeems the code of `to_rp` and returns the verified ID token claims.
async fn id_token_claims(chain: &TestChain, req: AuthRequest, to_rp: Url) -> Value {
    let agent = Agent::new().unwrap();
    chain.id_token_claims(&agent, req, to_rp).await.unwrap()
}

// ------------------------------------------- signing algorithms ----

/// An upstream that signs its ID tokens with ES256 (the same engine as the
/// upstream-test-server, `tokens.signing_alg = "ES256"`) logs in through
/// the adapter end to end.
#[tokio::test]
async fn es256_signed_upstream_logs_in_end_to_end() {
    upstream_signing_with("ES256").await;
}

/// The same with Ed25519 signatures (RFC 8037), which the engine can sign
/// with: the adapter accepts EdDSA upstream ID tokens and checks their
/// `at_hash` with SHA-512 (OIDC Core §3.1.3.8 for Ed25519).
#[tokio::test]
async fn eddsa_signed_upstream_logs_in_end_to_end() {
    upstream_signing_with("EdDSA").await;
}

async fn upstream_signing_with(alg: &str) {
    let up_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up_listener.local_addr().unwrap();
    let up_issuer = format!("http://{up_addr}");
    let secret = random_string(24);
    // The adapter first: the upstream must know its callback. Discovery is
    // lazy, so the upstream may come up second.
    let chain = TestChain::builder()
        .upstream(Upstream::External {
            issuer: up_issuer.clone(),
            client_id: ADAPTER_CLIENT_ID.into(),
            client_secret: secret.clone(),
        })
        .test_app(false)
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = upstream_test_server::default_config();
    config.server.listen = up_addr;
    config.server.issuer = Some(up_issuer.clone());
    config.database.url = format!("sqlite://{}/x.db", dir.path().display());
    config.tokens.signing_alg = alg.into();
    config.clients = vec![serde_json::from_value(json!({
        "id": ADAPTER_CLIENT_ID,
        "secret": secret,
        "redirect_uris": [chain.upstream_callback()],
        "allowed_scopes": ["openid", "profile", "email"],
    }))
    .unwrap()];
    let _upstream = spawn(config, up_listener).await;

    let http = reqwest::Client::new();
    let meta: Value = http
        .get(format!("{up_issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The configured algorithm signs; RS256 is always offered too (OIDC
    // Discovery §3).
    assert_eq!(
        meta["id_token_signing_alg_values_supported"],
        json!([alg, "RS256"])
    );

    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let grant = chain.obtain_code(&agent, &req).await.unwrap();
    let claims = id_token_claims(&chain, req, grant.redirect).await;
    assert_eq!(claims["sub"], "testuser");
    assert_eq!(claims["test_auth_server_sub"], "testuser");
}

/// An upstream whose ID tokens could only be HMAC'd or unsigned is refused
/// before the browser is sent there: the RP gets `server_error` (the
/// adapter cannot work with this upstream; nothing the user can change).
#[tokio::test]
async fn upstream_advertising_only_hs256_and_none_is_refused_at_login() {
    let fake = FakeUpstream::start(ADAPTER_CLIENT_ID, Tamper::None)
        .await
        .unwrap();
    fake.set_advertised_algs(&["HS256", "none"]);
    let chain = chain_on(&fake).await;
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    let to_rp = expect_redirect(&resp, "adapter /oauth2/authorize").unwrap();
    assert_eq!(without_query(&to_rp), chain.app.redirect_uri);
    assert_error(&to_rp, "server_error", &req, &chain);
    assert!(
        fake.authorize_requests().is_empty(),
        "the browser must not be sent to the upstream"
    );
}

/// An upstream that advertises HS256 next to RS256 and HMACs its ID token
/// with the adapter's client secret is refused: HMAC is never on the
/// allow-list, whatever the upstream advertises.
#[tokio::test]
async fn id_token_hmac_with_the_client_secret_is_refused() {
    let fake = FakeUpstream::start(ADAPTER_CLIENT_ID, Tamper::None)
        .await
        .unwrap();
    fake.set_advertised_algs(&["RS256", "HS256"]);
    let chain = chain_on(&fake).await;
    // Positive control: RS256 from the same upstream logs in.
    let req = AuthRequest::new(&chain.app);
    let to_rp = login_through(&fake, &chain, &req).await;
    assert!(param(&to_rp, "code").is_some(), "{to_rp}");

    fake.set_tamper(Tamper::IdHs256WithClientSecret);
    let req = AuthRequest::new(&chain.app);
    let to_rp = login_through(&fake, &chain, &req).await;
    assert_error(&to_rp, "access_denied", &req, &chain);
}

// ------------------------------------- prompt, max_age, auth_time ----

const CALLBACK: &str = "http://127.0.0.1:9/login/oauth2/code/fake";

fn connector(fake: &FakeUpstream, clock: SharedClock) -> OidcConnector {
    let config: UpstreamConfig = serde_json::from_value(json!({
        "id": "fake",
        "issuer": fake.issuer,
        "client_id": ADAPTER_CLIENT_ID,
    }))
    .unwrap();
    OidcConnector::new(&config, Some(FAKE_SECRET.into()), clock).unwrap()
}

/// `begin`, the upstream's authorize (recorded), then `complete`.
async fn round_trip(
    fake: &FakeUpstream,
    conn: &OidcConnector,
    prompt: Option<&str>,
    max_age: Option<i64>,
    login_hint: Option<&str>,
) -> (AuthorizeRecord, Result<Identity, ConnectorError>) {
    let state = random_string(24);
    let begun = conn
        .begin(&BeginRequest {
            callback_url: CALLBACK,
            state: &state,
            prompt,
            max_age,
            login_hint,
        })
        .await
        .unwrap();
    let before = fake.authorize_requests().len();
    let agent = Agent::new().unwrap();
    let resp = agent.get(&begun.redirect_url).await.unwrap();
    let callback = expect_redirect(&resp, "fake upstream -> callback").unwrap();
    assert_eq!(without_query(&callback), CALLBACK);
    let record = fake.authorize_requests()[before].clone();
    let params: HashMap<String, String> = callback.query_pairs().into_owned().collect();
    assert_eq!(params.get("state"), Some(&state));
    let result = conn
        .complete(CALLBACK, &params, &begun.connector_state)
        .await;
    (record, result)
}

/// OIDC Core §3.1.2.1: `prompt`, `max_age` and `login_hint` asked of the
/// adapter are asked of the upstream; without them, none is sent.
#[tokio::test]
async fn prompt_max_age_and_login_hint_reach_the_upstream() {
    let fake = FakeUpstream::start(ADAPTER_CLIENT_ID, Tamper::None)
        .await
        .unwrap();
    let conn = connector(&fake, Arc::new(ManualClock::new()));
    let (seen, result) = round_trip(&fake, &conn, Some("login"), Some(300), Some("fakeuser")).await;
    assert_eq!(seen.get("prompt"), Some("login"));
    assert_eq!(seen.get("max_age"), Some("300"));
    assert_eq!(seen.get("login_hint"), Some("fakeuser"));
    let identity = result.unwrap();
    assert_eq!(identity.subject, "fakeuser");
    assert!(identity.auth_time.is_some(), "auth_time of the upstream");

    let (seen, result) = round_trip(&fake, &conn, Some("none"), None, None).await;
    assert_eq!(seen.get("prompt"), Some("none"));
    assert_eq!(seen.get("max_age"), None);
    assert_eq!(seen.get("login_hint"), None);
    result.unwrap();
}

fn assert_invalid(result: Result<Identity, ConnectorError>, what: &str) -> String {
    match result {
        Err(e @ ConnectorError::Invalid(_)) => {
            assert_eq!(e.oauth_error().code, ErrorCode::AccessDenied, "{what}");
            e.to_string()
        }
        other => panic!("{what}: expected Invalid, got {other:?}"),
    }
}

/// OIDC Core §3.1.3.7 item 13: with `max_age`, an ID token whose
/// `auth_time` is older than `max_age` before the request, or that has no
/// `auth_time`, is refused (`access_denied` for the RP).
#[tokio::test]
async fn max_age_refuses_a_stale_or_missing_auth_time() {
    let fake = FakeUpstream::start(ADAPTER_CLIENT_ID, Tamper::None)
        .await
        .unwrap();
    // The adapter's clock is ahead: the upstream's fresh auth_time is then
    // 335 s before the request, beyond max_age 300 and the 30 s leeway.
    let clock = Arc::new(ManualClock::new());
    clock.advance(335);
    let conn = connector(&fake, clock.clone());
    let (_, result) = round_trip(&fake, &conn, None, Some(300), None).await;
    let m = assert_invalid(result, "stale auth_time");
    assert!(m.contains("max_age was 300"), "{m}");
    // Without max_age the same login is fine.
    let (_, result) = round_trip(&fake, &conn, None, None, None).await;
    result.unwrap();

    // No auth_time at all: refused with max_age, accepted without.
    fake.set_tamper(Tamper::NoAuthTime);
    let conn = connector(&fake, Arc::new(ManualClock::new()));
    let (_, result) = round_trip(&fake, &conn, None, Some(300), None).await;
    let m = assert_invalid(result, "no auth_time");
    assert!(m.contains("no auth_time"), "{m}");
    let (_, result) = round_trip(&fake, &conn, None, None, None).await;
    assert_eq!(result.unwrap().auth_time, None);
}

// ---------------------------------------------------------- RFC 9207 ----

/// RFC 9207 §2.4: an upstream that advertises
/// `authorization_response_iss_parameter_supported` must send `iss`; a
/// callback without it is refused before the code is redeemed.
#[tokio::test]
async fn rfc9207_upstream_that_advertises_iss_and_omits_it_is_refused() {
    let fake = FakeUpstream::start(ADAPTER_CLIENT_ID, Tamper::None)
        .await
        .unwrap();
    fake.set_iss_parameter(true, false);
    let chain = chain_on(&fake).await;
    let req = AuthRequest::new(&chain.app);
    let to_rp = login_through(&fake, &chain, &req).await;
    assert_error(&to_rp, "access_denied", &req, &chain);
    assert!(
        fake.token_requests().is_empty(),
        "the upstream code must not be redeemed"
    );

    // Positive control: the same upstream sending its iss logs in.
    fake.set_iss_parameter(true, true);
    let req = AuthRequest::new(&chain.app);
    let to_rp = login_through(&fake, &chain, &req).await;
    assert!(param(&to_rp, "code").is_some(), "{to_rp}");
}

// ------------------------------------------------- subject strategy ----

/// The namespaced `sub`, computed here from its documented formula:
/// base64url(SHA-256(be32(len id) ‖ id ‖ be32(len sub) ‖ sub)).
fn namespaced(id: &str, sub: &str) -> String {
    let mut h = Sha256::new();
    for part in [id, sub] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part.as_bytes());
    }
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Chooser -> `connector` -> its fake upstream -> the RP; the ID token claims.
async fn login_via_chooser(chain: &TestChain, fake: &FakeUpstream, connector: &str) -> Value {
    let agent = Agent::new().unwrap();
    let req = AuthRequest::new(&chain.app);
    let resp = agent.get(&chain.authorize_url(&req)).await.unwrap();
    assert_eq!(resp.status(), 200, "two upstreams: the chooser");
    let html = resp.text().await.unwrap();
    let link = rp::find_tag(&html, "a", "id", &format!("connector-{connector}"))
        .unwrap_or_else(|| panic!("no link for {connector}:\n{html}"));
    let href = rp::attr(link, "href").unwrap();
    let resp = agent.get(&chain.adapter(&href)).await.unwrap();
    let to_fake = expect_redirect(&resp, "chooser -> upstream").unwrap();
    assert_eq!(
        without_query(&to_fake),
        format!("{}/authorize", fake.issuer)
    );
    let resp = agent.get(to_fake.as_str()).await.unwrap();
    let callback = expect_redirect(&resp, "upstream -> adapter").unwrap();
    assert_eq!(
        without_query(&callback),
        chain.adapter(&format!("/login/oauth2/code/{connector}"))
    );
    let resp = agent.get(callback.as_str()).await.unwrap();
    let to_rp = expect_redirect(&resp, "adapter -> RP").unwrap();
    id_token_claims(chain, req, to_rp).await
}

/// Two upstreams, each with a user `fakeuser`: with namespaced subjects
/// they are two different adapter users; `<upstream>_sub` keeps the raw
/// upstream subject.
#[tokio::test]
async fn namespaced_subjects_keep_two_upstreams_apart() {
    let corp = FakeUpstream::start(ADAPTER_CLIENT_ID, Tamper::None)
        .await
        .unwrap();
    let partner = FakeUpstream::start(ADAPTER_CLIENT_ID, Tamper::None)
        .await
        .unwrap();
    let partner_issuer = partner.issuer.clone();
    let chain = TestChain::builder()
        .upstream(Upstream::External {
            issuer: corp.issuer.clone(),
            client_id: ADAPTER_CLIENT_ID.into(),
            client_secret: FAKE_SECRET.into(),
        })
        .test_app(false)
        .tweak_adapter(move |c| {
            c.upstreams[0].subject = SubjectStrategy::Namespaced;
            c.upstreams.push(
                serde_json::from_value(json!({
                    "id": "partner",
                    "issuer": partner_issuer,
                    "client_id": ADAPTER_CLIENT_ID,
                    "client_secret": FAKE_SECRET,
                    "subject": "namespaced",
                }))
                .unwrap(),
            );
        })
        .start()
        .await
        .unwrap();
    let a = login_via_chooser(&chain, &corp, UPSTREAM_ID).await;
    let b = login_via_chooser(&chain, &partner, "partner").await;
    assert_eq!(a["sub"], namespaced(UPSTREAM_ID, "fakeuser"));
    assert_eq!(b["sub"], namespaced("partner", "fakeuser"));
    assert_ne!(a["sub"], b["sub"]);
    assert_eq!(a["test_auth_server_sub"], "fakeuser");
    assert_eq!(b["partner_sub"], "fakeuser");
}

/// Start-up refuses two upstreams that keep their subjects as is, unless
/// `allow_shared_subjects` says the user bases are one.
#[tokio::test]
async fn two_upstreams_with_shared_subjects_need_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = |forced: bool| {
        let mut c = adapter::Config::default();
        c.server.issuer = Some("http://127.0.0.1:9".into());
        c.database.url = format!("sqlite://{}/x.db", dir.path().display());
        c.upstreams = ["corp", "partner"]
            .iter()
            .map(|id| {
                serde_json::from_value(json!({
                    "id": id,
                    "issuer": format!("http://{id}.invalid"),
                    "client_id": "adapter",
                    "allow_shared_subjects": forced,
                }))
                .unwrap()
            })
            .collect();
        c
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = match adapter::Application::build_with_listener(config(false), listener).await {
        Ok(_) => panic!("two upstreams with shared subjects were accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("upstreams[corp].subject: with 2 upstreams"),
        "{err}"
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    adapter::Application::build_with_listener(config(true), listener)
        .await
        .unwrap();
}

// --------------------------------------------------------- discovery ----

/// Discovery lists what clients can actually get: the union of their
/// scopes (custom ones included), the claims the customizer emits; RFC 8414
/// metadata is served too, with the same content.
#[tokio::test]
async fn discovery_lists_the_real_scopes_and_claims() {
    let chain = TestChain::builder()
        .test_app(false)
        .tweak_adapter(|c| c.clients[1].allowed_scopes.push("groups".into()))
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let oidc = chain.discovery(&http).await.unwrap();
    assert_eq!(
        oidc["scopes_supported"],
        json!(["email", "groups", "openid", "profile"])
    );
    assert_eq!(
        oidc["claims_supported"],
        json!([
            "at_hash",
            "aud",
            "auth_time",
            "authorities",
            "email",
            "email_verified",
            "exp",
            "iat",
            "iss",
            "name",
            "nonce",
            "preferred_username",
            "sid",
            "sub",
            "test_auth_server_sub"
        ])
    );
    let resp = http
        .get(chain.adapter("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rfc8414: Value = resp.json().await.unwrap();
    assert_eq!(rfc8414, oidc);

    // The upstream-test-server (passthrough customizer) offers the
    // standard claims.
    let up: Value = http
        .get(chain.upstream("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claims = up["claims_supported"].as_array().unwrap();
    for c in [
        "groups",
        "email",
        "preferred_username",
        "phone_number",
        "sub",
    ] {
        assert!(claims.iter().any(|v| v == c), "{c} in {up}");
    }
    assert!(!claims.iter().any(|v| v == "authorities"), "{up}");
}
