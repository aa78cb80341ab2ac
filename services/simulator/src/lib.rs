//! posflow-simulator: a fleet of terminals for demos, tests and load. `plan` decides what the
//! fleet sends (deterministically from a seed); `fleet` sends it over MQTT 5 and collects the
//! bridge's answers.

pub mod fleet;
pub mod plan;

use clap::Parser;
use posflow_mqtt::MqttArgs;
use posflow_runtime::{ConfigErrors, Secret};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// posflow-simulator: publishes transactions from a fleet of simulated POS terminals.
#[derive(Debug, Parser)]
#[command(name = "posflow-simulator", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub mqtt: MqttArgs,
    /// Password of the terminal accounts (the local broker gives every T0001..T0500 the same).
    #[arg(
        long,
        env = "POSFLOW_TERMINAL_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    pub terminal_password: Secret,
    #[arg(long, default_value_t = 20)]
    pub terminals: usize,
    /// Transactions per terminal.
    #[arg(long, default_value_t = 50)]
    pub per_terminal: usize,
    #[arg(long, default_value_t = 5)]
    pub merchants: usize,
    /// Every Nth transaction breaks a business rule on purpose (0: none).
    #[arg(long, default_value_t = 25)]
    pub invalid_every: usize,
    /// Transactions per second per terminal (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of the first terminal (T0001 is 1).
    #[arg(long, default_value_t = 1)]
    pub first_terminal: usize,
    /// Seconds before an unanswered transaction is republished.
    #[arg(long, default_value_t = 15)]
    pub retry_after: u64,
    /// Seconds to wait for every answer before giving up.
    #[arg(long, default_value_t = 300)]
    pub deadline: u64,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print the fleet's terminal registry (for `posflow-admin terminals apply --file -`) and
    /// exit: a terminal's merchant is fixed by its number, M00((n-1) mod --merchants + 1).
    #[arg(long)]
    pub print_registry: bool,
}

impl Args {
    pub fn check(self) -> Result<Self, ConfigErrors> {
        let mut e = ConfigErrors::new();
        self.mqtt.check(&mut e);
        e.check(
            (1..=500).contains(&self.terminals),
            "--terminals must be 1..=500 (the local broker knows T0001..T0500)",
        );
        e.check(self.per_terminal >= 1, "--per-terminal must be at least 1");
        e.check(self.merchants >= 1, "--merchants must be at least 1");
        e.check(self.rate >= 0.0, "--rate must be >= 0");
        e.check(
            !self.terminal_password.is_empty(),
            "--terminal-password (POSFLOW_TERMINAL_PASSWORD) must be set",
        );
        e.into_result(self)
    }
}

/// The fleet `args` describe.
pub fn fleet_config(args: &Args, run_id: &str) -> plan::FleetConfig {
    plan::FleetConfig {
        terminals: args.terminals,
        per_terminal: args.per_terminal,
        merchants: args.merchants,
        invalid_every: args.invalid_every,
        seed: args.seed,
        first_terminal: args.first_terminal,
        run_id: run_id.to_string(),
    }
}

/// Runs the fleet with a progress line on stderr every second; prints the summary.
pub async fn run(args: Args) -> anyhow::Result<fleet::Report> {
    let run_id = format!("{:x}", rand::random::<u32>());
    let cfg = fleet_config(&args, &run_id);
    let fleet = plan::plan(&cfg, posflow_schema::now_millis());
    let total = args.terminals * args.per_terminal;
    let opts = fleet::PublishOptions {
        rate_per_terminal: args.rate,
        retry_after: Duration::from_secs(args.retry_after),
        deadline: Duration::from_secs(args.deadline),
        await_answers: true,
    };
    let progress = Arc::new(fleet::Progress::default());
    let ticker = {
        let p = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (a, r) = (
                    p.accepted.load(Ordering::Relaxed),
                    p.rejected.load(Ordering::Relaxed),
                );
                eprintln!(
                    "[simulator] published {}/{total}  broker-acked {}  answered {}/{total} (accepted {a}, dead-lettered {r})  republished {}",
                    p.published.load(Ordering::Relaxed),
                    p.broker_acks.load(Ordering::Relaxed),
                    a + r,
                    p.republished.load(Ordering::Relaxed),
                );
            }
        })
    };
    let report = fleet::run(&args.mqtt, &args.terminal_password, fleet, &opts, progress).await;
    ticker.abort();
    report.map(|r| fleet::Report { run_id, ..r })
}
