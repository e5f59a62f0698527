//! The declarative claim mapping: `[[claims.rules]]` (then each upstream's
//! and each client's rules) compiled once from the configuration into CEL
//! programs, evaluated per token kind; the `allow_groups` login gate; the
//! per-token size budget. README "Claim mapping" is the user's guide.
//!
//! CEL (<https://github.com/google/cel-spec>) has no loops, no I/O and no
//! side effects: a rule cannot hang the provider or reach outside the
//! values it is given. Every expression is parsed at start-up; a rule that
//! does not parse stops start-up with its key and the position.
//!
//! A rule sees these variables:
//! - `upstream`: the upstream's claims (ID token and userinfo), a map;
//! - `subject`: the user's subject at the upstream;
//! - `upstream_id`, `client_id`: the ids in the configuration;
//! - `scopes`: the granted scopes, a list;
//! - `token`: `"id"`, `"access"` or `"userinfo"`;
//! - `claims`: what the earlier rules produced for this token.

pub mod preview;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::types::CelString;
use cel::{Context, Env, ExecutionError, Program, Value as CelValue};
use serde_json::{Map, Value};

use crate::config::{ClaimRule, ClaimsBudget, Config, TokenName};
use crate::customizer::{scope_of_claim, Identity, RESERVED_CLAIMS};
use crate::error::ErrorCode;

/// The variables a rule may read.
pub const VARIABLES: &[&str] = &[
    "upstream",
    "subject",
    "upstream_id",
    "client_id",
    "scopes",
    "token",
    "claims",
];

/// The placeholder of a claim name that becomes the upstream's id.
pub const UPSTREAM_PLACEHOLDER: &str = "{upstream}";

/// The claim-name form of an upstream id: `test-auth-server` → `test_auth_server`.
pub fn claim_id(connector_id: &str) -> String {
    connector_id.replace(['-', '.'], "_")
}

/// One compiled rule.
struct Rule {
    /// Where it was configured: `claims.rules[2]`, `upstreams[corp].claims.rules[0]`.
    origin: String,
    /// The claim, `{upstream}` unexpanded.
    claim: String,
    tokens: Vec<TokenName>,
    expr: Program,
    when: Option<Program>,
    /// Whether the rule reads `claims` (built for it only then).
    reads_claims: bool,
    /// Whether the rule reads `token`. A rule that reads neither `token`
    /// nor `claims` gives every token of one grant the same outcome, so
    /// [`Mapping::evaluate_tokens`] runs it once.
    reads_token: bool,
}

impl Rule {
    fn claim_for(&self, upstream_id: &str) -> String {
        self.claim
            .replace(UPSTREAM_PLACEHOLDER, &claim_id(upstream_id))
    }

    /// Whether the outcome may differ between the tokens of one grant.
    fn per_token(&self) -> bool {
        self.reads_claims || self.reads_token
    }
}

/// Rules and a gate at one level (global, one upstream, one client).
#[derive(Default)]
struct Layer {
    rules: Vec<Rule>,
    allow_groups: Vec<String>,
    /// Where `allow_groups` was configured, for logs.
    gate_key: String,
}

/// What a rule did, for the preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub origin: String,
    pub claim: String,
    pub what: String,
}

/// A rule that failed while evaluating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub origin: String,
    pub claim: String,
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.origin, self.claim, self.message)
    }
}

/// The claims of one token, and how they came about.
#[derive(Debug, Clone, Default)]
pub struct Mapped {
    pub claims: Map<String, Value>,
    /// The rule that set each claim.
    pub sources: BTreeMap<String, String>,
    /// Rules that set nothing, and claims the scopes withheld.
    pub notes: Vec<Note>,
    pub errors: Vec<RuleError>,
    /// Bytes of `claims` as compact JSON.
    pub bytes: usize,
    /// The budget of this token kind.
    pub budget: usize,
}

