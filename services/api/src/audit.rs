//! The audit trail: every request to the API — served or refused — and every operator CLI
//! action becomes one row of `api_audit`, written before the response leaves (if it cannot be
//! written the request fails with 503: nothing is served unaudited).
//!
//! Rows form a hash chain. Each has a gapless `seq` and `hash = SHA-256(prev_hash ‖ seq ‖
//! every field, length-prefixed)`; appends take an advisory lock, so replicas extend one chain.
//! [`verify`] walks it and names the first row that does not fit: changed, inserted, deleted.
//! A writer task batches appends (one lock and one round trip for many requests under load).
//!
//! A relay copies the table, in order, to the `pos.audit` topic for SIEMs: one replica at a
//! time (another advisory lock), from the high-water mark in `api_audit_relay`, at least once.

use crate::db::Scoped;
use crate::query::Position;
use crate::records::Page;
use posflow_pg::DbError;
use posflow_schema::{rfc3339_millis, AuditRecord};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

/// Serialises appends to the chain across replicas and the CLI.
pub const APPEND_LOCK: i64 = 0x706f_7366_6175_6469; // "posfaudi"
/// One relay at a time.
pub const RELAY_LOCK: i64 = 0x706f_7366_7265_6c79; // "posfrely"

/// The chained hash of `e` at `seq` after `prev`: every field but the chain's own (`seq`,
/// `prev_hash`, `hash`), length-prefixed. An entry not yet appended has `seq` 0 and empty
/// hashes; [`append`] chains it. `posflow_schema::AuditRecord` is the one type for the
/// table, the API's audit pages and `pos.audit`.
pub fn chain_hash(e: &AuditRecord, seq: i64, prev: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(e.at.to_be_bytes());
    h.update(e.row_count.to_be_bytes());
    h.update(e.status.to_be_bytes());
    for field in [
        Some(&e.actor),
        Some(&e.role),
        Some(&e.merchant_id),
        Some(&e.action),
        Some(&e.resource),
        Some(&e.filter),
        Some(&e.outcome),
        Some(&e.source),
        Some(&e.request_id),
        Some(&e.reason),
        e.before.as_ref(),
        e.after.as_ref(),
    ] {
        match field {
            // Length-prefixed, with NULL distinct from "": no two records hash alike.
            Some(s) => {
                h.update([1]);
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
            None => h.update([0]),
        }
    }
    h.finalize().to_vec()
}

/// A row of [`COLUMNS`].
fn from_row(r: &tokio_postgres::Row) -> AuditRecord {
    AuditRecord {
        seq: r.get("seq"),
        at: r.get("at_ms"),
        actor: r.get("actor"),
        role: r.get("role"),
        merchant_id: r.get("merchant_id"),
        action: r.get("action"),
        resource: r.get("resource"),
        filter: r.get("filter"),
        row_count: r.get("row_count"),
        status: r.get("status"),
        outcome: r.get("outcome"),
        source: r.get("source"),
        request_id: r.get("request_id"),
        reason: r.get("reason"),
        before: r.get("before"),
        after: r.get("after"),
        prev_hash: hex(r.get::<_, &[u8]>("prev_hash")),
        hash: hex(r.get::<_, &[u8]>("hash")),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const COLUMNS: &str =
    "seq, at_ms, actor, role, merchant_id, action, resource, filter, row_count, status, \
    outcome, source, request_id, reason, before, after, prev_hash, hash";

/// Every row of a batch in one statement: one array per column, walked in step by `unnest`
/// (posflow_pg::column).
const INSERT: &str = "INSERT INTO api_audit (seq, at_ms, actor, role, merchant_id, action, resource, filter, row_count, status, \
    outcome, source, request_id, reason, before, after, prev_hash, hash) \
    SELECT unnest($1::bigint[]), unnest($2::bigint[]), unnest($3::text[]), unnest($4::text[]), unnest($5::text[]), \
    unnest($6::text[]), unnest($7::text[]), unnest($8::text[]), unnest($9::integer[]), unnest($10::integer[]), \
    unnest($11::text[]), unnest($12::text[]), unnest($13::text[]), unnest($14::text[]), unnest($15::text[]), \
    unnest($16::text[]), unnest($17::bytea[]), unnest($18::bytea[])";

/// Prepares the append's statement on `client` (once per connection: see [`append_with`]).
pub async fn prepare_append(client: &Client) -> Result<Statement, DbError> {
    Ok(client.prepare(INSERT).await?)
}

/// Appends entries to the chain in one transaction; returns their seqs.
pub async fn append(client: &mut Client, entries: &[AuditRecord]) -> Result<Vec<i64>, DbError> {
    let insert = prepare_append(client).await?;
    append_with(client, &insert, entries).await
}

/// [`append`] with the statement already prepared: two round trips whatever the batch's
/// size — BEGIN, the chain's lock and its tail in one message; every row in one INSERT and
/// COMMIT, pipelined.
/// (The tail is its own statement so that its snapshot is taken after the lock is held.)
pub async fn append_with(
    client: &mut Client,
    insert: &Statement,
    entries: &[AuditRecord],
) -> Result<Vec<i64>, DbError> {
    let result = async {
        let head = client
            .simple_query(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK}); \
                 SELECT seq, encode(hash, 'hex') FROM posflow_audit_tail()"
            ))
            .await?;
        let tail = head.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.len() == 2 => Some((r.get(0), r.get(1))),
            _ => None,
        });
        let (mut seq, mut prev): (i64, Vec<u8>) = match tail {
            Some((Some(seq), Some(hash))) => (
                seq.parse()
                    .map_err(|_| DbError::Unexpected(format!("audit tail seq {seq:?}")))?,
                unhex(hash)
                    .ok_or_else(|| DbError::Unexpected(format!("audit tail hash {hash:?}")))?,
            ),
            _ => (0, vec![0; 32]),
        };
        let mut cols = Columns::default();
        let mut seqs = Vec::with_capacity(entries.len());
        for e in entries {
            seq += 1;
            let hash = chain_hash(e, seq, &prev);
            cols.push(seq, e, std::mem::replace(&mut prev, hash.clone()), hash);
            seqs.push(seq);
        }
        // Sent together, answered together: one round trip. A failed INSERT leaves the
        // transaction aborted, and COMMIT then rolls it back (the caller's ROLLBACK is a no-op).
        let params = cols.params();
        let (inserted, committed) = tokio::join!(
            client.execute(insert, &params),
            client.batch_execute("COMMIT")
        );
        inserted?;
        committed?;
        Ok(seqs)
    }
    .await;
    if result.is_err() {
        // Leave the connection usable (or let the caller see it closed).
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// A batch of entries, column by column, for [`INSERT`].
#[derive(Default)]
struct Columns<'a> {
    seq: Vec<i64>,
    at_ms: Vec<i64>,
    text: [Vec<&'a str>; 10],
    row_count: Vec<i32>,
    status: Vec<i32>,
    before: Vec<Option<&'a str>>,
    after: Vec<Option<&'a str>>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, seq: i64, e: &'a AuditRecord, prev_hash: Vec<u8>, hash: Vec<u8>) {
        self.seq.push(seq);
        self.at_ms.push(e.at);
        let text = [
            &e.actor,
            &e.role,
            &e.merchant_id,
            &e.action,
            &e.resource,
            &e.filter,
            &e.outcome,
            &e.source,
            &e.request_id,
            &e.reason,
        ];
        for (col, v) in self.text.iter_mut().zip(text) {
            col.push(v);
        }
        self.row_count.push(e.row_count);
        self.status.push(e.status);
        self.before.push(e.before.as_deref());
        self.after.push(e.after.as_deref());
        self.prev_hash.push(prev_hash);
        self.hash.push(hash);
    }

    /// In [`INSERT`]'s order.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let t = &self.text;
        vec![
            &self.seq,
            &self.at_ms,
            &t[0],
            &t[1],
            &t[2],
            &t[3],
            &t[4],
            &t[5],
            &self.row_count,
            &self.status,
            &t[6],
            &t[7],
            &t[8],
            &t[9],
            &self.before,
            &self.after,
            &self.prev_hash,
            &self.hash,
        ]
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (s.len() % 2 == 0)
        .then(|| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

/// What `audit verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Intact {
        rows: i64,
    },
    /// The first row that does not fit, and why.
    Broken {
        seq: i64,
        why: String,
    },
}

