//! Logout: OpenID Connect RP-Initiated Logout 1.0 at the
//! `end_session_endpoint` ([`crate::paths::END_SESSION`], GET and POST),
//! and the callback the upstream sends the browser back to
//! ([`crate::paths::LOGOUT_CALLBACK`]).
//!
//! A logout request is checked before anything ends (§2, §3):
//! `id_token_hint` must be an ID token this provider issued (signature and
//! issuer; it may have expired); `client_id`, when sent with it, must be its
//! audience; `post_logout_redirect_uri` must be one the client registered,
//! exactly, or the browser gets an error page and no redirect.
//!
//! Without `id_token_hint` (or with one of another session than the
//! browser's) the user is asked to confirm (§2: "the OP SHOULD ask the
//! End-User whether to log out"), with a POST form protected like the login
//! form (a CSRF token derived from the HttpOnly transaction cookie, and
//! Fetch Metadata / `Origin` checks). A browser without a session and
//! without a hint has nothing to end and goes straight on.
//!
//! Ending a session: the session is deleted (store and cookie), the access
//! and refresh tokens of its `sid` are revoked, a back-channel logout token
//! is queued for every client of the session that registered a
//! `backchannel_logout_uri` ([`crate::backchannel`]), the upstream refresh
//! token is revoked at the upstream (RFC 7009) when it offers a
//! `revocation_endpoint`. Then, when the session's upstream has an
//! `end_session_endpoint`, the browser goes there with the upstream ID token
//! as `id_token_hint` and `<issuer>/logout/callback` as
//! `post_logout_redirect_uri` (through a page that navigates on, see
//! [`UpstreamLogoutPage`]), with a `state` whose hash keys (server-side)
//! where to go afterwards; finally to the relying party's
//! `post_logout_redirect_uri` with its `state`, or to a "You are logged
//! out" page.

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::browser::{cookies, cross_site, csrf_token, with_transaction};
use super::AppState;
use crate::connector::ConnectorKind;
use crate::flow::Session;
use crate::secret::{ct_eq, hash, random_token};
use crate::store::{codec, StoreError};
use crate::web::{self, form_pairs, found, see_other, PageError, WebError};
use crate::{backchannel, paths};

/// How long the browser may take at the upstream's logout, seconds.
const LOGOUT_STATE_TTL: i64 = 600;

#[derive(Template, WebTemplate)]
#[template(path = "adapter/logout_confirm.html")]
pub struct ConfirmPage {
    pub title: String,
    pub action: String,
    pub csrf_token: String,
    pub client_name: Option<String>,
    pub user: Option<String>,
    /// The request's parameters, carried through the form.
    pub fields: Vec<(String, String)>,
}

/// The hop to the upstream's `end_session_endpoint`: a page that navigates
/// on (meta refresh, and a link), not a redirect. A relying party whose
/// logout is a form post with a CSP `form-action` listing only this
/// provider would otherwise see the browser refuse the redirect chain at
/// the upstream's origin (CSP Level 3 §6.4.1: `form-action` applies to
/// redirects too).
#[derive(Template, WebTemplate)]
#[template(path = "adapter/logout_upstream.html")]
pub struct UpstreamLogoutPage {
    pub title: String,
    pub url: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "adapter/logged_out.html")]
pub struct LoggedOutPage {
    pub title: String,
}

/// The parameters of a logout request (RP-Initiated Logout 1.0 §2).
#[derive(Debug, Default)]
struct LogoutRequest {
    id_token_hint: Option<String>,
    client_id: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    /// Our own confirmation form: its CSRF token.
    csrf_token: Option<String>,
    confirm: bool,
}

fn bad(message: &'static str) -> WebError {
    PageError::bad_request("Invalid logout request", message).into()
}

