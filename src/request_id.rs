//! Request ids, one rule for both services: a caller's `X-Request-Id` is kept when it is 1 to 64
//! of `A-Z a-z 0-9 - _ . :` (the proxy sends its own, so the service logs and audits the same id);
//! anything else is replaced by 32 random hex digits. Ids come from the thread's CSPRNG, seeded
//! once from the OS: no system call per request.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const HEADER: &str = "x-request-id";
/// `HEADER` as a header name, parsed once.
pub const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);

/// Longest id kept from a caller.
pub const MAX_LEN: usize = 64;

/// The request's id: the caller's when plain and short, else a new one.
pub fn accept_or_new(headers: &HeaderMap) -> HeaderValue {
    // By the constant name: a `&str` key is parsed into a name on every lookup.
    if let Some(v) = headers.get(&HEADER_NAME) {
        if is_plain(v.as_bytes()) {
            return v.clone();
        }
    }
    new_id()
}

/// A new id: 32 lower-case hex digits.
pub fn new_id() -> HeaderValue {
    let mut hex = [0u8; 32];
    HeaderValue::from_bytes(random_hex_into(&mut hex)).expect("hex is a valid header value")
}

fn is_plain(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// `bytes` (at most 16) random bytes as lower-case hex, from the thread's CSPRNG.
pub fn random_hex(bytes: usize) -> String {
    let mut hex = [0u8; 32];
    let n = bytes.min(16) * 2;
    String::from_utf8(random_hex_into(&mut hex[..n]).to_vec()).expect("hex digits are ASCII")
}

/// Fills `out` (an even length, at most 32) with random lower-case hex digits; returns it.
/// Written digit by digit: `hex::encode` collects chars one at a time (2,000 instructions for
/// a request id).
pub fn random_hex_into(out: &mut [u8]) -> &[u8] {
    use rand::RngCore;
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut raw = [0u8; 16];
    let raw = &mut raw[..out.len() / 2];
    rand::thread_rng().fill_bytes(raw);
    for (pair, b) in out.chunks_exact_mut(2).zip(raw.iter()) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept_and_others_replaced() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("abc-123:x_y.z"));
        assert_eq!(accept_or_new(&h), "abc-123:x_y.z");
        for forged in ["a b", "\"<script>", "a/b", ""] {
            h.insert(HEADER, HeaderValue::from_str(forged).unwrap());
            let id = accept_or_new(&h);
            assert_ne!(id, forged);
            assert_eq!(id.len(), 32);
        }
        h.insert(HEADER, HeaderValue::from_str(&"a".repeat(65)).unwrap());
        assert_eq!(accept_or_new(&h).len(), 32);
        h.insert(HEADER, HeaderValue::from_str(&"a".repeat(64)).unwrap());
        assert_eq!(accept_or_new(&h).len(), 64);
        assert_ne!(new_id(), new_id());
        let id = new_id();
        assert!(id
            .as_bytes()
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        let short = random_hex(5);
        assert_eq!(short.len(), 10);
        assert!(short.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(random_hex(40).len(), 32);
    }
}
