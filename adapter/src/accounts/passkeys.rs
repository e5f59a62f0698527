//! Passkeys (WebAuthn Level 2) of local accounts: the Relying Party built
//! from `[passkeys]`, registration from a signed-in session, and the checks
//! of a login assertion. Every ceremony check (challenge, origin, RP ID
//! hash, signature, user verification) is `webauthn-rs`; this module owns
//! what it leaves to the Relying Party: where the ceremony states live, how
//! long they live, the stored credentials and their metadata, and the
//! signature counter against the credential as stored now.
//!
//! Everything lives in the account's data and is saved with the account's
//! compare-and-swap, so it holds across replicas:
//! - a registration state ([`PendingRegistration`]) is consumed by the one
//!   `finish` whose save wins; a second `finish` finds none;
//! - a login state rides inside the authentication state of
//!   [`super::authn`] ([`super::authn::PasskeyChallenge`]), which ends
//!   (success or denial) with the one assertion checked against it;
//! - the counter and the "possibly cloned" mark are updated with the same
//!   compare-and-swap, so two assertions with one counter value cannot
//!   both be accepted.
//!
//! `amr` (RFC 8176 §2): a device-bound credential (not backup eligible,
//! WebAuthn L2 §6.1 flag BE) is a hardware-secured key, `hwk`; a
//! backup-eligible (synced) passkey can leave the device, so it counts as a
//! software-secured key, `swk`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use webauthn_rs::prelude::{
    AuthenticationResult, DiscoverableAuthentication, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid,
    WebauthnError,
};
use webauthn_rs::{Webauthn, WebauthnBuilder};

use super::{Account, AccountError, Accounts};
use crate::clock::SharedClock;
use crate::config::{PasskeysConfig, ResidentKey};

/// The longest label of a passkey, in characters.
pub const MAX_LABEL_CHARS: usize = 64;

/// One registered passkey of an account.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredPasskey {
    /// The credential id, base64url (WebAuthn L2 §4 "Credential ID").
    pub id: String,
    pub label: String,
    /// Unix seconds.
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
    /// The highest signature counter seen (WebAuthn L2 §6.1.1).
    pub counter: u32,
    /// WebAuthn L2 §6.1 flags BE and BS of the last ceremony.
    pub backup_eligible: bool,
    pub backup_state: bool,
    /// Set when an assertion came with a counter that did not increase:
    /// the authenticator may have been cloned. Such a passkey is refused
    /// until an administrator clears the mark.
    #[serde(default)]
    pub possibly_cloned: bool,
    /// The credential as `webauthn-rs` keeps it (public key, counter).
    pub passkey: Passkey,
}

/// A started registration, kept in the account until `finish`.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingRegistration {
    state: PasskeyRegistration,
    /// Unix seconds.
    expires_at: i64,
}

/// What the user sees of a passkey (never the public key).
#[derive(Debug, Clone, Serialize)]
pub struct PasskeyView {
    pub id: String,
    pub label: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub counter: u32,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub possibly_cloned: bool,
}

impl From<&StoredPasskey> for PasskeyView {
    fn from(p: &StoredPasskey) -> Self {
        PasskeyView {
            id: p.id.clone(),
            label: p.label.clone(),
            created_at: p.created_at,
            last_used_at: p.last_used_at,
            counter: p.counter,
            backup_eligible: p.backup_eligible,
            backup_state: p.backup_state,
            possibly_cloned: p.possibly_cloned,
        }
    }
}

/// Why a passkey operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// The client sent something that is not a WebAuthn credential (bad
    /// JSON, bad base64url): nothing was changed.
    #[error("malformed credential: {0}")]
    Malformed(String),
    /// A registration that cannot be finished (none pending, expired,
    /// refused by the ceremony checks, already registered).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("webauthn: {0}")]
    Internal(String),
}