impl LogoutRequest {
    /// Empty values count as absent; a repeated parameter is refused.
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, WebError> {
        let mut r = LogoutRequest::default();
        for (i, (k, _)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(p, _)| p == k) {
                return Err(bad("A parameter is repeated."));
            }
        }
        for (k, v) in pairs {
            if v.is_empty() {
                continue;
            }
            match k.as_str() {
                "id_token_hint" => r.id_token_hint = Some(v),
                "client_id" => r.client_id = Some(v),
                "post_logout_redirect_uri" => r.post_logout_redirect_uri = Some(v),
                "state" => r.state = Some(v),
                "csrf_token" => r.csrf_token = Some(v),
                "confirm" => r.confirm = v == "yes",
                // ui_locales, logout_hint and unknown parameters are ignored
                // (OAuth 2.0 §3.1: unrecognised parameters are ignored).
                _ => {}
            }
        }
        Ok(r)
    }

    /// What the confirmation form carries on.
    fn fields(&self) -> Vec<(String, String)> {
        [
            ("id_token_hint", &self.id_token_hint),
            ("client_id", &self.client_id),
            ("post_logout_redirect_uri", &self.post_logout_redirect_uri),
            ("state", &self.state),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
        .collect()
    }
}

/// What a valid `id_token_hint` says.
#[derive(Debug)]
struct Hint {
    aud: String,
    sid: Option<String>,
}

/// RP-Initiated Logout 1.0 §2: an ID token this provider issued. Its
/// signature and issuer are checked; its expiry is not ("the OP SHOULD
/// accept ID Tokens when the RP identified by the ID Token's aud claim …
/// whose exp has passed"). `typ` must be an ID token's, so an access token
/// or a logout token is refused.
async fn verify_hint(st: &AppState, token: &str) -> Result<Hint, WebError> {
    // `now` at the minimum: an `exp` in the past is accepted (our ID tokens
    // carry no `nbf`).
    let claims = st
        .keys
        .verify(token, "JWT", st.issuer(), i64::MIN)
        .await
        .map_err(|e| {
            tracing::info!(error = %e, "logout: id_token_hint rejected");
            bad("The id_token_hint is not an ID token issued here.")
        })?;
    let aud = match claims.get("aud") {
        Some(Value::String(a)) => a.clone(),
        Some(Value::Array(a)) if a.len() == 1 => a[0]
            .as_str()
            .ok_or_else(|| bad("The id_token_hint has no audience."))?
            .to_string(),
        _ => return Err(bad("The id_token_hint has no single audience.")),
    };
    Ok(Hint {
        aud,
        sid: claims.get("sid").and_then(Value::as_str).map(String::from),
    })
}

/// `GET /oauth2/logout`.
pub async fn end_session_get(
    State(st): State<AppState>,
    jar: CookieJar,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, WebError> {
    let pairs = form_pairs(query.unwrap_or_default().as_bytes());
    end_session(&st, jar, &headers, pairs, false).await
}

/// `POST /oauth2/logout` (form-encoded, §2: "MUST support the use of the
/// HTTP GET and POST methods").
pub async fn end_session_post(
    State(st): State<AppState>,
    jar: CookieJar,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(bad(
            "The request body must be application/x-www-form-urlencoded.",
        ));
    }
    end_session(&st, jar, &headers, form_pairs(&body), true).await
}

