//! Every binary answers --help; bad configuration stops start-up with every error listed and
//! without echoing a secret.

use posflow_e2e::bin;
use std::process::Command;

const BINARIES: [&str; 11] = [
    "posflow-bridge",
    "posflow-validator",
    "posflow-storage",
    "posflow-fraud",
    "posflow-notifier",
    "posflow-simulator",
    "posflow-admin",
    "posflow-api",
    "posflow-lake",
    "posflow-chaos",
    "posflow-terminal",
];

/// The merchant API's configuration: every mistake listed, exit 2, no secret echoed.
#[test]
fn the_api_lists_every_configuration_error() {
    let out = Command::new(bin("posflow-api"))
        .env_clear()
        .env("POSFLOW_DATABASE_URL", "mysql://api:hunter2-db@db/posflow")
        .env("POSFLOW_API_CURSOR_KEY", "short-cursor-secret")
        .env("POSFLOW_SECRETS_KEYS", "k1=bm90LTMyLWJ5dGVz")
        .env("POSFLOW_WEBHOOK_ALLOW_NETWORKS", "10.0.0.0/33")
        .args(["--tls-cert", "/nonexistent.crt", "--rate-per-key", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "--database-url (POSFLOW_DATABASE_URL) must be a postgres:// URL",
        "--cursor-key (POSFLOW_API_CURSOR_KEY) must be at least 32 bytes",
        "--secrets-keys (POSFLOW_SECRETS_KEYS)",
        "--webhook-allow-networks: \"10.0.0.0/33\": the prefix must be 0..=32",
        "--rate-per-key must be 1..=100000",
        "--tls-cert and --tls-key go together",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    assert!(
        !text.contains("hunter2") && !text.contains("short-cursor-secret"),
        "a secret was printed:\n{text}"
    );
}

/// The lake's configuration: every mistake listed, exit 2, nothing started.
#[test]
fn the_lake_lists_every_configuration_error() {
    let out = Command::new(bin("posflow-lake"))
        .env_clear()
        .args([
            "--root",
            "/tmp/lake",
            "--roll-rows",
            "0",
            "--roll-seconds",
            "0",
        ])
        .args(["--zstd-level", "23"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "--roll-rows must be 1..=1000000",
        "--roll-seconds must be 1..=3600",
        "--zstd-level must be 1..=22",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
}

#[test]
fn every_binary_answers_help() {
    for b in BINARIES {
        let out = Command::new(bin(b)).arg("--help").output().unwrap();
        assert!(out.status.success(), "{b} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:") && text.contains(b), "{b}: {text}");
    }
    // The bridge's test-only defect (docs/chaos.md) is not offered to operators.
    let out = Command::new(bin("posflow-bridge"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(!text.contains("defect"), "{text}");
}

#[test]
fn bad_configuration_lists_every_error_and_no_secret() {
    let out = Command::new(bin("posflow-bridge"))
        .env_clear()
        .env("POSFLOW_KAFKA_BROKERS", "not-a-broker")
        .env("POSFLOW_MQTT_PASSWORD", "hunter2-mqtt-password")
        .env("POSFLOW_CARD_TOKEN_KEY", "short-secret-key")
        .env("POSFLOW_CARD_TOKEN_PREVIOUS_KEYS", "k0=short-old-key")
        .args(["--bridge-id", "bad/id", "--in-flight", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "--kafka-brokers",
        "--bridge-id",
        "--in-flight",
        "--card-token-key",
        "--card-token-previous-keys: previous key k0: at least 32 bytes",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    assert!(
        !text.contains("short-secret-key")
            && !text.contains("hunter2")
            && !text.contains("short-old-key"),
        "a secret was printed:\n{text}"
    );

    let out = Command::new(bin("posflow-notifier"))
        .env_clear()
        .env("POSFLOW_SECRETS_KEYS", "k1=not-32-bytes-of-base64-kek")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("--secrets-keys (POSFLOW_SECRETS_KEYS): key k1: must be 32 bytes, base64"),
        "{text}"
    );
    assert!(!text.contains("not-32-bytes"), "a key was printed:\n{text}");

    let out = Command::new(bin("posflow-storage"))
        .env_clear()
        .env("POSFLOW_DATABASE_URL", "mysql://x")
        .args(["--batch-size", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("--database-url") && text.contains("--batch-size"),
        "{text}"
    );
}

#[test]
fn a_bad_rules_file_stops_the_validator_with_every_mistake() {
    let dir = std::env::temp_dir().join(format!("posflow-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.toml");
    std::fs::write(
        &file,
        "[defaults]\nmax_amount = -1\n[merchants.M1]\ntypes = [\"sale\", \"chargeback\"]\nentry_modes = [\"telepathy\"]\n",
    )
    .unwrap();
    let out = Command::new(bin("posflow-validator"))
        .env_clear()
        .arg("--rules-file")
        .arg(&file)
        .args(["--txn-max-records", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "max_amount must be > 0",
        "\"chargeback\"",
        "\"telepathy\"",
        "--txn-max-records",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_merchants_file_lists_every_mistake_and_writes_nothing() {
    let file = std::env::temp_dir().join(format!("posflow-merchants-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        r#"
[merchants.M1]
webhook_url = "http://insecure.example/hook"
webhook_secret = "hunter2-but-long-enough-0123"
[merchants.M2]
mode = "digest"
emails = ["books@example.com"]
[merchants.M3]
emails = ["nobody"]
events = ["sales"]
"#,
    )
    .unwrap();
    let out = Command::new(bin("posflow-notifier"))
        .args(["merchants", "apply", "--file", file.to_str().unwrap()])
        .env(
            "POSFLOW_DATABASE_URL",
            "postgres://u:dbpassword@127.0.0.1:1/x",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        "merchants.M1: webhook_url \"http://insecure.example/hook\" must be an https:// URL",
        "merchants.M2: mode = \"digest\" needs digest_every",
        "merchants.M3: \"nobody\" is not an email address",
        "merchants.M3: event \"sales\" is not one of transactions, refunds, fraud-alerts",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(
        !err.contains("hunter2") && !err.contains("dbpassword"),
        "{err}"
    );
}
