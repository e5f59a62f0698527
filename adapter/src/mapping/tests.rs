//! Each operation of the rule language, the configuration errors, the
//! gate and the budget.

use serde_json::json;

use super::*;
use crate::config::{ClientClaims, UpstreamClaims};

fn rule(claim: &str, expr: &str) -> ClaimRule {
    ClaimRule {
        claim: claim.into(),
        expr: expr.into(),
        tokens: vec![TokenName::Id, TokenName::Access, TokenName::Userinfo],
        when: None,
    }
}

fn config(rules: Vec<ClaimRule>) -> Config {
    let mut c = Config::default();
    c.claims.rules = rules;
    c.upstreams = vec![serde_json::from_value(json!({
        "id": "corp", "issuer": "https://corp.example", "client_id": "adapter",
    }))
    .unwrap()];
    c.clients = vec![serde_json::from_value(json!({
        "id": "app", "secret": "s", "redirect_uris": ["https://app.example/cb"],
    }))
    .unwrap()];
    c
}

fn mapping(c: &Config) -> Result<Mapping, String> {
    Mapping::from_config(c, &["corp".to_string()])
}

fn identity() -> Identity {
    Identity {
        connector_id: "corp".into(),
        subject: "u-1".into(),
        claims: json!({
            "sub": "u-1", "preferred_username": "jane", "given_name": "Jane",
            "family_name": "Doe", "email": "jane@example.org", "email_verified": true,
            "groups": ["admins", "dev-ops", "app-editors", "app-viewers"],
            "roles": "a,b,c", "level": 3,
        })
        .as_object()
        .unwrap()
        .clone(),
        auth_time: None,
        upstream: None,
        amr: Vec::new(),
        acr: None,
    }
}

const ALL: &str = "openid profile email";

fn eval_with(m: &Mapping, id: &Identity, client: &str, scopes: &str, token: TokenName) -> Mapped {
    let scopes: Vec<String> = scopes.split(' ').map(String::from).collect();
    m.evaluate(&Input {
        identity: id,
        client_id: client,
        scopes: &scopes,
        token,
    })
}

/// The claims `rules` give for [`identity`] in the access token.
fn claims(rules: Vec<ClaimRule>) -> Map<String, Value> {
    let m = mapping(&config(rules)).unwrap();
    let out = eval_with(&m, &identity(), "app", ALL, TokenName::Access);
    assert_eq!(out.errors, vec![]);
    out.claims
}

#[test]
fn copy_and_rename() {
    let out = claims(vec![
        rule("preferred_username", "upstream.preferred_username"),
        rule("login", "upstream.preferred_username"),
    ]);
    assert_eq!(
        Value::Object(out),
        json!({"preferred_username": "jane", "login": "jane"})
    );
}

#[test]
fn static_claims_of_each_type() {
    let out = claims(vec![
        rule("tenant", "'acme'"),
        rule("tier", "2"),
        rule("beta", "false"),
        rule("features", "['a', 'b']"),
        rule("meta", "{'region': 'eu'}"),
    ]);
    assert_eq!(
        Value::Object(out),
        json!({"tenant": "acme", "tier": 2, "beta": false, "features": ["a", "b"],
               "meta": {"region": "eu"}})
    );
}

#[test]
fn join_and_split() {
    let out = claims(vec![
        rule("name", "upstream.given_name + ' ' + upstream.family_name"),
        rule("group_list", "upstream.groups.join(',')"),
        rule("roles", "upstream.roles.split(',')"),
    ]);
    assert_eq!(out["name"], "Jane Doe");
    assert_eq!(out["group_list"], "admins,dev-ops,app-editors,app-viewers");
    assert_eq!(out["roles"], json!(["a", "b", "c"]));
}

#[test]
fn filter_and_prefix_groups() {
    let out = claims(vec![
        rule(
            "groups",
            "upstream.groups.filter(g, g.startsWith('app-')).map(g, 'corp:' + g.substring(4))",
        ),
        rule(
            "ops_groups",
            "upstream.groups.filter(g, g.matches('^(admins|dev-.*)$'))",
        ),
    ]);
    assert_eq!(out["groups"], json!(["corp:editors", "corp:viewers"]));
    assert_eq!(out["ops_groups"], json!(["admins", "dev-ops"]));
}

