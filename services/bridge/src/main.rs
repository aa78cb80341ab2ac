use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = posflow_bridge::Args::parse();
    let common = args.common.clone();
    posflow_runtime::main("bridge", &common, || args.check(), posflow_bridge::run)
}
