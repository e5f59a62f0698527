//! The token customizer: which claims an issued token carries, computed from
//! the authenticated [`Identity`], the client, the granted scopes and the
//! token kind.
//!
//! The provider adds the protocol claims (`iss`, `sub`, `aud`, `exp`, …)
//! itself, after the customizer, so a mapping can never overwrite them
//! (checklist C8).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{ClaimsConfig, CustomizerKind};

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
    /// `auth_time`), if it said; the engine uses "now" otherwise.
    #[serde(default)]
    pub auth_time: Option<i64>,
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

/// Broker mode: `<upstream>_sub`, configured mappings, `authorities`.
#[derive(Debug, Clone)]
pub struct MappedCustomizer {
    mappings: BTreeMap<String, String>,
    default_authorities: Vec<String>,
    groups_claim: String,
    group_prefix: String,
}

/// Identity-provider mode: the account's own claims, filtered by scope.
#[derive(Debug, Clone, Default)]
pub struct PassthroughCustomizer;

/// The `<upstream id>_sub` claim name: `test-auth-server` → `test_auth_server_sub`.
pub fn upstream_sub_claim(connector_id: &str) -> String {
    format!("{}_sub", connector_id.replace(['-', '.'], "_"))
}

impl MappedCustomizer {
    /// Refuses mappings onto reserved claims.
    pub fn new(config: &ClaimsConfig) -> Result<Self, String> {
        for target in config.mappings.keys() {
            if RESERVED_CLAIMS.contains(&target.as_str()) || target == "authorities" {
                return Err(format!(
                    "claims.mappings: `{target}` is reserved and cannot be mapped"
                ));
            }
        }
        Ok(MappedCustomizer {
            mappings: config.mappings.clone(),
            default_authorities: config.default_authorities.clone(),
            groups_claim: config.groups_claim.clone(),
            group_prefix: config.group_authority_prefix.clone(),
        })
    }

    fn authorities(&self, identity: &Identity) -> Vec<Value> {
        let mut out: Vec<String> = self.default_authorities.clone();
        if let Some(Value::Array(groups)) = identity.claims.get(&self.groups_claim) {
            for g in groups.iter().filter_map(Value::as_str) {
                let role = format!(
                    "{}{}",
                    self.group_prefix,
                    g.to_uppercase()
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                );
                if !out.contains(&role) {
                    out.push(role);
                }
            }
        }
        out.into_iter().map(Value::String).collect()
    }
}

impl TokenCustomizer for MappedCustomizer {
    fn claims(&self, ctx: &ClaimsContext<'_>) -> Map<String, Value> {
        let id = ctx.identity;
        let mut out = Map::new();
        for (target, source) in &self.mappings {
            if let Some(v) = id.claims.get(source) {
                if !v.is_null() {
                    out.insert(target.clone(), v.clone());
                }
            }
        }
        let mut out = filter(out, ctx.scopes);
        out.insert(
            upstream_sub_claim(&id.connector_id),
            Value::String(id.subject.clone()),
        );
        out.insert("authorities".into(), Value::Array(self.authorities(id)));
        out
    }
}

impl TokenCustomizer for PassthroughCustomizer {
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
}

/// Builds the customizer the configuration asks for.
pub fn from_config(config: &ClaimsConfig) -> Result<Box<dyn TokenCustomizer>, String> {
    Ok(match config.customizer {
        CustomizerKind::Mapped => Box::new(MappedCustomizer::new(config)?),
        CustomizerKind::Passthrough => Box::new(PassthroughCustomizer),
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
        }
    }

    fn scopes(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn mapped_produces_the_seed_claims() {
        let c = MappedCustomizer::new(&ClaimsConfig::default()).unwrap();
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
    fn reserved_claims_cannot_be_mapped() {
        let mut cfg = ClaimsConfig::default();
        cfg.mappings.insert("sub".into(), "email".into());
        assert!(MappedCustomizer::new(&cfg).unwrap_err().contains("`sub`"));
        let mut cfg = ClaimsConfig::default();
        cfg.mappings.insert("iss".into(), "name".into());
        assert!(MappedCustomizer::new(&cfg).is_err());
    }

    #[test]
    fn passthrough_filters_by_scope() {
        let id = identity();
        let s = scopes("openid email");
        let out = PassthroughCustomizer.claims(&ClaimsContext {
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
}
