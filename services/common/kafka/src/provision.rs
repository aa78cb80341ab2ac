//! Creates the catalogue's topics through the Kafka admin API and registers every value schema
//! (BACKWARD compatibility) in the schema registry. Idempotent: run it on every deploy.

use crate::topics::Retention;
use crate::{KafkaArgs, CATALOGUE};
use posflow_runtime::Backoff;
use posflow_schema::value_subject;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// Retries of a subject's registration while the registry is unavailable (each call waits up
/// to 15 s).
const REGISTRY_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone)]
pub struct ProvisionPlan {
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
    /// Overrides every topic's partition count (local stacks and tests use fewer).
    pub partitions: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("Kafka admin: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("registering the schema of {topic}: {source}")]
    Schema {
        topic: String,
        source: posflow_schema::RegistryError,
    },
}

/// What provisioning did, topic by topic.
#[derive(Debug, Default)]
pub struct ProvisionReport {
    pub created: Vec<String>,
    pub existed: Vec<String>,
    /// (subject, schema id)
    pub schemas: Vec<(String, u32)>,
}

pub async fn provision(
    args: &KafkaArgs,
    plan: &ProvisionPlan,
) -> Result<ProvisionReport, ProvisionError> {
    let admin: AdminClient<DefaultClientContext> = args.client_config().create()?;
    let topics = args.topics();
    let names: Vec<(String, i32, Retention)> = CATALOGUE
        .iter()
        .map(|t| {
            // A single partition (the registry, the audit chain) is a design choice — one
            // ordered log — not a scale setting.
            let partitions = match t.partitions {
                1 => 1,
                n => plan.partitions.unwrap_or(n),
            };
            (topics.name(t.name), partitions, t.retention)
        })
        .collect();
    let min_isr = plan.min_insync_replicas.to_string();
    let retention_ms: std::collections::HashMap<&String, String> = names
        .iter()
        .filter_map(|(name, _, r)| match r {
            Retention::Days(d) => Some((name, (d * 86_400_000).to_string())),
            Retention::Compacted => None,
        })
        .collect();
    let new: Vec<NewTopic> = names
        .iter()
        .map(|(name, partitions, retention)| {
            let topic = NewTopic::new(
                name,
                *partitions,
                TopicReplication::Fixed(plan.replication_factor),
            )
            .set("min.insync.replicas", &min_isr);
            match retention {
                Retention::Days(_) => topic
                    .set("retention.ms", &retention_ms[name])
                    .set("cleanup.policy", "delete"),
                Retention::Compacted => topic
                    .set("retention.ms", "-1")
                    .set("cleanup.policy", "compact"),
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut report = ProvisionReport::default();
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(t) => report.created.push(t),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => report.existed.push(t),
            Err((topic, code)) => return Err(ProvisionError::Topic { topic, code }),
        }
    }
    let registry = args.registry();
    for spec in CATALOGUE {
        let topic = topics.name(spec.name);
        let subject = value_subject(&topic);
        let schema_err = |source| ProvisionError::Schema {
            topic: topic.clone(),
            source,
        };
        // A registry that stalls (a GC pause, a restart) is waited out a few times; a refusal
        // is final at once.
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let mut attempts = 0;
        let id = loop {
            let attempt = async {
                let id = registry.register(&subject, spec.value.json()).await?;
                registry.set_compatibility(&subject, "BACKWARD").await?;
                Ok::<_, posflow_schema::RegistryError>(id)
            };
            match attempt.await {
                Ok(id) => break id,
                Err(e) if e.is_retriable() && attempts < REGISTRY_ATTEMPTS => {
                    attempts += 1;
                    tracing::warn!(subject = %subject, error = %e, attempt = attempts, "schema registry unavailable; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(schema_err(e)),
            }
        };
        report.schemas.push((subject, id));
    }
    Ok(report)
}
