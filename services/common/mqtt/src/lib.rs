//! The MQTT side of posflow: the topic contract terminals publish on (docs/terminal-contract.md)
//! and the connection options the bridge and the simulator share.
//!
//! Topics: a terminal publishes `pos/<merchant>/<terminal>/tx` and reads its answers on
//! `pos/<merchant>/<terminal>/ack`. Ids are 1–64 of `[A-Za-z0-9_-]`: no `/`, `+`, `#` or `$`,
//! so an id can never widen a subscription or an ACL pattern.

use clap::Args;
use posflow_runtime::{ConfigErrors, Secret};
use rumqttc::v5::MqttOptions;
use rumqttc::Transport;
use std::path::PathBuf;
use std::time::Duration;

pub const ROOT: &str = "pos";
pub const MAX_ID_LEN: usize = 64;

/// Queues a QoS 1 SUBSCRIBE from a task of its own, for the task that polls the event loop
/// (on each CONNACK). That task must never await the client's request channel: it is the only
/// one that empties it, so with the channel full it would wait on itself forever (issue 24).
pub fn subscribe_detached(client: &rumqttc::v5::AsyncClient, filter: String) {
    let client = client.clone();
    tokio::spawn(async move {
        if let Err(e) = client
            .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await
        {
            tracing::error!(error = %e, "subscribe not queued");
        }
    });
}

/// The merchant and terminal a topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicIds<'a> {
    pub merchant_id: &'a str,
    pub terminal_id: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is not pos/<merchant>/<terminal>/tx")]
    Shape,
    #[error("merchant or terminal id is not 1-64 of [A-Za-z0-9_-]")]
    BadId,
}

pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn tx_topic(merchant_id: &str, terminal_id: &str) -> String {
    format!("{ROOT}/{merchant_id}/{terminal_id}/tx")
}

pub fn ack_topic(merchant_id: &str, terminal_id: &str) -> String {
    format!("{ROOT}/{merchant_id}/{terminal_id}/ack")
}

/// The filter the bridge subscribes to (inside its shared subscription).
pub fn tx_filter() -> String {
    format!("{ROOT}/+/+/tx")
}

pub fn parse_tx_topic(topic: &str) -> Result<TopicIds<'_>, TopicError> {
    let mut parts = topic.split('/');
    let (Some(ROOT), Some(merchant_id), Some(terminal_id), Some("tx"), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TopicError::Shape);
    };
    if !is_valid_id(merchant_id) || !is_valid_id(terminal_id) {
        return Err(TopicError::BadId);
    }
    Ok(TopicIds {
        merchant_id,
        terminal_id,
    })
}

/// How to reach the MQTT broker.
#[derive(Debug, Clone, Args)]
pub struct MqttArgs {
    #[arg(long, env = "POSFLOW_MQTT_HOST", default_value = "127.0.0.1")]
    pub mqtt_host: String,
    #[arg(long, env = "POSFLOW_MQTT_PORT", default_value_t = 21883)]
    pub mqtt_port: u16,
    #[arg(
        long,
        env = "POSFLOW_MQTT_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    pub mqtt_password: Secret,
    /// Seconds between keep-alive pings.
    #[arg(long, env = "POSFLOW_MQTT_KEEP_ALIVE", default_value_t = 15)]
    pub mqtt_keep_alive: u64,
    /// CA bundle (PEM) that signed the broker's certificate. Setting it turns TLS on.
    #[arg(long, env = "POSFLOW_MQTT_TLS_CA")]
    pub mqtt_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; the broker takes its CN as the username.
    #[arg(long, env = "POSFLOW_MQTT_TLS_CERT")]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM). From a Secret.
    #[arg(long, env = "POSFLOW_MQTT_TLS_KEY")]
    pub mqtt_tls_key: Option<PathBuf>,
}

impl MqttArgs {
    pub fn check(&self, errors: &mut ConfigErrors) {
        errors.check(!self.mqtt_host.is_empty(), "--mqtt-host is empty");
        errors.check(self.mqtt_port != 0, "--mqtt-port must not be 0");
        errors.check(
            (5..=3600).contains(&self.mqtt_keep_alive),
            "--mqtt-keep-alive must be 5..=3600 seconds",
        );
        errors.check(
            self.mqtt_tls_cert.is_some() == self.mqtt_tls_key.is_some(),
            "--mqtt-tls-cert and --mqtt-tls-key go together",
        );
        errors.check(
            self.mqtt_tls_cert.is_none() || self.mqtt_tls_ca.is_some(),
            "--mqtt-tls-cert needs --mqtt-tls-ca (client certificates only over TLS)",
        );
        for (flag, path) in [
            ("--mqtt-tls-ca", &self.mqtt_tls_ca),
            ("--mqtt-tls-cert", &self.mqtt_tls_cert),
            ("--mqtt-tls-key", &self.mqtt_tls_key),
        ] {
            if let Some(p) = path {
                errors.check(
                    std::fs::File::open(p).is_ok(),
                    format!("{flag} {} is not readable", p.display()),
                );
            }
        }
    }

    /// Whether the client authenticates with a certificate (then no password is needed).
    pub fn has_client_certificate(&self) -> bool {
        self.mqtt_tls_cert.is_some()
    }

    /// MQTT 5 options for `client_id`, which is also the username: the broker ties the two
    /// (`use_username_as_clientid`), so a client cannot take over another's session.
    pub fn options(&self, client_id: &str, password: &Secret) -> std::io::Result<MqttOptions> {
        let mut o = MqttOptions::new(client_id, &self.mqtt_host, self.mqtt_port);
        o.set_credentials(client_id, password.expose());
        o.set_keep_alive(Duration::from_secs(self.mqtt_keep_alive));
        if let Some(ca) = &self.mqtt_tls_ca {
            // rustls needs a process-wide crypto provider; a second install is a no-op.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client_auth = match (&self.mqtt_tls_cert, &self.mqtt_tls_key) {
                (Some(c), Some(k)) => Some((std::fs::read(c)?, std::fs::read(k)?)),
                _ => None,
            };
            o.set_transport(Transport::tls(std::fs::read(ca)?, client_auth, None));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        let t = tx_topic("M-01", "T_0001");
        assert_eq!(t, "pos/M-01/T_0001/tx");
        assert_eq!(
            parse_tx_topic(&t),
            Ok(TopicIds {
                merchant_id: "M-01",
                terminal_id: "T_0001"
            })
        );
        assert_eq!(ack_topic("M-01", "T_0001"), "pos/M-01/T_0001/ack");
    }

    #[test]
    fn hostile_topics_are_refused() {
        for t in [
            "pos/M/T/ack",
            "pos/M/tx",
            "pos/M/T/tx/x",
            "x/M/T/tx",
            "pos//T/tx",
            "pos/M/T+/tx",
            "pos/M/#/tx",
            "pos/M/$T/tx",
            "pos/M/T é/tx",
        ] {
            assert!(parse_tx_topic(t).is_err(), "{t}");
        }
        assert_eq!(
            parse_tx_topic(&format!("pos/M/{}/tx", "a".repeat(65))),
            Err(TopicError::BadId)
        );
        assert!(parse_tx_topic(&format!("pos/M/{}/tx", "a".repeat(64))).is_ok());
    }
}
