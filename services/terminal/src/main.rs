//! posflow-terminal: the reference client as a command, for trying the contract by hand and
//! for the end-to-end tests (docs/terminal-client.md).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use clap::{Parser, Subcommand};
use posflow_mqtt::MqttArgs;
use posflow_runtime::{ConfigErrors, Secret};
use posflow_terminal::flush::flush;
use posflow_terminal::queue::{Caps, Error, Queue};
use posflow_terminal::sale::Sale;
use posflow_terminal::sender::SendOptions;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// posflow-terminal: a terminal's store-and-forward queue, and its flush to posflow.
#[derive(Debug, Parser)]
#[command(name = "posflow-terminal", version, about, long_about = None)]
struct Args {
    /// The queue's directory (created if missing).
    #[arg(long, env = "POSFLOW_TERMINAL_QUEUE")]
    queue: PathBuf,
    /// 32 bytes, base64 (`head -c 32 /dev/urandom | base64`): encrypts the queue at rest. From
    /// a Secret; never logged.
    #[arg(long, env = "POSFLOW_TERMINAL_QUEUE_KEY", hide_env_values = true)]
    queue_key: Secret,
    #[arg(long, env = "POSFLOW_TERMINAL_ID")]
    terminal_id: String,
    #[arg(long, env = "POSFLOW_MERCHANT_ID")]
    merchant_id: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Captures sales into the queue until it holds `--until` unanswered (a run that was cut
    /// off carries on where it stopped). Each is durable before the next.
    Capture {
        #[arg(long)]
        until: usize,
        /// The first sale's capture time (RFC 3339); sale n is `--every-ms` × n later. Default:
        /// now.
        #[arg(long)]
        start: Option<humantime::Timestamp>,
        #[arg(long, default_value_t = 1000)]
        every_ms: i64,
        /// Captured offline, the link down since then (RFC 3339).
        #[arg(long)]
        offline_since: Option<humantime::Timestamp>,
        #[arg(long, default_value_t = 1234)]
        amount_minor: i64,
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// The card number of every sale (a test card: this command is for trying the contract).
        /// Without it, the sales carry no card. Never logged; on disk only encrypted.
        #[arg(long, env = "POSFLOW_TERMINAL_TEST_PAN", hide_env_values = true)]
        pan: Option<Secret>,
        #[arg(long, default_value = "5814")]
        mcc: String,
        /// Milliseconds between captures (a till's pace).
        #[arg(long, default_value_t = 0)]
        pace_ms: u64,
        #[command(flatten)]
        caps: CapsArgs,
    },
    /// Sends every pending transaction until each is answered (exit 0), or the deadline
    /// passes (exit 1, the rest still pending).
    Flush {
        #[command(flatten)]
        mqtt: MqttArgs,
        #[arg(long, default_value_t = 10)]
        retry_after_secs: u64,
        #[arg(long, default_value_t = 32)]
        in_flight: usize,
        #[arg(long, default_value_t = 600)]
        deadline_secs: u64,
    },
    /// The queue's counts and its rejected transactions, as JSON.
    Status,
}

/// The merchant's offline caps, as the validator's rules file has them for this merchant.
#[derive(Debug, clap::Args)]
struct CapsArgs {
    #[arg(long, default_value_t = 500)]
    max_count: usize,
    /// Minor units.
    #[arg(long, default_value_t = 25_000)]
    max_amount_minor: i64,
    /// Minor units, per currency.
    #[arg(long, default_value_t = 1_000_000)]
    max_total_minor: i64,
}

fn key(secret: &Secret, e: &mut ConfigErrors) -> [u8; 32] {
    match STANDARD.decode(secret.expose()) {
        Ok(k) if k.len() == 32 => k.try_into().expect("32 bytes"),
        _ => {
            e.push("--queue-key (POSFLOW_TERMINAL_QUEUE_KEY) must be 32 bytes, base64");
            [0; 32]
        }
    }
}

fn millis(t: &humantime::Timestamp) -> i64 {
    std::time::SystemTime::from(*t)
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut e = ConfigErrors::new();
    let key = key(&args.queue_key, &mut e);
    for (flag, id) in [
        ("--terminal-id", &args.terminal_id),
        ("--merchant-id", &args.merchant_id),
    ] {
        e.check(
            posflow_mqtt::is_valid_id(id),
            format!("{flag} must be 1-64 of [A-Za-z0-9_-]"),
        );
    }
    if let Command::Flush {
        mqtt, in_flight, ..
    } = &args.command
    {
        mqtt.check(&mut e);
        e.check(*in_flight >= 1, "--in-flight must be at least 1");
    }
    if !e.is_empty() {
        eprintln!("posflow-terminal: invalid configuration:\n{e}");
        return ExitCode::from(2);
    }
    // Warnings (reconnects) as JSON lines on stdout with the progress; no tracing.
    let _exporter = posflow_runtime::logs::init("posflow-terminal", "warn", None, 0.0);
    match run(args, key).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("posflow-terminal: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, key: [u8; 32]) -> anyhow::Result<ExitCode> {
    let mut queue = Queue::open(&args.queue, &args.terminal_id, &key, 1)?;
    let c = queue.counts();
    if c.truncated > 0 {
        eprintln!(
            "queue: cut {} torn record(s) at the end of its logs",
            c.truncated
        );
    }
    match args.command {
        Command::Capture {
            until,
            start,
            every_ms,
            offline_since,
            amount_minor,
            currency,
            pan,
            mcc,
            pace_ms,
            caps,
        } => {
            let caps = Caps {
                max_count: caps.max_count,
                max_amount_minor: caps.max_amount_minor,
                max_total_minor: caps.max_total_minor,
            };
            let start = start.as_ref().map_or_else(now_millis, millis);
            let offline_since = offline_since.as_ref().map(millis);
            while queue.counts().pending < until {
                let mut sale = Sale {
                    merchant_id: args.merchant_id.clone(),
                    terminal_id: args.terminal_id.clone(),
                    time_ms: 0,
                    amount_minor,
                    currency: currency.clone(),
                    entry_mode: "contactless".into(),
                    pan: pan.as_ref().map(|p| p.expose().to_string()),
                    response_code: "00".into(),
                    auth_code: None,
                    mcc: mcc.clone(),
                    location: None,
                    offline_since,
                };
                match queue.capture(amount_minor, &currency, &caps, |id, seq| {
                    sale.time_ms = start + (seq - 1) * every_ms;
                    sale.payload(id, seq)
                }) {
                    Ok(entry) => println!(
                        "captured {} {}",
                        queue.counts().pending,
                        entry.transaction_id
                    ),
                    Err(Error::Refused(r)) => {
                        println!("declined: {r}");
                        return Ok(ExitCode::from(3));
                    }
                    Err(err) => return Err(err.into()),
                }
                if pace_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(pace_ms)).await;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Flush {
            mqtt,
            retry_after_secs,
            in_flight,
            deadline_secs,
        } => {
            let password = mqtt.mqtt_password.clone();
            let mut o = mqtt.options(&args.terminal_id, &password)?;
            o.set_clean_start(true);
            let opts = SendOptions {
                retry_after: Duration::from_secs(retry_after_secs),
                in_flight,
                deadline: Duration::from_secs(deadline_secs),
                ..SendOptions::default()
            };
            let r = flush(
                &mut queue,
                o,
                &args.merchant_id,
                &args.terminal_id,
                &opts,
                |r| {
                    println!(
                        "answered {} (accepted {}, rejected {}), pending {}",
                        r.accepted + r.rejected,
                        r.accepted,
                        r.rejected,
                        r.unanswered
                    );
                },
            )
            .await?;
            println!(
                "flushed: published {}, republished {}, accepted {}, rejected {}, rate-limited {}, pending {}",
                r.published, r.republished, r.accepted, r.rejected, r.rate_limited, r.unanswered
            );
            Ok(if r.unanswered == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Status => {
            let c = queue.counts();
            let rejected: Vec<serde_json::Value> = queue
                .rejected()
                .iter()
                .map(|(e, reason)| serde_json::json!({"transaction_id": e.transaction_id, "reason": reason}))
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "instance": queue.instance(),
                    "pending": c.pending, "accepted": c.accepted, "rejected": c.rejected,
                    "rejected_transactions": rejected,
                })
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
