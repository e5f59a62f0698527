//! [`EmailCodes`]: one-time codes sent by e-mail (registration and login of
//! local accounts).
//!
//! A code is 6 decimal digits (about 20 bits) drawn uniformly from the
//! OS-seeded CSPRNG. At most one code lives per (purpose, address); a new
//! one replaces it. Only the hash of the code, bound to its key, is stored
//! (the store's `email_codes` table). It is valid for [`CODE_TTL_SECONDS`]
//! by the injected clock, used once (consumed by one `DELETE … RETURNING`),
//! and dies at the [`MAX_ATTEMPTS`]th wrong guess, counted by one
//! conditional `UPDATE` (RFC 4226 §7.3, NIST SP 800-63B §5.2.2: throttling),
//! so a guesser has at most 5 chances in 10^6 per code issued. Every check
//! lives in the store, so it holds across replicas.

use std::sync::Arc;

use rand::RngCore;

use super::{Mail, Mailer};
use crate::clock::SharedClock;
use crate::secret::hash;
use crate::store::{CodeCheck, Store};

/// Lifetime of a code, seconds.
pub const CODE_TTL_SECONDS: i64 = 300;
/// Wrong guesses a code survives, minus one: the 5th wrong one kills it.
pub const MAX_ATTEMPTS: u32 = 5;
/// Digits of a code.
pub const CODE_DIGITS: usize = 6;

/// Why a code was not accepted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodeError {
    /// No code for this purpose and address: never issued, already used,
    /// replaced by a newer one, or collected.
    #[error("no code is pending; ask for a new one")]
    Missing,
    /// The code's 5 minutes are over.
    #[error("the code has expired; ask for a new one")]
    Expired,
    /// Wrong code; `attempts_left` more tries before the code dies.
    #[error("wrong code; {attempts_left} attempts left")]
    Invalid { attempts_left: u32 },
    /// Too many wrong codes: this code accepts nothing more.
    #[error("too many wrong codes; ask for a new one")]
    TooManyAttempts,
    /// The store failed (the message never carries a code).
    #[error("storage: {0}")]
    Storage(String),
}

impl From<crate::store::StoreError> for CodeError {
    fn from(e: crate::store::StoreError) -> Self {
        CodeError::Storage(e.to_string())
    }
}

/// A fresh code: [`CODE_DIGITS`] digits, uniform over 000000–999999.
pub fn new_code() -> String {
    // Rejection sampling: values past the last whole multiple of 10^6
    // below 2^32 are drawn again, so `% 10^6` has no bias.
    const RANGE: u32 = 1_000_000;
    const LIMIT: u32 = u32::MAX - (u32::MAX % RANGE + 1) % RANGE;
    let mut rng = rand::rng();
    loop {
        let n = rng.next_u32();
        if n <= LIMIT {
            return format!("{:06}", n % RANGE);
        }
    }
}

/// The store key of (purpose, address): a hash, so the table holds no
/// address. Addresses compare without case and surrounding spaces.
pub fn code_key(purpose: &str, address: &str) -> String {
    hash(&format!(
        "email-code\0{purpose}\0{}",
        address.trim().to_lowercase()
    ))
}

/// The stored form of `code` under `key`: bound to the key, so a code hash
/// says nothing about another address's code.
fn code_hash(key: &str, code: &str) -> String {
    hash(&format!("{key}\0{code}"))
}

/// Issues and checks e-mail one-time codes.
pub struct EmailCodes {
    store: Arc<dyn Store>,
    mailer: Arc<Mailer>,
    clock: SharedClock,
    /// Product name in the mail (`ui.title`).
    title: String,
}

impl EmailCodes {
    /// Codes over `store`, mailed by `mailer`, signed with `title`.
    pub fn new(
        store: Arc<dyn Store>,
        mailer: Arc<Mailer>,
        clock: SharedClock,
        title: impl Into<String>,
    ) -> Self {
        EmailCodes {
            store,
            mailer,
            clock,
            title: title.into(),
        }
    }

