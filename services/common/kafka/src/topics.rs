//! The topic catalogue: the one place that says what each topic is. docs/topics.md is this
//! table in prose; a test keeps the two in step.

use posflow_schema::ValueSchema;

#[derive(Debug, Clone, Copy)]
pub struct TopicSpec {
    /// Name without the deployment's prefix.
    pub name: &'static str,
    /// What the record key is, and why.
    pub key: &'static str,
    pub value: ValueSchema,
    pub partitions: i32,
    pub retention: Retention,
    pub writers: &'static str,
    pub readers: &'static str,
}

/// How long a topic keeps records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Deleted after this many days: events.
    Days(i64),
    /// The latest record per key kept for ever: state (the terminal registry).
    Compacted,
}

impl Retention {
    /// As docs/topics.md and `posflow-admin topics` write it.
    pub fn label(self) -> String {
        match self {
            Self::Days(d) => format!("{d} d"),
            Self::Compacted => "compacted".into(),
        }
    }
}

pub const RAW: &str = "pos.transactions.raw";
pub const VALIDATED: &str = "pos.transactions.validated";
pub const REJECTED: &str = "pos.transactions.rejected";
pub const FRAUD_ALERTS: &str = "pos.fraud.alerts";
pub const NOTIFICATION_STATUS: &str = "pos.notifications.status";
pub const DEADLETTER: &str = "pos.deadletter";
pub const TERMINALS: &str = "pos.terminals";
pub const AUDIT: &str = "pos.audit";

pub const CATALOGUE: &[TopicSpec] = &[
    TopicSpec {
        name: RAW,
        key: "terminal id (keeps each terminal's transactions in order)",
        value: ValueSchema::TransactionReceived,
        partitions: 12,
        retention: Retention::Days(7),
        writers: "bridge",
        readers: "validator, fraud (terminal rules)",
    },
    TopicSpec {
        name: VALIDATED,
        key: "card token (`terminal:<id>` without a card): each card's transactions in order on one partition, for fraud",
        value: ValueSchema::TransactionValidated,
        partitions: 12,
        retention: Retention::Days(7),
        writers: "validator",
        readers: "storage, fraud, notifier, lake, analysts",
    },
    TopicSpec {
        name: REJECTED,
        key: "terminal id",
        value: ValueSchema::TransactionRejected,
        partitions: 6,
        retention: Retention::Days(30),
        writers: "validator",
        readers: "storage, lake, analysts",
    },
    TopicSpec {
        name: FRAUD_ALERTS,
        key: "card token (terminal id for terminal-level rules)",
        value: ValueSchema::FraudAlert,
        partitions: 6,
        retention: Retention::Days(30),
        writers: "fraud",
        readers: "notifier, lake, analysts",
    },
    TopicSpec {
        name: NOTIFICATION_STATUS,
        key: "merchant id",
        value: ValueSchema::NotificationOutcome,
        partitions: 6,
        retention: Retention::Days(7),
        writers: "notifier",
        readers: "analysts, operators",
    },
    TopicSpec {
        name: DEADLETTER,
        key: "source (MQTT topic, or topic/partition/offset)",
        value: ValueSchema::DeadLetter,
        partitions: 3,
        retention: Retention::Days(30),
        writers: "bridge, validator, storage, fraud (TOO_LATE), notifier",
        readers: "operators (replay tooling)",
    },
    TopicSpec {
        name: TERMINALS,
        key: "terminal id (the latest record per terminal is its registration)",
        value: ValueSchema::TerminalRegistration,
        // One partition: the registry is small, and one ordered log makes "read to the end"
        // (the bridge's start-up) a single offset.
        partitions: 1,
        retention: Retention::Compacted,
        writers: "posflow-admin terminals",
        readers: "bridge, analysts",
    },
    TopicSpec {
        name: AUDIT,
        key: "merchant id ('' for requests that named none)",
        value: ValueSchema::AuditRecord,
        // One partition: the records form one hash chain, and a SIEM checks it in order.
        partitions: 1,
        retention: Retention::Days(90),
        writers: "api (relayed from api_audit)",
        readers: "SIEMs (merchants', the platform's)",
    },
];

/// An internal topic: a stage's own state, in the stage's private format (not Avro, not for
/// analysts). Created by provisioning next to the catalogue's topics, with as many partitions as
/// the input it mirrors: partition `p` holds the state of the input's partition `p`.
#[derive(Debug, Clone, Copy)]
pub struct StateTopicSpec {
    pub name: &'static str,
    /// What the record key is.
    pub key: &'static str,
    /// The input topic whose partitions this one mirrors.
    pub mirrors: &'static str,
    pub retention: Retention,
    pub writers: &'static str,
    pub what: &'static str,
}

