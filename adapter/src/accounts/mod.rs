//! Local accounts: the records in the store, their credentials (an argon2id
//! password hash, a TOTP secret sealed at rest, hashed recovery codes), and
//! the operations on them that the pages, the API and the command line share
//! (seed from configuration, register, disable, reset a password, enrol
//! TOTP). How a user proves who they are, step by step, is [`authn`].
//!
//! An account is one row of the `accounts` table: its indexed columns
//! (id, username, e-mail, version) and a versioned JSON payload
//! ([`AccountData`]). Every change is a compare-and-swap on the version, so
//! two replicas cannot both accept one TOTP step or one recovery code.

pub mod authn;
pub mod passkeys;
pub mod pending;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::clock::SharedClock;
use crate::config::{AccountsConfig, LocalUserConfig, LoginPolicy};
use crate::connector::Identity;
use crate::keys::EncryptionKey;
use crate::password::{HashError, Hasher};
use crate::secret::random_token;
use crate::store::{codec, AccountRow, Store, StoreError};
use crate::totp::{self, TotpSecret};

/// Id of the local-accounts connector.
pub const LOCAL_CONNECTOR_ID: &str = "local";

/// Longest password accepted, in bytes: long passphrases are welcome (OWASP
/// ASVS 5.0 V6.2.9 asks for at least 64 characters), unbounded input is not.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// `acr` of a login with one factor and with several (the levels Keycloak
/// uses by default).
pub const ACR_SINGLE_FACTOR: &str = "1";
pub const ACR_MULTI_FACTOR: &str = "2";

/// Associated data of sealed TOTP secrets (a sealed value opens only under
/// the context it was sealed with).
const TOTP_CONTEXT: &str = "totp-secret";

/// An account's credentials and profile (the `data` column).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct AccountData {
    /// PHC string of an argon2id hash; `None` for e-mail-only accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    /// Overrides the deployment's policy for this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<LoginPolicy>,
    /// A confirmed TOTP credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<TotpCredential>,
    /// A TOTP secret shown on the enrolment page, not yet confirmed by a code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_pending: Option<String>,
    /// Hashes of the unused recovery codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovery_codes: Vec<String>,
    /// The WebAuthn user handle of this account (made at its first passkey).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passkey_user_id: Option<webauthn_rs::prelude::Uuid>,
    /// Registered passkeys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passkeys: Vec<passkeys::StoredPasskey>,
    /// A passkey registration started and not yet finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passkey_registration: Option<passkeys::PendingRegistration>,
}

impl std::fmt::Debug for AccountData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes and sealed secrets never reach a log line.
        f.debug_struct("AccountData")
            .field("disabled", &self.disabled)
            .field("policy", &self.policy)
            .field("totp", &self.totp.is_some())
            .field("passkeys", &self.passkeys.len())
            .finish_non_exhaustive()
    }
}

/// A confirmed TOTP credential (RFC 6238).
#[derive(Clone, Serialize, Deserialize)]
pub struct TotpCredential {
    /// The secret, sealed with the deployment's encryption key.
    pub sealed_secret: String,
    /// The last time step accepted: a code of this step or an older one is
    /// refused (RFC 6238 §5.2, one use per code).
    #[serde(default)]
    pub last_step: Option<u64>,
}

/// An account as loaded from the store.
#[derive(Debug, Clone)]
pub struct Account {
    pub row: AccountRow,
    pub data: AccountData,
}

impl Account {
    pub fn id(&self) -> &str {
        &self.row.id
    }

    pub fn username(&self) -> &str {
        &self.row.username
    }

    /// The claims of this account, as an identity for `amr` and `acr`.
    pub fn identity(&self, amr: Vec<String>) -> Identity {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(self.row.username));
        claims.insert("preferred_username".into(), json!(self.row.username));
        if let Some(name) = &self.data.name {
            claims.insert("name".into(), json!(name));
        }
        if let Some(email) = &self.row.email {
            claims.insert("email".into(), json!(email));
            claims.insert("email_verified".into(), json!(self.data.email_verified));
        }
        if !self.data.groups.is_empty() {
            claims.insert("groups".into(), Value::from(self.data.groups.clone()));
        }
        let acr = if amr.iter().any(|m| m == "mfa") {
            ACR_MULTI_FACTOR
        } else {
            ACR_SINGLE_FACTOR
        };
        Identity {
            connector_id: LOCAL_CONNECTOR_ID.into(),
            subject: self.row.username.clone(),
            claims,
            // The provider stamps the time of this very login.
            auth_time: None,
            upstream: None,
            amr,
            acr: Some(acr.into()),
        }
    }
}

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the username is taken")]
    UsernameTaken,
    #[error("the e-mail address is taken")]
    EmailTaken,
    #[error("{0}")]
    Invalid(String),
    #[error("no such account")]
    NotFound,
    #[error("the account changed meanwhile; try again")]
    Conflict,
    #[error("registration is turned off")]
    RegistrationClosed,
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("{0}")]
    Crypto(String),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// What a new account is made of.
