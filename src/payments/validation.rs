//! Input rules for the payments API: pure functions from raw request values to typed values.
//!
//! Parse, don't re-validate: handlers call these once and pass the typed result on. Every failure
//! names the field and says what is wrong, so the client gets a 4xx with a clear message.

use iso_currency::Currency;
use unicode_normalization::UnicodeNormalization;

use super::errors::FieldError;

/// Largest amount in major units (10,000,000.00 for a two-decimal currency).
const MAX_MAJOR_UNITS: i64 = 10_000_000;
pub const DESCRIPTION_MAX_CHARS: usize = 500;
pub const PAYER_MIN_CHARS: usize = 4;
pub const PAYER_MAX_CHARS: usize = 64;
pub const EMAIL_MAX_CHARS: usize = 254;
pub const PASSWORD_MIN_CHARS: usize = 12;
pub const PASSWORD_MAX_CHARS: usize = 256;
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

/// A validated ISO 4217 currency with its minor-unit exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidCurrency {
    pub code: Currency,
    pub exponent: u32,
}

/// Parse an ISO 4217 alphabetic code. Codes without minor units (gold, testing, "no currency") are refused.
pub fn parse_currency(raw: &str) -> Result<ValidCurrency, FieldError> {
    let err = || {
        FieldError::new(
            "currency",
            "must be an ISO 4217 currency code such as EUR or USD",
        )
    };
    if raw.len() != 3 || !raw.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(err());
    }
    let code = Currency::from_code(raw).ok_or_else(err)?;
    // Historic codes (HRK, SLL, ...) are no longer on the current list.
    if let Some(successor) = code.is_superseded() {
        return Err(FieldError::new(
            "currency",
            format!(
                "{raw} is no longer an active currency; use {}",
                successor.code()
            ),
        ));
    }
    let exponent = code.exponent().ok_or_else(|| {
        FieldError::new(
            "currency",
            format!("{raw} has no minor units and cannot be used for payments"),
        )
    })?;
    Ok(ValidCurrency {
        code,
        exponent: u32::from(exponent),
    })
}

/// Parse a decimal amount string into integer minor units for the currency.
///
/// Accepts `123`, `123.4`, `123.45` (at most as many decimals as the currency has), no sign, no
/// exponent, no separators. Floats never appear: money is exact.
pub fn parse_amount(raw: &str, currency: ValidCurrency) -> Result<i64, FieldError> {
    let field = "amount";
    let bad = |m: String| FieldError::new(field, m);
    if raw.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    let (whole, frac) = match raw.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (raw, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("must be a decimal number such as \"12.50\"".into()));
    }
    if whole.len() > 1 && whole.starts_with('0') {
        return Err(bad("must not have leading zeros".into()));
    }
    let frac = frac.unwrap_or("");
    if raw.contains('.') && frac.is_empty() {
        return Err(bad("must have digits after the decimal point".into()));
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("must be a decimal number such as \"12.50\"".into()));
    }
    if frac.len() as u32 > currency.exponent {
        return Err(bad(format!(
            "{} allows at most {} decimal places",
            currency.code.code(),
            currency.exponent
        )));
    }
    let scale = 10_i64.pow(currency.exponent);
    let max_minor = MAX_MAJOR_UNITS * scale;
    if whole.len() > 12 {
        return Err(bad(format!(
            "must be at most {}",
            format_minor(max_minor, currency.exponent)
        )));
    }
    let whole: i64 = whole.parse().map_err(|_| bad("is not a number".into()))?;
    let mut frac_value: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad("is not a number".into()))?
    };
    frac_value *= 10_i64.pow(currency.exponent - frac.len() as u32);
    let minor = whole * scale + frac_value;
    if minor < 1 {
        return Err(bad(format!(
            "must be at least {}",
            format_minor(1, currency.exponent)
        )));
    }
    if minor > max_minor {
        return Err(bad(format!(
            "must be at most {}",
            format_minor(max_minor, currency.exponent)
        )));
    }
    Ok(minor)
}

/// Render integer minor units as a decimal string with the currency's exponent.
pub fn format_minor(minor: i64, exponent: u32) -> String {
    if exponent == 0 {
        return minor.to_string();
    }
    let scale = 10_i64.pow(exponent);
    format!(
        "{}.{:0width$}",
        minor / scale,
        minor % scale,
        width = exponent as usize
    )
}

