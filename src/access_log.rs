//! The request log line, one shape for the whole product, so an operator can follow one request
//! id from the proxy into the service: `service`, `request_id`, `method`, `path` (never the
//! query), `route` (a route name or template, never a raw path), `status`, `duration_ms`,
//! `client_ip`, and `tenant` and `subject` when a verified caller is known. The proxy adds what
//! only it knows (its decision and reason, shadow rules, upstream time, bytes, protocol, auth
//! method). Never a token, a cookie, a body or a secret.

use std::net::IpAddr;
use std::time::Duration;

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
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
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
