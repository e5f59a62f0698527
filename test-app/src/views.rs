//! HTML views: the askama templates (under `templates/test-app/`) and the view
//! models that feed them, chiefly [`ClaimRow`], which turns a claim into a
//! table row with a stable element id (`claim-<name>` for the access token,
//! `idclaim-<name>` for the ID token), readable UTC times for `exp`/`iat`/
//! `auth_time`/`nbf`, and highlighting for the identity claims the adapter maps.

use askama::Template;
use askama_web::WebTemplate;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::lifecycle::ApiAnswer;
use crate::store::{BackchannelLogout, Session};
use crate::tokens::Claims;

/// The header bar: who is logged in, if the page knows.
#[derive(Debug, Clone, Default)]
pub struct Nav {
    /// Display name of the logged-in user.
    pub user: Option<String>,
    /// False on pages that do not look at the session (errors), which then
    /// show no login status at all.
    pub status_known: bool,
}

impl Nav {
    /// A nav for a page that knows the session state.
    pub fn for_session(session: Option<&Session>) -> Nav {
        Nav {
            user: session.map(Session::display_name),
            status_known: true,
        }
    }

    /// A nav that shows no login status.
    pub fn anonymous() -> Nav {
        Nav::default()
    }
}

/// `GET /`.
#[derive(Template, WebTemplate)]
#[template(path = "test-app/home.html")]
pub struct HomePage {
    /// Header bar.
    pub nav: Nav,
    /// The configured issuer.
    pub issuer: String,
    /// Our client id.
    pub client_id: String,
    /// Our redirect URI.
    pub redirect_uri: String,
    /// Requested scopes, space separated.
    pub scopes: String,
    /// Whether discovery has succeeded at least once.
    pub provider_discovered: bool,
    /// Set when a back-channel logout ended this browser's session.
    pub backchannel_notice: Option<String>,
}

/// `GET /authenticated` with a session.
#[derive(Template, WebTemplate)]
#[template(path = "test-app/authenticated.html")]
pub struct AuthenticatedPage {
    /// Header bar.
    pub nav: Nav,
    /// `preferred_username` / `name` / `sub`.
    pub display_name: String,
    /// First letter of `display_name`, for the avatar.
    pub initial: String,
    /// `sub` of the ID token.
    pub sub: String,
    /// `name`, if present.
    pub name: Option<String>,
    /// `email`, if present.
    pub email: Option<String>,
    /// `authorities`, as a list.
    pub authorities: Vec<String>,
    /// The provider's issuer as stated in the ID token.
    pub issuer: String,
    /// Access-token claim rows.
    pub access_rows: Vec<ClaimRow>,
    /// ID-token claim rows.
    pub id_rows: Vec<ClaimRow>,
    /// Access-token JOSE header, pretty JSON.
    pub access_header: String,
    /// ID-token JOSE header, pretty JSON.
    pub id_header: String,
    /// Raw access token.
    pub access_token: String,
    /// Raw ID token.
    pub id_token: String,
    /// When this session started, UTC.
    pub session_started: String,
    /// Whether the session holds a refresh token (the token itself is never shown).
    pub refresh_token_held: bool,
    /// How many times the tokens were refreshed, and when last.
    pub refreshes: String,
    /// A back-channel logout that targeted this session, if one arrived.
    pub backchannel: Option<String>,
}

/// One answer of the protected API, for display.
#[derive(Debug, Clone)]
pub struct ApiCallView {
    /// HTTP status of the API.
    pub status: u16,
    /// The JSON body, pretty.
    pub body: String,
    /// The RFC 6750 `WWW-Authenticate` challenge.
    pub www_authenticate: Option<String>,
    /// `error_description` of the body, if any.
    pub error_description: Option<String>,
}

