//! The local stack (addresses from `stack.sh env`), a deployment on it (its own topic prefix,
//! schema and logins), and faults made on it (a component stopped or paused).

use crate::*;
use posflow_kafka::provision::{provision, ProvisionPlan};
use posflow_kafka::KafkaArgs;
use posflow_runtime::Secret;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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

/// How every test deployment is provisioned on the local stack: 4 partitions a topic, one copy on
/// the single-node Kafka, three (two in sync) on a cluster (`POSFLOW_KAFKA_NODES=3 make up`: the
/// same rule as `stack.sh replication`).
pub fn local_plan() -> ProvisionPlan {
    let nodes: i32 = env_or("POSFLOW_LOCAL_KAFKA_NODES", "1")
        .parse()
        .unwrap_or(1);
    let (replication_factor, min_insync_replicas) = if nodes >= 3 { (3, 2) } else { (1, 1) };
    ProvisionPlan {
        replication_factor,
        min_insync_replicas,
        partitions: Some(4),
    }
}

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
        provision(&kafka, &local_plan())
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

/// The local stack's SMTP server, as an `--smtp-url`.
pub fn local_smtp_url() -> String {
    format!(
        "smtp://{}",
        std::env::var("POSFLOW_SMTP_ADDR").unwrap_or_else(|_| "127.0.0.1:22525".into())
    )
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

/// The local stack's MQTT broker, `mosquitto` or `hivemq` (what `make up` started it with:
/// POSFLOW_MQTT_BROKER; stack.sh keeps it in `$POSFLOW_STACK/mqtt.broker`).
pub fn mqtt_broker() -> String {
    let stack = std::env::var_os("POSFLOW_STACK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.stack"));
    std::fs::read_to_string(stack.join("mqtt.broker"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "mosquitto".into())
}

/// Runs `deploy/local/stack.sh <args>` and panics if it fails.
pub fn stack_ctl(args: &[&str]) {
    if let Err(e) = stack_try(args) {
        panic!("{e}");
    }
}

/// Runs `deploy/local/stack.sh <args>`; what it said on stderr if it failed.
pub fn stack_try(args: &[&str]) -> Result<(), String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stack.sh");
    let out = Command::new(script)
        .args(args)
        .output()
        .map_err(|e| format!("stack.sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "stack.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
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
pub struct Pause(String);

impl Pause {
    pub fn begin(component: &str) -> Self {
        stack_ctl(&["pause", component]);
        Self(component.to_string())
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        stack_ctl(&["resume", &self.0]);
    }
}