#[test]
fn groups_to_authorities_as_the_seed_did() {
    let seed = crate::config::default_claim_rules();
    let out = claims(seed.clone());
    assert_eq!(
        out["authorities"],
        json!([
            "ROLE_USER",
            "ROLE_ADMINS",
            "ROLE_DEV_OPS",
            "ROLE_APP_EDITORS",
            "ROLE_APP_VIEWERS"
        ])
    );
    assert_eq!(out["corp_sub"], "u-1");
    // A role already given is not repeated; no groups claim: ROLE_USER only.
    let m = mapping(&config(seed)).unwrap();
    let mut id = identity();
    id.claims.insert("groups".into(), json!(["user", "admins"]));
    let out = eval_with(&m, &id, "app", ALL, TokenName::Id);
    assert_eq!(
        out.claims["authorities"],
        json!(["ROLE_USER", "ROLE_ADMINS"])
    );
    id.claims.remove("groups");
    let out = eval_with(&m, &id, "app", ALL, TokenName::Id);
    assert_eq!(out.claims["authorities"], json!(["ROLE_USER"]));
}

#[test]
fn conditional_rules() {
    let mut admin = rule("admin", "true");
    admin.when = Some("'admins' in upstream.groups".into());
    let mut ops = rule("ops", "true");
    ops.when = Some("'ops' in upstream.groups".into());
    let mut missing = rule("dept", "'x'");
    missing.when = Some("upstream.department == 'x'".into());
    // JSON integers are CEL ints: they compare with int literals.
    let mut senior = rule("senior", "upstream.level");
    senior.when = Some("upstream.level > 2".into());
    let out = claims(vec![admin, ops, missing, senior]);
    assert_eq!(Value::Object(out), json!({"admin": true, "senior": 3}));
}

#[test]
fn rules_choose_their_tokens() {
    let mut only_id = rule("nickname_hint", "upstream.preferred_username");
    only_id.tokens = vec![TokenName::Id];
    let mut only_userinfo = rule("level", "upstream.level");
    only_userinfo.tokens = vec![TokenName::Userinfo];
    let m = mapping(&config(vec![only_id, only_userinfo, rule("t", "token")])).unwrap();
    let id = identity();
    let out = |t| Value::Object(eval_with(&m, &id, "app", ALL, t).claims);
    assert_eq!(
        out(TokenName::Id),
        json!({"nickname_hint": "jane", "t": "id"})
    );
    assert_eq!(out(TokenName::Access), json!({"t": "access"}));
    assert_eq!(
        out(TokenName::Userinfo),
        json!({"level": 3, "t": "userinfo"})
    );
}

/// The tokens of one grant mapped together are the tokens mapped one by
/// one: a rule that reads `token` or `claims`, also in its `when`, runs
/// for each token; a rule for some tokens only stays out of the others.
#[test]
fn the_tokens_of_a_grant_map_as_each_token_alone() {
    let mut only_id = rule("nickname_hint", "upstream.preferred_username");
    only_id.tokens = vec![TokenName::Id];
    let mut when_token = rule("audience_note", "'for the api'");
    when_token.when = Some("token == 'access'".into());
    let mut when_claims = rule("hinted", "true");
    when_claims.when = Some("has(claims.nickname_hint)".into());
    let m = mapping(&config(vec![
        rule("preferred_username", "upstream.preferred_username"),
        only_id,
        rule("t", "token"),
        rule("n", "size(claims)"),
        when_token,
        when_claims,
        rule("gone", "null"),
    ]))
    .unwrap();
    let id = identity();
    let scopes: Vec<String> = ALL.split(' ').map(String::from).collect();
    let tokens = [TokenName::Id, TokenName::Access, TokenName::Userinfo];
    let together = m.evaluate_tokens(
        &Input {
            identity: &id,
            client_id: "app",
            scopes: &scopes,
            token: TokenName::Access,
        },
        &tokens,
    );
    assert_eq!(together.len(), 3);
    for (token, mapped) in tokens.into_iter().zip(&together) {
        let alone = eval_with(&m, &id, "app", ALL, token);
        assert_eq!(mapped.claims, alone.claims, "{}", token.as_str());
        assert_eq!(mapped.notes, alone.notes, "{}", token.as_str());
        assert_eq!(mapped.bytes, alone.bytes, "{}", token.as_str());
        assert_eq!(mapped.budget, alone.budget, "{}", token.as_str());
    }
    assert_eq!(
        Value::Object(together[0].claims.clone()),
        json!({"preferred_username": "jane", "nickname_hint": "jane", "t": "id", "n": 3, "hinted": true})
    );
    assert_eq!(
        Value::Object(together[1].claims.clone()),
        json!({"preferred_username": "jane", "t": "access", "n": 2, "audience_note": "for the api"})
    );
}