impl From<&ApiAnswer> for ApiCallView {
    fn from(a: &ApiAnswer) -> Self {
        ApiCallView {
            status: a.status,
            body: serde_json::to_string_pretty(&a.body).unwrap_or_default(),
            www_authenticate: a.www_authenticate.clone(),
            error_description: a
                .body
                .get("error_description")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }
}

/// `POST /call-api`: what the protected API answered.
#[derive(Template, WebTemplate)]
#[template(path = "test-app/api_call.html")]
pub struct ApiCallPage {
    /// Header bar.
    pub nav: Nav,
    /// The answer shown (after the refresh, if one happened).
    pub answer: ApiCallView,
    /// The 401 that triggered a refresh, when the tokens were refreshed.
    pub before_refresh: Option<ApiCallView>,
    /// How many times this session's tokens were refreshed.
    pub refresh_count: u32,
}

impl ApiCallPage {
    /// The page for `session` (after any refresh).
    pub fn new(
        session: &Session,
        answer: ApiCallView,
        before_refresh: Option<ApiCallView>,
    ) -> Self {
        ApiCallPage {
            nav: Nav::for_session(Some(session)),
            answer,
            before_refresh,
            refresh_count: session.refresh_count,
        }
    }
}

/// `GET /logged-out`: the provider confirmed the logout.
#[derive(Template, WebTemplate)]
#[template(path = "test-app/logged_out.html")]
pub struct LoggedOutPage {
    /// Header bar.
    pub nav: Nav,
    /// A back-channel logout for the session that was logged out, if one arrived.
    pub backchannel: Option<String>,
}

/// The line the pages show for a back-channel logout.
pub fn backchannel_line(event: &BackchannelLogout, now: i64) -> String {
    let when = time_view(event.received_at, now)
        .map(|t| format!("{} ({})", t.utc, t.relative))
        .unwrap_or_default();
    let about = match (&event.sid, &event.sub) {
        (Some(sid), _) => format!("session sid {sid}"),
        (None, Some(sub)) => format!("every session of sub {sub}"),
        (None, None) => "no session".to_owned(),
    };
    format!(
        "A back-channel logout for {about} arrived at {when}; it ended {} local session(s).",
        event.sessions_ended
    )
}

/// `GET /logout`: confirm page.
#[derive(Template, WebTemplate)]
#[template(path = "test-app/logout.html")]
pub struct LogoutPage {
    /// Header bar.
    pub nav: Nav,
    /// Whether the provider advertised an `end_session_endpoint`.
    pub provider_logout: bool,
}

/// Any error ([`crate::AppError`]).
#[derive(Template, WebTemplate)]
#[template(path = "test-app/error.html")]
pub struct ErrorPage {
    /// Header bar.
    pub nav: Nav,
    /// HTTP status code.
    pub status: u16,
    /// Its reason phrase.
    pub reason: String,
    /// Stable error code (`id="error-code"`).
    pub code: String,
    /// Headline.
    pub title: String,
    /// What happened.
    pub message: String,
    /// What to do.
    pub hint: String,
    /// OAuth `error` from the provider.
    pub provider_error: Option<String>,
    /// OAuth `error_description` from the provider.
    pub provider_error_description: Option<String>,
    /// Whether to show a "Log in again" button.
    pub retry: bool,
}

/// A readable rendering of a NumericDate claim.
#[derive(Debug, Clone)]
pub struct TimeView {
    /// `2026-01-02 03:04:05 UTC`.
    pub utc: String,
    /// ISO 8601 for `<time datetime>`.
    pub iso: String,
    /// `in 4 min` / `12 min ago`.
    pub relative: String,
    /// Whether the instant is in the past (used to flag an expired `exp`).
    pub past: bool,
}

/// One claim as a table row.
#[derive(Debug, Clone)]
pub struct ClaimRow {
    /// Claim name.
    pub name: String,
    /// Element id of the value cell, e.g. `claim-sub`.
    pub dom_id: String,
    /// The value as compact JSON (the cell's `data-json`).
    pub json: String,
    /// The value as display text: strings unquoted, others JSON.
    pub text: String,
    /// For arrays of strings (e.g. `authorities`): the items, shown as chips.
    pub list: Option<Vec<String>>,
    /// For NumericDate claims: the readable time.
    pub time: Option<TimeView>,
    /// Identity claims the adapter maps (`sub`, `*_sub`, `preferred_username`, `name`, `email`, `authorities`).
    pub highlight: bool,
    /// Short description of a registered claim.
    pub note: &'static str,
    /// Whether this is an `exp` in the past.
    pub expired: bool,
}

const TIME_CLAIMS: [&str; 5] = ["exp", "iat", "auth_time", "nbf", "updated_at"];
const REGISTERED: [(&str, &str); 15] = [
    ("iss", "issuer"),
    ("aud", "audience"),
    ("azp", "authorized party"),
    ("client_id", "client"),
    ("scope", "granted scopes"),
    ("exp", "expires"),
    ("iat", "issued at"),
    ("auth_time", "authenticated at"),
    ("nbf", "not before"),
    ("jti", "token id"),
    ("nonce", "nonce"),
    ("at_hash", "access-token hash"),
    ("sid", "session id"),
    ("acr", "auth context"),
    ("amr", "auth methods"),
];
const IDENTITY: [&str; 5] = ["sub", "preferred_username", "name", "email", "authorities"];

/// Whether `name` is one of the mapped identity claims that the page highlights.
pub fn is_identity_claim(name: &str) -> bool {
    IDENTITY.contains(&name) || (name.ends_with("_sub") && name.len() > 4)
}

fn sort_key(name: &str) -> (u8, usize, String) {
    if let Some(i) = IDENTITY.iter().position(|n| *n == name) {
        // sub first, then the *_sub claims (rank 1), then the rest of IDENTITY.
        let rank = if i == 0 { 0 } else { 2 };
        return (rank, i, String::new());
    }
    if is_identity_claim(name) {
        return (1, 0, name.to_owned());
    }
    if let Some(i) = REGISTERED.iter().position(|(n, _)| *n == name) {
        return (3, i, String::new());
    }
    (4, 0, name.to_owned())
}

/// `[A-Za-z0-9_-]` only, so the id is a safe CSS/HTML identifier.
fn dom_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Renders a unix time relative to `now`.
pub fn time_view(unix: i64, now: i64) -> Option<TimeView> {
    let at = OffsetDateTime::from_unix_timestamp(unix).ok()?;
    let fmt =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    let utc = at.format(&fmt).ok()?;
    let iso = at.format(&Rfc3339).ok()?;
    let delta = unix - now;
    let span = human_span(delta.unsigned_abs());
    let relative = if delta.abs() < 5 {
        "now".to_owned()
    } else if delta > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    };
    Some(TimeView {
        utc,
        iso,
        relative,
        past: delta < 0,
    })
}

