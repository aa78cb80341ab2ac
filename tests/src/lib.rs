//! The harness for end-to-end tests: a fresh set of topics per test (random prefix) on the real
//! local stack, the real service binaries started as processes, and readers for Kafka and
//! PostgreSQL that wait on conditions, not on time.
//!
//! Needs `deploy/local/stack.sh up` and `cargo build --workspace` first (`make test` does both).
//! Addresses come from the POSFLOW_* variables of `stack.sh env`, defaulting to the stack's own.

pub mod api;
pub mod notify;
pub mod otlp;

use posflow_kafka::provision::{provision, ProvisionPlan};
use posflow_kafka::KafkaArgs;
use posflow_runtime::Secret;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key the tests give the bridge; tests compute expected tokens with it.
pub const CARD_TOKEN_KEY: &str = "e2e-test-card-token-key-0123456789abcdef";

/// The notifier's key-encryption key in the tests (webhook secrets at rest).
pub const SECRETS_KEYS: &str = "e2e=ZTJlLXRlc3Qtd2ViaG9vay1zZWNyZXRzLWtleS0wMDA=";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Where the local stack listens.
#[derive(Debug, Clone)]
pub struct Stack {
    pub brokers: String,
    pub registry: String,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub bridge_password: String,
    pub terminal_password: String,
    pub database_url: String,
}

impl Stack {
    pub fn from_env() -> Self {
        Self {
            brokers: env_or("POSFLOW_KAFKA_BROKERS", "127.0.0.1:29092"),
            registry: env_or(
                "POSFLOW_SCHEMA_REGISTRY_URL",
                "http://127.0.0.1:28081/apis/ccompat/v7",
            ),
            mqtt_host: env_or("POSFLOW_MQTT_HOST", "127.0.0.1"),
            mqtt_port: env_or("POSFLOW_MQTT_PORT", "21883")
                .parse()
                .expect("POSFLOW_MQTT_PORT"),
            bridge_password: env_or("POSFLOW_MQTT_PASSWORD", "bridge-local"),
            terminal_password: env_or("POSFLOW_TERMINAL_PASSWORD", "terminal-local"),
            database_url: std::env::var("POSFLOW_DATABASE_URL").unwrap_or_else(|_| {
                format!(
                    "postgres://posflow:posflow-local@127.0.0.1:25432/posflow?sslmode=verify-full&sslrootcert={}",
                    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("../.stack/tls/ca.crt")
                        .display()
                )
            }),
        }
    }

    pub fn mqtt_args(&self) -> posflow_mqtt::MqttArgs {
        posflow_mqtt::MqttArgs {
            mqtt_host: self.mqtt_host.clone(),
            mqtt_port: self.mqtt_port,
            mqtt_password: Secret::new(""),
            mqtt_keep_alive: 15,
            mqtt_tls_ca: None,
            mqtt_tls_cert: None,
            mqtt_tls_key: None,
        }
    }
}

/// How every test deployment is provisioned on the single-broker stack: 4 partitions a topic.
pub const LOCAL_PLAN: ProvisionPlan = ProvisionPlan {
    replication_factor: 1,
    min_insync_replicas: 1,
    partitions: Some(4),
};

/// One test's world: its own topics, consumer groups and share group on the shared stack.
#[derive(Clone)]
pub struct Deployment {
    pub stack: Stack,
    pub prefix: String,
    pub kafka: KafkaArgs,
    /// Share group for this test's bridges, so no earlier test's session takes a share.
    pub share_group: String,
}

