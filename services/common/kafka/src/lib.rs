//! Kafka wiring shared by the stages: client settings from flags, the topic catalogue, topic
//! provisioning and schema registration, and the consumer/producer settings posflow relies on.

pub mod args;
pub mod clients;
pub mod deadletter;
pub mod headers;
pub mod pipeline;
pub mod provision;
pub mod replay;
pub mod sink;
pub mod topics;

pub use args::{ExactlyOnceArgs, InstanceArgs, KafkaArgs};
pub use topics::{Retention, StateTopicSpec, TopicSpec, Topics, CATALOGUE, STATE_TOPICS};
