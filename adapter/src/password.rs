//! Password hashing: argon2id at the OWASP parameters, off the async
//! workers, with bounded concurrency and a bounded queue.
//!
//! Each argon2id computation takes 19 MiB and tens of milliseconds of one
//! core (RFC 9106 §4), so a login flood must neither block the async
//! workers nor pile up memory. [`Hasher`] runs hashes on the blocking pool,
//! at most `max_concurrent` at a time, and lets at most `max_waiting` more
//! wait for a turn; beyond that a check is refused at once with
//! [`HashError::Busy`]. Unknown users are verified against a dummy hash so
//! they take as long as a wrong password (no account enumeration by timing).

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::Semaphore;

/// OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1.
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

/// The hash verified for unknown users: an argon2id hash, at the parameters
/// above, of a random password that was discarded. Its only job is to cost
/// what a real verification costs; [`Hasher::verify`] refuses an unknown user
/// whatever it verifies to. A constant rather than one made at start-up: an
/// argon2id computation at start-up costs tens of milliseconds and 19 MiB
/// of memory, which mimalloc partly keeps (BENCHMARKS.md).
const DUMMY_PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$LbHrBRNbJCbV1kKWRDLqvQ$Xi+noPNsBmvX+ADUs0u5Lq5tQjNiN/w1zncq3X8pWO8";

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every worker is busy and the queue is full: try again shortly.
    #[error("too many password checks in progress")]
    Busy,
    #[error("{0}")]
    Internal(String),
}

fn argon2() -> Result<Argon2<'static>, HashError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| HashError::Internal(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes on the calling thread (start-up, tests); [`Hasher::hash`] elsewhere.
pub fn hash_blocking(password: &str) -> Result<String, HashError> {
    let hash: PasswordHash = argon2()?
        .hash_password(password.as_bytes())
        .map_err(|e| HashError::Internal(format!("argon2: {e}")))?;
    Ok(hash.to_string())
}

/// Verifies on the calling thread; false for a wrong password or a
/// malformed hash.
fn verify_blocking(password: &str, phc: &str) -> bool {
    // The parameters come from the PHC string itself.
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// Checks that `phc` is an argon2id PHC string with usable parameters,
/// salt and hash (so a typo in a configured hash fails at start-up, not at
/// the first login).
pub fn validate_phc(phc: &str) -> Result<(), HashError> {
    let parsed = PasswordHash::new(phc)
        .map_err(|e| HashError::Internal(format!("not a PHC string: {e}")))?;
    if parsed.algorithm.as_str() != argon2::ARGON2ID_IDENT.as_str() {
        return Err(HashError::Internal(format!(
            "algorithm {} is not argon2id",
            parsed.algorithm
        )));
    }
    Params::try_from(&parsed)
        .map_err(|e| HashError::Internal(format!("argon2 parameters: {e}")))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(HashError::Internal("salt or hash missing".into()));
    }
    Ok(())
}

/// A computation handed to the hashing threads.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Runs argon2id on `max_concurrent` threads of its own: at most that many
/// at a time, at most `max_waiting` more queued; the rest are refused with
/// [`HashError::Busy`]. Share one per process (`Arc`).
///
/// Own threads rather than tokio's blocking pool: each argon2id computation
/// allocates 19 MiB, and the allocator keeps freed memory per thread, so
/// hashing on whichever of the blocking pool's (up to 512) threads is free
/// grows the process by 19 MiB per thread ever used. A fixed set of
/// threads bounds it by `max_concurrent` × 19 MiB.
pub struct Hasher {
    /// The queue of the hashing threads; they end when it is dropped.
    jobs: std::sync::mpsc::Sender<Job>,
    /// Turns to compute: `max_concurrent` permits.
    workers: Arc<Semaphore>,
    /// Admission: `max_concurrent + max_waiting` permits, taken without
    /// waiting, so the queue (and its memory) is bounded.
    admitted: Arc<Semaphore>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("available_workers", &self.workers.available_permits())
            .field("available_admissions", &self.admitted.available_permits())
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// `max_concurrent` >= 1 hashes at a time, `max_waiting` more queued.
    pub fn new(max_concurrent: usize, max_waiting: usize) -> Result<Self, HashError> {
        if max_concurrent == 0 {
            return Err(HashError::Internal(
                "max_concurrent must be at least 1".into(),
            ));
        }
        let total = max_concurrent
            .checked_add(max_waiting)
            .filter(|t| *t <= Semaphore::MAX_PERMITS)
            .ok_or_else(|| HashError::Internal("too many permits".into()))?;
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..max_concurrent {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2id-{i}"))
                .spawn(move || loop {
                    // One thread at a time waits on the queue; the lock is
                    // released before the job runs.
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })
                .map_err(|e| HashError::Internal(format!("hashing thread: {e}")))?;
        }
        Ok(Hasher {
            jobs,
            workers: Arc::new(Semaphore::new(max_concurrent)),
            admitted: Arc::new(Semaphore::new(total)),
        })
    }

