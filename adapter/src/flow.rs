//! The login-flow engine: one persisted [`Login`] per authorization request
//! that needs a login, and one `match` over (step, event) that decides what
//! happens next (in the style of kanidm's `AuthSessionState` and Dex's auth
//! flow). No HTTP types here: handlers extract, call [`Flows`], and render
//! the [`Next`] they get back.
//!
//! ```text
//!  authorize ──SSO (fresh session)──────────────────────────────► CodeIssued
//!      │ no session / prompt=login / older than max_age
//!      ▼
//!  ChoosingConnector ──Chose──► AwaitingUpstream ──UpstreamCallback──► LoggedIn
//!      │                    └─► AwaitingCredentials ──Credentials────► LoggedIn
//!      └─ (one allowed connector, or a hint: Chose is implied; see crate::route)
//! ```
//!
//! Every step is saved with compare-and-swap on the login's version, so two
//! requests racing on one login get one winner on any backend; the final
//! step also marks the login finished (single-use). The login is bound to
//! the browser that started it (the hash of its transaction cookie), checked
//! once, when a step loads it.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::accounts::authn::{AuthError, AuthState, CredKind, Credential, Mech, Reply, Step};
use crate::clock::SharedClock;
use crate::connector::{BeginRequest, Connector, ConnectorKind, Identity};
use crate::device;
use crate::error::{ErrorCode, OAuthError};
use crate::metrics::{Metrics, UNKNOWN_CONNECTOR};
use crate::paths;
use crate::provider::redirect::{code_redirect, error_redirect};
use crate::provider::request::{AuthorizeRequest, Prompt};
use crate::provider::Client;
use crate::route::{self, Route};
use crate::secret::{ct_eq, hash, random_token};
use crate::store::{codec, CodeInsert, LoginRow, Lookup, SessionRow, Store, StoreError};

/// A login in progress (persisted under the hash of its id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    /// The validated authorization request this login answers.
    pub request: AuthorizeRequest,
    /// Hash of the transaction cookie of the browser that started it.
    pub browser_binding: String,
    pub step: LoginStep,
}

/// Where a login stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum LoginStep {
    /// Several connectors: the user picks one.
    ChoosingConnector,
    /// The browser went to an upstream; the callback carries a state whose
    /// hash the store indexes. `connector_state` is the connector's own
    /// (nonce, PKCE verifier), opaque here.
    AwaitingUpstream {
        connector_id: String,
        connector_state: String,
    },
    /// Our own form asks for credentials; `auth` is the local-accounts
    /// authentication under way (after a first credential of several).
    AwaitingCredentials {
        connector_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<AuthState>,
    },
}

/// What the browser did.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Picked a connector (on the chooser page, or implied when there is one).
    Chose { connector_id: &'a str },
    /// Came back from the upstream on `connector_id`'s callback.
    UpstreamCallback {
        connector_id: &'a str,
        params: &'a HashMap<String, String>,
    },
    /// Submitted a form of the local-accounts connector `connector_id`.
    Credentials {
        connector_id: &'a str,
        input: LocalInput<'a>,
    },
}

/// What a local-accounts form carried.
#[derive(Debug, Clone, Copy)]
pub enum LocalInput<'a> {
    /// Username (or e-mail) and password: starts an authentication over.
    Password {
        username: &'a str,
        password: &'a str,
    },
    /// "E-mail me a code" for this username or address.
    RequestCode { username: &'a str },
    /// The code the form asked for next (TOTP, recovery or e-mail code).
    Code { code: &'a str },
    /// "Sign in with a passkey": username-first for a name, usernameless
    /// (a discoverable credential) for an empty one. Starts over.
    PasskeyBegin { username: &'a str },
    /// The assertion (`PublicKeyCredential` JSON) answering the challenge.
    Passkey { credential: &'a str },
}

/// Which form the local-accounts connector shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormStage {
    /// Username and password (and the e-mail code button where offered).
    Password,
    /// A TOTP code (or a recovery code).
    Totp,
    /// The code sent by e-mail.
    EmailCode,
    /// A passkey (the second factor after a password).
    Passkey,
}

/// The browser as the engine sees it: its cookies' values and what the
/// request says about it.
#[derive(Debug, Clone, Copy)]
pub struct Browser<'a> {
    /// The transaction cookie that binds logins to this browser.
    pub transaction: &'a str,
    /// The session cookie, if the browser sent one.
    pub session: Option<&'a str>,
    /// The device cookie, if the browser sent one ([`crate::device`]).
    pub device: Option<&'a str>,
    /// The client's IP address, as text.
    pub ip: Option<&'a str>,
    /// The User-Agent header; only a short label derived from it is kept.
    pub user_agent: Option<&'a str>,
}

/// The login form to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormView {
    pub login_id: String,
    pub connector_id: String,
    pub client_name: Option<String>,
    pub username: String,
    /// Set after a failed attempt.
    pub error: Option<String>,
    pub stage: FormStage,
    /// Offer "e-mail me a code" on the password form.
    pub email_codes: bool,
    /// Offer "sign in with a passkey" (passkeys are configured).
    pub passkeys: bool,
    /// The WebAuthn request options of the passkey the form asks for
    /// (`FormStage::Passkey`), JSON.
    pub passkey_options: Option<String>,
}

/// What the web layer does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send the browser to the upstream's authorization endpoint.
    RedirectUpstream(String),
    /// Send the browser to one of our own pages (the login form).
    Redirect(String),
    /// Show the connector chooser: (id, name, link).
    ShowChooser(Vec<(String, String, String)>),
    /// Show the login form.
    ShowForm(FormView),
    /// The WebAuthn request options of a passkey login just begun, for
    /// the page's script (`{"publicKey": …}`).
    PasskeyOptions(serde_json::Value),
    /// A code for the client from an existing session (RFC 6749 §4.1.2).
    CodeIssued(String),
    /// A login finished: set the new session and device cookies, then the
    /// code.
    LoggedIn {
        session_cookie: String,
        device_cookie: String,
        /// When the session ends on the server (unix seconds).
        expires_at: i64,
        redirect: String,
    },
    /// An error for the client at its (validated) redirect URI (§4.1.2.1).
    ErrorToClient(String),
    /// The login gate (`allow_groups`) refused the user: a page of ours
    /// says so, with a link back to the client carrying `access_denied`
    /// (RFC 6749 §4.1.2.1), instead of sending the browser there unasked.
    NotAllowed {
        /// The client's display name.
        client_name: String,
        /// The client's `access_denied` redirect (with `state` and `iss`).
        back: String,
    },
}

impl Event<'_> {
    /// The connector the event names (as the request named it).
    fn connector_id(&self) -> &str {
        match self {
            Event::Chose { connector_id }
            | Event::UpstreamCallback { connector_id, .. }
            | Event::Credentials { connector_id, .. } => connector_id,
        }
    }
}

