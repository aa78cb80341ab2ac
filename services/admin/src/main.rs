//! posflow-admin: provisions what the stages need and do not create themselves — the Kafka
//! topics of the catalogue and their value schemas in the registry (idempotent; the Helm chart
//! runs it as a pre-install/pre-upgrade hook) — manages the terminal registry, the merchant
//! API's keys, and checks its audit trail; runs the schema gate and prints topics decoded.

mod api;
mod asyncapi;
mod schemas;
mod tail;
mod terminals;

use clap::{Parser, Subcommand};
use posflow_kafka::provision::{provision, ProvisionPlan};
use posflow_kafka::{KafkaArgs, CATALOGUE};
use posflow_runtime::ConfigErrors;
use std::process::ExitCode;

/// posflow-admin: create topics, register schemas, manage the terminal registry.
#[derive(Debug, Parser)]
#[command(name = "posflow-admin", version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    kafka: KafkaArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create every catalogue topic (existing ones are left alone) and register every schema.
    Provision {
        /// 3 in production; 1 on a single-broker local stack.
        #[arg(long, env = "POSFLOW_REPLICATION_FACTOR", default_value_t = 3)]
        replication_factor: i32,
        /// 2 in production (with replication 3); 1 locally.
        #[arg(long, env = "POSFLOW_MIN_INSYNC_REPLICAS", default_value_t = 2)]
        min_insync_replicas: i32,
        /// Override every topic's partition count (default: the catalogue's).
        #[arg(long, env = "POSFLOW_PARTITIONS")]
        partitions: Option<i32>,
    },
    /// Print the topic catalogue.
    Topics,
    /// Print the topic catalogue and its value schemas as an AsyncAPI 3.0 document (JSON;
    /// committed as docs/asyncapi.json).
    Asyncapi,
    /// A topic's records decoded to JSON lines (read_committed; no consumer group; Ctrl-C safe):
    /// from the beginning, the end, an offset or a time, optionally filtered on a field.
    Tail(tail::TailArgs),
    /// The schema gate (docs/schemas.md): each value schema's released versions, then the
    /// working copy, registered in order on scratch subjects at FULL_TRANSITIVE; exit 1 with the
    /// registry's message on an incompatible change. Needs the schema registry only.
    SchemaCheck {
        #[command(flatten)]
        dirs: schemas::SchemaDirs,
    },
    /// Record each schema that changed since its last release as its next released version
    /// (run schema-check first). Needs nothing running.
    SchemaRelease {
        #[command(flatten)]
        dirs: schemas::SchemaDirs,
    },
    /// The terminal registry: which merchant owns each terminal, and whether it may transact
    /// (docs/terminals.md).
    Terminals {
        #[command(subcommand)]
        action: terminals::Action,
        /// Who makes the change, recorded with it (default: the OS user).
        #[arg(long, env = "POSFLOW_OPERATOR", global = true)]
        operator: Option<String>,
    },
    /// The merchant API's keys (docs/api.md). Needs the database owner's URL.
    ApiKeys {
        #[command(subcommand)]
        action: api::KeyAction,
        #[command(flatten)]
        db: posflow_pg::DatabaseArgs,
        /// Who makes the change, recorded in the audit trail (default: the OS user).
        #[arg(long, env = "POSFLOW_OPERATOR", global = true)]
        operator: Option<String>,
    },
    /// The merchant portal's people (docs/portal.md): invite a merchant's first owner. Needs
    /// the database owner's URL, the portal's URL and the mail server.
    Portal {
        #[command(subcommand)]
        action: api::PortalAction,
        /// Who makes the change, recorded in the audit trail (default: the OS user).
        #[arg(long, env = "POSFLOW_OPERATOR", global = true)]
        operator: Option<String>,
    },
    /// The merchant API's reports (docs/api.md). Needs the database owner's URL.
    Reports {
        #[command(subcommand)]
        action: api::ReportAction,
        #[command(flatten)]
        db: posflow_pg::DatabaseArgs,
    },
    /// The merchant API's audit trail (docs/api.md). Needs the database owner's URL.
    Audit {
        #[command(subcommand)]
        action: api::AuditAction,
        #[command(flatten)]
        db: posflow_pg::DatabaseArgs,
    },
}

