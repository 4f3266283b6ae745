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

/// Which of `HOP_BY_HOP` a name is. By its text, whose length rules out almost every name at
/// once: comparing each name of a message with eight `HeaderName`s cost 2,000 instructions per
/// request over HTTP/2 (callgrind).
fn hop_by_hop(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "proxy-authenticate" => Some(3),
        "te" => Some(4),
        "trailer" => Some(5),
        "transfer-encoding" => Some(6),
        "upgrade" => Some(7),
        _ => None,
    }
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names present finds which hop-by-hop headers there are (usually
    // none in a request, `Connection` in an upstream's response); only those are removed. Eight
    // removals, each a hash and a probe, cost more in each direction of every request.
    let mut present = [false; HOP_BY_HOP.len()];
    for at in headers.keys().filter_map(hop_by_hop) {
        present[at] = true;
    }
    if !present.contains(&true) {
        return;
    }
    // The names `Connection` lists, but not `close` (no header) nor a hop-by-hop name (removed
    // below if present): an upstream's `Connection: keep-alive` then costs no name parsed.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| {
            !n.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| n.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in &named {
        headers.remove(n);
    }
    for (n, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(n);
    }
}

/// Removes those of `names` that are present. One pass over the few names a message carries
/// finds them (usually none); a `remove` per name would hash and probe for each, present or not.
/// Compared as text: a length decides most pairs.
pub fn remove_present<'n, I>(headers: &mut HeaderMap, names: I)
where
    I: IntoIterator<Item = &'n HeaderName>,
    I::IntoIter: Clone,
{
    let names = names.into_iter();
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            names.clone().any(|n| n.as_str() == k)
        })
        .cloned()
        .collect();
    for n in &found {
        headers.remove(n);
    }
}

/// Applies `remove` then `set` (so a set header is never removed by the same rules).
pub fn apply(rules: &HeaderRules, headers: &mut HeaderMap) {
    // Removed one by one: an upstream usually sends one of them (`Server`), and a found name
    // makes `remove_present` cost more than a probe per name.
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

    #[test]
    fn only_the_names_present_are_removed_with_all_their_values() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.insert(header::SERVER, HeaderValue::from_static("s"));
        h.insert(header::HOST, HeaderValue::from_static("h"));
        let names = [
            HeaderName::from_static("x-a"),
            header::SERVER,
            HeaderName::from_static("x-absent"),
        ];
        remove_present(&mut h, &names);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::HOST));
    }

    #[test]
    fn the_hop_by_hop_table_and_its_lookup_agree() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop(n), Some(i), "{n}");
        }
        assert_eq!(hop_by_hop(&header::HOST), None);
    }
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