/// Why a step cannot go on. Each becomes an error page: none of these can
/// be redirected to a client safely or usefully.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("the login is unknown, expired or finished")]
    UnknownLogin,
    #[error("the login was already finished")]
    AlreadyUsed,
    #[error("the callback has no state")]
    MissingState,
    #[error("the state matches no login in progress")]
    UnknownState,
    #[error("the login was started in another browser")]
    OtherBrowser,
    #[error("the response came back on another upstream's callback")]
    MixUp,
    #[error("unknown connector")]
    UnknownConnector,
    #[error("the login is not at this step")]
    WrongStep,
    #[error("another request continued this login first")]
    Conflict,
    #[error("no connector is configured")]
    NoConnectors,
    #[error("the connector failed: {0}")]
    ConnectorFailed(String),
    #[error("too many attempts; retry in {retry_after} s")]
    Throttled { retry_after: u64 },
    #[error("too many logins in progress")]
    Busy,
    /// A credential that cannot be read (malformed passkey JSON, bad
    /// base64url): refused before anything changed.
    #[error("{0}")]
    Malformed(String),
    #[error("the redirect URI cannot carry the response")]
    BadRedirect,
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl FlowError {
    /// A fixed name for metrics (the variant, snake case).
    pub fn reason(&self) -> &'static str {
        match self {
            FlowError::UnknownLogin => "unknown_login",
            FlowError::AlreadyUsed => "already_used",
            FlowError::MissingState => "missing_state",
            FlowError::UnknownState => "unknown_state",
            FlowError::OtherBrowser => "other_browser",
            FlowError::MixUp => "mix_up",
            FlowError::UnknownConnector => "unknown_connector",
            FlowError::WrongStep => "wrong_step",
            FlowError::Conflict => "conflict",
            FlowError::NoConnectors => "no_connectors",
            FlowError::ConnectorFailed(_) => "connector_failed",
            FlowError::Throttled { .. } => "rate_limited",
            FlowError::Busy => "busy",
            FlowError::Malformed(_) => "malformed",
            FlowError::BadRedirect => "bad_redirect",
            FlowError::Storage(_) => "storage",
        }
    }
}

/// Lifetimes the engine enforces, seconds.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub login: i64,
    pub code: i64,
    pub session: i64,
}

/// What a session holds besides its indexed columns.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionData {
    identity: Identity,
}

/// A valid browser session.
#[derive(Debug, Clone)]
pub struct Session {
    pub sid: String,
    pub identity: Identity,
    pub auth_time: i64,
    pub expires_at: i64,
    pub created_at: i64,
    /// When it was last used (written at most once a minute, see
    /// [`crate::device::LAST_SEEN_INTERVAL_SECONDS`]).
    pub last_seen_at: Option<i64>,
    /// "Browser on OS" of the device it lives in.
    pub device_label: Option<String>,
    /// The client's IP address at login.
    pub ip: Option<String>,
}

impl Session {
    fn from_row(row: SessionRow) -> Result<Session, StoreError> {
        let data: SessionData = codec::decode(&row.data)?;
        Ok(Session {
            sid: row.sid,
            identity: data.identity,
            auth_time: row.auth_time,
            expires_at: row.expires_at,
            created_at: row.created_at,
            last_seen_at: row.last_seen_at,
            device_label: row.device_label,
            ip: row.ip,
        })
    }
}

/// A session just started: the cookie values to set, and the session.
#[derive(Debug, Clone)]
pub struct StartedSession {
    /// The new session cookie's value (only its hash is stored).
    pub cookie: String,
    /// The device cookie's value: the browser's own when it sent a valid
    /// one, else a new one. Set it again at every login so that it lives a
    /// year from the last login.
    pub device_cookie: String,
    pub session: Session,
}

/// What an authorization code stands for (persisted under its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeRecord {
    pub request: AuthorizeRequest,
    pub identity: Identity,
    pub auth_time: i64,
    /// The session the code was issued from (`sid` claim).
    pub sid: String,
}

/// A login loaded for a step.
struct Loaded {
    /// The raw id, when the request named it (not on upstream callbacks).
    id: Option<String>,
    row: LoginRow,
    login: Login,
    /// The row is in the store. A login that goes straight to its only
    /// connector is stored by its first save (one insert at `/authorize`
    /// instead of an insert and an update).
    stored: bool,
}

/// OIDC Core §3.1.2.1: a session may answer when it is younger than
/// `max_age`. `auth_time` has one-second resolution, so an age equal to
/// `max_age` may really be older: it is not fresh (and `max_age=0` always
/// re-authenticates, OIDC Core errata set 2).
pub fn fresh_enough(max_age: Option<i64>, auth_time: i64, now: i64) -> bool {
    max_age.is_none_or(|m| now.saturating_sub(auth_time) < m)
}

/// The engine. One per provider; cheap to share.
pub struct Flows {
    store: Arc<dyn Store>,
    clients: Arc<HashMap<String, Client>>,
    connectors: Vec<Connector>,
    clock: SharedClock,
    issuer: String,
    ttl: Lifetimes,
    metrics: Metrics,
    /// Asked before a client gets a code (`allow_groups`, claim rules).
    admission: Option<Arc<dyn crate::customizer::TokenCustomizer>>,
    /// Which connector a `login_hint` e-mail domain goes to.
    email_domains: route::EmailDomains,
}

impl Flows {
    pub fn new(
        store: Arc<dyn Store>,
        clients: Arc<HashMap<String, Client>>,
        connectors: Vec<Connector>,
        clock: SharedClock,
        issuer: String,
        ttl: Lifetimes,
    ) -> Self {
        Flows {
            store,
            clients,
            connectors,
            clock,
            issuer,
            ttl,
            metrics: Metrics::default(),
            admission: None,
            email_domains: route::EmailDomains::default(),
        }
    }

    /// Asks `customizer` whether each login may go on to its client
    /// ([`crate::customizer::TokenCustomizer::admit`]).
    pub fn with_admission(
        mut self,
        customizer: Arc<dyn crate::customizer::TokenCustomizer>,
    ) -> Self {
        self.admission = Some(customizer);
        self
    }

    /// The error for the client when `identity` may not log in to it
    /// (RFC 6749 §4.1.2.1: `access_denied`, or `server_error`).
    fn refusal(&self, request: &AuthorizeRequest, identity: &Identity) -> Option<OAuthError> {
        let admission = self.admission.as_ref()?;
        admission
            .admit(identity, &request.client_id, &request.scopes)
            .err()
            .map(|r| OAuthError::new(r.code, r.description))
    }

    /// Sends a login whose `login_hint` is an address at one of these
    /// e-mail domains straight to its connector ([`crate::route`]).
    pub fn with_email_domains(mut self, domains: route::EmailDomains) -> Self {
        self.email_domains = domains;
        self
    }

    /// Records logins started, succeeded and failed in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// `id` as a metric label: a configured connector's id, never an
    /// arbitrary value from the request.
    fn connector_label<'a>(&'a self, id: &'a str) -> &'a str {
        match self.connector(id) {
            Some(c) => &c.id,
            None => UNKNOWN_CONNECTOR,
        }
    }

    /// Counts a failed step of a login at `connector`.
    fn counted(&self, connector: &str, result: Result<Next, FlowError>) -> Result<Next, FlowError> {
        if let Err(e) = &result {
            self.metrics
                .login_failed(self.connector_label(connector), e.reason());
        }
        result
    }

    pub fn connectors(&self) -> &[Connector] {
        &self.connectors
    }

    pub fn connector(&self, id: &str) -> Option<&Connector> {
        self.connectors.iter().find(|c| c.id == id)
    }

    /// The local-accounts connector, when this provider offers one.
    pub fn local_accounts(&self) -> Option<&Arc<crate::accounts::authn::Authenticator>> {
        match self
            .connector(crate::accounts::LOCAL_CONNECTOR_ID)
            .map(|c| &c.kind)
        {
            Some(ConnectorKind::Local(authn)) => Some(authn),
            _ => None,
        }
    }

