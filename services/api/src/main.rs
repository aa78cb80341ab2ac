use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = posflow_api::Args::parse();
    if matches!(args.command, Some(posflow_api::Command::Openapi)) {
        print!("{}", posflow_api::openapi::document());
        return ExitCode::SUCCESS;
    }
    let common = args.common.clone();
    posflow_runtime::main("api", &common, || args.check(), posflow_api::run)
}
