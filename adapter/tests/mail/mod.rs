//! Outgoing mail against a real SMTP server (Debian's aiosmtpd, writing
//! what it receives to a maildir): e-mail codes are delivered by the
//! worker's round and the code in the delivered mail verifies; a mail waits
//! in the outbox while the server is down and goes out once it is up; the
//! development outbox page exists exactly when no SMTP server is configured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use adapter::clock::Clock;
use adapter::config::SmtpTls;
use adapter::mail::{backoff, CodeError, Mail, MAX_DELIVERY_ATTEMPTS};
use adapter::provider::AppState;
use adapter::{Application, Config};
use reqwest::StatusCode;

use super::support::*;

/// `python3 -m aiosmtpd` with the `Mailbox` handler on `port`, storing
/// every message in `<dir>/maildir`; killed when dropped.
struct SmtpServer {
    child: Child,
    maildir: PathBuf,
}

impl SmtpServer {
    async fn start(dir: &Path, port: u16) -> SmtpServer {
        let maildir = dir.join("maildir");
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/bin/python3 -m aiosmtpd (Debian python3-aiosmtpd; scripts/install-test-deps.sh)");
        let server = SmtpServer { child, maildir };
        // Wait (bounded) until it accepts connections.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("aiosmtpd did not listen on port {port} within 10 s");
    }

    /// Every delivered message, as raw text, in no particular order.
    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (free now).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn with_smtp(config: &mut Config, port: u16) {
    config.mail.from = Some("Test IdP <login@idp.example>".into());
    config.mail.smtp_host = Some("127.0.0.1".into());
    config.mail.smtp_port = Some(port);
    config.mail.smtp_tls = SmtpTls::None;
}

/// The provider's state, built from `config` as `serve` builds it, with a
/// manual clock; nothing runs in the background (the test drives delivery).
async fn state_of(mut config: Config, clock: Arc<ManualClock>) -> (AppState, Application) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.server.issuer = Some(format!(
        "http://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    ));
    let app = Application::build_with_clock(config, listener, clock)
        .await
        .unwrap();
    (app.state().clone(), app)
}

/// The 6-digit code in a mail's text.
fn code_in(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no code in {text}"))
        .to_owned()
}

/// The value of header `name` of a raw message.
fn header<'a>(message: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}: ");
    message
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in {message}"))
}

/// RFC 5321: a code is queued durably, the worker's round hands it to the
/// SMTP server, and the code in the delivered mail verifies once.
#[tokio::test]
async fn email_codes_are_delivered_by_smtp_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let smtp = SmtpServer::start(dir.path(), port).await;
    let mut config = test_config(&format!("sqlite://{}/m.db", dir.path().display()));
    config.ui.title = "Test IdP".into();
    with_smtp(&mut config, port);
    let clock = Arc::new(ManualClock::new());
    let (st, _app) = state_of(config, clock).await;
    assert!(st.mailer.has_smtp());

    st.email_codes
        .issue("login", "Ann@Example.org")
        .await
        .unwrap();
    // Queued, not yet sent: delivery is the worker's.
    assert!(smtp.messages().is_empty());
    let queued = st.store.recent_mail(1).await.unwrap().remove(0);
    assert_eq!((queued.attempts, queued.sent_at), (0, None));

    assert_eq!(st.mailer.deliver_due(10).await.unwrap(), 1);
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(header(m, "X-RcptTo"), "Ann@Example.org");
    assert_eq!(header(m, "To"), "Ann@Example.org");
    // RFC 5322 §3.2.4: a display name with a space is quoted.
    assert_eq!(header(m, "From"), "\"Test IdP\" <login@idp.example>");
    assert_eq!(header(m, "Subject"), "Your Test IdP code");
    let code = code_in(m.split_once("\n\n").unwrap().1);

    // Sent: recorded, the body (it carried the code) emptied, not due again.
    let row = st.store.mail(&queued.id).await.unwrap().unwrap();
    assert_eq!((row.attempts, row.body.as_str()), (1, ""));
    assert!(row.sent_at.is_some());
    assert_eq!(st.mailer.deliver_due(10).await.unwrap(), 0);
    assert_eq!(smtp.messages().len(), 1);