    /// The valid session behind a session cookie, if any. A session whose
    /// connector was removed from the configuration no longer counts.
    pub async fn session(&self, cookie: Option<&str>) -> Result<Option<Session>, StoreError> {
        let Some(cookie) = cookie else {
            return Ok(None);
        };
        let now = self.clock.now();
        let Some(mut row) = self.store.session(&hash(cookie), now).await? else {
            return Ok(None);
        };
        if self.connector(&row.connector_id).is_none() {
            return Ok(None);
        }
        // The session is used: its last-seen time moves, with one write a
        // minute at most (decided on the value just read, so a fresh
        // session costs no write at all).
        let interval = device::LAST_SEEN_INTERVAL_SECONDS;
        if row
            .last_seen_at
            .is_none_or(|t| now.saturating_sub(t) >= interval)
            && self
                .store
                .touch_session(&row.id_hash, now, now - interval + 1)
                .await?
        {
            row.last_seen_at = Some(now);
        }
        Ok(Some(Session::from_row(row)?))
    }

    /// The valid sessions of one user (`connector_id`, `subject`), oldest
    /// first, each with the hash that keys it: the user's devices.
    pub async fn user_sessions(
        &self,
        connector_id: &str,
        subject: &str,
    ) -> Result<Vec<(String, Session)>, StoreError> {
        let rows = self
            .store
            .sessions_of_user(connector_id, subject, self.clock.now())
            .await?;
        rows.into_iter()
            .map(|row| Ok((row.id_hash.clone(), Session::from_row(row)?)))
            .collect()
    }

    /// Puts fresh claims of an upstream (an adapter refresh asked it again)
    /// into session `sid`, so single sign-on and userinfo see them too.
    pub async fn refresh_session_identity(
        &self,
        sid: &str,
        identity: &Identity,
    ) -> Result<bool, StoreError> {
        let data = codec::encode(&SessionData {
            identity: identity.clone(),
        })?;
        self.store.set_session_data(sid, &data).await
    }

    /// The valid session with the published id `sid` (an ID token's `sid`
    /// claim), with the hash that keys it. For logout (OIDC RP-Initiated
    /// Logout 1.0 §2) when the browser no longer sends the cookie.
    pub async fn session_by_sid(&self, sid: &str) -> Result<Option<(String, Session)>, StoreError> {
        let Some(row) = self.store.session_by_sid(sid, self.clock.now()).await? else {
            return Ok(None);
        };
        Ok(Some((row.id_hash.clone(), Session::from_row(row)?)))
    }

    /// An authorization request arrives: answer from the session, refuse
    /// (`prompt=none`), or start a login.
    pub async fn authorize(
        &self,
        request: AuthorizeRequest,
        browser: Browser<'_>,
    ) -> Result<Next, FlowError> {
        let now = self.clock.now();
        let client = self.clients.get(&request.client_id);
        let route = match route::route(&self.connectors, client, &request, &self.email_domains) {
            Ok(route) => route,
            Err(error) => return self.error_to_client(&request, &error),
        };
        // OIDC Core §3.1.2.1: single sign-on unless the client asks for a
        // fresh login or the session is older than max_age; and only with
        // a session of a connector this client allows.
        if let Some(s) = self.session(browser.session).await? {
            if request.prompt != Prompt::Login
                && fresh_enough(request.max_age, s.auth_time, now)
                && route::session_fits(client, &request, &s.identity.connector_id)
            {
                if let Some(error) = self.refusal(&request, &s.identity) {
                    return self.refused(&request, &error);
                }
                let redirect = self.issue_code(&request, &s).await?;
                return Ok(Next::CodeIssued(redirect));
            }
        }
        if request.prompt == Prompt::None {
            // OIDC Core §3.1.2.6: no UI may be shown.
            let error = OAuthError::new(ErrorCode::LoginRequired, "the user is not logged in");
            return self.error_to_client(&request, &error);
        }
        let id = random_token();
        let login = Login {
            request,
            browser_binding: hash(browser.transaction),
            step: LoginStep::ChoosingConnector,
        };
        let id_hash = hash(&id);
        let expires_at = now + self.ttl.login;
        let data = codec::encode(&login)?;
        let straight = matches!(route, Route::Straight(_));
        if !straight {
            // The chooser's links name the login: it must exist first.
            self.store
                .insert_login(&id_hash, &data, expires_at, None)
                .await?;
        }
        let loaded = Loaded {
            id: Some(id.clone()),
            row: LoginRow {
                id_hash,
                version: 0,
                data,
                expires_at,
            },
            login,
            stored: !straight,
        };
        match route {
            Route::Choose(none) if none.is_empty() => Err(FlowError::NoConnectors),
            Route::Straight(only) => {
                let connector_id = only.id.clone();
                let result = self
                    .advance(
                        loaded,
                        browser,
                        Event::Chose {
                            connector_id: &connector_id,
                        },
                    )
                    .await;
                self.counted(&connector_id, result)
            }
            Route::Choose(many) => Ok(Next::ShowChooser(
                many.iter()
                    .map(|c| (c.id.clone(), c.name.clone(), paths::login_start(&c.id, &id)))
                    .collect(),
            )),
        }
    }

    /// A step of the login `login_id` (chooser link, form post).
    pub async fn step(
        &self,
        login_id: &str,
        browser: Browser<'_>,
        event: Event<'_>,
    ) -> Result<Next, FlowError> {
        let result = async {
            let lookup = self.store.login(&hash(login_id), self.clock.now()).await?;
            let loaded = self.loaded(Some(login_id), lookup, browser)?;
            self.advance(loaded, browser, event).await
        }
        .await;
        self.counted(event.connector_id(), result)
    }

    /// The upstream sent the browser back to `connector_id`'s callback.
    pub async fn callback(
        &self,
        connector_id: &str,
        params: &HashMap<String, String>,
        browser: Browser<'_>,
    ) -> Result<Next, FlowError> {
        let result = async {
            let state = params.get("state").ok_or(FlowError::MissingState)?;
            let lookup = match self
                .store
                .login_by_state(&hash(state), self.clock.now())
                .await?
            {
                Lookup::Finished => return Err(FlowError::AlreadyUsed),
                Lookup::Missing => return Err(FlowError::UnknownState),
                other => other,
            };
            let loaded = self.loaded(None, lookup, browser)?;
            self.advance(
                loaded,
                browser,
                Event::UpstreamCallback {
                    connector_id,
                    params,
                },
            )
            .await
        }
        .await;
        self.counted(connector_id, result)
    }

    /// The login form of `connector_id` for the login `login_id`.
    pub async fn form(
        &self,
        login_id: &str,
        connector_id: &str,
        browser: Browser<'_>,
    ) -> Result<FormView, FlowError> {
        let lookup = self.store.login(&hash(login_id), self.clock.now()).await?;
        let loaded = self.loaded(Some(login_id), lookup, browser)?;
        match &loaded.login.step {
            LoginStep::AwaitingCredentials {
                connector_id: c,
                auth,
            } if c == connector_id => Ok(self.form_view(
                login_id,
                &loaded.login,
                connector_id,
                auth.as_ref(),
                username_of(auth.as_ref()),
                None,
            )),
            _ => Err(FlowError::WrongStep),
        }
    }

    fn loaded(
        &self,
        id: Option<&str>,
        lookup: Lookup<LoginRow>,
        browser: Browser<'_>,
    ) -> Result<Loaded, FlowError> {
        let row = match lookup {
            Lookup::Found(row) => row,
            Lookup::Finished => return Err(FlowError::AlreadyUsed),
            Lookup::Expired | Lookup::Missing => return Err(FlowError::UnknownLogin),
        };
        let login: Login = codec::decode(&row.data)?;
        // RFC 9700 §4.7.1: the login must finish in the browser that began it.
        if !ct_eq(&hash(browser.transaction), &login.browser_binding) {
            return Err(FlowError::OtherBrowser);
        }
        Ok(Loaded {
            id: id.map(String::from),
            row,
            login,
            stored: true,
        })
    }

