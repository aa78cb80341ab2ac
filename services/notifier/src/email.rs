//! Email over SMTP (lettre). The transport comes from one URL:
//! `smtps://user:password@host:465` (implicit TLS), `smtp://user:password@host:587?tls=required`
//! (STARTTLS), or `smtp://host:25` (plain: only for a relay on the same host or the local stack).
//! The Message-ID is derived from the idempotency key, so a mail repeated after a crash carries
//! the same Message-ID and mail systems can fold it.

use crate::policy::Answer;
use crate::store::Attachment;
use lettre::message::header::ContentType;
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncTransport, Message, Tokio1Executor};
use posflow_runtime::{ConfigErrors, Secret};
use std::time::Duration;

/// Where email goes: shared by the notifier and the API (the portal's invitations).
#[derive(clap::Args, Debug, Clone)]
pub struct SmtpArgs {
    /// SMTP server: smtps://user:password@host:465 (TLS), smtp://user:password@host:587?tls=required
    /// (STARTTLS) or smtp://host:25 (plain, local relays only). From a Secret.
    #[arg(
        long,
        env = "POSFLOW_SMTP_URL",
        hide_env_values = true,
        default_value = ""
    )]
    pub smtp_url: Secret,
    /// The From of every email.
    #[arg(
        long,
        env = "POSFLOW_SMTP_FROM",
        default_value = "posflow <notifications@posflow.invalid>"
    )]
    pub smtp_from: String,
}

impl SmtpArgs {
    pub fn check(&self, e: &mut ConfigErrors) {
        let smtp = self.smtp_url.expose();
        e.check(
            smtp.starts_with("smtp://") || smtp.starts_with("smtps://"),
            "--smtp-url (POSFLOW_SMTP_URL) must be an smtp:// or smtps:// URL",
        );
        e.check(
            self.smtp_from.parse::<Mailbox>().is_ok(),
            format!("--smtp-from {:?} is not an email address", self.smtp_from),
        );
    }

    pub fn mailer(&self, timeout: Duration) -> anyhow::Result<Mailer> {
        Mailer::new(self.smtp_url.expose(), &self.smtp_from, timeout)
    }
}

pub struct Mail<'a> {
    pub to: &'a [String],
    pub subject: &'a str,
    pub text: &'a [u8],
    pub attachment: Option<&'a Attachment>,
    pub idempotency_key: &'a str,
}

#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(url: &str, from: &str, timeout: Duration) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow::anyhow!("--smtp-url: {e}"))?
            .timeout(Some(timeout))
            .build();
        let from = from
            .parse()
            .map_err(|e| anyhow::anyhow!("--smtp-from {from:?}: {e}"))?;
        Ok(Mailer { transport, from })
    }

    pub async fn send(&self, m: &Mail<'_>) -> Answer {
        let message = match self.build(m) {
            Ok(message) => message,
            Err(error) => return Answer::Refused { error },
        };
        match self.transport.send(message).await {
            Ok(_) => Answer::Delivered,
            Err(e) if e.is_permanent() => Answer::Refused {
                error: e.to_string(),
            },
            Err(e) => Answer::Retry {
                error: e.to_string(),
                retry_after: None,
            },
        }
    }

    fn build(&self, m: &Mail<'_>) -> Result<Message, String> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(m.subject)
            .message_id(Some(format!("<{}@posflow>", m.idempotency_key)));
        for to in m.to {
            b = b.to(to.parse().map_err(|e| format!("address {to:?}: {e}"))?);
        }
        let text = SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .body(String::from_utf8_lossy(m.text).into_owned());
        let built = match m.attachment {
            None => b.singlepart(text),
            Some(a) => {
                let content_type = ContentType::parse(&a.content_type)
                    .map_err(|e| format!("content type: {e}"))?;
                // Base64 whatever the content: a CSV line ending must survive every relay.
                let body = Body::new_with_encoding(
                    a.bytes.clone(),
                    lettre::message::header::ContentTransferEncoding::Base64,
                )
                .map_err(|_| "attachment encoding".to_string())?;
                let file =
                    lettre::message::Attachment::new(a.name.clone()).body(body, content_type);
                b.multipart(MultiPart::mixed().singlepart(text).singlepart(file))
            }
        };
        built.map_err(|e| e.to_string())
    }
}
