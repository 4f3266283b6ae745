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
    let ip = IpText::new(client);
    let (open, close) = if client.is_ipv6() {
        ("for=\"[", "]\";proto=")
    } else {
        ("for=", ";proto=")
    };
    [open, ip.as_str(), close, proto].concat()
}

/// An address as text, for the rate-limit key, the header the upstream reads and the request
/// log: every request writes it up to three times. IPv4 is written octet by octet; through
/// `Display` one address cost 1,300 instructions (callgrind), most of it `core::fmt`'s padding
/// support. IPv6 (rarer, and longer) still goes through `Display`.
pub struct IpText {
    /// The longest form is an IPv4-mapped IPv6 address: 45 characters.
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut rest = &mut t.buf[..];
                write!(rest, "{v6}").expect("an IPv6 address fits in 45 characters");
                t.len = 45 - rest.len();
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("an address is ASCII")
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
    fn addresses_are_written_as_display_writes_them() {
        for a in [
            "0.0.0.0",
            "10.1.2.3",
            "203.0.113.255",
            "99.100.9.10",
            "::1",
            "2001:db8::7",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert_eq!(IpText::new(ip(a)).as_str(), ip(a).to_string());
        }
        assert_eq!(
            forwarded(ip("10.1.2.3"), "https"),
            "for=10.1.2.3;proto=https"
        );
        assert_eq!(forwarded(ip("::1"), "https"), "for=\"[::1]\";proto=https");
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