async fn end_session(
    st: &AppState,
    jar: CookieJar,
    headers: &HeaderMap,
    pairs: Vec<(String, String)>,
    is_post: bool,
) -> Result<Response, WebError> {
    let req = LogoutRequest::parse(pairs)?;
    let hint = match req.id_token_hint.as_deref() {
        Some(t) => Some(verify_hint(st, t).await?),
        None => None,
    };
    // §2: client_id, when given with id_token_hint, must be its audience.
    let client_id = match (&req.client_id, &hint) {
        (Some(c), Some(h)) if *c != h.aud => {
            return Err(bad("client_id is not the audience of the id_token_hint."))
        }
        (Some(c), _) => Some(c.clone()),
        (None, Some(h)) => Some(h.aud.clone()),
        (None, None) => None,
    };
    let client = match &client_id {
        Some(id) => Some(
            st.clients
                .get(id)
                .ok_or_else(|| bad("The client is not registered."))?,
        ),
        None => None,
    };
    // §3: exact match against the client's registered URIs; otherwise no
    // redirect at all.
    let target = match &req.post_logout_redirect_uri {
        None => None,
        Some(uri) => {
            let client = client
                .ok_or_else(|| bad("post_logout_redirect_uri needs client_id or id_token_hint."))?;
            if !client.post_logout_redirect_uris.iter().any(|u| u == uri) {
                return Err(bad(
                    "The post_logout_redirect_uri is not registered for this client.",
                ));
            }
            Some(uri.clone())
        }
    };

    let browser = cookies(st, &jar);
    let session = st.flows.session(browser.session.as_deref()).await?;
    let hint_matches = match (&hint, &session) {
        (Some(h), Some(s)) => h.sid.as_deref() == Some(s.sid.as_str()),
        (Some(_), None) => true,
        // Nothing to end, nothing to confirm.
        (None, None) => true,
        (None, Some(_)) => false,
    };
    if !hint_matches {
        if !(is_post && req.confirm) {
            return Ok(confirm_page(
                st,
                jar,
                &req,
                client.map(|c| c.name.clone()),
                session,
            ));
        }
        // Our confirmation form: same-site, with its CSRF token.
        let token_ok = req
            .csrf_token
            .as_deref()
            .is_some_and(|t| ct_eq(&csrf_token(&browser.transaction), t));
        if cross_site(st, headers) || browser.transaction.is_empty() || !token_ok {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "The form could not be verified. Reload the page and try again.",
            )
            .into());
        }
    }

    // The session to end: the browser's, or the one the hint names when
    // the browser sent none.
    let to_end = match (session, browser.session.as_deref(), &hint) {
        (Some(s), Some(cookie), _) => Some((hash(cookie), s)),
        (None, _, Some(Hint { sid: Some(sid), .. })) => st.flows.session_by_sid(sid).await?,
        _ => None,
    };
    let jar = jar.remove(web::removal(&st.cookies.session, st.cookies.secure));
    let upstream_redirect = match to_end {
        Some((id_hash, s)) => {
            end(st, &id_hash, &s, target.as_deref(), req.state.as_deref()).await?
        }
        None => None,
    };
    if let Some(url) = upstream_redirect {
        let page = UpstreamLogoutPage {
            title: st.title().to_string(),
            url,
        };
        return Ok((jar, page).into_response());
    }
    Ok((
        jar,
        finish(st, target.as_deref(), req.state.as_deref(), is_post),
    )
        .into_response())
}

fn confirm_page(
    st: &AppState,
    jar: CookieJar,
    req: &LogoutRequest,
    client_name: Option<String>,
    session: Option<Session>,
) -> Response {
    let (jar, browser) = with_transaction(st, jar);
    let user = session.map(|s| {
        s.identity
            .claims
            .get("preferred_username")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or(s.identity.subject)
    });
    let page = ConfirmPage {
        title: st.title().to_string(),
        action: paths::END_SESSION.to_string(),
        csrf_token: csrf_token(&browser.transaction),
        client_name,
        user,
        fields: req.fields(),
    };
    (jar, page).into_response()
}

/// What the logout callback needs once the upstream has logged out.
#[derive(Debug, Serialize, Deserialize)]
struct PendingLogout {
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
}

/// Ends session `s` (keyed by `id_hash`) here: the session is deleted,
/// the access and refresh tokens of its `sid` are revoked, a back-channel
/// logout is queued for its clients, and the upstream refresh token is
/// revoked at the upstream (RFC 7009 §2). Every way a session ends on
/// purpose goes through here: this endpoint, the account pages' logout and
/// a device signed out from the device list. When another request ended
/// the session first, nothing is done twice.
pub async fn end_local_session(
    st: &AppState,
    id_hash: &str,
    s: &Session,
) -> Result<(), StoreError> {
    let now = st.now();
    // Read before the delete, which drops the index.
    let clients = st.store.session_clients(&s.sid).await?;
    if st.store.delete_session(id_hash).await?.is_none() {
        return Ok(());
    }
    // Access tokens of this session are dead until every one that could
    // still be minted from it (a code redeemed late) has expired.
    let until = now
        + st.tokens.code_ttl_seconds
        + st.tokens.access_token_ttl_seconds
        + crate::keys::LEEWAY_SECONDS as i64;
    super::revocation::revoke_session_tokens(&*st.store, &s.sid, now, until).await?;
    match backchannel::enqueue(st, &s.sid, &s.identity, &clients).await {
        Ok(0) => {}
        Ok(_) => backchannel::deliver_soon(st.store.clone(), now),
        Err(backchannel::EnqueueError::Store(e)) => return Err(e),
        Err(e) => tracing::error!(error = %e, "back-channel logout not queued"),
    }
    tracing::info!(connector = %s.identity.connector_id, clients = clients.len(), "session ended");
    if let (Some(upstream), Some(connector)) = (&s.identity.upstream, upstream_of(st, s)) {
        // RFC 7009 §2: the upstream's refresh token dies with the session.
        match connector.revoke_upstream(upstream).await {
            Ok(true) => {
                tracing::info!(connector = %s.identity.connector_id, "upstream refresh token revoked")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(connector = %s.identity.connector_id, error = %e, "upstream refresh token revocation failed")
            }
        }
    }
    Ok(())
}