/// The outcome of a login assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginVerdict {
    /// Accepted; the RFC 8176 method (`hwk` or `swk`).
    Accepted(&'static str),
    /// Refused, with a reason fit for the user.
    Refused(&'static str),
}

/// The reason of a refused clone.
pub const POSSIBLY_CLONED: &str =
    "this passkey may have been cloned (its signature counter went back); it is blocked";

/// The Relying Party of the local accounts.
pub struct Passkeys {
    webauthn: Webauthn,
    ttl: i64,
    clock: SharedClock,
    resident_key: ResidentKey,
}

fn id_of(raw: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

impl Passkeys {
    /// The Relying Party of `config`; `None` when passkeys are off.
    pub fn from_config(
        config: &PasskeysConfig,
        default_name: &str,
        clock: SharedClock,
    ) -> Result<Option<Self>, String> {
        let (Some(rp_id), Some(origin)) = (&config.rp_id, &config.rp_origin) else {
            return Ok(None);
        };
        let origin = Url::parse(origin).map_err(|e| format!("passkeys.rp_origin: {e}"))?;
        let name = config.rp_name.as_deref().unwrap_or(default_name);
        let webauthn = WebauthnBuilder::new(rp_id, &origin)
            .map_err(|e| format!("passkeys: {e}"))?
            .rp_name(name)
            .timeout(std::time::Duration::from_secs(
                u64::try_from(config.challenge_ttl_seconds).unwrap_or(300),
            ))
            .build()
            .map_err(|e| format!("passkeys: {e}"))?;
        Ok(Some(Passkeys {
            webauthn,
            ttl: config.challenge_ttl_seconds,
            clock,
            resident_key: config.resident_key,
        }))
    }

    /// Now, from the injected clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The challenge lifetime, seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    async fn account(accounts: &Accounts, username: &str) -> Result<Account, PasskeyError> {
        accounts
            .find(username)
            .await?
            .filter(|a| !a.data.disabled)
            .ok_or(PasskeyError::Account(AccountError::NotFound))
    }

    /// The passkeys of `username`.
    pub async fn list(
        &self,
        accounts: &Accounts,
        username: &str,
    ) -> Result<Vec<PasskeyView>, PasskeyError> {
        let account = Self::account(accounts, username).await?;
        Ok(account
            .data
            .passkeys
            .iter()
            .map(PasskeyView::from)
            .collect())
    }

    /// Starts a registration (WebAuthn L2 §7.1): the creation options for
    /// `navigator.credentials.create()`, excluding the account's passkeys
    /// so one authenticator is not registered twice. A new start replaces
    /// an unfinished one.
    pub async fn begin_registration(
        &self,
        accounts: &Accounts,
        username: &str,
    ) -> Result<Value, PasskeyError> {
        let account = Self::account(accounts, username).await?;
        let mut data = account.data.clone();
        let user_id = *data.passkey_user_id.get_or_insert_with(Uuid::new_v4);
        let exclude = data
            .passkeys
            .iter()
            .map(|p| p.passkey.cred_id().clone())
            .collect::<Vec<_>>();
        let display = data.name.clone().unwrap_or_else(|| username.to_string());
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user_id, account.username(), &display, Some(exclude))
            .map_err(|e| PasskeyError::Internal(e.to_string()))?;
        data.passkey_registration = Some(PendingRegistration {
            state,
            expires_at: self.now() + self.ttl,
        });
        accounts.save(&account, &data).await?;
        let mut options =
            serde_json::to_value(options).map_err(|e| PasskeyError::Internal(e.to_string()))?;
        // WebAuthn L2 §5.4.6: `webauthn-rs` discourages a discoverable
        // credential; usernameless login needs one, so the deployment's
        // choice goes into the options (the registration's checks do not
        // depend on it).
        if let Some(sel) = options
            .get_mut("publicKey")
            .and_then(|p| p.get_mut("authenticatorSelection"))
            .and_then(Value::as_object_mut)
        {
            sel.insert("residentKey".into(), self.resident_key.as_str().into());
            sel.insert(
                "requireResidentKey".into(),
                (self.resident_key == ResidentKey::Required).into(),
            );
        }
        Ok(options)
    }

    /// Finishes a registration with the authenticator's answer: the
    /// pending state is consumed whatever the outcome (single use).
    pub async fn finish_registration(
        &self,
        accounts: &Accounts,
        username: &str,
        label: Option<&str>,
        credential: &Value,
    ) -> Result<PasskeyView, PasskeyError> {
        let reg: RegisterPublicKeyCredential = serde_json::from_value(credential.clone())
            .map_err(|e| PasskeyError::Malformed(e.to_string()))?;
        let label = label.map(str::trim).filter(|l| !l.is_empty());
        if label
            .is_some_and(|l| l.chars().count() > MAX_LABEL_CHARS || l.chars().any(char::is_control))
        {
            return Err(PasskeyError::Malformed(format!(
                "the label must have at most {MAX_LABEL_CHARS} printable characters"
            )));
        }
        let account = Self::account(accounts, username).await?;
        let mut data = account.data.clone();
        let Some(pending) = data.passkey_registration.take() else {
            return Err(PasskeyError::Refused(
                "no passkey registration is pending; start again".into(),
            ));
        };
        let now = self.now();
        let outcome = if now > pending.expires_at {
            Err("the passkey registration has expired; start again".to_string())
        } else {
            self.webauthn
                .finish_passkey_registration(&reg, &pending.state)
                .map_err(|e| format!("the passkey was not accepted: {e}"))
        };
        let outcome = outcome.and_then(|passkey| {
            let id = id_of(passkey.cred_id());
            if data.passkeys.iter().any(|p| p.id == id) {
                return Err("this passkey is already registered".to_string());
            }
            let n = data.passkeys.len() + 1;
            let stored = StoredPasskey {
                id,
                label: label.map_or_else(|| format!("Passkey {n}"), String::from),
                created_at: now,
                last_used_at: None,
                counter: 0,
                backup_eligible: false,
                backup_state: false,
                possibly_cloned: false,
                passkey,
            };
            data.passkeys.push(stored.clone());
            Ok(stored)
        });
        // The save consumes the state: of two finishes, one wins.
        accounts.save(&account, &data).await?;
        match outcome {
            Ok(stored) => {
                if let Some(handle) = data.passkey_user_id {
                    // Usernameless login finds the account by this handle.
                    accounts
                        .record_passkey_handle(&handle, account.id())
                        .await?;
                }
                tracing::info!(user = %username, passkey = %stored.id, "passkey registered");
                Ok(PasskeyView::from(&stored))
            }
            Err(reason) => Err(PasskeyError::Refused(reason)),
        }
    }

    /// Starts a username-first login (WebAuthn L2 §7.2): the request
    /// options with `allowCredentials` of `account`, and the state to keep
    /// until the assertion comes back.
    pub fn begin_login(&self, account: &Account) -> Result<(Value, String, i64), PasskeyError> {
        let creds: Vec<Passkey> = account
            .data
            .passkeys
            .iter()
            .map(|p| p.passkey.clone())
            .collect();
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(&creds)
            .map_err(|e| PasskeyError::Internal(e.to_string()))?;
        let state =
            serde_json::to_string(&state).map_err(|e| PasskeyError::Internal(e.to_string()))?;
        let options =
            serde_json::to_value(options).map_err(|e| PasskeyError::Internal(e.to_string()))?;
        Ok((options, state, self.now() + self.ttl))
    }

    /// Starts a usernameless login (WebAuthn L2 §5.8.2 "discoverable
    /// credentials"): request options without `allowCredentials`; the
    /// authenticator picks the credential and names the account by its
    /// user handle. Also the challenge of a name with no passkey, so an
    /// answer does not tell which accounts have one.
    pub fn begin_discoverable(&self) -> Result<(Value, String, i64), PasskeyError> {
        let (options, state) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(|e| PasskeyError::Internal(e.to_string()))?;
        let state =
            serde_json::to_string(&state).map_err(|e| PasskeyError::Internal(e.to_string()))?;
        let mut options =
            serde_json::to_value(options).map_err(|e| PasskeyError::Internal(e.to_string()))?;
        // The page chooses the mediation (conditional UI on load, a modal
        // dialog from the button); the options carry only the request.
        if let Some(o) = options.as_object_mut() {
            o.remove("mediation");
        }
        Ok((options, state, self.now() + self.ttl))
    }

    /// The user handle an assertion names (WebAuthn L2 §5.2.2
    /// `userHandle`), `None` when it names none or not one of ours.
    pub fn user_handle(&self, assertion: &PublicKeyCredential) -> Option<Uuid> {
        self.webauthn
            .identify_discoverable_authentication(assertion)
            .ok()
            .map(|(uuid, _)| uuid)
    }

    /// Parses an assertion (`PublicKeyCredential` JSON) before anything
    /// else is looked at, so malformed input changes nothing.
    pub fn parse_assertion(json: &str) -> Result<PublicKeyCredential, PasskeyError> {
        serde_json::from_str(json).map_err(|e| PasskeyError::Malformed(e.to_string()))
    }

    /// Checks an assertion against the login state `state` (made by
    /// [`Self::begin_login`] for `account`, or by
    /// [`Self::begin_discoverable`] when `discoverable`; valid until
    /// `expires_at`) and the credential as stored now; records the use, or
    /// the mark of a possible clone.
    pub async fn finish_login(
        &self,
        accounts: &Accounts,
        account: &Account,
        challenge: (&str, bool, i64),
        assertion: &PublicKeyCredential,
    ) -> Result<LoginVerdict, PasskeyError> {
        let (state, discoverable, expires_at) = challenge;
        if self.now() > expires_at {
            return Ok(LoginVerdict::Refused(
                "the passkey challenge has expired; start again",
            ));
        }
        let checked: Result<AuthenticationResult, WebauthnError> = if discoverable {
            let state: DiscoverableAuthentication =
                serde_json::from_str(state).map_err(|e| PasskeyError::Internal(e.to_string()))?;
            let id = id_of(&assertion.raw_id);
            let Some(stored) = account.data.passkeys.iter().find(|p| p.id == id) else {
                return Ok(LoginVerdict::Refused("the passkey is not registered"));
            };
            self.webauthn
                .finish_discoverable_authentication_v2(assertion, state, &stored.passkey)
        } else {
            let state: PasskeyAuthentication =
                serde_json::from_str(state).map_err(|e| PasskeyError::Internal(e.to_string()))?;
            self.webauthn
                .finish_passkey_authentication(assertion, &state)
        };
        let result = match checked {
            Ok(result) => result,
            // WebAuthn L2 §7.2 step 13: the origin is this RP's exactly.
            Err(WebauthnError::InvalidRPOrigin) => {
                return Ok(LoginVerdict::Refused(
                    "the passkey answered for another origin",
                ))
            }
            // §7.2 step 15.
            Err(WebauthnError::InvalidRPIDHash) => {
                return Ok(LoginVerdict::Refused(
                    "the passkey answered for another RP ID",
                ))
            }
            // §7.2 step 12.
            Err(WebauthnError::MismatchedChallenge) => {
                return Ok(LoginVerdict::Refused(
                    "the passkey answered another challenge",
                ))
            }
            Err(WebauthnError::CredentialPossibleCompromise) => {
                self.mark_cloned(accounts, account, &id_of(&assertion.raw_id))
                    .await?;
                return Ok(LoginVerdict::Refused(POSSIBLY_CLONED));
            }
            Err(e) => {
                tracing::info!(error = %e, "passkey assertion refused");
                return Ok(LoginVerdict::Refused("the passkey was not accepted"));
            }
        };
        let id = id_of(result.cred_id());
        let now = self.now();
        // Compare-and-swap against the credential as stored now (not the
        // copy in the login state, which another login may have moved on).
        for _ in 0..3 {
            let current = Self::account(accounts, account.username()).await?;
            if current.id() != account.id() {
                return Ok(LoginVerdict::Refused("the passkey was not accepted"));
            }
            let mut data = current.data.clone();
            let Some(stored) = data.passkeys.iter_mut().find(|p| p.id == id) else {
                return Ok(LoginVerdict::Refused("the passkey is not registered"));
            };
            if stored.possibly_cloned {
                return Ok(LoginVerdict::Refused(POSSIBLY_CLONED));
            }
            // WebAuthn L2 §7.2 step 21: a counter that does not increase
            // (when either side uses counters) signals a cloned authenticator.
            let counter = result.counter();
            if (counter > 0 || stored.counter > 0) && counter <= stored.counter {
                stored.possibly_cloned = true;
                tracing::warn!(
                    user = %account.username(),
                    passkey = %id,
                    stored = stored.counter,
                    presented = counter,
                    "passkey signature counter went back: possibly cloned, blocked"
                );
                match accounts.save(&current, &data).await {
                    Ok(()) => return Ok(LoginVerdict::Refused(POSSIBLY_CLONED)),
                    Err(AccountError::Conflict) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            stored.passkey.update_credential(&result);
            stored.counter = counter;
            stored.backup_eligible = result.backup_eligible();
            stored.backup_state = result.backup_state();
            stored.last_used_at = Some(now);
            let amr = if result.backup_eligible() {
                "swk"
            } else {
                "hwk"
            };
            match accounts.save(&current, &data).await {
                Ok(()) => return Ok(LoginVerdict::Accepted(amr)),
                Err(AccountError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(LoginVerdict::Refused(
            "the account changed meanwhile; try again",
        ))
    }

    async fn mark_cloned(
        &self,
        accounts: &Accounts,
        account: &Account,
        id: &str,
    ) -> Result<(), PasskeyError> {
        for _ in 0..3 {
            let current = Self::account(accounts, account.username()).await?;
            let mut data = current.data.clone();
            let Some(stored) = data.passkeys.iter_mut().find(|p| p.id == id) else {
                return Ok(());
            };
            stored.possibly_cloned = true;
            tracing::warn!(user = %account.username(), passkey = %id, "passkey possibly cloned, blocked");
            match accounts.save(&current, &data).await {
                Ok(()) => return Ok(()),
                Err(AccountError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PasskeyError::Account(AccountError::Conflict))
    }
}

/// What the owner and the administrator do to stored passkeys.
impl Accounts {
    /// Indexes the user handle `handle` of the account `account_id`
    /// (idempotent: a handle already recorded stays as it is).
    pub async fn record_passkey_handle(
        &self,
        handle: &Uuid,
        account_id: &str,
    ) -> Result<(), AccountError> {
        self.store
            .insert_passkey_handle(&handle.to_string(), account_id)
            .await?;
        Ok(())
    }

    /// The account whose passkey user handle is `handle`, unless disabled.
    pub async fn find_by_passkey_handle(
        &self,
        handle: &Uuid,
    ) -> Result<Option<Account>, AccountError> {
        let row = self
            .store
            .account_by_passkey_handle(&handle.to_string())
            .await?;
        Ok(row
            .map(Self::decode)
            .transpose()?
            .filter(|a| !a.data.disabled))
    }

    /// Removes the passkey `id` of `username`; false when there is none.
    pub async fn remove_passkey(&self, username: &str, id: &str) -> Result<bool, AccountError> {
        let account = self.get(username).await?;
        let mut data = account.data.clone();
        let before = data.passkeys.len();
        data.passkeys.retain(|p| p.id != id);
        if data.passkeys.len() == before {
            return Ok(false);
        }
        self.save(&account, &data).await?;
        tracing::info!(user = %username, passkey = %id, "passkey removed");
        Ok(true)
    }

    /// Clears the "possibly cloned" mark of the passkey `id` of
    /// `username` (an administrator checked the authenticator); false when
    /// there is no such passkey. The next assertion must have a counter
    /// above the one stored.
    pub async fn clear_passkey_mark(&self, username: &str, id: &str) -> Result<bool, AccountError> {
        let account = self.get(username).await?;
        let mut data = account.data.clone();
        let Some(stored) = data.passkeys.iter_mut().find(|p| p.id == id) else {
            return Ok(false);
        };
        stored.possibly_cloned = false;
        self.save(&account, &data).await?;
        tracing::info!(user = %username, passkey = %id, "passkey clone mark cleared");
        Ok(true)
    }
}
