//! The client's IP address, one rule for both services: the socket peer, unless the peer is a
//! trusted hop (a load balancer in front of the proxy; the proxy in front of the service); then the
//! rightmost `X-Forwarded-For` address that is not itself trusted. Addresses further left are the
//! client's to forge; an unparsable entry stops the walk at the last trusted address.
//!
//! The proxy sends its decision upstream as exactly one address (see `forwarded_for`), so the
//! service, which trusts only the proxy, reaches the same answer with the same rule.

use std::net::IpAddr;

use http::HeaderMap;

/// The client's address, given the peer and which addresses are trusted hops.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
    if !trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for v in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(s) = v.to_str() else { return client };
        for part in s.rsplit(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) if trusted(ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
    }
    client
}

/// `Forwarded` (RFC 7239) for one client address: IPv6 quoted and bracketed.
pub fn forwarded(client: IpAddr, proto: &str) -> String {
    match client {
        IpAddr::V4(ip) => format!("for={ip};proto={proto}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = |a: IpAddr| a == ip("10.0.0.1") || a == ip("10.0.0.2");
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(ip("203.0.113.9"), &h, trusted), ip("203.0.113.9"));
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h, trusted),
            ip("203.0.113.9"),
            "an untrusted peer's header is ignored"
        );
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 198.51.100.7, 10.0.0.2"),
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &h, trusted), ip("198.51.100.7"));
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("garbage, 10.0.0.2"),
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &h, trusted), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_follows_rfc_7239() {
        assert_eq!(
            forwarded(ip("192.0.2.1"), "https"),
            "for=192.0.2.1;proto=https"
        );
        assert_eq!(
            forwarded(ip("2001:db8::1"), "https"),
            "for=\"[2001:db8::1]\";proto=https"
        );
    }
}
