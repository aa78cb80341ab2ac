//! The lake on a directory: where files go, and the manifest that makes a file count.
//!
//! ```text
//! <root>/<topic>/date=YYYY-MM-DD/part-<partition>-<first offset>-<last offset>.parquet
//! <root>/<topic>/_manifest/<partition>/<seq>.json
//! <root>/_staging/<topic>/…
//! ```
//!
//! **A commit is one manifest version,** `<seq>.json`: the files it adds and the partition's
//! next offset. Versions are never rewritten. Version `seq + 1` is created by `link(2)`ing a
//! finished, fsynced temporary file to its name, which fails if the name exists: a
//! compare-and-swap that no two writers can both win. A writer that loses (two replicas writing
//! one partition for the moment of a rebalance) learns where the partition now stands and
//! writes only its rows above that (`LakeSink`'s `write_partition`), so nothing is written twice
//! and nothing skipped.
//!
//! **A file is written in staging first, then committed, then renamed into place** (a redo
//! log): a glob reader (`read_parquet('<root>/<topic>/*/*.parquet')`) never sees a file that is
//! not committed. A crash between commit and rename leaves the rename to whoever opens the
//! partition next ([`Lake::open`] finishes it). Staged files nobody committed are removed by
//! `open` once they are older than [`STALE_STAGING`].

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Staged files older than this that no manifest lists are left-overs of a crash. (A live
/// writer commits within seconds of staging; one stalled this long lost its partition long ago.)
pub const STALE_STAGING: Duration = Duration::from_secs(600);

/// One manifest version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub topic: String,
    pub partition: i32,
    pub seq: u64,
    /// Records below this offset are in the lake (in this version's files or earlier ones), or
    /// were not for it (dead-lettered).
    pub next_offset: i64,
    pub files: Vec<DataFile>,
    /// The replica that committed it.
    pub writer: String,
    /// Milliseconds since the epoch.
    pub committed_at: i64,
}

/// A committed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Relative to the topic's directory: `date=…/part-….parquet`.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// Where a partition stands: the latest version's sequence number and next offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub seq: u64,
    pub next_offset: i64,
}

/// A file written to staging, not yet committed.
#[derive(Debug)]
pub struct Staged {
    staging: PathBuf,
    pub file: DataFile,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    Committed(Position),
    /// Another writer committed first; this is where the partition stands now.
    Lost(Position),
}

/// The lake's root directory, as one writer (replica) sees it.
#[derive(Debug, Clone)]
pub struct Lake {
    root: PathBuf,
    writer: String,
}

impl Lake {
    pub fn new(root: impl Into<PathBuf>, writer: impl Into<String>) -> Self {
        Lake {
            root: root.into(),
            writer: writer.into(),
        }
    }

