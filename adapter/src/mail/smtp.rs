//! [`SmtpSender`]: mail over SMTP (RFC 5321) with lettre on tokio, TLS by
//! rustls (aws-lc-rs, the platform's certificate verifier): implicit TLS
//! (RFC 8314), required STARTTLS (RFC 3207), or plain text for a local
//! relay; SMTP AUTH (RFC 4954) only over TLS.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Mail, MailError, MailSender};
use crate::config::{ConfigError, MailConfig, Secret, SmtpTls};

/// Longest one SMTP command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends mail through one SMTP server, from one address.
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSender")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// A sender to `host:port` with `tls`, logging in with `credentials`
    /// (user name, password) when given, sending from `from`. Call it on
    /// the tokio runtime: the connection pool runs there.
    pub fn new(
        host: &str,
        port: u16,
        tls: SmtpTls,
        credentials: Option<(String, Secret)>,
        from: &str,
    ) -> Result<Self, MailError> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| MailError::Address(format!("{from:?}: {e}")))?;
        let parameters =
            || TlsParameters::new(host.to_owned()).map_err(|e| MailError::Transport(e.to_string()));
        let tls = match tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls => Tls::Required(parameters()?),
            SmtpTls::Tls => Tls::Wrapper(parameters()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(COMMAND_TIMEOUT));
        if let Some((user, password)) = credentials {
            builder = builder.credentials(Credentials::new(user, password.expose().to_owned()));
        }
        Ok(SmtpSender {
            transport: builder.build(),
            from,
        })
    }

    /// The sender `[mail]` configures; `None` without `mail.smtp_host`.
    pub fn from_config(config: &MailConfig) -> Result<Option<Self>, ConfigError> {
        let Some(host) = &config.smtp_host else {
            return Ok(None);
        };
        let Some(from) = &config.from else {
            return Err(ConfigError {
                key: "mail.from".into(),
                message: "required with mail.smtp_host".into(),
            });
        };
        let credentials = match (&config.smtp_username, config.smtp_password()?) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            _ => None,
        };
        SmtpSender::new(host, config.port(), config.smtp_tls, credentials, from)
            .map(Some)
            .map_err(|e| ConfigError {
                key: "mail".into(),
                message: e.to_string(),
            })
    }

    fn message(&self, mail: &Mail) -> Result<Message, MailError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|e| MailError::Address(format!("{:?}: {e}", mail.to)))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.as_str())
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body.clone())
            .map_err(|e| MailError::Build(e.to_string()))
    }
}

#[async_trait]
impl MailSender for SmtpSender {
    async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let message = self.message(mail)?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| MailError::Transport(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The transport's connection pool lives on the tokio runtime.
    #[tokio::test]
    async fn bad_addresses_are_refused() {
        let sender = SmtpSender::new(
            "127.0.0.1",
            25,
            SmtpTls::None,
            None,
            "Auth <auth@x.example>",
        )
        .unwrap();
        let mail = Mail {
            to: "not an address".into(),
            subject: "s".into(),
            body: "b".into(),
        };
        assert!(matches!(sender.message(&mail), Err(MailError::Address(_))));
        assert!(matches!(
            SmtpSender::new("127.0.0.1", 25, SmtpTls::None, None, "nobody"),
            Err(MailError::Address(_))
        ));
    }

    #[tokio::test]
    async fn the_message_is_plain_text_with_the_configured_sender() {
        let sender = SmtpSender::new(
            "127.0.0.1",
            25,
            SmtpTls::Starttls,
            None,
            "Auth <auth@x.example>",
        )
        .unwrap();
        let mail = Mail {
            to: "u@example.org".into(),
            subject: "Your code".into(),
            body: "Code: 123456".into(),
        };
        let text = String::from_utf8(sender.message(&mail).unwrap().formatted()).unwrap();
        assert!(text.contains("From: Auth <auth@x.example>\r\n"), "{text}");
        assert!(text.contains("To: u@example.org\r\n"), "{text}");
        assert!(text.contains("Subject: Your code\r\n"), "{text}");
        assert!(
            text.contains("Content-Type: text/plain; charset=utf-8\r\n"),
            "{text}"
        );
        assert!(text.ends_with("Code: 123456"), "{text}");
    }
}
