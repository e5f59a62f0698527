//! The token customizer: which claims an issued token carries, computed from
//! the authenticated [`Identity`], the client, the granted scopes and the
//! token kind.
//!
//! The shipped [`MappedCustomizer`] runs the declarative rules of
//! [`crate::mapping`]. [`TokenCustomizer`] stays the hook for code: an
//! implementation that wraps a `MappedCustomizer` calls its `claims` first
//! and changes the result, so it runs after the declarative mapping.
//!
//! The provider adds the protocol claims (`iss`, `sub`, `aud`, `exp`, …)
//! itself, after the customizer, so a mapping can never overwrite them
//! (OIDC Core §2, §5.1: `sub`, `iss`, `aud` are the provider's alone).
//!
//! The `sub` itself follows each upstream's [`SubjectStrategy`]: the
//! upstream's subject as is, or [`namespaced_subject`].

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{Config, CustomizerKind, SubjectStrategy, TokenName, UpstreamConfig};
use crate::mapping::{Input, Mapping, Refusal};

/// Claims that only the provider sets.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "nonce",
    "auth_time",
    "azp",
    "at_hash",
    "acr",
    "amr",
    "jti",
    "typ",
    "client_id",
    "scope",
    "sid",
];

/// Who logged in, as a connector reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The connector (upstream) that authenticated the user.
    pub connector_id: String,
    /// The subject at that connector (upstream `sub`, or local username).
    pub subject: String,
    /// All claims the connector knows (upstream ID token + userinfo).
    pub claims: Map<String, Value>,
    /// When the user authenticated at the upstream (its ID token's
    /// `auth_time`, OIDC Core §2), if it said. `None`: the provider uses the
    /// time of this login.
    #[serde(default)]
    pub auth_time: Option<i64>,
    /// What an OIDC upstream handed back besides the claims, kept for
    /// logout (OIDC RP-Initiated Logout 1.0 §2: `id_token_hint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<crate::connector::UpstreamTokens>,
    /// How the user authenticated (OIDC Core §2 `amr`, values from RFC
    /// 8176 §2: `pwd`, `otp`, `mfa`, …); an upstream's own `amr` is passed
    /// through. Empty when unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// The authentication context class satisfied (OIDC Core §2 `acr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
}

/// Which token a set of claims is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    IdToken,
    AccessToken,
    UserInfo,
}

/// Input of a customization.
#[derive(Debug, Clone, Copy)]
pub struct ClaimsContext<'a> {
    pub identity: &'a Identity,
    pub client_id: &'a str,
    pub scopes: &'a [String],
    pub kind: TokenKind,
}

/// Maps an identity to token claims. Reserved claims in the output are dropped.
pub trait TokenCustomizer: Send + Sync + 'static {
    /// The `sub` of issued tokens.
    fn subject(&self, identity: &Identity) -> String {
        identity.subject.clone()
    }

    /// Extra claims of a token (besides the protocol claims).
    fn claims(&self, ctx: &ClaimsContext<'_>) -> Map<String, Value>;

    /// [`TokenCustomizer::claims`] for each of `kinds` (`ctx.kind` is not
    /// read), in that order: the tokens of one grant. A customizer may
    /// share work between them.
    fn claims_of_grant(
        &self,
        ctx: &ClaimsContext<'_>,
        kinds: &[TokenKind],
    ) -> Vec<Map<String, Value>> {
        kinds
            .iter()
            .map(|&kind| self.claims(&ClaimsContext { kind, ..*ctx }))
            .collect()
    }

    /// Every claim name [`TokenCustomizer::claims`] can emit, sorted
    /// (discovery's `claims_supported`, OIDC Discovery §3).
    fn claim_names(&self) -> Vec<String>;

    /// Whether the userinfo claims differ from the access token's (rules
    /// for one of them only): `/userinfo` then asks [`Self::claims`] for
    /// [`TokenKind::UserInfo`] instead of echoing the access token.
    fn userinfo_differs(&self) -> bool {
        false
    }

    /// Whether a login of `identity` may go on to `client_id` with
    /// `scopes` (the `allow_groups` gate, rules that fail, tokens over
    /// budget). Asked when a login completes and before single sign-on
    /// answers a client. Default: yes.
    fn admit(
        &self,
        _identity: &Identity,
        _client_id: &str,
        _scopes: &[String],
    ) -> Result<(), Refusal> {
        Ok(())
    }
}

