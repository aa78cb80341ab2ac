//! One shutdown signal for the whole process: SIGTERM or SIGINT trigger it; every loop selects
//! on [`Shutdown::wait`] and drains its in-flight work before returning.

use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: Arc::new(tx),
            rx,
        }
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown has been triggered (at once if it already was).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone, which only happens at process end.
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// How long past the drain timeout a signalled process may take to exit on its own (closing
/// connections, flushing logs) before [`on_signals`]' backstop ends it.
pub const EXIT_MARGIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Triggers `shutdown` on SIGTERM (Kubernetes) or SIGINT (Ctrl-C). A stage then drains for at
/// most `drain`; whatever state it is in, the process exits `drain` + [`EXIT_MARGIN`] after the
/// signal (exit code 1), from an OS thread that no wedged task can hold up. What was not
/// finished by then is redelivered to the next owner, as after a crash.
pub fn on_signals(shutdown: Shutdown, drain: std::time::Duration) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        shutdown.trigger();
        let deadline = drain + EXIT_MARGIN;
        let backstop = std::thread::Builder::new()
            .name("exit-backstop".into())
            .spawn(move || {
                std::thread::sleep(deadline);
                tracing::error!(
                    after_s = deadline.as_secs(),
                    "still running past the drain timeout; exiting"
                );
                std::process::exit(1);
            });
        if let Err(e) = backstop {
            tracing::error!(error = %e, "cannot start the exit backstop");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_after_trigger_even_for_late_waiters() {
        let s = Shutdown::new();
        assert!(!s.is_triggered());
        let early = {
            let s = s.clone();
            tokio::spawn(async move { s.wait().await })
        };
        s.trigger();
        early.await.unwrap();
        s.wait().await;
        assert!(s.is_triggered());
    }
}