    /// Makes a fresh 6-digit code for (purpose, address) (uniform, from a CSPRNG), replacing any earlier one,
    /// stores only its hash with expires_at = now + 300 and attempts = 0, and mails it.
    pub async fn issue(&self, purpose: &str, address: &str) -> Result<(), CodeError> {
        let code = new_code();
        let key = code_key(purpose, address);
        let now = self.clock.now();
        self.store
            .put_email_code(&key, &code_hash(&key, &code), now + CODE_TTL_SECONDS)
            .await?;
        self.mailer.enqueue(self.mail(address, &code)).await?;
        Ok(())
    }

    /// Checks a code: single-use (consumed atomically: two concurrent correct submissions → exactly one Ok),
    /// at most 5 attempts (the 5th wrong one leaves the code dead: TooManyAttempts from then on), expiry by the injected clock.
    pub async fn verify(&self, purpose: &str, address: &str, code: &str) -> Result<(), CodeError> {
        // People type "123 456" or paste with spaces around it.
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let key = code_key(purpose, address);
        let check = self
            .store
            .check_email_code(
                &key,
                &code_hash(&key, &code),
                i64::from(MAX_ATTEMPTS),
                self.clock.now(),
            )
            .await?;
        match check {
            CodeCheck::Accepted => Ok(()),
            CodeCheck::Wrong { attempts } => {
                let left = i64::from(MAX_ATTEMPTS).saturating_sub(attempts);
                match u32::try_from(left) {
                    Ok(attempts_left) if attempts_left > 0 => {
                        Err(CodeError::Invalid { attempts_left })
                    }
                    _ => Err(CodeError::TooManyAttempts),
                }
            }
            CodeCheck::Exhausted => Err(CodeError::TooManyAttempts),
            CodeCheck::Expired => Err(CodeError::Expired),
            CodeCheck::Missing => Err(CodeError::Missing),
        }
    }

    /// The mail carrying `code`. The code stays out of the subject, which
    /// notifications and mail lists show to anyone near the screen.
    fn mail(&self, address: &str, code: &str) -> Mail {
        let title = &self.title;
        let minutes = CODE_TTL_SECONDS / 60;
        Mail {
            to: address.trim().to_owned(),
            subject: format!("Your {title} code"),
            body: format!(
                "Your {title} code is:\n\n    {code}\n\n\
                 It is valid for {minutes} minutes and can be used once.\n\
                 If you did not ask for it, you can ignore this mail.\n"
            ),
        }
    }
}

/// The login state machine's view of e-mail codes
/// ([`crate::accounts::authn::OneTimeCodes`]).
#[async_trait::async_trait]
impl crate::accounts::authn::OneTimeCodes for EmailCodes {
    async fn send(&self, purpose: &str, address: &str) -> Result<(), String> {
        self.issue(purpose, address)
            .await
            .map_err(|e| e.to_string())
    }

