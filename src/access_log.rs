//! The request log line, one shape for the whole product, so an operator can follow one request
//! id from the proxy into the service: `service`, `request_id`, `method`, `path` (never the
//! query), `route` (a route name or template, never a raw path), `status`, `duration_ms`,
//! `client_ip`, and `tenant` and `subject` when a verified caller is known. The proxy adds what
//! only it knows (its decision and reason, shadow rules, upstream time, bytes, protocol, auth
//! method). Never a token, a cookie, a body or a secret.

use std::net::IpAddr;
use std::time::Duration;

use crate::client_ip::IpText;
use crate::telemetry::AccessOutput;

/// One request's line.
pub struct AccessLine<'a> {
    pub service: &'static str,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub client_ip: IpAddr,
    pub tenant: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub proxy: Option<ProxyFacts<'a>>,
}

/// What the proxy adds.
pub struct ProxyFacts<'a> {
    pub decision: &'static str,
    pub reason: &'a str,
    pub shadow: &'a str,
    pub upstream: Option<Duration>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub protocol: &'static str,
    pub auth_method: Option<&'static str>,
}

impl AccessLine<'_> {
    pub fn emit(&self) {
        match crate::telemetry::access_output() {
            Some(AccessOutput::Direct(sink)) => LINE.with_borrow_mut(|line| {
                line.clear();
                self.write_json(line, std::time::SystemTime::now());
                sink.append(line);
            }),
            Some(AccessOutput::Off) => {}
            None => self.emit_event(),
        }
    }

    /// The line as `tracing`'s JSON formatter writes this event (`emit_event`) under ward's
    /// subscriber: same keys, order and number formats, absent options left out, one line.
    /// Written by hand because the formatter costs a quarter of a proxied request's instructions.
    fn write_json(&self, out: &mut Vec<u8>, now: std::time::SystemTime) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
        let p = self.proxy.as_ref();
        string(out, "service", Some(self.service));
        string(out, "request_id", Some(self.request_id));
        string(out, "method", Some(self.method));
        string(out, "path", Some(self.path));
        string(out, "route", Some(self.route));
        number(out, "status", Some(u64::from(self.status)));
        millis(out, "duration_ms", Some(self.duration));
        out.extend_from_slice(b",\"client_ip\":\"");
        out.extend_from_slice(IpText::new(self.client_ip).as_str().as_bytes());
        out.push(b'"');
        string(out, "tenant", self.tenant);
        string(out, "subject", self.subject);
        string(out, "decision", p.map(|p| p.decision));
        string(out, "reason", p.map(|p| p.reason).filter(|r| !r.is_empty()));
        string(out, "shadow", p.map(|p| p.shadow).filter(|s| !s.is_empty()));
        millis(out, "upstream_ms", p.and_then(|p| p.upstream));
        number(out, "bytes_in", p.and_then(|p| p.bytes_in));
        number(out, "bytes_out", p.and_then(|p| p.bytes_out));
        string(out, "protocol", p.map(|p| p.protocol));
        string(out, "auth_method", p.and_then(|p| p.auth_method));
        out.extend_from_slice(b"}\n");
    }

    /// The same line through `tracing`, when ward's own subscriber is not the one installed.
    fn emit_event(&self) {
        let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
        let p = self.proxy.as_ref();
        tracing::info!(
            service = self.service,
            request_id = self.request_id,
            method = self.method,
            path = self.path,
            route = self.route,
            status = self.status,
            duration_ms = ms(self.duration),
            client_ip = %self.client_ip,
            tenant = self.tenant,
            subject = self.subject,
            decision = p.map(|p| p.decision),
            reason = p.map(|p| p.reason).filter(|r| !r.is_empty()),
            shadow = p.map(|p| p.shadow).filter(|s| !s.is_empty()),
            upstream_ms = p.and_then(|p| p.upstream).map(ms),
            bytes_in = p.and_then(|p| p.bytes_in),
            bytes_out = p.and_then(|p| p.bytes_out),
            protocol = p.map(|p| p.protocol),
            auth_method = p.and_then(|p| p.auth_method),
            "request"
        );
    }
}

thread_local! {
    /// Each thread's line buffer, reused from one request to the next.
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
}

fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A string field, escaped as serde_json escapes it; `None` leaves the field out. Most values
/// (ids, methods, paths, route names) need no escape and are copied as they are; through the
/// serializer the nine strings of a line cost 1,500 instructions (callgrind).
fn string(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        key(out, name);
        if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            out.push(b'"');
            out.extend_from_slice(v.as_bytes());
            out.push(b'"');
        } else {
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, v);
        }
    }
}

fn number(out: &mut Vec<u8>, name: &str, value: Option<u64>) {
    if let Some(v) = value {
        key(out, name);
        let _ = serde_json::to_writer(&mut *out, &v);
    }
}

/// Milliseconds to the microsecond, as serde_json prints that `f64` (`12.34`, `3000.0`) but
/// written as digits: through the float formatting the two durations of a line cost 500
/// instructions (callgrind).
fn millis(out: &mut Vec<u8>, name: &str, value: Option<Duration>) {
    if let Some(d) = value {
        key(out, name);
        let micros = d.as_micros();
        let whole = u64::try_from(micros / 1000).unwrap_or(u64::MAX);
        let _ = serde_json::to_writer(&mut *out, &whole);
        out.push(b'.');
        let mut frac = (micros % 1000) as u32;
        let mut width = 3;
        while frac % 10 == 0 && width > 1 {
            frac /= 10;
            width -= 1;
        }
        digits(out, frac, width);
    }
}

