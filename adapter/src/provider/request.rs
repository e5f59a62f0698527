//! The authorization request (RFC 6749 §4.1.1, OIDC Core §3.1.2.1), parsed
//! into one validated type that the login flow carries to the code and the
//! token endpoint: its fields are declared once, here.
//!
//! Parameters are validated in the order the spec needs: client and redirect
//! URI first (errors there are an HTML page, never a redirect: RFC 6749
//! §4.1.2.1), everything else after (errors go to the client).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Client;
use crate::error::{ErrorCode, OAuthError};

/// Longest accepted `state`, `nonce`, `login_hint`… (bounded input).
pub const MAX_PARAM_LEN: usize = 2048;

/// `prompt` values we act on (OIDC Core §3.1.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    #[default]
    Default,
    /// Never show UI: `login_required` when there is no session.
    None,
    /// Force a fresh login.
    Login,
}

/// A validated authorization request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub prompt: Prompt,
    /// Seconds; a session older than this is re-authenticated.
    pub max_age: Option<i64>,
    /// Forwarded to the upstream (OIDC Core §3.1.2.1); its e-mail domain
    /// may also pick the connector ([`crate::route`]).
    #[serde(default)]
    pub login_hint: Option<String>,
    /// `upstream_hint`, this provider's extension parameter (OIDC Core
    /// §3.1.2.1 lets a provider define others): the connector to log in
    /// with, skipping the chooser. Well-formed here; that it names a
    /// connector the client may use is the route's to check.
    #[serde(default)]
    pub upstream_hint: Option<String>,
}

/// Why a request was refused, and how to say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// No redirect is safe: show a page.
    Page(&'static str),
    /// Redirect the error to the (validated) redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: OAuthError,
    },
}

impl AuthorizeRequest {
    /// Validates the parameters in the order the spec needs: client and
    /// redirect URI first (page errors), then everything else (redirects).
    pub fn parse(
        params: &[(String, String)],
        clients: &HashMap<String, Client>,
    ) -> Result<Self, AuthorizeError> {
        let mut map: HashMap<&str, &str> = HashMap::new();
        let mut repeated: Option<&str> = None;
        for (k, v) in params {
            // RFC 6749 §3.1: parameters must not be included more than once.
            if map.insert(k.as_str(), v.as_str()).is_some() && repeated.is_none() {
                repeated = Some(k.as_str());
            }
        }
        let get = |k: &str| map.get(k).copied().filter(|v| !v.is_empty());

        let client_id =
            get("client_id").ok_or(AuthorizeError::Page("The request has no client_id."))?;
        if matches!(repeated, Some("client_id" | "redirect_uri")) {
            return Err(AuthorizeError::Page(
                "client_id or redirect_uri is repeated.",
            ));
        }
        let client = clients.get(client_id).ok_or(AuthorizeError::Page(
            "The application (client_id) is not registered.",
        ))?;
        let redirect_uri =
            get("redirect_uri").ok_or(AuthorizeError::Page("The request has no redirect_uri."))?;
        // RFC 9700 §4.1.3, OAuth 2.1 §2.3.1: exact string match, no normalisation.
        if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
            return Err(AuthorizeError::Page(
                "The redirect_uri is not registered for this application.",
            ));
        }

