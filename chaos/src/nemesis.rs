//! The nemesis: a seeded schedule of overlapping faults, and its execution against the stages
//! and the cluster stack (deploy/local/stack.sh kill/stop/start/pause/resume).

use crate::stages::{Stage, Stages, REPLICAS};
use posflow_e2e::{busiest_leader, partitions, stack_try};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The kinds of fault, each in every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// SIGKILL of a stage replica; started again after the hold.
    StageKill,
    /// SIGKILL of the Kafka node leading the most raw-topic partitions; started after the hold.
    LeaderKill,
    /// SIGSTOP of that node for the hold (a hang: connections open, nothing answered); SIGCONT.
    BrokerHang,
    /// PostgreSQL stopped (fast shutdown, every connection cut), started after the hold.
    PostgresRestart,
    /// SIGKILL of the MQTT broker (Mosquitto: its persistence file as of the last save; HiveMQ:
    /// its data folder), started after the hold.
    #[serde(alias = "mosquitto_kill")]
    MqttKill,
    /// SIGTERM of a stage replica (it drains and exits); scaled up again after the hold.
    ScaleDown,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::StageKill,
        Kind::LeaderKill,
        Kind::BrokerHang,
        Kind::PostgresRestart,
        Kind::MqttKill,
        Kind::ScaleDown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::StageKill => "stage SIGKILL",
            Kind::LeaderKill => "Kafka leader SIGKILL",
            Kind::BrokerHang => "Kafka node hung",
            Kind::PostgresRestart => "PostgreSQL restart",
            Kind::MqttKill => "MQTT broker SIGKILL",
            Kind::ScaleDown => "stage scale-down (SIGTERM)",
        }
    }

    /// How long the fault lasts before it is undone, in seconds.
    fn hold(self) -> std::ops::Range<f64> {
        match self {
            Kind::StageKill => 3.0..12.0,
            Kind::LeaderKill => 10.0..25.0,
            Kind::BrokerHang => 20.0..30.0,
            Kind::PostgresRestart => 2.0..8.0,
            Kind::MqttKill => 2.0..8.0,
            Kind::ScaleDown => 15.0..40.0,
        }
    }

    /// Faults of one component do not overlap each other (one Kafka node down or hung at a
    /// time: with replication 3 and min.insync.replicas 2 a second would stop every write, which
    /// is an outage, not a fault to ride through); and how long after the hold the component
    /// needs before the next (a Kafka node's restart and catching up).
    fn exclusive(self) -> Option<(&'static str, f64)> {
        match self {
            Kind::LeaderKill | Kind::BrokerHang => Some(("kafka", 30.0)),
            Kind::PostgresRestart => Some(("postgres", 10.0)),
            Kind::MqttKill => Some(("mqtt", 10.0)),
            Kind::StageKill | Kind::ScaleDown => None,
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// Seconds from the start of the load.
    pub at_s: f64,
    pub kind: Kind,
    pub hold_s: f64,
    /// For stage faults: which replica (if it is down already, the other one).
    pub stage: Stage,
    pub replica: u8,
}

/// Runs this long or longer end with three faults on their own (see [`schedule`]).
const SOLO_FROM_SECONDS: u64 = 420;

/// The faults of a run of `seconds`, from `seed`: about 40 overlapping ones (at least 5 s
/// apart on average), every kind in each round of six, from 15 s in. A run of 7 minutes or
/// more ends with a Kafka leader SIGKILL, a 30 s Kafka hang and a PostgreSQL restart, each
/// with nothing else going on, 60 s apart: their recovery is theirs alone.
pub fn schedule(seed: u64, seconds: u64) -> Vec<Fault> {
    let solo = seconds >= SOLO_FROM_SECONDS;
    let total = seconds as f64;
    let mut out = overlapping(seed, if solo { total - 260.0 } else { total - 20.0 });
    if solo {
        for (i, (kind, hold_s)) in [
            (Kind::LeaderKill, 20.0),
            (Kind::BrokerHang, 30.0),
            (Kind::PostgresRestart, 5.0),
        ]
        .into_iter()
        .enumerate()
        {
            out.push(Fault {
                at_s: total - 200.0 + 70.0 * i as f64,
                kind,
                hold_s,
                stage: Stage::Bridge,
                replica: 1,
            });
        }
    }
    out
}

/// Overlapping faults from 15 s in to `end`.
fn overlapping(seed: u64, end: f64) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let begin = 15.0;
    let mean_gap = ((end - begin) / 40.0).max(5.0);
    let mut free_at: HashMap<&str, f64> = HashMap::new();
    let (mut t, mut bag, mut out) = (begin, Vec::new(), Vec::new());
    while t <= end {
        if bag.is_empty() {
            bag = Kind::ALL.to_vec();
            bag.shuffle(&mut rng);
        }
        let kind = bag.pop().expect("refilled");
        let hold_s = rng.gen_range(kind.hold());
        let stage = Stage::ALL[rng.gen_range(0..Stage::ALL.len())];
        let replica = rng.gen_range(1..=REPLICAS);
        let mut at_s = t;
        if let Some((component, settle)) = kind.exclusive() {
            at_s = at_s.max(*free_at.get(component).unwrap_or(&0.0));
            free_at.insert(component, at_s + hold_s + settle);
        }
        if at_s <= end {
            out.push(Fault {
                at_s,
                kind,
                hold_s,
                stage,
                replica,
            });
        }
        t += mean_gap * rng.gen_range(0.5..1.5);
    }
    out.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    out
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub kind: Kind,
    pub target: String,
    pub began_s: f64,
    pub ended_s: f64,
    /// What was done, and anything that did not go as planned.
    pub note: String,
}

