//! Invitation emails: an owner invites a person; the email carries the one link that enrols
//! them (`<--portal-url>/portal/enrol/<token>`), over the same SMTP as the notifier's email
//! (posflow_notifier::email). The link's host is the configured portal URL, never a request's
//! Host header.

use super::people::{self, Refused};
use crate::auth::Role;
use posflow_notifier::email::{Mail, Mailer, SmtpArgs};
use posflow_notifier::policy::Answer;
use posflow_pg::DbError;
use posflow_runtime::ConfigErrors;
use std::time::Duration;
use tokio_postgres::Client;

/// Where the portal is and how it mails (the API's flags; `posflow-admin portal invite` takes
/// the same ones).
#[derive(clap::Args, Debug, Clone)]
pub struct PortalArgs {
    #[command(flatten)]
    pub smtp: SmtpArgs,
    /// The portal's public address (https://…), what invitation emails link to. Unset: the
    /// portal cannot invite (its Team page says so). Never taken from a request's Host header,
    /// which a client chooses: a forged one would send an invitee's link elsewhere.
    #[arg(long, env = "POSFLOW_PORTAL_URL", default_value = "")]
    pub portal_url: String,
}

impl PortalArgs {
    /// The URL's and the mail server's problems (when a URL is given, or it is `required`).
    pub fn check(&self, e: &mut ConfigErrors, required: bool) {
        if self.portal_url.is_empty() && !required {
            return;
        }
        e.check(
            self.portal_url.starts_with("https://") && !self.portal_url.ends_with('/'),
            "--portal-url (POSFLOW_PORTAL_URL) must be an https:// origin without a trailing /",
        );
        self.smtp.check(e);
    }

    /// How the portal emails invitations, if `--portal-url` is set.
    pub fn invitations(&self) -> anyhow::Result<Option<Invitations>> {
        if self.portal_url.is_empty() {
            return Ok(None);
        }
        Ok(Some(Invitations {
            mailer: self.smtp.mailer(Duration::from_secs(10))?,
            portal_url: self.portal_url.clone(),
        }))
    }
}

pub struct Invitations {
    pub mailer: Mailer,
    /// `https://portal.example.com`, no trailing slash (checked at start).
    pub portal_url: String,
}

/// What an invitation came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// The person's id; the email is on its way.
    Invited(String),
    Refused(Refused),
    /// The mail server would not take it (the person exists, invited; inviting again makes a
    /// new link).
    MailFailed(String),
}

impl Invitations {
    /// Invites `email` to `merchants` with `role` and emails the link.
    pub async fn invite(
        &self,
        db: &mut Client,
        email: &str,
        role: Role,
        merchants: &[String],
        invited_by: &str,
    ) -> Result<Sent, DbError> {
        let (id, token) = match people::invite(db, email, role, merchants, invited_by).await? {
            Ok(it) => it,
            Err(r) => return Ok(Sent::Refused(r)),
        };
        let reason = format!(
            "You have been invited to posflow, the portal where {} sees its card sales, as {}.",
            merchants.join(", "),
            role.as_str()
        );
        Ok(
            match self
                .send_link(&id, email, &token, &reason, "Your invitation to posflow")
                .await
            {
                None => Sent::Invited(id),
                Some(error) => Sent::MailFailed(error),
            },
        )
    }

    /// Emails person `id` the link that (re-)enrols them, after `reason`; `None` once the mail
    /// server took it, else its error.
    pub async fn send_link(
        &self,
        id: &str,
        email: &str,
        token: &posflow_runtime::Secret,
        reason: &str,
        subject: &str,
    ) -> Option<String> {
        let link = format!("{}/portal/enrol/{}", self.portal_url, token.expose());
        let text = format!(
            "{reason}\n\n\
             Set up your account (a password and an authenticator app) within {} hours:\n\n{link}\n\n\
             If you did not expect this, ignore this email: nothing happens without the link.\n",
            people::INVITATION_TTL.as_secs() / 3600,
        );
        let to = [email.trim().to_lowercase()];
        let answer = self
            .mailer
            .send(&Mail {
                to: &to,
                subject,
                text: text.as_bytes(),
                attachment: None,
                idempotency_key: &format!("invite-{id}-{}", &token.expose()[..8]),
            })
            .await;
        match answer {
            Answer::Delivered => None,
            Answer::Refused { error } | Answer::Retry { error, .. } => Some(error),
        }
    }
}
