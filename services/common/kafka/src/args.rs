use clap::Args;
use posflow_runtime::{ConfigErrors, Secret};
use rdkafka::ClientConfig;

/// How to reach Kafka and the schema registry. TLS and SASL are off unless configured.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(long, env = "POSFLOW_KAFKA_BROKERS", default_value = "127.0.0.1:29092")]
    pub kafka_brokers: String,
    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(
        long,
        env = "POSFLOW_KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext"
    )]
    pub kafka_security_protocol: String,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a sasl_* protocol).
    #[arg(long, env = "POSFLOW_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    #[arg(long, env = "POSFLOW_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    #[arg(long, env = "POSFLOW_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<Secret>,
    /// CA bundle (PEM) to verify the brokers, with an ssl protocol.
    #[arg(long, env = "POSFLOW_KAFKA_SSL_CA")]
    pub kafka_ssl_ca: Option<String>,
    /// Prefix for every topic name and consumer group: isolates test runs and tenants.
    #[arg(long, env = "POSFLOW_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Confluent-API schema registry root.
    #[arg(
        long,
        env = "POSFLOW_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:28081/apis/ccompat/v7"
    )]
    pub schema_registry_url: String,
    /// Extra CA bundle (PEM) trusted for an https registry, besides the system's roots.
    #[arg(long, env = "POSFLOW_SCHEMA_REGISTRY_CA")]
    pub schema_registry_ca: Option<std::path::PathBuf>,
    /// HTTP Basic user for the registry (with --schema-registry-password).
    #[arg(long, env = "POSFLOW_SCHEMA_REGISTRY_USERNAME")]
    pub schema_registry_username: Option<String>,
    #[arg(long, env = "POSFLOW_SCHEMA_REGISTRY_PASSWORD", hide_env_values = true)]
    pub schema_registry_password: Option<Secret>,
    /// Bearer token for the registry, instead of Basic credentials. From a Secret.
    #[arg(long, env = "POSFLOW_SCHEMA_REGISTRY_TOKEN", hide_env_values = true)]
    pub schema_registry_token: Option<Secret>,
}

