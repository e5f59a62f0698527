//! Multi-step authentication of local accounts, in the shape of Kanidm's
//! auth flow: `init` (a username; `init2` asks for a privileged session) →
//! `choose` (the mechanisms this account may use) → `begin` (one of them) →
//! `continue` (the credential needed next) → `cred` … → `success` or
//! `denied`. Password + TOTP loops until both are given.
//!
//! One transition function, [`Authenticator::advance`], decides every step
//! for both front ends: the JSON API (`/api/auth`) keeps the [`AuthState`]
//! in the store between requests, the HTML login form keeps it inside the
//! login of an authorization request. A step that does not fit the state
//! (out of order, replayed after the end, a mechanism not offered) is an
//! [`AuthError`] and leaves the state as it was.
//!
//! An unknown username is answered like a known one (the deployment's
//! mechanisms, a dummy password verification, the same denial), so the
//! flow does not reveal which accounts exist.
//!
//! A passkey (WebAuthn L2) is one more mechanism: `begin` passkey answers
//! `continue` with the request options (a fresh challenge, the account's
//! `allowCredentials`); the challenge is kept in the state, so the one
//! `cred` that answers it ends the authentication either way (single use),
//! and it expires after `passkeys.challenge_ttl_seconds`.
//!
//! ```text
//!  (none) ──Init/Init2──► Choosing ──Begin(mech)──► InProgress{needed}
//!                                                     │ Cred ok, more needed ─► InProgress
//!                                                     │ Cred ok, none left ───► Success
//!                                                     │ Cred wrong (password) ► Denied
//!                                                     └ Cred wrong (code) ────► InProgress (retry)
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::passkeys::{LoginVerdict, PasskeyError, Passkeys};
use super::{Account, AccountError, Accounts};
use crate::config::LoginPolicy;
use crate::connector::Identity;
use crate::ratelimit::{RateLimits, Scope};

/// A mechanism, as offered by `choose` and picked by `begin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mech {
    Password,
    /// Password and a TOTP code (RFC 6238).
    PasswordMfa,
    /// A one-time code sent by e-mail.
    EmailCode,
    /// A passkey (WebAuthn L2), username-first or (after an `init`
    /// without a username) usernameless.
    Passkey,
    /// A password, then a passkey as the second factor.
    PasswordPasskey,
}

impl Mech {
    pub fn as_str(self) -> &'static str {
        match self {
            Mech::Password => "password",
            Mech::PasswordMfa => "password_mfa",
            Mech::EmailCode => "email_code",
            Mech::Passkey => "passkey",
            Mech::PasswordPasskey => "password_passkey",
        }
    }

    pub fn parse(s: &str) -> Option<Mech> {
        match s {
            "password" => Some(Mech::Password),
            "password_mfa" => Some(Mech::PasswordMfa),
            "email_code" => Some(Mech::EmailCode),
            "passkey" => Some(Mech::Passkey),
            "password_passkey" => Some(Mech::PasswordPasskey),
            _ => None,
        }
    }

    /// The credentials this mechanism needs, in order.
    fn needs(self) -> Vec<CredKind> {
        match self {
            Mech::Password => vec![CredKind::Password],
            Mech::PasswordMfa => vec![CredKind::Password, CredKind::Totp],
            Mech::EmailCode => vec![CredKind::EmailCode],
            Mech::Passkey => vec![CredKind::Passkey],
            Mech::PasswordPasskey => vec![CredKind::Password, CredKind::Passkey],
        }
    }
}

/// A kind of credential (`continue` lists what is needed next).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredKind {
    Password,
    /// A TOTP code, or one of the recovery codes in its place.
    Totp,
    EmailCode,
    /// A WebAuthn assertion.
    Passkey,
}

impl CredKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredKind::Password => "password",
            CredKind::Totp => "totp",
            CredKind::EmailCode => "email_code",
            CredKind::Passkey => "passkey",
        }
    }

    /// RFC 8176 §2 method of a satisfied credential.
    fn amr(self) -> &'static str {
        match self {
            CredKind::Password => "pwd",
            CredKind::Totp | CredKind::EmailCode => "otp",
            // Refined to `swk` for a backup-eligible passkey (see `passkeys`).
            CredKind::Passkey => "hwk",
        }
    }
}

