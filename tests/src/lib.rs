//! The harness for end-to-end tests: a fresh set of topics per test (random prefix) on the real
//! local stack, the real service binaries started as processes, and readers for Kafka and
//! PostgreSQL that wait on conditions, not on time.
//!
//! Needs `deploy/local/stack.sh up` and `cargo build --workspace` first (`make test` does both).
//! Addresses come from the POSFLOW_* variables of `stack.sh env`, defaulting to the stack's own.
//!
//! One module per concern, everything re-exported here (tests say `posflow_e2e::Deployment`):
//! [`stack`] the stack, a deployment on it and faults; [`process`] the binaries as processes;
//! [`kafka`] reading and producing topics; [`db`](mod@db) PostgreSQL; [`terminals`] terminals over
//! MQTT; [`fraud`] fraud's memory run; [`api`] the merchant API; [`notify`] webhook receivers
//! and the notifier's records; [`otlp`] a trace collector; [`portal`] people signed in to the
//! portal.

pub mod api;
pub mod browser;
pub mod db;
pub mod fraud;
pub mod kafka;
pub mod notify;
pub mod otlp;
pub mod portal;
pub mod process;
pub mod stack;
pub mod terminals;

pub use db::*;
pub use fraud::*;
pub use kafka::*;
pub use process::*;
pub use stack::*;
pub use terminals::*;