    fn manifest_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.root
            .join(topic)
            .join("_manifest")
            .join(partition.to_string())
    }

    fn staging_dir(&self, topic: &str) -> PathBuf {
        self.root.join("_staging").join(topic)
    }

    /// Every version of a partition's manifest, oldest first.
    pub fn versions(&self, topic: &str, partition: i32) -> io::Result<Vec<Version>> {
        let dir = self.manifest_dir(topic, partition);
        let mut seqs: Vec<u64> = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(e),
        };
        seqs.sort_unstable();
        seqs.iter()
            .map(|seq| {
                let bytes = fs::read(dir.join(format!("{seq}.json")))?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            })
            .collect()
    }

    fn latest(&self, topic: &str, partition: i32) -> io::Result<Option<Version>> {
        Ok(self.versions(topic, partition)?.pop())
    }

    /// Takes a partition over: finishes the latest commit's renames (a crash may have come
    /// between commit and rename), removes stale staged files of the partition, and says
    /// where it stands.
    pub fn open(&self, topic: &str, partition: i32) -> io::Result<Position> {
        let Some(latest) = self.latest(topic, partition)? else {
            self.remove_stale_staging(topic, partition)?;
            return Ok(Position::default());
        };
        self.publish(&latest)?;
        self.remove_stale_staging(topic, partition)?;
        Ok(Position {
            seq: latest.seq,
            next_offset: latest.next_offset,
        })
    }

    /// Writes a file to staging with `write`, and fsyncs it. Its final name says which
    /// partition and offsets it holds, and its date.
    pub fn stage(
        &self,
        topic: &str,
        partition: i32,
        date: &str,
        (first_offset, last_offset): (i64, i64),
        rows: u64,
        write: impl FnOnce(&mut fs::File) -> io::Result<()>,
    ) -> io::Result<Staged> {
        let name = format!("part-{partition}-{first_offset}-{last_offset}.parquet");
        let dir = self.staging_dir(topic);
        fs::create_dir_all(&dir)?;
        // The writer's id in the staged name: two replicas staging the same range (one of
        // them stale) never share a file.
        let staging = dir.join(format!("date={date}.{name}.{}", self.writer));
        let mut f = fs::File::create(&staging)?;
        write(&mut f)?;
        f.sync_all()?;
        let bytes = f.metadata()?.len();
        Ok(Staged {
            staging,
            file: DataFile {
                path: format!("date={date}/{name}"),
                rows,
                bytes,
                first_offset,
                last_offset,
            },
        })
    }

    /// Commits `staged` and `next_offset` as the version after `at`, then renames the files
    /// into place. On [`Commit::Lost`] the staged files are removed: they are not the lake's.
    pub fn commit(
        &self,
        topic: &str,
        partition: i32,
        at: Position,
        staged: Vec<Staged>,
        next_offset: i64,
    ) -> io::Result<Commit> {
        let version = Version {
            topic: topic.to_owned(),
            partition,
            seq: at.seq + 1,
            next_offset,
            files: staged.iter().map(|s| s.file.clone()).collect(),
            writer: self.writer.clone(),
            committed_at: now_millis(),
        };
        let dir = self.manifest_dir(topic, partition);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.{}.tmp", version.seq, self.writer));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&version).expect("a version is JSON"))?;
            f.sync_all()?;
        }
        let name = dir.join(format!("{}.json", version.seq));
        let linked = fs::hard_link(&tmp, &name);
        fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let latest = self
                    .latest(topic, partition)?
                    .expect("a version exists: linking found it");
                // The winner may be this writer itself, retrying a commit whose rename failed:
                // its files (staged again under the same names) go into place first.
                self.publish(&latest)?;
                for s in &staged {
                    remove_if_there(&s.staging)?;
                }
                let at = Position {
                    seq: latest.seq,
                    next_offset: latest.next_offset,
                };
                let ours = latest.seq == version.seq
                    && latest.writer == self.writer
                    && latest.next_offset == next_offset;
                return Ok(if ours {
                    Commit::Committed(at)
                } else {
                    Commit::Lost(at)
                });
            }
            Err(e) => return Err(e),
        }
        sync_dir(&dir)?;
        for s in &staged {
            self.rename_into_place(topic, &s.staging, &s.file)?;
        }
        Ok(Commit::Committed(Position {
            seq: version.seq,
            next_offset,
        }))
    }

    /// The committed files of `version` in place (after a crash, from staging).
    fn publish(&self, version: &Version) -> io::Result<()> {
        let dir = self.staging_dir(&version.topic);
        let entries: Vec<PathBuf> = match fs::read_dir(&dir) {
            Ok(e) => e.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(e),
        };
        for file in &version.files {
            if self.root.join(&version.topic).join(&file.path).exists() {
                continue;
            }
            let staged_name = format!("{}.{}", file.path.replace('/', "."), version.writer);
            match entries.iter().find(|p| p.file_name().and_then(|n| n.to_str()) == Some(&staged_name)) {
                Some(staging) => self.rename_into_place(&version.topic, staging, file)?,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "{}: manifest version {} lists {} but neither it nor its staged copy exists",
                            version.topic, version.seq, file.path
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    fn rename_into_place(&self, topic: &str, staging: &Path, file: &DataFile) -> io::Result<()> {
        let target = self.root.join(topic).join(&file.path);
        let dir = target.parent().expect("date directory");
        fs::create_dir_all(dir)?;
        match fs::rename(staging, &target) {
            Ok(()) => {}
            // Another replica finishing the same commit moved it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound && target.exists() => {}
            Err(e) => return Err(e),
        }
        sync_dir(dir)
    }

    fn remove_stale_staging(&self, topic: &str, partition: i32) -> io::Result<()> {
        let prefix = format!("part-{partition}-");
        let entries = match fs::read_dir(self.staging_dir(topic)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            // `date=D.part-P-…`: this partition's.
            let ours = name
                .split_once('.')
                .is_some_and(|(_, rest)| rest.starts_with(&prefix));
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            if ours && age > STALE_STAGING {
                tracing::info!(
                    file = name,
                    "removing a staged file no manifest lists (left by a crash)"
                );
                remove_if_there(&e.path())?;
            }
        }
        Ok(())
    }
}

fn remove_if_there(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A directory's entries durable (a rename or link is only durable once its directory is).
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("posflow-lake-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn stage(lake: &Lake, first: i64, last: i64) -> Staged {
        lake.stage(
            "t",
            0,
            "2026-12-04",
            (first, last),
            (last - first + 1) as u64,
            |f| f.write_all(format!("{first}-{last}").as_bytes()),
        )
        .unwrap()
    }

    fn placed(root: &Path) -> Vec<String> {
        let mut out = vec![];
        if let Ok(dir) = fs::read_dir(root.join("t/date=2026-12-04")) {
            out = dir
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
        }
        out.sort();
        out
    }

    #[test]
    fn commits_follow_one_another_and_a_stale_writer_loses() {
        let root = tempdir();
        let a = Lake::new(&root, "a");
        let b = Lake::new(&root, "b");
        let at = a.open("t", 0).unwrap();
        assert_eq!(at, Position::default());
        let Commit::Committed(at) = a.commit("t", 0, at, vec![stage(&a, 0, 9)], 10).unwrap() else {
            panic!("first commit lost")
        };
        assert_eq!(
            at,
            Position {
                seq: 1,
                next_offset: 10
            }
        );
        // b takes the partition over; a, not knowing, commits after the same version.
        let b_at = b.open("t", 0).unwrap();
        assert_eq!(b_at, at);
        let won = b.commit("t", 0, b_at, vec![stage(&b, 10, 19)], 20).unwrap();
        assert_eq!(
            won,
            Commit::Committed(Position {
                seq: 2,
                next_offset: 20
            })
        );
        let lost = a.commit("t", 0, at, vec![stage(&a, 10, 14)], 15).unwrap();
        assert_eq!(
            lost,
            Commit::Lost(Position {
                seq: 2,
                next_offset: 20
            })
        );
        assert_eq!(
            placed(&root),
            ["part-0-0-9.parquet", "part-0-10-19.parquet"]
        );
        assert_eq!(fs::read_dir(root.join("_staging/t")).unwrap().count(), 0);
        let versions = a.versions("t", 0).unwrap();
        assert_eq!(
            versions
                .iter()
                .map(|v| v.writer.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        fs::remove_dir_all(root).unwrap();
    }

    /// A crash between the commit and the rename: the next `open` puts the file in place.
    #[test]
    fn open_finishes_a_commit_whose_rename_a_crash_interrupted() {
        let root = tempdir();
        let a = Lake::new(&root, "a");
        let s = stage(&a, 0, 4);
        let at = a.open("t", 0).unwrap();
        let Commit::Committed(_) = a.commit("t", 0, at, vec![s], 5).unwrap() else {
            panic!()
        };
        // Undo the rename, as if the crash came just before it.
        let placed_at = root.join("t/date=2026-12-04/part-0-0-4.parquet");
        fs::rename(
            &placed_at,
            root.join("_staging/t/date=2026-12-04.part-0-0-4.parquet.a"),
        )
        .unwrap();
        assert!(placed(&root).is_empty());
        let b = Lake::new(&root, "b");
        assert_eq!(
            b.open("t", 0).unwrap(),
            Position {
                seq: 1,
                next_offset: 5
            }
        );
        assert_eq!(placed(&root), ["part-0-0-4.parquet"]);
        assert_eq!(fs::read(placed_at).unwrap(), b"0-4");
        fs::remove_dir_all(root).unwrap();
    }

    /// A commit whose rename failed is retried by the same writer: the retry finds its own
    /// version, puts the file in place and counts as committed, not lost.
    #[test]
    fn a_retried_commit_finds_its_own_version() {
        let root = tempdir();
        let a = Lake::new(&root, "a");
        let at = a.open("t", 0).unwrap();
        let Commit::Committed(_) = a.commit("t", 0, at, vec![stage(&a, 0, 4)], 5).unwrap() else {
            panic!()
        };
        // As if the rename had failed: the file back in staging, the writer unaware of seq 1.
        fs::rename(
            root.join("t/date=2026-12-04/part-0-0-4.parquet"),
            root.join("_staging/t/date=2026-12-04.part-0-0-4.parquet.a"),
        )
        .unwrap();
        let again = a.commit("t", 0, at, vec![stage(&a, 0, 4)], 5).unwrap();
        assert_eq!(
            again,
            Commit::Committed(Position {
                seq: 1,
                next_offset: 5
            })
        );
        assert_eq!(placed(&root), ["part-0-0-4.parquet"]);
        assert_eq!(a.versions("t", 0).unwrap().len(), 1);
        // Another writer doing the same is told it lost.
        let b = Lake::new(&root, "b");
        let lost = b.commit("t", 0, at, vec![stage(&b, 0, 4)], 5).unwrap();
        assert_eq!(
            lost,
            Commit::Lost(Position {
                seq: 1,
                next_offset: 5
            })
        );
        fs::remove_dir_all(root).unwrap();
    }

    /// A staged file nobody committed is removed once stale, and only then.
    #[test]
    fn open_removes_stale_uncommitted_staging_only() {
        let root = tempdir();
        let a = Lake::new(&root, "a");
        let s = stage(&a, 0, 4);
        a.open("t", 0).unwrap();
        assert!(
            s.staging.exists(),
            "a fresh staged file may be about to be committed"
        );
        let old = SystemTime::now() - STALE_STAGING - Duration::from_secs(1);
        fs::File::options()
            .write(true)
            .open(&s.staging)
            .unwrap()
            .set_modified(old)
            .unwrap();
        a.open("t", 1).unwrap();
        assert!(s.staging.exists(), "another partition's open leaves it");
        a.open("t", 0).unwrap();
        assert!(!s.staging.exists());
        fs::remove_dir_all(root).unwrap();
    }
}
