//! End-to-end tests against the real local stack. Run with `make test` (it brings the stack up
//! and builds the binaries). The tests run one at a time: they share the broker's terminals.

mod analysts;
mod api;
mod bad_input;
mod bridge_backlog;
mod bridge_crash;
mod bridge_scaling;
mod bridge_tls;
mod browser;
mod cli;
mod cluster;
mod corpus;
mod fraud;
mod kafka_outage;
mod lake;
mod notifier;
mod observability;
mod offline;
mod pipeline;
mod portal;
mod provisioning;

mod storage;
mod terminal_client;
mod terminal_registry;
mod validator_exactly_once;

/// Drops any session bridge-4 has on the broker, connecting over TLS with its certificate
/// (on the TLS listener the identity comes from the certificate, not a password).
async fn clear_session_over_tls(d: &posflow_e2e::Deployment, tls: &std::path::Path, port: &str) {
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let args = posflow_mqtt::MqttArgs {
        mqtt_host: d.stack.mqtt_host.clone(),
        mqtt_port: port.parse().unwrap(),
        mqtt_password: posflow_runtime::Secret::new(""),
        mqtt_keep_alive: 15,
        mqtt_tls_ca: Some(tls.join("ca.crt")),
        mqtt_tls_cert: Some(tls.join("bridge-4.crt")),
        mqtt_tls_key: Some(tls.join("bridge-4.key")),
    };
    let mut o: MqttOptions = args
        .options("bridge-4", &posflow_runtime::Secret::new(""))
        .unwrap();
    o.set_clean_start(true);
    let (client, mut ev) = AsyncClient::new(o, 10);
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ev.poll())
            .await
            .expect("TLS connect timed out")
        {
            Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("TLS connect as bridge-4: {e}"),
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while ev.poll().await.is_ok() {}
    })
    .await;
}