impl Deployment {
    /// Provisions a fresh prefix (topics with 4 partitions, schemas) and migrates the database.
    pub async fn new() -> Self {
        let d = Self::kafka_only().await;
        let out = Command::new(bin("posflow-storage"))
            .arg("migrate")
            .env("POSFLOW_DATABASE_URL", &d.stack.database_url)
            .env("POSFLOW_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
            .output()
            .expect("posflow-storage migrate");
        assert!(
            out.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    }

    /// Provisions a fresh prefix (topics with 4 partitions, schemas) with the local stack's
    /// terminal registry (T0001..T0500, docs/terminals.md); no database.
    pub async fn kafka_only() -> Self {
        let d = Self::unregistered().await;
        let file = local_terminals_file();
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (is the stack up? make up)", file.display()));
        d.register_terminals(&text).await;
        d
    }

    /// Writes registrations (the registry file format) to this deployment's terminal registry,
    /// as `posflow-admin terminals apply` does.
    pub async fn register_terminals(&self, toml: &str) {
        let records = posflow_registry::file::parse(toml, "e2e", posflow_schema::now_millis())
            .expect("registry file");
        posflow_registry::store::write(&self.kafka, &records)
            .await
            .expect("writing the terminal registry");
    }

    /// Provisions a fresh prefix (topics with 4 partitions, schemas); an empty terminal registry.
    pub async fn unregistered() -> Self {
        let stack = Stack::from_env();
        let id: u32 = rand::random();
        let prefix = format!("e2e{id:08x}.");
        let kafka = KafkaArgs {
            kafka_brokers: stack.brokers.clone(),
            kafka_security_protocol: "plaintext".into(),
            kafka_sasl_mechanism: None,
            kafka_sasl_username: None,
            kafka_sasl_password: None,
            kafka_ssl_ca: None,
            topic_prefix: prefix.clone(),
            schema_registry_url: stack.registry.clone(),
            schema_registry_ca: None,
            schema_registry_username: None,
            schema_registry_password: None,
            schema_registry_token: None,
        };
        provision(&kafka, &LOCAL_PLAN)
            .await
            .expect("provisioning (is the stack up? make up)");
        Self {
            share_group: format!("e2e{id:08x}"),
            stack,
            prefix,
            kafka,
        }
    }

    pub fn topic(&self, base: &str) -> String {
        format!("{}{}", self.prefix, base)
    }

    /// The records of this deployment's `base` topic, decoded, once `expected` have arrived
    /// and `quiet` passed with no more (or `within` is up).
    pub async fn read_avro<T: posflow_schema::AvroRecord>(
        &self,
        base: &str,
        expected: usize,
        within: Duration,
        quiet: Duration,
    ) -> Vec<T> {
        let topic = self.topic(base);
        let brokers = self.stack.brokers.clone();
        let records = tokio::task::spawn_blocking(move || {
            read_topic(&brokers, &topic, expected, within, quiet)
        })
        .await
        .expect("reading the topic");
        let dec = posflow_schema::Decoder::<T>::new(self.kafka.registry());
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            out.push(
                dec.decode(&r.value)
                    .await
                    .expect("a record of the topic's schema"),
            );
        }
        out
    }

    /// The environment every service of this deployment gets.
    pub fn env(&self) -> Vec<(String, String)> {
        let s = &self.stack;
        [
            ("POSFLOW_KAFKA_BROKERS", s.brokers.as_str()),
            ("POSFLOW_SCHEMA_REGISTRY_URL", s.registry.as_str()),
            ("POSFLOW_TOPIC_PREFIX", self.prefix.as_str()),
            ("POSFLOW_MQTT_HOST", s.mqtt_host.as_str()),
            ("POSFLOW_MQTT_PASSWORD", s.bridge_password.as_str()),
            ("POSFLOW_DATABASE_URL", s.database_url.as_str()),
            ("POSFLOW_CARD_TOKEN_KEY", CARD_TOKEN_KEY),
            ("POSFLOW_SECRETS_KEYS", SECRETS_KEYS),
            ("POSFLOW_MQTT_SHARE_GROUP", self.share_group.as_str()),
            ("POSFLOW_LOG", "info,librdkafka=warn,rdkafka=warn"),
            // Simulated fleets publish far faster than real terminals; tests of the limit set
            // it with flags.
            ("POSFLOW_BRIDGE_RATE_LIMIT", "0"),
            // The tests' webhook receivers listen on loopback (the egress guard refuses it
            // otherwise); the SSRF tests clear it.
            ("POSFLOW_WEBHOOK_ALLOW_NETWORKS", "127.0.0.1/32"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("POSFLOW_MQTT_PORT".to_string(), s.mqtt_port.to_string())])
        // An https registry is the local one's TLS listener: trust the stack's CA.
        .chain(s.registry.starts_with("https://").then(|| {
            (
                "POSFLOW_SCHEMA_REGISTRY_CA".to_string(),
                local_tls_dir().join("ca.crt").display().to_string(),
            )
        }))
        .collect()
    }

    /// Starts a bridge replica with a clean MQTT session (nothing left from an earlier test).
    pub async fn start_bridge(&self, replica: u8) -> Service {
        self.start_bridge_with(replica, &[]).await
    }

    /// A bridge replica with a clean MQTT session and extra flags.
    pub async fn start_bridge_with(&self, replica: u8, extra: &[&str]) -> Service {
        clear_mqtt_session(
            &self.stack,
            &format!("bridge-{replica}"),
            &self.stack.bridge_password,
        )
        .await;
        self.bridge_with(replica, extra).await
    }

    /// Starts a bridge replica on whatever session the broker kept for it (a restart).
    pub async fn restart_bridge(&self, replica: u8) -> Service {
        self.bridge_with(replica, &[]).await
    }

    /// A bridge replica (session as the broker kept it) with extra flags.
    pub async fn bridge_with(&self, replica: u8, extra: &[&str]) -> Service {
        let id = format!("bridge-{replica}");
        let mut args = vec!["--bridge-id", &id, "--session-expiry", "300"];
        args.extend_from_slice(extra);
        Service::start("posflow-bridge", &self.env(), &args).await
    }

    pub async fn start(&self, binary: &str) -> Service {
        Service::start(binary, &self.env(), &[]).await
    }
}

/// The local stack's least-privilege logins (deploy/local/stack.sh): storage, the notifier and
/// the API run as these, as in production; their `migrate` runs as the schema owner.
fn stage_login(binary: &str, args: &[&str]) -> Option<(&'static str, &'static str)> {
    if args.first() == Some(&"migrate") {
        return None;
    }
    match binary {
        "posflow-storage" => Some(("posflow_storage_app", "storage-local")),
        "posflow-notifier" => Some(("posflow_notifier_app", "notifier-local")),
        "posflow-api" => Some(("posflow_api_app", "api-local")),
        _ => None,
    }
}

/// `url` with another user and password.
pub fn with_login(url: &str, user: &str, password: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if s < at => {
            format!("{}{user}:{password}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The environment `binary args` runs with: `env`, its database URL swapped for the stage's
/// own login where it has one.
pub fn stage_env(binary: &str, args: &[&str], env: &[(String, String)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| match stage_login(binary, args) {
            Some((user, password)) if k == "POSFLOW_DATABASE_URL" => {
                (k.clone(), with_login(v, user, password))
            }
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

/// The local stack's TLS material: its CA, server and client certificates (stack.sh).
pub fn local_tls_dir() -> PathBuf {
    std::env::var_os("POSFLOW_LOCAL_TLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.stack/tls"))
}

/// The local stack's terminal registry file (written by deploy/local/stack.sh).
pub fn local_terminals_file() -> PathBuf {
    std::env::var_os("POSFLOW_LOCAL_TERMINALS_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.stack/terminals.toml")
        })
}

/// The merchant the local stack registers `terminal` to (and its broker lets it publish as).
pub fn merchant_of(terminal: &str) -> String {
    static LOCAL: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
    LOCAL
        .get_or_init(|| {
            let text = std::fs::read_to_string(local_terminals_file()).expect("local registry");
            posflow_registry::file::parse(&text, "e2e", 0)
                .expect("local registry")
                .into_iter()
                .map(|r| (r.terminal_id, r.merchant_id))
                .collect()
        })
        .get(terminal)
        .unwrap_or_else(|| panic!("{terminal} is not in the local registry"))
        .clone()
}

/// A service binary from `target/debug` (or `$POSFLOW_BIN_DIR`).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("POSFLOW_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("debug")
        });
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running service process, stopped (SIGKILL) when dropped.
pub struct Service {
    pub name: String,
    pub child: Child,
    pub http: String,
    pub log: PathBuf,
}

impl Service {
    pub async fn start(binary: &str, env: &[(String, String)], args: &[&str]) -> Service {
        let mut s = Self::spawn(binary, env, args);
        s.wait_ready(Duration::from_secs(60)).await;
        s
    }

    /// Starts `binary` without waiting for it to be ready (it may not become ready: a component
    /// it needs is down).
    pub fn spawn(binary: &str, env: &[(String, String)], args: &[&str]) -> Service {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("posflow-e2e-{binary}-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin(binary))
            .args(args)
            .envs(stage_env(binary, args, env))
            .env("POSFLOW_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Service {
            name: binary.to_string(),
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before ready; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if http_get(&self.http, "/readyz")
                .await
                .map(|(c, _)| c == 200)
                .unwrap_or(false)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready; log:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no drain, no goodbye — a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        http_get(&self.http, "/metrics")
            .await
            .expect("metrics endpoint")
            .1
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a counter or gauge in a Prometheus text page (`name{labels}` exactly as rendered).
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A minimal HTTP/1.1 GET (status, body) over a raw socket.
pub async fn http_get(base: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Connects once with clean start and leaves: the broker drops any session `client_id` had.
pub async fn clear_mqtt_session(stack: &Stack, client_id: &str, password: &str) {
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new(client_id, &stack.mqtt_host, stack.mqtt_port);
    o.set_credentials(client_id, password);
    o.set_clean_start(true);
    let (client, mut ev) = AsyncClient::new(o, 10);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_)))) => break,
            Ok(Err(e)) => panic!("MQTT connect as {client_id}: {e}"),
            _ if Instant::now() > deadline => panic!("MQTT connect as {client_id} timed out"),
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while ev.poll().await.is_ok() {}
    })
    .await;
}

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning (read_committed) until `expected` records arrived, then for
/// `quiet` more to catch any extra one; panics with what it has after `within`.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    expected: usize,
    within: Duration,
    quiet: Duration,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-reader-{}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let start = Instant::now();
    let mut reached: Option<Instant> = None;
    let mut out = Vec::new();
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        if out.len() >= expected && reached.is_none() {
            reached = Some(Instant::now());
        }
        if reached.is_some_and(|r| r.elapsed() >= quiet) {
            return out;
        }
        if start.elapsed() > within {
            panic!(
                "{topic}: {} records after {within:?}, expected {expected}",
                out.len()
            );
        }
    }
}