impl TokenKind {
    /// The name rules use for this kind.
    pub fn name(self) -> TokenName {
        match self {
            TokenKind::IdToken => TokenName::Id,
            TokenKind::AccessToken => TokenName::Access,
            TokenKind::UserInfo => TokenName::Userinfo,
        }
    }
}

/// The standard claims of OIDC Core §5.1 a customizer may release, plus
/// `groups` (released with `profile`, see [`scope_of_claim`]).
pub const STANDARD_CLAIMS: &[&str] = &[
    "name",
    "family_name",
    "given_name",
    "middle_name",
    "nickname",
    "preferred_username",
    "profile",
    "picture",
    "website",
    "gender",
    "birthdate",
    "zoneinfo",
    "locale",
    "updated_at",
    "groups",
    "email",
    "email_verified",
    "phone_number",
    "phone_number_verified",
    "address",
];

/// The adapter's `sub` for `subject` at the connector `connector_id` under
/// the namespaced strategy:
///
/// `base64url_nopad(SHA-256(be32(len(id)) ‖ id ‖ be32(len(subject)) ‖ subject))`
///
/// where `len` is the UTF-8 byte length and `be32` a 4-byte big-endian
/// integer. The length prefixes make the encoding injective, so
/// (`a`, `bc`) and (`ab`, `c`) differ; the result is 43 ASCII characters,
/// within OIDC Core §2's 255, stable, and unique across upstreams.
pub fn namespaced_subject(connector_id: &str, subject: &str) -> String {
    let mut h = Sha256::new();
    for part in [connector_id, subject] {
        // Ids and subjects are far below 4 GiB; saturate rather than wrap.
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        h.update(len.to_be_bytes());
        h.update(part.as_bytes());
    }
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// The subject strategy of each connector (absent: the subject as is).
#[derive(Debug, Clone, Default)]
pub struct SubjectStrategies(HashMap<String, SubjectStrategy>);

impl SubjectStrategies {
    /// Refuses the `upstream` strategy with two or more upstreams unless
    /// `allow_shared_subjects` is set: two upstreams may each have a user
    /// `alice` who are not the same person (OIDC Core §2: `sub` is unique
    /// only within its issuer).
    pub fn from_upstreams(upstreams: &[UpstreamConfig]) -> Result<Self, String> {
        if upstreams.len() >= 2 {
            if let Some(up) = upstreams
                .iter()
                .find(|u| u.subject == SubjectStrategy::Upstream && !u.allow_shared_subjects)
            {
                return Err(format!(
                    "upstreams[{}].subject = \"upstream\": with {} upstreams two users could \
                     get the same `sub`; set subject = \"namespaced\", or \
                     allow_shared_subjects = true if the upstreams share one user base",
                    up.id,
                    upstreams.len()
                ));
            }
        }
        Ok(SubjectStrategies(
            upstreams
                .iter()
                .map(|u| (u.id.clone(), u.subject))
                .collect(),
        ))
    }

    /// The `sub` of issued tokens for `identity`.
    pub fn subject(&self, identity: &Identity) -> String {
        match self.0.get(&identity.connector_id) {
            Some(SubjectStrategy::Namespaced) => {
                namespaced_subject(&identity.connector_id, &identity.subject)
            }
            Some(SubjectStrategy::Upstream) | None => identity.subject.clone(),
        }
    }
}

/// OIDC Core §5.4: the standard claims each scope releases. Claims not listed
/// here (custom ones such as `authorities`) are not scope-bound.
pub fn scope_of_claim(claim: &str) -> Option<&'static str> {
    match claim {
        "name" | "family_name" | "given_name" | "middle_name" | "nickname"
        | "preferred_username" | "profile" | "picture" | "website" | "gender" | "birthdate"
        | "zoneinfo" | "locale" | "updated_at" | "groups" => Some("profile"),
        "email" | "email_verified" => Some("email"),
        "phone_number" | "phone_number_verified" => Some("phone"),
        "address" => Some("address"),
        _ => None,
    }
}