/// What the nemesis works on.
pub struct Nemesis {
    pub stages: Arc<Stages>,
    pub brokers: String,
    pub raw_topic: String,
    pub t0: Instant,
    pub events: Mutex<Vec<Event>>,
}

impl Nemesis {
    fn now_s(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Runs the schedule: each fault at its time, undone after its hold; faults overlap.
    /// Returns once every fault is undone.
    pub async fn run(self: Arc<Self>, plan: Vec<Fault>) {
        let tasks: Vec<_> = plan
            .into_iter()
            .map(|f| {
                let me = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until((me.t0 + Duration::from_secs_f64(f.at_s)).into())
                        .await;
                    let e = me.inflict(&f).await;
                    println!(
                        "[chaos {:>6.1}s] {:<27} {:<14} until {:>6.1}s  {}",
                        e.began_s,
                        e.kind.label(),
                        e.target,
                        e.ended_s,
                        e.note
                    );
                    me.events.lock().expect("poisoned").push(e);
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn inflict(&self, f: &Fault) -> Event {
        let began_s = self.now_s();
        let hold = Duration::from_secs_f64(f.hold_s);
        let (target, note) = match f.kind {
            Kind::StageKill | Kind::ScaleDown => self.stage_fault(f, hold).await,
            Kind::LeaderKill | Kind::BrokerHang => self.kafka_fault(f.kind, hold).await,
            Kind::PostgresRestart => (
                "postgres".into(),
                component_fault("stop", "postgres", hold).await,
            ),
            Kind::MqttKill => (
                posflow_e2e::mqtt_broker(),
                component_fault("kill", "mqtt", hold).await,
            ),
        };
        Event {
            kind: f.kind,
            target,
            began_s,
            ended_s: self.now_s(),
            note,
        }
    }

    async fn stage_fault(&self, f: &Fault, hold: Duration) -> (String, String) {
        let Some(n) = self.stages.pick(f.stage, f.replica) else {
            return (f.stage.name().into(), "skipped: no replica running".into());
        };
        let target = format!("{}-{n}", f.stage.name());
        let note = if f.kind == Kind::StageKill {
            self.stages.kill(f.stage, n);
            "SIGKILL".to_string()
        } else {
            self.stages.terminate(f.stage, n).await
        };
        tokio::time::sleep(hold).await;
        self.stages.restart(f.stage, n);
        (target, format!("{note}; started again"))
    }

    async fn kafka_fault(&self, kind: Kind, hold: Duration) -> (String, String) {
        let (brokers, topic) = (self.brokers.clone(), self.raw_topic.clone());
        let leaders = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(|| busiest_leader(&partitions(&brokers, &topic)))
        })
        .await;
        let Ok(Ok((node, led))) = leaders else {
            return ("kafka".into(), "skipped: no metadata".into());
        };
        let (down, up, what) = if kind == Kind::LeaderKill {
            ("kill", "start", "SIGKILL")
        } else {
            ("pause", "resume", "SIGSTOP")
        };
        let mut note = format!("{what} (leader of {led} raw partitions)");
        if let Err(e) = blocking_ctl(down, &node).await {
            return (node, format!("{note}: {e}"));
        }
        tokio::time::sleep(hold).await;
        if let Err(e) = blocking_ctl(up, &node).await {
            note += &format!("; {up} failed: {e}");
        }
        (node, note)
    }
}

/// `stack.sh <down> <component>`, the hold, `stack.sh start <component>`.
async fn component_fault(down: &str, component: &str, hold: Duration) -> String {
    if let Err(e) = blocking_ctl(down, component).await {
        return e;
    }
    tokio::time::sleep(hold).await;
    match blocking_ctl("start", component).await {
        Ok(()) => format!("{down}; started again"),
        Err(e) => format!("{down}; start failed: {e}"),
    }
}

async fn blocking_ctl(verb: &str, component: &str) -> Result<(), String> {
    let (verb, component) = (verb.to_string(), component.to_string());
    tokio::task::spawn_blocking(move || stack_try(&[&verb, &component]))
        .await
        .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_a_function_of_its_seed_and_has_every_kind() {
        let a = schedule(7, 600);
        let b = schedule(7, 600);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_ne!(format!("{a:?}"), format!("{:?}", schedule(8, 600)));
        assert!(a.len() >= 30, "{} faults in 10 minutes", a.len());
        for kind in Kind::ALL {
            assert!(a.iter().any(|f| f.kind == kind), "{kind:?} missing");
        }
        // The short run of make test still has every kind.
        let short = schedule(1, 180);
        for kind in Kind::ALL {
            assert!(
                short.iter().any(|f| f.kind == kind),
                "{kind:?} missing in 180 s"
            );
        }
    }

    #[test]
    fn faults_of_one_component_never_overlap() {
        for seed in 0..50 {
            let s = schedule(seed, 600);
            for (i, f) in s.iter().enumerate() {
                let Some((component, settle)) = f.kind.exclusive() else {
                    continue;
                };
                for g in &s[i + 1..] {
                    if g.kind.exclusive().map(|c| c.0) == Some(component) {
                        assert!(
                            g.at_s >= f.at_s + f.hold_s + settle,
                            "seed {seed}: {f:?} and {g:?}"
                        );
                    }
                }
            }
            assert!(s.iter().all(|f| f.at_s >= 15.0 && f.at_s <= 580.0));
        }
    }

    #[test]
    fn a_long_run_ends_with_three_faults_alone() {
        let s = schedule(3, 600);
        let tail: Vec<&Fault> = s.iter().filter(|f| f.at_s >= 340.0).collect();
        let kinds: Vec<Kind> = tail.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [Kind::LeaderKill, Kind::BrokerHang, Kind::PostgresRestart]
        );
        let overlap_end = s
            .iter()
            .filter(|f| f.at_s < 340.0)
            .map(|f| f.at_s + f.hold_s)
            .fold(0.0, f64::max);
        assert!(
            overlap_end < 400.0,
            "the last overlapping fault is undone before the first solo one"
        );
        assert!(schedule(3, 150).iter().all(|f| f.at_s <= 130.0));
    }
}
