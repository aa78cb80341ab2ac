//! `posflow-admin api-keys …` and `posflow-admin audit verify`: operators' side of the merchant
//! API (docs/api.md). Run with the database owner's URL (POSFLOW_DATABASE_URL): keys are made
//! for any merchant here, including operator keys, which the API itself never makes. Every
//! change is appended to the audit trail as `operator:<name>`.

use clap::Subcommand;
use posflow_api::audit::{self, Verdict};
use posflow_api::auth::Role;
use posflow_api::keys::{self, NewKey};
use posflow_api::portal::invite::{PortalArgs, Sent};
use posflow_pg::DatabaseArgs;
use posflow_schema::now_millis;
use posflow_schema::AuditRecord;
use serde_json::Value;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Create a key and print it — once: only its hash is kept.
    Create {
        /// The merchant it acts for; repeat for a chain's key (several merchants).
        #[arg(long = "merchant")]
        merchants: Vec<String>,
        /// owner, finance, developer, auditor — or operator (support staff: any merchant,
        /// read-only, a reason with every request; give no --merchant).
        #[arg(long)]
        role: String,
        /// What the key is for, e.g. "ERP reconciliation".
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. 90days; no expiry without it.
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
    },
    /// List keys (of one merchant).
    List {
        #[arg(long)]
        merchant: Option<String>,
    },
    /// Revoke a key at once.
    Revoke { key_id: String },
}

#[derive(Debug, Subcommand)]
pub enum PortalAction {
    /// Invite a person (a merchant's first owner, typically) by email: the link enrols them
    /// (a password and an authenticator), good 72 hours. Owners invite the rest of their team
    /// from the portal's Team page.
    Invite {
        #[arg(long)]
        email: String,
        /// owner, finance, developer or auditor.
        #[arg(long, default_value = "owner")]
        role: String,
        /// The merchant they act for; repeat for a chain's set.
        #[arg(long = "merchant")]
        merchants: Vec<String>,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        portal: PortalArgs,
    },
}