/// A credential presented by `cred`.
#[derive(Clone)]
pub enum Credential {
    Password(String),
    Totp(String),
    EmailCode(String),
    /// A `PublicKeyCredential` (assertion) as JSON text.
    Passkey(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value.
        f.write_str(self.kind().as_str())
    }
}

impl Credential {
    pub fn kind(&self) -> CredKind {
        match self {
            Credential::Password(_) => CredKind::Password,
            Credential::Totp(_) => CredKind::Totp,
            Credential::EmailCode(_) => CredKind::EmailCode,
            Credential::Passkey(_) => CredKind::Passkey,
        }
    }
}

/// What the client does next.
#[derive(Debug, Clone)]
pub enum Step {
    /// `init` (`privileged: false`) or `init2` (`privileged: true`).
    Init {
        username: String,
        privileged: bool,
    },
    Begin(Mech),
    Cred(Credential),
}

impl Step {
    /// A fixed name, for errors and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Init {
                privileged: false, ..
            } => "init",
            Step::Init {
                privileged: true, ..
            } => "init2",
            Step::Begin(_) => "begin",
            Step::Cred(_) => "cred",
        }
    }
}

/// The challenge of a passkey login, kept server-side in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyChallenge {
    /// The `webauthn-rs` authentication state (challenge, allowed
    /// credentials), JSON.
    pub state: String,
    /// The request options sent with `continue` (sent again on a reload).
    pub options: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// A usernameless challenge (no `allowCredentials`): the assertion's
    /// user handle names the account.
    #[serde(default)]
    pub discoverable: bool,
}

/// Where an authentication stands (persisted between steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AuthState {
    Choosing {
        username: String,
        /// `None` for an unknown username (never shown to the client).
        account_id: Option<String>,
        privileged: bool,
        mechs: Vec<Mech>,
    },
    InProgress {
        username: String,
        account_id: Option<String>,
        privileged: bool,
        mech: Mech,
        /// Still to give, first one next.
        needed: Vec<CredKind>,
        /// Given and accepted.
        done: Vec<CredKind>,
        /// The challenge of a passkey login under way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        challenge: Option<PasskeyChallenge>,
    },
    Success {
        account_id: String,
        privileged: bool,
        amr: Vec<String>,
    },
    Denied {
        reason: String,
    },
}

impl AuthState {
    /// The `continue` list of this state.
    pub fn allowed(&self) -> Vec<CredKind> {
        match self {
            AuthState::InProgress { needed, .. } => needed.first().copied().into_iter().collect(),
            _ => Vec::new(),
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self, AuthState::Success { .. } | AuthState::Denied { .. })
    }
}

/// The answer to a step.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `choose`: the mechanisms on offer.
    Choose(Vec<Mech>),
    /// `continue`: the credential needed next; `retry` is set after a wrong
    /// code that may be typed again.
    Continue {
        allowed: Vec<CredKind>,
        retry: Option<String>,
        /// The WebAuthn request options of a passkey login
        /// (`{"publicKey": {...}}` for `navigator.credentials.get()`).
        options: Option<serde_json::Value>,
    },
    /// `success`: the user is authenticated.
    Success {
        identity: Box<Identity>,
        privileged: bool,
    },
    /// `denied`, with a reason fit for the user.
    Denied(String),
}

/// A step that does not fit. The state is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the step `{step}` is not allowed now")]
    OutOfOrder { step: &'static str },
    #[error("the mechanism is not offered")]
    MechNotOffered,
    #[error("the credential `{given}` is not the one needed next")]
    WrongCredential { given: &'static str },
    #[error("the authentication is over")]
    Finished,
    #[error("too many attempts; retry in {retry_after} s")]
    Throttled { retry_after: u64 },
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("e-mail codes: {0}")]
    Codes(String),
    /// A credential that cannot be read (malformed JSON, bad base64url).
    #[error("{0}")]
    Malformed(String),
    #[error("passkeys: {0}")]
    Passkeys(String),
}

impl From<PasskeyError> for AuthError {
    fn from(e: PasskeyError) -> Self {
        match e {
            PasskeyError::Malformed(m) => {
                AuthError::Malformed(format!("malformed passkey credential: {m}"))
            }
            PasskeyError::Account(a) => AuthError::Account(a),
            other => AuthError::Passkeys(other.to_string()),
        }
    }
}