impl KafkaArgs {
    /// Adds every problem with these settings to `errors`.
    pub fn check(&self, errors: &mut ConfigErrors) {
        errors.check(
            !self.kafka_brokers.trim().is_empty()
                && self.kafka_brokers.split(',').all(|b| {
                    b.trim()
                        .rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                }),
            format!(
                "--kafka-brokers must be host:port[,host:port...], got {:?}",
                self.kafka_brokers
            ),
        );
        let proto = self.kafka_security_protocol.to_ascii_lowercase();
        errors.check(
            ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&proto.as_str()),
            format!("--kafka-security-protocol must be plaintext, ssl, sasl_plaintext or sasl_ssl, got {:?}", self.kafka_security_protocol),
        );
        if proto.starts_with("sasl") {
            errors.check(
                self.kafka_sasl_mechanism.is_some(),
                "--kafka-sasl-mechanism is required with a sasl_* protocol",
            );
            errors.check(
                self.kafka_sasl_username.is_some(),
                "--kafka-sasl-username is required with a sasl_* protocol",
            );
            errors.check(
                self.kafka_sasl_password.is_some(),
                "--kafka-sasl-password is required with a sasl_* protocol",
            );
        }
        if let Some(ca) = &self.kafka_ssl_ca {
            errors.check(
                std::path::Path::new(ca).is_file(),
                format!("--kafka-ssl-ca {ca:?} is not a readable file"),
            );
        }
        errors.check(
            self.topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "--topic-prefix may hold only letters, digits, '.', '_' and '-'",
        );
        errors.check(
            self.schema_registry_url.starts_with("http://")
                || self.schema_registry_url.starts_with("https://"),
            format!(
                "--schema-registry-url must be an http(s) URL, got {:?}",
                self.schema_registry_url
            ),
        );
        let basic =
            self.schema_registry_username.is_some() || self.schema_registry_password.is_some();
        errors.check(
            self.schema_registry_username.is_some() == self.schema_registry_password.is_some(),
            "--schema-registry-username and --schema-registry-password go together",
        );
        errors.check(
            !(basic && self.schema_registry_token.is_some()),
            "give the schema registry Basic credentials or a token, not both",
        );
        errors.check(
            !(basic || self.schema_registry_token.is_some())
                || self.schema_registry_url.starts_with("https://"),
            "schema registry credentials need an https:// --schema-registry-url (never sent in the clear)",
        );
        if let Some(ca) = &self.schema_registry_ca {
            errors.check(
                ca.is_file(),
                format!(
                    "--schema-registry-ca {} is not a readable file",
                    ca.display()
                ),
            );
        }
    }

    /// The base client configuration every producer, consumer and admin client starts from.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.kafka_brokers)
            .set(
                "security.protocol",
                self.kafka_security_protocol.to_ascii_lowercase(),
            )
            .set("client.dns.lookup", "use_all_dns_ips")
            // librdkafka logs through its own callback; keep it quiet unless something breaks.
            .set("log_level", "4");
        if let Some(m) = &self.kafka_sasl_mechanism {
            c.set("sasl.mechanism", m);
        }
        if let Some(u) = &self.kafka_sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.kafka_sasl_password {
            c.set("sasl.password", p.expose());
        }
        if let Some(ca) = &self.kafka_ssl_ca {
            c.set("ssl.ca.location", ca);
        }
        c
    }

    pub fn topics(&self) -> crate::Topics {
        crate::Topics::new(&self.topic_prefix)
    }

    /// The registry client: https verified (system roots plus --schema-registry-ca), with the
    /// configured credentials. Panics only on a CA file that `check` let through and that
    /// vanished or broke since.
    pub fn registry(&self) -> posflow_schema::Registry {
        use posflow_schema::registry::Auth;
        let auth = match (
            &self.schema_registry_username,
            &self.schema_registry_password,
            &self.schema_registry_token,
        ) {
            (Some(username), Some(password), _) => Some(Auth::Basic {
                username,
                password: password.expose(),
            }),
            (_, _, Some(token)) => Some(Auth::Bearer(token.expose())),
            _ => None,
        };
        posflow_schema::Registry::with(
            &self.schema_registry_url,
            self.schema_registry_ca.as_deref(),
            auth,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A consumer group id, prefixed like the topics.
    pub fn group(&self, name: &str) -> String {
        format!("{}{}", self.topic_prefix, name)
    }
}

/// A replica's stable name, for whatever must survive its restart but not be shared with
/// another replica: transactional ids (validator, fraud), outbox leases (notifier).
#[derive(Debug, Clone, Args)]
pub struct InstanceArgs {
    /// This instance's stable name (the pod name), unique per replica: a restart takes over what
    /// the instance it replaces held (its Kafka transactional id `<group>-<instance-id>`, its
    /// notifier leases).
    #[arg(long, env = "POSFLOW_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

impl InstanceArgs {
    pub fn check(&self, e: &mut ConfigErrors) {
        if let Some(id) = &self.instance_id {
            e.check(
                !id.is_empty() && id.len() <= 200,
                "--instance-id must be 1..=200 characters",
            );
        }
    }

    /// `--instance-id`, else the host name (the pod name in Kubernetes), else the process id.
    pub fn instance(&self) -> String {
        self.instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| format!("pid{}", std::process::id()))
    }
}

/// The exactly-once pipeline's settings, shared by the stages that use it (validator, fraud).
#[derive(Debug, Clone, Args)]
pub struct ExactlyOnceArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Most inputs per Kafka transaction.
    #[arg(long, env = "POSFLOW_TXN_MAX_RECORDS", default_value_t = 2000)]
    pub txn_max_records: usize,
    /// Milliseconds a transaction gathers inputs before it commits. Under load a batch fills
    /// while the previous transaction commits, so the linger matters at low load, where it is
    /// added to every record's latency: 20 → 10 ms (with storage's 10 → 5 ms) took the
    /// end-to-end p50 at half load from 59 to 48 ms for ~2 CPU s per million transactions more
    /// (alternated runs, BENCHMARKS.md, issue 20).
    #[arg(long, env = "POSFLOW_TXN_LINGER_MS", default_value_t = 10)]
    pub txn_linger_ms: u64,
}

impl ExactlyOnceArgs {
    pub fn check(&self, e: &mut ConfigErrors) {
        e.check(
            (1..=100_000).contains(&self.txn_max_records),
            "--txn-max-records must be 1..=100000",
        );
        e.check(
            (1..=10_000).contains(&self.txn_linger_ms),
            "--txn-linger-ms must be 1..=10000",
        );
        self.instance.check(e);
    }

    pub fn instance(&self) -> String {
        self.instance.instance()
    }

    pub fn batching(&self) -> crate::pipeline::Batching {
        crate::pipeline::Batching {
            max_records: self.txn_max_records,
            linger: std::time::Duration::from_millis(self.txn_linger_ms),
        }
    }
}
