//! The store-and-forward queue: every captured transaction, durable before the sale completes,
//! until posflow answers it (docs/terminal-client.md).
//!
//! **On disk**, a directory of two append-only logs:
//! - `queue.log`: each captured transaction — its id, sequence, amount and the exact payload
//!   bytes it is published with, every time;
//! - `answers.log`: each answer from the bridge — accepted, or rejected with its reason.
//!
//! **A record** is `u32 length ‖ 12-byte nonce ‖ AES-256-GCM(body)`, the associated data naming
//! the terminal and the log. Every append is fsynced before it returns: a sale is captured
//! only once its record survives a power cut. The payload holds the card number until the
//! bridge tokenises it, so it is never on disk in the clear; the tag also finds a torn or
//! corrupted tail.
//!
//! **Opening** replays both logs. A record that does not open — cut short by a power cut, or
//! damaged — ends its log there, and the file is truncated to the last good record, so the
//! next append follows a whole one. Answers are matched to transactions by id.
//!
//! **Compaction.** Opening rewrites both logs without the accepted transactions when there are
//! any: new files are fsynced, then renamed over the old ones. A crash in between leaves
//! either the old logs or the new ones. The next sequence number is kept as the first record.
//!
//! **Bounds.** The queue refuses a capture above the merchant's offline caps (the count, the
//! amount per transaction, the total per currency): the terminal declines the sale instead of
//! storing a transaction posflow would reject (docs/validation.md, "Offline capture").

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const QUEUE: &str = "queue.log";
const ANSWERS: &str = "answers.log";
/// Longest record body: a payload is at most 16 KiB (the contract), plus its envelope.
const MAX_BODY: usize = 64 * 1024;

/// One captured transaction, as kept until answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub transaction_id: String,
    pub sequence: i64,
    pub amount_minor: i64,
    pub currency: String,
    /// The exact bytes published, on every attempt.
    pub payload: String,
}

/// What the bridge said of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Answer {
    Accepted,
    Rejected { reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum QueueRecord {
    /// The queue's instance (part of every transaction id: ids stay unique if a terminal's
    /// queue is ever recreated) and the sequence number the next capture takes. The first
    /// record of every queue log.
    Next {
        instance: String,
        sequence: i64,
    },
    Captured(Entry),
}

#[derive(Debug, Serialize, Deserialize)]
struct AnswerRecord {
    transaction_id: String,
    #[serde(flatten)]
    answer: Answer,
}

/// The merchant's offline caps, enforced before capture. Minor units of the currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_count: usize,
    pub max_amount_minor: i64,
    pub max_total_minor: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("the queue holds {0} unanswered transactions, the merchant's offline cap")]
    Count(usize),
    #[error("{0} minor units is above the merchant's offline cap per transaction")]
    Amount(i64),
    #[error("the unanswered total in {currency} would be {total} minor units, above the cap")]
    Total { currency: String, total: i64 },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(#[from] Refused),
}

/// Summary of what the queue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub pending: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// Records cut from torn or damaged tails when opening.
    pub truncated: usize,
}

pub struct Queue {
    dir: PathBuf,
    terminal_id: String,
    instance: String,
    cipher: Aes256Gcm,
    queue: File,
    answers: File,
    /// Captured, in capture order (accepted ones only until the next compaction).
    entries: Vec<Entry>,
    answered: HashMap<String, Answer>,
    next_sequence: i64,
    truncated: usize,
}