    assert_eq!(
        st.email_codes
            .verify("login", "ann@example.org", &code)
            .await,
        Ok(())
    );
    assert_eq!(
        st.email_codes
            .verify("login", "ann@example.org", &code)
            .await,
        Err(CodeError::Missing)
    );
}

/// A mail survives an SMTP outage in the outbox: the failed attempt is
/// counted with its error, no retry comes before the backoff, and the mail
/// goes out once the server is up.
#[tokio::test]
async fn mail_waits_in_the_outbox_while_smtp_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = test_config(&format!("sqlite://{}/m.db", dir.path().display()));
    with_smtp(&mut config, port);
    let clock = Arc::new(ManualClock::new());
    let (st, _app) = state_of(config, clock.clone()).await;

    st.email_codes
        .issue("register", "bo@example.org")
        .await
        .unwrap();
    assert_eq!(st.mailer.deliver_due(10).await.unwrap(), 0);
    let row = st.store.recent_mail(1).await.unwrap().remove(0);
    assert_eq!((row.attempts, row.sent_at, row.failed_at), (1, None, None));
    assert!(
        row.last_error.as_deref().unwrap().starts_with("SMTP: "),
        "{row:?}"
    );
    // Not due before its backoff.
    clock.advance(backoff(1) - 1);
    assert_eq!(st.mailer.deliver_due(10).await.unwrap(), 0);
    assert_eq!(st.store.mail(&row.id).await.unwrap().unwrap().attempts, 1);

    let smtp = SmtpServer::start(dir.path(), port).await;
    clock.advance(1);
    assert_eq!(st.mailer.deliver_due(10).await.unwrap(), 1);
    let row = st.store.mail(&row.id).await.unwrap().unwrap();
    assert_eq!(row.attempts, 2);
    assert!(row.sent_at.is_some());
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(header(&messages[0], "X-RcptTo"), "bo@example.org");
    let code = code_in(messages[0].split_once("\n\n").unwrap().1);
    assert_eq!(
        st.email_codes
            .verify("register", "bo@example.org", &code)
            .await,
        Ok(())
    );
}

/// Without SMTP, `GET /dev/outbox` lists the mails newest first, escaped,
/// with the codes in them; nothing is ever sent.
#[tokio::test]
async fn dev_outbox_lists_mail_when_no_smtp_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&format!("sqlite://{}/m.db", dir.path().display()));
    let clock = Arc::new(ManualClock::new());
    let (st, app) = state_of(config, clock.clone()).await;
    assert!(!st.mailer.has_smtp());
    let base = st.issuer().to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));

    st.mailer
        .enqueue(Mail {
            to: "old@example.org".into(),
            subject: "Older <b>mail</b>".into(),
            body: "first body".into(),
        })
        .await
        .unwrap();
    clock.advance(10);
    st.email_codes
        .issue("login", "cy@example.org")
        .await
        .unwrap();
    let code = code_in(&st.store.recent_mail(1).await.unwrap()[0].body);
    assert_eq!(st.mailer.deliver_due(10).await.unwrap(), 0);

    let r = reqwest::get(format!("{base}/dev/outbox")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    let newest = html.find("cy@example.org").expect("the code mail");
    let older = html.find("old@example.org").expect("the older mail");
    assert!(newest < older, "newest first:\n{html}");
    assert!(html.contains(&code), "{html}");
    assert!(html.contains("Older &#60;b&#62;mail&#60;/b&#62;"), "{html}");
    assert!(!html.contains("<b>mail</b>"), "{html}");
    assert!(st
        .store
        .recent_mail(2)
        .await
        .unwrap()
        .iter()
        .all(|m| m.sent_at.is_none() && m.attempts == 0));

    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

/// With an SMTP server configured there is no development outbox.
#[tokio::test]
async fn dev_outbox_is_not_served_with_smtp() {
    let port = free_port();
    let app = spawn_app_with(|c| with_smtp(c, port)).await;
    let r = reqwest::get(format!("{}/dev/outbox", app.base))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Without SMTP the same path is served.
    let app = spawn_app().await;
    let r = reqwest::get(format!("{}/dev/outbox", app.base))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A mail whose every attempt fails is given up after `MAX_DELIVERY_ATTEMPTS`, each
/// retry after its backoff; it is never due again and keeps its last error.
#[tokio::test]
async fn mail_is_given_up_after_the_last_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&format!("sqlite://{}/m.db", dir.path().display()));
    with_smtp(&mut config, free_port());
    let clock = Arc::new(ManualClock::new());
    let (st, _app) = state_of(config, clock.clone()).await;
    st.mailer
        .enqueue(Mail {
            to: "di@example.org".into(),
            subject: "s".into(),
            body: "b".into(),
        })
        .await
        .unwrap();
    let id = st.store.recent_mail(1).await.unwrap().remove(0).id;
    for attempt in 1..=MAX_DELIVERY_ATTEMPTS {
        assert_eq!(st.mailer.deliver_due(10).await.unwrap(), 0);
        let row = st.store.mail(&id).await.unwrap().unwrap();
        assert_eq!(row.attempts, attempt);
        if attempt < MAX_DELIVERY_ATTEMPTS {
            assert_eq!(row.failed_at, None, "attempt {attempt}");
            clock.advance(backoff(attempt));
        } else {
            assert_eq!(row.failed_at, Some(clock.now()));
            assert!(row.last_error.unwrap().starts_with("SMTP: "));
        }
    }
    clock.advance(3600 - 1);
    assert_eq!(st.mailer.deliver_due(10).await.unwrap(), 0);
    assert_eq!(
        st.store.mail(&id).await.unwrap().unwrap().attempts,
        MAX_DELIVERY_ATTEMPTS
    );
}

