//! posflow-terminal: the reference terminal client, for firmware teams to read or embed
//! (docs/terminal-client.md). A sale is captured into a durable, encrypted queue before the
//! sale completes ([`queue`]), whether or not the terminal is online; [`flush`] sends what is
//! pending over MQTT 5 and records the bridge's answers; [`sale`] writes the contract's payload.

pub mod flush;
pub mod queue;
pub mod sale;
