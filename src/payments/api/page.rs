//! Pagination of the list endpoints: `limit` (1 to 100, default 50) and opaque keyset cursors.
//!
//! A cursor is the URL-safe base64 of the last item's sort key: `created_at:id` for payments,
//! `pos` for audit records. A page shorter than its limit is the last one and has no cursor.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::payments::errors::{invalid, ApiError, FieldError};

/// Items per page when the client does not say.
const DEFAULT_LIMIT: i64 = 50;
/// The most items one page may hold.
const MAX_LIMIT: i64 = 100;

pub(super) fn parse_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(invalid("limit", "must be between 1 and 100")),
    }
}

/// The error for a cursor this service did not hand out.
pub(super) fn bad_cursor() -> FieldError {
    FieldError::new("cursor", "is not a cursor returned by this endpoint")
}

/// The cursor of the page after `rows`, if `rows` filled its page.
pub(super) fn next_cursor<T>(
    rows: &[T],
    limit: i64,
    cursor: impl Fn(&T) -> String,
) -> Option<String> {
    (rows.len() as i64 == limit)
        .then(|| rows.last().map(cursor))
        .flatten()
}

/// Payments are listed newest first by `(created_at, id)`.
pub(super) fn payment_cursor(created_at: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

pub(super) fn parse_payment_cursor(raw: &str) -> Option<(i64, String)> {
    let text = decode(raw)?;
    let (at, id) = text.split_once(':')?;
    Some((at.parse::<i64>().ok()?, id.to_string()))
}

/// Audit records are listed newest first by `pos`.
pub(super) fn audit_cursor(pos: i64) -> String {
    URL_SAFE_NO_PAD.encode(pos.to_string())
}

pub(super) fn parse_audit_cursor(raw: &str) -> Option<i64> {
    decode(raw)?.parse::<i64>().ok()
}

fn decode(raw: &str) -> Option<String> {
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_to_50_and_stay_between_1_and_100() {
        assert_eq!(parse_limit(None).unwrap(), 50);
        assert_eq!(parse_limit(Some(1)).unwrap(), 1);
        assert_eq!(parse_limit(Some(100)).unwrap(), 100);
        for bad in [0, -1, 101, i64::MAX] {
            assert!(
                matches!(parse_limit(Some(bad)), Err(ApiError::Invalid(e)) if e[0].field == "limit"),
                "{bad}"
            );
        }
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let id = "0b7c7f5e-3f55-4a55-9d6e-1f0e0a4b8c11";
        assert_eq!(
            parse_payment_cursor(&payment_cursor(1_767_225_600_000, id)),
            Some((1_767_225_600_000, id.to_string()))
        );
        assert_eq!(parse_audit_cursor(&audit_cursor(42)), Some(42));
        // Not base64, base64 of the wrong shape, and one endpoint's cursor at the other.
        assert_eq!(parse_payment_cursor("%%%"), None);
        assert_eq!(parse_payment_cursor(&URL_SAFE_NO_PAD.encode("x:y")), None);
        assert_eq!(parse_payment_cursor(&audit_cursor(42)), None);
        assert_eq!(parse_audit_cursor(&payment_cursor(1, id)), None);
    }

    #[test]
    fn only_a_full_page_has_a_next_cursor() {
        let rows = [3, 2, 1];
        assert_eq!(
            next_cursor(&rows, 3, |r| audit_cursor(*r)),
            Some(audit_cursor(1))
        );
        assert_eq!(next_cursor(&rows, 4, |r| audit_cursor(*r)), None);
        assert_eq!(next_cursor(&[] as &[i64], 0, |r| audit_cursor(*r)), None);
    }
}
