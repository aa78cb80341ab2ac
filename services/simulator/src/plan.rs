//! What a fleet will send: deterministic from a seed, so a test knows every transaction (and
//! every card number it used) without reading anything back.

use posflow_schema::ReasonCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The rule an invalid-on-purpose transaction breaks (the validator's reason code).
pub const INVALID_KINDS: [ReasonCode; 4] = [
    ReasonCode::AmountNotPositive,
    ReasonCode::CurrencyUnknown,
    ReasonCode::TimeInFuture,
    ReasonCode::OriginalMissing,
];

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub terminals: usize,
    pub per_terminal: usize,
    pub merchants: usize,
    /// Every Nth transaction of the fleet breaks a rule (0: none).
    pub invalid_every: usize,
    pub seed: u64,
    /// Terminal ids are T0001, T0002, ... starting here.
    pub first_terminal: usize,
    /// Prefix of transaction ids, so runs do not collide.
    pub run_id: String,
}

/// One transaction and what the pipeline should make of it.
#[derive(Debug, Clone)]
pub struct Planned {
    pub transaction_id: String,
    pub terminal_id: String,
    pub merchant_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// The clear card number the terminal sends (test data; the bridge tokenises it).
    pub pan: String,
    pub expected_rejection: Option<ReasonCode>,
    pub payload: Vec<u8>,
}

pub fn terminal_id(n: usize) -> String {
    format!("T{n:04}")
}

const BINS: [&str; 4] = ["411111", "555555", "400000", "520000"];

/// A Luhn-valid 16-digit test number under one of the well-known test BINs.
fn card_number(rng: &mut StdRng) -> String {
    let mut d: Vec<u8> = BINS[rng.gen_range(0..BINS.len())]
        .bytes()
        .map(|b| b - b'0')
        .collect();
    while d.len() < 15 {
        d.push(rng.gen_range(0..10));
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &v)| {
            let v = u32::from(v);
            if i % 2 == 0 {
                let x = v * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                v
            }
        })
        .sum();
    d.push(((10 - sum % 10) % 10) as u8);
    d.iter().map(|v| char::from(b'0' + v)).collect()
}

const GOODS: [(&str, &str); 6] = [
    ("COF-01", "Coffee"),
    ("CRO-02", "Croissant"),
    ("WAT-03", "Water 0.5l"),
    ("SAN-04", "Sandwich"),
    ("NEWS-5", "Newspaper"),
    ("GUM-06", "Chewing gum"),
];

/// Rough city centres, so locations are plausible.
const CITIES: [(f64, f64); 5] = [
    (52.52, 13.405),
    (48.857, 2.352),
    (51.507, -0.128),
    (35.68, 139.69),
    (40.416, -3.703),
];

/// Terminal number `n`'s merchant (0-based): dealt round-robin by terminal number, so a
/// terminal has the same merchant in every run and fleet (the registry it is registered in
/// says so; deploy/local/stack.sh registers T0001..T0500 this way with five merchants).
fn merchant_index(cfg: &FleetConfig, n: usize) -> usize {
    (n.max(1) - 1) % cfg.merchants.max(1)
}

fn merchant_id(m: usize) -> String {
    format!("M{:03}", m + 1)
}

/// The fleet's terminal registry, in the file format `posflow-admin terminals apply` takes.
pub fn registry_toml(cfg: &FleetConfig) -> String {
    let mut out = String::from("# The simulator's fleet (posflow-simulator --print-registry).\n");
    for n in cfg.first_terminal..cfg.first_terminal + cfg.terminals {
        out.push_str(&format!(
            "[terminals.{}]\nmerchant = \"{}\"\n",
            terminal_id(n),
            merchant_id(merchant_index(cfg, n))
        ));
    }
    out
}

/// The fleet's transactions, per terminal, in publish order.
pub fn plan(cfg: &FleetConfig, now_ms: i64) -> Vec<Vec<Planned>> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut n = 0usize;
    (0..cfg.terminals)
        .map(|t| {
            let terminal = Terminal::new(cfg, t, &mut rng);
            let mut previous: Option<String> = None;
            (0..cfg.per_terminal)
                .map(|seq| {
                    n += 1;
                    let p = terminal.transaction(cfg, seq, n, &previous, now_ms, &mut rng);
                    previous = Some(p.transaction_id.clone());
                    p
                })
                .collect()
        })
        .collect()
}

/// One terminal of the fleet: where it is, its merchant's currency, the cards its customers use.
struct Terminal {
    id: String,
    merchant: String,
    currency: &'static str,
    /// Decimal places of the currency's prices (0: whole yen).
    scale: u32,
    lat: f64,
    lon: f64,
    cards: Vec<String>,
}

