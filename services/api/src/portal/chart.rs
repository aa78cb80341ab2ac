//! The overview's chart: daily sales and refunds of one currency as SVG bars, drawn on the
//! server (no script, nothing for the CSP to allow: presentation attributes only). Each bar has
//! a `<title>` (the figure on hover, and for screen readers).

use super::html::escape;
use super::sales::Day;
use posflow_schema::currency::format_minor;
use std::collections::BTreeMap;
use std::fmt::Write as _;

const W: f64 = 640.0;
const H: f64 = 220.0;
const PAD_LEFT: f64 = 8.0;
const PAD_BOTTOM: f64 = 24.0;
const PAD_TOP: f64 = 20.0;
pub const SALES_FILL: &str = "#2f6db5";
pub const REFUNDS_FILL: &str = "#d9822b";

/// Bars for every day of `days` (`YYYY-MM-DD`, in order; a day without data is an empty slot).
pub fn daily_bars(currency: &str, days: &[String], data: &BTreeMap<String, Day>) -> String {
    let max = data
        .values()
        .map(|d| d.sales.amount_minor.max(d.refunds.amount_minor))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = (W - PAD_LEFT) / days.len().max(1) as f64;
    let bar = (slot * 0.4).max(1.0);
    let plot = H - PAD_BOTTOM - PAD_TOP;
    let mut svg = format!(
        r#"<svg class="chart" role="img" viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg" aria-label="Daily sales and refunds, {cur}"><title>Daily sales and refunds, {cur}</title>"#,
        cur = escape(currency)
    );
    let baseline = H - PAD_BOTTOM;
    let _ = write!(
        svg,
        r##"<line x1="{PAD_LEFT}" y1="{baseline}" x2="{W}" y2="{baseline}" stroke="#999" stroke-width="1"/>"##
    );
    for (i, day) in days.iter().enumerate() {
        let x = PAD_LEFT + i as f64 * slot + slot * 0.1;
        let d = data.get(day).copied().unwrap_or_default();
        for (k, (what, t, fill)) in [
            ("sales", d.sales, SALES_FILL),
            ("refunds", d.refunds, REFUNDS_FILL),
        ]
        .into_iter()
        .enumerate()
        {
            let h = plot * t.amount_minor as f64 / max;
            let _ = write!(
                svg,
                r#"<rect class="{what}" x="{:.1}" y="{:.1}" width="{bar:.1}" height="{h:.1}" fill="{fill}"><title>{day} {what}: {} {cur} ({} transactions)</title></rect>"#,
                x + k as f64 * bar,
                baseline - h,
                format_minor(t.amount_minor, currency),
                t.count,
                cur = escape(currency),
            );
        }
    }
    // The first and last day under the axis; the period is in the page's heading too.
    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        let _ = write!(
            svg,
            r##"<text x="{PAD_LEFT}" y="{}" font-size="12" fill="#333">{first}</text><text x="{W}" y="{}" font-size="12" fill="#333" text-anchor="end">{last}</text>"##,
            H - 6.0,
            H - 6.0
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{PAD_LEFT}" y="14" font-size="12" fill="#333">max {} {}</text></svg>"##,
        format_minor(max as i64, currency),
        escape(currency)
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::sales::Tally;

    #[test]
    fn each_day_has_a_sales_and_a_refunds_bar_scaled_to_the_largest() {
        let days: Vec<String> = ["2026-11-29", "2026-11-30", "2026-12-01"]
            .map(String::from)
            .to_vec();
        let mut data = BTreeMap::new();
        data.insert(
            "2026-11-30".to_string(),
            Day {
                sales: Tally {
                    count: 3,
                    amount_minor: 1000,
                },
                refunds: Tally {
                    count: 1,
                    amount_minor: 250,
                },
            },
        );
        let svg = daily_bars("EUR", &days, &data);
        assert_eq!(svg.matches("<rect class=\"sales\"").count(), 3);
        assert_eq!(svg.matches("<rect class=\"refunds\"").count(), 3);
        assert!(svg.contains("2026-11-30 sales: 10.00 EUR (3 transactions)"));
        assert!(svg.contains("2026-11-30 refunds: 2.50 EUR (1 transactions)"));
        // The largest bar fills the plot; a quarter of it is a quarter as tall.
        let full = H - PAD_BOTTOM - PAD_TOP;
        assert!(svg.contains(&format!("height=\"{full:.1}\"")));
        assert!(svg.contains(&format!("height=\"{:.1}\"", full / 4.0)));
        assert!(!svg.contains("style="), "no inline style (CSP)");
    }
}
