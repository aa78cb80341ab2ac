//! The pinned runs (issue 20): a scenario again with the stage on a core of its own — the local
//! stack (Kafka, the registry, PostgreSQL, Mosquitto, the SMTP sink) and this process (load
//! generators, receivers, the ceilings' clients) on CPU 0 with `taskset`, the stage under
//! measurement (or the peer) on CPU 1. The ceiling runs pinned the same way, so both sides of
//! the ratio give the rest of the pipeline one core; what changes is that the stage's own work
//! no longer competes with the ceiling's. Needs two cores or more; the last one is the stage's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

static PINNED: AtomicBool = AtomicBool::new(false);

/// How many CPUs the machine has online — not `available_parallelism`, which answers for this
/// process's own affinity, and this process is pinned during a run.
fn cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| {
            let last = s.trim().rsplit([',', '-']).next()?.parse::<usize>().ok()?;
            Some(last + 1)
        })
        .unwrap_or(1)
}

/// Every CPU, as a `taskset` list ("0-1").
fn all_cpus() -> String {
    format!("0-{}", cpus() - 1)
}

/// The last CPU: the stage's.
fn stage_cpu() -> String {
    (cpus() - 1).to_string()
}

/// The others: the stack's and this process's.
fn rest_cpus() -> String {
    match cpus() {
        0..=2 => "0".into(),
        n => format!("0-{}", n - 2),
    }
}

/// Every thread of `pid` onto `cpus`. A process gone meanwhile is no error.
fn taskset(pid: u32, cpus: &str) {
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// The stack's processes: every member of the process group each pid file of
/// `<stack>/run/` names (stack.sh starts each component in a group of its own), and their
/// children (PostgreSQL's backends) by the same group.
fn stack_pids(stack: &Path) -> Vec<u32> {
    let leaders: Vec<u32> = std::fs::read_dir(stack.join("run"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect();
    crate::cpu::pids()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the command name: state, ppid, pgrp.
            let pgrp = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(2)?.parse::<u32>().ok());
            pgrp.is_some_and(|g| leaders.contains(&g))
        })
        .collect()
}

/// While it lives, the stack and this process are on CPU 0 and every stage started (see
/// [`stage_started`]) on the last CPU; dropped, everything may run anywhere again.
pub struct Pinned {
    stack_dir: PathBuf,
    stack: Vec<u32>,
}

impl Pinned {
    pub fn start() -> anyhow::Result<Pinned> {
        anyhow::ensure!(cpus() >= 2, "the pinned runs need two CPUs or more");
        let stack_dir = posflow_e2e::local_tls_dir()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let stack = stack_pids(&stack_dir);
        anyhow::ensure!(
            !stack.is_empty(),
            "no process of the local stack found under {}/run",
            stack_dir.display()
        );
        let rest = rest_cpus();
        for &pid in &stack {
            taskset(pid, &rest);
        }
        taskset(std::process::id(), &rest);
        PINNED.store(true, Ordering::SeqCst);
        eprintln!(
            "[bench] pinned: {} processes of the stack and this one on CPU {rest}, the stage on CPU {}",
            stack.len(),
            stage_cpu()
        );
        Ok(Pinned { stack_dir, stack })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        PINNED.store(false, Ordering::SeqCst);
        let all = all_cpus();
        // Backends forked meanwhile inherited the pinning too: look again.
        for pid in self
            .stack
            .iter()
            .copied()
            .chain(stack_pids(&self.stack_dir))
        {
            taskset(pid, &all);
        }
        taskset(std::process::id(), &all);
    }
}

/// A stage (or the peer) the bench just started: onto its own CPU in a pinned run, else nothing.
pub fn stage_started(pid: u32) {
    if PINNED.load(Ordering::SeqCst) {
        taskset(pid, &stage_cpu());
    }
}