impl Terminal {
    fn new(cfg: &FleetConfig, t: usize, rng: &mut StdRng) -> Self {
        let m = merchant_index(cfg, cfg.first_terminal + t);
        let (currency, scale) = match m % 5 {
            3 => ("GBP", 1),
            4 => ("JPY", 0),
            _ => ("EUR", 1),
        };
        let city = CITIES[m % CITIES.len()];
        // Five decimals (about a metre), as terminals report; long decimal tails would also
        // look like digit runs to card-number scanners.
        let round = |v: f64| (v * 1e5).round() / 1e5;
        let (lat, lon) = (
            round(city.0 + rng.gen_range(-0.05..0.05)),
            round(city.1 + rng.gen_range(-0.05..0.05)),
        );
        Terminal {
            id: terminal_id(cfg.first_terminal + t),
            merchant: merchant_id(m),
            currency,
            scale,
            lat,
            lon,
            cards: (0..8).map(|_| card_number(rng)).collect(),
        }
    }

    /// The terminal's `seq`th transaction, the fleet's `n`th (every `invalid_every`th breaks a
    /// rule on purpose; every 20th refunds the previous one).
    fn transaction(
        &self,
        cfg: &FleetConfig,
        seq: usize,
        n: usize,
        previous: &Option<String>,
        now_ms: i64,
        rng: &mut StdRng,
    ) -> Planned {
        let id = format!("{}-{}-{seq:06}", cfg.run_id, self.id);
        let items: Vec<(usize, i64, i32)> = (0..rng.gen_range(1..=3))
            .map(|_| {
                let price = if self.scale == 0 {
                    rng.gen_range(100..2000)
                } else {
                    rng.gen_range(50..2500)
                };
                (rng.gen_range(0..GOODS.len()), price, rng.gen_range(1..=3))
            })
            .collect();
        let mut amount: i64 = items.iter().map(|(_, p, q)| p * i64::from(*q)).sum();
        let mut line_items: Vec<_> = items
            .iter()
            .map(|(g, p, q)| json!({"sku": GOODS[*g].0, "description": GOODS[*g].1, "unit_price_minor": p, "quantity": q}))
            .collect();
        let mut cur = self.currency.to_string();
        let mut time = now_ms - rng.gen_range(0..30_000);
        let mut kind = "sale";
        let mut original = None;
        let invalid = cfg.invalid_every > 0 && n % cfg.invalid_every == 0;
        let expected_rejection =
            invalid.then(|| INVALID_KINDS[(n / cfg.invalid_every) % INVALID_KINDS.len()]);
        match expected_rejection {
            Some(ReasonCode::AmountNotPositive) => {
                amount = 0;
                line_items.clear();
            }
            Some(ReasonCode::CurrencyUnknown) => cur = "XYZ".into(),
            Some(ReasonCode::TimeInFuture) => time = now_ms + 3_600_000,
            Some(_) => kind = "refund",
            None if seq % 20 == 19 && previous.is_some() => {
                kind = "refund";
                original = previous.clone();
            }
            None => {}
        }
        let pan = self.cards[rng.gen_range(0..self.cards.len())].clone();
        let entry_mode = ["chip", "contactless", "contactless", "swipe"][rng.gen_range(0..4)];
        let payload = json!({
            "version": 1,
            "transaction_id": id,
            "terminal_id": self.id,
            "merchant_id": self.merchant,
            "sequence": seq,
            "transaction_time": posflow_schema::rfc3339_millis(time),
            "type": kind,
            "original_transaction_id": original,
            "amount_minor": amount,
            "currency": cur,
            "payment_method": "card",
            "entry_mode": entry_mode,
            "card": {"pan": pan},
            "auth_code": format!("{:06}", rng.gen_range(0..1_000_000)),
            "response_code": "00",
            "mcc": "5814",
            "location": {"lat": self.lat, "lon": self.lon},
            "line_items": line_items,
        });
        Planned {
            transaction_id: id,
            terminal_id: self.id.clone(),
            merchant_id: self.merchant.clone(),
            amount_minor: amount,
            currency: cur,
            pan,
            expected_rejection,
            payload: payload.to_string().into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_and_mark_the_invalid_ones() {
        let cfg = FleetConfig {
            terminals: 3,
            per_terminal: 10,
            merchants: 2,
            invalid_every: 5,
            seed: 7,
            first_terminal: 1,
            run_id: "r".into(),
        };
        let a = plan(&cfg, 1_000_000_000_000);
        let b = plan(&cfg, 1_000_000_000_000);
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|t| t.len() == 10));
        assert_eq!(a[2][9].payload, b[2][9].payload);
        let invalid: Vec<_> = a
            .iter()
            .flatten()
            .filter_map(|p| p.expected_rejection)
            .collect();
        assert_eq!(invalid.len(), 6);
        assert_eq!(a[1][0].terminal_id, "T0002");
        assert_eq!(a[1][0].merchant_id, "M002");
        for p in a.iter().flatten() {
            assert_eq!(p.pan.len(), 16);
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            assert_eq!(v["amount_minor"].as_i64(), Some(p.amount_minor));
        }
    }
}
