//! `adapter mapping preview`: the claims the adapter would put in the ID
//! token, the access token and the UserInfo response for given upstream
//! claims, which rule set each, the sizes against their budgets, the
//! login gate's answer and every rule error. No login, no server, no
//! database: only the configuration.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::{Input, Mapped, Mapping};
use crate::config::{Config, TokenName};
use crate::customizer::{Identity, SubjectStrategies};

/// What to preview.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub upstream: &'a str,
    pub client: &'a str,
    /// The upstream's claims (its ID token and userinfo), with its `sub`.
    pub claims: Map<String, Value>,
    /// The granted scopes; default: every scope the client may ask for.
    pub scopes: Option<Vec<String>>,
}

/// The preview as text (stable: golden files compare it exactly). Errs
/// when the request names what the configuration does not have.
pub fn preview(config: &Config, request: &Request<'_>) -> Result<String, String> {
    report(config, request).map(|r| r.text)
}

/// A preview and what it found (the command's exit code follows them).
#[derive(Debug, Clone)]
pub struct Report {
    pub text: String,
    /// Rule errors over the three tokens.
    pub rule_errors: usize,
    /// Some token's claims are over their budget.
    pub over_budget: bool,
}

/// [`preview`], with its findings.
pub fn report(config: &Config, request: &Request<'_>) -> Result<Report, String> {
    let local = crate::accounts::LOCAL_CONNECTOR_ID;
    let mut connector_ids: Vec<String> = config.upstreams.iter().map(|u| u.id.clone()).collect();
    if config.accounts.enabled || !config.local_users.is_empty() {
        connector_ids.push(local.to_string());
    }
    if !connector_ids.iter().any(|id| id == request.upstream) {
        return Err(format!(
            "no upstream `{}` in the configuration (configured: {})",
            request.upstream,
            connector_ids.join(", ")
        ));
    }
    let client = config
        .clients
        .iter()
        .find(|c| c.id == request.client)
        .ok_or_else(|| format!("no client `{}` in the configuration", request.client))?;
    let scopes = request
        .scopes
        .clone()
        .unwrap_or_else(|| client.allowed_scopes.clone());
    if let Some(s) = scopes.iter().find(|s| !client.allowed_scopes.contains(s)) {
        return Err(format!(
            "scope `{s}` is not among the allowed_scopes of client `{}`",
            client.id
        ));
    }
    let subject = match request.claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("the upstream claims have no `sub` (a non-empty string)".into()),
    };
    let mapping = Mapping::from_config(config, &connector_ids)?;
    let subjects = SubjectStrategies::from_upstreams(&config.upstreams)?;
    let identity = Identity {
        connector_id: request.upstream.to_string(),
        subject,
        claims: request.claims.clone(),
        auth_time: None,
        upstream: None,
        amr: Vec::new(),
        acr: None,
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Mapping preview: upstream {}, client {}",
        request.upstream, request.client
    );
    let _ = writeln!(out, "Scopes: {}", scopes.join(" "));
    let _ = writeln!(out, "sub: {}", subjects.subject(&identity));
    let _ = writeln!(
        out,
        "(the provider adds iss, sub, aud, exp, iat and the other protocol claims)"
    );
    let openid = scopes.iter().any(|s| s == "openid");
    let mut errors = Vec::new();
    let mut over_budget = false;
    for (token, title) in [
        (TokenName::Id, "ID token"),
        (TokenName::Access, "Access token"),
        (TokenName::Userinfo, "UserInfo"),
    ] {
        let _ = writeln!(out);
        if token != TokenName::Access && !openid {
            let _ = writeln!(out, "{title}: not issued (no openid scope)");
            continue;
        }
        let mapped = mapping.evaluate(&Input {
            identity: &identity,
            client_id: request.client,
            scopes: &scopes,
            token,
        });
        section(&mut out, title, token, &mapped);
        over_budget |= mapped.over_budget();
        errors.extend(
            mapped
                .errors
                .iter()
                .map(|e| format!("{} token: {e}", token.as_str())),
        );
    }
    let _ = writeln!(out);
    match mapping.gate(&identity, request.client) {
        Ok(()) => {
            let _ = writeln!(out, "Login gate: allowed");
        }
        Err(level) => {
            let _ = writeln!(
                out,
                "Login gate: DENIED by {level} (the client gets access_denied)"
            );
        }
    }
    let rule_errors = errors.len();
    if errors.is_empty() {
        let _ = writeln!(out, "Rule errors: none");
    } else {
        let _ = writeln!(out, "Rule errors (the login would fail with server_error):");
        for e in errors {
            let _ = writeln!(out, "  {e}");
        }
    }
    Ok(Report {
        text: out,
        rule_errors,
        over_budget,
    })
}

fn section(out: &mut String, title: &str, token: TokenName, mapped: &Mapped) {
    let _ = writeln!(
        out,
        "{title}: {} bytes of claims, budget {}",
        mapped.bytes, mapped.budget
    );
    if mapped.over_budget() {
        let _ = writeln!(
            out,
            "  WARNING: over the budget (claims.max_bytes.{}): the login would fail with server_error",
            token.as_str()
        );
    }
    let width = mapped.claims.keys().map(|k| k.len()).max().unwrap_or(0);
    let mut claims: Vec<(&String, &Value)> = mapped.claims.iter().collect();
    claims.sort_by(|a, b| a.0.cmp(b.0));
    for (claim, value) in claims {
        let source = mapped.sources.get(claim).map_or("", String::as_str);
        let _ = writeln!(out, "  {claim:<width$}  {value}  <- {source}");
    }
    for note in &mapped.notes {
        let _ = writeln!(out, "  - {}: {} ({})", note.claim, note.what, note.origin);
    }
}
