//! ISO 4217 active currency codes and their minor units (the number of decimals), from the
//! ISO 4217 list (amendment 178). Funds codes and precious metals are not sale currencies and
//! are left out on purpose.

/// (code, minor units)
pub const ISO_4217: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYU", 2),
    ("UZS", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XCG", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

/// The minor units of an active ISO 4217 code.
pub fn minor_units(code: &str) -> Option<u8> {
    ISO_4217.iter().find(|(c, _)| *c == code).map(|(_, m)| *m)
}

/// `major` whole units of `code` in its minor units (a limit of 250 is 25,000 EUR cents, 250
/// yen); saturating. `None` for a code that is not active ISO 4217.
pub fn major_to_minor(major: i64, code: &str) -> Option<i64> {
    minor_units(code).map(|u| major.saturating_mul(10i64.pow(u32::from(u))))
}

/// An amount in minor units as a decimal string in its currency's major units ("12.34" for
/// 1234 EUR, "1234" for 1234 JPY); two decimals for an unknown code.
pub fn format_minor(amount_minor: impl Into<i128>, code: &str) -> String {
    // i128: sums and line totals (i64 x i32) are formatted too, and cannot overflow it.
    let amount_minor: i128 = amount_minor.into();
    let units = minor_units(code).unwrap_or(2) as u32;
    if units == 0 {
        return amount_minor.to_string();
    }
    let scale = 10u128.pow(units);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = units as usize
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn amounts_print_in_major_units() {
        use super::format_minor;
        assert_eq!(format_minor(1234, "EUR"), "12.34");
        assert_eq!(format_minor(-5, "EUR"), "-0.05");
        assert_eq!(format_minor(1234, "JPY"), "1234");
        assert_eq!(format_minor(1234, "BHD"), "1.234");
        assert_eq!(format_minor(0, "XXX"), "0.00");
        assert_eq!(
            format_minor(i128::from(i64::MAX) * 3, "EUR"),
            "276701161105643274.21"
        );
    }

    #[test]
    fn table_is_sorted_unique_and_well_formed() {
        let codes: Vec<_> = super::ISO_4217.iter().map(|(c, _)| *c).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(codes, sorted);
        assert!(codes
            .iter()
            .all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())));
        assert_eq!(super::minor_units("JPY"), Some(0));
        assert_eq!(super::minor_units("KWD"), Some(3));
        assert_eq!(super::minor_units("XXX"), None);
    }
}
