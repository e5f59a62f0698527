//! Which connector an authorization request logs in with, when several
//! upstreams (and the local accounts) sit behind one provider (README
//! "Several upstreams"). One function, [`route`], decides; the login-flow
//! engine ([`crate::flow`]) acts on its answer:
//!
//! 1. the client's `upstreams` setting limits the connectors it may use;
//! 2. `upstream_hint` (this provider's extension parameter, OIDC Core
//!    §3.1.2.1) names one of them, or the request is refused;
//! 3. a `login_hint` e-mail address whose domain a connector claims
//!    (`email_domains`) goes to that connector;
//! 4. one allowed connector is used at once; several are offered on the
//!    chooser page.
//!
//! [`session_fits`] says whether an existing session may answer the request
//! (single sign-on): only one made with a connector the client allows.

use std::collections::HashMap;

use crate::connector::Connector;
use crate::error::OAuthError;
use crate::provider::request::AuthorizeRequest;
use crate::provider::Client;

/// E-mail domain (lowercase) → the connector its users log in with.
#[derive(Debug, Clone, Default)]
pub struct EmailDomains(HashMap<String, String>);

impl EmailDomains {
    /// From `domain → connector id` pairs (matched case-insensitively).
    pub fn new(domains: HashMap<String, String>) -> Self {
        EmailDomains(
            domains
                .into_iter()
                .map(|(d, id)| (d.to_ascii_lowercase(), id))
                .collect(),
        )
    }

    /// The connector claiming the domain of `login_hint`, when the hint is
    /// an e-mail address (exact domain, case-insensitive: RFC 5321 §2.4).
    fn connector_for(&self, login_hint: &str) -> Option<&str> {
        let (local, domain) = login_hint.trim().rsplit_once('@')?;
        if local.is_empty() {
            return None;
        }
        self.0.get(&domain.to_ascii_lowercase()).map(String::as_str)
    }
}

/// Where a login goes.
#[derive(Debug)]
pub enum Route<'a> {
    /// Straight to this connector (no chooser).
    Straight(&'a Connector),
    /// The user picks one of these, in configuration order (none: no
    /// connector is configured for the client).
    Choose(Vec<&'a Connector>),
}

/// Whether `client` may log its users in with connector `connector_id`.
/// An unknown client may use none (fail closed).
pub fn allows(client: Option<&Client>, connector_id: &str) -> bool {
    client.is_some_and(|c| c.allows_connector(connector_id))
}

/// Decides the connector of a new login for `request`, or the error the
/// client gets (RFC 6749 §4.1.2.1 `invalid_request`: an `upstream_hint`
/// naming no connector the client may use).
pub fn route<'a>(
    connectors: &'a [Connector],
    client: Option<&Client>,
    request: &AuthorizeRequest,
    domains: &EmailDomains,
) -> Result<Route<'a>, OAuthError> {
    let allowed: Vec<&Connector> = connectors
        .iter()
        .filter(|c| allows(client, &c.id))
        .collect();
    let find = |id: &str| allowed.iter().find(|c| c.id == id).copied();
    if let Some(hint) = &request.upstream_hint {
        return find(hint).map(Route::Straight).ok_or_else(|| {
            OAuthError::invalid_request("upstream_hint names no connector this client may use")
        });
    }
    // A domain routed to a connector the client may not use is no hint.
    if let Some(c) = request
        .login_hint
        .as_deref()
        .and_then(|h| domains.connector_for(h))
        .and_then(find)
    {
        return Ok(Route::Straight(c));
    }
    Ok(match allowed.as_slice() {
        [only] => Route::Straight(only),
        _ => Route::Choose(allowed),
    })
}