impl AuthError {
    /// A fixed name (JSON `error`, metrics).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::OutOfOrder { .. } => "out_of_order",
            AuthError::MechNotOffered => "mech_not_offered",
            AuthError::WrongCredential { .. } => "wrong_credential",
            AuthError::Finished => "finished",
            AuthError::Throttled { .. } => "rate_limited",
            AuthError::Account(AccountError::Hash(_)) => "temporarily_unavailable",
            AuthError::Malformed(_) => "invalid_request",
            AuthError::Account(_) | AuthError::Codes(_) | AuthError::Passkeys(_) => "server_error",
        }
    }
}

/// Why an e-mail code was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRejection {
    /// Wrong; this many tries remain.
    Invalid {
        attempts_left: u32,
    },
    /// No code is waiting (never sent, used, or replaced).
    Missing,
    Expired,
    /// The attempts are used up: a new code is needed.
    TooManyAttempts,
}

/// One-time codes sent to an address (e-mail).
#[async_trait]
pub trait OneTimeCodes: Send + Sync + 'static {
    /// Sends a fresh code for (`purpose`, `address`), replacing earlier ones.
    async fn send(&self, purpose: &str, address: &str) -> Result<(), String>;
    /// Checks (and on success consumes) a code.
    async fn check(
        &self,
        purpose: &str,
        address: &str,
        code: &str,
    ) -> Result<Result<(), CodeRejection>, String>;
}

/// Purpose of the codes of a login.
pub const LOGIN_CODE: &str = "login";

/// The one message of every denial of a credential: an unknown user, a
/// wrong password and a disabled account look the same.
pub const DENIED: &str = "invalid username or password";

/// The denial of an assertion from a passkey this flow does not accept.
pub const DENIED_PASSKEY: &str = "the passkey was not accepted";

fn challenge_of(
    (options, state, expires_at): (serde_json::Value, String, i64),
    discoverable: bool,
) -> PasskeyChallenge {
    PasskeyChallenge {
        state,
        options: options.to_string(),
        expires_at,
        discoverable,
    }
}

/// Runs authentication steps for local accounts.
pub struct Authenticator {
    accounts: Arc<Accounts>,
    codes: Option<Arc<dyn OneTimeCodes>>,
    /// The per-account throttle of credential checks (shared through the
    /// store, so it holds across replicas).
    limits: Option<Arc<RateLimits>>,
    /// The WebAuthn Relying Party, when passkeys are configured.
    passkeys: Option<Arc<Passkeys>>,
}

impl Authenticator {
    pub fn new(accounts: Arc<Accounts>, codes: Option<Arc<dyn OneTimeCodes>>) -> Self {
        Authenticator {
            accounts,
            codes,
            limits: None,
            passkeys: None,
        }
    }

    /// Offers passkeys (to accounts that have one).
    pub fn with_passkeys(mut self, passkeys: Option<Arc<Passkeys>>) -> Self {
        self.passkeys = passkeys;
        self
    }

    /// The WebAuthn Relying Party, when passkeys are configured.
    pub fn passkeys(&self) -> Option<&Arc<Passkeys>> {
        self.passkeys.as_ref()
    }

    /// Throttles credential checks per account (OWASP ASVS 5.0 V6.3.1).
    pub fn with_rate_limits(mut self, limits: Arc<RateLimits>) -> Self {
        self.limits = Some(limits);
        self
    }

    pub fn accounts(&self) -> &Arc<Accounts> {
        &self.accounts
    }

    /// True when e-mail codes can be sent.
    pub fn has_codes(&self) -> bool {
        self.codes.is_some()
    }

