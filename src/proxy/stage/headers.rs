//! Header hygiene: hop-by-hop stripping for both directions, the policy's request and response
//! header rules. Response rules run on every response, the proxy's own errors included.

use http::{header, HeaderMap, HeaderName};

use crate::policy::HeaderRules;

const HOP_BY_HOP: [HeaderName; 8] = [
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
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
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