#[test]
fn email_verified_stays_a_boolean_and_scopes_release_standard_claims() {
    let m = mapping(&config(vec![
        rule("email", "upstream.email"),
        rule("email_verified", "upstream.email_verified"),
        rule("name", "upstream.given_name"),
        rule("tenant", "'acme'"),
    ]))
    .unwrap();
    let id = identity();
    let out = eval_with(&m, &id, "app", ALL, TokenName::Id);
    assert_eq!(out.claims["email_verified"], json!(true));
    // OIDC Core §5.4: without `email`, no e-mail claims; custom ones stay.
    let out = eval_with(&m, &id, "app", "openid profile", TokenName::Id);
    assert_eq!(
        Value::Object(out.claims),
        json!({"name": "Jane", "tenant": "acme"})
    );
    assert_eq!(
        out.notes
            .iter()
            .map(|n| format!("{}: {}", n.claim, n.what))
            .collect::<Vec<_>>(),
        [
            "email: withheld: scope `email` not granted",
            "email_verified: withheld: scope `email` not granted"
        ]
    );
}

#[test]
fn upstream_then_client_rules_override_and_null_removes() {
    let mut c = config(vec![rule("tenant", "'global'"), rule("dept", "'d'")]);
    c.upstreams[0].claims = UpstreamClaims {
        rules: vec![rule("tenant", "'corp:' + upstream_id")],
        ..Default::default()
    };
    c.clients[0].claims = ClientClaims {
        rules: vec![rule("dept", "null"), rule("was", "claims.tenant")],
        ..Default::default()
    };
    let m = mapping(&c).unwrap();
    let id = identity();
    let out = eval_with(&m, &id, "app", ALL, TokenName::Access);
    assert_eq!(
        Value::Object(out.claims.clone()),
        json!({"tenant": "corp:corp", "was": "corp:corp"})
    );
    assert_eq!(out.sources["tenant"], "upstreams[corp].claims.rules[0]");
    assert_eq!(out.sources["was"], "clients[app].claims.rules[1]");
    // Another client does not get the app's rules.
    let out = eval_with(&m, &id, "other", ALL, TokenName::Access);
    assert_eq!(
        Value::Object(out.claims),
        json!({"tenant": "corp:corp", "dept": "d"})
    );
}

#[test]
fn a_missing_claim_sets_nothing_and_a_type_error_is_reported() {
    let m = mapping(&config(vec![
        rule("nick", "upstream.nickname"),
        rule("bad", "upstream.level + 'x'"),
    ]))
    .unwrap();
    let out = eval_with(&m, &identity(), "app", ALL, TokenName::Id);
    assert!(out.claims.is_empty());
    assert_eq!(out.notes[0].what, "no value: `nickname` is not there");
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].origin, "claims.rules[1]");
    assert_eq!(
        out.errors[0].message,
        "Unsupported binary operator 'add': Int(3), String(\"x\")"
    );
}

#[test]
fn a_bad_expression_is_refused_with_the_rule_and_position() {
    let err = mapping(&config(vec![
        rule("a", "'x'"),
        rule("authorities", "upstream.groups.map(g, 'ROLE_' + )"),
    ]))
    .unwrap_err();
    assert_eq!(
        err,
        "claims.rules[1].expr: rule for `authorities`: syntax error at line 1, column 34: \
         Syntax error: mismatched input ')' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}"
    );
    let mut when = rule("a", "1");
    when.when = Some("upstream.x ==".into());
    let mut c = config(vec![]);
    c.clients[0].claims.rules = vec![when];
    let err = mapping(&c).unwrap_err();
    assert!(
        err.starts_with(
            "clients[app].claims.rules[0].when: rule for `a`: syntax error at line 1, column 14: "
        ),
        "{err}"
    );
    // Config::validate names the key first.
    let e = c.validate().unwrap_err();
    assert_eq!(e.key, "clients[app].claims.rules[0].when");
}

