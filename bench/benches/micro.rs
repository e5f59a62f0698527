//! Criterion micro-benchmarks of the adapter's hot paths, through its public
//! API: JWT signing with a parsed key, claim mapping, the PKCE S256 check,
//! code and refresh-token lookups in a SQLite store (a temp file), and the
//! check of an upstream's ID token with `openidconnect`'s own key type
//! (RustCrypto `rsa`) and with the adapter's (aws-lc-rs).
//!
//! `cargo bench -p bench --bench micro`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::Header;
use serde_json::{json, Map};

use adapter::config::{Config, UpstreamConfig};
use adapter::customizer::{ClaimsContext, Identity, TokenKind};
use adapter::secret::{ct_eq, hash, pkce_s256, random_token};
use adapter::store::{RefreshRow, SqlStore, Store};

fn signing(c: &mut Criterion) {
    let claims = bench::ceiling::access_claims();
    for alg in bench::ceiling::ALGS {
        let (algorithm, key) = bench::ceiling::signing_key(alg).expect("key");
        let mut header = Header::new(algorithm);
        header.typ = Some("at+jwt".into());
        header.kid = Some("kid".into());
        c.bench_function(&format!("sign access token {alg}"), |b| {
            b.iter(|| key.encode(black_box(&header), black_box(&claims)))
        });
    }
}

/// The user `jane` of upstream `corp` with her profile claims and `extra`.
fn jane(extra: serde_json::Value) -> Identity {
    let mut claims: Map<String, serde_json::Value> = json!({
        "sub": "248289761001",
        "preferred_username": "jane",
        "name": "Jane Doe",
        "email": "jane@example.org",
        "email_verified": true,
    })
    .as_object()
    .cloned()
    .unwrap_or_default();
    claims.extend(extra.as_object().cloned().unwrap_or_default());
    Identity {
        connector_id: "corp".into(),
        subject: "248289761001".into(),
        claims,
        auth_time: None,
        upstream: None,
        amr: vec!["pwd".into()],
        acr: None,
    }
}

fn claim_mapping(c: &mut Criterion) {
    let config = Config {
        upstreams: vec![UpstreamConfig {
            scopes: vec!["openid".into()],
            ..UpstreamConfig::oidc("corp", "https://idp.example.org", "adapter")
        }],
        ..Config::default()
    };
    let customizer = adapter::customizer::from_config(&config).expect("customizer");
    let identity = jane(json!({"groups": ["admins", "staff", "users"]}));
    let scopes = vec!["openid".into(), "profile".into(), "email".into()];
    c.bench_function("map claims (mapped customizer, access token)", |b| {
        b.iter(|| {
            customizer.claims(black_box(&ClaimsContext {
                identity: &identity,
                client_id: "app",
                scopes: &scopes,
                kind: TokenKind::AccessToken,
            }))
        })
    });
}

fn pkce(c: &mut Criterion) {
    let verifier = random_token();
    let challenge = pkce_s256(&verifier);
    // RFC 7636 §4.6: BASE64URL(SHA256(verifier)) compared with the challenge.
    c.bench_function("PKCE S256 check", |b| {
        b.iter(|| ct_eq(black_box(&challenge), &pkce_s256(black_box(&verifier))))
    });
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let store = rt
        .block_on(SqlStore::connect(&url, 4))
        .expect("sqlite store");
    let now = 1_767_225_600;
    // A populated table, so lookups go through a real index.
    let tokens: Vec<String> = rt.block_on(async {
        let mut tokens = Vec::new();
        for _ in 0..10_000 {
            let t = random_token();
            store
                .insert_refresh(&RefreshRow {
                    token_hash: hash(&t),
                    family_id: random_token(),
                    client_id: "app".into(),
                    sid: Some(random_token()),
                    data: "{\"v\":1,\"d\":{}}".into(),
                    issued_at: now,
                    expires_at: now + 86_400,
                })
                .await
                .expect("insert");
            tokens.push(t);
        }
        tokens
    });
    let mut i = 0;
    c.bench_function("refresh token lookup (SQLite, 10k rows)", |b| {
        b.iter(|| {
            i = (i + 1) % tokens.len();
            rt.block_on(store.refresh_status(&hash(&tokens[i])))
        })
    });
    c.bench_function("code insert + redeem (SQLite)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let code = hash(&random_token());
                store.insert_code(&code, "{}", now + 60).await?;
                store
                    .redeem_code_and_issue(&code, "grant", now, Box::new(|_, _| Ok(None)))
                    .await
            })
        })
    });
}