    /// The one transition function.
    async fn advance(
        &self,
        cur: Loaded,
        browser: Browser<'_>,
        event: Event<'_>,
    ) -> Result<Next, FlowError> {
        match (&cur.login.step, event) {
            // From any step: the user picked (or went back and re-picked) a
            // connector. A pending upstream state is replaced, so its
            // callback no longer matches.
            (_, Event::Chose { connector_id }) => {
                // A connector the client may not use is not on its
                // chooser; a crafted link to it finds none either.
                let client = self.clients.get(&cur.login.request.client_id);
                if !route::allows(client, connector_id) {
                    return Err(FlowError::UnknownConnector);
                }
                let connector = self
                    .connector(connector_id)
                    .ok_or(FlowError::UnknownConnector)?
                    .clone();
                self.begin(cur, &connector).await
            }
            (
                LoginStep::AwaitingUpstream {
                    connector_id: expected,
                    connector_state,
                },
                Event::UpstreamCallback {
                    connector_id,
                    params,
                },
            ) => {
                // RFC 9700 §4.4.2 (mix-up): the answer must come back on the
                // callback of the upstream the login went to.
                if expected != connector_id {
                    return Err(FlowError::MixUp);
                }
                let Some(ConnectorKind::Callback(connector)) =
                    self.connector(connector_id).map(|c| &c.kind)
                else {
                    return Err(FlowError::UnknownConnector);
                };
                // Exactly one callback goes on: the login is finished before
                // the upstream code is redeemed.
                self.save(&cur, &cur.login, None, true).await?;
                let callback_url =
                    format!("{}{}", self.issuer, paths::upstream_callback(connector_id));
                match connector
                    .complete(&callback_url, params, connector_state)
                    .await
                {
                    Ok(identity) => self.logged_in(&cur.login.request, identity, browser).await,
                    Err(e) => {
                        tracing::warn!(connector = %connector_id, error = %e, "upstream login failed");
                        let error = e.oauth_error();
                        self.metrics
                            .login_failed(self.connector_label(connector_id), error.code.as_str());
                        self.error_to_client(&cur.login.request, &error)
                    }
                }
            }
            (
                LoginStep::AwaitingCredentials {
                    connector_id: expected,
                    auth,
                },
                Event::Credentials {
                    connector_id,
                    input,
                },
            ) => {
                if expected != connector_id {
                    return Err(FlowError::WrongStep);
                }
                let Some(ConnectorKind::Local(authn)) =
                    self.connector(connector_id).map(|c| &c.kind)
                else {
                    return Err(FlowError::UnknownConnector);
                };
                let id = cur.id.as_deref().ok_or(FlowError::WrongStep)?;
                let (state, reply) = local_steps(authn, auth.as_ref(), input)
                    .await
                    .map_err(flow_error)?;
                let typed = match input {
                    LocalInput::Password { username, .. }
                    | LocalInput::RequestCode { username }
                    | LocalInput::PasskeyBegin { username } => username.to_string(),
                    LocalInput::Code { .. } | LocalInput::Passkey { .. } => {
                        username_of(auth.as_ref())
                    }
                };
                match reply {
                    Reply::Success { identity, .. } => {
                        // A double submit: the second finds the login finished.
                        self.save(&cur, &cur.login, None, true).await?;
                        self.logged_in(&cur.login.request, *identity, browser).await
                    }
                    Reply::Continue { retry, options, .. } => {
                        let mut login = cur.login.clone();
                        login.step = LoginStep::AwaitingCredentials {
                            connector_id: connector_id.to_string(),
                            auth: Some(state.clone()),
                        };
                        self.save(&cur, &login, None, false).await?;
                        if let (LocalInput::PasskeyBegin { .. }, Some(options)) = (input, options) {
                            return Ok(Next::PasskeyOptions(options));
                        }
                        Ok(Next::ShowForm(self.form_view(
                            id,
                            &cur.login,
                            connector_id,
                            Some(&state),
                            typed,
                            retry.as_deref(),
                        )))
                    }
                    Reply::Denied(reason) => {
                        tracing::info!(connector = %connector_id, "login failed: bad credentials");
                        self.metrics
                            .login_failed(self.connector_label(connector_id), "bad_credentials");
                        // The authentication ends; the login stays, so
                        // the user can start over on the password form.
                        let mut login = cur.login.clone();
                        login.step = LoginStep::AwaitingCredentials {
                            connector_id: connector_id.to_string(),
                            auth: None,
                        };
                        self.save(&cur, &login, None, false).await?;
                        Ok(Next::ShowForm(self.form_view(
                            id,
                            &cur.login,
                            connector_id,
                            None,
                            typed,
                            Some(&capitalized(&reason)),
                        )))
                    }
                    Reply::Choose(_) => Err(FlowError::WrongStep),
                }
            }
            _ => Err(FlowError::WrongStep),
        }
    }

    /// Starts `connector` for a login.
    async fn begin(&self, cur: Loaded, connector: &Connector) -> Result<Next, FlowError> {
        let mut login = cur.login.clone();
        self.metrics.login_started(&connector.id);
        match &connector.kind {
            ConnectorKind::Local(_) => {
                let id = cur.id.as_deref().ok_or(FlowError::WrongStep)?;
                login.step = LoginStep::AwaitingCredentials {
                    connector_id: connector.id.clone(),
                    auth: None,
                };
                self.save(&cur, &login, None, false).await?;
                Ok(Next::Redirect(format!(
                    "{}?req={id}",
                    paths::login_form(&connector.id)
                )))
            }
            ConnectorKind::Callback(upstream) => {
                let state = random_token();
                let callback_url =
                    format!("{}{}", self.issuer, paths::upstream_callback(&connector.id));
                let r = &login.request;
                // OIDC Core §3.1.2.1: what the client asked of the login
                // goes on to the upstream, which does the authenticating.
                let begin = BeginRequest {
                    callback_url: &callback_url,
                    state: &state,
                    prompt: (r.prompt == Prompt::Login).then_some("login"),
                    max_age: r.max_age,
                    login_hint: r.login_hint.as_deref(),
                };
                match upstream.begin(&begin).await {
                    Ok(begun) => {
                        login.step = LoginStep::AwaitingUpstream {
                            connector_id: connector.id.clone(),
                            connector_state: begun.connector_state,
                        };
                        self.save(&cur, &login, Some(&hash(&state)), false).await?;
                        Ok(Next::RedirectUpstream(begun.redirect_url))
                    }
                    Err(e) => {
                        tracing::warn!(connector = %connector.id, error = %e, "upstream login could not start");
                        let error = e.oauth_error();
                        self.metrics
                            .login_failed(&connector.id, error.code.as_str());
                        self.save(&cur, &login, None, true).await?;
                        self.error_to_client(&login.request, &error)
                    }
                }
            }
        }
    }

    /// Compare-and-swap of the login loaded in `cur` (the insert of one
    /// not stored yet).
    async fn save(
        &self,
        cur: &Loaded,
        login: &Login,
        state_hash: Option<&str>,
        finish: bool,
    ) -> Result<(), FlowError> {
        if !cur.stored {
            // Nobody holds the id of a login never stored, so finishing
            // one needs no record.
            if !finish {
                let data = codec::encode(login)?;
                self.store
                    .insert_login(&cur.row.id_hash, &data, cur.row.expires_at, state_hash)
                    .await?;
            }
            return Ok(());
        }
        let saved = self
            .store
            .update_login(
                &cur.row.id_hash,
                cur.row.version,
                &codec::encode(login)?,
                state_hash,
                finish,
                self.clock.now(),
            )
            .await?;
        if saved {
            Ok(())
        } else if finish {
            Err(FlowError::AlreadyUsed)
        } else {
            Err(FlowError::Conflict)
        }
    }