#[test]
fn an_unknown_variable_is_refused() {
    let err = mapping(&config(vec![rule("a", "user.name")])).unwrap_err();
    assert_eq!(
        err,
        "claims.rules[0].expr: rule for `a`: unknown variable `user` at line 1, column 1 \
         (known: upstream, subject, upstream_id, client_id, scopes, token, claims)"
    );
}

#[test]
fn reserved_claims_cannot_be_produced() {
    for reserved in ["sub", "iss", "aud", "nonce", "acr", "scope"] {
        let err = mapping(&config(vec![rule(reserved, "'x'")])).unwrap_err();
        assert_eq!(
            err,
            format!(
                "claims.rules[0].claim: `{reserved}` is a protocol claim the provider sets \
                 itself; a rule cannot produce it"
            )
        );
    }
    assert_eq!(
        mapping(&config(vec![rule("my claim", "1")])).unwrap_err(),
        "claims.rules[0].claim: `my claim`: use printable ASCII without spaces, quotes or backslashes"
    );
    assert_eq!(
        mapping(&config(vec![rule("{tenant}_id", "1")])).unwrap_err(),
        "claims.rules[0].claim: `{tenant}_id`: the only placeholder is {upstream}"
    );
    let mut c = config(vec![]);
    c.upstreams[0].claims.rules = vec![rule("exp", "1")];
    assert!(mapping(&c)
        .unwrap_err()
        .starts_with("upstreams[corp].claims.rules[0].claim: `exp` is a protocol claim"));
}

#[test]
fn the_size_budget_is_checked_at_login() {
    let mut c = config(vec![rule(
        "blob",
        "upstream.groups.join('') + upstream.groups.join('')",
    )]);
    c.claims.max_bytes.access = 40;
    let m = mapping(&c).unwrap();
    let id = identity();
    let out = eval_with(&m, &id, "app", ALL, TokenName::Access);
    // {"blob":"<2 × 35 bytes>"}
    assert_eq!(out.bytes, 81);
    assert!(out.over_budget());
    let scopes: Vec<String> = ALL.split(' ').map(String::from).collect();
    assert_eq!(
        m.admit(&id, "app", &scopes),
        Err(Refusal {
            code: ErrorCode::ServerError,
            description: "the claims of the access token take 81 bytes, over the budget of 40 \
                          (claims.max_bytes.access)"
                .into()
        })
    );
    c.claims.max_bytes.access = 81;
    assert_eq!(mapping(&c).unwrap().admit(&id, "app", &scopes), Ok(()));
}

#[test]
fn a_failing_rule_refuses_the_login() {
    let m = mapping(&config(vec![rule("bad", "upstream.level + 'x'")])).unwrap();
    let scopes = vec!["openid".to_string()];
    let r = m.admit(&identity(), "app", &scopes).unwrap_err();
    assert_eq!(r.code, ErrorCode::ServerError);
    assert_eq!(
        r.description,
        "the claim rule claims.rules[0] for bad failed for this user"
    );
}

#[test]
fn the_gate_needs_one_group_at_each_level() {
    let mut c = config(vec![]);
    let id = identity();
    let scopes = vec!["openid".to_string()];
    assert_eq!(mapping(&c).unwrap().gate(&id, "app"), Ok(()));
    c.claims.allow_groups = vec!["nobody".into(), "admins".into()];
    assert_eq!(mapping(&c).unwrap().gate(&id, "app"), Ok(()));
    c.clients[0].claims.allow_groups = vec!["finance".into()];
    let m = mapping(&c).unwrap();
    assert_eq!(
        m.gate(&id, "app"),
        Err("clients[app].claims.allow_groups".into())
    );
    assert_eq!(m.gate(&id, "other"), Ok(()));
    assert_eq!(
        m.admit(&id, "app", &scopes).unwrap_err().code,
        ErrorCode::AccessDenied
    );
    // The upstream names its own groups claim.
    c.clients[0].claims.allow_groups.clear();
    c.upstreams[0].claims.groups_claim = Some("roles".into());
    c.upstreams[0].claims.allow_groups = vec!["a,b,c".into()];
    assert_eq!(
        mapping(&c).unwrap().gate(&id, "app"),
        Err("claims.allow_groups".into())
    );
    c.claims.allow_groups.clear();
    assert_eq!(mapping(&c).unwrap().gate(&id, "app"), Ok(()));
}

