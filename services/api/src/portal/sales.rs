//! The overview's numbers: sales and refunds per currency and UTC day over a period, read in
//! the merchant's scoped transaction (row-level security behind the query's own filter).
//! Days are UTC days; a merchant's own time zone is not yet a setting.

use crate::db::Scoped;
use posflow_pg::DbError;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Count and sum (minor units) of one type.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub count: i64,
    pub amount_minor: i64,
}

impl Tally {
    fn add(&mut self, t: Tally) {
        self.count += t.count;
        self.amount_minor += t.amount_minor;
    }
}

/// One day of one currency.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    pub sales: Tally,
    pub refunds: Tally,
}

/// Per currency, per UTC day (`YYYY-MM-DD`), in order.
pub type Daily = BTreeMap<String, BTreeMap<String, Day>>;

/// Sales and refunds of the scope's merchant in [from, to), per currency and UTC day.
pub async fn daily(s: &Scoped<'_>, from: SystemTime, to: SystemTime) -> Result<Daily, DbError> {
    let rows =
        s.tx.query(
            "SELECT currency, to_char(transaction_time AT TIME ZONE 'UTC', 'YYYY-MM-DD'), type, \
                    count(*), sum(amount_minor)::bigint \
             FROM transactions \
             WHERE merchant_id = $1 AND transaction_time >= $2 AND transaction_time < $3 \
               AND type IN ('sale', 'refund') \
             GROUP BY 1, 2, 3",
            &[&s.merchant, &from, &to],
        )
        .await?;
    let mut d = Daily::new();
    for r in rows {
        let t = Tally {
            count: r.get(3),
            amount_minor: r.get(4),
        };
        let day = d.entry(r.get(0)).or_default().entry(r.get(1)).or_default();
        match r.get::<_, &str>(2) {
            "sale" => day.sales.add(t),
            _ => day.refunds.add(t),
        }
    }
    Ok(d)
}

/// The period's total of each currency.
pub fn totals(d: &Daily) -> BTreeMap<String, Day> {
    d.iter()
        .map(|(cur, days)| {
            let mut total = Day::default();
            for day in days.values() {
                total.sales.add(day.sales);
                total.refunds.add(day.refunds);
            }
            (cur.clone(), total)
        })
        .collect()
}