        let state = get("state")
            .filter(|s| s.len() <= MAX_PARAM_LEN)
            .map(String::from);
        let fail = |error: OAuthError| AuthorizeError::Redirect {
            redirect_uri: redirect_uri.to_string(),
            state: state.clone(),
            error,
        };
        if get("state").is_some_and(|s| s.len() > MAX_PARAM_LEN) {
            return Err(fail(OAuthError::invalid_request("state is too long")));
        }
        if let Some(k) = repeated {
            return Err(fail(OAuthError::invalid_request(format!(
                "parameter {k} is repeated"
            ))));
        }
        // OIDC Core §6: request objects are not supported.
        if map.contains_key("request") {
            return Err(fail(OAuthError::new(
                ErrorCode::RequestNotSupported,
                "request objects are not supported",
            )));
        }
        if map.contains_key("request_uri") {
            return Err(fail(OAuthError::new(
                ErrorCode::RequestUriNotSupported,
                "request_uri is not supported",
            )));
        }
        // RFC 9700 §2.1.2: the authorization code flow only.
        match get("response_type") {
            None => {
                return Err(fail(OAuthError::invalid_request(
                    "response_type is required",
                )))
            }
            Some("code") => {}
            Some(_) => {
                return Err(fail(OAuthError::new(
                    ErrorCode::UnsupportedResponseType,
                    "only response_type=code is supported",
                )))
            }
        }
        if get("response_mode").is_some_and(|m| m != "query") {
            return Err(fail(OAuthError::invalid_request(
                "only response_mode=query is supported",
            )));
        }
        // OIDC Core §3.1.2.1: openid is required; other scopes are limited to the
        // client's allowed set, unknown ones ignored.
        let requested: Vec<&str> = get("scope")
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect();
        if !requested.contains(&"openid") {
            return Err(fail(OAuthError::invalid_scope("scope must contain openid")));
        }
        let mut scopes: Vec<String> = Vec::new();
        for s in requested {
            if (s == "openid" || client.allowed_scopes.iter().any(|a| a == s))
                && !scopes.iter().any(|x| x == s)
            {
                scopes.push(s.to_string());
            }
        }
        let nonce = get("nonce").map(String::from);
        if nonce.as_ref().is_some_and(|n| n.len() > MAX_PARAM_LEN) {
            return Err(fail(OAuthError::invalid_request("nonce is too long")));
        }
        // RFC 7636 §4.3 and RFC 9700 §2.1.1: S256 only; a
        // missing method means `plain`, which is refused.
        let code_challenge = match (get("code_challenge"), get("code_challenge_method")) {
            (None, Some(_)) => {
                return Err(fail(OAuthError::invalid_request(
                    "code_challenge_method without code_challenge",
                )))
            }
            (None, None) if client.require_pkce => {
                return Err(fail(OAuthError::invalid_request(
                    "PKCE is required: send code_challenge with code_challenge_method=S256",
                )))
            }
            (None, None) => None,
            (Some(c), Some("S256")) => {
                if c.len() != 43
                    || !c
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(fail(OAuthError::invalid_request(
                        "code_challenge is not a base64url SHA-256",
                    )));
                }
                Some(c.to_string())
            }
            (Some(_), _) => {
                return Err(fail(OAuthError::invalid_request(
                    "code_challenge_method must be S256",
                )))
            }
        };
        let prompts: Vec<&str> = get("prompt")
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect();
        let prompt = if prompts.contains(&"none") {
            if prompts.len() > 1 {
                return Err(fail(OAuthError::invalid_request(
                    "prompt=none cannot be combined",
                )));
            }
            Prompt::None
        } else if prompts.contains(&"login") {
            Prompt::Login
        } else {
            Prompt::Default
        };
        let max_age = match get("max_age") {
            None => None,
            Some(v) => Some(v.parse::<i64>().ok().filter(|m| *m >= 0).ok_or_else(|| {
                fail(OAuthError::invalid_request(
                    "max_age must be a non-negative integer",
                ))
            })?),
        };
        let login_hint = get("login_hint").map(String::from);
        if login_hint.as_ref().is_some_and(|h| h.len() > MAX_PARAM_LEN) {
            return Err(fail(OAuthError::invalid_request("login_hint is too long")));
        }
        let upstream_hint = get("upstream_hint").map(String::from);
        if upstream_hint
            .as_deref()
            .is_some_and(|h| !crate::connector::valid_id(h))
        {
            return Err(fail(OAuthError::invalid_request(
                "upstream_hint names no connector",
            )));
        }
        Ok(AuthorizeRequest {
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.to_string(),
            scopes,
            state,
            nonce,
            code_challenge,
            prompt,
            max_age,
            login_hint,
            upstream_hint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{hash, pkce_s256};

    fn clients(require_pkce: bool) -> HashMap<String, Client> {
        let c = Client {
            id: "app".into(),
            name: "App".into(),
            secret_hash: Some(hash("s")),
            redirect_uris: vec!["http://127.0.0.1:8080/cb".into()],
            allowed_scopes: vec!["openid".into(), "profile".into()],
            public: false,
            require_pkce,
            grant_types: vec![crate::provider::GrantType::AuthorizationCode],
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
            id_token_alg: None,
            upstreams: None,
        };
        HashMap::from([("app".to_string(), c)])
    }

    fn params(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let challenge = pkce_s256(&"v".repeat(43));
        let mut p: Vec<(String, String)> = vec![
            ("client_id".into(), "app".into()),
            ("redirect_uri".into(), "http://127.0.0.1:8080/cb".into()),
            ("response_type".into(), "code".into()),
            ("scope".into(), "openid profile email".into()),
            ("state".into(), "st".into()),
            ("code_challenge".into(), challenge),
            ("code_challenge_method".into(), "S256".into()),
        ];
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            if !v.is_empty() {
                p.push((k.to_string(), v.to_string()));
            }
        }
        p
    }

    fn redirect_code(r: Result<AuthorizeRequest, AuthorizeError>) -> ErrorCode {
        match r {
            Err(AuthorizeError::Redirect { error, state, .. }) => {
                assert_eq!(
                    state.as_deref(),
                    Some("st"),
                    "state is echoed (RFC 6749 §4.1.2.1)"
                );
                error.code
            }
            other => panic!("expected a redirect error, got {other:?}"),
        }
    }

    #[test]
    fn valid_request_parses_and_filters_scopes() {
        let r = AuthorizeRequest::parse(&params(&[("nonce", "n")]), &clients(true)).unwrap();
        assert_eq!(
            r.scopes,
            vec!["openid", "profile"],
            "email is not allowed for this client"
        );
        assert_eq!(r.nonce.as_deref(), Some("n"));
    }

    #[test]
    fn client_and_redirect_errors_never_redirect() {
        let c = clients(true);
        for p in [
            params(&[("client_id", "")]),
            params(&[("client_id", "evil")]),
            params(&[("redirect_uri", "")]),
            params(&[("redirect_uri", "http://127.0.0.1:8080/cb/")]),
            params(&[("redirect_uri", "http://127.0.0.1:8080/CB")]),
            params(&[("redirect_uri", "http://127.0.0.1:8080/cb?x=1")]),
        ] {
            assert!(
                matches!(
                    AuthorizeRequest::parse(&p, &c),
                    Err(AuthorizeError::Page(_))
                ),
                "{p:?}"
            );
        }
        let mut dup = params(&[]);
        dup.push(("redirect_uri".into(), "http://evil/cb".into()));
        assert!(matches!(
            AuthorizeRequest::parse(&dup, &c),
            Err(AuthorizeError::Page(_))
        ));
    }

    #[test]
    fn protocol_errors_redirect_with_rfc_codes() {
        let c = clients(true);
        let parse = |p: Vec<(String, String)>| redirect_code(AuthorizeRequest::parse(&p, &c));
        assert_eq!(
            parse(params(&[("response_type", "")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("response_type", "token")])),
            ErrorCode::UnsupportedResponseType
        );
        assert_eq!(
            parse(params(&[("response_type", "code id_token")])),
            ErrorCode::UnsupportedResponseType
        );
        assert_eq!(
            parse(params(&[("scope", "profile")])),
            ErrorCode::InvalidScope
        );
        assert_eq!(
            parse(params(&[("code_challenge", "")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("code_challenge_method", "plain")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("code_challenge_method", "")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("code_challenge", "short")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("request", "eyJ")])),
            ErrorCode::RequestNotSupported
        );
        assert_eq!(
            parse(params(&[("request_uri", "https://x")])),
            ErrorCode::RequestUriNotSupported
        );
        assert_eq!(
            parse(params(&[("response_mode", "fragment")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("max_age", "-1")])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            parse(params(&[("prompt", "none login")])),
            ErrorCode::InvalidRequest
        );
        let mut dup = params(&[]);
        dup.push(("scope".into(), "openid".into()));
        assert_eq!(parse(dup), ErrorCode::InvalidRequest);
    }

    #[test]
    fn pkce_optional_only_for_opted_out_confidential_clients() {
        let p = params(&[("code_challenge", ""), ("code_challenge_method", "")]);
        assert!(AuthorizeRequest::parse(&p, &clients(false))
            .unwrap()
            .code_challenge
            .is_none());
        assert_eq!(
            redirect_code(AuthorizeRequest::parse(&p, &clients(true))),
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn upstream_hint_is_kept_when_well_formed() {
        let c = clients(true);
        let r = AuthorizeRequest::parse(&params(&[("upstream_hint", "corp-sso")]), &c).unwrap();
        assert_eq!(r.upstream_hint.as_deref(), Some("corp-sso"));
        assert_eq!(
            redirect_code(AuthorizeRequest::parse(
                &params(&[("upstream_hint", "Corp SSO")]),
                &c
            )),
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn unknown_parameters_are_ignored() {
        let r = AuthorizeRequest::parse(
            &params(&[("ui_locales", "de"), ("foo", "bar")]),
            &clients(true),
        );
        assert!(r.is_ok());
    }
}
