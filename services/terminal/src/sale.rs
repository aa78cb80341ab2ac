//! A sale as the terminal contract's JSON payload (docs/terminal-contract.md, version 2).

use serde_json::json;

/// What the POS application knows of a sale. The card number goes no further than the payload,
/// which the queue keeps encrypted until the bridge tokenises it.
#[derive(Debug, Clone)]
pub struct Sale {
    pub merchant_id: String,
    pub terminal_id: String,
    /// Capture time, milliseconds since the epoch (the terminal's clock).
    pub time_ms: i64,
    pub amount_minor: i64,
    pub currency: String,
    pub entry_mode: String,
    pub pan: Option<String>,
    pub response_code: String,
    pub auth_code: Option<String>,
    pub mcc: String,
    pub location: Option<(f64, f64)>,
    /// `Some(since)`: captured offline, the link down since then (ms since the epoch).
    pub offline_since: Option<i64>,
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

impl Sale {
    /// The payload of this sale as transaction `id`, number `sequence` of the terminal.
    pub fn payload(&self, id: &str, sequence: i64) -> String {
        let mut p = json!({
            "version": 2,
            "transaction_id": id,
            "terminal_id": self.terminal_id,
            "merchant_id": self.merchant_id,
            "sequence": sequence,
            "transaction_time": rfc3339(self.time_ms),
            "type": "sale",
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "payment_method": "card",
            "entry_mode": self.entry_mode,
            "response_code": self.response_code,
            "mcc": self.mcc,
        });
        if let Some(pan) = &self.pan {
            p["card"] = json!({ "pan": pan });
        }
        if let Some(code) = &self.auth_code {
            p["auth_code"] = code.as_str().into();
        }
        if let Some((lat, lon)) = self.location {
            p["location"] = json!({ "lat": lat, "lon": lon });
        }
        if let Some(since) = self.offline_since {
            p["offline"] = true.into();
            p["offline_since"] = rfc3339(since).into();
        }
        p.to_string()
    }
}
