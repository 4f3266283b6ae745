//! W3C trace context on the way upstream: a valid `traceparent` passes through; otherwise a new
//! trace starts here (and a client's `tracestate` for a trace it did not start is dropped).

use http::{HeaderMap, HeaderValue};

use crate::request_id::random_hex;

/// A valid W3C traceparent passes through; otherwise a new trace starts. Returns (value, started).
pub fn traceparent(headers: &HeaderMap) -> (HeaderValue, bool) {
    if let Some(v) = headers.get("traceparent") {
        if valid_traceparent(v.as_bytes()) {
            return (v.clone(), false);
        }
    }
    let trace = random_hex(16);
    let span = random_hex(8);
    (
        HeaderValue::from_str(&format!("00-{trace}-{span}-00"))
            .expect("hex is a valid header value"),
        true,
    )
}

fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    v.len() == 55
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[..2])
        && &v[..2] != b"ff"
        && hex(&v[3..35])
        && v[3..35].iter().any(|&c| c != b'0')
        && hex(&v[36..52])
        && v[36..52].iter().any(|&c| c != b'0')
        && hex(&v[53..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation_follows_w3c() {
        assert!(valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
    }
}
