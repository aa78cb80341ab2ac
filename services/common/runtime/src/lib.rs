//! What every posflow stage needs the same way: checked configuration, JSON logs, the
//! health/metrics HTTP endpoint, and a graceful shutdown signal. A stage's `main` is
//! `posflow_runtime::main(...)` around its library's `run`.

pub mod backoff;
pub mod config;
pub mod health;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod shutdown;
pub mod trace;

pub use backoff::Backoff;
pub use config::{CommonArgs, ConfigErrors, Secret};
pub use health::Health;
pub use shutdown::Shutdown;

use std::future::Future;
use std::process::ExitCode;

/// What a running stage gets from the runtime.
#[derive(Clone)]
pub struct Context {
    pub shutdown: Shutdown,
    pub health: Health,
}

/// Runs a stage: the config check (the common flags and the stage's own `setup`, every problem
/// listed), logs and tracing, then the HTTP endpoint and signal handling, then `run` until it
/// returns or a signal drains it.
/// Exit codes: 0 clean, 1 failed while running, 2 bad configuration.
pub fn main<C, S, R, Fut>(service: &'static str, common: &CommonArgs, setup: S, run: R) -> ExitCode
where
    S: FnOnce() -> Result<C, ConfigErrors>,
    R: FnOnce(C, Context) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    metrics::set_stage(service);
    let mut errors = ConfigErrors::new();
    common.check(&mut errors);
    let config = match (setup(), errors.is_empty()) {
        (Ok(c), true) => c,
        (result, _) => {
            if let Err(stage) = result {
                errors.extend(stage);
            }
            eprintln!("{service}: invalid configuration:\n{errors}");
            return ExitCode::from(2);
        }
    };
    let _exporter = match logs::init(
        service,
        &common.log_level,
        common.otlp_endpoint.as_deref(),
        common.trace_sample_ratio,
    ) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{service}: cannot start tracing: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{service}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let ctx = Context { shutdown: Shutdown::new(), health: Health::new() };
        shutdown::on_signals(ctx.shutdown.clone(), common.drain());
        match http::serve(common.http_addr, ctx.health.clone(), ctx.shutdown.clone()).await {
            Ok(addr) => tracing::info!(%addr, "health and metrics endpoint listening"),
            Err(e) => {
                tracing::error!(error = %e, addr = %common.http_addr, "cannot bind the HTTP endpoint");
                return ExitCode::FAILURE;
            }
        }
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "{service} starting");
        let result = run(config, ctx.clone()).await;
        ctx.shutdown.trigger();
        match result {
            Ok(()) => {
                tracing::info!("{service} stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "{service} failed");
                ExitCode::FAILURE
            }
        }
    })
}
