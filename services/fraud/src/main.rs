use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = posflow_fraud::Args::parse();
    let common = args.common.clone();
    posflow_runtime::main("fraud", &common, || args.check(), posflow_fraud::run)
}
