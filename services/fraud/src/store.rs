//! The local state store (`--state-dir`): a copy on the replica's own disk of the state
//! records of the partitions it holds, so a replica restarted on the same disk reopens its
//! state instead of reading it back from the state topics (docs/fraud.md, "Local state store").
//!
//! The state topic stays the truth; the store is a cache of what *committed* there, kept by
//! offset, as Kafka Streams keeps RocksDB and a checkpoint file:
//! - it takes only records whose Kafka transaction committed (the pipeline hands them back with
//!   their offsets, `TxnContext::take_committed`), so an aborted batch never reaches it;
//! - per state partition it remembers the offset after the last record it holds (the mark)
//!   and the partition's watermark, written in the same redb transaction as the records;
//! - taking a partition over reads the state partition from the mark (the tail: what committed
//!   since the last write) into the queue, then judges at once. A key's history comes from the
//!   store the first time one of its transactions comes: with every other key of its *bucket*
//!   (one of [`BUCKETS`] by a hash of the key), read in one range. The blind time after a
//!   restart is the tail's, not the state's.
//!
//! **Layout, chosen by measurement** (issue 23): a row per record keyed `feed · partition ·
//! epoch · bucket · offset`. Each write appends at the end of its buckets' ranges, so a write
//! touches a few pages per bucket whatever the store's size: 3 µs a record at 2,000,000 rows,
//! where rows keyed by card and time (random places in the tree) cost 16 µs and grew with the
//! store. The epoch is the partition's watermark at the write, in hours: an epoch more than the
//! horizon behind the watermark holds only records older than the horizon, and goes whole.
//!
//! Writes happen on a thread of their own, once a second, one fsynced redb transaction with
//! quick repair (a file left by a killed process opens without a walk over it). Records queued
//! or being written are read from memory. A kill loses what was not written yet; the tail
//! reads it again. A record written twice is harmless (filed twice into a history, it is kept
//! once).

use crate::changelog;
use crate::engine::Feed;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// State rows: `feed · partition · epoch · bucket · offset` → `u16 key length · key · record`.
const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows");
/// Per state partition, `feed · partition` → `next offset · watermark · first epoch` (i64 each,
/// big endian); and [`IDENTITY`] → what the store copies.
const META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");
const IDENTITY: &[u8] = b"identity";

/// Keys of a partition are spread over this many buckets; a key's history is read with its
/// bucket's. More buckets: smaller reads after a restart, more pages touched per write.
pub const BUCKETS: u16 = 256;
const EPOCH_MS: i64 = 3_600_000;

/// Why the store failed: its file, or a record that does not decode.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("local state store: {0}")]
    Db(String),
    #[error("local state store: {0}")]
    Record(#[from] changelog::Error),
}

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Db(e.to_string())
            }
        }
    )*};
}
db_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One state partition: a feed's state topic and a partition.
pub type Part = (Feed, i32);

/// Where a state partition's copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The state topic offset after the last record held.
    pub next: i64,
    /// The newest transaction time among them.
    pub watermark: i64,
}

/// A record committed to a state partition.
#[derive(Debug)]
struct Row {
    offset: i64,
    key: String,
    record: Vec<u8>,
}

/// A state record with its key (the card token or terminal).
pub type Keyed = (String, Vec<u8>);

/// Records by partition and bucket.
type Rows = HashMap<(Part, u16), Vec<Row>>;

/// The replica's store: one redb file for all its partitions (one fsync per write).
pub struct Store {
    db: Arc<Database>,
    /// Committed records not yet handed to the writer.
    queued: Rows,
    /// The records the writer is writing, until it is done.
    writing: Arc<Mutex<Option<Arc<Rows>>>>,
    /// The writer's last failure, and the rows it has pruned.
    failed: Arc<Mutex<Option<Error>>>,
    pruned: Arc<std::sync::atomic::AtomicU64>,
    /// Buckets already read into memory, per partition, since it was taken over.
    read: HashSet<(Part, u16)>,
}

fn part_prefix(part: Part) -> [u8; 5] {
    let mut p = [0u8; 5];
    p[0] = match part.0 {
        Feed::Card => b'c',
        Feed::Terminal => b't',
    };
    p[1..].copy_from_slice(&part.1.to_be_bytes());
    p
}

