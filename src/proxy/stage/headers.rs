//! Header hygiene: hop-by-hop stripping for both directions, the policy's request and response
//! header rules. Response rules run on every response, the proxy's own errors included.

use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::policy::HeaderRules;

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names present finds which hop-by-hop headers there are (usually
    // none in a request, `Connection` in an upstream's response); only those are removed. Eight
    // removals, each a hash and a probe, cost more in each direction of every request.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(at) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[at] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in &named {
        headers.remove(n);
    }
    for (n, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(n);
    }
}

/// Applies `remove` then `set` (so a set header is never removed by the same rules).
pub fn apply(rules: &HeaderRules, headers: &mut HeaderMap) {
    for n in &rules.remove {
        headers.remove(n);
    }
    for (n, v) in &rules.set {
        headers.insert(n.clone(), v.clone());
    }
}

/// A response header value that differs on every response (the request id, the remaining
/// count): on HTTP/2 it is sent as a never-indexed literal, so it does not enter the connection's
/// HPACK table. Indexed, four such values per response pushed the stable headers (the security
/// headers, the RateLimit policy) out of the 4 KiB table every dozen responses, and each came back
/// as a Huffman-coded literal. HTTP/1.1 is unaffected.
pub fn per_response(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go_the_rest_stay() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("a"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before, "nothing hop-by-hop: untouched");

        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-secret, close"),
        );
        h.insert("x-secret", HeaderValue::from_static("s"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);

        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before, "a hop-by-hop header without Connection goes too");
    }
}