impl Mapped {
    pub fn over_budget(&self) -> bool {
        self.bytes > self.budget
    }
}

/// What a mapping is asked: whose claims, for which client and token.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub identity: &'a Identity,
    pub client_id: &'a str,
    pub scopes: &'a [String],
    pub token: TokenName,
}

/// Why a login may not go on to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `access_denied` (the gate) or `server_error` (a rule failed, or a
    /// token over its budget): RFC 6749 §4.1.2.1.
    pub code: ErrorCode,
    /// For the client's `error_description` (no quotes or backslashes,
    /// RFC 6749 §4.1.2.1).
    pub description: String,
}

/// The compiled mapping of a configuration.
pub struct Mapping {
    env: Arc<Env>,
    global: Layer,
    upstreams: HashMap<String, Layer>,
    clients: HashMap<String, Layer>,
    groups_claim: String,
    upstream_groups_claim: HashMap<String, String>,
    budget: ClaimsBudget,
    /// Every claim name a rule can produce (for discovery).
    names: Vec<String>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("claims", &self.names)
            .finish_non_exhaustive()
    }
}

/// `s.constantCase()`: upper case, and every character other than an ASCII
/// letter or digit as `_` (`dev-ops` → `DEV_OPS`), the form of Spring
/// Security's `ROLE_` authorities.
fn constant_case(this: &CelString<'_>) -> CelString<'static> {
    this.to_uppercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .into()
}

/// The CEL environment of rules: the standard library, the strings and
/// lists extensions (`split`, `join`, `lowerAscii`, `distinct`, `sort`, …)
/// and `constantCase`.
fn environment() -> Result<Env, String> {
    let mut env = Env::stdlib();
    let fail = |e: cel::DeclarationError| format!("claim rules: {e}");
    env.add_extension(cel::extensions::strings).map_err(fail)?;
    env.add_extension(cel::extensions::lists).map_err(fail)?;
    cel::add_member_overload!(env, fn constant_case: (CelString) -> CelString).map_err(fail)?;
    Ok(env)
}

/// Which of the per-token variables an expression reads.
#[derive(Debug, Clone, Copy, Default)]
struct Reads {
    claims: bool,
    token: bool,
}

/// Compiles one CEL expression of the rule at `key`.
fn compile(env: &Env, key: &str, claim: &str, source: &str) -> Result<(Program, Reads), String> {
    let program = env.compile(source).map_err(|errors| {
        let first = errors.errors.first();
        let (line, column) = first.map_or((1, 1), |e| (e.pos.0, e.pos.1));
        let message = first.map_or_else(|| "cannot be parsed".to_string(), |e| e.msg.clone());
        format!(
            "{key}: rule for `{claim}`: syntax error at line {line}, column {column}: {message}"
        )
    })?;
    let references = program.references();
    // Variables bound by a macro (`g` in `groups.map(g, …)`) are listed
    // too; a name that is neither is a typo that would fail at each login.
    let bound = macro_variables(source);
    if let Some(unknown) = references
        .variables()
        .into_iter()
        .find(|v| !VARIABLES.contains(v) && !bound.contains(*v))
    {
        let column = source.find(unknown).map_or(1, |i| i + 1);
        return Err(format!(
            "{key}: rule for `{claim}`: unknown variable `{unknown}` at line 1, column {column} \
             (known: {})",
            VARIABLES.join(", ")
        ));
    }
    let reads = Reads {
        claims: references.has_variable("claims"),
        token: references.has_variable("token"),
    };
    Ok((program, reads))
}

/// The identifiers a comprehension macro binds: the first argument of
/// `.map(`, `.filter(`, `.all(`, `.exists(`, `.exists_one(`, `.sortBy(`.
fn macro_variables(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for name in ["map", "filter", "all", "exists", "exists_one", "sortBy"] {
        let marker = format!(".{name}(");
        for (i, _) in source.match_indices(&marker) {
            let rest = &source[i + marker.len()..];
            let ident: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                out.insert(ident);
            }
        }
    }
    out
}

