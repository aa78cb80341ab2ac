//! The schema gate (docs/schemas.md). Every released version of every value schema is kept in
//! `schemas/history/<topic>/v<N>.avsc`, self-contained as registered. A change must be compatible
//! with all of them in both directions (FULL_TRANSITIVE): during a rolling upgrade old and new
//! replicas produce and consume side by side (old readers meet new records, new readers old
//! ones), and analysts replay topics from the beginning with whichever version they hold.

use crate::catalogue::{resolve_dir, ValueSchema};
use crate::registry::{Registry, RegistryError};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Every subject's compatibility level. Provisioning sets it before each registration, so a
/// deploy can only tighten a subject that was looser, never loosen one.
pub const COMPATIBILITY: &str = "FULL_TRANSITIVE";

/// One released version of a value schema.
pub struct Released {
    pub version: u32,
    pub path: PathBuf,
    pub json: String,
}

/// The released versions of `schema`, oldest first (none when it has no directory yet). The
/// numbering must run v1, v2, ... without a gap: a released version is never deleted.
pub fn released(history: &Path, schema: ValueSchema) -> Result<Vec<Released>, String> {
    let dir = history.join(schema.stem());
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let version = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix('v')?.strip_suffix(".avsc")?.parse().ok())
            .ok_or_else(|| format!("{}: not named v<N>.avsc", path.display()))?;
        let json =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push(Released {
            version,
            path,
            json,
        });
    }
    out.sort_by_key(|r| r.version);
    for (expected, r) in (1..).zip(&out) {
        if r.version != expected {
            return Err(format!(
                "{}: v{expected} is missing (released versions are never deleted)",
                dir.display()
            ));
        }
    }
    Ok(out)
}

/// Whether two schema texts say the same thing, formatting aside. (Not the Parsing Canonical
/// Form: it drops defaults and docs, which a release must record.)
pub fn same(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// What the gate found for one value schema.
pub struct Verdict {
    pub schema: ValueSchema,
    /// Released versions registered before the working copy.
    pub released: usize,
    /// The working copy differs from the last released version.
    pub unreleased_change: bool,
    /// What the registry refused and its own message; `None`: compatible.
    pub refused: Option<String>,
}

/// For each value schema: a scratch subject named after `run`, set to [`COMPATIBILITY`], then its
/// released versions in order and the working copy under `schemas` registered. Scratch subjects
/// are deleted afterwards. Errors: unreadable files, a schema never released, a registry that
/// cannot be reached; an incompatible change is a verdict, not an error.
pub async fn check(
    registry: &Registry,
    schemas: &Path,
    history: &Path,
    run: &str,
) -> Result<Vec<Verdict>, String> {
    let mut verdicts = Vec::new();
    for (schema, working) in resolve_dir(schemas)? {
        let released = released(history, schema)?;
        let Some(last) = released.last() else {
            return Err(format!(
                "{}: no released version under {} (make schema-release)",
                schema.stem(),
                history.display()
            ));
        };
        let subject = format!("schema-check-{run}.{}-value", schema.stem());
        let refused = register_in_order(registry, &subject, &released, &working).await;
        // Best effort: a scratch subject left behind is only clutter.
        let _ = registry.delete_subject(&subject).await;
        verdicts.push(Verdict {
            schema,
            released: released.len(),
            unreleased_change: !same(&last.json, &working),
            refused: refused.map_err(|e| format!("{}: {e}", schema.stem()))?,
        });
    }
    Ok(verdicts)
}

async fn register_in_order(
    registry: &Registry,
    subject: &str,
    released: &[Released],
    working: &str,
) -> Result<Option<String>, RegistryError> {
    registry.set_compatibility(subject, COMPATIBILITY).await?;
    let versions = released
        .iter()
        .map(|r| (format!("released v{}", r.version), r.json.as_str()));
    for (what, json) in versions.chain([("the working copy".to_string(), working)]) {
        match registry.register(subject, json).await {
            Ok(_) => {}
            Err(RegistryError::Refused { status, body }) => {
                return Ok(Some(format!(
                    "{what} refused (HTTP {status}): {}",
                    message(&body)
                )))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The registry's own words: the `message` of its JSON error body, else the body.
fn message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

/// Records the working copy of each value schema that differs from its last released version
/// as the next one (`v1` for a schema never released), pretty-printed. Returns what it wrote.
pub fn release(schemas: &Path, history: &Path) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    for (schema, working) in resolve_dir(schemas)? {
        let released = released(history, schema)?;
        if released.last().is_some_and(|r| same(&r.json, &working)) {
            continue;
        }
        let dir = history.join(schema.stem());
        let path = dir.join(format!("v{}.avsc", released.len() + 1));
        let value: Value = serde_json::from_str(&working).map_err(|e| e.to_string())?;
        let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())? + "\n";
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    fn repo(dir: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../..")
            .join(dir)
    }

    /// A schema change lands with its release: the last released version of every schema is
    /// what the binaries are built with, so the gate checks what ships.
    #[test]
    fn the_last_released_version_of_every_schema_is_the_one_compiled_in() {
        for schema in ValueSchema::iter() {
            let released = released(&repo("schemas/history"), schema).unwrap();
            let last = released
                .last()
                .unwrap_or_else(|| panic!("{} was never released", schema.stem()));
            assert!(
                same(&last.json, schema.json()),
                "{} changed since {}: run make schema-check, then make schema-release",
                schema.stem(),
                last.path.display()
            );
        }
    }

    #[test]
    fn release_writes_the_next_version_only_for_a_changed_schema() {
        let scratch = std::env::temp_dir().join(format!("posflow-gate-{}", rand::random::<u64>()));
        let (schemas, history) = (scratch.join("schemas"), scratch.join("history"));
        copy_dir(&repo("schemas"), &schemas);
        let first = release(&schemas, &history).unwrap();
        assert_eq!(first.len(), ValueSchema::iter().count());
        assert!(release(&schemas, &history).unwrap().is_empty());
        // Reformatting is not a change; a new optional field is.
        let audit = schemas.join(ValueSchema::AuditRecord.file());
        let mut doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&audit).unwrap()).unwrap();
        std::fs::write(&audit, serde_json::to_string(&doc).unwrap()).unwrap();
        assert!(release(&schemas, &history).unwrap().is_empty());
        doc["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                {"name": "note", "type": ["null", "string"], "default": null}
            ));
        std::fs::write(&audit, serde_json::to_string(&doc).unwrap()).unwrap();
        let second = release(&schemas, &history).unwrap();
        assert_eq!(second, vec![history.join("pos.audit").join("v2.avsc")]);
        let versions = released(&history, ValueSchema::AuditRecord).unwrap();
        assert_eq!(
            versions.iter().map(|r| r.version).collect::<Vec<_>>(),
            [1, 2]
        );
        // A gap in the numbering is refused.
        std::fs::remove_file(history.join("pos.audit").join("v1.avsc")).unwrap();
        let gap = released(&history, ValueSchema::AuditRecord).err().unwrap();
        assert!(gap.contains("v1 is missing"), "{gap}");
        std::fs::remove_dir_all(&scratch).unwrap();
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap();
            if path.is_dir() {
                if name != "history" {
                    copy_dir(&path, &to.join(name));
                }
            } else {
                std::fs::copy(&path, to.join(name)).unwrap();
            }
        }
    }
}
