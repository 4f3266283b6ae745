//! Compiling the upstream and server sections.

use super::*;

impl Compiler {
    pub(in crate::policy) fn upstream(
        &mut self,
        u: crate::policy::spec::UpstreamSpec,
    ) -> Option<Upstream> {
        let uri: http::Uri = match u.url.parse() {
            Ok(uri) => uri,
            Err(e) => {
                self.err("upstream.url", format!("`{}` is not a URL: {e}", u.url));
                return None;
            }
        };
        let scheme = uri.scheme().cloned();
        let (Some(scheme), Some(authority)) = (scheme, uri.authority().cloned()) else {
            self.err(
                "upstream.url",
                format!(
                    "`{}` needs a scheme and host, like http://127.0.0.1:8080",
                    u.url
                ),
            );
            return None;
        };
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            self.err(
                "upstream.url",
                format!("scheme `{scheme}` is not http or https"),
            );
            return None;
        }
        if scheme == http::uri::Scheme::HTTPS {
            self.err(
                "upstream.url",
                "https upstreams are not supported yet; the sidecar talks plain HTTP to 127.0.0.1",
            );
            return None;
        }
        if uri.query().is_some() {
            self.err("upstream.url", "the upstream URL may not have a query");
        }
        Some(Upstream {
            scheme,
            authority,
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
            idle_timeout: self.positive(
                u.idle_timeout.map(|d| d.0),
                Duration::from_secs(30),
                "upstream.idle_timeout",
            ),
            request_timeout: self.positive(
                u.request_timeout.map(|d| d.0),
                Duration::from_secs(60),
                "upstream.request_timeout",
            ),
        })
    }

    pub(in crate::policy) fn positive(
        &mut self,
        d: Option<Duration>,
        default: Duration,
        field: &str,
    ) -> Duration {
        match d {
            Some(d) if d.is_zero() => {
                self.err(field, "must be greater than zero");
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    pub(in crate::policy) fn server(&mut self, s: crate::policy::spec::ServerSpec) -> Server {
        let count = |c: &mut Self, v: Option<usize>, default: usize, field: &str| match v {
            Some(0) => {
                c.err(field, "must be greater than zero");
                default
            }
            Some(v) => v,
            None => default,
        };
        Server {
            trusted_proxies: s
                .trusted_proxies
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.0)
                .collect(),
            header_read_timeout: self.positive(
                s.header_read_timeout.map(|d| d.0),
                Duration::from_secs(10),
                "server.header_read_timeout",
            ),
            handshake_timeout: self.positive(
                s.handshake_timeout.map(|d| d.0),
                Duration::from_secs(10),
                "server.handshake_timeout",
            ),
            max_connections: count(self, s.max_connections, 10_000, "server.max_connections"),
            max_concurrent_streams: count(
                self,
                s.max_concurrent_streams.map(|v| v as usize),
                100,
                "server.max_concurrent_streams",
            ) as u32,
            rate_limit_max_keys: count(
                self,
                s.rate_limit_max_keys,
                100_000,
                "server.rate_limit_max_keys",
            ),
            client_ip_header: s
                .client_ip_header
                .map_or(http::HeaderName::from_static("x-forwarded-for"), |h| h.0),
            forwarded: s.forwarded.unwrap_or(false),
            redis: {
                let r = s.redis.unwrap_or_default();
                RedisTuning {
                    timeout: self.positive(
                        r.timeout.map(|d| d.0),
                        Duration::from_millis(250),
                        "server.redis.timeout",
                    ),
                    breaker_failures: count(
                        self,
                        r.breaker_failures.map(|v| v as usize),
                        5,
                        "server.redis.breaker_failures",
                    ) as u32,
                    breaker_cooldown: self.positive(
                        r.breaker_cooldown.map(|d| d.0),
                        Duration::from_secs(2),
                        "server.redis.breaker_cooldown",
                    ),
                }
            },
        }
    }
}
