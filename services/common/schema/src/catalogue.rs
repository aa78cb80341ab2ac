//! The `.avsc` files, compiled in. Top-level files name shared record types (`Transaction`,
//! `Envelope`, ...) that live once in `schemas/types/`; [`ValueSchema::json`] inlines them so
//! every registered schema is self-contained (no registry references needed by readers).

use apache_avro::Schema;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use strum::IntoEnumIterator;

macro_rules! avsc {
    ($file:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../schemas/",
            $file
        ))
    };
}

/// Named types that top-level schemas refer to by full name.
const TYPES: &[(&str, &str)] = &[
    (
        "dev.posflow.v1.Card",
        avsc!("types/dev.posflow.v1.Card.avsc"),
    ),
    (
        "dev.posflow.v1.Location",
        avsc!("types/dev.posflow.v1.Location.avsc"),
    ),
    (
        "dev.posflow.v1.LineItem",
        avsc!("types/dev.posflow.v1.LineItem.avsc"),
    ),
    (
        "dev.posflow.v1.Envelope",
        avsc!("types/dev.posflow.v1.Envelope.avsc"),
    ),
    (
        "dev.posflow.v1.Transaction",
        avsc!("types/dev.posflow.v1.Transaction.avsc"),
    ),
];

/// The value schema of each topic. The file is named after the topic it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::EnumIter)]
pub enum ValueSchema {
    TransactionReceived,
    TransactionValidated,
    TransactionRejected,
    FraudAlert,
    NotificationOutcome,
    DeadLetter,
    TerminalRegistration,
    AuditRecord,
}

impl ValueSchema {
    /// The file under `schemas/`.
    pub fn file(self) -> &'static str {
        match self {
            Self::TransactionReceived => "pos.transactions.raw.avsc",
            Self::TransactionValidated => "pos.transactions.validated.avsc",
            Self::TransactionRejected => "pos.transactions.rejected.avsc",
            Self::FraudAlert => "pos.fraud.alerts.avsc",
            Self::NotificationOutcome => "pos.notifications.status.avsc",
            Self::DeadLetter => "pos.deadletter.avsc",
            Self::TerminalRegistration => "pos.terminals.avsc",
            Self::AuditRecord => "pos.audit.avsc",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Self::TransactionReceived => avsc!("pos.transactions.raw.avsc"),
            Self::TransactionValidated => avsc!("pos.transactions.validated.avsc"),
            Self::TransactionRejected => avsc!("pos.transactions.rejected.avsc"),
            Self::FraudAlert => avsc!("pos.fraud.alerts.avsc"),
            Self::NotificationOutcome => avsc!("pos.notifications.status.avsc"),
            Self::DeadLetter => avsc!("pos.deadletter.avsc"),
            Self::TerminalRegistration => avsc!("pos.terminals.avsc"),
            Self::AuditRecord => avsc!("pos.audit.avsc"),
        }
    }

    /// The self-contained schema text, as registered in the schema registry.
    pub fn json(self) -> &'static str {
        static CACHE: OnceLock<HashMap<ValueSchema, String>> = OnceLock::new();
        CACHE.get_or_init(|| {
            Self::iter()
                .map(|s| {
                    (
                        s,
                        inline(s.source(), TYPES).expect("schemas/ files are valid JSON"),
                    )
                })
                .collect()
        })[&self]
            .as_str()
    }

    /// The parsed schema. Panics only if a committed `.avsc` file is invalid, which the
    /// crate's tests rule out.
    pub fn schema(self) -> &'static Schema {
        static CACHE: OnceLock<HashMap<ValueSchema, Schema>> = OnceLock::new();
        &CACHE.get_or_init(|| {
            Self::iter()
                .map(|s| {
                    (
                        s,
                        Schema::parse_str(s.json()).expect("schemas/ files are valid Avro"),
                    )
                })
                .collect()
        })[&self]
    }

    /// The file's name without `.avsc`: the topic's base name (`pos.transactions.raw`).
    pub fn stem(self) -> &'static str {
        self.file().trim_end_matches(".avsc")
    }
}

/// Each value schema's self-contained text, read from a directory laid out like `schemas/`
/// (top-level `<topic>.avsc`, shared types in `types/<full name>.avsc`) instead of the copy
/// compiled in: the schema gate checks a working copy without a rebuild. Errors name the file.
pub fn resolve_dir(dir: &Path) -> Result<Vec<(ValueSchema, String)>, String> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut texts = Vec::new();
    for (name, _) in TYPES {
        texts.push((*name, read(dir.join("types").join(format!("{name}.avsc")))?));
    }
    let types: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (*n, t.as_str())).collect();
    ValueSchema::iter()
        .map(|s| {
            let path = dir.join(s.file());
            let json = inline(&read(path.clone())?, &types)
                .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
            Schema::parse_str(&json)
                .map_err(|e| format!("{}: not valid Avro: {e}", path.display()))?;
            Ok((s, json))
        })
        .collect()
}

/// Replaces the first use of each shared named type with its definition (Avro requires a name
/// to be defined before, and only once, in a schema document).
fn inline(source: &str, types: &[(&str, &str)]) -> Result<String, serde_json::Error> {
    let types: HashMap<&str, Value> = types
        .iter()
        .map(|(name, text)| Ok((*name, serde_json::from_str(text)?)))
        .collect::<Result<_, serde_json::Error>>()?;
    let mut doc: Value = serde_json::from_str(source)?;
    let mut defined = HashSet::new();
    expand(&mut doc, &types, &mut defined);
    serde_json::to_string(&doc)
}

fn expand(v: &mut Value, types: &HashMap<&str, Value>, defined: &mut HashSet<String>) {
    match v {
        Value::String(name) if types.contains_key(name.as_str()) && !defined.contains(name) => {
            defined.insert(name.clone());
            let mut def = types[name.as_str()].clone();
            expand(&mut def, types, defined);
            *v = def;
        }
        Value::Array(items) => items.iter_mut().for_each(|i| expand(i, types, defined)),
        Value::Object(map) => {
            // Only the places a type can appear: "type", "items", "values" and union members.
            for key in ["type", "items", "values", "fields"] {
                if let Some(child) = map.get_mut(key) {
                    expand(child, types, defined);
                }
            }
        }
        _ => {}
    }
}
