//! The reference terminal client (issue 23): 500 sales captured offline over a simulated two
//! hours, the client SIGKILLed twice while capturing and once while flushing. Every
//! transaction is answered once, stored once, and the queue ends empty.

use posflow_e2e::*;
use std::process::Command;
use std::time::{Duration, Instant};

const SALES: usize = 500;

/// `posflow-terminal`'s queue and terminal flags.
fn client(queue: &std::path::Path, t: &str, m: &str) -> Vec<String> {
    let queue = queue.display().to_string();
    ["--queue", &queue, "--terminal-id", t, "--merchant-id", m]
        .map(String::from)
        .to_vec()
}

/// The client's queue key and broker, from the environment as a terminal's would be.
fn client_env(d: &Deployment) -> Vec<(String, String)> {
    let key = "a2VlcC10aGlzLXF1ZXVlLWtleS1zZWNyZXQtMDEyMzQ=";
    vec![
        ("POSFLOW_TERMINAL_QUEUE_KEY".to_string(), key.to_string()),
        ("POSFLOW_MQTT_HOST".into(), d.stack.mqtt_host.clone()),
        ("POSFLOW_MQTT_PORT".into(), d.stack.mqtt_port.to_string()),
        (
            "POSFLOW_MQTT_PASSWORD".into(),
            d.stack.terminal_password.clone(),
        ),
    ]
}

/// Runs `args` until its output has a line starting with `marker` at least `n`, then SIGKILLs
/// it: a power cut at that point.
async fn cut_power_at(env: &[(String, String)], args: &[String], marker: &str, n: usize) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = Service::spawn("posflow-terminal", env, &refs);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reached = s.log_text().lines().rev().find_map(|l| {
            l.strip_prefix(marker)?
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        });
        if reached.is_some_and(|r| r >= n) {
            s.kill();
            return;
        }
        assert!(
            s.is_running(),
            "{marker} never reached {n}:\n{}",
            s.log_text()
        );
        assert!(Instant::now() < deadline, "{marker} {n} not reached");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn run_to_end(env: &[(String, String)], args: &[String]) -> String {
    let out = Command::new(bin("posflow-terminal"))
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}:\n{text}");
    text
}

fn status(env: &[(String, String)], base: &[String]) -> serde_json::Value {
    let mut args = base.to_vec();
    args.push("status".into());
    serde_json::from_str(run_to_end(env, &args).trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_terminal_power_cut_three_times_has_each_sale_answered_and_stored_once() {
    let d = Deployment::new().await;
    let _bridge = d.start_bridge(3).await;
    let _validator = d.start("posflow-validator").await;
    let _storage = d.start("posflow-storage").await;
    let (t, m) = ("T0443", merchant_of("T0443"));
    let queue = std::env::temp_dir().join(format!("posflow-terminal-e2e-{}", d.prefix));
    let env = client_env(&d);
    let base = client(&queue, t, &m);

    // The outage: two hours of sales, one every 14.4 s, captured while the link is down.
    let now = posflow_schema::now_millis();
    let start = rfc3339(now - 2 * 3_600_000);
    let since = rfc3339(now - 2 * 3_600_000 - 60_000);
    let mut capture = base.clone();
    capture.extend(
        [
            "capture",
            "--until",
            &SALES.to_string(),
            "--start",
            &start,
            "--every-ms",
            "14400",
            "--offline-since",
            &since,
            "--pace-ms",
            "2",
            "--pan",
            TEST_PAN,
        ]
        .map(String::from),
    );
    cut_power_at(&env, &capture, "captured ", 150).await;
    cut_power_at(&env, &capture, "captured ", 350).await;
    run_to_end(&env, &capture);
    let s = status(&env, &base);
    assert_eq!(s["pending"], SALES, "{s}");
    let instance = s["instance"].as_str().unwrap().to_string();

    // The link is back: the flush, power-cut once midway, then run to the end.
    let mut flush = base.clone();
    flush.extend(["flush", "--retry-after-secs", "5"].map(String::from));
    cut_power_at(&env, &flush, "answered ", 200).await;
    let out = run_to_end(&env, &flush);
    let summary = out
        .lines()
        .find(|l| l.starts_with("flushed:"))
        .unwrap_or_default();
    println!("after the power cut, {summary}");
    assert!(summary.ends_with("pending 0"), "{out}");
    let s = status(&env, &base);
    assert_eq!(
        (s["pending"].as_u64(), s["rejected"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );

    // PostgreSQL: each of the 500 once, offline, in its capture times.
    let db = db(&d.stack).await;
    let like = format!("{t}-{instance}-%");
    let n = wait_for_count(
        &db,
        "SELECT count(*) FROM transactions WHERE transaction_id LIKE $1",
        &[&like],
        SALES as i64,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(n, SALES as i64);
    let row = db
        .query_one(
            "SELECT count(DISTINCT transaction_id), count(*) FILTER (WHERE offline), min(sequence), max(sequence),
                    (extract(epoch FROM max(transaction_time) - min(transaction_time)) * 1000)::bigint
             FROM transactions WHERE transaction_id LIKE $1",
            &[&like],
        )
        .await
        .unwrap();
    let got: (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(got, (500, 500, 1, 500, 499 * 14_400));
    let rejected: i64 = db
        .query_one(
            "SELECT count(*) FROM rejections WHERE transaction_id LIKE $1",
            &[&like],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rejected, 0);
    let _ = std::fs::remove_dir_all(&queue);
}

/// A flush faster than the bridge's quota: the bridge names each refused transaction in its
/// `RATE_LIMITED` answer, and the client sends that one again after a short, growing pause —
/// not after its retry timeout. The retry timeout here (120 s) is past the deadline (60 s),
/// so the flush only completes if the refusals name their transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_flush_retries_the_refused_transactions_soon_and_completes() {
    let d = Deployment::new().await;
    let _bridge = d
        .start_bridge_with(
            4,
            &[
                "--rate-limit",
                "20",
                "--rate-limit-burst",
                "5",
                "--rate-limit-policy",
                "reject",
            ],
        )
        .await;
    let (t, m) = ("T0444", merchant_of("T0444"));
    let queue = std::env::temp_dir().join(format!("posflow-terminal-e2e-rl-{}", d.prefix));
    let env = client_env(&d);
    let base = client(&queue, t, &m);
    let mut capture = base.clone();
    capture.extend(["capture", "--until", "60"].map(String::from));
    run_to_end(&env, &capture);

    let mut flush = base.clone();
    flush.extend(
        [
            "flush",
            "--retry-after-secs",
            "120",
            "--deadline-secs",
            "60",
        ]
        .map(String::from),
    );
    let out = run_to_end(&env, &flush);
    let summary = out.lines().find(|l| l.starts_with("flushed:")).unwrap();
    println!("{summary}");
    let count = |name: &str| -> u64 {
        let at = summary.find(&format!("{name} ")).unwrap() + name.len() + 1;
        summary[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!((count("accepted"), count("pending")), (60, 0), "{out}");
    assert_eq!(count("published"), 60, "{out}");
    assert!(count("rate-limited") > 0, "the quota refused none: {out}");
    assert_eq!(
        count("republished"),
        count("rate-limited"),
        "each refusal sent once more, nothing else republished: {out}"
    );
    let s = status(&env, &base);
    assert_eq!(
        (s["pending"].as_u64(), s["rejected"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    let _ = std::fs::remove_dir_all(&queue);
}