    async fn check(
        &self,
        purpose: &str,
        address: &str,
        code: &str,
    ) -> Result<Result<(), crate::accounts::authn::CodeRejection>, String> {
        use crate::accounts::authn::CodeRejection;
        Ok(Err(match self.verify(purpose, address, code).await {
            Ok(()) => return Ok(Ok(())),
            Err(CodeError::Missing) => CodeRejection::Missing,
            Err(CodeError::Expired) => CodeRejection::Expired,
            Err(CodeError::Invalid { attempts_left }) => CodeRejection::Invalid { attempts_left },
            Err(CodeError::TooManyAttempts) => CodeRejection::TooManyAttempts,
            Err(CodeError::Storage(e)) => return Err(e),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    #[test]
    fn codes_are_six_digits_and_spread_over_every_digit() {
        let mut counts = [[0u32; 10]; CODE_DIGITS];
        for _ in 0..2000 {
            let code = new_code();
            assert_eq!(code.len(), CODE_DIGITS, "{code}");
            for (i, b) in code.bytes().enumerate() {
                assert!(b.is_ascii_digit(), "{code}");
                counts[i][usize::from(b - b'0')] += 1;
            }
        }
        // 200 expected per digit and position; far outside 100..300 is a bias.
        for position in counts {
            for n in position {
                assert!((100..300).contains(&n), "{counts:?}");
            }
        }
    }

    #[test]
    fn keys_ignore_case_and_spaces_but_not_the_purpose() {
        assert_eq!(
            code_key("login", " Ann@Example.org "),
            code_key("login", "ann@example.org")
        );
        assert_ne!(
            code_key("login", "ann@example.org"),
            code_key("register", "ann@example.org")
        );
    }

    struct Setup {
        codes: EmailCodes,
        store: Arc<dyn Store>,
        clock: Arc<ManualClock>,
    }

    fn setup(store: Arc<dyn Store>) -> Setup {
        let clock = Arc::new(ManualClock::new());
        let mailer = Arc::new(Mailer::new(store.clone(), None, clock.clone()));
        Setup {
            codes: EmailCodes::new(store.clone(), mailer, clock.clone(), "Test IdP"),
            store,
            clock,
        }
    }

    impl Setup {
        /// Issues a code one second after the last mail, so "newest" is
        /// unambiguous.
        async fn issue(&self, purpose: &str, to: &str) {
            self.clock.advance(1);
            self.codes.issue(purpose, to).await.unwrap();
        }

        /// The code of the newest mail in the outbox (the mail to `to`).
        async fn mailed_code(&self, to: &str) -> String {
            let newest = self.store.recent_mail(1).await.unwrap().remove(0);
            assert_eq!(newest.recipient, to);
            assert_eq!(newest.subject, "Your Test IdP code");
            let code: String = newest
                .body
                .split_whitespace()
                .find(|w| w.len() == CODE_DIGITS && w.bytes().all(|b| b.is_ascii_digit()))
                .unwrap()
                .to_owned();
            code
        }
    }

    /// Some other 6-digit code.
    fn other(code: &str) -> String {
        format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
    }

    async fn issue_and_verify(s: &Setup) {
        s.issue("login", "ann@example.org").await;
        let code = s.mailed_code("ann@example.org").await;
        // Only the hash is stored: no column holds the code.
        let row = s.store.recent_mail(1).await.unwrap().remove(0);
        assert!(row.body.contains(&code));
        // Another purpose or address has no code.
        assert_eq!(
            s.codes.verify("register", "ann@example.org", &code).await,
            Err(CodeError::Missing)
        );
        assert_eq!(
            s.codes.verify("login", "bob@example.org", &code).await,
            Err(CodeError::Missing)
        );
        assert_eq!(
            s.codes
                .verify(
                    "login",
                    "Ann@Example.org",
                    &format!(" {} {} ", &code[..3], &code[3..])
                )
                .await,
            Ok(())
        );
        // Single use.
        assert_eq!(
            s.codes.verify("login", "ann@example.org", &code).await,
            Err(CodeError::Missing)
        );
    }

    async fn wrong_codes_count_down_then_the_code_is_dead(s: &Setup) {
        s.issue("login", "cat@example.org").await;
        let code = s.mailed_code("cat@example.org").await;
        let wrong = other(&code);
        for left in [4, 3, 2, 1] {
            assert_eq!(
                s.codes.verify("login", "cat@example.org", &wrong).await,
                Err(CodeError::Invalid {
                    attempts_left: left
                })
            );
        }
        assert_eq!(
            s.codes.verify("login", "cat@example.org", &wrong).await,
            Err(CodeError::TooManyAttempts)
        );
        // Dead even for the right code, and for non-digits.
        assert_eq!(
            s.codes.verify("login", "cat@example.org", &code).await,
            Err(CodeError::TooManyAttempts)
        );
        assert_eq!(
            s.codes.verify("login", "cat@example.org", "abc").await,
            Err(CodeError::TooManyAttempts)
        );
        // A new code starts over.
        s.issue("login", "cat@example.org").await;
        let code = s.mailed_code("cat@example.org").await;
        assert_eq!(
            s.codes
                .verify("login", "cat@example.org", &other(&code))
                .await,
            Err(CodeError::Invalid { attempts_left: 4 })
        );
        assert_eq!(
            s.codes.verify("login", "cat@example.org", &code).await,
            Ok(())
        );
    }

    async fn codes_expire_after_exactly_300_seconds(s: &Setup) {
        s.issue("login", "dan@example.org").await;
        let start = s.clock.now();
        let code = s.mailed_code("dan@example.org").await;
        s.clock.set(start + 298);
        s.issue("login", "eve@example.org").await;
        let eve = s.mailed_code("eve@example.org").await;
        // At 299 a wrong code is still counted: the code is live.
        assert_eq!(s.clock.now(), start + 299);
        assert_eq!(
            s.codes
                .verify("login", "dan@example.org", &other(&code))
                .await,
            Err(CodeError::Invalid { attempts_left: 4 })
        );
        s.clock.set(start + 300);
        assert_eq!(
            s.codes.verify("login", "dan@example.org", &code).await,
            Err(CodeError::Expired)
        );
        // Eve's code, issued at 299, is live until 599 and valid at 598.
        s.clock.set(start + 598);
        assert_eq!(
            s.codes.verify("login", "eve@example.org", &eve).await,
            Ok(())
        );
    }

    /// At 299 seconds the right code is still accepted.
    async fn the_right_code_works_until_the_last_second(s: &Setup) {
        s.issue("login", "hal@example.org").await;
        let start = s.clock.now();
        let code = s.mailed_code("hal@example.org").await;
        s.clock.set(start + 299);
        assert_eq!(
            s.codes.verify("login", "hal@example.org", &code).await,
            Ok(())
        );
    }

    async fn a_new_code_replaces_the_old_one(s: &Setup) {
        s.issue("register", "fay@example.org").await;
        let first = s.mailed_code("fay@example.org").await;
        let second = loop {
            s.issue("register", "fay@example.org").await;
            let c = s.mailed_code("fay@example.org").await;
            if c != first {
                break c;
            }
        };
        assert_eq!(
            s.codes.verify("register", "fay@example.org", &first).await,
            Err(CodeError::Invalid { attempts_left: 4 })
        );
        assert_eq!(
            s.codes.verify("register", "fay@example.org", &second).await,
            Ok(())
        );
    }

    async fn concurrent_correct_codes_have_one_winner(s: Setup) {
        let s = Arc::new(s);
        s.issue("login", "gus@example.org").await;
        let code = s.mailed_code("gus@example.org").await;
        let mut handles = Vec::new();
        for _ in 0..8 {
            let (s, code) = (s.clone(), code.clone());
            handles.push(tokio::spawn(async move {
                s.codes.verify("login", "gus@example.org", &code).await
            }));
        }
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.unwrap());
        }
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(()) | Err(CodeError::Missing))),
            "{results:?}"
        );
    }

    async fn run_all(store: Arc<dyn Store>) {
        let s = setup(store);
        issue_and_verify(&s).await;
        wrong_codes_count_down_then_the_code_is_dead(&s).await;
        codes_expire_after_exactly_300_seconds(&s).await;
        the_right_code_works_until_the_last_second(&s).await;
        a_new_code_replaces_the_old_one(&s).await;
        concurrent_correct_codes_have_one_winner(s).await;
    }

    #[tokio::test]
    async fn email_codes_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/codes.db", dir.path().display());
        let store = crate::store::SqlStore::connect(&url, 4).await.unwrap();
        run_all(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn email_codes_on_postgres() {
        let pg = crate::store::conformance::TestPostgres::new().await;
        run_all(Arc::new(pg.store.clone())).await;
        pg.drop_schema().await;
    }
}
