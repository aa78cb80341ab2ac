use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = posflow_lake::Args::parse();
    let common = args.common.clone();
    posflow_runtime::main("lake", &common, || args.check(), posflow_lake::run)
}
