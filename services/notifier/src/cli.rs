//! `posflow-notifier merchants …`: the preferences table's front door. `apply` checks the whole
//! file first (every mistake listed, nothing written), then upserts every merchant in one
//! transaction; running replicas pick the change up within --preferences-refresh-secs.

use crate::prefs::{self, Mode};
use crate::store;
use clap::Subcommand;
use posflow_pg::DatabaseArgs;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Subcommand)]
pub enum Merchants {
    /// Create or update the merchants in a preferences file (TOML; see deploy/config/merchants.toml).
    Apply {
        #[arg(long)]
        file: PathBuf,
    },
    /// Print every merchant's preferences (webhook secrets masked).
    List,
    /// Delete a merchant's preferences: it receives nothing more (pending deliveries then fail).
    Remove { merchant_id: String },
    /// Re-encrypt every webhook secret under the first of --secrets-keys: after adding a new
    /// key (then drop the old), or once for rows stored before encryption at rest.
    Reseal,
}

/// Runs a `merchants` command; exit 0 done, 1 failed, 2 bad input.
pub fn main(db: &DatabaseArgs, seal: &crate::sealed::SealArgs, cmd: &Merchants) -> ExitCode {
    let mut errors = posflow_runtime::ConfigErrors::new();
    db.check(&mut errors);
    if !matches!(cmd, Merchants::Remove { .. }) {
        seal.check(&mut errors);
    }
    let parsed = match cmd {
        Merchants::Apply { file } => read_file(file, &mut errors),
        _ => None,
    };
    if !errors.is_empty() {
        eprintln!("posflow-notifier merchants: invalid input:\n{errors}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(db, seal, cmd, parsed)) {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("posflow-notifier merchants: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The preferences file, checked whole; its problems go to `errors`.
fn read_file(
    file: &PathBuf,
    errors: &mut posflow_runtime::ConfigErrors,
) -> Option<Vec<prefs::Preferences>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| errors.push(format!("--file {}: {e}", file.display())))
        .ok()?;
    prefs::parse(&text, |v| std::env::var(v).ok())
        .map_err(|problems| {
            for p in problems {
                errors.push(format!("{}: {p}", file.display()));
            }
        })
        .ok()
}

/// The command against the database; what to print.
async fn execute(
    db: &DatabaseArgs,
    seal: &crate::sealed::SealArgs,
    cmd: &Merchants,
    parsed: Option<Vec<prefs::Preferences>>,
) -> anyhow::Result<String> {
    let summary = |e: posflow_pg::DbError| anyhow::anyhow!(e.summary());
    let mut client = db
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {}", db.redacted(), e.summary()))?;
    match cmd {
        Merchants::Apply { .. } => {
            let p = parsed.unwrap_or_default();
            store::save_preferences(&mut client, &p, &seal.keys()?)
                .await
                .map_err(summary)?;
            Ok(format!("{} merchants applied", p.len()))
        }
        Merchants::Reseal => {
            let keys = seal.keys()?;
            let n = store::reseal(&mut client, &keys)
                .await
                .map_err(|e| anyhow::anyhow!(e.summary()))?;
            Ok(format!(
                "{n} webhook secrets resealed under key {}",
                keys.current()
            ))
        }
        Merchants::List => {
            let map = store::load_preferences(&client, &seal.keys()?)
                .await
                .map_err(|e| anyhow::anyhow!(e.summary()))?;
            let mut ids: Vec<&String> = map.keys().collect();
            ids.sort();
            let lines: Vec<String> = ids.into_iter().map(|id| list_line(&map[id])).collect();
            Ok(lines.join("\n"))
        }
        Merchants::Remove { merchant_id } => {
            if store::remove_preferences(&client, merchant_id)
                .await
                .map_err(summary)?
            {
                Ok(format!("{merchant_id} removed"))
            } else {
                anyhow::bail!("no merchant {merchant_id}")
            }
        }
    }
}

/// One merchant in `list`: tab-separated, the webhook secret masked.
fn list_line(p: &prefs::Preferences) -> String {
    let mode = match p.mode {
        Mode::PerEvent => "per-event".to_string(),
        Mode::Digest { every } => format!("digest every {}", humantime::format_duration(every)),
    };
    format!(
        "{}\t{mode}\t{}\tevents={}\twebhook={}\temails={}\trisk_emails={}",
        p.merchant_id,
        p.format.as_str(),
        p.events_as_strings().join(","),
        p.webhook
            .as_ref()
            .map(|w| format!("{} (secret {})", w.url, w.secret))
            .unwrap_or_else(|| "-".into()),
        p.emails.join(","),
        p.risk_emails.join(","),
    )
}