/// Walks the whole chain (as a role that reads every row: the table's owner).
pub async fn verify(client: &mut Client) -> Result<Verdict, DbError> {
    // A cursor: the chain may be long; memory stays flat.
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "DECLARE audit_walk NO SCROLL CURSOR FOR SELECT {COLUMNS} FROM api_audit ORDER BY seq"
    ))
    .await?;
    let mut expected_seq = 1i64;
    let mut prev = vec![0u8; 32];
    loop {
        let rows = tx.query("FETCH 5000 FROM audit_walk", &[]).await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let seq: i64 = r.get("seq");
            let broken = |why: String| Ok(Verdict::Broken { seq, why });
            if seq != expected_seq {
                return broken(if seq == expected_seq + 1 {
                    format!("the row with seq {expected_seq} is missing")
                } else {
                    format!(
                        "the rows with seq {expected_seq} to {} are missing",
                        seq - 1
                    )
                });
            }
            let stored_prev: Vec<u8> = r.get("prev_hash");
            if stored_prev != prev {
                return broken("its prev_hash is not the previous row's hash".into());
            }
            let stored: Vec<u8> = r.get("hash");
            if chain_hash(&from_row(r), seq, &prev) != stored {
                return broken("its fields do not match its hash (the row was altered)".into());
            }
            prev = stored;
            expected_seq += 1;
        }
    }
    tx.commit().await?;
    Ok(Verdict::Intact {
        rows: expected_seq - 1,
    })
}