/// A key's bucket: FNV-1a, the same in every process and release.
pub fn bucket(key: &str) -> u16 {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % u64::from(BUCKETS)) as u16
}

fn epoch(watermark: i64) -> u32 {
    (watermark.max(0) / EPOCH_MS) as u32
}

/// Offsets are never negative, so their big-endian bytes sort as the numbers do.
fn row_key(part: Part, epoch: u32, bucket: u16, offset: i64) -> [u8; 19] {
    let mut k = [0u8; 19];
    k[..5].copy_from_slice(&part_prefix(part));
    k[5..9].copy_from_slice(&epoch.to_be_bytes());
    k[9..11].copy_from_slice(&bucket.to_be_bytes());
    k[11..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Per-partition meta: the mark and the first epoch it may still have rows in.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mark: Mark,
    first_epoch: u32,
}

fn encode_meta(m: Meta) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(&m.mark.next.to_be_bytes());
    b[8..16].copy_from_slice(&m.mark.watermark.to_be_bytes());
    b[16..].copy_from_slice(&i64::from(m.first_epoch).to_be_bytes());
    b
}

fn decode_meta(b: &[u8]) -> Meta {
    let n = |r: std::ops::Range<usize>| {
        i64::from_be_bytes(b.get(r).and_then(|s| s.try_into().ok()).unwrap_or([0; 8]))
    };
    Meta {
        mark: Mark {
            next: n(0..8),
            watermark: n(8..16),
        },
        first_epoch: n(16..24) as u32,
    }
}

