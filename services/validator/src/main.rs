use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = posflow_validator::Args::parse();
    let common = args.common.clone();
    posflow_runtime::main(
        "validator",
        &common,
        || args.check(),
        posflow_validator::run,
    )
}
