//! `schema-check` and `schema-release`: the schema gate (docs/schemas.md) from the command line.

use posflow_kafka::KafkaArgs;
use posflow_schema::gate::{self, COMPATIBILITY};
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the working copy and the released versions are (paths from the repository root).
#[derive(Debug, clap::Args)]
pub struct SchemaDirs {
    /// The working copy: `<topic>.avsc` files and `types/`.
    #[arg(long, default_value = "schemas")]
    pub schemas: PathBuf,
    /// Every released version: `<topic>/v<N>.avsc`.
    #[arg(long, default_value = "schemas/history")]
    pub history: PathBuf,
}

/// Prints one line per schema; exit 1 if the registry refused any.
pub async fn check(kafka: &KafkaArgs, dirs: &SchemaDirs) -> anyhow::Result<ExitCode> {
    let run = format!("{}-{}", std::process::id(), posflow_schema::now_millis());
    let verdicts = gate::check(&kafka.registry(), &dirs.schemas, &dirs.history, &run)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut refused = 0;
    for v in &verdicts {
        let changed = if v.unreleased_change {
            " + a change not released yet"
        } else {
            ""
        };
        let verdict = match &v.refused {
            None => "compatible".to_string(),
            Some(why) => {
                refused += 1;
                format!("INCOMPATIBLE: {why}")
            }
        };
        println!(
            "{:<28} v1..v{}{changed}: {verdict}",
            v.schema.stem(),
            v.released
        );
    }
    if refused > 0 {
        eprintln!(
            "posflow-admin: {refused} schema(s) break {COMPATIBILITY} compatibility with their released versions; docs/schemas.md says how to change a schema"
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("every schema is {COMPATIBILITY}-compatible with each of its released versions");
    Ok(ExitCode::SUCCESS)
}

/// Writes the next released version of each changed schema.
pub fn release(dirs: &SchemaDirs) -> anyhow::Result<ExitCode> {
    let written = gate::release(&dirs.schemas, &dirs.history).map_err(anyhow::Error::msg)?;
    for path in &written {
        println!("released {}", path.display());
    }
    if written.is_empty() {
        println!("nothing changed since the last release");
    }
    Ok(ExitCode::SUCCESS)
}