impl Queue {
    /// Opens (or creates) `dir`'s queue for `terminal_id` with the 32-byte `key`; replays,
    /// truncates torn tails and compacts. `first_sequence`: where a new queue starts.
    pub fn open(
        dir: &Path,
        terminal_id: &str,
        key: &[u8; 32],
        first_sequence: i64,
    ) -> Result<Self, Error> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cipher = Aes256Gcm::new_from_slice(key).expect("32 bytes");
        let aad_q = aad(terminal_id, QUEUE);
        let aad_a = aad(terminal_id, ANSWERS);
        let (queue_records, cut_q) = replay(&dir.join(QUEUE), &cipher, &aad_q).map_err(io(dir))?;
        let (answer_records, cut_a) =
            replay(&dir.join(ANSWERS), &cipher, &aad_a).map_err(io(dir))?;
        let mut entries = Vec::new();
        let mut next_sequence = first_sequence;
        let mut instance = None;
        for body in queue_records {
            match serde_json::from_slice::<QueueRecord>(&body) {
                Ok(QueueRecord::Next {
                    instance: i,
                    sequence,
                }) => {
                    instance = Some(i);
                    next_sequence = next_sequence.max(sequence);
                }
                Ok(QueueRecord::Captured(e)) => {
                    next_sequence = next_sequence.max(e.sequence + 1);
                    entries.push(e);
                }
                // Sealed by this key and terminal, so written by this code: a record of a
                // newer version is kept for that version, not guessed at.
                Err(_) => {}
            }
        }
        let mut answered = HashMap::new();
        for body in answer_records {
            if let Ok(r) = serde_json::from_slice::<AnswerRecord>(&body) {
                answered.insert(r.transaction_id, r.answer);
            }
        }
        let fresh = instance.is_none();
        let mut q = Queue {
            dir: dir.to_path_buf(),
            terminal_id: terminal_id.to_string(),
            instance: instance.unwrap_or_else(|| format!("{:08x}", rand::random::<u32>())),
            cipher,
            queue: append(&dir.join(QUEUE)).map_err(io(&dir.join(QUEUE)))?,
            answers: append(&dir.join(ANSWERS)).map_err(io(&dir.join(ANSWERS)))?,
            entries,
            answered,
            next_sequence,
            truncated: cut_q + cut_a,
        };
        if fresh
            || q.entries
                .iter()
                .any(|e| q.answered.get(&e.transaction_id) == Some(&Answer::Accepted))
        {
            q.compact()?;
        }
        Ok(q)
    }

    /// Captures a transaction: `make` builds its payload for the id and sequence given. Durable
    /// when this returns `Ok`.
    pub fn capture(
        &mut self,
        amount_minor: i64,
        currency: &str,
        caps: &Caps,
        make: impl FnOnce(&str, i64) -> String,
    ) -> Result<Entry, Error> {
        let pending = self.pending();
        if pending.len() >= caps.max_count {
            return Err(Refused::Count(pending.len()).into());
        }
        if amount_minor > caps.max_amount_minor {
            return Err(Refused::Amount(amount_minor).into());
        }
        let total = pending
            .iter()
            .filter(|e| e.currency == currency)
            .map(|e| e.amount_minor)
            .sum::<i64>()
            + amount_minor;
        if total > caps.max_total_minor {
            return Err(Refused::Total {
                currency: currency.to_string(),
                total,
            }
            .into());
        }
        let sequence = self.next_sequence;
        let transaction_id = format!("{}-{}-{sequence:08}", self.terminal_id, self.instance);
        let entry = Entry {
            payload: make(&transaction_id, sequence),
            transaction_id,
            sequence,
            amount_minor,
            currency: currency.to_string(),
        };
        let body = serde_json::to_vec(&QueueRecord::Captured(entry.clone())).expect("JSON");
        self.write(QUEUE, &body)?;
        self.next_sequence += 1;
        self.entries.push(entry.clone());
        Ok(entry)
    }

    /// Records the bridge's answer; the first answer per transaction counts (the bridge answers
    /// a republished transaction again, the same way). `true` if it was new.
    pub fn answer(&mut self, transaction_id: &str, answer: Answer) -> Result<bool, Error> {
        if self.answered.contains_key(transaction_id)
            || !self
                .entries
                .iter()
                .any(|e| e.transaction_id == transaction_id)
        {
            return Ok(false);
        }
        let body = serde_json::to_vec(&AnswerRecord {
            transaction_id: transaction_id.to_string(),
            answer: answer.clone(),
        })
        .expect("JSON");
        self.write(ANSWERS, &body)?;
        self.answered.insert(transaction_id.to_string(), answer);
        Ok(true)
    }

    /// Unanswered transactions, in capture order: what a flush sends.
    pub fn pending(&self) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| !self.answered.contains_key(&e.transaction_id))
            .collect()
    }

    /// The first unanswered transaction at or after position `at` of the queue, with its
    /// position: a sender's cursor, walking the queue once in capture order.
    pub fn pending_from(&self, at: usize) -> Option<(usize, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .skip(at)
            .find(|(_, e)| !self.answered.contains_key(&e.transaction_id))
    }

    /// Rejected transactions with their reasons, for the merchant to see.
    pub fn rejected(&self) -> Vec<(&Entry, &str)> {
        self.entries
            .iter()
            .filter_map(|e| match self.answered.get(&e.transaction_id) {
                Some(Answer::Rejected { reason }) => Some((e, reason.as_str())),
                _ => None,
            })
            .collect()
    }

    /// This queue's instance, the middle of its transaction ids.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            truncated: self.truncated,
            ..Counts::default()
        };
        for e in &self.entries {
            match self.answered.get(&e.transaction_id) {
                None => c.pending += 1,
                Some(Answer::Accepted) => c.accepted += 1,
                Some(Answer::Rejected { .. }) => c.rejected += 1,
            }
        }
        c
    }

    fn write(&mut self, log: &str, body: &[u8]) -> Result<(), Error> {
        let record = seal(&self.cipher, &aad(&self.terminal_id, log), body);
        let file = if log == QUEUE {
            &mut self.queue
        } else {
            &mut self.answers
        };
        let path = self.dir.join(log);
        file.write_all(&record)
            .and_then(|()| file.sync_data())
            .map_err(|source| Error::Io { path, source })
    }

    /// Both logs again without the accepted transactions and their answers.
    fn compact(&mut self) -> Result<(), Error> {
        let keep: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| self.answered.get(&e.transaction_id) != Some(&Answer::Accepted))
            .cloned()
            .collect();
        let mut queue_bodies = vec![serde_json::to_vec(&QueueRecord::Next {
            instance: self.instance.clone(),
            sequence: self.next_sequence,
        })
        .expect("JSON")];
        queue_bodies.extend(
            keep.iter()
                .map(|e| serde_json::to_vec(&QueueRecord::Captured(e.clone())).expect("JSON")),
        );
        let answer_bodies: Vec<Vec<u8>> = keep
            .iter()
            .filter_map(|e| {
                let answer = self.answered.get(&e.transaction_id)?;
                Some(
                    serde_json::to_vec(&AnswerRecord {
                        transaction_id: e.transaction_id.clone(),
                        answer: answer.clone(),
                    })
                    .expect("JSON"),
                )
            })
            .collect();
        // The queue first: were the crash to come between the two, the old answers log only
        // names more transactions than the new queue holds, which replay ignores.
        self.queue = self.rewrite(QUEUE, &queue_bodies)?;
        self.answers = self.rewrite(ANSWERS, &answer_bodies)?;
        self.answered
            .retain(|id, _| keep.iter().any(|e| e.transaction_id == *id));
        self.entries = keep;
        Ok(())
    }

    /// `log` replaced by `bodies`, atomically (temporary file, fsync, rename, fsync of the
    /// directory); the new file, open for appending.
    fn rewrite(&self, log: &str, bodies: &[Vec<u8>]) -> Result<File, Error> {
        let (path, tmp) = (self.dir.join(log), self.dir.join(format!("{log}.tmp")));
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let aad = aad(&self.terminal_id, log);
        let mut f = File::create(&tmp).map_err(io)?;
        for b in bodies {
            f.write_all(&seal(&self.cipher, &aad, b)).map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        append(&path).map_err(io)
    }
}

