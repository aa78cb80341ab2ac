//! Provisioning creates the catalogue's topics through the admin API and registers every
//! schema; running it again changes nothing.

use posflow_e2e::*;
use posflow_kafka::provision::{provision, ProvisionPlan};
use posflow_kafka::CATALOGUE;
use posflow_schema::value_subject;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::time::Duration;

#[tokio::test]
async fn provisioning_creates_every_topic_and_registers_every_schema_idempotently() {
    let d = Deployment::new().await;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &d.stack.brokers)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let registry = d.kafka.registry();
    let subjects = registry.subjects().await.unwrap();
    for spec in CATALOGUE {
        let name = d.topic(spec.name);
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        // --partitions sets the event topics; the registry keeps its single partition.
        let partitions = match spec.retention {
            posflow_kafka::Retention::Compacted => spec.partitions,
            posflow_kafka::Retention::Days(_) => 4,
        };
        assert_eq!(topic.partitions().len() as i32, partitions, "{name}");
        assert!(
            subjects.contains(&value_subject(&name)),
            "{name} schema not registered"
        );
        let id = registry
            .lookup(&value_subject(&name), spec.value.json())
            .await
            .unwrap();
        assert!(registry
            .schema_by_id(id)
            .await
            .unwrap()
            .contains("dev.posflow.v1"));
    }
    // Again: nothing created, the same schema ids.
    let again = provision(
        &d.kafka,
        &ProvisionPlan {
            replication_factor: 1,
            min_insync_replicas: 1,
            partitions: Some(4),
        },
    )
    .await
    .unwrap();
    assert!(again.created.is_empty(), "{:?}", again.created);
    assert_eq!(again.existed.len(), CATALOGUE.len());
    for (subject, id) in &again.schemas {
        let spec = CATALOGUE
            .iter()
            .find(|s| value_subject(&d.topic(s.name)) == *subject)
            .unwrap();
        assert_eq!(
            registry.lookup(subject, spec.value.json()).await.unwrap(),
            *id
        );
    }
}
