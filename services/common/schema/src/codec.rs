//! Avro in the Confluent wire format: byte 0x00, the writer schema's registry id (4 bytes,
//! big-endian), then the Avro binary datum. kcat `-s avro`, Kafka Connect, Flink, Spark and
//! ksqlDB read it with no posflow code.

use crate::catalogue::ValueSchema;
use crate::registry::{value_subject, Registry, RegistryError};
use apache_avro::Schema;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

/// A record type with a topic schema in `schemas/`.
pub trait AvroRecord: Serialize + DeserializeOwned {
    const SCHEMA: ValueSchema;
}

macro_rules! record {
    ($t:ty, $s:ident) => {
        impl AvroRecord for $t {
            const SCHEMA: ValueSchema = ValueSchema::$s;
        }
    };
}
record!(crate::types::TransactionReceived, TransactionReceived);
record!(crate::types::TransactionValidated, TransactionValidated);
record!(crate::types::TransactionRejected, TransactionRejected);
record!(crate::types::FraudAlert, FraudAlert);
record!(crate::types::NotificationOutcome, NotificationOutcome);
record!(crate::types::DeadLetter, DeadLetter);
record!(crate::types::TerminalRegistration, TerminalRegistration);
record!(crate::types::AuditRecord, AuditRecord);

const MAGIC: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not in the Confluent wire format (magic byte or length)")]
    NotFramed,
    #[error("Avro: {0}")]
    Avro(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl CodecError {
    /// Only a registry that cannot be reached is worth waiting for; bad bytes stay bad.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Registry(e) if e.is_retriable())
    }
}

/// Encodes `T` with the schema id registered for `topic`.
pub struct Encoder<T> {
    id: u32,
    _t: PhantomData<fn(T)>,
}

impl<T: AvroRecord> Encoder<T> {
    /// Looks the schema up under `<topic>-value`. Start-up fails if provisioning has not
    /// registered it: stages never register schemas themselves.
    pub async fn for_topic(registry: &Registry, topic: &str) -> Result<Self, RegistryError> {
        let id = registry
            .lookup(&value_subject(topic), T::SCHEMA.json())
            .await?;
        Ok(Self {
            id,
            _t: PhantomData,
        })
    }

    pub fn schema_id(&self) -> u32 {
        self.id
    }

    pub fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        encode_with_id(self.id, value)
    }
}

/// Encodes with a known id (also used by tests and tools that do their own lookup).
pub fn encode_with_id<T: AvroRecord>(id: u32, value: &T) -> Result<Vec<u8>, CodecError> {
    let datum = to_datum(value)?;
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&datum);
    Ok(out)
}

/// Plain Avro binary of `value` under its schema (no framing). Serialises straight from `T`
/// against the schema: no intermediate `Value` tree and no separate validation pass (the
/// serializer refuses what the schema does not allow as it goes).
pub fn to_datum<T: AvroRecord>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    apache_avro::write_avro_datum_ref(T::SCHEMA.schema(), value, &mut out)
        .map_err(|e| CodecError::Avro(e.to_string()))?;
    Ok(out)
}

/// Plain Avro binary back to `T`, read with `writer` resolved to `T`'s own schema.
pub fn from_datum<T: AvroRecord>(writer: &Schema, bytes: &[u8]) -> Result<T, CodecError> {
    read_datum(writer, direct(writer, T::SCHEMA.schema()), bytes)
}

/// Whether `writer` can be read straight into the type whose schema is `reader`: the same
/// schema (nothing to resolve) and one the schema-aware path reads.
fn direct(writer: &Schema, reader: &Schema) -> bool {
    writer.canonical_form() == reader.canonical_form() && crate::avro_de::usable(writer)
}

/// `direct`: read straight into `T` (`avro_de`); otherwise apache-avro's resolving path.
fn read_datum<T: AvroRecord>(writer: &Schema, direct: bool, bytes: &[u8]) -> Result<T, CodecError> {
    if direct {
        return crate::avro_de::from_slice(writer, bytes)
            .map_err(|e| CodecError::Avro(e.to_string()));
    }
    from_datum_via_value(writer, bytes)
}

/// apache-avro's path: the datum as a `Value` tree (resolved to `T`'s schema when the writer's
/// differs), then the tree into `T`. The reference the schema-aware path is tested against.
pub fn from_datum_via_value<T: AvroRecord>(
    writer: &Schema,
    mut bytes: &[u8],
) -> Result<T, CodecError> {
    let own = T::SCHEMA.schema();
    let reader = (writer.canonical_form() != own.canonical_form()).then_some(own);
    let v = apache_avro::from_avro_datum(writer, &mut bytes, reader)
        .map_err(|e| CodecError::Avro(e.to_string()))?;
    apache_avro::from_value(&v).map_err(|e| CodecError::Avro(e.to_string()))
}

/// Decodes framed records of any registered writer schema into `T` (schema resolution, so
/// older and newer compatible writers both read).
pub struct Decoder<T> {
    registry: Registry,
    /// Writer schemas by id, and whether each is read straight into `T` (`direct`).
    writers: RwLock<HashMap<u32, (Arc<Schema>, bool)>>,
    _t: PhantomData<fn() -> T>,
}

impl<T: AvroRecord> Decoder<T> {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            writers: RwLock::new(HashMap::new()),
            _t: PhantomData,
        }
    }

    pub async fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        if bytes.len() < 5 || bytes[0] != MAGIC {
            return Err(CodecError::NotFramed);
        }
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let (writer, direct) = self.writer(id).await?;
        read_datum(&writer, direct, &bytes[5..])
    }

    async fn writer(&self, id: u32) -> Result<(Arc<Schema>, bool), CodecError> {
        if let Some(s) = self.writers.read().expect("poisoned").get(&id) {
            return Ok(s.clone());
        }
        let text = self.registry.schema_by_id(id).await?;
        let schema = Schema::parse_str(&text).map_err(|e| CodecError::Avro(e.to_string()))?;
        let entry = (
            Arc::new(schema.clone()),
            direct(&schema, T::SCHEMA.schema()),
        );
        self.writers
            .write()
            .expect("poisoned")
            .insert(id, entry.clone());
        Ok(entry)
    }
}
