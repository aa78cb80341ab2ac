//! posflow's records: the Rust types, their Avro schemas (compiled in from `schemas/`), the
//! Confluent wire format, and a schema-registry client.

pub mod avro_de;
pub mod catalogue;
pub mod codec;
pub mod currency;
pub mod gate;
pub mod reason;
pub mod registry;
pub mod types;

pub use catalogue::ValueSchema;
pub use codec::{AvroRecord, CodecError, Decoder, Encoder};
pub use reason::{GivenBy, ReasonCode};
pub use registry::{value_subject, Registry, RegistryError};
/// For `IntoEnumIterator` and `EnumCount` on this crate's enums, without a dependency of its own.
pub use strum;
pub use types::*;

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A timestamp-millis as RFC 3339 UTC with milliseconds, e.g. 2026-11-28T10:00:00.000Z.
pub fn rfc3339_millis(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
