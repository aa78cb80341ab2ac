//! posflow-chaos: the whole pipeline — bridge, validator, storage, fraud and notifier, two
//! replicas each — on a three-node Kafka, under load from terminals that follow the terminal
//! contract, while a seeded nemesis kills, hangs and restarts stages, Kafka nodes, PostgreSQL
//! and the MQTT broker (Mosquitto or HiveMQ CE), overlapping. Then an independent checker reads the topics and tables and says
//! whether the ledger balances. docs/chaos.md; `make chaos` (by hand, 10 minutes) and
//! `make test-chaos` (the short run of `make test`).

mod check;
mod nemesis;
mod report;
mod run;
mod stages;
mod topics;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// posflow-chaos: the pipeline under a seeded schedule of overlapping faults, and a checker.
#[derive(Debug, Parser)]
#[command(name = "posflow-chaos", version, about, long_about = None)]
pub struct Args {
    /// Seconds of load, with faults from 15 s in to 20 s before the end.
    #[arg(long, env = "CHAOS_SECONDS", default_value_t = 600)]
    pub seconds: u64,
    /// Seed of the fault schedule; a random one (printed) when not given.
    #[arg(long, env = "CHAOS_SEED")]
    pub seed: Option<u64>,
    /// Transactions per second offered, over all terminals.
    #[arg(long, env = "CHAOS_RATE", default_value_t = 100.0)]
    pub rate: f64,
    /// Terminals publishing (T0101 onwards of the local registry).
    #[arg(long, default_value_t = 40)]
    pub terminals: usize,
    /// Where the report goes: chaos-<seed>.json, .md and .svg.
    #[arg(long, default_value = "target/chaos")]
    pub out: PathBuf,
    /// Prove the checker can fail: the bridges answer "accepted" before Kafka has the
    /// transaction (a test-only defect, docs/chaos.md); the run succeeds only if the checker finds
    /// transactions missing.
    #[arg(long)]
    pub prove_checker: bool,
    /// Print the fault schedule of this seed and length, and exit.
    #[arg(long)]
    pub plan_only: bool,
    /// Draw a run's report again from its JSON (the .md and .svg beside it), and exit.
    #[arg(long, value_name = "JSON")]
    pub redraw: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args
        .seed
        .unwrap_or_else(|| u64::from(rand::random::<u16>()));
    if let Some(json) = &args.redraw {
        return match run::redraw(json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("[chaos] {}: {e:#}", json.display());
                ExitCode::from(2)
            }
        };
    }
    if args.plan_only {
        for f in nemesis::schedule(seed, args.seconds) {
            let target = match f.kind {
                nemesis::Kind::StageKill | nemesis::Kind::ScaleDown => {
                    format!("{}-{}", f.stage.name(), f.replica)
                }
                _ => String::new(),
            };
            println!(
                "{:>6.1}s  {:<27} hold {:>4.1}s  {target}",
                f.at_s,
                f.kind.label(),
                f.hold_s
            );
        }
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // On Ctrl-C or SIGTERM the run is dropped, and with it every replica it started (a
    // replica is SIGKILLed when dropped): nothing is left running against the stack.
    let interrupted = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    };
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run::run(&args, seed) => r,
            _ = interrupted => Err(anyhow::anyhow!("interrupted; every replica stopped")),
        }
    });
    drop(rt);
    match outcome {
        Ok(report) => {
            let missing: usize = report.checks.iter().map(|c| c.missing).sum();
            let ok = if args.prove_checker {
                missing > 0
            } else {
                report.passed
            };
            if args.prove_checker {
                println!(
                    "[chaos] proving the checker: {missing} missing with the defective bridge: {}",
                    if ok {
                        "the checker caught it"
                    } else {
                        "NOT caught"
                    }
                );
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("[chaos] the run could not complete: {e:#}");
            ExitCode::from(2)
        }
    }
}