#[derive(Debug, Clone, Default)]
pub struct NewAccount<'a> {
    pub username: &'a str,
    pub email: Option<&'a str>,
    pub password: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// A started TOTP enrolment: what the enrolment page shows.
pub struct TotpEnrolment {
    pub secret_base32: String,
    pub uri: String,
    pub qr_svg: String,
}

/// The local accounts of one provider. Cheap to share.
pub struct Accounts {
    store: Arc<dyn Store>,
    hasher: Arc<Hasher>,
    sealing: Arc<EncryptionKey>,
    clock: SharedClock,
    config: AccountsConfig,
    /// Shown as the issuer in authenticator apps.
    title: String,
}

/// True for usernames that are safe in URLs, claims and logs: 1 to 64 of
/// `a-z 0-9 . _ -` (and `@` so an e-mail address can be a username).
pub fn valid_username(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 64
        && u.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-' | b'@')
        })
}

/// A deliberately loose check (one `@`, a dot in the domain, no spaces):
/// an address is proven by the code sent to it, not by its shape.
pub fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Accounts {
    pub fn new(
        store: Arc<dyn Store>,
        hasher: Arc<Hasher>,
        sealing: Arc<EncryptionKey>,
        clock: SharedClock,
        config: AccountsConfig,
        title: String,
    ) -> Self {
        Accounts {
            store,
            hasher,
            sealing,
            clock,
            config,
            title,
        }
    }

    pub fn config(&self) -> &AccountsConfig {
        &self.config
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    fn decode(row: AccountRow) -> Result<Account, AccountError> {
        let data: AccountData = codec::decode(&row.data)?;
        Ok(Account { row, data })
    }

    /// The account named `login`: a username, or an e-mail address.
    pub async fn find(&self, login: &str) -> Result<Option<Account>, AccountError> {
        let login = login.trim().to_lowercase();
        let row = match self.store.account_by_username(&login).await? {
            Some(row) => Some(row),
            None if login.contains('@') => self.store.account_by_email(&login).await?,
            None => None,
        };
        row.map(Self::decode).transpose()
    }

    async fn get(&self, username: &str) -> Result<Account, AccountError> {
        self.find(username).await?.ok_or(AccountError::NotFound)
    }

    /// Compare-and-swap of `account` with `data`.
    pub async fn save(&self, account: &Account, data: &AccountData) -> Result<(), AccountError> {
        let mut row = account.row.clone();
        row.data = codec::encode(data)?;
        if self.store.update_account(&row).await? {
            Ok(())
        } else {
            Err(AccountError::Conflict)
        }
    }

    /// Checks a password against the deployment's rules: a minimum length,
    /// a generous maximum, no composition rules (OWASP ASVS 5.0 V6.2).
    pub fn check_password_rules(&self, password: &str) -> Result<(), AccountError> {
        let chars = password.chars().count();
        if chars < self.config.min_password_length {
            return Err(AccountError::Invalid(format!(
                "the password must have at least {} characters",
                self.config.min_password_length
            )));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AccountError::Invalid(format!(
                "the password must have at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Creates an account. The username and e-mail are lower-cased.
    pub async fn create(&self, new: NewAccount<'_>) -> Result<Account, AccountError> {
        let username = new.username.trim().to_lowercase();
        if !valid_username(&username) {
            return Err(AccountError::Invalid(
                "the username must be 1 to 64 of a-z, 0-9, '.', '_', '-', '@'".into(),
            ));
        }
        let email = new.email.map(|e| e.trim().to_lowercase());
        if let Some(e) = &email {
            if !valid_email(e) {
                return Err(AccountError::Invalid(
                    "the e-mail address is not valid".into(),
                ));
            }
        }
        let password_hash = match new.password {
            Some(p) => {
                self.check_password_rules(p)?;
                Some(self.hasher.hash(p).await?)
            }
            None => None,
        };
        let data = AccountData {
            password_hash,
            name: new.name.map(String::from),
            ..AccountData::default()
        };
        self.insert(&username, email.as_deref(), data).await
    }

    async fn insert(
        &self,
        username: &str,
        email: Option<&str>,
        data: AccountData,
    ) -> Result<Account, AccountError> {
        let row = AccountRow {
            id: random_token(),
            username: username.to_string(),
            email: email.map(String::from),
            version: 0,
            data: codec::encode(&data)?,
            created_at: self.clock.now(),
        };
        if self.store.insert_account(&row).await? {
            return Ok(Account { row, data });
        }
        // Tell which one is taken (registration shows it; usernames are
        // public in any case once tokens carry them).
        if self.store.account_by_username(username).await?.is_some() {
            Err(AccountError::UsernameTaken)
        } else {
            Err(AccountError::EmailTaken)
        }
    }

    /// Self-service registration (`POST /register`).
    pub async fn register(&self, new: NewAccount<'_>) -> Result<Account, AccountError> {
        if !self.config.registration {
            return Err(AccountError::RegistrationClosed);
        }
        if new.password.is_none() && self.config.policy != LoginPolicy::EmailCode {
            return Err(AccountError::Invalid("a password is required".into()));
        }
        if new.password.is_none() && new.email.is_none() {
            return Err(AccountError::Invalid(
                "an e-mail address is required".into(),
            ));
        }
        self.create(new).await
    }

    /// Seeds the users of the configuration: each one missing from the
    /// store is created; an existing account is left as it is (the store
    /// is the source of truth once a user exists).
    pub async fn seed(&self, users: &[LocalUserConfig]) -> Result<u32, AccountError> {
        let mut created = 0;
        for u in users {
            let username = u.username.trim().to_lowercase();
            if self.store.account_by_username(&username).await?.is_some() {
                continue;
            }
            let password_hash = match (&u.password_hash, &u.password) {
                (Some(h), _) => {
                    crate::password::validate_phc(h)?;
                    Some(h.clone())
                }
                (None, Some(p)) => Some(self.hasher.hash(p.expose()).await?),
                (None, None) => None,
            };
            let data = AccountData {
                password_hash,
                name: u.name.clone(),
                email_verified: u.email.is_some(),
                groups: u.groups.clone(),
                ..AccountData::default()
            };
            let email = u.email.as_ref().map(|e| e.to_lowercase());
            match self.insert(&username, email.as_deref(), data).await {
                Ok(_) => created += 1,
                // Another replica seeded it first.
                Err(AccountError::UsernameTaken) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(created)
    }

    /// All accounts, by username.
    pub async fn list(&self) -> Result<Vec<Account>, AccountError> {
        self.store
            .list_accounts()
            .await?
            .into_iter()
            .map(Self::decode)
            .collect()
    }

    /// Turns an account off (or on again); a disabled account cannot log in.
    pub async fn set_disabled(&self, username: &str, disabled: bool) -> Result<(), AccountError> {
        let account = self.get(username).await?;
        let mut data = account.data.clone();
        data.disabled = disabled;
        self.save(&account, &data).await
    }

    /// Sets a new password.
    pub async fn reset_password(&self, username: &str, password: &str) -> Result<(), AccountError> {
        self.check_password_rules(password)?;
        let account = self.get(username).await?;
        let mut data = account.data.clone();
        data.password_hash = Some(self.hasher.hash(password).await?);
        self.save(&account, &data).await
    }

    /// Sets the policy of one user (`None`: the deployment's).
    pub async fn set_policy(
        &self,
        username: &str,
        policy: Option<LoginPolicy>,
    ) -> Result<(), AccountError> {
        let account = self.get(username).await?;
        let mut data = account.data.clone();
        data.policy = policy;
        self.save(&account, &data).await
    }

    /// The policy that applies to `account`. A confirmed TOTP credential
    /// makes a password login two-factor, whatever the deployment says.
    pub fn policy(&self, account: Option<&Account>) -> LoginPolicy {
        let base = account
            .and_then(|a| a.data.policy)
            .unwrap_or(self.config.policy);
        match (base, account.is_some_and(|a| a.data.totp.is_some())) {
            (LoginPolicy::Password, true) => LoginPolicy::PasswordTotp,
            (p, _) => p,
        }
    }

    fn seal(&self, secret: &TotpSecret) -> Result<String, AccountError> {
        self.sealing
            .seal_value(TOTP_CONTEXT, &secret.to_base32())
            .map_err(|e| AccountError::Crypto(e.to_string()))
    }

    fn open(&self, sealed: &str) -> Result<TotpSecret, AccountError> {
        let b32 = self
            .sealing
            .open_value(TOTP_CONTEXT, sealed)
            .map_err(|e| AccountError::Crypto(e.to_string()))?;
        TotpSecret::from_base32(&b32)
            .ok_or_else(|| AccountError::Crypto("stored TOTP secret is malformed".into()))
    }

    /// Starts (or restarts) a TOTP enrolment: a new secret is kept, sealed,
    /// as pending until a first code confirms it.
    pub async fn begin_totp(&self, username: &str) -> Result<TotpEnrolment, AccountError> {
        let account = self.get(username).await?;
        let secret = TotpSecret::generate();
        let mut data = account.data.clone();
        data.totp_pending = Some(self.seal(&secret)?);
        self.save(&account, &data).await?;
        self.enrolment(&secret, account.username())
    }

    /// What the enrolment page shows of `secret`.
    fn enrolment(&self, secret: &TotpSecret, label: &str) -> Result<TotpEnrolment, AccountError> {
        Ok(TotpEnrolment {
            secret_base32: secret.to_base32(),
            uri: secret.provisioning_uri(&self.title, label),
            qr_svg: secret
                .qr_svg(&self.title, label)
                .map_err(|e| AccountError::Crypto(format!("{e:?}")))?,
        })
    }

    /// The pending enrolment of `username` again (the page is reloaded).
    pub async fn pending_totp(
        &self,
        username: &str,
    ) -> Result<Option<TotpEnrolment>, AccountError> {
        let account = self.get(username).await?;
        let Some(sealed) = &account.data.totp_pending else {
            return Ok(None);
        };
        let secret = self.open(sealed)?;
        self.enrolment(&secret, account.username()).map(Some)
    }

    /// Confirms the pending enrolment with a first code; returns the
    /// recovery codes, shown once (only their hashes are kept).
    pub async fn confirm_totp(
        &self,
        username: &str,
        code: &str,
    ) -> Result<Option<Vec<String>>, AccountError> {
        let account = self.get(username).await?;
        let Some(sealed) = account.data.totp_pending.clone() else {
            return Err(AccountError::Invalid("no TOTP enrolment is pending".into()));
        };
        let secret = self.open(&sealed)?;
        let Ok(step) = secret.verify(code, self.clock.now(), None) else {
            return Ok(None);
        };
        let (codes, hashes) = totp::recovery_codes(10);
        let mut data = account.data.clone();
        data.totp = Some(TotpCredential {
            sealed_secret: sealed,
            last_step: Some(step),
        });
        data.totp_pending = None;
        data.recovery_codes = hashes;
        self.save(&account, &data).await?;
        Ok(Some(codes))
    }

    /// Checks a TOTP code (or a recovery code) of `account` and records its
    /// use with compare-and-swap, so a code is accepted once across replicas.
    pub async fn use_second_factor(
        &self,
        account: &Account,
        code: &str,
    ) -> Result<bool, AccountError> {
        let Some(cred) = &account.data.totp else {
            return Ok(false);
        };
        let secret = self.open(&cred.sealed_secret)?;
        let mut data = account.data.clone();
        match secret.verify(code, self.clock.now(), cred.last_step) {
            Ok(step) => {
                data.totp = Some(TotpCredential {
                    sealed_secret: cred.sealed_secret.clone(),
                    last_step: Some(step),
                });
            }
            Err(_) => match totp::recovery_code_match(code, &account.data.recovery_codes) {
                Some(i) => {
                    data.recovery_codes.remove(i);
                }
                None => return Ok(false),
            },
        }
        match self.save(account, &data).await {
            Ok(()) => Ok(true),
            // Another request used a code of this account meanwhile: this
            // one may be the same code, so it does not count.
            Err(AccountError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Marks the e-mail address of `account` verified (a code sent to it
    /// came back).
    pub async fn mark_email_verified(&self, account: &Account) -> Result<(), AccountError> {
        if account.data.email_verified {
            return Ok(());
        }
        let mut data = account.data.clone();
        data.email_verified = true;
        self.save(account, &data).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_emails() {
        assert!(valid_username("testuser"));
        assert!(valid_username("a.b-c_d@example.org"));
        assert!(!valid_username(""));
        assert!(!valid_username("Upper"));
        assert!(!valid_username("with space"));
        assert!(!valid_username(&"a".repeat(65)));
        assert!(valid_email("u@example.org"));
        assert!(!valid_email("u@localhost"));
        assert!(!valid_email("@example.org"));
        assert!(!valid_email("u@exa mple.org"));
        assert!(!valid_email("u@@example.org"));
    }
}