/// What the audit log is narrowed to (the portal's filters; the API reads it whole).
#[derive(Debug, Default)]
pub struct AuditFilter {
    /// Actions starting with this (`portal.`, `settings.update`).
    pub action: Option<String>,
    /// Exactly this actor (a key id, a person's id).
    pub actor: Option<String>,
    pub outcome: Option<String>,
}

/// The merchant's audit log, newest first (`Position.t` is the seq).
pub async fn page(
    s: &Scoped<'_>,
    limit: i64,
    after: Option<Position>,
    f: &AuditFilter,
) -> Result<Page, DbError> {
    let rows =
        s.tx.query(
            &format!(
                "SELECT {COLUMNS} FROM api_audit WHERE ($1::text IS NULL OR merchant_id = $1) \
                 AND ($2::bigint IS NULL OR seq < $2) AND ($4::text IS NULL OR starts_with(action, $4)) \
                 AND ($5::text IS NULL OR actor = $5) AND ($6::text IS NULL OR outcome = $6) \
                 ORDER BY seq DESC LIMIT $3"
            ),
            &[&s.merchant_filter(), &after.map(|p| p.t), &(limit + 1), &f.action, &f.actor, &f.outcome],
        )
        .await?;
    let json_or_text = |s: Option<String>| {
        s.map(|t| serde_json::from_str::<Value>(&t).unwrap_or(Value::String(t)))
    };
    let items: Vec<Value> = rows
        .iter()
        .take(limit as usize)
        .map(|r| {
            let e = from_row(r);
            json!({
                "seq": e.seq,
                "at": rfc3339_millis(e.at),
                "actor": e.actor,
                "role": e.role,
                "merchant_id": e.merchant_id,
                "action": e.action,
                "resource": e.resource,
                "filter": json_or_text(Some(e.filter)),
                "row_count": e.row_count,
                "status": e.status,
                "outcome": e.outcome,
                "source": e.source,
                "request_id": e.request_id,
                "reason": e.reason,
                "before": json_or_text(e.before),
                "after": json_or_text(e.after),
                "hash": hex(&r.get::<_, Vec<u8>>("hash")),
            })
        })
        .collect();
    let next = (rows.len() as i64 > limit)
        .then(|| {
            items.last().map(|l| Position {
                t: l["seq"].as_i64().unwrap_or(0),
                id: String::new(),
            })
        })
        .flatten();
    Ok(Page { items, next })
}

/// A request to append, answered with the seq once it is committed.
type Pending = (AuditRecord, oneshot::Sender<Result<i64, String>>);

/// The handle requests append through.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Pending>,
}

