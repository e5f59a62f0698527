//! Authentications of the JSON API between steps: the [`AuthState`] kept in
//! the store under the hash of a random id (the `session_id` the client
//! sends back), so a flow can continue on any replica and an abandoned one
//! expires. Saved with compare-and-swap; a final state (success, denied)
//! finishes the record, so a replayed step finds it over.
//!
//! The records share the table of logins in progress (same lifetime, same
//! single-use finish, same garbage collection); the payload's own field
//! name keeps the two kinds apart.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::authn::AuthState;
use crate::clock::SharedClock;
use crate::secret::{hash, random_token};
use crate::store::{codec, LoginRow, Lookup, Store, StoreError};

/// The stored payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ApiAuth {
    api_auth: AuthState,
}

/// A loaded flow: what to save against, and its state.
#[derive(Debug, Clone)]
pub struct Pending {
    row: LoginRow,
    pub state: AuthState,
}

/// Why a flow cannot be continued.
#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error("unknown or expired authentication session")]
    Unknown,
    #[error("the authentication session is over")]
    Finished,
    #[error("another request continued this authentication first")]
    Conflict,
    #[error(transparent)]
    Storage(#[from] StoreError),
}

pub struct PendingAuths {
    store: Arc<dyn Store>,
    clock: SharedClock,
    ttl: i64,
}

impl PendingAuths {
    pub fn new(store: Arc<dyn Store>, clock: SharedClock, ttl: i64) -> Self {
        PendingAuths { store, clock, ttl }
    }

    /// Stores a new flow; returns its id.
    pub async fn start(&self, state: AuthState) -> Result<String, StoreError> {
        let id = random_token();
        let finished = state.is_final();
        let data = codec::encode(&ApiAuth { api_auth: state })?;
        let now = self.clock.now();
        self.store
            .insert_login(&hash(&id), &data, now + self.ttl, None)
            .await?;
        if finished {
            self.store
                .update_login(&hash(&id), 0, &data, None, true, now)
                .await?;
        }
        Ok(id)
    }

    pub async fn load(&self, id: &str) -> Result<Pending, PendingError> {
        let row = match self.store.login(&hash(id), self.clock.now()).await? {
            Lookup::Found(row) => row,
            Lookup::Finished => return Err(PendingError::Finished),
            Lookup::Expired | Lookup::Missing => return Err(PendingError::Unknown),
        };
        // A login of an authorization request is not an API flow.
        let Ok(payload) = codec::decode::<ApiAuth>(&row.data) else {
            return Err(PendingError::Unknown);
        };
        Ok(Pending {
            row,
            state: payload.api_auth,
        })
    }

    /// Saves the next state of `pending`; a final state finishes the flow.
    pub async fn save(&self, pending: &Pending, next: &AuthState) -> Result<(), PendingError> {
        let data = codec::encode(&ApiAuth {
            api_auth: next.clone(),
        })?;
        let finish = next.is_final();
        let saved = self
            .store
            .update_login(
                &pending.row.id_hash,
                pending.row.version,
                &data,
                None,
                finish,
                self.clock.now(),
            )
            .await?;
        match (saved, finish) {
            (true, _) => Ok(()),
            (false, true) => Err(PendingError::Finished),
            (false, false) => Err(PendingError::Conflict),
        }
    }
}