fn allowed(claim: &str, scopes: &[String]) -> bool {
    scope_of_claim(claim).is_none_or(|s| scopes.iter().any(|g| g == s))
}

/// Removes reserved claims and claims the scopes do not release.
pub fn filter(mut claims: Map<String, Value>, scopes: &[String]) -> Map<String, Value> {
    claims.retain(|k, _| !RESERVED_CLAIMS.contains(&k.as_str()) && allowed(k, scopes));
    claims
}

/// Broker mode: the claims the mapping rules produce (README "Claim mapping").
#[derive(Debug, Clone)]
pub struct MappedCustomizer {
    mapping: Arc<Mapping>,
    subjects: SubjectStrategies,
}

/// Identity-provider mode: the account's own claims, filtered by scope.
#[derive(Debug, Clone, Default)]
pub struct PassthroughCustomizer {
    subjects: SubjectStrategies,
    /// For its `allow_groups` gate only.
    mapping: Option<Arc<Mapping>>,
}

impl PassthroughCustomizer {
    pub fn new(subjects: SubjectStrategies) -> Self {
        PassthroughCustomizer {
            subjects,
            mapping: None,
        }
    }
}

/// The `<upstream id>_sub` claim name: `test-auth-server` → `test_auth_server_sub`.
pub fn upstream_sub_claim(connector_id: &str) -> String {
    format!("{}_sub", connector_id.replace(['-', '.'], "_"))
}

impl MappedCustomizer {
    pub fn new(mapping: Arc<Mapping>, subjects: SubjectStrategies) -> Self {
        MappedCustomizer { mapping, subjects }
    }

    /// The compiled rules.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }
}

impl TokenCustomizer for MappedCustomizer {
    fn subject(&self, identity: &Identity) -> String {
        self.subjects.subject(identity)
    }

    fn claim_names(&self) -> Vec<String> {
        self.mapping.claim_names()
    }

    fn claims(&self, ctx: &ClaimsContext<'_>) -> Map<String, Value> {
        self.claims_of_grant(ctx, &[ctx.kind])
            .pop()
            .unwrap_or_default()
    }

    fn claims_of_grant(
        &self,
        ctx: &ClaimsContext<'_>,
        kinds: &[TokenKind],
    ) -> Vec<Map<String, Value>> {
        let input = Input {
            identity: ctx.identity,
            client_id: ctx.client_id,
            scopes: ctx.scopes,
            token: ctx.kind.name(),
        };
        let tokens: Vec<TokenName> = kinds.iter().map(|k| k.name()).collect();
        self.mapping
            .evaluate_tokens(&input, &tokens)
            .into_iter()
            .map(|mapped| {
                // The login was admitted with the same rules (`admit`), so
                // this is the same input failing again: the claim is left out.
                for e in &mapped.errors {
                    tracing::warn!(rule = %e.origin, claim = %e.claim, error = %e.message, "claim rule failed; claim left out");
                }
                filter(mapped.claims, ctx.scopes)
            })
            .collect()
    }

    fn admit(
        &self,
        identity: &Identity,
        client_id: &str,
        scopes: &[String],
    ) -> Result<(), Refusal> {
        self.mapping.admit(identity, client_id, scopes)
    }

    fn userinfo_differs(&self) -> bool {
        self.mapping.userinfo_differs()
    }
}

impl TokenCustomizer for PassthroughCustomizer {
    fn subject(&self, identity: &Identity) -> String {
        self.subjects.subject(identity)
    }

    fn claim_names(&self) -> Vec<String> {
        let mut names: Vec<String> = STANDARD_CLAIMS.iter().map(|c| c.to_string()).collect();
        names.sort();
        names
    }

