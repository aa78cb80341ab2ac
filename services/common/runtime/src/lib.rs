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

/// Runs a stage's concurrent tasks as one: the first to fail — an error, a panic, or an end
/// before shutdown was asked for — makes the stage unready, triggers shutdown so the others
/// drain and stop, and becomes the stage's result (so the process exits non-zero and the
/// orchestrator restarts it). Without it a stage whose consumer died would stay ready, half
/// working, until someone noticed.
pub async fn supervise(
    tasks: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    ctx: &Context,
) -> anyhow::Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for (name, handle) in tasks {
        set.spawn(async move { (name, handle.await) });
    }
    let mut result = Ok(());
    while let Some(joined) = set.join_next().await {
        let Ok((name, outcome)) = joined else {
            continue; // the wrapper itself cannot panic: it only awaits
        };
        let failure = match outcome {
            Ok(Ok(())) if ctx.shutdown.is_triggered() => None,
            Ok(Ok(())) => Some(anyhow::anyhow!("the {name} task ended on its own")),
            Ok(Err(e)) => Some(e.context(format!("the {name} task failed"))),
            Err(e) => Some(anyhow::anyhow!("the {name} task panicked: {e}")),
        };
        if let Some(e) = failure {
            tracing::error!(error = format!("{e:#}"), "stopping the other tasks");
            ctx.health.set_ready(false);
            ctx.shutdown.trigger();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ctx() -> Context {
        Context {
            shutdown: Shutdown::new(),
            health: Health::new(),
        }
    }

    /// A task that runs until shutdown, as a stage's loops do.
    fn until_shutdown(ctx: &Context) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let s = ctx.shutdown.clone();
        tokio::spawn(async move {
            s.wait().await;
            Ok(())
        })
    }

    #[tokio::test]
    async fn the_first_failure_stops_everything_and_is_the_result() {
        let ctx = ctx();
        ctx.health.set_ready(true);
        let failing = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            anyhow::bail!("input topic gone")
        });
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            supervise(
                vec![
                    ("refresh", until_shutdown(&ctx)),
                    ("ingest", failing),
                    ("dispatch", until_shutdown(&ctx)),
                ],
                &ctx,
            ),
        )
        .await
        .expect("the others were stopped");
        let e = format!("{:#}", r.unwrap_err());
        assert_eq!(e, "the ingest task failed: input topic gone");
        assert!(ctx.shutdown.is_triggered());
        assert!(!ctx.health.is_ready());
    }

    #[tokio::test]
    async fn a_panic_or_an_early_end_is_a_failure_and_a_shutdown_is_not() {
        let ctx = ctx();
        let panics = tokio::spawn(async { panic!("boom") });
        let r = supervise(vec![("a", until_shutdown(&ctx)), ("b", panics)], &ctx).await;
        assert!(format!("{:#}", r.unwrap_err()).starts_with("the b task panicked"));

        let ctx2 = super::tests::ctx();
        let ends = tokio::spawn(async { Ok(()) });
        let r = supervise(vec![("c", ends), ("d", until_shutdown(&ctx2))], &ctx2).await;
        assert_eq!(
            format!("{:#}", r.unwrap_err()),
            "the c task ended on its own"
        );

        let ctx3 = super::tests::ctx();
        ctx3.shutdown.trigger();
        let r = supervise(vec![("e", until_shutdown(&ctx3))], &ctx3).await;
        assert!(r.is_ok());
    }
}
