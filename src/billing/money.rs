//! Exact decimal → cents conversion. Amounts arrive as decimal text (`"50.00"`, `50.5`, `20`); going through a
//! float would turn `0.29` into 28.999… cents, so the digits are read as they are written.

/// Why a decimal text is not an amount of money.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("`{0}` is not a decimal number like 50.00")]
    Malformed(String),
    #[error("`{0}` has fractions of a cent")]
    SubCent(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// Converts a decimal in currency units (`"-12.5"`, `"50.00"`, `"7"`) to signed cents, exactly.
///
/// Accepts an optional sign, digits, and an optional fraction; more than two fraction digits only when the
/// extra ones are zeros (`"1.500"`). Rejects exponents, thousands separators, empty parts (`"."`, `"1."`)
/// and surrounding text.
///
/// # Errors
/// [`AmountError`] when the text is not such a decimal, has fractions of a cent, or does not fit in `i64`.
pub fn parse_cents(text: &str) -> Result<i64, AmountError> {
    let malformed = || AmountError::Malformed(text.to_owned());
    let trimmed = text.trim();
    let (negative, unsigned) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
        return Err(malformed());
    }
    let fraction = fraction.unwrap_or("");
    let (cent_digits, rest) = fraction.split_at(fraction.len().min(2));
    if rest.bytes().any(|b| b != b'0') {
        return Err(AmountError::SubCent(text.to_owned()));
    }
    let overflow = || AmountError::Overflow(text.to_owned());
    let mut cents: i64 = 0;
    for digit in whole.bytes().chain(cent_digits.bytes()) {
        cents = cents
            .checked_mul(10)
            .and_then(|c| c.checked_add(i64::from(digit - b'0')))
            .ok_or_else(overflow)?;
    }
    // "5.5" is 550 cents: one fraction digit stands for tens of cents.
    if cent_digits.len() == 1 {
        cents = cents.checked_mul(10).ok_or_else(overflow)?;
    } else if cent_digits.is_empty() {
        cents = cents.checked_mul(100).ok_or_else(overflow)?;
    }
    Ok(if negative { -cents } else { cents })
}

/// Cents from a JSON number or string, read from its original text (see [`serde_json::value::RawValue`]).
///
/// # Errors
/// [`AmountError`] when it is neither, or the text is not an amount.
pub fn cents_from_json(raw: &serde_json::value::RawValue) -> Result<i64, AmountError> {
    let text = raw.get().trim();
    if text.starts_with('"') {
        let inner: String =
            serde_json::from_str(text).map_err(|_| AmountError::Malformed(text.to_owned()))?;
        parse_cents(&inner)
    } else {
        parse_cents(text)
    }
}

/// `12345` cents as `123.45`, for messages.
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_become_exact_cents() {
        for (text, cents) in [
            ("50.00", 5000),
            ("50", 5000),
            ("0.29", 29),
            ("0.1", 10),
            ("5.5", 550),
            ("1.500", 150),
            ("-12.34", -1234),
            ("+7.01", 701),
            (" 42.42 ", 4242),
            ("0", 0),
            ("0.00", 0),
            ("0007.5", 750),
            ("92233720368547758.07", i64::MAX),
        ] {
            assert_eq!(parse_cents(text), Ok(cents), "{text}");
        }
    }

    #[test]
    fn malformed_amounts_are_refused() {
        for text in [
            "", " ", "-", ".", "1.", ".5", "1,50", "1 000", "5e2", "1.2.3", "abc", "--1", "0x10",
            "NaN", "inf", "1.5€",
        ] {
            assert!(
                matches!(parse_cents(text), Err(AmountError::Malformed(_))),
                "{text:?} accepted"
            );
        }
        assert!(matches!(parse_cents("0.001"), Err(AmountError::SubCent(_))));
        assert!(matches!(parse_cents("1.255"), Err(AmountError::SubCent(_))));
        assert!(matches!(
            parse_cents("92233720368547758.08"),
            Err(AmountError::Overflow(_))
        ));
        assert!(matches!(
            parse_cents("99999999999999999999999"),
            Err(AmountError::Overflow(_))
        ));
    }

    #[test]
    fn json_numbers_and_strings_are_read_from_their_text() {
        let raw = |s: &str| serde_json::from_str::<Box<serde_json::value::RawValue>>(s).unwrap();
        assert_eq!(cents_from_json(&raw("\"50.00\"")), Ok(5000));
        assert_eq!(cents_from_json(&raw("0.29")), Ok(29));
        assert_eq!(cents_from_json(&raw("20")), Ok(2000));
        assert_eq!(cents_from_json(&raw("1.10")), Ok(110));
        assert!(cents_from_json(&raw("1e2")).is_err());
        assert!(cents_from_json(&raw("null")).is_err());
        assert!(cents_from_json(&raw("[1]")).is_err());
        assert!(cents_from_json(&raw("\"\"")).is_err());
    }

    #[test]
    fn cents_format_as_decimals() {
        assert_eq!(format_cents(5000), "50.00");
        assert_eq!(format_cents(-7), "-0.07");
        assert_eq!(format_cents(i64::MIN), "-92233720368547758.08");
    }
}