impl Auditor {
    /// Appends `e`; returns once it is committed.
    pub async fn record(&self, e: AuditRecord) -> Result<i64, String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((e, done))
            .await
            .map_err(|_| "the audit writer stopped".to_string())?;
        wait.await
            .map_err(|_| "the audit writer stopped".to_string())?
    }

    /// The writer: batches what is waiting (up to `max_batch`) into one append. Ends when every
    /// handle is gone.
    pub fn start(
        mut connect: impl FnMut() -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<Client, DbError>> + Send>,
            > + Send
            + 'static,
        max_batch: usize,
    ) -> (Self, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let (tx, mut rx) = mpsc::channel::<Pending>(max_batch * 4);
        let task = tokio::spawn(async move {
            // The connection and the append's statement, prepared once on it.
            let mut conn: Option<(Client, Statement)> = None;
            while let Some(first) = rx.recv().await {
                let (mut entries, mut waiting) = (vec![first.0], vec![first.1]);
                while entries.len() < max_batch {
                    match rx.try_recv() {
                        Ok((e, done)) => {
                            entries.push(e);
                            waiting.push(done);
                        }
                        Err(_) => break,
                    }
                }
                if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                    conn = match connect().await {
                        Ok(c) => prepare_append(&c).await.ok().map(|st| (c, st)),
                        Err(_) => None,
                    };
                }
                let result = match conn.as_mut() {
                    Some((c, insert)) => append_with(c, insert, &entries)
                        .await
                        .map_err(|e| e.summary()),
                    None => Err("cannot connect to the database".into()),
                };
                match result {
                    Ok(seqs) => {
                        for (done, seq) in waiting.into_iter().zip(seqs) {
                            let _ = done.send(Ok(seq));
                        }
                    }
                    Err(why) => {
                        tracing::error!(error = %why, rows = entries.len(), "audit append failed; the requests fail");
                        conn = None;
                        for done in waiting {
                            let _ = done.send(Err(why.clone()));
                        }
                    }
                }
            }
            Ok(())
        });
        (Auditor { tx }, task)
    }
}

/// Where the relay writes: `pos.audit`, Avro in the Confluent wire format.
pub struct Relay {
    pub producer: rdkafka::producer::FutureProducer,
    pub encoder: posflow_schema::Encoder<AuditRecord>,
    pub topic: String,
}

impl Relay {
    /// Sends every record (idempotent producer, in order) and waits for all confirmations.
    async fn publish(&self, records: &[AuditRecord]) -> anyhow::Result<()> {
        let mut sends = Vec::with_capacity(records.len());
        for r in records {
            let value = self.encoder.encode(r)?;
            let record = rdkafka::producer::FutureRecord::to(&self.topic)
                .key(&r.merchant_id)
                .payload(&value);
            let sent = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("producing to {}: {e}", self.topic))?;
            sends.push(sent);
        }
        for s in sends {
            match s.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => anyhow::bail!("producing to {}: {e}", self.topic),
                Err(_) => anyhow::bail!("producing to {}: the producer went away", self.topic),
            }
        }
        Ok(())
    }
}

/// One relay pass: copies rows after the high-water mark to `pos.audit` (in seq order, each
/// confirmed by Kafka) and moves the mark. Returns how many were relayed; 0 when another
/// replica holds the relay lock.
pub async fn relay_once(client: &mut Client, to: &Relay, batch: i64) -> anyhow::Result<usize> {
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&RELAY_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(0);
    }
    let result = async {
        let mark: i64 = client
            .query_one("SELECT relayed_seq FROM api_audit_relay", &[])
            .await?
            .get(0);
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM posflow_audit_since($1, $2)"),
                &[&mark, &batch],
            )
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let last: i64 = rows[rows.len() - 1].get("seq");
        let records: Vec<AuditRecord> = rows.iter().map(from_row).collect();
        let n = records.len();
        to.publish(&records).await?;
        client
            .execute("UPDATE api_audit_relay SET relayed_seq = $1", &[&last])
            .await?;
        Ok(n)
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&RELAY_LOCK])
        .await?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditRecord {
        AuditRecord {
            at: 1,
            actor: "pk_0123456789ab".into(),
            role: "owner".into(),
            merchant_id: "M001".into(),
            action: "transactions.search".into(),
            status: 200,
            outcome: "ok".into(),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn every_field_and_the_chain_change_the_hash() {
        let base = chain_hash(&entry(), 1, &[0; 32]);
        assert_ne!(chain_hash(&entry(), 2, &[0; 32]), base);
        assert_ne!(chain_hash(&entry(), 1, &[1; 32]), base);
        let mut e = entry();
        e.row_count = 1;
        assert_ne!(chain_hash(&e, 1, &[0; 32]), base);
        let mut e = entry();
        e.before = Some(String::new());
        assert_ne!(chain_hash(&e, 1, &[0; 32]), base, "NULL and '' differ");
        // Moving a byte from one field to the next changes the hash (length prefixes).
        let mut a = entry();
        a.actor = "ab".into();
        a.role = "c".into();
        let mut b = entry();
        b.actor = "a".into();
        b.role = "bc".into();
        assert_ne!(chain_hash(&a, 1, &[0; 32]), chain_hash(&b, 1, &[0; 32]));
    }
}
