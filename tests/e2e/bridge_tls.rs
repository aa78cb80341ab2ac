//! The bridge reaches the broker over TLS with a client certificate (rustls): the broker takes
//! the certificate's CN as its identity, so the same ACL applies and no password is involved.

use posflow_e2e::*;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_connects_with_a_client_certificate_and_forwards() {
    let d = Deployment::new().await;
    let tls = local_tls_dir();
    let port = std::env::var("POSFLOW_LOCAL_MQTT_TLS_PORT").unwrap();
    crate::clear_session_over_tls(&d, &tls, &port).await;
    let file = |n: &str| tls.join(n).display().to_string();
    let (ca, cert, key) = (file("ca.crt"), file("bridge-4.crt"), file("bridge-4.key"));
    let bridge = d
        .bridge_with(
            4,
            &[
                "--mqtt-port",
                &port,
                "--mqtt-tls-ca",
                &ca,
                "--mqtt-tls-cert",
                &cert,
                "--mqtt-tls-key",
                &key,
                "--mqtt-password",
                "",
            ],
        )
        .await;

    // A terminal on the plain listener; the bridge receives over TLS.
    let mut o = MqttOptions::new("T0440", &d.stack.mqtt_host, d.stack.mqtt_port);
    o.set_credentials("T0440", &d.stack.terminal_password);
    let (client, mut ev) = AsyncClient::new(o, 10);
    tokio::spawn(async move {
        while !matches!(
            ev.poll().await,
            Err(_) | Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))
        ) {}
    });
    let merchant = merchant_of("T0440");
    let payload = valid_payload("tls-1", "T0440", &merchant);
    client
        .publish(
            posflow_mqtt::tx_topic(&merchant, "T0440"),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .unwrap();
    let raw = d.raw_transactions(1).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].1.transaction.transaction_id, "tls-1");
    assert!(
        bridge.log_text().contains("connected to MQTT"),
        "{}",
        bridge.log_text()
    );
    let _ = client.disconnect().await;
}
