use clap::Parser;
use posflow_notifier::{cli, Args, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    // Preference commands are a short CLI: no HTTP endpoint, no Kafka.
    if let Some(Command::Merchants(cmd)) = &args.command {
        return cli::main(&args.db, &args.seal, cmd);
    }
    let common = args.common.clone();
    posflow_runtime::main("notifier", &common, || args.check(), posflow_notifier::run)
}