    fn claims(&self, ctx: &ClaimsContext<'_>) -> Map<String, Value> {
        let claims = ctx
            .identity
            .claims
            .iter()
            .filter(|(k, _)| scope_of_claim(k).is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        filter(claims, ctx.scopes)
    }

    fn admit(
        &self,
        identity: &Identity,
        client_id: &str,
        _scopes: &[String],
    ) -> Result<(), Refusal> {
        let Some(mapping) = &self.mapping else {
            return Ok(());
        };
        mapping.gate(identity, client_id).map_err(|level| {
            tracing::info!(connector = %identity.connector_id, client = %client_id, gate = %level, "login refused: the user is in none of the allowed groups");
            Refusal {
                code: crate::error::ErrorCode::AccessDenied,
                description: "the user is not in a group allowed to use this application".into(),
            }
        })
    }
}

/// Builds the customizer the configuration asks for; refuses an unsafe
/// subject strategy (see [`SubjectStrategies::from_upstreams`]).
pub fn from_config(config: &Config) -> Result<Box<dyn TokenCustomizer>, String> {
    let subjects = SubjectStrategies::from_upstreams(&config.upstreams)?;
    let mut connector_ids: Vec<String> = config.upstreams.iter().map(|u| u.id.clone()).collect();
    if config.accounts.enabled || !config.local_users.is_empty() {
        connector_ids.push(crate::accounts::LOCAL_CONNECTOR_ID.to_string());
    }
    let mapping = Arc::new(Mapping::from_config(config, &connector_ids)?);
    Ok(match config.claims.customizer {
        CustomizerKind::Mapped => Box::new(MappedCustomizer::new(mapping, subjects)),
        CustomizerKind::Passthrough => Box::new(PassthroughCustomizer {
            subjects,
            mapping: Some(mapping),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity() -> Identity {
        let claims = json!({
            "sub": "testuser", "iss": "http://up", "preferred_username": "testuser",
            "name": "Test User", "email": "test@example.org", "email_verified": true,
            "groups": ["admins", "dev-ops"], "nonce": "x"
        });
        Identity {
            connector_id: "test-auth-server".into(),
            subject: "testuser".into(),
            claims: claims.as_object().unwrap().clone(),
            auth_time: None,
            upstream: None,
            amr: Vec::new(),
            acr: None,
        }
    }

    fn upstream(id: &str, subject: SubjectStrategy, allow_shared: bool) -> UpstreamConfig {
        serde_json::from_value(json!({
            "id": id, "issuer": format!("http://{id}.example"), "client_id": "adapter",
            "subject": subject, "allow_shared_subjects": allow_shared,
        }))
        .unwrap()
    }

    /// The shipped mapping (`[claims]` defaults) for `connector_ids`.
    fn mapped_for(connector_ids: &[&str], subjects: SubjectStrategies) -> MappedCustomizer {
        let ids: Vec<String> = connector_ids.iter().map(|s| s.to_string()).collect();
        let mapping = Mapping::from_config(&Config::default(), &ids).unwrap();
        MappedCustomizer::new(Arc::new(mapping), subjects)
    }

    fn mapped() -> MappedCustomizer {
        mapped_for(&["test-auth-server"], SubjectStrategies::default())
    }

    fn scopes(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn mapped_produces_the_seed_claims() {
        let c = mapped();
        let id = identity();
        let s = scopes("openid profile");
        let out = c.claims(&ClaimsContext {
            identity: &id,
            client_id: "test-app",
            scopes: &s,
            kind: TokenKind::AccessToken,
        });
        assert_eq!(out["test_auth_server_sub"], "testuser");
        assert_eq!(out["preferred_username"], "testuser");
        assert_eq!(out["name"], "Test User");
        assert_eq!(
            out["authorities"],
            json!(["ROLE_USER", "ROLE_ADMINS", "ROLE_DEV_OPS"])
        );
        // email scope not granted: no email.
        assert!(!out.contains_key("email"));
        assert!(!out.contains_key("nonce"));
        assert!(!out.contains_key("iss"));
    }

    #[test]
    fn passthrough_filters_by_scope() {
        let id = identity();
        let s = scopes("openid email");
        let out = PassthroughCustomizer::default().claims(&ClaimsContext {
            identity: &id,
            client_id: "c",
            scopes: &s,
            kind: TokenKind::IdToken,
        });
        assert_eq!(out["email"], "test@example.org");
        assert_eq!(out["email_verified"], true);
        assert!(!out.contains_key("name"));
        assert!(!out.contains_key("sub"));
    }

    #[test]
    fn namespaced_subject_is_the_documented_formula() {
        // Computed here byte by byte, apart from the code under test.
        let mut input = Vec::new();
        input.extend_from_slice(&[0, 0, 0, 4]);
        input.extend_from_slice(b"corp");
        input.extend_from_slice(&[0, 0, 0, 5]);
        input.extend_from_slice(b"alice");
        let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(&input));
        assert_eq!(namespaced_subject("corp", "alice"), expected);
        assert_eq!(expected.len(), 43);
        // The length prefixes keep the split between id and subject.
        assert_ne!(namespaced_subject("ab", "c"), namespaced_subject("a", "bc"));
    }

    #[test]
    fn namespaced_subjects_differ_per_upstream_and_keep_the_raw_sub() {
        let ups = [
            upstream("corp", SubjectStrategy::Namespaced, false),
            upstream("partner", SubjectStrategy::Namespaced, false),
        ];
        let subjects = SubjectStrategies::from_upstreams(&ups).unwrap();
        let c = mapped_for(&["corp", "partner"], subjects);
        let mut a = identity();
        a.connector_id = "corp".into();
        let mut b = identity();
        b.connector_id = "partner".into();
        assert_eq!(c.subject(&a), namespaced_subject("corp", "testuser"));
        assert_eq!(c.subject(&b), namespaced_subject("partner", "testuser"));
        assert_ne!(c.subject(&a), c.subject(&b));
        let s = scopes("openid");
        let out = c.claims(&ClaimsContext {
            identity: &a,
            client_id: "c",
            scopes: &s,
            kind: TokenKind::IdToken,
        });
        assert_eq!(out["corp_sub"], "testuser");
    }

    #[test]
    fn upstream_strategy_keeps_the_subject() {
        let ups = [upstream("corp", SubjectStrategy::Upstream, false)];
        let subjects = SubjectStrategies::from_upstreams(&ups).unwrap();
        let mut a = identity();
        a.connector_id = "corp".into();
        assert_eq!(subjects.subject(&a), "testuser");
        let c = PassthroughCustomizer::new(subjects);
        assert_eq!(c.subject(&a), "testuser");
    }

    #[test]
    fn shared_subjects_across_upstreams_need_the_flag() {
        let err = SubjectStrategies::from_upstreams(&[
            upstream("corp", SubjectStrategy::Namespaced, false),
            upstream("partner", SubjectStrategy::Upstream, false),
        ])
        .unwrap_err();
        assert!(err.starts_with("upstreams[partner].subject"), "{err}");
        assert!(SubjectStrategies::from_upstreams(&[
            upstream("corp", SubjectStrategy::Upstream, true),
            upstream("partner", SubjectStrategy::Upstream, true),
        ])
        .is_ok());
    }

    #[test]
    fn claim_names_list_what_the_customizers_emit() {
        let c = mapped_for(&["test-auth-server", "local"], SubjectStrategies::default());
        assert_eq!(
            c.claim_names(),
            [
                "authorities",
                "email",
                "email_verified",
                "local_sub",
                "name",
                "preferred_username",
                "test_auth_server_sub",
            ]
        );
        let names = PassthroughCustomizer::default().claim_names();
        for claim in STANDARD_CLAIMS {
            assert!(scope_of_claim(claim).is_some(), "{claim}");
            assert!(names.iter().any(|n| n == claim), "{claim}");
        }
        assert_eq!(names.len(), STANDARD_CLAIMS.len());
    }
}
