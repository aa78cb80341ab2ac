//! The last N transaction ids the bridge put in Kafka, with where they landed. A QoS 1
//! redelivery or a terminal's republish of a transaction already in Kafka is answered from here
//! without producing it again; a *different* payload under a known id is a conflict.
//!
//! Owned by the bridge's single pipeline task, so plain maps (no locking). Per process: after a
//! restart, redeliveries of what was in flight reach Kafka again, and storage's transaction-id
//! ledger absorbs them.
//!
//! Memory is bounded and allocated once (BENCHMARKS.md, issue 20: the first version was the
//! bridge's largest heap user — every id's `String` twice, and a table that doubled past 65,536
//! ids). Ids are kept as a 128-bit keyed hash, not as strings: at 2^-128 per pair, a new id
//! taken for a remembered one (and refused as a conflict) would take ~10^29 transactions
//! against a full cache. Two generations of up to `capacity` ids each: new ids go into the
//! current one; when it is full, it becomes the previous one and the old previous one is
//! cleared for reuse. So at least the last `capacity` ids are remembered (up to twice that),
//! no entry is ever removed one by one (no tombstones, no rehash), and neither table grows
//! past the size it was created with.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Hash of the payload bytes, to tell a redelivery from a conflicting reuse of the id.
    pub fingerprint: u64,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    New,
    /// The same transaction again: already at this position.
    Repeat(Seen),
    /// The id is known with other content.
    Conflict,
}

/// A transaction id as two independent keyed 64-bit hashes. Two `u64`s, not a `u128`, so an
/// entry is 40 bytes rather than 48 (`u128` is 16-byte aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key(u64, u64);

impl Key {
    fn of(id: &str) -> Self {
        static STATES: std::sync::OnceLock<(RandomState, RandomState)> = std::sync::OnceLock::new();
        let (a, b) = STATES.get_or_init(|| (RandomState::new(), RandomState::new()));
        Key(a.hash_one(id), b.hash_one(id))
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0)
    }
}

/// The key is already a keyed hash: the table uses its first half as is.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached (`Key::hash` writes one u64); folded rather than dropped all the same.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Generation = HashMap<Key, Seen, BuildHasherDefault<KeyHasher>>;

pub struct RecentIds {
    capacity: usize,
    current: Generation,
    previous: Generation,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        let generation = || Generation::with_capacity_and_hasher(capacity, Default::default());
        Self {
            capacity,
            current: generation(),
            previous: generation(),
        }
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, key: &Key) -> Option<&Seen> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    pub fn lookup(&self, id: &str, fingerprint: u64) -> Lookup {
        match self.get(&Key::of(id)) {
            None => Lookup::New,
            Some(s) if s.fingerprint == fingerprint => Lookup::Repeat(*s),
            Some(_) => Lookup::Conflict,
        }
    }

    pub fn remember(&mut self, id: &str, seen: Seen) {
        let key = Key::of(id);
        if self.capacity == 0 || self.get(&key).is_some() {
            return;
        }
        if self.current.len() == self.capacity {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear(); // keeps its allocation
        }
        self.current.insert(key, seen);
    }
}

/// A stable-within-process hash of a payload.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    static STATE: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(Default::default).hash_one(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(fingerprint: u64) -> Seen {
        Seen {
            fingerprint,
            partition: 1,
            offset: 7,
        }
    }

    #[test]
    fn repeats_and_conflicts() {
        let mut r = RecentIds::new(2);
        assert_eq!(r.lookup("a", 1), Lookup::New);
        r.remember("a", seen(1));
        assert_eq!(r.lookup("a", 1), Lookup::Repeat(seen(1)));
        assert_eq!(r.lookup("a", 2), Lookup::Conflict);
        r.remember("a", seen(2));
        assert_eq!(r.len(), 1, "a known id is not remembered twice");
        assert_eq!(r.lookup("a", 1), Lookup::Repeat(seen(1)), "the first stays");
        assert_eq!(fingerprint(b"x"), fingerprint(b"x"));
        assert_ne!(fingerprint(b"x"), fingerprint(b"y"));
    }

    #[test]
    fn keeps_at_least_the_last_capacity_ids_and_at_most_twice_that() {
        let capacity = 3;
        let mut r = RecentIds::new(capacity);
        for n in 0..20usize {
            r.remember(&n.to_string(), seen(n as u64));
            for back in 0..=n {
                let expected = if back < capacity {
                    Lookup::Repeat(seen((n - back) as u64))
                } else if back >= 2 * capacity {
                    Lookup::New
                } else {
                    continue; // in the previous generation or not, by where n falls
                };
                assert_eq!(
                    r.lookup(&(n - back).to_string(), (n - back) as u64),
                    expected
                );
            }
            assert!(r.len() <= 2 * capacity && r.len() >= (n + 1).min(capacity));
        }
        let (current, previous) = (r.current.capacity(), r.previous.capacity());
        for n in 20..1000usize {
            r.remember(&n.to_string(), seen(0));
        }
        assert_eq!(
            (r.current.capacity(), r.previous.capacity()),
            (current, previous),
            "the tables are never reallocated"
        );
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut r = RecentIds::new(0);
        r.remember("a", seen(1));
        assert_eq!((r.len(), r.lookup("a", 1)), (0, Lookup::New));
    }
}