/// Whether a session made with connector `connector_id` may answer
/// `request` (single sign-on): the client allows that connector, and an
/// `upstream_hint` names no other one.
pub fn session_fits(
    client: Option<&Client>,
    request: &AuthorizeRequest,
    connector_id: &str,
) -> bool {
    allows(client, connector_id)
        && request
            .upstream_hint
            .as_deref()
            .is_none_or(|hint| hint == connector_id)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::connector::{
        BeginRequest, BeginResponse, CallbackConnector, ConnectorError, ConnectorKind, Identity,
    };
    use crate::error::ErrorCode;
    use crate::provider::request::Prompt;

    struct Idle;

    #[async_trait]
    impl CallbackConnector for Idle {
        async fn begin(&self, _: &BeginRequest<'_>) -> Result<BeginResponse, ConnectorError> {
            Err(ConnectorError::Unavailable("idle".into()))
        }
        async fn complete(
            &self,
            _: &str,
            _: &HashMap<String, String>,
            _: &str,
        ) -> Result<Identity, ConnectorError> {
            Err(ConnectorError::Unavailable("idle".into()))
        }
    }

    fn connectors() -> Vec<Connector> {
        ["corp", "partner", "local"]
            .map(|id| Connector {
                id: id.into(),
                name: id.into(),
                kind: ConnectorKind::Callback(Arc::new(Idle)),
            })
            .into()
    }

    fn client(upstreams: Option<&[&str]>) -> Client {
        Client {
            id: "app".into(),
            name: "App".into(),
            secret_hash: None,
            redirect_uris: vec!["https://app.example/cb".into()],
            allowed_scopes: vec!["openid".into()],
            public: true,
            require_pkce: true,
            grant_types: vec![],
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
            id_token_alg: None,
            upstreams: upstreams.map(|u| u.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn request(login_hint: Option<&str>, upstream_hint: Option<&str>) -> AuthorizeRequest {
        AuthorizeRequest {
            client_id: "app".into(),
            redirect_uri: "https://app.example/cb".into(),
            scopes: vec!["openid".into()],
            state: None,
            nonce: None,
            code_challenge: None,
            prompt: Prompt::Default,
            max_age: None,
            login_hint: login_hint.map(String::from),
            upstream_hint: upstream_hint.map(String::from),
        }
    }

    fn domains() -> EmailDomains {
        EmailDomains::new(HashMap::from([
            ("Example.ORG".to_string(), "partner".to_string()),
            ("corp.example".to_string(), "corp".to_string()),
        ]))
    }

    fn ids(route: Route<'_>) -> Vec<&str> {
        match route {
            Route::Straight(c) => vec![c.id.as_str()],
            Route::Choose(cs) => cs.iter().map(|c| c.id.as_str()).collect(),
        }
    }

    fn decide(
        client: &Client,
        login_hint: Option<&str>,
        upstream_hint: Option<&str>,
    ) -> Vec<String> {
        let cs = connectors();
        let r = route(
            &cs,
            Some(client),
            &request(login_hint, upstream_hint),
            &domains(),
        )
        .unwrap();
        let straight = matches!(r, Route::Straight(_));
        let mut out: Vec<String> = ids(r).into_iter().map(String::from).collect();
        if straight {
            out.insert(0, "straight:".into());
        }
        out
    }

    #[test]
    fn the_client_setting_limits_the_chooser() {
        assert_eq!(
            decide(&client(None), None, None),
            ["corp", "partner", "local"]
        );
        assert_eq!(
            decide(&client(Some(&["local", "corp"])), None, None),
            ["corp", "local"]
        );
        assert_eq!(
            decide(&client(Some(&["partner"])), None, None),
            ["straight:", "partner"]
        );
    }

    #[test]
    fn upstream_hint_goes_straight_or_is_refused() {
        assert_eq!(
            decide(&client(None), None, Some("partner")),
            ["straight:", "partner"]
        );
        let cs = connectors();
        for (allowed, hint) in [(None, "nope"), (Some(&["corp", "local"][..]), "partner")] {
            let err = route(
                &cs,
                Some(&client(allowed)),
                &request(None, Some(hint)),
                &domains(),
            )
            .unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{hint}");
        }
    }

    #[test]
    fn login_hint_domains_route_exactly_and_case_insensitively() {
        let all = client(None);
        assert_eq!(
            decide(&all, Some("alice@EXAMPLE.org"), None),
            ["straight:", "partner"]
        );
        assert_eq!(
            decide(&all, Some("bob@corp.example"), None),
            ["straight:", "corp"]
        );
        // Not an exact domain, not an address, or a connector the client
        // may not use: the chooser.
        for hint in [
            "alice@sub.example.org",
            "example.org",
            "@example.org",
            "alice@example.org.evil",
        ] {
            assert_eq!(
                decide(&all, Some(hint), None),
                ["corp", "partner", "local"],
                "{hint}"
            );
        }
        assert_eq!(
            decide(
                &client(Some(&["corp", "local"])),
                Some("alice@example.org"),
                None
            ),
            ["corp", "local"]
        );
        // upstream_hint wins over login_hint.
        assert_eq!(
            decide(&all, Some("alice@example.org"), Some("local")),
            ["straight:", "local"]
        );
    }

    #[test]
    fn a_session_fits_only_an_allowed_connector_and_the_hint() {
        let limited = client(Some(&["corp"]));
        assert!(session_fits(Some(&limited), &request(None, None), "corp"));
        assert!(!session_fits(
            Some(&limited),
            &request(None, None),
            "partner"
        ));
        assert!(!session_fits(None, &request(None, None), "corp"));
        let all = client(None);
        assert!(session_fits(
            Some(&all),
            &request(None, Some("corp")),
            "corp"
        ));
        assert!(!session_fits(
            Some(&all),
            &request(None, Some("corp")),
            "partner"
        ));
    }
}
