use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = posflow_simulator::Args::parse();
    let json = args.json;
    if args.print_registry {
        print!(
            "{}",
            posflow_simulator::plan::registry_toml(&posflow_simulator::fleet_config(&args, ""))
        );
        return ExitCode::SUCCESS;
    }
    let args = match args.check() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("posflow-simulator: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    match posflow_simulator::run(args).await {
        Ok(r) => {
            let rate = r.published as f64 / r.elapsed.as_secs_f64().max(0.001);
            if json {
                let summary = serde_json::json!({
                    "run_id": r.run_id,
                    "published": r.published,
                    "republished": r.republished,
                    "accepted": r.accepted(),
                    "dead_lettered": r.rejected_by_reason(),
                    "unanswered": r.unanswered.len(),
                    "elapsed_s": r.elapsed.as_secs_f64(),
                    "rate_per_s": rate,
                });
                println!("{summary}");
            } else {
                println!(
                    "published {}  accepted {}  dead-lettered {:?}  unanswered {}  in {:.1} s ({rate:.0}/s)",
                    r.published,
                    r.accepted(),
                    r.rejected_by_reason(),
                    r.unanswered.len(),
                    r.elapsed.as_secs_f64()
                );
            }
            if r.unanswered.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("posflow-simulator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