fn human_span(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
        _ => format!("{} d", secs / 86_400),
    }
}

/// Builds the rows of a claims table, ordered: `sub`, `*_sub`, the other
/// identity claims, registered claims, then the rest alphabetically.
pub fn claim_rows(claims: &Claims, id_prefix: &str, now: i64) -> Vec<ClaimRow> {
    let mut rows: Vec<ClaimRow> = claims
        .iter()
        .map(|(name, value)| {
            let json = serde_json::to_string(value).unwrap_or_default();
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let list = value.as_array().and_then(|items| {
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            });
            let time = if TIME_CLAIMS.contains(&name.as_str()) {
                value.as_i64().and_then(|t| time_view(t, now))
            } else {
                None
            };
            let expired = name == "exp" && time.as_ref().is_some_and(|t| t.past);
            ClaimRow {
                dom_id: format!("{id_prefix}{}", dom_safe(name)),
                highlight: is_identity_claim(name),
                note: REGISTERED
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, d)| *d)
                    .unwrap_or(""),
                name: name.clone(),
                json,
                text,
                list,
                time,
                expired,
            }
        })
        .collect();
    rows.sort_by_key(|r| sort_key(&r.name));
    rows
}

fn string_claim(session: &Session, name: &str) -> Option<String> {
    session
        .id_token_claims
        .get(name)
        .or_else(|| session.access_token_claims.get(name))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn pretty(claims: &Claims) -> String {
    serde_json::to_string_pretty(claims).unwrap_or_default()
}

/// The current unix time.
pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

impl AuthenticatedPage {
    /// The page for `session`, with times relative to `now`.
    pub fn new(session: &Session, now: i64) -> Self {
        let authorities = session
            .access_token_claims
            .get("authorities")
            .or_else(|| session.id_token_claims.get("authorities"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        AuthenticatedPage {
            nav: Nav::for_session(Some(session)),
            display_name: session.display_name(),
            initial: session
                .display_name()
                .chars()
                .next()
                .map(|c| c.to_uppercase().to_string())
                .unwrap_or_default(),
            sub: string_claim(session, "sub").unwrap_or_default(),
            name: string_claim(session, "name"),
            email: string_claim(session, "email"),
            authorities,
            issuer: string_claim(session, "iss").unwrap_or_default(),
            access_rows: claim_rows(&session.access_token_claims, "claim-", now),
            id_rows: claim_rows(&session.id_token_claims, "idclaim-", now),
            access_header: pretty(&session.access_token_header),
            id_header: pretty(&session.id_token_header),
            access_token: session.access_token.clone(),
            id_token: session.id_token.clone(),
            session_started: time_view(session.created_at, now)
                .map(|t| format!("{} ({})", t.utc, t.relative))
                .unwrap_or_default(),
            refresh_token_held: session.refresh_token.is_some(),
            refreshes: match session.refreshed_at.and_then(|t| time_view(t, now)) {
                Some(t) => format!("{} (last {})", session.refresh_count, t.relative),
                None => session.refresh_count.to_string(),
            },
            backchannel: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn rows_are_ordered_and_highlighted() {
        let c = claims(json!({
            "zeta": 1, "iss": "http://127.0.0.1:9000", "exp": 1_700_000_600,
            "authorities": ["ROLE_USER"], "test_auth_server_sub": "testuser",
            "sub": "testuser", "name": "Test User"
        }));
        let rows = claim_rows(&c, "claim-", 1_700_000_000);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "sub",
                "test_auth_server_sub",
                "name",
                "authorities",
                "iss",
                "exp",
                "zeta"
            ]
        );
        let auth = rows.iter().find(|r| r.name == "authorities").unwrap();
        assert!(auth.highlight);
        assert_eq!(auth.dom_id, "claim-authorities");
        assert_eq!(auth.json, r#"["ROLE_USER"]"#);
        assert_eq!(auth.list.as_deref(), Some(&["ROLE_USER".to_owned()][..]));
        let exp = rows.iter().find(|r| r.name == "exp").unwrap();
        let t = exp.time.as_ref().unwrap();
        assert_eq!(t.utc, "2023-11-14 22:23:20 UTC");
        assert_eq!(t.relative, "in 10 min");
        assert!(!exp.expired);
        assert!(!rows.iter().find(|r| r.name == "iss").unwrap().highlight);
    }

    #[test]
    fn dom_ids_are_sanitised() {
        let c = claims(json!({"https://x.example/claim": "v"}));
        let rows = claim_rows(&c, "idclaim-", 0);
        assert_eq!(rows[0].dom_id, "idclaim-https___x_example_claim");
    }

    #[test]
    fn past_exp_is_flagged() {
        let c = claims(json!({"exp": 100}));
        let rows = claim_rows(&c, "claim-", 1000);
        assert!(rows[0].expired);
        assert_eq!(rows[0].time.as_ref().unwrap().relative, "15 min ago");
    }

    #[test]
    fn identity_claims() {
        assert!(is_identity_claim("test_auth_server_sub"));
        assert!(is_identity_claim("sub"));
        assert!(!is_identity_claim("_sub"));
        assert!(!is_identity_claim("iss"));
    }
}