    /// A login succeeded: a new session (new id, OWASP ASVS 5.0 V7.2.4),
    /// then a code for the client.
    async fn logged_in(
        &self,
        request: &AuthorizeRequest,
        identity: Identity,
        browser: Browser<'_>,
    ) -> Result<Next, FlowError> {
        // Refused before any session exists: nothing to clean up.
        if let Some(error) = self.refusal(request, &identity) {
            self.metrics.login_failed(
                self.connector_label(&identity.connector_id),
                error.code.as_str(),
            );
            return self.refused(request, &error);
        }
        // The session and the client's code in one store call (one commit).
        let (row, started) = self
            .new_session(identity, browser, self.ttl.session)
            .await?;
        let (code, insert) = self.new_code(request, &started.session)?;
        self.store_session(&row, Some(&insert)).await?;
        tracing::info!(connector = %started.session.identity.connector_id, client = %request.client_id, "login succeeded");
        let redirect = self.code_redirect(request, &code)?;
        Ok(Next::LoggedIn {
            session_cookie: started.cookie,
            device_cookie: started.device_cookie,
            expires_at: started.session.expires_at,
            redirect,
        })
    }

    /// Starts a browser session for `identity`, replacing the session the
    /// browser had (a new id at every login: no fixation, OWASP ASVS 5.0
    /// V7.2.4) and the user's earlier sessions on the same device (one
    /// session per user and device; the user's other devices keep theirs).
    /// Every login, through an authorization request or a connector's own
    /// pages and API, ends here.
    pub async fn start_session(
        &self,
        identity: Identity,
        browser: Browser<'_>,
    ) -> Result<StartedSession, FlowError> {
        self.start_session_for(identity, browser, self.ttl.session)
            .await
    }

    /// [`Flows::start_session`] with a lifetime of `ttl` seconds (a
    /// privileged session is short, at most the configured session's).
    pub async fn start_session_for(
        &self,
        identity: Identity,
        browser: Browser<'_>,
        ttl: i64,
    ) -> Result<StartedSession, FlowError> {
        let (row, started) = self.new_session(identity, browser, ttl).await?;
        self.store_session(&row, None).await?;
        Ok(started)
    }

    /// Stores a new session `row` (and the code of its first client, when
    /// given), replacing the user's earlier session on the same device.
    async fn store_session(
        &self,
        row: &SessionRow,
        code: Option<&CodeInsert>,
    ) -> Result<(), FlowError> {
        // One store call: the user's earlier session on this device goes,
        // the new one comes.
        let replaced = self.store.replace_device_sessions(row, code).await?;
        if !replaced.is_empty() {
            tracing::info!(connector = %row.connector_id, replaced = replaced.len(), "a new login replaced the session of this device");
        }
        self.metrics
            .login_succeeded(self.connector_label(&row.connector_id));
        Ok(())
    }

    /// The row and the cookies of a new session for `identity`, not stored
    /// yet ([`Flows::store_session`]); the browser's earlier session is
    /// deleted.
    async fn new_session(
        &self,
        identity: Identity,
        browser: Browser<'_>,
        ttl: i64,
    ) -> Result<(SessionRow, StartedSession), FlowError> {
        let ttl = ttl.min(self.ttl.session);
        let now = self.clock.now();
        if let Some(old) = browser.session {
            self.store.delete_session(&hash(old)).await?;
        }
        // A device id the browser did not get from us is never adopted.
        let device_cookie = browser
            .device
            .filter(|d| device::is_valid_id(d))
            .map_or_else(random_token, String::from);
        let device_hash = device::id_hash(&device_cookie);
        // OIDC Core §2: auth_time is when the user authenticated, which is
        // the upstream's moment when it tells (never in our future).
        let auth_time = identity.auth_time.map_or(now, |t| t.min(now));
        let cookie = random_token();
        let row = SessionRow {
            id_hash: hash(&cookie),
            sid: random_token(),
            connector_id: identity.connector_id.clone(),
            subject: identity.subject.clone(),
            auth_time,
            data: codec::encode(&SessionData {
                identity: identity.clone(),
            })?,
            created_at: now,
            expires_at: now.saturating_add(ttl),
            device_hash: Some(device_hash),
            device_label: Some(device::label(browser.user_agent)),
            ip: browser.ip.map(String::from),
            last_seen_at: Some(now),
        };
        let started = StartedSession {
            cookie,
            device_cookie,
            session: Session {
                sid: row.sid.clone(),
                identity,
                auth_time,
                expires_at: row.expires_at,
                created_at: row.created_at,
                last_seen_at: row.last_seen_at,
                device_label: row.device_label.clone(),
                ip: row.ip.clone(),
            },
        };
        Ok((row, started))
    }

    /// Stores a code for `request` in session `s` and returns the client
    /// redirect.
    async fn issue_code(
        &self,
        request: &AuthorizeRequest,
        s: &Session,
    ) -> Result<String, FlowError> {
        let (code, insert) = self.new_code(request, s)?;
        self.store.insert_code_for_session(&insert).await?;
        self.code_redirect(request, &code)
    }

    /// The redirect that hands `code` to the client (RFC 6749 §4.1.2).
    fn code_redirect(&self, request: &AuthorizeRequest, code: &str) -> Result<String, FlowError> {
        code_redirect(
            &request.redirect_uri,
            code,
            request.state.as_deref(),
            &self.issuer,
        )
        .ok_or(FlowError::BadRedirect)
    }

    /// A new code for `request` in session `s`, and its store row.
    fn new_code(
        &self,
        request: &AuthorizeRequest,
        s: &Session,
    ) -> Result<(String, CodeInsert), FlowError> {
        let now = self.clock.now();
        let code = random_token();
        let record = CodeRecord {
            request: request.clone(),
            identity: s.identity.clone(),
            auth_time: s.auth_time,
            sid: s.sid.clone(),
        };
        let insert = CodeInsert {
            code_hash: hash(&code),
            data: codec::encode(&record)?,
            expires_at: now + self.ttl.code,
            sid: s.sid.clone(),
            client_id: request.client_id.clone(),
            now,
            session_expires_at: s.expires_at,
        };
        Ok((code, insert))
    }

    fn error_to_client(
        &self,
        request: &AuthorizeRequest,
        error: &OAuthError,
    ) -> Result<Next, FlowError> {
        error_redirect(
            &request.redirect_uri,
            request.state.as_deref(),
            error,
            &self.issuer,
        )
        .map(Next::ErrorToClient)
        .ok_or(FlowError::BadRedirect)
    }

    /// A refused login: the gate's `access_denied` as a page of ours with
    /// the way back to the client, unless the client asked for no UI
    /// (`prompt=none`, OIDC Core §3.1.2.6); any other refusal goes to the
    /// client at once.
    fn refused(&self, request: &AuthorizeRequest, error: &OAuthError) -> Result<Next, FlowError> {
        let back = match self.error_to_client(request, error)? {
            Next::ErrorToClient(back)
                if error.code == ErrorCode::AccessDenied && request.prompt != Prompt::None =>
            {
                back
            }
            other => return Ok(other),
        };
        let client_name = self
            .clients
            .get(&request.client_id)
            .map_or_else(|| request.client_id.clone(), |c| c.name.clone());
        Ok(Next::NotAllowed { client_name, back })
    }