/// The operator named by --operator, else the OS user.
fn operator(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("posflow-admin: {e:#}");
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let errors = check(&args);
    if !errors.is_empty() {
        eprintln!("posflow-admin: invalid configuration:\n{errors}");
        return ExitCode::from(2);
    }
    match args.command {
        Command::Terminals {
            action,
            operator: who,
        } => runtime().block_on(terminals::run(&args.kafka, action, &operator(who))),
        Command::ApiKeys {
            action,
            db,
            operator: who,
        } => report(runtime().block_on(api::keys(&db, action, &operator(who)))),
        Command::Audit {
            action: api::AuditAction::Verify,
            db,
        } => report(runtime().block_on(api::verify(&db))),
        Command::Reports { action, db } => report(runtime().block_on(api::reports(&db, action))),
        Command::Portal {
            action,
            operator: who,
        } => report(runtime().block_on(api::portal(action, &operator(who)))),
        Command::SchemaCheck { dirs } => {
            report(runtime().block_on(schemas::check(&args.kafka, &dirs)))
        }
        Command::SchemaRelease { dirs } => report(schemas::release(&dirs)),
        Command::Tail(tail) => report(runtime().block_on(tail::run(&args.kafka, &tail))),
        Command::Asyncapi => {
            let doc = serde_json::to_string_pretty(&asyncapi::document()).expect("JSON");
            println!("{doc}");
            ExitCode::SUCCESS
        }
        Command::Topics => {
            print_topics(&args.kafka);
            ExitCode::SUCCESS
        }
        Command::Provision {
            replication_factor,
            min_insync_replicas,
            partitions,
        } => {
            let plan = ProvisionPlan {
                replication_factor,
                min_insync_replicas,
                partitions,
            };
            match runtime().block_on(provision(&args.kafka, &plan)) {
                Ok(report) => {
                    print_provisioned(&report);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("posflow-admin: provisioning failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Every configuration error of the command, at once.
fn check(args: &Args) -> ConfigErrors {
    let mut errors = ConfigErrors::new();
    match &args.command {
        Command::ApiKeys { db, .. } | Command::Audit { db, .. } | Command::Reports { db, .. } => {
            db.check(&mut errors)
        }
        Command::Portal { action, .. } => {
            let api::PortalAction::Invite {
                email,
                merchants,
                db,
                portal,
                ..
            } = action;
            db.check(&mut errors);
            portal.check(&mut errors, true);
            errors.check(email.contains('@'), "--email must be an email address");
            errors.check(
                !merchants.is_empty(),
                "--merchant is required (repeat it for a chain)",
            );
        }
        Command::SchemaRelease { .. } | Command::Asyncapi => {}
        _ => args.kafka.check(&mut errors),
    }
    if let Command::Provision {
        replication_factor,
        min_insync_replicas,
        partitions,
    } = &args.command
    {
        errors.check(
            *replication_factor >= 1,
            "--replication-factor must be >= 1",
        );
        errors.check(
            (1..=*replication_factor).contains(min_insync_replicas),
            "--min-insync-replicas must be 1..=replication factor",
        );
        errors.check(
            partitions.is_none_or(|p| p >= 1),
            "--partitions must be >= 1",
        );
    }
    errors
}

fn print_topics(kafka: &posflow_kafka::KafkaArgs) {
    let topics = kafka.topics();
    println!(
        "{:<36} {:>10} {:>9}  {:<28} KEY",
        "TOPIC", "PARTITIONS", "RETENTION", "WRITERS"
    );
    for t in CATALOGUE {
        println!(
            "{:<36} {:>10} {:>9}  {:<28} {}",
            topics.name(t.name),
            t.partitions,
            t.retention.label(),
            t.writers,
            t.key
        );
    }
    // Not the internal state topics (`STATE_TOPICS`, docs/topics.md): this list is the public
    // one, what docs/asyncapi.json documents for analysts (make asyncapi-check compares them).
}

fn print_provisioned(report: &posflow_kafka::provision::ProvisionReport) {
    for t in &report.created {
        println!("created  {t}");
    }
    for t in &report.existed {
        println!("exists   {t}");
    }
    for (subject, id) in &report.schemas {
        println!("schema   {subject} id={id}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(argv: &[&str]) -> String {
        check(&Args::parse_from([&["posflow-admin"], argv].concat())).to_string()
    }

    #[test]
    fn every_bad_provisioning_setting_is_listed_at_once() {
        let e = errors(&[
            "provision",
            "--replication-factor",
            "0",
            "--partitions",
            "0",
        ]);
        assert!(e.contains("--replication-factor must be >= 1"), "{e}");
        assert!(
            e.contains("--min-insync-replicas must be 1..=replication factor"),
            "{e}"
        );
        assert!(e.contains("--partitions must be >= 1"), "{e}");
        let ok = errors(&[
            "provision",
            "--replication-factor",
            "3",
            "--min-insync-replicas",
            "2",
        ]);
        assert!(!ok.contains("replication"), "{ok}");
    }

    #[test]
    fn each_command_checks_what_it_uses() {
        let bad = ["--kafka-brokers", "nonsense"];
        let e = errors(
            &[
                &bad[..],
                &["audit", "--database-url", "mysql://x", "verify"],
            ]
            .concat(),
        );
        assert!(e.contains("--database-url"), "{e}");
        assert!(!e.contains("--kafka-brokers"), "{e}");
        let e = errors(&[&bad[..], &["topics"]].concat());
        assert!(e.contains("--kafka-brokers must be host:port"), "{e}");
    }
}
