//! Outgoing mail: the [`Mail`] itself, the [`MailSender`] seam (SMTP in
//! [`smtp`]), the persisted outbox and its delivery ([`Mailer`]), and the
//! development outbox page ([`dev`]). [`codes`] sends one-time codes by mail.
//!
//! Every mail goes to the store's `mail_outbox` first ([`Mailer::enqueue`]
//! returns once it is durable), so a mail survives a restart and any replica
//! can send it. [`Mailer::deliver_due`] sends what is due; each attempt is
//! claimed first with compare-and-swap on the attempt counter, so two
//! replicas never send one attempt twice. A failed attempt is retried with
//! exponential backoff ([`backoff`]) up to [`MAX_DELIVERY_ATTEMPTS`]
//! attempts; the injected clock decides when a retry is due. [`run_worker`]
//! delivers in the background.
//!
//! Without an SMTP server nothing is sent: mails stay in the outbox and
//! `GET /dev/outbox` lists them. Log lines name the recipient's domain
//! only, never the body (it carries codes).

pub mod codes;
pub mod dev;
pub mod smtp;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::clock::SharedClock;
use crate::secret::random_token;
use crate::store::{OutboxRow, Store, StoreError};

pub use codes::{CodeError, EmailCodes};
pub use smtp::SmtpSender;

/// Attempts per mail, the first included.
pub const MAX_DELIVERY_ATTEMPTS: i64 = 6;
/// Wait after the first failed attempt, seconds; doubled after each, so
/// every retry (5 + 10 + 20 + 40 + 80 s) falls within a code's 5 minutes.
pub const FIRST_RETRY_SECONDS: i64 = 5;
/// How long a mail is kept in the outbox, seconds (then garbage-collected).
/// Bodies carry codes: a sent mail's body is emptied at once.
pub const KEEP_SECONDS: i64 = 3600;
/// How often the worker looks for due mail (it is also woken at once by
/// [`Mailer::enqueue`] on the same replica).
pub const WORKER_INTERVAL: Duration = Duration::from_secs(5);
/// Mails per delivery round of the worker.
pub const BATCH: i64 = 50;

/// Seconds to wait after attempt number `attempt` (1-based) failed.
pub fn backoff(attempt: i64) -> i64 {
    FIRST_RETRY_SECONDS.saturating_mul(1i64 << (attempt - 1).clamp(0, 30))
}

/// One plain-text mail.
#[derive(Clone, PartialEq, Eq)]
pub struct Mail {
    /// The recipient's address.
    pub to: String,
    pub subject: String,
    /// Plain text; may carry a code, so `Debug` leaves it out.
    pub body: String,
}

impl std::fmt::Debug for Mail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mail")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// Why a mail could not be sent. Never carries the body or a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The recipient or sender address is malformed.
    #[error("invalid address {0}")]
    Address(String),
    /// The message could not be built.
    #[error("cannot build the message: {0}")]
    Build(String),
    /// The server refused, or could not be reached.
    #[error("SMTP: {0}")]
    Transport(String),
}

/// Sends one mail now. [`SmtpSender`] is the production implementation.
#[async_trait]
pub trait MailSender: Send + Sync + 'static {
    async fn send(&self, mail: &Mail) -> Result<(), MailError>;
}

/// The domain of an address, the only part of it logs show.
pub fn domain_of(address: &str) -> &str {
    address
        .rsplit_once('@')
        .map_or("(no domain)", |(_, d)| d.trim_end_matches('>'))
}

/// The outbox and its delivery. Shared by handlers and the worker.
pub struct Mailer {
    store: Arc<dyn Store>,
    sender: Option<Arc<dyn MailSender>>,
    clock: SharedClock,
    /// Wakes the worker when a mail was queued on this replica.
    wake: Notify,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("smtp", &self.has_smtp())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// A mailer over `store`; without `sender` mails stay in the outbox.
    pub fn new(
        store: Arc<dyn Store>,
        sender: Option<Arc<dyn MailSender>>,
        clock: SharedClock,
    ) -> Self {
        Mailer {
            store,
            sender,
            clock,
            wake: Notify::new(),
        }
    }