fn compile_rule(
    env: &Env,
    origin: String,
    rule: &ClaimRule,
    connector_ids: &[String],
) -> Result<Rule, String> {
    let claim = rule.claim.trim();
    if claim.is_empty() {
        return Err(format!("{origin}.claim: must not be empty"));
    }
    let stripped = claim.replace(UPSTREAM_PLACEHOLDER, "");
    // Printable ASCII, so a claim name can appear in an error_description
    // (RFC 6749 §4.1.2.1: no quote, no backslash) and in logs as is;
    // namespaced names (`https://example.org/roles`) are fine.
    if !stripped
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
    {
        return Err(format!(
            "{origin}.claim: `{claim}`: use printable ASCII without spaces, quotes or backslashes"
        ));
    }
    if stripped.contains(['{', '}']) {
        return Err(format!(
            "{origin}.claim: `{claim}`: the only placeholder is {UPSTREAM_PLACEHOLDER}"
        ));
    }
    let expanded: Vec<String> = if claim.contains(UPSTREAM_PLACEHOLDER) {
        connector_ids
            .iter()
            .map(|id| claim.replace(UPSTREAM_PLACEHOLDER, &claim_id(id)))
            .collect()
    } else {
        vec![claim.to_string()]
    };
    // OIDC Core §2, RFC 9068 §2.2: these are the provider's alone.
    if let Some(reserved) = expanded
        .iter()
        .find(|c| RESERVED_CLAIMS.contains(&c.as_str()))
    {
        return Err(format!(
            "{origin}.claim: `{reserved}` is a protocol claim the provider sets itself; \
             a rule cannot produce it"
        ));
    }
    if rule.tokens.is_empty() {
        return Err(format!(
            "{origin}.tokens: empty; list one or more of \"id\", \"access\", \"userinfo\""
        ));
    }
    let (expr, reads_expr) = compile(env, &format!("{origin}.expr"), claim, &rule.expr)?;
    let (when, reads_when) = match &rule.when {
        Some(w) => {
            let (p, reads) = compile(env, &format!("{origin}.when"), claim, w)?;
            (Some(p), reads)
        }
        None => (None, Reads::default()),
    };
    Ok(Rule {
        origin,
        claim: claim.to_string(),
        tokens: rule.tokens.clone(),
        expr,
        when,
        reads_claims: reads_expr.claims || reads_when.claims,
        reads_token: reads_expr.token || reads_when.token,
    })
}

/// The outcome of one CEL program: a value, or nothing because it read a
/// claim that is not there, or an error.
enum Outcome {
    Value(CelValue),
    Missing(String),
    Failed(String),
}

/// A JSON value as CEL sees it. Integers are `int` whenever they fit (CEL
/// spec "Numeric values": `int` is the default integer type), so that
/// `upstream.level > 2` compares like with like; serde would make every
/// non-negative JSON integer a `uint`.
fn to_cel(value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => CelValue::Int(i),
            (None, Some(u)) => CelValue::UInt(u),
            _ => CelValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(a) => CelValue::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(o) => object_to_cel(o),
    }
}

fn object_to_cel(o: &Map<String, Value>) -> CelValue {
    o.iter()
        .map(|(k, v)| (k.clone(), to_cel(v)))
        .collect::<HashMap<String, CelValue>>()
        .into()
}

