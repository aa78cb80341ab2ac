//! `posflow-admin terminals …`: the terminal registry's only writer.

use clap::Subcommand;
use posflow_kafka::KafkaArgs;
use posflow_registry::{file, plan, store, Change, Snapshot, Status};
use posflow_schema::{now_millis, rfc3339_millis, TerminalRegistration};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Register or update the terminals of a reviewed file, all in one transaction: every
    /// mistake is listed and nothing is written unless there is none. Terminals not in the file
    /// are left as they are.
    Apply {
        /// The registry file (`-` for stdin); format in docs/terminals.md.
        #[arg(long)]
        file: PathBuf,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the registry.
    List {
        /// Only this merchant's terminals.
        #[arg(long)]
        merchant: Option<String>,
    },
    /// Refuse a terminal's transactions from now on (stolen, tampered with); reversible.
    Block {
        terminal_id: String,
        /// Why, kept with the registration (e.g. an incident number).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Take a blocked terminal back into service.
    Activate {
        terminal_id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Take a terminal out of service for good; its id is never active again.
    Retire {
        terminal_id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Print the Mosquitto ACL for the registry's active terminals (docs/terminals.md).
    Acl {
        /// From a registry file instead of the live registry.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(kafka: &KafkaArgs, action: Action, operator: &str) -> ExitCode {
    match go(kafka, action, operator).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("posflow-admin terminals: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn go(kafka: &KafkaArgs, action: Action, operator: &str) -> anyhow::Result<ExitCode> {
    match action {
        Action::Apply { file, dry_run } => apply(kafka, &file, dry_run, operator).await,
        Action::List { merchant } => {
            list(kafka, merchant.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Action::Block { terminal_id, note } => {
            set_status(kafka, &terminal_id, Status::Blocked, operator, note).await
        }
        Action::Activate { terminal_id, note } => {
            set_status(kafka, &terminal_id, Status::Active, operator, note).await
        }
        Action::Retire { terminal_id, note } => {
            set_status(kafka, &terminal_id, Status::Retired, operator, note).await
        }
        Action::Acl { file } => {
            let snapshot: Snapshot = match file {
                Some(f) => match file::parse(&read(&f)?, operator, 0) {
                    Ok(d) => d.into_iter().map(|r| (r.terminal_id.clone(), r)).collect(),
                    Err(errors) => return Ok(refused(&f, &errors)),
                },
                None => store::load(kafka, READ_TIMEOUT).await?,
            };
            print!("{}", posflow_registry::mosquitto_acl(&snapshot));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Applies the file: every mistake listed and nothing written, or the changes printed and
/// written (not with `dry_run`).
async fn apply(
    kafka: &KafkaArgs,
    file: &Path,
    dry_run: bool,
    operator: &str,
) -> anyhow::Result<ExitCode> {
    let desired = match file::parse(&read(file)?, operator, now_millis()) {
        Ok(d) => d,
        Err(errors) => return Ok(refused(file, &errors)),
    };
    let current = store::load(kafka, READ_TIMEOUT).await?;
    let changes = match plan(&current, &desired) {
        Ok(c) => c,
        Err(errors) => return Ok(refused(file, &errors)),
    };
    let mut write = Vec::new();
    let (mut added, mut changed) = (0, 0);
    for (r, change) in changes {
        match change {
            Change::Added => {
                added += 1;
                println!("add      {} {} {}", r.terminal_id, r.merchant_id, r.status);
            }
            Change::Changed(what) => {
                changed += 1;
                println!("change   {} {what}", r.terminal_id);
            }
            Change::Unchanged => continue,
        }
        write.push(r);
    }
    let unchanged = desired.len() - write.len();
    if !dry_run && !write.is_empty() {
        store::write(kafka, &write).await?;
    }
    println!(
        "{}{added} added, {changed} changed, {unchanged} unchanged",
        if dry_run { "dry run: " } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(kafka: &KafkaArgs, merchant: Option<&str>) -> anyhow::Result<()> {
    let snapshot = store::load(kafka, READ_TIMEOUT).await?;
    println!(
        "{:<16} {:<16} {:<8} {:<24} {:<16} NOTE",
        "TERMINAL", "MERCHANT", "STATUS", "CHANGED", "BY"
    );
    for r in snapshot
        .values()
        .filter(|r| merchant.is_none_or(|m| m == r.merchant_id))
    {
        println!(
            "{:<16} {:<16} {:<8} {:<24} {:<16} {}",
            r.terminal_id,
            r.merchant_id,
            r.status,
            rfc3339_millis(r.changed_at),
            r.changed_by,
            r.note
        );
    }
    Ok(())
}

async fn set_status(
    kafka: &KafkaArgs,
    terminal_id: &str,
    status: Status,
    operator: &str,
    note: String,
) -> anyhow::Result<ExitCode> {
    let current = store::load(kafka, READ_TIMEOUT).await?;
    let Some(r) = current.get(terminal_id) else {
        eprintln!("posflow-admin terminals: {terminal_id} is not registered");
        return Ok(ExitCode::from(2));
    };
    let desired = TerminalRegistration {
        status: status.as_str().into(),
        changed_at: now_millis(),
        changed_by: operator.into(),
        note,
        ..r.clone()
    };
    match plan(&current, std::slice::from_ref(&desired)) {
        Err(errors) => {
            eprintln!("posflow-admin terminals: {}", errors.join("; "));
            Ok(ExitCode::from(2))
        }
        Ok(c) if c[0].1 == Change::Unchanged => {
            println!("{terminal_id} is already {}", status.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => {
            store::write(kafka, &[desired]).await?;
            println!(
                "{terminal_id} {} (merchant {})",
                status.as_str(),
                r.merchant_id
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if path.as_os_str() == "-" {
        return std::io::read_to_string(std::io::stdin()).context("reading stdin");
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn refused(file: &std::path::Path, errors: &[String]) -> ExitCode {
    eprintln!(
        "posflow-admin terminals: {} refused, nothing written:",
        file.display()
    );
    for e in errors {
        eprintln!("  {e}");
    }
    ExitCode::from(2)
}