    /// The mechanisms offered for `account` (the deployment's for an
    /// unknown user). A privileged session asks for the strongest one.
    fn mechs(&self, account: Option<&Account>, privileged: bool) -> Vec<Mech> {
        let policy = self.accounts.policy(account);
        let mut mechs = match policy {
            LoginPolicy::Password => vec![Mech::Password],
            LoginPolicy::PasswordTotp => vec![Mech::PasswordMfa],
            LoginPolicy::EmailCode => vec![Mech::EmailCode],
            LoginPolicy::Passkey => vec![Mech::Passkey],
            LoginPolicy::PasswordPasskey => vec![Mech::PasswordPasskey],
        };
        // E-mail codes are a second way in where the deployment allows
        // them and the account has an address (or might: unknown users
        // get the same offer).
        let email_ok = self.codes.is_some()
            && self.accounts.config().email_codes
            && account.is_none_or(|a| a.row.email.is_some());
        if email_ok
            && !privileged
            && policy == LoginPolicy::Password
            && !mechs.contains(&Mech::EmailCode)
        {
            mechs.push(Mech::EmailCode);
        }
        // A passkey is offered to the accounts that have one, under every
        // policy: it is a phishing-resistant credential with user
        // verification. (Its offer tells whoever knows the username that
        // the account has a passkey; a passkey is useless without the
        // authenticator.)
        if self.passkeys.is_some()
            && !policy.needs_passkey()
            && account.is_some_and(|a| !a.data.passkeys.is_empty())
        {
            mechs.push(Mech::Passkey);
        }
        mechs
    }