fn aad(terminal_id: &str, log: &str) -> Vec<u8> {
    format!("posflow-terminal queue v1\0{terminal_id}\0{log}").into_bytes()
}

fn seal(cipher: &Aes256Gcm, aad: &[u8], body: &[u8]) -> Vec<u8> {
    let nonce: [u8; 12] = rand::random();
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: body, aad })
        .expect("AES-GCM of a bounded record");
    let mut out = Vec::with_capacity(4 + 12 + sealed.len());
    out.extend_from_slice(&(sealed.len() as u32 + 12).to_le_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The bodies of `path`'s whole records, and how many torn records were cut (the file is
/// truncated after the last good one). A torn record is one cut short by the end of the file,
/// or the last one and not opening (a crash can leave a block of zeros). A record that does
/// not open anywhere else — or the first one, which is the wrong key or terminal far more
/// often than a crash — is an error: nothing is cut that might be a good queue.
fn replay(path: &Path, cipher: &Aes256Gcm, aad: &[u8]) -> std::io::Result<(Vec<Vec<u8>>, usize)> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let mut at = 0;
    let mut out = Vec::new();
    while let Some(len) = bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    {
        let Some(sealed) = bytes
            .get(at + 4..at + 4 + len)
            .filter(|_| (12..MAX_BODY).contains(&len))
        else {
            break;
        };
        let (nonce, ct) = sealed.split_at(12);
        let Ok(body) = cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }) else {
            if at == 0 || at + 4 + len < bytes.len() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the record at byte {at} does not open: another terminal's queue, another key, or damage; nothing was changed"
                    ),
                ));
            }
            break;
        };
        out.push(body);
        at += 4 + len;
    }
    let cut = usize::from(at < bytes.len());
    if cut > 0 {
        f.set_len(at as u64)?;
        f.seek(SeekFrom::End(0))?;
        f.sync_all()?;
    }
    Ok((out, cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const CAPS: Caps = Caps {
        max_count: 3,
        max_amount_minor: 25_000,
        max_total_minor: 40_000,
    };

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("posflow-queue-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn capture(q: &mut Queue, amount: i64) -> Result<Entry, Error> {
        q.capture(amount, "EUR", &CAPS, |id, seq| {
            format!("{{\"id\":\"{id}\",\"seq\":{seq}}}")
        })
    }

    #[test]
    fn captures_survive_a_reopen_and_answers_empty_the_queue() {
        let d = dir();
        let mut q = Queue::open(&d, "T1", &KEY, 1).unwrap();
        let a = capture(&mut q, 1000).unwrap();
        let b = capture(&mut q, 2000).unwrap();
        assert_eq!((a.sequence, b.sequence), (1, 2));
        assert_eq!(a.transaction_id, format!("T1-{}-00000001", q.instance()));
        drop(q);
        let mut q = Queue::open(&d, "T1", &KEY, 1).unwrap();
        assert_eq!(
            q.pending().iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(q.pending()[1].payload, b.payload, "the same bytes");
        assert!(q.answer(&a.transaction_id, Answer::Accepted).unwrap());
        assert!(
            !q.answer(&a.transaction_id, Answer::Accepted).unwrap(),
            "once"
        );
        let reason = "PAN_INVALID".to_string();
        assert!(q
            .answer(&b.transaction_id, Answer::Rejected { reason })
            .unwrap());
        assert_eq!(
            q.counts(),
            Counts {
                pending: 0,
                accepted: 1,
                rejected: 1,
                truncated: 0
            }
        );
        drop(q);
        // Compacted: the accepted one is gone, the rejected one kept with its reason, and the
        // next sequence continues.
        let mut q = Queue::open(&d, "T1", &KEY, 1).unwrap();
        assert_eq!(
            q.counts(),
            Counts {
                pending: 0,
                accepted: 0,
                rejected: 1,
                truncated: 0
            }
        );
        assert_eq!(q.rejected()[0].1, "PAN_INVALID");
        assert_eq!(capture(&mut q, 10).unwrap().sequence, 3);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_next_capture_follows_a_whole_record() {
        let d = dir();
        let mut q = Queue::open(&d, "T1", &KEY, 1).unwrap();
        capture(&mut q, 1000).unwrap();
        capture(&mut q, 1000).unwrap();
        drop(q);
        // A power cut in the middle of the second record.
        let path = d.join(QUEUE);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let mut q = Queue::open(&d, "T1", &KEY, 1).unwrap();
        assert_eq!(q.counts().pending, 1);
        assert_eq!(q.counts().truncated, 1);
        assert_eq!(
            capture(&mut q, 1000).unwrap().sequence,
            2,
            "the lost one's number again"
        );
        drop(q);
        assert_eq!(Queue::open(&d, "T1", &KEY, 1).unwrap().counts().pending, 2);
    }

    #[test]
    fn another_key_or_terminal_opens_nothing_and_the_card_number_is_not_on_disk() {
        let d = dir();
        let mut q = Queue::open(&d, "T1", &KEY, 1).unwrap();
        q.capture(1000, "EUR", &CAPS, |_, _| {
            "{\"pan\":\"4111111111111111\"}".into()
        })
        .unwrap();
        drop(q);
        let raw = std::fs::read(d.join(QUEUE)).unwrap();
        assert!(!raw.windows(16).any(|w| w == b"4111111111111111"));
        let copy = dir();
        std::fs::copy(d.join(QUEUE), copy.join(QUEUE)).unwrap();
        for (dir, terminal, key) in [(&copy, "T2", KEY), (&d, "T1", [8; 32])] {
            let e = Queue::open(dir, terminal, &key, 1)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("does not open"), "{e}");
        }
        assert_eq!(std::fs::read(d.join(QUEUE)).unwrap(), raw, "nothing cut");
        assert_eq!(Queue::open(&d, "T1", &KEY, 1).unwrap().counts().pending, 1);
    }

    #[test]
    fn the_caps_refuse_a_capture_before_it_is_stored() {
        let mut q = Queue::open(&dir(), "T1", &KEY, 1).unwrap();
        assert!(matches!(
            capture(&mut q, 25_001),
            Err(Error::Refused(Refused::Amount(25_001)))
        ));
        capture(&mut q, 20_000).unwrap();
        capture(&mut q, 20_000).unwrap();
        assert!(matches!(
            capture(&mut q, 1),
            Err(Error::Refused(Refused::Total { total: 40_001, .. }))
        ));
        capture(&mut q, 0).unwrap();
        assert!(matches!(
            capture(&mut q, 0),
            Err(Error::Refused(Refused::Count(3)))
        ));
        assert_eq!(q.counts().pending, 3);
    }
}