/// The claim rules of README "Claim mapping" beyond the shipped ones
/// (split, filter and prefix groups, a condition), and the check a login
/// makes (gate and all three tokens mapped and measured).
fn claim_rules(c: &mut Criterion) {
    let mut config: Config = Config::default();
    let rule = |claim: &str, expr: &str, when: Option<&str>| adapter::config::ClaimRule {
        claim: claim.into(),
        expr: expr.into(),
        tokens: vec![
            adapter::config::TokenName::Id,
            adapter::config::TokenName::Access,
            adapter::config::TokenName::Userinfo,
        ],
        when: when.map(String::from),
    };
    config.claims.rules.extend([
        rule("permissions", "upstream.roles.split(',')", None),
        rule(
            "groups",
            "upstream.groups.filter(g, g.startsWith('app-')).map(g, 'portal:' + g.substring(4))",
            None,
        ),
        rule("approver", "true", Some("'staff' in upstream.groups")),
    ]);
    config.claims.allow_groups = vec!["staff".into()];
    let ids = vec!["corp".to_string()];
    let mapping = adapter::mapping::Mapping::from_config(&config, &ids).expect("mapping");
    let identity = jane(json!({
        "groups": ["staff", "app-editors", "app-viewers", "dev-ops"],
        "roles": "reader,writer",
    }));
    let scopes: Vec<String> = vec!["openid".into(), "profile".into(), "email".into()];
    c.bench_function("map claims (9 CEL rules, access token)", |b| {
        b.iter(|| {
            mapping.evaluate(black_box(&adapter::mapping::Input {
                identity: &identity,
                client_id: "app",
                scopes: &scopes,
                token: adapter::config::TokenName::Access,
            }))
        })
    });
    c.bench_function("admit a login (gate + 3 tokens mapped, 9 CEL rules)", |b| {
        b.iter(|| mapping.admit(black_box(&identity), "app", &scopes))
    });
}

/// What a federated login does with the upstream's RS256 ID token (OIDC
/// Core §3.1.3.7): a verifier over the upstream's JWKS (built per login, as
/// `OidcConnector::verify` does), then signature and claims. Once with
/// `openidconnect`'s `CoreJsonWebKey` (RustCrypto `rsa`, the key rebuilt
/// from `n` and `e` at every check), once with the adapter's `AwsLcJwk`
/// (aws-lc-rs, the key parsed with the JWKS).
fn upstream_id_token(c: &mut Criterion) {
    use openidconnect::core::{CoreIdToken, CoreJsonWebKey};
    use openidconnect::{ClientId, IdTokenVerifier, IssuerUrl, JsonWebKey, JsonWebKeySet, Nonce};

    let pem = adapter::keys::generate_pem("RS256").expect("key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("pem");
    let mut jwk = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::RS256)
            .expect("jwk"),
    )
    .expect("jwk json");
    jwk["kid"] = json!("k1");
    jwk["use"] = json!("sig");
    let jwks = json!({ "keys": [jwk] });
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".into());
    let claims = json!({"iss": "https://idp.example.org", "aud": "adapter", "sub": "248289761001",
        "iat": 1_767_225_600, "exp": 4_102_444_800_i64, "nonce": "n-0S6_WzA2Mj"});
    let token: CoreIdToken = jsonwebtoken::encode(&header, &claims, &key)
        .expect("sign")
        .parse()
        .expect("id token");
    let nonce = Nonce::new("n-0S6_WzA2Mj".into());

    fn check<K>(set: &JsonWebKeySet<K>, token: &CoreIdToken, nonce: &Nonce)
    where
        K: JsonWebKey<SigningAlgorithm = openidconnect::core::CoreJwsSigningAlgorithm>,
    {
        let verifier = IdTokenVerifier::new_public_client(
            ClientId::new("adapter".into()),
            IssuerUrl::new("https://idp.example.org".into()).expect("issuer"),
            set.clone(),
        )
        .set_allowed_algs(adapter::connector::oidc::ACCEPTED_ALGS);
        token.claims(&verifier, nonce).expect("verified");
    }

    let core: JsonWebKeySet<CoreJsonWebKey> = serde_json::from_value(jwks.clone()).expect("jwks");
    let ours: JsonWebKeySet<adapter::connector::jwk::AwsLcJwk> =
        serde_json::from_value(jwks).expect("jwks");
    c.bench_function(
        "verify upstream ID token RS256 (openidconnect, rsa crate)",
        |b| b.iter(|| check(black_box(&core), black_box(&token), &nonce)),
    );
    c.bench_function(
        "verify upstream ID token RS256 (AwsLcJwk, aws-lc-rs)",
        |b| b.iter(|| check(black_box(&ours), black_box(&token), &nonce)),
    );
}

criterion_group!(
    benches,
    signing,
    claim_mapping,
    pkce,
    store,
    upstream_id_token
);
criterion_group!(mapping_benches, claim_rules);
criterion_main!(benches, mapping_benches);