#[test]
fn claim_names_expand_the_upstream_placeholder() {
    let m = Mapping::from_config(
        &config(crate::config::default_claim_rules()),
        &["corp".to_string(), "test-auth.server".to_string()],
    )
    .unwrap();
    assert_eq!(
        m.claim_names(),
        [
            "authorities",
            "corp_sub",
            "email",
            "email_verified",
            "name",
            "preferred_username",
            "test_auth_server_sub"
        ]
    );
}

/// The shipped `config/adapter.toml` writes out the defaults, and they give
/// the seed's token exactly (the demo chain's tests assert it too).
#[test]
fn the_shipped_rules_are_the_defaults_and_give_the_seed_token() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/adapter.toml");
    let shipped =
        crate::config::load(Some(std::path::Path::new(path)), "AUTH_ADAPTER_UNUSED__").unwrap();
    assert_eq!(shipped.claims, crate::config::ClaimsConfig::default());
    let ids = vec!["test-auth-server".to_string()];
    let m = Mapping::from_config(&shipped, &ids).unwrap();
    let id = Identity {
        connector_id: "test-auth-server".into(),
        subject: "testuser".into(),
        claims: json!({
            "sub": "testuser", "iss": "http://up", "preferred_username": "testuser",
            "name": "Test User", "email": "test@example.org", "email_verified": true,
            "groups": ["admins", "dev-ops"], "nonce": "x", "locale": "de"
        })
        .as_object()
        .unwrap()
        .clone(),
        auth_time: None,
        upstream: None,
        amr: Vec::new(),
        acr: None,
    };
    for token in [TokenName::Id, TokenName::Access, TokenName::Userinfo] {
        let out = eval_with(&m, &id, "test-app", ALL, token);
        assert_eq!(
            Value::Object(out.claims),
            json!({
                "test_auth_server_sub": "testuser",
                "preferred_username": "testuser",
                "name": "Test User",
                "email": "test@example.org",
                "email_verified": true,
                "authorities": ["ROLE_USER", "ROLE_ADMINS", "ROLE_DEV_OPS"],
            })
        );
    }
}

#[test]
fn the_upstream_claims_a_rule_reads_are_found() {
    let fields = |s: &str| fields_of_upstream(s).map(|f| f.into_iter().collect::<Vec<_>>());
    // An optional read (`.?`) is no need of its own.
    assert_eq!(
        fields("upstream.name + ' ' + upstream.?family_name.orValue('')"),
        Some(vec!["name".to_string()])
    );
    assert_eq!(fields("upstream[?'x'].orValue(1)"), Some(vec![]));
    assert_eq!(
        fields("upstream['e-mail'] == 'x' && has(upstream.groups)"),
        Some(vec!["e-mail".to_string(), "groups".to_string()])
    );
    // Other variables and string contents are not reads of the map.
    assert_eq!(
        fields("upstream_id + 'upstream.secret' + subject"),
        Some(vec![])
    );
    // A quote of the other kind inside a string does not end it.
    assert_eq!(
        fields("\"it's \" + upstream.name + 'say \"upstream.x\"'"),
        Some(vec!["name".to_string()])
    );
    // The map as a whole: any claim may matter.
    assert_eq!(fields("size(upstream) > 2"), None);
    assert_eq!(fields("upstream[subject]"), None);
}

#[test]
fn the_seed_rules_read_the_profile_claims_and_the_gate_its_groups_claim() {
    let mut config = Config {
        upstreams: vec![serde_json::from_value(
            json!({"id": "corp", "issuer": "https://idp.example.org", "client_id": "a"}),
        )
        .unwrap()],
        ..Config::default()
    };
    let read = upstream_claims_read(&config, "corp").unwrap();
    assert_eq!(
        read.into_iter().collect::<Vec<_>>(),
        ["email", "email_verified", "name", "preferred_username"]
    );
    config.claims.rules.clear();
    config.claims.groups_claim = "roles".into();
    assert!(upstream_claims_read(&config, "corp").unwrap().is_empty());
    config.upstreams[0].claims.allow_groups = vec!["staff".into()];
    assert_eq!(
        upstream_claims_read(&config, "corp")
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        ["roles"]
    );
}
