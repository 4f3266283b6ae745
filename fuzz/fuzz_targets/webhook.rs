//! The PSP webhook signature check (`ward::payments::webhook::verify`).
//!
//! Arbitrary headers and bodies never panic and never verify (they cannot carry the secret's
//! MAC). Headers signed with the secret for a timestamp and body of the input's choosing verify
//! exactly when the timestamp is within tolerance; the same signature over another body, or
//! under another secret, never verifies.

#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ward::payments::webhook::{sign, verify, WebhookError};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: i64 = 1_700_000_000;

#[derive(Debug, Arbitrary)]
struct Input {
    header: Option<String>,
    body: Vec<u8>,
    other_body: Vec<u8>,
    timestamp: i64,
    near: bool,
    tolerance: u16,
    /// Extra header parts placed before and after the real ones.
    before: String,
    after: String,
}

fuzz_target!(|i: Input| {
    let tol = Duration::from_secs(u64::from(i.tolerance));
    let raw = verify(SECRET, i.header.as_deref(), &i.body, NOW, tol);
    assert!(raw.is_err(), "an unsigned header verified: {:?}", i.header);

    let t = if i.near { NOW + i.timestamp % 1000 } else { i.timestamp };
    let header = format!("{}t={t},v1={}{}", i.before, sign(SECRET, t, &i.body), i.after);
    let verdict = verify(SECRET, Some(&header), &i.body, NOW, tol);
    if i.before.is_empty() && i.after.is_empty() {
        let fresh = (i128::from(NOW) - i128::from(t)).unsigned_abs() <= u128::from(tol.as_secs());
        let want = if fresh { Ok(()) } else { Err(WebhookError::Stale) };
        assert_eq!(verdict, want, "t={t} tolerance={}", tol.as_secs());
    }
    if i.other_body != i.body {
        assert!(verify(SECRET, Some(&header), &i.other_body, NOW, tol).is_err(), "another body verified");
    }
    assert!(
        verify(b"another-secret-another-secret-00", Some(&header), &i.body, NOW, tol).is_err(),
        "another secret verified"
    );
});
