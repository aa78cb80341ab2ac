//! Provisioning creates the catalogue's topics through the admin API and registers every
//! schema; running it again changes nothing.

use posflow_e2e::*;
use posflow_kafka::provision::provision;
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
    let partitions_of = |name: &str| {
        md.topics()
            .iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .partitions()
            .len() as i32
    };
    for spec in CATALOGUE {
        let name = d.topic(spec.name);
        // --partitions sets the event topics; the single-partition ones (the registry, the
        // audit chain) keep their one.
        let partitions = if spec.partitions == 1 { 1 } else { 4 };
        assert_eq!(partitions_of(&name), partitions, "{name}");
        // Registered: the lookup finds this schema under the topic's subject. (Not through
        // the subject list: the registry caps it at 1,000, which a long-lived stack exceeds.)
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
    // The state topics mirror their inputs' partitions (no schema: checked below).
    for spec in posflow_kafka::STATE_TOPICS {
        let name = d.topic(spec.name);
        assert_eq!(partitions_of(&name), 4, "{name}");
    }
    // Again: nothing created, the same schema ids.
    let again = provision(&d.kafka, &local_plan()).await.unwrap();
    assert!(again.created.is_empty(), "{:?}", again.created);
    assert_eq!(
        again.existed.len(),
        CATALOGUE.len() + posflow_kafka::STATE_TOPICS.len()
    );
    // A schema for each catalogue topic, none for the state topics.
    assert_eq!(again.schemas.len(), CATALOGUE.len());
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

/// The schema registry over https, verified with a CA file (the local registry's second
/// listener, with the stack CA's certificate): provisioning and a bridge's schema lookups work
/// through it, and without the CA the registry is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_reached_over_https_with_its_ca() {
    use rumqttc::v5::mqttbytes::QoS;
    let https = std::env::var("POSFLOW_LOCAL_REGISTRY_HTTPS_URL")
        .unwrap_or_else(|_| "https://127.0.0.1:28083/apis/ccompat/v7".into());
    let ca = local_tls_dir().join("ca.crt");

    let untrusted = posflow_schema::Registry::with(&https, None, None).unwrap();
    let err = untrusted
        .subjects()
        .await
        .expect_err("an unknown CA was trusted");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let mut d = Deployment::kafka_only().await;
    d.kafka.schema_registry_url = https.clone();
    d.kafka.schema_registry_ca = Some(ca.clone());
    d.stack.registry = https;
    let again = provision(&d.kafka, &local_plan())
        .await
        .expect("provisioning over https");
    assert_eq!(again.schemas.len(), CATALOGUE.len());

    // The bridge looks its schemas up over https (Deployment::env passes the CA file).
    let _bridge = d.start_bridge(2).await;
    let (t, m) = ("T0477", merchant_of("T0477"));
    let (client, mut rx) = answered_terminal(&d.stack, t, &m).await;
    client
        .publish(
            posflow_mqtt::tx_topic(&m, t),
            QoS::AtLeastOnce,
            false,
            valid_payload("https-registry-1", t, &m),
        )
        .await
        .unwrap();
    let a = answers(&mut rx, 1).await.remove(0);
    assert_eq!(a["status"], "accepted", "{a}");
    assert_eq!(d.raw_transactions(1).await.len(), 1);
}
