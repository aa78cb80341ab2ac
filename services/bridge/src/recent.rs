//! The last N transaction ids the bridge put in Kafka, with where they landed. A QoS 1
//! redelivery or a terminal's republish of a transaction already in Kafka is answered from here
//! without producing it again; a *different* payload under a known id is a conflict.
//!
//! Owned by the bridge's single pipeline task, so a plain map (no locking). Bounded: the oldest
//! id is forgotten first. Per process: after a restart, redeliveries of what was in flight reach
//! Kafka again, and storage's transaction-id ledger absorbs them.

use std::collections::{HashMap, VecDeque};

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

pub struct RecentIds {
    capacity: usize,
    map: HashMap<String, Seen>,
    order: VecDeque<String>,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: HashMap::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn lookup(&self, id: &str, fingerprint: u64) -> Lookup {
        match self.map.get(id) {
            None => Lookup::New,
            Some(s) if s.fingerprint == fingerprint => Lookup::Repeat(*s),
            Some(_) => Lookup::Conflict,
        }
    }

    pub fn remember(&mut self, id: String, seen: Seen) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(id.clone(), seen).is_none() {
            self.order.push_back(id);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// A stable-within-process hash of a payload.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_conflicts_and_eviction() {
        let mut r = RecentIds::new(2);
        let s = |f| Seen {
            fingerprint: f,
            partition: 1,
            offset: 7,
        };
        assert_eq!(r.lookup("a", 1), Lookup::New);
        r.remember("a".into(), s(1));
        assert_eq!(r.lookup("a", 1), Lookup::Repeat(s(1)));
        assert_eq!(r.lookup("a", 2), Lookup::Conflict);
        r.remember("b".into(), s(1));
        r.remember("c".into(), s(1));
        assert_eq!(r.len(), 2);
        assert_eq!(
            r.lookup("a", 1),
            Lookup::New,
            "the oldest is forgotten first"
        );
        assert_eq!(fingerprint(b"x"), fingerprint(b"x"));
        assert_ne!(fingerprint(b"x"), fingerprint(b"y"));
    }
}