impl Store {
    /// Opens (or creates) the store at `path` for `identity` (the cluster and the state
    /// topics it copies). A store of another identity is emptied first: its marks are offsets
    /// of other topics. Only one process may hold it: each replica keeps its own under its
    /// instance id.
    pub fn open(path: &Path, identity: &str) -> Result<Self, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Db(format!("{}: {e}", dir.display())))?;
        }
        let db =
            Database::create(path).map_err(|e| Error::Db(format!("{}: {e}", path.display())))?;
        let tx = write(&db)?;
        {
            let mut meta = tx.open_table(META)?;
            let same = meta
                .get(IDENTITY)?
                .is_some_and(|v| v.value() == identity.as_bytes());
            if !same {
                meta.retain(|_, _| false)?;
                meta.insert(IDENTITY, identity.as_bytes())?;
                tx.open_table(ROWS)?.retain(|_, _| false)?;
            }
        }
        tx.commit()?;
        Ok(Self {
            db: Arc::new(db),
            queued: HashMap::new(),
            writing: Default::default(),
            failed: Default::default(),
            pruned: Default::default(),
            read: HashSet::new(),
        })
    }

    /// Where `part`'s copy stands on disk; `None`: nothing written for it.
    pub fn mark(&self, part: Part) -> Result<Option<Mark>, Error> {
        Ok(meta_of(&self.db, part)?.map(|m| m.mark))
    }

    /// `part` was taken over: its state in memory starts empty, so every bucket is read again
    /// when first needed.
    pub fn taken_over(&mut self, part: Part) {
        self.read.retain(|(p, _)| *p != part);
    }

    /// Drops everything held for `part` (a copy ahead of its state topic: another incarnation
    /// of the topic). Waits for a write in progress.
    pub fn clear(&mut self, part: Part) -> Result<(), Error> {
        self.wait_for_writer();
        self.queued.retain(|(p, _), _| *p != part);
        let tx = write(&self.db)?;
        {
            let p = part_prefix(part);
            let end = prefix_end(&p);
            tx.open_table(ROWS)?
                .retain_in(&p[..]..&end[..], |_, _| false)?;
            tx.open_table(META)?.remove(&p[..])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn wait_for_writer(&self) {
        while self.writing.lock().expect("poisoned").is_some()
            && self.failed.lock().expect("poisoned").is_none()
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Queues a committed record of `part` for the next write.
    pub fn add(&mut self, part: Part, offset: i64, key: String, record: Vec<u8>) {
        self.queued
            .entry((part, bucket(&key)))
            .or_default()
            .push(Row {
                offset,
                key,
                record,
            });
    }

    /// Records waiting for the next write.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queued.values().map(Vec::len).sum()
    }

    /// Rows pruned since the last call.
    pub fn take_pruned(&self) -> u64 {
        self.pruned.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands the queued records to a writer thread, unless one is still busy (they then wait
    /// for the next call). The writer appends them, advances each partition's mark and drops
    /// its epochs wholly more than `horizon_ms(feed)` behind the watermark, in one durable
    /// transaction. A failed write shows here and in every later call: the stage then drops
    /// the store (its rows stay readable as unwritten until then).
    pub fn flush(&mut self, horizon_ms: impl Fn(Feed) -> i64) -> Result<(), Error> {
        if let Some(e) = self.failed.lock().expect("poisoned").clone() {
            return Err(e);
        }
        if self.queued.is_empty() {
            return Ok(());
        }
        let mut writing = self.writing.lock().expect("poisoned");
        if writing.is_some() {
            return Ok(());
        }
        let rows = Arc::new(std::mem::take(&mut self.queued));
        *writing = Some(rows.clone());
        drop(writing);
        let horizons = [horizon_ms(Feed::Card), horizon_ms(Feed::Terminal)];
        let (db, slot, failed, pruned) = (
            self.db.clone(),
            self.writing.clone(),
            self.failed.clone(),
            self.pruned.clone(),
        );
        std::thread::Builder::new()
            .name("fraud-store".into())
            .spawn(move || {
                match write_rows(&db, &rows, horizons) {
                    Ok(n) => {
                        pruned.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        *slot.lock().expect("poisoned") = None;
                    }
                    // The rows stay in the slot: nothing reads past them as written.
                    Err(e) => *failed.lock().expect("poisoned") = Some(e),
                }
            })
            .map_err(|e| Error::Db(format!("starting the store's writer: {e}")))?;
        Ok(())
    }

    /// Writes whatever is queued and waits until it is on disk (tests, and a clean stop).
    pub fn sync(&mut self, horizon_ms: impl Fn(Feed) -> i64) -> Result<(), Error> {
        self.wait_for_writer();
        self.flush(horizon_ms)?;
        self.wait_for_writer();
        match self.failed.lock().expect("poisoned").clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The state records of `key`'s bucket in `part` — every key's, as `(key, record)` —
    /// unless the bucket was read since the partition was taken over (then `None`: what it
    /// holds is in memory already, or older than the horizon). Written rows first, oldest
    /// first, then those being written and queued; one record may come twice.
    pub fn read_bucket(&mut self, part: Part, key: &str) -> Result<Option<Vec<Keyed>>, Error> {
        if let Some(e) = self.failed.lock().expect("poisoned").clone() {
            return Err(e);
        }
        let b = bucket(key);
        if !self.read.insert((part, b)) {
            return Ok(None);
        }
        // What is being written first, then the file: a write that commits in between is
        // then read twice (harmless), never missed.
        let writing = self.writing.lock().expect("poisoned").clone();
        let mut out = Vec::new();
        let tx = self.db.begin_read().map_err(|e| Error::Db(e.to_string()))?;
        if let Some(meta) = meta_in(&tx, part)? {
            let rows = tx.open_table(ROWS)?;
            for e in meta.first_epoch..=epoch(meta.mark.watermark) {
                let from = row_key(part, e, b, 0);
                let to = row_key(part, e, b, i64::MAX);
                for r in rows.range(&from[..]..=&to[..])? {
                    out.push(split_value(r?.1.value())?);
                }
            }
        }
        for rows in writing.iter().map(|w| &**w).chain([&self.queued]) {
            for r in rows.get(&(part, b)).into_iter().flatten() {
                out.push((r.key.clone(), r.record.clone()));
            }
        }
        Ok(Some(out))
    }
}

/// The first byte string after every one starting with `p`.
fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; p.len() + 1]
}

fn write(db: &Database) -> Result<redb::WriteTransaction, Error> {
    let mut tx = db.begin_write()?;
    // Saves the allocator state with each commit: a store left by a killed process opens
    // without walking the whole file (the default repair does, in proportion to its size).
    tx.set_quick_repair(true);
    Ok(tx)
}

fn meta_of(db: &Database, part: Part) -> Result<Option<Meta>, Error> {
    let tx = db.begin_read().map_err(|e| Error::Db(e.to_string()))?;
    meta_in(&tx, part)
}

fn meta_in(tx: &redb::ReadTransaction, part: Part) -> Result<Option<Meta>, Error> {
    let meta = tx.open_table(META)?;
    Ok(meta
        .get(&part_prefix(part)[..])?
        .map(|v| decode_meta(v.value())))
}

fn split_value(v: &[u8]) -> Result<Keyed, Error> {
    let bad = || Error::Record(changelog::Error::Malformed);
    let n = usize::from(u16::from_le_bytes(
        v.get(..2).and_then(|s| s.try_into().ok()).ok_or_else(bad)?,
    ));
    let key = v.get(2..2 + n).ok_or_else(bad)?;
    let key = std::str::from_utf8(key).map_err(|_| bad())?.to_string();
    Ok((key, v[2 + n..].to_vec()))
}

/// One write: the rows appended, the marks advanced, old epochs dropped. Returns the rows
/// dropped.
fn write_rows(db: &Database, rows: &Rows, horizons: [i64; 2]) -> Result<u64, Error> {
    // Each partition's new mark first: its epoch is where this write's rows go.
    let mut metas: std::collections::BTreeMap<Part, Meta> = Default::default();
    for ((part, _), rs) in rows {
        let meta = match metas.get(part) {
            Some(m) => *m,
            None => meta_of(db, *part)?.unwrap_or(Meta {
                mark: Mark {
                    next: 0,
                    watermark: 0,
                },
                first_epoch: u32::MAX,
            }),
        };
        let mut m = meta;
        for r in rs {
            let time = changelog::decode(&r.record)?.0.time;
            m.mark.next = m.mark.next.max(r.offset + 1);
            m.mark.watermark = m.mark.watermark.max(time);
        }
        metas.insert(*part, m);
    }
    let tx = write(db)?;
    let mut pruned = 0;
    {
        let mut table = tx.open_table(ROWS)?;
        let mut sorted: Vec<(&(Part, u16), &Vec<Row>)> = rows.iter().collect();
        sorted.sort_by_key(|(k, _)| **k);
        let mut value = Vec::new();
        for ((part, b), rs) in sorted {
            let e = epoch(metas[part].mark.watermark);
            for r in rs {
                value.clear();
                let k = &r.key.as_bytes()[..r.key.len().min(usize::from(u16::MAX))];
                value.extend_from_slice(&(k.len() as u16).to_le_bytes());
                value.extend_from_slice(k);
                value.extend_from_slice(&r.record);
                table.insert(&row_key(*part, e, *b, r.offset)[..], &value[..])?;
            }
        }
        let mut meta_table = tx.open_table(META)?;
        for (part, mut m) in metas {
            let current = epoch(m.mark.watermark);
            m.first_epoch = m.first_epoch.min(current);
            // Epoch e holds records no newer than (e + 1) h: gone once that is a horizon behind.
            let horizon = horizons[usize::from(part.0 == Feed::Terminal)];
            let keep_from = epoch(m.mark.watermark.saturating_sub(horizon)).min(current);
            if keep_from > m.first_epoch {
                let from = row_key(part, m.first_epoch, 0, 0);
                let to = row_key(part, keep_from, 0, 0);
                let before = table.len()?;
                table.retain_in(&from[..]..&to[..], |_, _| false)?;
                pruned += before - table.len()?;
                m.first_epoch = keep_from;
            }
            meta_table.insert(&part_prefix(part)[..], &encode_meta(m)[..])?;
        }
    }
    tx.commit()?;
    Ok(pruned)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::Event;

    /// A fresh path under the system's temporary directory.
    pub(crate) fn temp_path(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "posflow-fraud-store-{}-{name}/fraud-state.redb",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn record(id: &str, time: i64) -> Vec<u8> {
        changelog::encode(
            &Event {
                id: id.into(),
                time,
                amount_minor: 100,
                currency: *b"EUR",
                approved: true,
                location: None,
                merchant_id: "M1".into(),
                terminal_id: "T1".into(),
            },
            &[],
        )
    }

    /// The ids of `key`'s records in its bucket, sorted.
    fn ids(got: Option<Vec<Keyed>>, key: &str) -> Vec<String> {
        let mut ids: Vec<String> = got
            .unwrap()
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, r)| changelog::decode(r).unwrap().0.id.to_string())
            .collect();
        ids.sort();
        ids
    }

    const H: i64 = 3_600_000;

    #[test]
    fn a_store_keeps_committed_records_by_bucket_and_drops_the_past_by_epoch() {
        let path = temp_path("order");
        let (a, b) = ((Feed::Card, 0), (Feed::Terminal, 0));
        let horizon = |_| 2 * H;
        let mut s = Store::open(&path, "cluster|a|b").unwrap();
        assert_eq!(s.mark(a).unwrap(), None);
        // One twice (a record read back by a tail as well as handed back).
        s.add(a, 10, "k".into(), record("x2", 10 * H + 2));
        s.add(a, 11, "k".into(), record("x1", 10 * H + 1));
        s.add(a, 12, "k2".into(), record("y", 10 * H + 5));
        s.add(b, 5, "k".into(), record("t", 9 * H));
        s.add(a, 10, "k".into(), record("x2", 10 * H + 2));
        assert_eq!(s.queued(), 5);
        // Queued records are read too.
        assert_eq!(ids(s.read_bucket(a, "k").unwrap(), "k"), ["x1", "x2", "x2"]);
        // Read once per takeover.
        assert!(s.read_bucket(a, "k").unwrap().is_none());
        s.sync(horizon).unwrap();
        assert_eq!(s.queued(), 0);
        assert_eq!(
            s.mark(a).unwrap(),
            Some(Mark {
                next: 13,
                watermark: 10 * H + 5
            })
        );
        drop(s);
        // Reopened: as it was. A bucket's read brings every key of it.
        let mut s = Store::open(&path, "cluster|a|b").unwrap();
        let k_bucket = s.read_bucket(a, "k").unwrap();
        assert_eq!(ids(k_bucket.clone(), "k"), ["x1", "x2"]);
        let k2 = if bucket("k2") == bucket("k") {
            k_bucket
        } else {
            s.read_bucket(a, "k2").unwrap()
        };
        assert_eq!(ids(k2, "k2"), ["y"]);
        assert_eq!(ids(s.read_bucket(b, "k").unwrap(), "k"), ["t"]);
        // Three hours on: epoch 10 is more than the horizon (2 h) behind, and goes.
        s.add(a, 13, "k".into(), record("x3", 13 * H + 1));
        s.sync(horizon).unwrap();
        assert_eq!(s.take_pruned(), 3);
        s.taken_over(a);
        assert_eq!(ids(s.read_bucket(a, "k").unwrap(), "k"), ["x3"]);
        assert_eq!(s.mark(a).unwrap().unwrap().next, 14);
        s.clear(a).unwrap();
        assert_eq!(s.mark(a).unwrap(), None);
        s.taken_over(a);
        assert!(s.read_bucket(a, "k").unwrap().unwrap().is_empty());
        s.taken_over(b);
        assert_eq!(ids(s.read_bucket(b, "k").unwrap(), "k"), ["t"]);
        // A record that does not decode fails the write, and nothing of it is written.
        s.add(b, 6, "k".into(), vec![9, 9]);
        assert!(matches!(s.sync(horizon), Err(Error::Record(_))));
        assert_eq!(s.mark(b).unwrap().unwrap().next, 6);
        drop(s);
        // Opened for other topics: empty.
        let mut s = Store::open(&path, "cluster|a2|b2").unwrap();
        assert_eq!(s.mark(b).unwrap(), None);
        assert!(s.read_bucket(b, "k").unwrap().unwrap().is_empty());
        drop(s);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // Fixed forever: a store written by one release is read by the next.
        assert_eq!(bucket(""), (0xcbf2_9ce4_8422_2325u64 % 256) as u16);
        let used: HashSet<u16> = (0..10_000).map(|i| bucket(&format!("card-{i}"))).collect();
        assert_eq!(used.len(), usize::from(BUCKETS));
    }
}