    /// The one transition function. `state` is `None` before `init`.
    pub async fn advance(
        &self,
        state: Option<&AuthState>,
        step: Step,
    ) -> Result<(AuthState, Reply), AuthError> {
        match (state, step) {
            (
                None,
                Step::Init {
                    username,
                    privileged,
                },
            ) => {
                let username = username.trim().to_lowercase();
                if username.is_empty() {
                    // Usernameless: only a discoverable passkey can say
                    // who the user is (WebAuthn L2 §5.8.2).
                    if self.passkeys.is_none() {
                        return Err(AuthError::Malformed("a username is required".into()));
                    }
                    let mechs = vec![Mech::Passkey];
                    return Ok((
                        AuthState::Choosing {
                            username,
                            account_id: None,
                            privileged,
                            mechs: mechs.clone(),
                        },
                        Reply::Choose(mechs),
                    ));
                }
                let account = self.accounts.find(&username).await?;
                let mechs = self.mechs(account.as_ref(), privileged);
                Ok((
                    AuthState::Choosing {
                        username,
                        account_id: account.map(|a| a.id().to_string()),
                        privileged,
                        mechs: mechs.clone(),
                    },
                    Reply::Choose(mechs),
                ))
            }
            (
                Some(AuthState::Choosing {
                    username,
                    account_id,
                    privileged,
                    mechs,
                }),
                Step::Begin(mech),
            ) => {
                if !mechs.contains(&mech) {
                    return Err(AuthError::MechNotOffered);
                }
                if mech == Mech::EmailCode {
                    self.send_code(username, account_id.as_deref()).await?;
                }
                let (challenge, options) = if mech == Mech::Passkey {
                    let Some(passkeys) = &self.passkeys else {
                        return Err(AuthError::MechNotOffered);
                    };
                    let account = self
                        .current(username, account_id.as_deref())
                        .await?
                        .filter(|a| !a.data.passkeys.is_empty() && !username.is_empty());
                    // Username-first lists the account's credentials; with
                    // no name (or a name without passkeys, which the answer
                    // must not reveal) the challenge is discoverable.
                    let challenge = match account {
                        Some(account) => challenge_of(passkeys.begin_login(&account)?, false),
                        None => challenge_of(passkeys.begin_discoverable()?, true),
                    };
                    let options = serde_json::from_str(&challenge.options)
                        .map_err(|e| AuthError::Passkeys(e.to_string()))?;
                    (Some(challenge), Some(options))
                } else {
                    (None, None)
                };
                let needed = mech.needs();
                let next = AuthState::InProgress {
                    username: username.clone(),
                    account_id: account_id.clone(),
                    privileged: *privileged,
                    mech,
                    needed,
                    done: Vec::new(),
                    challenge,
                };
                let allowed = next.allowed();
                Ok((
                    next,
                    Reply::Continue {
                        allowed,
                        retry: None,
                        options,
                    },
                ))
            }
            (
                Some(
                    cur @ AuthState::InProgress {
                        username,
                        account_id,
                        privileged,
                        needed,
                        done,
                        challenge,
                        ..
                    },
                ),
                Step::Cred(cred),
            ) => {
                let Some(&next_kind) = needed.first() else {
                    return Err(AuthError::Finished);
                };
                if cred.kind() != next_kind {
                    return Err(AuthError::WrongCredential {
                        given: cred.kind().as_str(),
                    });
                }
                // Malformed input is refused before anything is looked at,
                // and leaves the state (and its challenge) as it was.
                let assertion = match &cred {
                    Credential::Passkey(json) => Some(Passkeys::parse_assertion(json)?),
                    _ => None,
                };
                let mut account = self.current(username, account_id.as_deref()).await?;
                // The throttle is keyed by the name typed, known or not, so
                // it says nothing about which accounts exist. A usernameless
                // passkey has no name to key (the per-address quota counts
                // it; an assertion cannot be guessed).
                let limits = self.limits.as_ref().filter(|_| !username.is_empty());
                let scope = match next_kind {
                    CredKind::Password | CredKind::Passkey => Scope::Login,
                    CredKind::Totp => Scope::VerifyTotp,
                    CredKind::EmailCode => Scope::VerifyCode,
                };
                if let Some(limits) = limits {
                    limits.check_account(scope, username).await.map_err(|l| {
                        AuthError::Throttled {
                            retry_after: l.retry_after,
                        }
                    })?;
                }
                let verdict = match (assertion, &self.passkeys, challenge) {
                    (None, ..) => self.verify(account.as_ref(), &cred).await?,
                    (Some(assertion), Some(passkeys), Some(ch)) => {
                        let target = if ch.discoverable {
                            self.discovered(passkeys, &assertion, username, account.as_ref())
                                .await?
                        } else {
                            account.clone().ok_or(DENIED_PASSKEY)
                        };
                        match target {
                            Err(reason) => Verdict::Denied(reason),
                            Ok(target) => {
                                // WebAuthn L2 §7.2: every ceremony check in
                                // `webauthn-rs`, the counter against the
                                // credential as stored now.
                                let verdict = passkeys
                                    .finish_login(
                                        &self.accounts,
                                        &target,
                                        (&ch.state, ch.discoverable, ch.expires_at),
                                        &assertion,
                                    )
                                    .await?;
                                account = Some(target);
                                match verdict {
                                    LoginVerdict::Accepted(method) => Verdict::AcceptedAs(method),
                                    LoginVerdict::Refused(reason) => Verdict::Denied(reason),
                                }
                            }
                        }
                    }
                    (Some(_), ..) => Verdict::Denied(DENIED_PASSKEY),
                };
                if let Some(limits) = limits {
                    let counted = match &verdict {
                        Verdict::Accepted | Verdict::AcceptedAs(_) => {
                            limits.succeeded(scope, username).await
                        }
                        Verdict::Retry(_) | Verdict::Denied(_) => {
                            limits.failed(scope, username).await
                        }
                    };
                    if let Err(e) = counted {
                        // An outage of the throttle must not become a lockout.
                        tracing::warn!(error = %e, "login throttle not updated");
                    }
                }
                let method = match &verdict {
                    Verdict::AcceptedAs(m) => Some(*m),
                    _ => None,
                };
                match verdict {
                    Verdict::Accepted | Verdict::AcceptedAs(_) => {
                        let mut state = cur.clone();
                        if let AuthState::InProgress { needed, done, .. } = &mut state {
                            needed.remove(0);
                            done.push(next_kind);
                        }
                        if let AuthState::InProgress { challenge, .. } = &mut state {
                            // Used: it never answers a second assertion.
                            *challenge = None;
                        }
                        let (AuthState::InProgress { needed, .. }, Some(account)) =
                            (&state, account)
                        else {
                            // Accepted implies an account (unknown users are never accepted).
                            return Ok(denied(DENIED));
                        };
                        if !needed.is_empty() {
                            let mut options = None;
                            if needed.first() == Some(&CredKind::Passkey) {
                                // A passkey as the second factor: its
                                // challenge lists this account's credentials.
                                let Some(passkeys) = self
                                    .passkeys
                                    .as_ref()
                                    .filter(|_| !account.data.passkeys.is_empty())
                                else {
                                    return Ok(denied("no passkey is registered for this account"));
                                };
                                let ch = challenge_of(passkeys.begin_login(&account)?, false);
                                options = Some(
                                    serde_json::from_str(&ch.options)
                                        .map_err(|e| AuthError::Passkeys(e.to_string()))?,
                                );
                                if let AuthState::InProgress { challenge, .. } = &mut state {
                                    *challenge = Some(ch);
                                }
                            }
                            let allowed = state.allowed();
                            return Ok((
                                state,
                                Reply::Continue {
                                    allowed,
                                    retry: None,
                                    options,
                                },
                            ));
                        }
                        let mut all = done.clone();
                        all.push(next_kind);
                        let mut amr = amr_of(&all);
                        if let Some(method) = method {
                            for m in &mut amr {
                                if m == CredKind::Passkey.amr() {
                                    *m = method.to_string();
                                }
                            }
                        }
                        Ok((
                            AuthState::Success {
                                account_id: account.id().to_string(),
                                privileged: *privileged,
                                amr: amr.clone(),
                            },
                            Reply::Success {
                                identity: Box::new(account.identity(amr)),
                                privileged: *privileged,
                            },
                        ))
                    }
                    Verdict::Retry(message) => {
                        let allowed = cur.allowed();
                        Ok((
                            cur.clone(),
                            Reply::Continue {
                                allowed,
                                retry: Some(message),
                                options: None,
                            },
                        ))
                    }
                    Verdict::Denied(reason) => Ok(denied(reason)),
                }
            }
            (Some(AuthState::Success { .. } | AuthState::Denied { .. }), _) => {
                Err(AuthError::Finished)
            }
            (_, step) => Err(AuthError::OutOfOrder { step: step.name() }),
        }
    }