/// NFC-normalize free text, refuse control characters and enforce a length in characters.
pub fn normalize_text(
    field: &str,
    raw: &str,
    min: usize,
    max: usize,
) -> Result<String, FieldError> {
    let text: String = raw.nfc().collect();
    if text.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    // Bidi overrides can disguise text in dashboards and logs.
    if text
        .chars()
        .any(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
    {
        return Err(FieldError::new(
            field,
            "must not contain bidirectional control characters",
        ));
    }
    let len = text.chars().count();
    if len < min {
        return Err(FieldError::new(
            field,
            format!("must be at least {min} characters"),
        ));
    }
    if len > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(text)
}

/// A payer account reference (IBAN, card token, account number): letters, digits, spaces and dashes.
pub fn parse_payer_account(raw: &str) -> Result<String, FieldError> {
    let text = normalize_text("payer_account", raw, PAYER_MIN_CHARS, PAYER_MAX_CHARS)?;
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-')
    {
        return Err(FieldError::new(
            "payer_account",
            "may contain only letters, digits, spaces and dashes",
        ));
    }
    let compact: String = text.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    if compact.len() < PAYER_MIN_CHARS {
        return Err(FieldError::new(
            "payer_account",
            format!("must have at least {PAYER_MIN_CHARS} letters or digits"),
        ));
    }
    Ok(compact.to_ascii_uppercase())
}

/// Show only the last four characters of an account reference.
pub fn mask_account(compact: &str) -> String {
    let tail: String = compact
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("****{tail}")
}

/// Lower-case, NFC-normalized email with a minimal shape check (local@domain.tld).
pub fn parse_email(raw: &str) -> Result<String, FieldError> {
    let text = normalize_text("email", raw.trim(), 3, EMAIL_MAX_CHARS)?.to_lowercase();
    let valid = match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !text.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if !valid {
        return Err(FieldError::new(
            "email",
            "must be an email address such as ana@example.com",
        ));
    }
    Ok(text)
}

/// Mask an email for audit details: first character of the local part and the domain.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

/// A new password: length only (NIST 800-63B), no composition rules.
pub fn check_new_password(field: &str, raw: &str) -> Result<(), FieldError> {
    let len = raw.chars().count();
    if len < PASSWORD_MIN_CHARS {
        return Err(FieldError::new(
            field,
            format!("must be at least {PASSWORD_MIN_CHARS} characters"),
        ));
    }
    if len > PASSWORD_MAX_CHARS {
        return Err(FieldError::new(
            field,
            format!("must be at most {PASSWORD_MAX_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Idempotency keys: 1..=255 visible ASCII characters.
pub fn parse_idempotency_key(raw: &str) -> Result<String, FieldError> {
    if raw.is_empty()
        || raw.len() > IDEMPOTENCY_KEY_MAX
        || !raw.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(FieldError::new(
            "Idempotency-Key",
            format!("must be 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters"),
        ));
    }
    Ok(raw.to_string())
}

/// Tenant slugs: 2..=63 of a-z, 0-9 and dashes, starting with a letter.
pub fn parse_slug(raw: &str) -> Result<String, FieldError> {
    let ok = (2..=63).contains(&raw.len())
        && raw.starts_with(|c: char| c.is_ascii_lowercase())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(FieldError::new(
            "tenant",
            "must be 2 to 63 characters of a-z, 0-9 and '-', starting with a letter",
        ));
    }
    Ok(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> ValidCurrency {
        parse_currency("EUR").unwrap()
    }

    #[test]
    fn amounts_are_parsed_into_minor_units() {
        assert_eq!(parse_amount("0.01", eur()).unwrap(), 1);
        assert_eq!(parse_amount("12.5", eur()).unwrap(), 1250);
        assert_eq!(parse_amount("10000000.00", eur()).unwrap(), 1_000_000_000);
        assert_eq!(
            parse_amount("500", parse_currency("JPY").unwrap()).unwrap(),
            500
        );
        assert_eq!(
            parse_amount("1.234", parse_currency("BHD").unwrap()).unwrap(),
            1234
        );
    }

    #[test]
    fn bad_amounts_are_refused() {
        for raw in [
            "",
            "0",
            "0.00",
            "-1",
            "+1",
            "1e3",
            "1.001",
            "10000000.01",
            "01.00",
            "1.",
            ".5",
            "1,00",
            " 1",
            "NaN",
        ] {
            assert!(
                parse_amount(raw, eur()).is_err(),
                "{raw:?} should be refused"
            );
        }
        assert!(parse_amount("1.5", parse_currency("JPY").unwrap()).is_err());
    }

    #[test]
    fn currencies_come_from_iso_4217() {
        assert!(parse_currency("USD").is_ok());
        assert_eq!(parse_currency("CLF").unwrap().exponent, 4);
        for raw in ["usd", "ABC", "XAU", "XXX", "EURO", "", "HRK", "VES"] {
            assert!(parse_currency(raw).is_err(), "{raw:?} should be refused");
        }
    }

    #[test]
    fn text_is_nfc_normalized_and_control_characters_are_refused() {
        assert_eq!(
            normalize_text("d", "Cafe\u{301}", 0, 10).unwrap(),
            "Caf\u{e9}"
        );
        assert!(normalize_text("d", "a\u{0}b", 0, 10).is_err());
        assert!(normalize_text("d", "a\nb", 0, 10).is_err());
        assert!(normalize_text("d", "a\u{202E}b", 0, 10).is_err());
        assert!(normalize_text("d", "abcdef", 0, 5).is_err());
    }

    #[test]
    fn accounts_are_masked_to_the_last_four() {
        let compact = parse_payer_account("DE89 3704 0044 0532 0130 00").unwrap();
        assert_eq!(mask_account(&compact), "****3000");
        assert!(parse_payer_account("12<3>45").is_err());
    }

    #[test]
    fn amounts_format_back() {
        assert_eq!(format_minor(1250, 2), "12.50");
        assert_eq!(format_minor(5, 0), "5");
        assert_eq!(format_minor(1, 3), "0.001");
    }
}
