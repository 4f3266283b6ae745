//! PSP webhook authentication: `Ward-Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`
//! over `"<t>.<raw body>"` with the shared webhook secret.
//!
//! The timestamp must be within the tolerance window (a stale delivery is refused even with a valid
//! signature), and the event id is recorded in the same transaction as the status change it causes,
//! so a replayed delivery is refused too (see `store/sql/payments.rs`, `transition`).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "ward-webhook-signature";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("signature header missing or malformed")]
    Malformed,
    #[error("signature does not match")]
    BadSignature,
    #[error("timestamp outside tolerance")]
    Stale,
}

/// Compute the `v1` signature for a timestamp and body (used by tests, the demo and PSP simulators).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Check a signature header against the body. Signature first, so an attacker learns nothing about
/// the clock; the comparison is constant-time (`Mac::verify_slice`).
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::Malformed)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => {
                signatures.push(hex::decode(v).map_err(|_| WebhookError::Malformed)?)
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(WebhookError::Malformed)?;
    if signatures.is_empty() {
        return Err(WebhookError::Malformed);
    }
    let matches = signatures.iter().any(|sig| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(sig).is_ok()
    });
    if !matches {
        return Err(WebhookError::BadSignature);
    }
    // `abs_diff`: a timestamp near i64::MIN must not overflow the subtraction.
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return Err(WebhookError::Stale);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_timestamp_and_body_are_all_checked() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let tol = Duration::from_secs(300);
        let body = br#"{"id":"evt_1"}"#;
        let header = format!("t=1000,v1={}", sign(secret, 1000, body));
        assert_eq!(verify(secret, Some(&header), body, 1100, tol), Ok(()));
        assert_eq!(
            verify(secret, Some(&header), body, 1301, tol),
            Err(WebhookError::Stale)
        );
        assert_eq!(
            verify(secret, Some(&header), b"{}", 1100, tol),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(
                b"another-secret-another-secret-00",
                Some(&header),
                body,
                1100,
                tol
            ),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(secret, Some("v1=00"), body, 1100, tol),
            Err(WebhookError::Malformed)
        );
        assert_eq!(
            verify(secret, None, body, 1100, tol),
            Err(WebhookError::Malformed)
        );
    }

    /// Found by the `webhook` fuzz target: a correctly signed timestamp this far in the past
    /// overflowed `now - t` (a panic in debug builds) instead of being stale.
    #[test]
    fn a_timestamp_near_the_smallest_i64_is_stale_not_an_overflow() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let t = -9_223_372_036_753_892_326_i64;
        let header = format!("t={t},v1={}", sign(secret, t, b""));
        assert_eq!(
            verify(secret, Some(&header), b"", 1_700_000_000, Duration::ZERO),
            Err(WebhookError::Stale)
        );
        let header = format!("t={},v1={}", i64::MIN, sign(secret, i64::MIN, b""));
        assert_eq!(
            verify(
                secret,
                Some(&header),
                b"",
                i64::MAX,
                Duration::from_secs(300)
            ),
            Err(WebhookError::Stale)
        );
    }
}
