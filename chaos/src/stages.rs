//! The stages of one chaos run, two replicas each, started exactly as the e2e tests (and the
//! README) start them, and killed, stopped and started again by the nemesis.

use posflow_e2e::{clear_mqtt_session, notify::notifier_args, Deployment, Service};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A stage of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Bridge,
    Validator,
    Storage,
    Fraud,
    Notifier,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Bridge,
        Stage::Validator,
        Stage::Storage,
        Stage::Fraud,
        Stage::Notifier,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Bridge => "bridge",
            Stage::Validator => "validator",
            Stage::Storage => "storage",
            Stage::Fraud => "fraud",
            Stage::Notifier => "notifier",
        }
    }

    fn binary(self) -> String {
        format!("posflow-{}", self.name())
    }
}

/// Replicas per stage.
pub const REPLICAS: u8 = 2;

/// The running replicas; a replica the nemesis took down is absent until it is started again.
pub struct Stages {
    d: Deployment,
    /// Environment added for every replica (the bridge's test defect, when proving the checker).
    extra_env: Vec<(String, String)>,
    running: Mutex<BTreeMap<(Stage, u8), Service>>,
}

impl Stages {
    /// Every stage, [`REPLICAS`] each, each waited on until ready.
    pub async fn start(d: &Deployment, extra_env: Vec<(String, String)>) -> Stages {
        let stages = Stages {
            d: d.clone(),
            extra_env,
            running: Mutex::default(),
        };
        for stage in Stage::ALL {
            for n in 1..=REPLICAS {
                if stage == Stage::Bridge {
                    let id = format!("bridge-{n}");
                    clear_mqtt_session(&d.stack, &id, &d.stack.bridge_password).await;
                }
                let (env, args) = stages.command(stage, n);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let s = Service::start(&stage.binary(), &env, &args).await;
                stages.lock().insert((stage, n), s);
            }
        }
        stages
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Stage, u8), Service>> {
        self.running.lock().expect("poisoned")
    }

    /// How replica `n` of `stage` runs: the deployment's environment, a stable instance id
    /// (transactional ids and notifier leases survive its restart), the stage's flags.
    fn command(&self, stage: Stage, n: u8) -> (Vec<(String, String)>, Vec<String>) {
        let instance = format!("chaos-{}-{n}", stage.name());
        let mut env = self.d.env();
        env.push(("POSFLOW_INSTANCE_ID".into(), instance.clone()));
        if stage == Stage::Fraud {
            // As deployed: a local state store, kept across the replica's kills (per run).
            let dir = std::env::temp_dir().join(format!("posflow-chaos-fraud-{}", self.d.prefix));
            env.push(("POSFLOW_FRAUD_STATE_DIR".into(), dir.display().to_string()));
        }
        env.extend(self.extra_env.iter().cloned());
        let args = match stage {
            Stage::Bridge => [
                "--bridge-id",
                &format!("bridge-{n}"),
                "--session-expiry",
                "300",
            ]
            .map(String::from)
            .to_vec(),
            // Leases of a killed replica pass to the other after 30 s (120 by default; at least twice
            // the 10 s delivery timeout).
            Stage::Notifier => [
                notifier_args(&instance),
                vec!["--lease-secs".into(), "30".into()],
            ]
            .concat(),
            _ => vec![],
        };
        (env, args)
    }

    /// Starts replica `n` of `stage` again (not waiting for it to be ready: what it needs may be
    /// down). False if it runs already.
    pub fn restart(&self, stage: Stage, n: u8) -> bool {
        let mut running = self.lock();
        if running.contains_key(&(stage, n)) {
            return false;
        }
        let (env, args) = self.command(stage, n);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        running.insert((stage, n), Service::spawn(&stage.binary(), &env, &args));
        true
    }

    /// Replica `n` of `stage` if it runs, else another running replica of it.
    pub fn pick(&self, stage: Stage, n: u8) -> Option<u8> {
        let running = self.lock();
        if running.contains_key(&(stage, n)) {
            return Some(n);
        }
        running.keys().find(|(s, _)| *s == stage).map(|(_, n)| *n)
    }

    /// SIGKILL (a crash).
    pub fn kill(&self, stage: Stage, n: u8) -> bool {
        let taken = self.lock().remove(&(stage, n));
        taken.map(|mut s| s.kill()).is_some()
    }

    /// SIGTERM (a scale-down), waiting up to 60 s for the replica to drain and exit, then
    /// SIGKILL. Says how it ended.
    pub async fn terminate(&self, stage: Stage, n: u8) -> String {
        let Some(mut s) = self.lock().remove(&(stage, n)) else {
            return "not running".into();
        };
        let _ = Command::new("kill")
            .args(["-TERM", &s.child.id().to_string()])
            .status();
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = s.child.try_wait() {
                return format!(
                    "drained and exited ({status}) in {:.1} s",
                    began.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s.kill();
        "no exit 60 s after SIGTERM: SIGKILLed".into()
    }

    /// Replicas that ended by themselves, started again as Kubernetes would; what they were
    /// (a stage that exits is a finding the report lists, not a fault of the schedule).
    pub fn restart_exited(&self) -> Vec<String> {
        let exited: Vec<((Stage, u8), String)> = {
            let mut running = self.lock();
            let ended: Vec<_> = running
                .iter_mut()
                .filter_map(|(k, s)| {
                    let status = s.child.try_wait().ok().flatten()?;
                    Some((
                        *k,
                        format!(
                            "{}-{} exited ({status}); log {}",
                            k.0.name(),
                            k.1,
                            s.log.display()
                        ),
                    ))
                })
                .collect();
            for (k, _) in &ended {
                running.remove(k);
            }
            ended
        };
        for ((stage, n), _) in &exited {
            self.restart(*stage, *n);
        }
        exited.into_iter().map(|(_, what)| what).collect()
    }

    /// Every replica stopped as a scale-down stops one (SIGTERM, all at once): transactions
    /// are committed or aborted, so read_committed readers see the topics' ends at once (a
    /// SIGKILLed producer's open transaction holds them back until it times out).
    pub async fn stop_all(&self) {
        let keys: Vec<(Stage, u8)> = self.lock().keys().copied().collect();
        let stops = keys.into_iter().map(|(stage, n)| self.terminate(stage, n));
        futures::future::join_all(stops).await;
    }
}