    fn form_view(
        &self,
        login_id: &str,
        login: &Login,
        connector_id: &str,
        auth: Option<&AuthState>,
        username: String,
        error: Option<&str>,
    ) -> FormView {
        let (email_codes, passkeys) = match self.connector(connector_id).map(|c| &c.kind) {
            Some(ConnectorKind::Local(authn)) => (
                authn.has_codes() && authn.accounts().config().email_codes,
                authn.passkeys().is_some(),
            ),
            _ => (false, false),
        };
        let stage = stage_of(auth);
        let passkey_options = match auth {
            Some(AuthState::InProgress {
                challenge: Some(c), ..
            }) if stage == FormStage::Passkey => Some(c.options.clone()),
            _ => None,
        };
        FormView {
            stage,
            email_codes,
            passkeys,
            passkey_options,
            login_id: login_id.to_string(),
            connector_id: connector_id.to_string(),
            client_name: self
                .clients
                .get(&login.request.client_id)
                .map(|c| c.name.clone()),
            username,
            error: error.map(String::from),
        }
    }
}

/// Runs the local-accounts steps a form stands for through the one
/// authentication state machine ([`crate::accounts::authn`]).
async fn local_steps(
    authn: &crate::accounts::authn::Authenticator,
    auth: Option<&AuthState>,
    input: LocalInput<'_>,
) -> Result<(AuthState, Reply), AuthError> {
    let init = |username: &str| Step::Init {
        username: username.to_string(),
        privileged: false,
    };
    match input {
        LocalInput::Password { username, password } => {
            // A password starts the authentication over.
            let (state, reply) = authn.advance(None, init(username)).await?;
            let Reply::Choose(mechs) = reply else {
                return Err(AuthError::OutOfOrder { step: "init" });
            };
            let mech = [Mech::PasswordMfa, Mech::Password]
                .into_iter()
                .find(|m| mechs.contains(m))
                .ok_or(AuthError::MechNotOffered)?;
            let (state, _) = authn.advance(Some(&state), Step::Begin(mech)).await?;
            authn
                .advance(
                    Some(&state),
                    Step::Cred(Credential::Password(password.to_string())),
                )
                .await
        }
        LocalInput::RequestCode { username } => {
            let (state, _) = authn.advance(None, init(username)).await?;
            authn
                .advance(Some(&state), Step::Begin(Mech::EmailCode))
                .await
        }
        LocalInput::Code { code } => {
            let state = auth.ok_or(AuthError::OutOfOrder { step: "cred" })?;
            let cred = match state.allowed().first() {
                Some(CredKind::Totp) => Credential::Totp(code.to_string()),
                Some(CredKind::EmailCode) => Credential::EmailCode(code.to_string()),
                _ => return Err(AuthError::OutOfOrder { step: "cred" }),
            };
            authn.advance(Some(state), Step::Cred(cred)).await
        }
        LocalInput::PasskeyBegin { username } => authn.begin_passkey(username).await,
        LocalInput::Passkey { credential } => {
            let state = auth.ok_or(AuthError::OutOfOrder { step: "cred" })?;
            authn
                .advance(
                    Some(state),
                    Step::Cred(Credential::Passkey(credential.to_string())),
                )
                .await
        }
    }
}

/// How an authentication step that does not fit ends a form post.
fn flow_error(e: AuthError) -> FlowError {
    match e {
        AuthError::OutOfOrder { .. }
        | AuthError::WrongCredential { .. }
        | AuthError::Finished
        | AuthError::MechNotOffered => FlowError::WrongStep,
        AuthError::Throttled { retry_after } => FlowError::Throttled { retry_after },
        AuthError::Account(crate::accounts::AccountError::Hash(
            crate::password::HashError::Busy,
        )) => FlowError::Busy,
        AuthError::Malformed(m) => FlowError::Malformed(m),
        other => FlowError::ConnectorFailed(other.to_string()),
    }
}

/// The form an authentication state asks for next.
fn stage_of(auth: Option<&AuthState>) -> FormStage {
    match auth.and_then(|a| a.allowed().first().copied()) {
        Some(CredKind::Totp) => FormStage::Totp,
        Some(CredKind::EmailCode) => FormStage::EmailCode,
        // A passkey asked for after a password; a passkey login begun from
        // the password form stays there (its script holds the options).
        Some(CredKind::Passkey) if matches!(auth, Some(AuthState::InProgress { done, .. }) if !done.is_empty()) => {
            FormStage::Passkey
        }
        _ => FormStage::Password,
    }
}