pub const FRAUD_STATE_CARDS: &str = "pos.fraud.state.cards";
pub const FRAUD_STATE_TERMINALS: &str = "pos.fraud.state.terminals";
pub const VALIDATOR_STATE_OUTAGES: &str = "pos.validator.state.outages";

/// Time-retained, not compacted: every record is one change (its key is the card or terminal,
/// shared by many records). Fraud needs nothing after its rules' horizon (26 h with the
/// defaults; two days leave room for a longer `allowed_lateness_secs`); the validator nothing
/// after the longest offline `max_age_hours` it allows (7 days).
pub const STATE_TOPICS: &[StateTopicSpec] = &[
    StateTopicSpec {
        name: FRAUD_STATE_CARDS,
        key: "card token",
        mirrors: VALIDATED,
        retention: Retention::Days(2),
        writers: "fraud",
        what: "fraud's card-rule state: each judged transaction's event and the alerts it raised (docs/fraud.md)",
    },
    StateTopicSpec {
        name: FRAUD_STATE_TERMINALS,
        key: "terminal id",
        mirrors: RAW,
        retention: Retention::Days(2),
        writers: "fraud",
        what: "fraud's terminal-rule state, the same for the raw topic",
    },
    StateTopicSpec {
        name: VALIDATOR_STATE_OUTAGES,
        key: "terminal id",
        mirrors: RAW,
        retention: Retention::Days(8),
        writers: "validator",
        what: "the validator's per-outage offline counts: each accepted offline transaction, and each online one that ended a run",
    },
];

impl StateTopicSpec {
    /// The partitions of the input it mirrors.
    pub fn partitions(&self) -> i32 {
        CATALOGUE
            .iter()
            .find(|t| t.name == self.mirrors)
            .map_or(1, |t| t.partitions)
    }
}

/// Topic names for one deployment (prefix applied).
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }
    pub fn name(&self, base: &str) -> String {
        format!("{}{}", self.prefix, base)
    }
    pub fn raw(&self) -> String {
        self.name(RAW)
    }
    pub fn validated(&self) -> String {
        self.name(VALIDATED)
    }
    pub fn rejected(&self) -> String {
        self.name(REJECTED)
    }
    pub fn fraud_alerts(&self) -> String {
        self.name(FRAUD_ALERTS)
    }
    pub fn notification_status(&self) -> String {
        self.name(NOTIFICATION_STATUS)
    }
    pub fn deadletter(&self) -> String {
        self.name(DEADLETTER)
    }
    pub fn terminals(&self) -> String {
        self.name(TERMINALS)
    }
    pub fn fraud_state_cards(&self) -> String {
        self.name(FRAUD_STATE_CARDS)
    }
    pub fn fraud_state_terminals(&self) -> String {
        self.name(FRAUD_STATE_TERMINALS)
    }
    pub fn validator_state_outages(&self) -> String {
        self.name(VALIDATOR_STATE_OUTAGES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posflow_schema::strum::IntoEnumIterator;

    #[test]
    fn every_schema_has_exactly_one_topic_named_after_its_file() {
        for s in ValueSchema::iter() {
            let topics: Vec<_> = CATALOGUE.iter().filter(|t| t.value == s).collect();
            assert_eq!(topics.len(), 1, "{s:?}");
            assert_eq!(format!("{}.avsc", topics[0].name), s.file());
        }
    }

    #[test]
    fn the_docs_list_every_topic_with_its_partitions() {
        let doc = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../docs/topics.md"
        ));
        for t in CATALOGUE {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` ", t.name)))
                .unwrap_or_else(|| panic!("docs/topics.md has no row for {}", t.name));
            assert!(row.contains(&format!("| {} |", t.partitions)), "{row}");
            assert!(
                row.contains(&format!("| {} |", t.retention.label())),
                "{row}"
            );
        }
        for t in STATE_TOPICS {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` ", t.name)))
                .unwrap_or_else(|| panic!("docs/topics.md has no row for {}", t.name));
            assert!(row.contains(&format!("`{}`", t.mirrors)), "{row}");
            assert!(
                row.contains(&format!("| {} |", t.retention.label())),
                "{row}"
            );
        }
    }
}