    /// Starts a passkey login: username-first when `username`'s account
    /// offers a passkey, otherwise usernameless (the authenticator names the
    /// account), which does not tell whether the name exists.
    pub async fn begin_passkey(&self, username: &str) -> Result<(AuthState, Reply), AuthError> {
        let init = |u: &str| Step::Init {
            username: u.to_string(),
            privileged: false,
        };
        let (state, reply) = self.advance(None, init(username)).await?;
        let offered = matches!(&reply, Reply::Choose(m) if m.contains(&Mech::Passkey));
        let state = if offered && !username.trim().is_empty() {
            state
        } else {
            self.advance(None, init("")).await?.0
        };
        self.advance(Some(&state), Step::Begin(Mech::Passkey)).await
    }

    /// The account a usernameless assertion names by its user handle: the
    /// one typed when a name was given, and one that may sign in with a
    /// passkey alone.
    async fn discovered(
        &self,
        passkeys: &Passkeys,
        assertion: &webauthn_rs::prelude::PublicKeyCredential,
        username: &str,
        typed: Option<&Account>,
    ) -> Result<Result<Account, &'static str>, AuthError> {
        let found = match passkeys.user_handle(assertion) {
            Some(handle) => self.accounts.find_by_passkey_handle(&handle).await?,
            None => None,
        };
        let Some(found) = found else {
            return Ok(Err(DENIED_PASSKEY));
        };
        if !username.is_empty() && typed.is_none_or(|t| t.id() != found.id()) {
            return Ok(Err(DENIED_PASSKEY));
        }
        if self.accounts.policy(Some(&found)) == LoginPolicy::PasswordPasskey {
            return Ok(Err(
                "this account signs in with a password and a passkey: enter your username first",
            ));
        }
        Ok(Ok(found))
    }

    /// The account as it is now (a credential changes its version): the
    /// one `init` found, still under that name, and not disabled.
    async fn current(
        &self,
        username: &str,
        id: Option<&str>,
    ) -> Result<Option<Account>, AuthError> {
        let Some(id) = id else { return Ok(None) };
        Ok(self
            .accounts
            .find(username)
            .await?
            .filter(|a| a.id() == id && !a.data.disabled))
    }

    async fn send_code(&self, username: &str, account_id: Option<&str>) -> Result<(), AuthError> {
        let Some(codes) = &self.codes else {
            return Err(AuthError::MechNotOffered);
        };
        // Unknown users get the same answer, and no mail.
        if let Some(account) = self.current(username, account_id).await? {
            if let Some(email) = &account.row.email {
                codes
                    .send(LOGIN_CODE, email)
                    .await
                    .map_err(AuthError::Codes)?;
            }
        }
        Ok(())
    }

    async fn verify(
        &self,
        account: Option<&Account>,
        cred: &Credential,
    ) -> Result<Verdict, AuthError> {
        match cred {
            Credential::Password(password) => {
                let hash = account.and_then(|a| a.data.password_hash.as_deref());
                // An unknown user (or one without a password) is checked
                // against a dummy hash: same time, same answer.
                let ok = self
                    .accounts
                    .hasher()
                    .verify(password, hash)
                    .await
                    .map_err(AccountError::from)?;
                Ok(if ok && account.is_some() {
                    Verdict::Accepted
                } else {
                    Verdict::Denied(DENIED)
                })
            }
            Credential::Totp(code) => {
                let Some(account) = account else {
                    return Ok(Verdict::Denied(DENIED));
                };
                if account.data.totp.is_none() {
                    // The policy asks for TOTP, and none is enrolled: the
                    // user enrols while signed in under the password policy.
                    return Ok(Verdict::Denied(
                        "no authenticator app is enrolled for this account",
                    ));
                }
                if self.accounts.use_second_factor(account, code).await? {
                    Ok(Verdict::Accepted)
                } else {
                    Ok(Verdict::Retry("the code is not valid".into()))
                }
            }
            // Checked in `advance`, with the challenge of the state.
            Credential::Passkey(_) => Ok(Verdict::Denied("the passkey was not accepted")),
            Credential::EmailCode(code) => {
                let (Some(codes), Some(account)) = (&self.codes, account) else {
                    return Ok(Verdict::Denied(DENIED));
                };
                let Some(email) = &account.row.email else {
                    return Ok(Verdict::Denied(DENIED));
                };
                match codes
                    .check(LOGIN_CODE, email, code)
                    .await
                    .map_err(AuthError::Codes)?
                {
                    Ok(()) => {
                        self.accounts.mark_email_verified(account).await?;
                        Ok(Verdict::Accepted)
                    }
                    Err(CodeRejection::Invalid { attempts_left }) => Ok(Verdict::Retry(format!(
                        "the code is not valid; {attempts_left} attempts left"
                    ))),
                    Err(CodeRejection::Expired) => {
                        Ok(Verdict::Denied("the code has expired; ask for a new one"))
                    }
                    Err(CodeRejection::TooManyAttempts) => {
                        Ok(Verdict::Denied("too many wrong codes; ask for a new one"))
                    }
                    Err(CodeRejection::Missing) => {
                        Ok(Verdict::Denied("no code is waiting; ask for a new one"))
                    }
                }
            }
        }
    }
}

