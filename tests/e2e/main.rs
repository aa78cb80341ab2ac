//! End-to-end tests against the real local stack. Run with `make test` (it brings the stack up
//! and builds the binaries). The tests run one at a time: they share the broker's terminals.

mod bad_input;
mod bridge_crash;
mod cli;
mod corpus;
mod kafka_outage;
mod pipeline;
mod provisioning;