    /// An argon2id PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let password = password.to_string();
        self.run(move || hash_blocking(&password)).await?
    }

    /// `phc` None → verifies against a dummy hash and returns false, so an
    /// unknown user takes as long as a wrong password.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> Result<bool, HashError> {
        let known = phc.is_some();
        let phc = phc.unwrap_or(DUMMY_PHC).to_string();
        let password = password.to_string();
        let ok = self.run(move || verify_blocking(&password, &phc)).await?;
        Ok(known && ok)
    }

    /// Admission without waiting, then a turn, then a hashing thread. The
    /// permits move into the job, so a caller that goes away (a dropped
    /// request) does not free a turn while argon2 still runs.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| HashError::Busy)?;
        let turn = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| HashError::Internal(e.to_string()))?;
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let out = work();
                drop(turn);
                drop(admitted);
                // The caller may have gone away; the result is then dropped.
                let _ = done.send(out);
            }))
            .map_err(|_| HashError::Internal("hashing threads stopped".into()))?;
        result
            .await
            .map_err(|_| HashError::Internal("hashing thread failed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_at_owasp_parameters() {
        let h = hash_blocking("correct horse battery staple").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(h.contains("m=19456,t=2,p=1"), "{h}");
        validate_phc(&h).unwrap();
        assert!(verify_blocking("correct horse battery staple", &h));
        assert!(!verify_blocking("Correct horse battery staple", &h));
    }

    #[test]
    fn validate_phc_refuses_other_things() {
        assert!(validate_phc("nope").is_err());
        assert!(validate_phc("").is_err());
        let h = hash_blocking("x").unwrap();
        let argon2i = h.replacen("$argon2id$", "$argon2i$", 1);
        assert!(validate_phc(&argon2i)
            .unwrap_err()
            .to_string()
            .contains("not argon2id"));
        // No hash part.
        let cut = &h[..h.rfind('$').unwrap()];
        assert!(validate_phc(cut).is_err());
    }

    #[tokio::test]
    async fn hash_and_verify_off_the_workers() {
        let hasher = Hasher::new(2, 4).unwrap();
        let h = hasher.hash("pw").await.unwrap();
        assert!(hasher.verify("pw", Some(&h)).await.unwrap());
        assert!(!hasher.verify("PW", Some(&h)).await.unwrap());
        // A malformed stored hash is a refusal, not an error.
        assert!(!hasher.verify("pw", Some("garbage")).await.unwrap());
        assert!(Hasher::new(0, 4).is_err());
    }

    #[tokio::test]
    async fn unknown_user_runs_a_real_verification() {
        let hasher = Hasher::new(1, 0).unwrap();
        // The dummy is a real argon2id hash at the parameters of every new
        // hash, so it costs what a real verification costs...
        validate_phc(DUMMY_PHC).unwrap();
        let fresh = hash_blocking("x").unwrap();
        let params = |phc: &str| phc.split('$').nth(3).unwrap().to_string();
        assert_eq!(params(DUMMY_PHC), params(&fresh));
        // ...and the unknown-user path takes a worker's turn to verify it:
        // with the only turn held, it waits instead of answering at once.
        let held = hasher.workers.clone().try_acquire_owned().unwrap();
        let pending = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            hasher.verify("pw", None),
        )
        .await;
        assert!(pending.is_err(), "answered without verifying");
        drop(held);
        // Even the dummy's own password is refused for an unknown user.
        assert!(!hasher.verify("pw", None).await.unwrap());
    }

    #[tokio::test]
    async fn busy_when_the_queue_is_full() {
        // 1 turn + 2 waiting: 3 admissions.
        let hasher = Arc::new(Hasher::new(1, 2).unwrap());
        // Test hook: take the only turn directly (no admission), so every
        // check queues behind it.
        let held = hasher.workers.clone().try_acquire_owned().unwrap();
        let mut queued = Vec::new();
        for _ in 0..3 {
            let h = hasher.clone();
            queued.push(tokio::spawn(async move {
                h.verify("pw", None).await.map(|_| ())
            }));
        }
        // Wait on state, not on time, until all three are admitted.
        while hasher.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        // The queue is full: the next checks are refused at once (the
        // timeout only turns a wrongly queued check into a failure).
        let at_once = std::time::Duration::from_secs(5);
        let verify = tokio::time::timeout(at_once, hasher.verify("pw", None)).await;
        assert!(matches!(verify, Ok(Err(HashError::Busy))), "{verify:?}");
        let hash = tokio::time::timeout(at_once, hasher.hash("pw")).await;
        assert!(matches!(hash, Ok(Err(HashError::Busy))), "{hash:?}");
        drop(held);
        for q in queued {
            q.await.unwrap().unwrap();
        }
        // Free again once the queue drained.
        assert_eq!(hasher.admitted.available_permits(), 3);
        assert!(!hasher.verify("pw", None).await.unwrap());
    }
}