fn run(program: &Program, ctx: &Context<'_, '_>) -> Outcome {
    match program.execute(ctx) {
        Ok(v) => Outcome::Value(v),
        Err(ExecutionError::NoSuchKey(key)) => Outcome::Missing(key.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// What one rule does to the claims of a token.
#[derive(Debug, Clone)]
enum Effect {
    /// The claim is left as it is; the note says why.
    Skip(String),
    /// The claim is removed (the rule has no value); the note says why.
    Unset(String),
    Set(Value),
    /// The rule failed; the claim is left as it is.
    Fail(String),
}

/// Runs `rule` (its `when`, then its expression) in `ctx`.
fn effect(rule: &Rule, ctx: &Context<'_, '_>) -> Effect {
    if let Some(when) = &rule.when {
        match run(when, ctx) {
            Outcome::Value(CelValue::Bool(true)) => {}
            Outcome::Value(CelValue::Bool(false)) => {
                return Effect::Skip("skipped: `when` is false".into())
            }
            Outcome::Missing(key) => {
                return Effect::Skip(format!("skipped: `when` reads `{key}`, which is not there"))
            }
            Outcome::Value(other) => {
                return Effect::Fail(format!(
                    "`when` must be true or false, not {}",
                    other.type_of()
                ))
            }
            Outcome::Failed(e) => return Effect::Fail(format!("when: {e}")),
        }
    }
    match run(&rule.expr, ctx) {
        Outcome::Value(CelValue::Null) => Effect::Unset("no value (null)".into()),
        Outcome::Missing(key) => Effect::Unset(format!("no value: `{key}` is not there")),
        Outcome::Value(v) => match v.json() {
            Ok(json) => Effect::Set(json),
            Err(e) => Effect::Fail(e.to_string()),
        },
        Outcome::Failed(e) => Effect::Fail(e),
    }
}

impl Mapped {
    /// Applies what `rule` did to `claim`.
    fn apply(&mut self, rule: &Rule, claim: String, effect: Effect) {
        let note = |what: String, claim: String| Note {
            origin: rule.origin.clone(),
            claim,
            what,
        };
        match effect {
            Effect::Skip(what) => self.notes.push(note(what, claim)),
            Effect::Unset(what) => {
                self.claims.remove(&claim);
                self.sources.remove(&claim);
                self.notes.push(note(what, claim));
            }
            Effect::Set(value) => {
                self.claims.insert(claim.clone(), value);
                self.sources.insert(claim, rule.origin.clone());
            }
            Effect::Fail(message) => self.errors.push(RuleError {
                origin: rule.origin.clone(),
                claim,
                message,
            }),
        }
    }

    /// OIDC Core §5.4: a standard claim only with the scope that releases it.
    fn withhold(&mut self, scopes: &[String]) {
        let withheld: Vec<(String, &'static str)> = self
            .claims
            .keys()
            .filter_map(|k| {
                scope_of_claim(k)
                    .filter(|s| !scopes.iter().any(|g| g == s))
                    .map(|s| (k.clone(), s))
            })
            .collect();
        for (claim, scope) in withheld {
            self.claims.remove(&claim);
            let origin = self.sources.remove(&claim).unwrap_or_default();
            self.notes.push(Note {
                origin,
                claim,
                what: format!("withheld: scope `{scope}` not granted"),
            });
        }
    }
}

impl Mapping {
    /// Compiles the rules of `config` (global, each upstream's, each
    /// client's). Errors start with the key: `claims.rules[2].expr: …`.
    pub fn from_config(config: &Config, connector_ids: &[String]) -> Result<Mapping, String> {
        let env = environment()?;
        let layer = |prefix: &str, rules: &[ClaimRule], allow: &[String], gate_key: String| {
            let rules = rules
                .iter()
                .enumerate()
                .map(|(i, r)| compile_rule(&env, format!("{prefix}.rules[{i}]"), r, connector_ids))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, String>(Layer {
                rules,
                allow_groups: allow.to_vec(),
                gate_key,
            })
        };
        let c = &config.claims;
        let global = layer(
            "claims",
            &c.rules,
            &c.allow_groups,
            "claims.allow_groups".into(),
        )?;
        let mut upstreams = HashMap::new();
        let mut upstream_groups_claim = HashMap::new();
        for u in &config.upstreams {
            let prefix = format!("upstreams[{}].claims", u.id);
            let l = layer(
                &prefix,
                &u.claims.rules,
                &u.claims.allow_groups,
                format!("{prefix}.allow_groups"),
            )?;
            upstreams.insert(u.id.clone(), l);
            if let Some(g) = &u.claims.groups_claim {
                upstream_groups_claim.insert(u.id.clone(), g.clone());
            }
        }
        let mut clients = HashMap::new();
        for cl in &config.clients {
            let prefix = format!("clients[{}].claims", cl.id);
            let l = layer(
                &prefix,
                &cl.claims.rules,
                &cl.claims.allow_groups,
                format!("{prefix}.allow_groups"),
            )?;
            clients.insert(cl.id.clone(), l);
        }
        let mut names = BTreeSet::new();
        for rule in global
            .rules
            .iter()
            .chain(upstreams.values().flat_map(|l| l.rules.iter()))
            .chain(clients.values().flat_map(|l| l.rules.iter()))
        {
            if rule.claim.contains(UPSTREAM_PLACEHOLDER) {
                names.extend(connector_ids.iter().map(|id| rule.claim_for(id)));
            } else {
                names.insert(rule.claim.clone());
            }
        }
        Ok(Mapping {
            env: Arc::new(env),
            global,
            upstreams,
            clients,
            groups_claim: c.groups_claim.clone(),
            upstream_groups_claim,
            budget: c.max_bytes,
            names: names.into_iter().collect(),
        })
    }

    /// Every claim name a rule can produce, sorted.
    pub fn claim_names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Whether a rule sets a claim in the access token but not in userinfo
    /// or the other way round: then `/userinfo` runs the rules for itself
    /// instead of echoing the access token's claims.
    pub fn userinfo_differs(&self) -> bool {
        std::iter::once(&self.global)
            .chain(self.upstreams.values())
            .chain(self.clients.values())
            .flat_map(|l| l.rules.iter())
            .any(|r| {
                r.tokens.contains(&TokenName::Access) != r.tokens.contains(&TokenName::Userinfo)
            })
    }

    fn layers<'s>(&'s self, upstream_id: &str, client_id: &str) -> [Option<&'s Layer>; 3] {
        [
            Some(&self.global),
            self.upstreams.get(upstream_id),
            self.clients.get(client_id),
        ]
    }

    /// The claims of one token: every rule that applies to `input.token`,
    /// in order, then the scope filter of OIDC Core §5.4.
    pub fn evaluate(&self, input: &Input<'_>) -> Mapped {
        self.evaluate_tokens(input, &[input.token])
            .pop()
            .unwrap_or_default()
    }

    /// [`Mapping::evaluate`] for each of `tokens` (`input.token` is not
    /// read), in that order: the claims of the tokens of one grant. The
    /// variables are converted to CEL once, and a rule that reads neither
    /// `token` nor `claims` runs once for all of them (its outcome cannot
    /// differ between them).
    pub fn evaluate_tokens(&self, input: &Input<'_>, tokens: &[TokenName]) -> Vec<Mapped> {
        let id = input.identity;
        let mut ctx = Context::with_env(self.env.clone());
        ctx.add_variable_from_value("upstream", object_to_cel(&id.claims));
        ctx.add_variable_from_value("subject", id.subject.as_str());
        ctx.add_variable_from_value("upstream_id", id.connector_id.as_str());
        ctx.add_variable_from_value("client_id", input.client_id);
        ctx.add_variable_from_value("scopes", input.scopes.to_vec());
        let rules: Vec<&Rule> = self
            .layers(&id.connector_id, input.client_id)
            .into_iter()
            .flatten()
            .flat_map(|l| l.rules.iter())
            .collect();
        // The outcome of each rule that is the same for every token.
        let mut shared: Vec<Option<Effect>> = vec![None; rules.len()];
        let mut all = Vec::with_capacity(tokens.len());
        for &token in tokens {
            let mut out = Mapped {
                budget: self.budget.of(token),
                ..Mapped::default()
            };
            let mut token_ctx = ctx.new_inner_scope();
            token_ctx.add_variable_from_value("token", token.as_str());
            for (i, rule) in rules.iter().enumerate() {
                if !rule.tokens.contains(&token) {
                    continue;
                }
                let effect = if rule.per_token() {
                    if rule.reads_claims {
                        let mut inner = token_ctx.new_inner_scope();
                        inner.add_variable_from_value("claims", object_to_cel(&out.claims));
                        effect(rule, &inner)
                    } else {
                        effect(rule, &token_ctx)
                    }
                } else {
                    shared[i]
                        .get_or_insert_with(|| effect(rule, &token_ctx))
                        .clone()
                };
                out.apply(rule, rule.claim_for(&id.connector_id), effect);
            }
            out.withhold(input.scopes);
            out.bytes = serde_json::to_vec(&out.claims).map_or(0, |b| b.len());
            all.push(out);
        }
        all
    }

    /// The user's groups at the upstream: the groups claim, a list of
    /// strings or one string.
    fn groups<'i>(&self, identity: &'i Identity) -> Vec<&'i str> {
        let claim = self
            .upstream_groups_claim
            .get(&identity.connector_id)
            .unwrap_or(&self.groups_claim);
        match identity.claims.get(claim) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => vec![s.as_str()],
            _ => Vec::new(),
        }
    }

    /// The `allow_groups` gate: each level that lists groups (global, the
    /// upstream's, the client's) needs the user in one of them. `Err`
    /// names the level that refused.
    pub fn gate(&self, identity: &Identity, client_id: &str) -> Result<(), String> {
        let groups = self.groups(identity);
        for layer in self
            .layers(&identity.connector_id, client_id)
            .into_iter()
            .flatten()
        {
            if !layer.allow_groups.is_empty()
                && !layer
                    .allow_groups
                    .iter()
                    .any(|g| groups.contains(&g.as_str()))
            {
                return Err(layer.gate_key.clone());
            }
        }
        Ok(())
    }

    /// Whether a login may go on to `client_id` with `scopes`: the gate,
    /// then every token the client can get mapped without error and within
    /// its budget, so a failure shows at login and not as a broken token.
    pub fn admit(
        &self,
        identity: &Identity,
        client_id: &str,
        scopes: &[String],
    ) -> Result<(), Refusal> {
        if let Err(level) = self.gate(identity, client_id) {
            tracing::info!(connector = %identity.connector_id, client = %client_id, gate = %level, "login refused: the user is in none of the allowed groups");
            return Err(Refusal {
                code: ErrorCode::AccessDenied,
                description: "the user is not in a group allowed to use this application".into(),
            });
        }
        let tokens: &[TokenName] = if scopes.iter().any(|s| s == "openid") {
            &[TokenName::Id, TokenName::Access, TokenName::Userinfo]
        } else {
            &[TokenName::Access]
        };
        let input = Input {
            identity,
            client_id,
            scopes,
            token: TokenName::Access,
        };
        for (&token, mapped) in tokens.iter().zip(self.evaluate_tokens(&input, tokens)) {
            if let Some(e) = mapped.errors.first() {
                tracing::error!(connector = %identity.connector_id, client = %client_id, token = token.as_str(), rule = %e.origin, claim = %e.claim, error = %e.message, "login refused: a claim rule failed");
                return Err(Refusal {
                    code: ErrorCode::ServerError,
                    description: format!(
                        "the claim rule {} for {} failed for this user",
                        e.origin, e.claim
                    ),
                });
            }
            if mapped.over_budget() {
                tracing::error!(connector = %identity.connector_id, client = %client_id, token = token.as_str(), bytes = mapped.bytes, budget = mapped.budget, "login refused: the token's claims are over their size budget");
                return Err(Refusal {
                    code: ErrorCode::ServerError,
                    description: format!(
                        "the claims of the {} token take {} bytes, over the budget of {} (claims.max_bytes.{})",
                        token.as_str(),
                        mapped.bytes,
                        mapped.budget,
                        token.as_str()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The upstream claims the rules of `config` read for users of upstream
/// `upstream_id` (its own rules, the deployment's and every client's, and
/// the groups claim when a gate needs it). `None` when a rule reads the
/// `upstream` map as a whole, so any claim may matter. The OIDC connector
/// fetches userinfo when its ID token lacks one of them (OIDC Core §5.3).
pub fn upstream_claims_read(config: &Config, upstream_id: &str) -> Option<BTreeSet<String>> {
    let upstream = config.upstreams.iter().find(|u| u.id == upstream_id);
    let rules = config
        .claims
        .rules
        .iter()
        .chain(upstream.into_iter().flat_map(|u| u.claims.rules.iter()))
        .chain(config.clients.iter().flat_map(|c| c.claims.rules.iter()));
    let mut names = BTreeSet::new();
    for rule in rules {
        for source in std::iter::once(&rule.expr).chain(rule.when.iter()) {
            names.extend(fields_of_upstream(source)?);
        }
    }
    let gated = !config.claims.allow_groups.is_empty()
        || upstream.is_some_and(|u| !u.claims.allow_groups.is_empty())
        || config
            .clients
            .iter()
            .any(|c| !c.claims.allow_groups.is_empty());
    if gated {
        let claim = upstream
            .and_then(|u| u.claims.groups_claim.clone())
            .unwrap_or_else(|| config.claims.groups_claim.clone());
        names.insert(claim);
    }
    Some(names)
}

/// The fields of the variable `upstream` a CEL expression needs:
/// `upstream.name`, `upstream['name']` (not the optional `upstream.?name`,
/// `upstream[?'name']`). `None` when it
/// uses `upstream` otherwise (passed whole to a function, indexed by a
/// computed key).
fn fields_of_upstream(source: &str) -> Option<BTreeSet<String>> {
    const VAR: &str = "upstream";
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    for (i, _) in source.match_indices(VAR) {
        let before = source[..i].chars().next_back();
        let rest = &source[i + VAR.len()..];
        // `upstream_id`, `my_upstream`, `x.upstream` are other names.
        if before.is_some_and(|c| ident(c) || c == '.') || rest.starts_with(ident) {
            continue;
        }
        if in_string_literal(&source[..i]) {
            continue;
        }
        let rest = rest.trim_start();
        if let Some(field) = rest.strip_prefix('.') {
            // `upstream.?x` reads a claim that may be absent: it alone does
            // not send a login to userinfo.
            let (optional, field) = match field.strip_prefix('?') {
                Some(f) => (true, f.trim_start()),
                None => (false, field.trim_start()),
            };
            let name: String = field.chars().take_while(|c| ident(*c)).collect();
            if name.is_empty() {
                return None;
            }
            if !optional {
                out.insert(name);
            }
        } else if let Some(index) = rest.strip_prefix('[') {
            let (optional, index) = match index.strip_prefix('?') {
                Some(i) => (true, i.trim_start()),
                None => (false, index.trim_start()),
            };
            let quote = index.chars().next().filter(|c| *c == '\'' || *c == '"')?;
            let name: String = index[1..].chars().take_while(|c| *c != quote).collect();
            if !optional {
                out.insert(name);
            }
        } else {
            return None;
        }
    }
    Some(out)
}

/// Whether the end of `prefix` lies inside a CEL string literal: the quote
/// that opened it (`'` or `"`) has not closed, backslash escapes counted.
fn in_string_literal(prefix: &str) -> bool {
    let mut open: Option<char> = None;
    let mut chars = prefix.chars();
    while let Some(c) = chars.next() {
        match open {
            Some(_) if c == '\\' => {
                chars.next();
            }
            Some(q) if c == q => open = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => open = Some(c),
            None => {}
        }
    }
    open.is_some()
}

#[cfg(test)]
mod tests;
