//! Local accounts: users from configuration, passwords hashed with argon2id.
//!
//! Hashing runs on the blocking pool behind a semaphore, so a flood of
//! logins cannot exhaust memory (each argon2id hash takes 19 MiB, RFC 9106
//! §4). Unknown users get a dummy verification so they take as long as
//! a wrong password (no account enumeration by timing).

use std::collections::HashMap;
use std::sync::Arc;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use async_trait::async_trait;
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

use super::{ConnectorError, Identity, PasswordConnector};
use crate::config::LocalUserConfig;

/// Id of the local connector.
pub const LOCAL_CONNECTOR_ID: &str = "local";

struct Account {
    password_hash: String,
    claims: Map<String, Value>,
}

pub struct LocalConnector {
    accounts: HashMap<String, Account>,
    /// A hash of a random password, verified for unknown users.
    dummy_hash: String,
    permits: Arc<Semaphore>,
}

/// Hashes a password with argon2id at the OWASP parameters (m=19 MiB, t=2, p=1).
pub fn hash_password(password: &str) -> Result<String, ConnectorError> {
    let hash: argon2::PasswordHash = Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|e| ConnectorError::Config(format!("argon2: {e}")))?;
    Ok(hash.to_string())
}

fn verify(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

impl LocalConnector {
    /// Hashes inline demo passwords; refuses users with neither a hash nor a password.
    pub async fn new(users: &[LocalUserConfig]) -> Result<Self, ConnectorError> {
        let users = users.to_vec();
        tokio::task::spawn_blocking(move || Self::new_blocking(&users))
            .await
            .map_err(|e| ConnectorError::Config(e.to_string()))?
    }

    fn new_blocking(users: &[LocalUserConfig]) -> Result<Self, ConnectorError> {
        let mut accounts = HashMap::new();
        for u in users {
            let password_hash = match (&u.password_hash, &u.password) {
                (Some(h), _) => {
                    argon2::PasswordHash::new(h).map_err(|e| {
                        ConnectorError::Config(format!(
                            "local_users[{}].password_hash: {e}",
                            u.username
                        ))
                    })?;
                    h.clone()
                }
                (None, Some(p)) => hash_password(p.expose())?,
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
        Ok(LocalConnector {
            accounts,
            dummy_hash: hash_password(&crate::secret::random_token())?,
            permits: Arc::new(Semaphore::new(2)),
        })
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
        let hash = account
            .map(|a| a.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let password = password.to_string();
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ConnectorError::Config(e.to_string()))?;
        let ok = tokio::task::spawn_blocking(move || verify(&password, &hash))
            .await
            .map_err(|e| ConnectorError::Config(e.to_string()))?;
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
        let c = LocalConnector::new(&[user(Some("password"), None)])
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
        let h = hash_password("correct horse battery staple").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(h.contains("m=19456,t=2,p=1"), "{h}");
        let c = LocalConnector::new(&[user(None, Some(h))]).await.unwrap();
        assert!(c
            .login("testuser", "correct horse battery staple")
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn refuses_user_without_credentials_or_bad_hash() {
        assert!(LocalConnector::new(&[user(None, None)]).await.is_err());
        assert!(LocalConnector::new(&[user(None, Some("nope".into()))])
            .await
            .is_err());
    }
}
