//! Digests: for each digest-mode merchant, once its period has ended (plus a grace for
//! transactions still in the pipeline), the period is closed and its digest enqueued. Periods
//! are aligned to Monday 1970-01-05 00:00 UTC (so `7days` is a week from Monday, `1day` a UTC
//! day, `1h` a clock hour). Any replica may close a period; the `digests` primary key lets
//! exactly one do it.

use crate::prefs::Mode;
use crate::store;
use crate::{render, Args, Prefs};
use posflow_pg::Conn;
use posflow_runtime::metrics::counter_vec;
use posflow_runtime::Context;
use posflow_schema::now_millis;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The first Monday after the Unix epoch (a Thursday), where periods start: weeks from Monday.
/// Four whole days, so a period that divides a day is aligned as it would be to the epoch.
const ALIGN_MS: i64 = 4 * 86_400_000;

/// The end of the last whole period of `every_ms` that finished at least `grace_ms` before `now_ms`.
pub fn period_end(now_ms: i64, every_ms: i64, grace_ms: i64) -> i64 {
    (now_ms - grace_ms - ALIGN_MS).div_euclid(every_ms) * every_ms + ALIGN_MS
}

pub async fn run(args: Arc<Args>, prefs: Prefs, ctx: Context) -> anyhow::Result<()> {
    let digests = counter_vec(
        "posflow_notifier_digests_total",
        "Digest periods closed and enqueued by this replica, by format",
        &["format"],
    );
    let mut conn = Conn::new(&args.db);
    // Per merchant: the end of the last period known closed (by anyone) or found empty.
    let mut closed: HashMap<String, i64> = HashMap::new();
    let grace_ms = (args.digest_grace_secs * 1000) as i64;
    let mut pruned = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = ctx.shutdown.wait() => return Ok(()),
        }
        let Some(client) = conn.get(&ctx).await else {
            return Ok(());
        };
        if pruned.elapsed() > Duration::from_secs(3600) {
            pruned = std::time::Instant::now();
            let keep = Duration::from_secs(args.outbox_retention_hours * 3600);
            match store::prune(client, keep).await {
                Ok(n) => tracing::info!(rows = n, "pruned finished deliveries and digested items"),
                Err(e) => {
                    tracing::warn!(error = %e.summary(), "pruning the outbox failed; next hour")
                }
            }
        }
        for p in prefs.snapshot().values() {
            let Mode::Digest { every } = p.mode else {
                continue;
            };
            let every_ms = every.as_millis() as i64;
            let end = period_end(now_millis(), every_ms, grace_ms);
            let last = match closed.get(&p.merchant_id) {
                Some(&last) => Some(last),
                None => match store::last_digest_end_ms(client, &p.merchant_id).await {
                    Ok(last) => last,
                    Err(e) => {
                        tracing::warn!(error = %e.summary(), "reading the last digest failed; retrying");
                        break;
                    }
                },
            };
            if last.is_some_and(|l| l >= end) {
                continue;
            }
            let start = last.unwrap_or(end - every_ms);
            let p2 = p.clone();
            match store::close_digest(client, &p.merchant_id, start, end, |items| {
                render::digest(&p2, start, end, items)
            })
            .await
            {
                Ok(Some(n)) => {
                    digests.with_label_values(&[p.format.as_str()]).inc();
                    tracing::info!(
                        merchant = p.merchant_id,
                        items = n,
                        period_end = posflow_schema::rfc3339_millis(end),
                        "digest enqueued"
                    );
                    closed.insert(p.merchant_id.clone(), end);
                }
                Ok(None) => {
                    // Empty, or closed by another replica: either way nothing to do until the next period.
                    closed.insert(p.merchant_id.clone(), end);
                }
                Err(e) => {
                    tracing::warn!(error = %e.summary(), merchant = p.merchant_id, "closing a digest failed; retrying");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::period_end;

    #[test]
    fn periods_align_to_the_epoch_after_the_grace() {
        let hour = 3_600_000;
        // 10:30 with a minute's grace: the last closed hour ends at 10:00.
        assert_eq!(period_end(10 * hour + hour / 2, hour, 60_000), 10 * hour);
        // 10:00:30 is still inside the grace of the 9-10 hour.
        assert_eq!(period_end(10 * hour + 30_000, hour, 60_000), 9 * hour);
        assert_eq!(period_end(10 * hour + 60_000, hour, 60_000), 10 * hour);
    }

    #[test]
    fn days_are_utc_days_and_weeks_start_on_monday() {
        let day = 86_400_000;
        // Thursday 2026-12-03 10:00 UTC.
        let now = 1_796_292_000_000;
        assert_eq!(period_end(now, day, 60_000), 1_796_256_000_000, "Thu 00:00");
        // The last whole week ended on Monday 2026-11-30 00:00 UTC.
        assert_eq!(period_end(now, 7 * day, 60_000), 1_795_996_800_000);
    }
}
