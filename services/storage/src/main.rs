use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = posflow_storage::Args::parse();
    let common = args.common.clone();
    posflow_runtime::main("storage", &common, || args.check(), posflow_storage::run)
}
