//! Creates the catalogue's topics through the Kafka admin API and registers every value schema
//! (FULL_TRANSITIVE compatibility: docs/schemas.md) in the schema registry. Idempotent: run it on every deploy.

use crate::topics::{Retention, STATE_TOPICS};
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
    let planned = planned_topics(&topics, plan);
    let min_isr = plan.min_insync_replicas.to_string();
    let new: Vec<NewTopic> = planned
        .iter()
        .map(|t| new_topic(t, plan.replication_factor, &min_isr))
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
        let id = register(&registry, &subject, spec.value)
            .await
            .map_err(|source| ProvisionError::Schema { topic, source })?;
        report.schemas.push((subject, id));
    }
    Ok(report)
}

/// One topic of the catalogue as the plan sets it up (owned: `NewTopic` borrows from it).
struct PlannedTopic {
    name: String,
    partitions: i32,
    /// `None`: compacted, kept for ever.
    retention_ms: Option<String>,
}

fn planned_topics(topics: &crate::topics::Topics, plan: &ProvisionPlan) -> Vec<PlannedTopic> {
    // A single partition (the registry, the audit chain) is a design choice — one ordered log —
    // not a scale setting.
    let partitions = |n| match n {
        1 => 1,
        n => plan.partitions.unwrap_or(n),
    };
    let retention_ms = |r| match r {
        Retention::Days(d) => Some((d * 86_400_000).to_string()),
        Retention::Compacted => None,
    };
    let catalogue = CATALOGUE.iter().map(|t| PlannedTopic {
        name: topics.name(t.name),
        partitions: partitions(t.partitions),
        retention_ms: retention_ms(t.retention),
    });
    // A state topic gets its input's partition count, override included.
    let state = STATE_TOPICS.iter().map(|t| PlannedTopic {
        name: topics.name(t.name),
        partitions: partitions(t.partitions()),
        retention_ms: retention_ms(t.retention),
    });
    catalogue.chain(state).collect()
}

/// The topic with its replication, minimum in-sync replicas, and retention or compaction.
fn new_topic<'a>(t: &'a PlannedTopic, replication: i32, min_isr: &'a str) -> NewTopic<'a> {
    let topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(replication))
        .set("min.insync.replicas", min_isr);
    match &t.retention_ms {
        Some(ms) => topic
            .set("retention.ms", ms)
            .set("cleanup.policy", "delete"),
        None => topic
            .set("retention.ms", "-1")
            .set("cleanup.policy", "compact"),
    }
}

/// Registers a topic's value schema and sets its compatibility. A registry that stalls (a GC
/// pause, a restart) is waited out a few times; a refusal is final at once.
async fn register(
    registry: &posflow_schema::Registry,
    subject: &str,
    value: posflow_schema::ValueSchema,
) -> Result<u32, posflow_schema::RegistryError> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
    let mut attempts = 0;
    loop {
        let attempt = async {
            // The level first, so a schema incompatible with what is registered is refused.
            registry
                .set_compatibility(subject, posflow_schema::gate::COMPATIBILITY)
                .await?;
            let id = registry.register(subject, value.json()).await?;
            Ok::<_, posflow_schema::RegistryError>(id)
        };
        match attempt.await {
            Ok(id) => return Ok(id),
            Err(e) if e.is_retriable() && attempts < REGISTRY_ATTEMPTS => {
                attempts += 1;
                tracing::warn!(subject = %subject, error = %e, attempt = attempts, "schema registry unavailable; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}
