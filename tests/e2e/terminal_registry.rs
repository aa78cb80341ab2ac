//! The terminal registry (docs/terminals.md) as the bridge enforces it: only registered, active
//! terminals, each only for the merchant it is registered to; a block reaches the bridge within
//! the documented time; the registry changes only through reviewed, all-or-nothing applies.

use posflow_e2e::*;
use std::time::{Duration, Instant};

/// How soon a change must reach a running bridge (docs/terminals.md promises 5 s).
const PROPAGATION: Duration = Duration::from_secs(5);

fn registry_file(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "posflow-e2e-terminals-{}.toml",
        rand::random::<u32>()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Publishes one valid transaction as `t` on `m`'s topic and returns the bridge's answer.
async fn transact(d: &Deployment, t: &str, m: &str, id: &str) -> serde_json::Value {
    let (client, mut rx) = answered_terminal(&d.stack, t, m).await;
    publish_valid(&client, t, m, id).await;
    let answer = answers(&mut rx, 1).await.remove(0);
    let _ = client.disconnect().await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_active_terminals_transact_and_only_for_their_own_merchant() {
    let d = Deployment::unregistered().await;
    let (good, moved, unknown, stolen) = ("T0484", "T0485", "T0486", "T0487");
    let file = registry_file(&format!(
        "[terminals.{good}]\nmerchant = \"{}\"\n\
         # Registered elsewhere than the broker lets it publish: only the bridge can tell.\n\
         [terminals.{moved}]\nmerchant = \"M-ELSEWHERE\"\n\
         [terminals.{stolen}]\nmerchant = \"{}\"\n",
        merchant_of(good),
        merchant_of(stolen)
    ));
    let applied = d.cli(
        "posflow-admin",
        &["terminals", "apply", "--file", file.to_str().unwrap()],
    );
    applied.expect_ok();
    assert!(
        applied.stdout.contains("3 added, 0 changed, 0 unchanged"),
        "{}",
        applied.stdout
    );
    // Applying the same file again changes nothing.
    let again = d.cli(
        "posflow-admin",
        &["terminals", "apply", "--file", file.to_str().unwrap()],
    );
    assert!(
        again.stdout.contains("0 added, 0 changed, 3 unchanged"),
        "{}",
        again.stdout
    );

    let bridge = d.start_bridge(3).await;
    let cases = [
        (good, "reg-good", "accepted", None),
        (moved, "reg-moved", "rejected", Some("IDENTITY_MISMATCH")),
        (unknown, "reg-unknown", "rejected", Some("TERMINAL_UNKNOWN")),
        (stolen, "reg-stolen-1", "accepted", None),
    ];
    for (t, id, status, reason) in cases {
        let a = transact(&d, t, &merchant_of(t), id).await;
        assert_eq!(a["status"], status, "{t}: {a}");
        if let Some(r) = reason {
            assert_eq!(a["reason"], r, "{t}: {a}");
        }
    }

    // Blocked: refused from the next transaction on, within the documented time.
    d.cli(
        "posflow-admin",
        &[
            "terminals",
            "block",
            stolen,
            "--note",
            "INC-42 stolen from the till",
        ],
    )
    .expect_ok();
    let blocked_at = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let a = transact(
            &d,
            stolen,
            &merchant_of(stolen),
            &format!("reg-stolen-after-{n}"),
        )
        .await;
        if a["status"] == "rejected" {
            assert_eq!(a["reason"], "TERMINAL_BLOCKED", "{a}");
            break;
        }
        assert!(
            blocked_at.elapsed() < PROPAGATION,
            "still accepted {:?} after the block",
            blocked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused_after = blocked_at.elapsed();
    let a = transact(&d, stolen, &merchant_of(stolen), "reg-stolen-later").await;
    assert_eq!(a["reason"], "TERMINAL_BLOCKED", "{a}");

    // Retired is final: refused, and no file brings it back. A file with mistakes is refused
    // whole, every mistake listed.
    d.cli("posflow-admin", &["terminals", "retire", stolen])
        .expect_ok();
    let revive = registry_file(&format!(
        "[terminals.{stolen}]\nmerchant = \"{}\"\n[terminals.T0488]\nmerchant = \"M001\"\nstatus = \"lost\"\n[terminals.T0489]\nmerchant = \"M001\"\n",
        merchant_of(stolen)
    ));
    let refused = d.cli(
        "posflow-admin",
        &["terminals", "apply", "--file", revive.to_str().unwrap()],
    );
    assert_eq!(
        refused.code,
        Some(2),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains("terminals.T0488: status \"lost\" is not one of active, blocked, retired"),
        "{}",
        refused.stderr
    );
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let a = transact(&d, stolen, &merchant_of(stolen), "reg-retired").await;
        if a["reason"] == "TERMINAL_RETIRED" {
            break;
        }
        assert!(Instant::now() < deadline, "retirement not seen: {a}");
    }
    let fixed = registry_file(&format!(
        "[terminals.{stolen}]\nmerchant = \"{}\"\n[terminals.T0489]\nmerchant = \"M001\"\n",
        merchant_of(stolen)
    ));
    let refused = d.cli(
        "posflow-admin",
        &["terminals", "apply", "--file", fixed.to_str().unwrap()],
    );
    assert_eq!(refused.code, Some(2));
    assert!(
        refused
            .stderr
            .contains("terminals.T0487: retired terminals stay retired (register a new id)"),
        "{}",
        refused.stderr
    );

    // Nothing of a refused file was written; the audit trail says who did what and why.
    let list = d.cli("posflow-admin", &["terminals", "list"]);
    list.expect_ok();
    let rows: Vec<&str> = list.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{}", list.stdout);
    assert!(!list.stdout.contains("T0489"), "{}", list.stdout);
    let stolen_row = rows.iter().find(|r| r.starts_with(stolen)).unwrap();
    assert!(stolen_row.contains(" retired "), "{stolen_row}");
    // The broker's view: active terminals only, each on its own merchant.
    let acl = d.cli("posflow-admin", &["terminals", "acl"]);
    assert!(
        acl.stdout.contains(&format!(
            "user {good}\ntopic write pos/{}/{good}/tx\n",
            merchant_of(good)
        )),
        "{}",
        acl.stdout
    );
    assert!(!acl.stdout.contains(stolen), "{}", acl.stdout);

    // Kafka: only the two accepted terminals' transactions on raw; every refusal dead-lettered
    // with its reason.
    let raw = d.raw_transactions(2).await;
    let mut raw_ids: Vec<_> = raw
        .iter()
        .map(|(_, r)| r.transaction.transaction_id.clone())
        .filter(|id| !id.starts_with("reg-stolen-after-"))
        .collect();
    raw_ids.sort();
    assert_eq!(raw_ids, ["reg-good", "reg-stolen-1"]);
    assert!(raw
        .iter()
        .all(|(_, r)| [good, stolen].contains(&r.transaction.terminal_id.as_str())));
    let dlq = read_topic(
        &d.stack.brokers,
        &d.topic("pos.deadletter"),
        5,
        Duration::from_secs(30),
        Duration::from_secs(2),
    );
    let mut reasons: Vec<&str> = dlq
        .iter()
        .map(|r| r.headers["posflow-reason"].as_str())
        .collect();
    reasons.sort();
    reasons.dedup();
    assert_eq!(
        reasons,
        [
            "IDENTITY_MISMATCH",
            "TERMINAL_BLOCKED",
            "TERMINAL_RETIRED",
            "TERMINAL_UNKNOWN"
        ]
    );
    assert!(
        bridge.log_text().contains("terminal registration changed"),
        "the bridge logs each change it applies"
    );
    eprintln!("block took effect after {refused_after:?} ({n} attempts)");
}