/// The running service's worker sends a queued mail at once (woken by the
/// enqueue, not by its next tick).
#[tokio::test]
async fn the_running_worker_sends_queued_mail() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let smtp = SmtpServer::start(dir.path(), port).await;
    let mut config = test_config(&format!("sqlite://{}/m.db", dir.path().display()));
    with_smtp(&mut config, port);
    let (st, app) = state_of(config, Arc::new(ManualClock::new())).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    // Serving, and the worker's first (immediate) round is behind it: the
    // next tick is 5 s away, so only the wake-up can send within 3 s.
    let live = format!("{}/healthz/live", st.issuer());
    while reqwest::get(&live).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    st.email_codes
        .issue("login", "el@example.org")
        .await
        .unwrap();
    let mut messages = Vec::new();
    for _ in 0..60 {
        messages = smtp.messages();
        if !messages.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(messages.len(), 1, "not sent within 3 s");
    assert_eq!(header(&messages[0], "X-RcptTo"), "el@example.org");
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

/// The seed's e-mail-code flow end to end through a real SMTP server:
/// register by address alone, the code arrives by SMTP (the running
/// worker delivers it), `/verify-otp` logs in and returns the CSRF token,
/// the protected `POST /dashboard` needs cookie and `X-CSRF-Token`, and
/// `POST /logout` ends the session.
#[tokio::test]
async fn the_seeds_email_code_flow_through_smtp() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let smtp = SmtpServer::start(dir.path(), port).await;
    let app = spawn_app_with(|c| {
        with_smtp(c, port);
        c.accounts.registration = true;
        c.accounts.policy = adapter::config::LoginPolicy::EmailCode;
    })
    .await;
    let url = |p: &str| format!("{}{p}", app.base);
    let r = app
        .browser
        .post(url("/register"))
        .form(&[("email", "dana@example.org")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Delivery is the worker's, woken by the enqueue; bounded wait.
    let mut delivered = Vec::new();
    for _ in 0..200 {
        delivered = smtp.messages();
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered.len(), 1, "one mail delivered over SMTP");
    assert_eq!(header(&delivered[0], "To"), "dana@example.org");
    let code = code_in(&delivered[0]);
    let r = app
        .browser
        .post(url("/verify-otp"))
        .form(&[("email", "dana@example.org"), ("otp_code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["amr"], serde_json::json!(["otp"]));
    let csrf = v["csrf_token"].as_str().unwrap().to_string();
    // Without the CSRF header the protected call is refused.
    let r = app.browser.post(url("/dashboard")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .browser
        .post(url("/dashboard"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["username"], "dana@example.org");
    let r = app
        .browser
        .post(url("/logout"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .browser
        .post(url("/dashboard"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
