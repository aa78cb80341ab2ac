//! Terminals on the wire: each is its own MQTT 5 connection (client id = username = terminal
//! id) sending its planned transactions through the reference client's sender
//! (`posflow_terminal::sender`), so every load test exercises the code firmware teams embed:
//! QoS 1 on its topic, answers on its ack topic, republished until answered, `RATE_LIMITED`
//! retried later. Unlike a terminal's flush, a simulated terminal does not wait for answers
//! before sending more (open-loop load at `rate_per_terminal`), and it records each answer's
//! latency for the benchmarks.

use crate::plan::Planned;
use posflow_mqtt::MqttArgs;
use posflow_runtime::Secret;
use posflow_terminal::queue::Answer;
use posflow_terminal::sender::{self, Outgoing, SendOptions, Source};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Transactions per second per terminal (0: as fast as the broker takes them).
    pub rate_per_terminal: f64,
    /// Republish a transaction with no answer after this long.
    pub retry_after: Duration,
    /// Give up waiting for answers after this long (counted from the start).
    pub deadline: Duration,
    /// Wait for the bridge's answers (and republish the unanswered). Off: done once the broker
    /// acknowledged every publish — for measuring the broker alone.
    pub await_answers: bool,
}

/// Live counters, readable while the fleet runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Transactions sent (first publish of each).
    pub published: AtomicU64,
    /// PUBACKs from the broker, republishes included.
    pub broker_acks: AtomicU64,
    pub republished: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// When each transaction was first published.
    pub sent_at: Mutex<HashMap<String, Instant>>,
    /// First publish → first answer, per answered transaction, in microseconds.
    pub answer_latency_us: Mutex<Vec<u64>>,
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Prefix of every transaction id of this run.
    pub run_id: String,
    pub published: u64,
    pub republished: u64,
    /// Transaction id → the bridge's answer: "accepted" or the reason it was dead-lettered.
    pub answers: HashMap<String, String>,
    pub unanswered: Vec<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn accepted(&self) -> usize {
        self.answers.values().filter(|a| *a == "accepted").count()
    }
    /// The ids of the transactions answered `accepted`.
    pub fn accepted_ids(&self) -> std::collections::HashSet<&str> {
        self.answers
            .iter()
            .filter(|(_, a)| *a == "accepted")
            .map(|(id, _)| id.as_str())
            .collect()
    }
    pub fn rejected_by_reason(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for a in self.answers.values().filter(|a| *a != "accepted") {
            *m.entry(a.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// Publishes every terminal's plan concurrently and waits for the answers.
pub async fn run(
    mqtt: &MqttArgs,
    password: &Secret,
    fleet: Vec<Vec<Planned>>,
    opts: &PublishOptions,
    progress: Arc<Progress>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for plan in fleet.into_iter().filter(|p| !p.is_empty()) {
        let (mqtt, password, opts, progress) = (
            mqtt.clone(),
            password.clone(),
            opts.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            terminal(&mqtt, &password, plan, &opts, progress).await
        }));
    }
    let mut report = Report::default();
    for t in tasks {
        let (answers, unanswered) = t.await??;
        report.answers.extend(answers);
        report.unanswered.extend(unanswered);
    }
    report.published = progress.published.load(Ordering::Relaxed);
    report.republished = progress.republished.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    Ok(report)
}

type Answers = HashMap<String, String>;

/// A terminal's plan as a sender's source: answers kept by id, the fleet's counters kept live.
struct Plan {
    plan: Vec<Planned>,
    at: usize,
    answers: Answers,
    progress: Arc<Progress>,
}

impl Source for Plan {
    fn next(&mut self) -> Option<Outgoing> {
        let p = self.plan.get(self.at)?;
        self.at += 1;
        self.progress
            .sent_at
            .lock()
            .expect("poisoned")
            .insert(p.transaction_id.clone(), Instant::now());
        Some(Outgoing {
            transaction_id: p.transaction_id.clone(),
            payload: p.payload.clone(),
        })
    }

    fn remaining(&self) -> usize {
        self.plan.len() - self.at
    }

    /// The bridge's answer: `accepted`, or the reason code, with its latency from the first
    /// publish.
    fn answered(&mut self, id: &str, answer: Answer, latency: Duration) -> anyhow::Result<()> {
        let progress = &self.progress;
        let status = match answer {
            Answer::Accepted => {
                progress.accepted.fetch_add(1, Ordering::Relaxed);
                "accepted".to_string()
            }
            Answer::Rejected { reason } => {
                progress.rejected.fetch_add(1, Ordering::Relaxed);
                reason
            }
        };
        let us = latency.as_micros() as u64;
        progress
            .answer_latency_us
            .lock()
            .expect("poisoned")
            .push(us);
        self.answers.insert(id.to_string(), status);
        Ok(())
    }

    fn published(&mut self, _id: &str, again: bool) {
        let counter = if again {
            &self.progress.republished
        } else {
            &self.progress.published
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn broker_acked(&mut self, n: u64) {
        self.progress.broker_acks.fetch_add(n, Ordering::Relaxed);
    }
}

async fn terminal(
    mqtt: &MqttArgs,
    password: &Secret,
    plan: Vec<Planned>,
    opts: &PublishOptions,
    progress: Arc<Progress>,
) -> anyhow::Result<(Answers, Vec<String>)> {
    let (terminal_id, merchant_id) = (plan[0].terminal_id.clone(), plan[0].merchant_id.clone());
    let mut o = mqtt.options(&terminal_id, password)?;
    o.set_clean_start(true);
    let send = SendOptions {
        retry_after: opts.retry_after,
        // Open-loop load: the rate, not the answers, sets the pace.
        in_flight: usize::MAX,
        deadline: opts.deadline,
        pace: (opts.rate_per_terminal > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / opts.rate_per_terminal)),
        await_answers: opts.await_answers,
        subscribed_within: Some(Duration::from_secs(30)),
    };
    let mut source = Plan {
        plan,
        at: 0,
        answers: Answers::new(),
        progress,
    };
    sender::send(&mut source, o, &merchant_id, &terminal_id, &send).await?;
    let unanswered = source
        .plan
        .iter()
        .filter(|p| opts.await_answers && !source.answers.contains_key(&p.transaction_id))
        .map(|p| p.transaction_id.clone())
        .collect();
    Ok((source.answers, unanswered))
}
