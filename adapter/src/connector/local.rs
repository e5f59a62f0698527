//! Local accounts: users from configuration, passwords hashed with argon2id.
//!
//! Hashing and verification go through the provider's shared
//! [`Hasher`]: off the async workers, bounded in concurrency and queue, and
//! unknown users are verified against a dummy hash so they take as long as
//! a wrong password (no account enumeration by timing).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::{ConnectorError, Identity, PasswordConnector};
use crate::config::LocalUserConfig;
use crate::password::{HashError, Hasher};

/// Id of the local connector.
pub const LOCAL_CONNECTOR_ID: &str = "local";

struct Account {
    password_hash: String,
    claims: Map<String, Value>,
}

pub struct LocalConnector {
    accounts: HashMap<String, Account>,
    hasher: Arc<Hasher>,
}

impl From<HashError> for ConnectorError {
    fn from(e: HashError) -> Self {
        match e {
            // A login flood: the relying party hears `temporarily_unavailable`.
            HashError::Busy => ConnectorError::Unavailable(e.to_string()),
            HashError::Internal(m) => ConnectorError::Config(format!("argon2: {m}")),
        }
    }
}

impl LocalConnector {
    /// Hashes inline demo passwords; refuses users with neither a hash nor
    /// a password, and hashes that are not argon2id PHC strings.
    pub async fn new(
        users: &[LocalUserConfig],
        hasher: Arc<Hasher>,
    ) -> Result<Self, ConnectorError> {
        let mut accounts = HashMap::new();
        for u in users {
            let password_hash = match (&u.password_hash, &u.password) {
                (Some(h), _) => {
                    crate::password::validate_phc(h).map_err(|e| {
                        ConnectorError::Config(format!(
                            "local_users[{}].password_hash: {e}",
                            u.username
                        ))
                    })?;
                    h.clone()
                }
                (None, Some(p)) => hasher.hash(p.expose()).await?,
                (None, None) => {
                    return Err(ConnectorError::Config(format!(
                        "local_users[{}]: set password_hash (or password for demos)",
                        u.username
                    )))
                }
            };
            let mut claims = Map::new();
            claims.insert("sub".into(), json!(u.username));
            claims.insert("preferred_username".into(), json!(u.username));
            if let Some(name) = &u.name {
                claims.insert("name".into(), json!(name));
            }
            if let Some(email) = &u.email {
                claims.insert("email".into(), json!(email));
                claims.insert("email_verified".into(), json!(true));
            }
            if !u.groups.is_empty() {
                claims.insert("groups".into(), json!(u.groups));
            }
            accounts.insert(
                u.username.clone(),
                Account {
                    password_hash,
                    claims,
                },
            );
        }
        Ok(LocalConnector { accounts, hasher })
    }
}

#[async_trait]
impl PasswordConnector for LocalConnector {
    async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<Identity>, ConnectorError> {
        let account = self.accounts.get(username);
        let ok = self
            .hasher
            .verify(password, account.map(|a| a.password_hash.as_str()))
            .await?;
        Ok(match (ok, account) {
            (true, Some(a)) => Some(Identity {
                connector_id: LOCAL_CONNECTOR_ID.into(),
                subject: username.to_string(),
                claims: a.claims.clone(),
                // The provider stamps the time of this very login.
                auth_time: None,
                upstream: None,
                // RFC 8176 §2: a password.
                amr: vec!["pwd".into()],
                acr: None,
            }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> Arc<Hasher> {
        Arc::new(Hasher::new(2, 8).unwrap())
    }

    fn user(password: Option<&str>, hash: Option<String>) -> LocalUserConfig {
        LocalUserConfig {
            username: "testuser".into(),
            password_hash: hash,
            password: password.map(Into::into),
            name: Some("Test User".into()),
            email: Some("t@example.org".into()),
            groups: vec!["admins".into()],
        }
    }

    #[tokio::test]
    async fn login_checks_password() {
        let c = LocalConnector::new(&[user(Some("password"), None)], hasher())
            .await
            .unwrap();
        let id = c.login("testuser", "password").await.unwrap().unwrap();
        assert_eq!(id.subject, "testuser");
        assert_eq!(id.claims["name"], "Test User");
        assert_eq!(id.claims["groups"], json!(["admins"]));
        assert!(c.login("testuser", "Password").await.unwrap().is_none());
        assert!(c.login("nobody", "password").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn stored_hash_is_argon2id_and_used() {
        let h = crate::password::hash_blocking("correct horse battery staple").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(h.contains("m=19456,t=2,p=1"), "{h}");
        let c = LocalConnector::new(&[user(None, Some(h))], hasher())
            .await
            .unwrap();
        assert!(c
            .login("testuser", "correct horse battery staple")
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn refuses_user_without_credentials_or_bad_hash() {
        assert!(LocalConnector::new(&[user(None, None)], hasher())
            .await
            .is_err());
        assert!(
            LocalConnector::new(&[user(None, Some("nope".into()))], hasher())
                .await
                .is_err()
        );
    }
}