/// A connection as the stages make it (TLS as the URL's sslmode says: verify-full locally).
pub async fn db(stack: &Stack) -> tokio_postgres::Client {
    posflow_pg::connect(&stack.database_url)
        .await
        .unwrap_or_else(|e| panic!("database: {e}"))
}

/// The text values of a one-column query with one text parameter (e.g. a `LIKE` pattern).
pub async fn texts(client: &tokio_postgres::Client, query: &str, param: &str) -> Vec<String> {
    client
        .query(query, &[&param])
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until `query` (returning one bigint) returns `expected`; returns the last value.
pub async fn wait_for_count(
    client: &tokio_postgres::Client,
    query: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    expected: i64,
    within: Duration,
) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let n: i64 = client.query_one(query, params).await.unwrap().get(0);
        if n == expected || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every card number in `bytes`, as `card::mask_card_numbers` defines one (what a leaked card
/// number looks like): a digit run of 13–19 that `card::is_pan`, or any 13–19 digit window of a
/// run longer than 19 that does (the masking hides such runs whole).
pub fn luhn_runs(bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for run in bytes.split(|b| !b.is_ascii_digit()) {
        if run.len() <= 19 {
            if posflow_bridge::card::is_pan(run) {
                found.push(String::from_utf8_lossy(run).into_owned());
            }
            continue;
        }
        for w in 13..=19 {
            for win in run.windows(w) {
                if posflow_bridge::card::is_pan(win) {
                    found.push(String::from_utf8_lossy(win).into_owned());
                }
            }
        }
    }
    found
}

/// Runs `deploy/local/stack.sh <args>` and panics if it fails.
pub fn stack_ctl(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stack.sh");
    let out = Command::new(script).args(args).output().expect("stack.sh");
    assert!(
        out.status.success(),
        "stack.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops a stack component now and starts it again when dropped — also when the test panics,
/// so one failing fault test does not take the stack down for the rest.
pub struct Outage {
    component: &'static str,
    /// For Kafka: a topic to probe the group coordinator with once it is back.
    probe: Option<(String, String)>,
}

impl Outage {
    pub fn begin(component: &'static str) -> Self {
        stack_ctl(&["stop", component]);
        Self {
            component,
            probe: None,
        }
    }

    /// Kafka down; when it comes back, wait until consumer groups work again too.
    pub fn kafka(d: &Deployment) -> Self {
        let mut o = Self::begin("kafka");
        o.probe = Some((d.stack.brokers.clone(), d.topic("pos.transactions.raw")));
        o
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        stack_ctl(&["start", self.component]);
        if let Some((brokers, topic)) = &self.probe {
            wait_for_group_coordinator(brokers, topic);
        }
    }
}

/// Freezes a stack component now (SIGSTOP: its connections stay open, nothing answers) and
/// thaws it when dropped — also when the test panics.
pub struct Pause(&'static str);

impl Pause {
    pub fn begin(component: &'static str) -> Self {
        stack_ctl(&["pause", component]);
        Self(component)
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        stack_ctl(&["resume", self.0]);
    }
}

/// Resident memory of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A simulated fleet publishing in the background; its progress is readable while it runs.
pub struct BackgroundFleet {
    pub progress: std::sync::Arc<posflow_simulator::fleet::Progress>,
    handle: tokio::task::JoinHandle<anyhow::Result<posflow_simulator::fleet::Report>>,
}

impl BackgroundFleet {
    /// Waits until the terminals have had `n` answers (accepted or rejected).
    pub async fn answers_reach(&self, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        while self.progress.accepted.load(Relaxed) + self.progress.rejected.load(Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the fleet has ended (all answered, or failed: `finish` says which).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub async fn finish(self) -> posflow_simulator::fleet::Report {
        self.handle.await.expect("fleet task").expect("fleet")
    }
}

impl Deployment {
    /// `terminals` terminals from T`first_terminal`, `per_terminal` valid transactions each, at
    /// `rate` per terminal per second (0: as fast as the broker takes them), republishing what
    /// stays unanswered for `retry_after`.
    pub fn fleet(
        &self,
        name: &str,
        first_terminal: usize,
        terminals: usize,
        per_terminal: usize,
        rate: f64,
        retry_after: Duration,
    ) -> BackgroundFleet {
        let cfg = fleet_config(name, first_terminal, terminals, per_terminal, 0);
        self.spawn_fleet(&cfg, rate, retry_after, true).0
    }

    /// A fleet that publishes `terminals` × `per_terminal` transactions as fast as the broker
    /// takes them and is done once the broker acknowledged each (no bridge needed): a backlog
    /// for a bridge that is away. Also returns the plan, the terminals' ledger.
    pub fn backlog(
        &self,
        name: &str,
        first_terminal: usize,
        terminals: usize,
        per_terminal: usize,
    ) -> (BackgroundFleet, Vec<posflow_simulator::plan::Planned>) {
        let cfg = fleet_config(name, first_terminal, terminals, per_terminal, 0);
        self.spawn_fleet(&cfg, 0.0, Duration::from_secs(3600), false)
    }

    /// Like [`Deployment::fleet`] at full speed, with every `invalid_every`th transaction
    /// breaking a business rule; also returns the plan (what each transaction should become).
    pub fn fleet_with_invalid(
        &self,
        name: &str,
        first_terminal: usize,
        terminals: usize,
        per_terminal: usize,
        invalid_every: usize,
    ) -> (BackgroundFleet, Vec<posflow_simulator::plan::Planned>) {
        let cfg = fleet_config(name, first_terminal, terminals, per_terminal, invalid_every);
        self.spawn_fleet(&cfg, 0.0, Duration::from_secs(20), true)
    }

    fn spawn_fleet(
        &self,
        cfg: &posflow_simulator::plan::FleetConfig,
        rate: f64,
        retry_after: Duration,
        await_answers: bool,
    ) -> (BackgroundFleet, Vec<posflow_simulator::plan::Planned>) {
        use posflow_simulator::{fleet, plan};
        let fleet_plan = plan::plan(cfg, posflow_schema::now_millis());
        let planned = fleet_plan.iter().flatten().cloned().collect();
        let progress = std::sync::Arc::new(fleet::Progress::default());
        let (mqtt, pw, p) = (
            self.stack.mqtt_args(),
            Secret::new(&self.stack.terminal_password),
            progress.clone(),
        );
        let opts = fleet::PublishOptions {
            rate_per_terminal: rate,
            retry_after,
            deadline: Duration::from_secs(300),
            await_answers,
        };
        let handle =
            tokio::spawn(async move { fleet::run(&mqtt, &pw, fleet_plan, &opts, p).await });
        (BackgroundFleet { progress, handle }, planned)
    }

    /// The raw topic decoded, in (partition, offset) order, once `expected` records are there.
    pub async fn raw_transactions(
        &self,
        expected: usize,
    ) -> Vec<(Record, posflow_schema::TransactionReceived)> {
        let mut records = read_topic(
            &self.stack.brokers,
            &self.topic("pos.transactions.raw"),
            expected,
            Duration::from_secs(60),
            Duration::from_secs(3),
        );
        records.sort_by_key(|r| (r.partition, r.offset));
        let decoder = posflow_schema::Decoder::<posflow_schema::TransactionReceived>::new(
            self.kafka.registry(),
        );
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let t = decoder.decode(&r.value).await.expect("raw record decodes");
            out.push((r, t));
        }
        out
    }
}

fn fleet_config(
    name: &str,
    first_terminal: usize,
    terminals: usize,
    per_terminal: usize,
    invalid_every: usize,
) -> posflow_simulator::plan::FleetConfig {
    posflow_simulator::plan::FleetConfig {
        terminals,
        per_terminal,
        // The local registry's: five merchants, dealt by terminal number.
        merchants: 5,
        invalid_every,
        seed: first_terminal as u64,
        first_terminal,
        run_id: format!("{name}{:08x}", rand::random::<u32>()),
    }
}

/// A terminal payload (contract v1) that passes every bridge check.
pub fn valid_payload(transaction_id: &str, terminal: &str, merchant: &str) -> String {
    serde_json::json!({
        "version": 1, "transaction_id": transaction_id, "terminal_id": terminal, "merchant_id": merchant, "sequence": 1,
        "transaction_time": "2026-01-01T00:00:00Z", "type": "sale", "amount_minor": 100, "currency": "EUR",
        "payment_method": "card", "entry_mode": "chip", "response_code": "00", "mcc": "5411"
    })
    .to_string()
}

/// Waits until Kafka's group coordinator serves a consumer group again (after a restart the
/// brokers answer metadata before groups can join).
pub fn wait_for_group_coordinator(brokers: &str, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-probe-{}", rand::random::<u32>()))
        .create()
        .expect("probe consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(120);
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "Kafka's group coordinator did not come back"
        );
        let _ = consumer.poll(Duration::from_millis(200));
    }
}

/// A transaction as the bridge puts it on the raw topic: a valid card sale of 12.34 EUR at
/// `terminal` of merchant M001, received now.
pub fn received_sale(
    id: &str,
    terminal: &str,
    sequence: i64,
) -> posflow_schema::TransactionReceived {
    use posflow_schema::*;
    let now = now_millis();
    TransactionReceived {
        envelope: Envelope {
            received_at: now,
            mqtt_topic: format!("pos/M001/{terminal}/tx"),
            bridge_id: "e2e".into(),
            payload_version: 1,
        },
        transaction: Transaction {
            transaction_id: id.into(),
            terminal_id: terminal.into(),
            merchant_id: "M001".into(),
            sequence,
            transaction_time: now - 1000,
            kind: TransactionType::Sale,
            original_transaction_id: None,
            amount_minor: 1234,
            currency: "EUR".into(),
            payment_method: PaymentMethod::Card,
            entry_mode: EntryMode::Contactless,
            card: Some(Card {
                token: format!("tok-{terminal}-{}", sequence % 7),
                bin: "411111".into(),
                last4: "1111".into(),
                token_key_id: "k1".into(),
                previous_tokens: vec![],
            }),
            auth_code: Some("123456".into()),
            response_code: "00".into(),
            mcc: "5814".into(),
            location: None,
            line_items: vec![],
        },
    }
}

impl Deployment {
    /// Produces `records` to `base` topic (schema from the registry), keyed by `key`, and waits
    /// until Kafka has every one.
    pub async fn produce<T: posflow_schema::AvroRecord>(
        &self,
        base: &str,
        records: &[T],
        key: impl Fn(&T) -> String,
    ) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let topic = self.topic(base);
        let encoder = posflow_schema::Encoder::<T>::for_topic(&self.kafka.registry(), &topic)
            .await
            .expect("schema registered");
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.stack.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let value = encoder.encode(r).unwrap();
            let k = key(r);
            let f = producer.send_result(FutureRecord::to(&topic).key(&k).payload(&value));
            pending.push(f.map_err(|(e, _)| e).expect("enqueue"));
            if pending.len() >= 10_000 {
                for p in pending.drain(..) {
                    p.await.unwrap().map_err(|(e, _)| e).expect("delivered");
                }
            }
        }
        for p in pending {
            p.await.unwrap().map_err(|(e, _)| e).expect("delivered");
        }
    }
}

/// What fraud's memory did under many distinct cards: resident memory (KiB) and the state-size
/// metric at start, after the stream, and after the windows expired.
#[derive(Debug)]
pub struct FraudMemory {
    pub cards: usize,
    pub rss_kib: [u64; 3],
    pub state_keys: [f64; 3],
}

/// Streams `cards` validated transactions, each on its own card, through a fresh fraud stage,
/// then 8,000 more a day later in event time (past every window), which evicts the rest.
pub async fn fraud_memory(d: &Deployment, cards: usize) -> FraudMemory {
    let mut env = d.env();
    env.push(("POSFLOW_LOG".into(), "warn".into()));
    env.push((
        "POSFLOW_INSTANCE_ID".into(),
        format!("mem-{}", rand::random::<u32>()),
    ));
    let fraud = Service::start("posflow-fraud", &env, &[]).await;
    let keys = |page: &str| metric(page, "posflow_fraud_state_keys").unwrap_or(0.0);
    let judged = |page: &str| {
        metric(page, "posflow_fraud_received_total{input=\"card\"}").unwrap_or(0.0) as usize
    };
    let rss0 = rss_kib(fraud.child.id());
    let keys0 = keys(&fraud.metrics().await);
    let run = format!("mem{:08x}", rand::random::<u32>());
    let t0 = posflow_schema::now_millis() - 3_600_000;
    let stream = |from: usize, n: usize, t: i64| -> Vec<posflow_schema::TransactionValidated> {
        (from..from + n)
            .map(|i| {
                let r = received_sale(
                    &format!("{run}-{i:08}"),
                    &format!("T{:04}", 1 + i % 500),
                    i as i64,
                );
                let mut t_ = r.transaction;
                t_.transaction_time = t + i as i64;
                if let Some(c) = t_.card.as_mut() {
                    c.token = format!("{run}-card-{i}");
                }
                posflow_schema::TransactionValidated {
                    envelope: r.envelope,
                    transaction: t_,
                    validated_at: 0,
                }
            })
            .collect()
    };
    let key = |v: &posflow_schema::TransactionValidated| {
        v.transaction
            .card
            .as_ref()
            .map(|c| c.token.clone())
            .unwrap_or_default()
    };
    let wait = |n: usize| {
        let fraud = &fraud;
        async move {
            let deadline = Instant::now() + Duration::from_secs(900);
            let mut last = Instant::now();
            loop {
                let done = judged(&fraud.metrics().await);
                if done >= n {
                    return;
                }
                if last.elapsed() > Duration::from_secs(5) {
                    eprintln!("[fraud memory] judged {done}/{n}");
                    last = Instant::now();
                }
                assert!(Instant::now() < deadline, "fraud judged only {done} of {n}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut produced = 0;
    while produced < cards {
        let n = (cards - produced).min(50_000);
        d.produce("pos.transactions.validated", &stream(produced, n, t0), key)
            .await;
        produced += n;
    }
    wait(cards).await;
    let rss1 = rss_kib(fraud.child.id());
    let keys1 = keys(&fraud.metrics().await);
    // A day later in event time: past the card horizon (24 h 1 min with the defaults).
    d.produce(
        "pos.transactions.validated",
        &stream(cards, 8_000, t0 + 25 * 3_600_000),
        key,
    )
    .await;
    wait(cards + 8_000).await;
    let rss2 = rss_kib(fraud.child.id());
    let keys2 = keys(&fraud.metrics().await);
    FraudMemory {
        cards,
        rss_kib: [rss0, rss1, rss2],
        state_keys: [keys0, keys1, keys2],
    }
}

/// A terminal's own connection, returning every packet it receives on a channel.
pub async fn terminal(
    stack: &Stack,
    id: &str,
) -> (
    rumqttc::v5::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
) {
    let mut o = rumqttc::v5::MqttOptions::new(id, &stack.mqtt_host, stack.mqtt_port);
    o.set_credentials(id, &stack.terminal_password);
    o.set_clean_start(true);
    o.set_max_packet_size(Some(2 * 1024 * 1024));
    let (client, mut ev) = rumqttc::v5::AsyncClient::new(o, 32);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let rumqttc::v5::Event::Incoming(p) = e {
                if tx.send(p).is_err() {
                    return;
                }
            }
        }
    });
    (client, rx)
}

/// Terminal `t` of merchant `m`, connected and subscribed to its answers.
pub async fn answered_terminal(
    stack: &Stack,
    t: &str,
    m: &str,
) -> (
    rumqttc::v5::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    let (client, mut rx) = terminal(stack, t).await;
    next_matching(&mut rx, |p| matches!(p, Packet::ConnAck(_))).await;
    client
        .subscribe(
            posflow_mqtt::ack_topic(m, t),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    next_matching(&mut rx, |p| matches!(p, Packet::SubAck(_))).await;
    (client, rx)
}

/// The next `n` answers on the terminal's ack topic, as JSON.
pub async fn answers(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
    n: usize,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while out.len() < n {
        if let rumqttc::v5::mqttbytes::v5::Packet::Publish(p) = next_matching(rx, |p| {
            matches!(p, rumqttc::v5::mqttbytes::v5::Packet::Publish(_))
        })
        .await
        {
            out.push(serde_json::from_slice(&p.payload).unwrap());
        }
    }
    out
}

pub async fn next_matching<F: Fn(&rumqttc::v5::mqttbytes::v5::Packet) -> bool>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
    f: F,
) -> rumqttc::v5::mqttbytes::v5::Packet {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let p = rx.recv().await.expect("connection closed");
            if f(&p) {
                return p;
            }
        }
    })
    .await
    .expect("packet within 30 s")
}
