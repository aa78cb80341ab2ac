use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = posflow_notifier::Args::parse();
    let common = args.common.clone();
    posflow_runtime::main("notifier", &common, || args.check(), posflow_notifier::run)
}
