//! Where the CPU of a measured stretch went, by process, from /proc: the same accounting as
//! `top`. On two shared cores this is what tells "the stage is slow" from "the machine is
//! full": a row whose processes leave the cores idle is bound by latency, not by work.

/// utime + stime of a process (all its threads), in seconds (Linux, USER_HZ = 100).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

/// Every process on the machine, by id.
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// CPU seconds of every PostgreSQL process and of every JVM (Kafka, the registry), in one pass
/// over /proc. A backend that exits during the stretch takes its share with it: the stages keep
/// their connections, so that is rare and small.
fn postgres_and_java_seconds() -> (f64, f64) {
    let (mut postgres, mut java) = (0.0, 0.0);
    for pid in pids() {
        match std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .as_deref()
            .map(str::trim)
        {
            Ok("postgres") => postgres += cpu_seconds(pid),
            Ok("java") => java += cpu_seconds(pid),
            _ => {}
        }
    }
    (postgres, java)
}

/// Busy and total CPU seconds of the whole machine, all cores (/proc/stat's first line).
fn machine_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    // idle and iowait are the 4th and 5th.
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    ((total - idle) / 100.0, total / 100.0)
}

/// CPU seconds used so far by: the stage under measurement, this process (the load generator,
/// the receiver or the ceiling's client), every PostgreSQL process, every JVM (Kafka and the
/// schema registry), and the whole machine.
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    pub stage: f64,
    pub bench: f64,
    pub postgres: f64,
    pub java: f64,
    busy: f64,
    total: f64,
}

impl Cpu {
    pub fn now(stage_pid: Option<u32>) -> Cpu {
        let (busy, total) = machine_seconds();
        let (postgres, java) = postgres_and_java_seconds();
        Cpu {
            stage: stage_pid.map_or(0.0, cpu_seconds),
            bench: cpu_seconds(std::process::id()),
            postgres,
            java,
            busy,
            total,
        }
    }

    /// What `self` (the later snapshot) used since `before`, in milliseconds per unit of work.
    pub fn per_unit_since(&self, before: &Cpu, units: u64) -> CpuPerUnit {
        let per = |a: f64, b: f64| (a - b) * 1000.0 / units.max(1) as f64;
        let busy = self.busy - before.busy;
        CpuPerUnit {
            stage: per(self.stage, before.stage),
            bench: per(self.bench, before.bench),
            postgres: per(self.postgres, before.postgres),
            java: per(self.java, before.java),
            machine: per(self.busy, before.busy),
            busy_share: busy / (self.total - before.total).max(0.01),
        }
    }
}

/// CPU milliseconds per unit of work, by process, and how busy the machine was (0–1 of all
/// its cores) over the stretch.
#[derive(Clone, Copy, Debug)]
pub struct CpuPerUnit {
    pub stage: f64,
    pub bench: f64,
    pub postgres: f64,
    pub java: f64,
    /// Every process on the machine, these included.
    pub machine: f64,
    pub busy_share: f64,
}

impl CpuPerUnit {
    /// The processes named above, not the rest of the machine.
    pub fn total(&self) -> f64 {
        self.stage + self.bench + self.postgres + self.java
    }

    /// As JSON, the stage's process under `stage`'s name.
    pub fn json(&self, stage: &str) -> serde_json::Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        serde_json::json!({stage: r(self.stage), "load_generator_or_client": r(self.bench),
            "postgres": r(self.postgres), "java": r(self.java), "total": r(self.total()),
            "machine": r(self.machine), "machine_busy_share": r(self.busy_share)})
    }

    /// One line for the console: "stage / bench / PostgreSQL / JVMs = total (machine busy x%)".
    pub fn line(&self) -> String {
        format!(
            "{:>6.3} {:>6.3} {:>6.3} {:>6.3} = {:.3}  (whole machine {:.3}, busy {:.0}% of its cores)",
            self.stage,
            self.bench,
            self.postgres,
            self.java,
            self.total(),
            self.machine,
            100.0 * self.busy_share
        )
    }
}