enum Verdict {
    Accepted,
    /// Accepted, with this RFC 8176 method in place of the kind's own.
    AcceptedAs(&'static str),
    Retry(String),
    Denied(&'static str),
}

fn denied(reason: &str) -> (AuthState, Reply) {
    (
        AuthState::Denied {
            reason: reason.to_string(),
        },
        Reply::Denied(reason.to_string()),
    )
}

/// RFC 8176 §2 methods of the credentials given, with `mfa` when there
/// were several.
fn amr_of(done: &[CredKind]) -> Vec<String> {
    let mut amr: Vec<String> = Vec::new();
    for kind in done {
        let m = kind.amr().to_string();
        if !amr.contains(&m) {
            amr.push(m);
        }
    }
    if done.len() > 1 {
        amr.push("mfa".into());
    }
    amr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amr_values() {
        assert_eq!(amr_of(&[CredKind::Password]), vec!["pwd"]);
        assert_eq!(
            amr_of(&[CredKind::Password, CredKind::Totp]),
            vec!["pwd", "otp", "mfa"]
        );
        assert_eq!(amr_of(&[CredKind::EmailCode]), vec!["otp"]);
    }

    #[test]
    fn mech_names_round_trip() {
        for m in [Mech::Password, Mech::PasswordMfa, Mech::EmailCode] {
            assert_eq!(Mech::parse(m.as_str()), Some(m));
        }
        assert_eq!(Mech::parse("webauthn"), None);
    }
}