/// `n` in decimal, zero-padded to at least `width` digits.
fn digits(out: &mut Vec<u8>, n: u32, width: usize) {
    let mut buf = [b'0'; 10];
    let mut i = buf.len();
    let mut n = n;
    while n > 0 || buf.len() - i < width {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[i..]);
}

/// UTC with microseconds, `2026-11-30T07:37:00.123456Z`, as tracing-subscriber's `SystemTime`.
fn timestamp(out: &mut Vec<u8>, now: std::time::SystemTime) {
    let t = time::OffsetDateTime::from(now);
    let year = t.year();
    if (0..=9999).contains(&year) {
        digits(out, year as u32, 4);
    } else {
        use std::io::Write as _;
        let _ = if year > 9999 {
            write!(out, "+{year}")
        } else {
            write!(out, "{year:05}")
        };
    }
    out.push(b'-');
    digits(out, u32::from(u8::from(t.month())), 2);
    out.push(b'-');
    digits(out, u32::from(t.day()), 2);
    out.push(b'T');
    digits(out, u32::from(t.hour()), 2);
    out.push(b':');
    digits(out, u32::from(t.minute()), 2);
    out.push(b':');
    digits(out, u32::from(t.second()), 2);
    out.push(b'.');
    digits(out, t.microsecond(), 6);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What tracing's JSON formatter, set up as `telemetry::init_logging` sets it up, writes.
    fn through_tracing(line: &AccessLine<'_>) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_target(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || line.emit_event());
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn direct(line: &AccessLine<'_>) -> String {
        let mut out = Vec::new();
        line.write_json(&mut out, std::time::SystemTime::now());
        String::from_utf8(out).unwrap()
    }

    /// The timestamps differ by the time between the two writes: compare everything else.
    fn without_timestamp(line: &str) -> String {
        let (head, rest) = line.split_at(line.find("\",\"level\"").unwrap());
        assert!(head.starts_with("{\"timestamp\":\""), "{line}");
        let stamp = &head["{\"timestamp\":\"".len()..];
        assert_eq!(stamp.len(), "2026-11-30T07:37:00.123456Z".len(), "{stamp}");
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).unwrap();
        rest.to_owned()
    }

    #[test]
    fn the_direct_line_is_the_tracing_line_byte_for_byte() {
        let full = AccessLine {
            service: "proxy",
            request_id: "req-\"1\"\\\u{1}é",
            method: "GET",
            path: "/a b/\u{7f}/\n",
            route: "all",
            status: 503,
            duration: Duration::from_nanos(1_234_567),
            client_ip: "2001:db8::1".parse().unwrap(),
            tenant: Some("t-1"),
            subject: Some("user\t1"),
            proxy: Some(ProxyFacts {
                decision: "deny",
                reason: "rate_limited",
                shadow: "a,b",
                upstream: Some(Duration::from_micros(17)),
                bytes_in: Some(0),
                bytes_out: Some(u64::MAX),
                protocol: "HTTP/2.0",
                auth_method: Some("jwt"),
            }),
        };
        let bare = AccessLine {
            service: "payments",
            request_id: "r",
            method: "POST",
            path: "/",
            route: "-",
            status: 200,
            duration: Duration::from_secs(3),
            client_ip: "10.0.255.0".parse().unwrap(),
            tenant: None,
            subject: None,
            proxy: Some(ProxyFacts {
                decision: "allow",
                reason: "",
                shadow: "",
                upstream: None,
                bytes_in: None,
                bytes_out: None,
                protocol: "HTTP/1.1",
                auth_method: None,
            }),
        };
        let service = AccessLine {
            proxy: None,
            duration: Duration::ZERO,
            client_ip: "127.0.0.1".parse().unwrap(),
            ..bare
        };
        for line in [&full, &bare, &service] {
            let (ours, theirs) = (direct(line), through_tracing(line));
            assert!(ours.ends_with("}\n") && !ours[..ours.len() - 1].contains('\n'));
            assert_eq!(without_timestamp(&ours), without_timestamp(&theirs));
        }
    }

    #[test]
    fn durations_read_as_serde_json_prints_the_milliseconds() {
        for micros in [
            0,
            1,
            10,
            17,
            100,
            999,
            1_000,
            1_230,
            1_234,
            3_000_000,
            86_400_000_001,
        ] {
            let mut ours = Vec::new();
            millis(&mut ours, "d", Some(Duration::from_micros(micros)));
            let theirs = serde_json::to_string(&(micros as f64 / 1000.0)).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), format!(",\"d\":{theirs}"));
        }
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let mut out = Vec::new();
        let t = std::time::UNIX_EPOCH + Duration::from_nanos(1_795_938_420_000_042_999);
        timestamp(&mut out, t);
        assert_eq!(out, b"2026-11-29T07:47:00.000042Z");
        out.clear();
        timestamp(&mut out, std::time::UNIX_EPOCH);
        assert_eq!(out, b"1970-01-01T00:00:00.000000Z");
    }
}