/// `posflow-admin portal invite`: the invitation the Team page sends, made by an operator and
/// audited as `operator:<name>` in each merchant's trail.
pub async fn portal(action: PortalAction, operator: &str) -> anyhow::Result<ExitCode> {
    let PortalAction::Invite {
        email,
        role,
        merchants,
        db,
        portal,
    } = action;
    let Some(role) = Role::parse(&role).filter(|r| *r != Role::Operator) else {
        anyhow::bail!("--role must be one of owner, finance, developer, auditor");
    };
    let inv = portal
        .invitations()?
        .ok_or_else(|| anyhow::anyhow!("--portal-url is required"))?;
    let mut client = db.connect().await?;
    let by = format!("operator:{operator}");
    match inv
        .invite(&mut client, &email, role, &merchants, &by)
        .await?
    {
        Sent::Invited(id) => {
            let after = serde_json::json!({"email": email.trim().to_lowercase(), "role": role.as_str(), "person": id});
            record(
                &mut client,
                operator,
                "portal.team.invite",
                &merchants,
                None,
                &after,
            )
            .await?;
            println!(
                "invited {email} as {} of {}: the link is on its way (good {} hours)",
                role.as_str(),
                merchants.join(", "),
                posflow_api::portal::people::INVITATION_TTL.as_secs() / 3600
            );
            Ok(ExitCode::SUCCESS)
        }
        Sent::Refused(why) => {
            eprintln!("posflow-admin: refused: {why}");
            Ok(ExitCode::FAILURE)
        }
        Sent::MailFailed(why) => {
            eprintln!("posflow-admin: the mail server did not take the invitation ({why}); run it again for a new link");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ReportAction {
    /// Reports that are ready and that their merchant has not acknowledged, oldest first:
    /// support follows these up.
    Unacknowledged {
        /// Only those ready for at least this long, e.g. 1h.
        #[arg(long)]
        older_than: Option<humantime::Duration>,
    },
}

pub async fn reports(db: &DatabaseArgs, action: ReportAction) -> anyhow::Result<ExitCode> {
    let client = db.connect().await?;
    let ReportAction::Unacknowledged { older_than } = action;
    let secs = older_than.map_or(0.0, |d| Duration::from(d).as_secs_f64());
    let rows = client
        .query(
            "SELECT id, merchant_id, format, row_count, to_char(ready_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    extract(epoch FROM now() - ready_at)::bigint
               FROM api_reports WHERE status = 'ready' AND acknowledged_at IS NULL
                AND ready_at <= now() - make_interval(secs => $1) ORDER BY ready_at",
            &[&secs],
        )
        .await?;
    println!(
        "{:<22} {:<12} {:<6} {:>10}  {:<22} WAITING",
        "REPORT", "MERCHANT", "FORMAT", "ROWS", "READY AT"
    );
    for r in &rows {
        let waited = Duration::from_secs(r.get::<_, i64>(5).max(0) as u64);
        println!(
            "{:<22} {:<12} {:<6} {:>10}  {:<22} {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, Option<i64>>(3).unwrap_or(0),
            r.get::<_, String>(4),
            humantime::format_duration(waited)
        );
    }
    eprintln!("{} unacknowledged", rows.len());
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Check the audit trail's hash chain; names the first row that does not fit. Exit 1 if
    /// the chain is broken.
    Verify,
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Appends one audit record per merchant the key acts for (one with no merchant for an
/// operator key), so each merchant's own audit log shows the change.
async fn record(
    client: &mut tokio_postgres::Client,
    operator: &str,
    action: &str,
    merchants: &[String],
    before: Option<&Value>,
    after: &Value,
) -> anyhow::Result<()> {
    let none = [String::new()];
    let merchants = if merchants.is_empty() {
        &none[..]
    } else {
        merchants
    };
    let entries: Vec<AuditRecord> = merchants
        .iter()
        .map(|m| AuditRecord {
            at: now_millis(),
            actor: format!("operator:{operator}"),
            role: "operator".into(),
            merchant_id: m.clone(),
            action: action.into(),
            resource: "posflow-admin".into(),
            filter: "{}".into(),
            row_count: 1,
            outcome: "ok".into(),
            source: "cli".into(),
            before: before.map(Value::to_string),
            after: Some(after.to_string()),
            ..AuditRecord::default()
        })
        .collect();
    audit::append(client, &entries).await?;
    Ok(())
}

pub async fn keys(
    db: &DatabaseArgs,
    action: KeyAction,
    operator: &str,
) -> anyhow::Result<ExitCode> {
    let mut client = db.connect().await?;
    match action {
        KeyAction::Create {
            merchants,
            role,
            name,
            expires_in,
        } => {
            let Some(role) = Role::parse(&role) else {
                anyhow::bail!(
                    "--role {role:?} is not one of owner, finance, developer, auditor, operator"
                );
            };
            anyhow::ensure!(
                (role == Role::Operator) == merchants.is_empty(),
                "an operator key names no --merchant; every other key names at least one"
            );
            anyhow::ensure!(!name.trim().is_empty(), "--name must not be empty");
            let expires_at = expires_in.map(|d| SystemTime::now() + Duration::from(d));
            let (listing, key) = keys::create(
                &client,
                &NewKey {
                    name: &name,
                    role,
                    merchants: &merchants,
                    expires_at,
                    created_by: &format!("operator:{operator}"),
                },
            )
            .await?;
            record(
                &mut client,
                operator,
                "api_keys.create",
                &merchants,
                None,
                &listing,
            )
            .await?;
            print(&listing);
            eprintln!("The key (shown once; store it now):");
            println!("{key}");
        }
        KeyAction::List { merchant } => {
            for k in keys::list(&client, merchant.as_deref()).await? {
                print(&k);
            }
        }
        KeyAction::Revoke { key_id } => {
            let Some((before, after)) =
                keys::revoke(&client, &key_id, None, &format!("operator:{operator}")).await?
            else {
                eprintln!("posflow-admin: no key {key_id}");
                return Ok(ExitCode::FAILURE);
            };
            let merchants: Vec<String> =
                serde_json::from_value(after["merchants"].clone()).unwrap_or_default();
            record(
                &mut client,
                operator,
                "api_keys.revoke",
                &merchants,
                Some(&before),
                &after,
            )
            .await?;
            print(&after);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn verify(db: &DatabaseArgs) -> anyhow::Result<ExitCode> {
    let mut client = db.connect().await?;
    Ok(match audit::verify(&mut client).await? {
        Verdict::Intact { rows } => {
            println!("audit chain intact: {rows} records");
            ExitCode::SUCCESS
        }
        Verdict::Broken { seq, why } => {
            println!("audit chain BROKEN at seq {seq}: {why}");
            ExitCode::FAILURE
        }
    })
}
