//! The payments request validators (`ward::payments::validation`) on arbitrary strings.
//!
//! None may panic. What each accepts must hold what it promises: an amount is a whole number of
//! minor units between the smallest unit and the maximum, and formats back to a string that parses
//! to the same amount; text is NFC, within its length, with no control or bidi characters;
//! an account is 4 to 64 upper-case letters and digits and its mask shows at most its last four;
//! an email is lower case with one `@`; keys and slugs keep to their alphabets and lengths.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ward::payments::validation::*;

#[derive(Debug, Arbitrary)]
struct Input {
    currency: String,
    amount: String,
    text: String,
    min: u8,
    max: u16,
    minor: i64,
    exponent: u8,
}

fuzz_target!(|i: Input| {
    let currency = parse_currency(&i.currency)
        .or_else(|_| parse_currency(["EUR", "JPY", "BHD", "CLF"][i.currency.len() % 4]))
        .expect("listed currencies parse");
    assert!(currency.exponent <= 4);
    if let Ok(minor) = parse_amount(&i.amount, currency) {
        let max = 10_000_000 * 10_i64.pow(currency.exponent);
        assert!((1..=max).contains(&minor), "{} -> {minor}", i.amount);
        let text = format_minor(minor, currency.exponent);
        assert_eq!(parse_amount(&text, currency).ok(), Some(minor), "{text} does not parse back");
        assert!(i.amount.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    }
    let exponent = u32::from(i.exponent % 5);
    let _ = format_minor(i.minor, exponent);

    let (min, max) = (usize::from(i.min), usize::from(i.max));
    if let Ok(t) = normalize_text("f", &i.text, min, max) {
        let n = t.chars().count();
        assert!(n >= min && n <= max);
        assert!(!t.chars().any(char::is_control));
        assert!(!t.chars().any(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')));
        assert_eq!(normalize_text("f", &t, min, max).ok().as_deref(), Some(t.as_str()), "NFC is idempotent");
    }
    if let Ok(a) = parse_payer_account(&i.text) {
        assert!((PAYER_MIN_CHARS..=PAYER_MAX_CHARS).contains(&a.len()), "{a}");
        assert!(a.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()), "{a}");
        let m = mask_account(&a);
        let shown = m.strip_prefix("****").expect("masked");
        assert!(shown.len() <= 4 && a.ends_with(shown));
    }
    let _ = mask_account(&i.text);
    if let Ok(e) = parse_email(&i.text) {
        assert_eq!(e.matches('@').count(), 1, "{e}");
        assert_eq!(e, e.to_lowercase());
        assert!(!e.chars().any(char::is_whitespace));
        assert!(e.chars().count() <= EMAIL_MAX_CHARS);
        let m = mask_email(&e);
        assert!(m.ends_with(e.split_once('@').unwrap().1));
    }
    let _ = mask_email(&i.text);
    if check_new_password("p", &i.text).is_ok() {
        assert!((PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&i.text.chars().count()));
    }
    if let Ok(k) = parse_idempotency_key(&i.text) {
        assert!(!k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX && k.bytes().all(|b| b.is_ascii_graphic()));
    }
    if let Ok(s) = parse_slug(&i.text) {
        assert!((2..=63).contains(&s.len()));
        assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    }
});