    /// Persists the mail in the outbox (durable before this returns), then it is delivered by the worker.
    pub async fn enqueue(&self, mail: Mail) -> Result<(), StoreError> {
        let now = self.clock.now();
        let domain = domain_of(&mail.to).to_owned();
        self.store
            .enqueue_mail(&OutboxRow {
                id: random_token(),
                recipient: mail.to,
                subject: mail.subject,
                body: mail.body,
                created_at: now,
                attempts: 0,
                next_attempt_at: now,
                sent_at: None,
                failed_at: None,
                last_error: None,
                expires_at: now + KEEP_SECONDS,
            })
            .await?;
        if self.has_smtp() {
            tracing::debug!(%domain, "mail queued");
            self.wake.notify_one();
        } else {
            tracing::info!(
                %domain,
                "mail queued but not sent: no SMTP server is configured (mail.smtp_host); \
                 read it at {}",
                crate::paths::DEV_OUTBOX
            );
        }
        Ok(())
    }

    /// One delivery round: sends up to `limit` due messages, retries failures with backoff, returns how many were sent.
    pub async fn deliver_due(&self, limit: i64) -> Result<u64, StoreError> {
        let Some(sender) = &self.sender else {
            return Ok(0);
        };
        let now = self.clock.now();
        let mut sent = 0;
        for row in self.store.due_mail(now, limit).await? {
            let attempt = row.attempts + 1;
            if !self
                .store
                .claim_mail(&row.id, row.attempts, now + backoff(attempt))
                .await?
            {
                // Another worker took this attempt.
                continue;
            }
            let domain = domain_of(&row.recipient);
            let mail = Mail {
                to: row.recipient.clone(),
                subject: row.subject,
                body: row.body,
            };
            match sender.send(&mail).await {
                Ok(()) => {
                    self.store.mail_sent(&row.id, now).await?;
                    sent += 1;
                    tracing::info!(%domain, attempt, "mail sent");
                }
                Err(e) => {
                    let give_up = attempt >= MAX_DELIVERY_ATTEMPTS;
                    self.store
                        .mail_failed(&row.id, &e.to_string(), give_up.then_some(now))
                        .await?;
                    if give_up {
                        tracing::warn!(%domain, attempt, error = %e, "mail not sent; giving up");
                    } else {
                        tracing::warn!(%domain, attempt, error = %e, retry_in = backoff(attempt), "mail not sent; will retry");
                    }
                }
            }
        }
        Ok(sent)
    }

    /// True when an SMTP server is configured (mails leave the process).
    pub fn has_smtp(&self) -> bool {
        self.sender.is_some()
    }

    /// The store behind the outbox.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

/// Delivers due mail every [`WORKER_INTERVAL`], and at once when a mail was
/// queued on this replica, until aborted. Sent and failed mails go with the
/// provider's garbage collection (`Store::delete_expired`).
pub async fn run_worker(mailer: Arc<Mailer>) {
    let mut tick = tokio::time::interval(WORKER_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = mailer.wake.notified() => {}
        }
        loop {
            match mailer.deliver_due(BATCH).await {
                // A full round may have left more behind.
                Ok(n) if n == BATCH.unsigned_abs() => tokio::task::yield_now().await,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "mail delivery round failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_all_retries_fit_in_a_codes_lifetime() {
        assert_eq!(
            (1..MAX_DELIVERY_ATTEMPTS).map(backoff).collect::<Vec<_>>(),
            vec![5, 10, 20, 40, 80]
        );
        let total: i64 = (1..MAX_DELIVERY_ATTEMPTS).map(backoff).sum();
        assert!(total < codes::CODE_TTL_SECONDS, "{total}");
    }

    #[test]
    fn debug_leaves_the_body_out() {
        let mail = Mail {
            to: "a@example.org".into(),
            subject: "Your code".into(),
            body: "Your code is 123456.".into(),
        };
        let debug = format!("{mail:?} {mail:#?}");
        assert!(!debug.contains("123456"), "{debug}");
        assert!(debug.contains("a@example.org") && debug.contains("<20 bytes>"));
    }

    #[test]
    fn domain_only() {
        assert_eq!(domain_of("a.b@example.org"), "example.org");
        assert_eq!(domain_of("Ann <ann@mail.example>"), "mail.example");
        assert_eq!(domain_of("nobody"), "(no domain)");
    }
}