/// The upstream connector session `s` logged in through, if any.
fn upstream_of<'a>(
    st: &'a AppState,
    s: &Session,
) -> Option<&'a std::sync::Arc<dyn crate::connector::CallbackConnector>> {
    match st
        .flows
        .connector(&s.identity.connector_id)
        .map(|c| &c.kind)
    {
        Some(ConnectorKind::Callback(connector)) => Some(connector),
        _ => None,
    }
}

/// Ends session `s` (keyed by `id_hash`). Returns the upstream's logout URL
/// when the browser should go there next.
async fn end(
    st: &AppState,
    id_hash: &str,
    s: &Session,
    target: Option<&str>,
    state: Option<&str>,
) -> Result<Option<String>, WebError> {
    let now = st.now();
    end_local_session(st, id_hash, s).await?;
    let (Some(upstream), Some(connector)) = (&s.identity.upstream, upstream_of(st, s)) else {
        return Ok(None);
    };
    let upstream_state = random_token();
    let callback = format!("{}{}", st.issuer(), paths::LOGOUT_CALLBACK);
    match connector
        .end_session_url(upstream, &callback, &upstream_state)
        .await
    {
        Ok(Some(url)) => {
            let pending = PendingLogout {
                post_logout_redirect_uri: target.map(String::from),
                state: state.map(String::from),
            };
            st.store
                .insert_logout_state(
                    &hash(&upstream_state),
                    &codec::encode(&pending)?,
                    now + LOGOUT_STATE_TTL,
                )
                .await?;
            Ok(Some(url))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            // The local logout stands; the upstream session may outlive it.
            tracing::warn!(connector = %s.identity.connector_id, error = %e, "upstream logout unavailable");
            Ok(None)
        }
    }
}

/// The end of a logout: the relying party's `post_logout_redirect_uri`
/// with its `state` (§3), or the "You are logged out" page.
fn finish(st: &AppState, target: Option<&str>, state: Option<&str>, after_post: bool) -> Response {
    let Some(uri) = target.and_then(|t| url::Url::parse(t).ok()) else {
        return LoggedOutPage {
            title: st.title().to_string(),
        }
        .into_response();
    };
    let mut uri = uri;
    if let Some(state) = state {
        uri.query_pairs_mut().append_pair("state", state);
    }
    if after_post {
        see_other(uri.as_str())
    } else {
        found(uri.as_str())
    }
}

/// `GET /logout/callback?state=…`: the upstream has ended its session.
pub async fn logout_callback(
    State(st): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, WebError> {
    let pairs = form_pairs(query.unwrap_or_default().as_bytes());
    let state = pairs
        .iter()
        .find(|(k, v)| k == "state" && !v.is_empty())
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| bad("The logout callback has no state. You are logged out."))?;
    let data = st
        .store
        .take_logout_state(&hash(state), st.now())
        .await?
        .ok_or_else(|| {
            bad("This logout is unknown, expired or already completed. You are logged out.")
        })?;
    let pending: PendingLogout = codec::decode(&data)?;
    Ok(finish(
        &st,
        pending.post_logout_redirect_uri.as_deref(),
        pending.state.as_deref(),
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parse_ignores_empty_and_unknown_and_refuses_repeats() {
        let r = LogoutRequest::parse(pairs(&[
            ("client_id", "app"),
            ("state", ""),
            ("ui_locales", "de"),
            ("confirm", "yes"),
        ]))
        .unwrap();
        assert_eq!(r.client_id.as_deref(), Some("app"));
        assert_eq!(r.state, None);
        assert!(r.confirm);
        assert_eq!(
            r.fields(),
            vec![("client_id".to_string(), "app".to_string())]
        );
        assert!(LogoutRequest::parse(pairs(&[("state", "a"), ("state", "b")])).is_err());
    }
}