/// The username an authentication under way is for.
fn username_of(auth: Option<&AuthState>) -> String {
    match auth {
        Some(AuthState::Choosing { username, .. } | AuthState::InProgress { username, .. }) => {
            username.clone()
        }
        _ => String::new(),
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), c.as_str()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use serde_json::json;

    use super::*;
    use crate::clock::{Clock, ManualClock, SystemClock};
    use crate::config::LocalUserConfig;
    use crate::connector::{BeginResponse, CallbackConnector, ConnectorError};
    use crate::store::{Redeemed, SqlStore};

    #[test]
    fn max_age_freshness_at_one_second_resolution() {
        assert!(fresh_enough(None, 0, 1_000_000));
        // max_age=0 always re-authenticates, even within the login's second.
        assert!(!fresh_enough(Some(0), 100, 100));
        assert!(fresh_enough(Some(60), 100, 159));
        assert!(!fresh_enough(Some(60), 100, 160));
    }

    /// What a begin asked of the upstream.
    #[derive(Debug, Clone, PartialEq)]
    struct Begun {
        prompt: Option<String>,
        max_age: Option<i64>,
        login_hint: Option<String>,
        callback_url: String,
    }

    /// An upstream that answers from a script.
    #[derive(Default)]
    struct ScriptedUpstream {
        begun: Mutex<Vec<Begun>>,
        auth_time: Option<i64>,
    }

    #[async_trait]
    impl CallbackConnector for ScriptedUpstream {
        async fn begin(&self, req: &BeginRequest<'_>) -> Result<BeginResponse, ConnectorError> {
            self.begun.lock().unwrap().push(Begun {
                prompt: req.prompt.map(String::from),
                max_age: req.max_age,
                login_hint: req.login_hint.map(String::from),
                callback_url: req.callback_url.to_string(),
            });
            Ok(BeginResponse {
                redirect_url: format!("https://up.example/authorize?state={}", req.state),
                connector_state: "opaque".into(),
            })
        }

        async fn complete(
            &self,
            _callback_url: &str,
            params: &HashMap<String, String>,
            connector_state: &str,
        ) -> Result<Identity, ConnectorError> {
            assert_eq!(connector_state, "opaque");
            if params.get("error").is_some() {
                return Err(ConnectorError::Denied("denied".into()));
            }
            Ok(Identity {
                connector_id: "up".into(),
                subject: "u-1".into(),
                claims: json!({"sub": "u-1"}).as_object().unwrap().clone(),
                auth_time: self.auth_time,
                upstream: None,
                amr: Vec::new(),
                acr: None,
            })
        }
    }

    struct Fixture {
        flows: Arc<Flows>,
        store: Arc<dyn Store>,
        clock: Arc<ManualClock>,
        upstream: Arc<ScriptedUpstream>,
        _dir: Option<tempfile::TempDir>,
    }

    const TX: &str = "transaction-cookie-value-of-the-browser-000000";

    fn browser() -> Browser<'static> {
        Browser {
            transaction: TX,
            session: None,
            device: None,
            ip: None,
            user_agent: None,
        }
    }

    fn client() -> Client {
        Client {
            id: "app".into(),
            name: "App".into(),
            secret_hash: None,
            redirect_uris: vec!["https://app.example/cb".into()],
            allowed_scopes: vec!["openid".into()],
            public: true,
            require_pkce: true,
            grant_types: vec![crate::provider::GrantType::AuthorizationCode],
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
            id_token_alg: None,
            upstreams: None,
        }
    }

    fn request() -> AuthorizeRequest {
        AuthorizeRequest {
            client_id: "app".into(),
            redirect_uri: "https://app.example/cb".into(),
            scopes: vec!["openid".into()],
            state: Some("rp-state".into()),
            nonce: Some("n".into()),
            code_challenge: None,
            prompt: Prompt::Default,
            max_age: None,
            login_hint: None,
            upstream_hint: None,
        }
    }

    async fn fixture_on(
        store: Arc<dyn Store>,
        dir: Option<tempfile::TempDir>,
        with_local: bool,
        auth_time: Option<i64>,
    ) -> Fixture {
        let clock = Arc::new(ManualClock::new());
        let upstream = Arc::new(ScriptedUpstream {
            auth_time,
            ..Default::default()
        });
        let mut connectors = vec![Connector {
            id: "up".into(),
            name: "Upstream".into(),
            kind: ConnectorKind::Callback(upstream.clone()),
        }];
        if with_local {
            let accounts = Arc::new(crate::accounts::Accounts::new(
                store.clone(),
                Arc::new(crate::password::Hasher::new(2, 64).unwrap()),
                Arc::new(crate::keys::EncryptionKey::generate().unwrap()),
                clock.clone(),
                crate::config::AccountsConfig::default(),
                "Test".into(),
            ));
            accounts
                .seed(&[LocalUserConfig {
                    username: "alice".into(),
                    password_hash: None,
                    password: Some("pw".into()),
                    name: None,
                    email: None,
                    groups: vec![],
                }])
                .await
                .unwrap();
            connectors.push(Connector {
                id: "local".into(),
                name: "Local".into(),
                kind: ConnectorKind::Local(Arc::new(crate::accounts::authn::Authenticator::new(
                    accounts, None,
                ))),
            });
        }
        let flows = Flows::new(
            store.clone(),
            Arc::new(HashMap::from([("app".to_string(), client())])),
            connectors,
            clock.clone(),
            "https://adapter.example".into(),
            Lifetimes {
                login: 600,
                code: 60,
                session: 3600,
            },
        );
        Fixture {
            flows: Arc::new(flows),
            store,
            clock,
            upstream,
            _dir: dir,
        }
    }

    async fn fixture(with_local: bool, auth_time: Option<i64>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/flow.db", dir.path().display());
        let store: Arc<dyn Store> = Arc::new(SqlStore::connect(&url, 4).await.unwrap());
        fixture_on(store, Some(dir), with_local, auth_time).await
    }

    fn param(url: &str, name: &str) -> Option<String> {
        url::Url::parse(url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    fn callback(state: &str) -> HashMap<String, String> {
        HashMap::from([
            ("state".to_string(), state.to_string()),
            ("code".to_string(), "up-code".to_string()),
        ])
    }

    /// Starts a login at the single upstream; returns the upstream state.
    async fn start_upstream(f: &Fixture, req: AuthorizeRequest) -> String {
        match f.flows.authorize(req, browser()).await.unwrap() {
            Next::RedirectUpstream(url) => param(&url, "state").unwrap(),
            other => panic!("expected the upstream redirect, got {other:?}"),
        }
    }

    async fn code_record(f: &Fixture, redirect: &str) -> CodeRecord {
        let code = param(redirect, "code").expect("a code");
        match f
            .store
            .redeem_code_and_issue(&hash(&code), "g", f.clock.now(), Box::new(|_, _| Ok(None)))
            .await
            .unwrap()
        {
            Redeemed::Fresh { data, .. } => codec::decode(&data).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn what_the_client_asked_reaches_the_upstream() {
        let f = fixture(false, None).await;
        let mut req = request();
        req.prompt = Prompt::Login;
        req.max_age = Some(30);
        req.login_hint = Some("alice@example.org".into());
        start_upstream(&f, req).await;
        assert_eq!(
            f.upstream.begun.lock().unwrap().clone(),
            vec![Begun {
                prompt: Some("login".into()),
                max_age: Some(30),
                login_hint: Some("alice@example.org".into()),
                callback_url: "https://adapter.example/login/oauth2/code/up".into(),
            }]
        );
    }

    #[tokio::test]
    async fn the_upstream_auth_time_is_the_login_time() {
        let upstream_login = SystemClock.now() - 500;
        let f = fixture(false, Some(upstream_login)).await;
        let state = start_upstream(&f, request()).await;
        let next = f
            .flows
            .callback("up", &callback(&state), browser())
            .await
            .unwrap();
        let Next::LoggedIn { redirect, .. } = next else {
            panic!("{next:?}")
        };
        assert_eq!(param(&redirect, "state").as_deref(), Some("rp-state"));
        assert_eq!(
            param(&redirect, "iss").as_deref(),
            Some("https://adapter.example")
        );
        let record = code_record(&f, &redirect).await;
        assert_eq!(record.auth_time, upstream_login);
        assert_eq!(record.request, request());
    }

    #[tokio::test]
    async fn without_an_upstream_auth_time_the_login_is_now() {
        let f = fixture(false, None).await;
        let state = start_upstream(&f, request()).await;
        f.clock.advance(7);
        let Next::LoggedIn { redirect, .. } = f
            .flows
            .callback("up", &callback(&state), browser())
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(code_record(&f, &redirect).await.auth_time, f.clock.now());
    }

    /// Two callbacks with one state (a replay racing the original): one
    /// login, the others see it used.
    async fn racing_callbacks_have_one_winner(f: Fixture) {
        for _ in 0..5 {
            let state = start_upstream(&f, request()).await;
            let mut handles = Vec::new();
            for _ in 0..4 {
                let flows = f.flows.clone();
                let state = state.clone();
                handles.push(tokio::spawn(async move {
                    flows.callback("up", &callback(&state), browser()).await
                }));
            }
            let mut wins = 0;
            for h in handles {
                match h.await.unwrap() {
                    Ok(Next::LoggedIn { .. }) => wins += 1,
                    Err(FlowError::AlreadyUsed) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(wins, 1);
        }
    }

    #[tokio::test]
    async fn racing_callbacks_have_one_winner_on_sqlite() {
        racing_callbacks_have_one_winner(fixture(false, None).await).await;
    }

    #[tokio::test]
    async fn racing_callbacks_have_one_winner_on_postgres() {
        let pg = crate::store::conformance::TestPostgres::new().await;
        let store: Arc<dyn Store> = Arc::new(pg.store.clone());
        racing_callbacks_have_one_winner(fixture_on(store, None, false, None).await).await;
        pg.drop_schema().await;
    }

    #[tokio::test]
    async fn racing_credential_posts_have_one_winner() {
        let f = fixture(true, None).await;
        let Next::ShowChooser(choices) = f.flows.authorize(request(), browser()).await.unwrap()
        else {
            panic!("two connectors: a chooser")
        };
        let link = &choices.iter().find(|c| c.0 == "local").unwrap().2;
        let login_id = link.split("req=").nth(1).unwrap().to_string();
        let next = f
            .flows
            .step(
                &login_id,
                browser(),
                Event::Chose {
                    connector_id: "local",
                },
            )
            .await
            .unwrap();
        assert_eq!(next, Next::Redirect(format!("/login/local?req={login_id}")));
        let mut handles = Vec::new();
        for _ in 0..4 {
            let flows = f.flows.clone();
            let id = login_id.clone();
            handles.push(tokio::spawn(async move {
                let event = Event::Credentials {
                    connector_id: "local",
                    input: LocalInput::Password {
                        username: "alice",
                        password: "pw",
                    },
                };
                flows.step(&id, browser(), event).await
            }));
        }
        let mut wins = 0;
        for h in handles {
            match h.await.unwrap() {
                Ok(Next::LoggedIn { .. }) => wins += 1,
                Err(FlowError::AlreadyUsed) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(wins, 1, "one double-submitted form logs in once");
    }

    #[tokio::test]
    async fn a_wrong_password_keeps_the_login_and_shows_the_form_again() {
        let f = fixture(true, None).await;
        let Next::ShowChooser(choices) = f.flows.authorize(request(), browser()).await.unwrap()
        else {
            panic!()
        };
        let login_id = choices[1].2.split("req=").nth(1).unwrap().to_string();
        f.flows
            .step(
                &login_id,
                browser(),
                Event::Chose {
                    connector_id: "local",
                },
            )
            .await
            .unwrap();
        let bad = Event::Credentials {
            connector_id: "local",
            input: LocalInput::Password {
                username: "alice",
                password: "nope",
            },
        };
        let Next::ShowForm(view) = f.flows.step(&login_id, browser(), bad).await.unwrap() else {
            panic!()
        };
        assert_eq!(view.error.as_deref(), Some("Invalid username or password."));
        assert_eq!(view.username, "alice");
        let good = Event::Credentials {
            connector_id: "local",
            input: LocalInput::Password {
                username: "alice",
                password: "pw",
            },
        };
        assert!(matches!(
            f.flows.step(&login_id, browser(), good).await.unwrap(),
            Next::LoggedIn { .. }
        ));
    }

    #[tokio::test]
    async fn events_out_of_step_are_refused() {
        let f = fixture(true, None).await;
        let Next::ShowChooser(choices) = f.flows.authorize(request(), browser()).await.unwrap()
        else {
            panic!()
        };
        let login_id = choices[0].2.split("req=").nth(1).unwrap().to_string();
        // Credentials before any connector was chosen.
        let creds = Event::Credentials {
            connector_id: "local",
            input: LocalInput::Password {
                username: "alice",
                password: "pw",
            },
        };
        assert!(matches!(
            f.flows.step(&login_id, browser(), creds).await,
            Err(FlowError::WrongStep)
        ));
        // Another browser cannot continue it.
        let other = Browser {
            transaction: "another-browser-transaction-cookie-0000000000",
            ..browser()
        };
        assert!(matches!(
            f.flows
                .step(&login_id, other, Event::Chose { connector_id: "up" })
                .await,
            Err(FlowError::OtherBrowser)
        ));
        let Next::RedirectUpstream(url) = f
            .flows
            .step(&login_id, browser(), Event::Chose { connector_id: "up" })
            .await
            .unwrap()
        else {
            panic!()
        };
        let state = param(&url, "state").unwrap();
        // The answer must come back on the callback of that upstream.
        assert!(matches!(
            f.flows
                .callback("local", &callback(&state), browser())
                .await,
            Err(FlowError::MixUp)
        ));
        // Credentials while waiting for the upstream.
        assert!(matches!(
            f.flows.step(&login_id, browser(), creds).await,
            Err(FlowError::WrongStep)
        ));
        assert!(matches!(
            f.flows.callback("up", &HashMap::new(), browser()).await,
            Err(FlowError::MissingState)
        ));
        assert!(matches!(
            f.flows.callback("up", &callback("forged"), browser()).await,
            Err(FlowError::UnknownState)
        ));
        f.clock.advance(600);
        assert!(matches!(
            f.flows.callback("up", &callback(&state), browser()).await,
            Err(FlowError::UnknownLogin)
        ));
    }

    #[tokio::test]
    async fn an_upstream_refusal_goes_to_the_client_with_its_state() {
        let f = fixture(false, None).await;
        let state = start_upstream(&f, request()).await;
        let mut params = callback(&state);
        params.insert("error".into(), "access_denied".into());
        let Next::ErrorToClient(url) = f.flows.callback("up", &params, browser()).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(param(&url, "error").as_deref(), Some("access_denied"));
        assert_eq!(param(&url, "state").as_deref(), Some("rp-state"));
        // The login is over: the same callback again is a replay.
        assert!(matches!(
            f.flows.callback("up", &params, browser()).await,
            Err(FlowError::AlreadyUsed)
        ));
    }

    /// Logs in once and returns the session cookie.
    async fn session_cookie(f: &Fixture) -> String {
        let state = start_upstream(f, request()).await;
        match f
            .flows
            .callback("up", &callback(&state), browser())
            .await
            .unwrap()
        {
            Next::LoggedIn { session_cookie, .. } => session_cookie,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn single_sign_on_respects_prompt_and_max_age() {
        let f = fixture(false, None).await;
        let cookie = session_cookie(&f).await;
        let with_session = Browser {
            session: Some(&cookie),
            ..browser()
        };
        let sso = |req| f.flows.authorize(req, with_session);
        assert!(matches!(sso(request()).await.unwrap(), Next::CodeIssued(_)));
        // max_age=0 re-authenticates even within the login's second.
        let mut req = request();
        req.max_age = Some(0);
        assert!(matches!(sso(req).await.unwrap(), Next::RedirectUpstream(_)));
        let mut req = request();
        req.prompt = Prompt::Login;
        assert!(matches!(sso(req).await.unwrap(), Next::RedirectUpstream(_)));
        f.clock.advance(60);
        let mut req = request();
        req.max_age = Some(61);
        assert!(matches!(sso(req).await.unwrap(), Next::CodeIssued(_)));
        let mut req = request();
        req.max_age = Some(60);
        assert!(matches!(sso(req).await.unwrap(), Next::RedirectUpstream(_)));
        // prompt=none with a session too old for max_age: no UI, an error.
        let mut req = request();
        req.max_age = Some(10);
        req.prompt = Prompt::None;
        let Next::ErrorToClient(url) = sso(req).await.unwrap() else {
            panic!()
        };
        assert_eq!(param(&url, "error").as_deref(), Some("login_required"));
    }

    #[tokio::test]
    async fn prompt_none_without_a_session_is_login_required() {
        let f = fixture(false, None).await;
        let mut req = request();
        req.prompt = Prompt::None;
        let Next::ErrorToClient(url) = f.flows.authorize(req, browser()).await.unwrap() else {
            panic!()
        };
        assert_eq!(param(&url, "error").as_deref(), Some("login_required"));
        assert_eq!(param(&url, "state").as_deref(), Some("rp-state"));
        assert!(
            f.upstream.begun.lock().unwrap().is_empty(),
            "no UI, no upstream"
        );
    }

    #[tokio::test]
    async fn a_new_login_replaces_the_old_session() {
        let f = fixture(false, None).await;
        let old = session_cookie(&f).await;
        let state = start_upstream(&f, request()).await;
        let with_old = Browser {
            session: Some(&old),
            ..browser()
        };
        let Next::LoggedIn { session_cookie, .. } = f
            .flows
            .callback("up", &callback(&state), with_old)
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_ne!(session_cookie, old);
        assert!(f.flows.session(Some(&old)).await.unwrap().is_none());
        let new = f
            .flows
            .session(Some(&session_cookie))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(new.identity.subject, "u-1");
        assert_eq!(
            f.store.session_clients(&new.sid).await.unwrap(),
            vec!["app".to_string()]
        );
    }
}
