//! The state topics' record format: one record per judged transaction — the event the rules
//! keep of it and the alerts its judging raised — so a replica restores a partition's state by
//! reading its state partition instead of judging the horizon's transactions again
//! (docs/fraud.md, "State changelog and recovery").
//!
//! Private to the fraud stage, so not Avro: a fixed little-endian layout that decodes without a
//! schema registry or a value tree, about a tenth of the bytes of the input record. The first
//! byte is the format version; a replica refuses a version it does not know rather than guess.
//!
//! ```text
//! u8 version (1) · i64 time · i64 amount_minor · [u8; 3] currency · u8 flags (1 approved, 2 located)
//! · [f32 latitude · f32 longitude]  (if located)
//! · str id · str merchant_id · str terminal_id      (str: u16 length, UTF-8)
//! · u8 alerts · per alert: u8 rule (index in rules::id::ALL) · i64 anchor_time · [u8; 16] digest
//! ```

use crate::engine::{Event, Raised};
use crate::rules::id;

const VERSION: u8 = 1;

/// Why a state record could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("state record format {0} is not one this replica knows (1): a newer release wrote it")]
    Version(u8),
    #[error("state record cut short or malformed")]
    Malformed,
}

/// The record for `event` and the alerts its judging raised.
pub(crate) fn encode(e: &Event, raised: &[Raised]) -> Vec<u8> {
    let mut b = Vec::with_capacity(48 + e.id.len() + e.merchant_id.len() + e.terminal_id.len());
    b.push(VERSION);
    b.extend_from_slice(&e.time.to_le_bytes());
    b.extend_from_slice(&e.amount_minor.to_le_bytes());
    b.extend_from_slice(&e.currency);
    b.push(u8::from(e.approved) | if e.location.is_some() { 2 } else { 0 });
    if let Some((lat, lon)) = e.location {
        b.extend_from_slice(&lat.to_le_bytes());
        b.extend_from_slice(&lon.to_le_bytes());
    }
    for s in [&e.id, &e.merchant_id, &e.terminal_id] {
        // Ids are bounded far below 64 KiB by the contract (the bridge refuses longer).
        let s = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
        b.extend_from_slice(&(s.len() as u16).to_le_bytes());
        b.extend_from_slice(s);
    }
    b.push(raised.len().min(255) as u8);
    for r in raised.iter().take(255) {
        let rule = id::ALL.iter().position(|x| *x == r.rule).unwrap_or(0);
        b.push(rule as u8);
        b.extend_from_slice(&r.anchor_time.to_le_bytes());
        b.extend_from_slice(&r.digest.to_be_bytes());
    }
    b
}

/// A record back into its event and raised alerts.
pub(crate) fn decode(b: &[u8]) -> Result<(Event, Vec<Raised>), Error> {
    let mut r = Reader(b);
    let version = r.take::<1>()?[0];
    if version != VERSION {
        return Err(Error::Version(version));
    }
    let time = i64::from_le_bytes(r.take()?);
    let amount_minor = i64::from_le_bytes(r.take()?);
    let currency = r.take::<3>()?;
    let flags = r.take::<1>()?[0];
    let location = if flags & 2 != 0 {
        Some((f32::from_le_bytes(r.take()?), f32::from_le_bytes(r.take()?)))
    } else {
        None
    };
    let (id, merchant_id, terminal_id) = (r.str()?, r.str()?, r.str()?);
    let n = r.take::<1>()?[0];
    let mut raised = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let rule = *id::ALL
            .get(usize::from(r.take::<1>()?[0]))
            .ok_or(Error::Malformed)?;
        raised.push(Raised {
            rule,
            anchor_time: i64::from_le_bytes(r.take()?),
            digest: u128::from_be_bytes(r.take()?),
        });
    }
    if !r.0.is_empty() {
        return Err(Error::Malformed);
    }
    Ok((
        Event {
            id,
            time,
            amount_minor,
            currency,
            approved: flags & 1 != 0,
            location,
            merchant_id,
            terminal_id,
        },
        raised,
    ))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(Error::Malformed)?;
        self.0 = rest;
        Ok(*head)
    }

    fn str(&mut self) -> Result<Box<str>, Error> {
        let n = usize::from(u16::from_le_bytes(self.take()?));
        if self.0.len() < n {
            return Err(Error::Malformed);
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        std::str::from_utf8(s)
            .map(Into::into)
            .map_err(|_| Error::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(location: Option<(f32, f32)>) -> Event {
        Event {
            id: "tx-1".into(),
            time: 1_800_000_000_123,
            amount_minor: -42,
            currency: *b"EUR",
            approved: true,
            location,
            merchant_id: "M001".into(),
            terminal_id: "T0001".into(),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let raised = vec![
            Raised {
                rule: id::IMPOSSIBLE_TRAVEL,
                anchor_time: 7,
                digest: u128::MAX - 3,
            },
            Raised {
                rule: id::NIGHT_HIGH_RISK_MCC,
                anchor_time: -1,
                digest: 1,
            },
        ];
        for loc in [None, Some((52.52, -13.4))] {
            let b = encode(&event(loc), &raised);
            let (e, r) = decode(&b).unwrap();
            assert_eq!(format!("{e:?}"), format!("{:?}", event(loc)));
            assert_eq!(format!("{r:?}"), format!("{raised:?}"));
        }
    }

    #[test]
    fn a_cut_a_padded_or_a_newer_record_is_refused() {
        let b = encode(&event(Some((1.0, 2.0))), &[]);
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "cut at {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode(&long).unwrap_err(), Error::Malformed);
        let mut newer = b;
        newer[0] = 2;
        assert_eq!(decode(&newer).unwrap_err(), Error::Version(2));
    }
}
