//! posflow-terminal: the reference terminal client, for firmware teams to read or embed
//! (docs/terminal-client.md). A sale is captured into a durable, encrypted queue before the
//! sale completes ([`queue`]), whether or not the terminal is online; [`sender`] publishes any
//! source of transactions over MQTT 5 until the bridge answers each (the simulator's fleet sends
//! through it too); [`flush`] sends the queue's pending ones and records the answers in it;
//! [`sale`] writes the contract's payload.

pub mod flush;
pub mod queue;
pub mod sale;
pub mod sender;
