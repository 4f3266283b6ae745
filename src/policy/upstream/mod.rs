//! Upstreams in the policy: the default `upstream`, the named `upstreams` routes pick by name,
//! and how ward treats each when it misbehaves (timeouts, retries with a budget, the circuit
//! breaker, load shedding, TLS). Spec types, the compiled types and their compilation live here;
//! the runtime state (breakers, budgets, connection pools) lives in `proxy::upstream`.
//!
//! Everything that can be checked is checked here, once: a route naming an unknown upstream, an
//! unreadable CA bundle or client certificate, a ratio outside 0..=1. The rustls client config
//! is built here too, so a reload that cannot build it keeps the last good policy.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::compile::{is_name, resolve, Compiler};
use super::units::Dur;

mod tls;

/// The name the default `upstream` answers to in routes' `upstream.name`.
pub const DEFAULT_NAME: &str = "default";

/// An upstream service, and how ward treats it when it misbehaves.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// `http://host:port` or `https://host:port` of the upstream; a path prefix is kept.
    pub url: String,
    /// Longest wait for a TCP connection (and, for https, the TLS handshake counts in `idle_timeout`). Default 5s.
    pub connect_timeout: Option<Dur>,
    /// Longest wait for the upstream's response headers, and for each response body chunk (504 before headers). Default 30s.
    pub idle_timeout: Option<Dur>,
    /// Longest time for the whole exchange with the upstream (504 before headers). Default 60s.
    pub request_timeout: Option<Dur>,
    /// Longest wait for the next chunk of the client's request body: past it the client gets 408 and the upstream exchange is abandoned. Routes may override it. Default 10s.
    pub body_timeout: Option<Dur>,
    /// Requests in flight to this upstream above which new ones get 503 at once (load shedding). Default 10000.
    pub max_concurrent: Option<usize>,
    /// Retries of idempotent requests; routes may override them. Absent: no retries.
    pub retries: Option<RetrySpec>,
    /// Circuit breaker: while open, requests get 503 with Retry-After at once. Absent: no breaker.
    pub breaker: Option<BreakerSpec>,
    /// TLS settings for an `https://` upstream.
    pub tls: Option<UpstreamTlsSpec>,
}

/// Retries: only for GET, HEAD, PUT, DELETE, OPTIONS and a POST carrying `Idempotency-Key`; only
/// after a connect failure, a connection reset before any response byte, or a 502/503 answer.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included (1 turns retries off). Default 3, at most 10.
    pub attempts: Option<u32>,
    /// Backoff before the first retry; it doubles for each next one, with jitter (a random 50-100% of it). Default 25ms.
    pub backoff: Option<Dur>,
    /// Largest backoff. Default 1s.
    pub max_backoff: Option<Dur>,
    /// Retries never exceed this share of the upstream's requests (a retry budget, 0 to 1). Default 0.2.
    pub budget: Option<f64>,
}

/// A circuit breaker over a sliding window of outcomes (connect failures, resets, timeouts and
/// 502/503/504 answers are failures).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// Share of failed requests in the window that opens the breaker (0 to 1). Default 0.5.
    pub failure_ratio: Option<f64>,
    /// The sliding window. Default 10s.
    pub window: Option<Dur>,
    /// Requests in the window below which the breaker never opens. Default 20.
    pub min_requests: Option<u32>,
    /// How long the breaker stays open before it lets probes through (half-open). Default 5s.
    pub open_for: Option<Dur>,
    /// Probe requests that must all succeed to close it again; one failure reopens it. Default 3.
    pub probes: Option<u32>,
}

/// TLS to an `https://` upstream (rustls, TLS 1.2 and 1.3).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// PEM file of the CA certificates the upstream's certificate must chain to (relative paths start at the policy file). Default: the system's roots.
    pub ca_bundle: Option<String>,
    /// Name sent in SNI and checked against the certificate. Default: the URL's host.
    pub server_name: Option<String>,
    /// PEM certificate chain presented to the upstream (mutual TLS); needs `client_key`.
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<String>,
}

/// A route's choice of upstream and its own request-side settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteUpstreamSpec {
    /// A name from `upstreams`, or `default` (the `upstream`). Default `default`.
    pub name: Option<String>,
    /// Overrides the upstream's `body_timeout` for this route.
    pub body_timeout: Option<Dur>,
    /// Replaces the upstream's `retries` for this route (`{attempts: 1}` turns them off).
    pub retries: Option<RetrySpec>,
}

/// A compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub url: String,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix from the URL, without trailing slash ("" for none).
    pub path_prefix: String,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub body_timeout: Duration,
    pub max_concurrent: usize,
    pub retries: Retries,
    pub breaker: Option<BreakerRules>,
    pub tls: Option<UpstreamTls>,
    /// What the connection pool depends on (scheme, address, connect timeout, TLS inputs): the
    /// proxy keeps its pool and breaker across reloads and rebuilds the pool only when this
    /// changes.
    pub transport_digest: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retries {
    /// Attempts in all; 1 means no retry.
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub budget: f64,
}

impl Retries {
    pub const OFF: Retries = Retries {
        attempts: 1,
        backoff: Duration::from_millis(25),
        max_backoff: Duration::from_secs(1),
        budget: 0.2,
    };
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerRules {
    pub failure_ratio: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub open_for: Duration,
    pub probes: u32,
}

pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The SNI name, when it is not the URL's host.
    pub server_name: Option<String>,
    /// `system roots` or the CA bundle's path, for `ward explain`.
    pub roots: String,
    pub client_cert: bool,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("roots", &self.roots)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// A route's upstream: the target and the route's request-side settings.
#[derive(Debug, Clone)]
pub struct RouteUpstream {
    pub target: Arc<Upstream>,
    pub body_timeout: Duration,
    pub retries: Retries,
}

/// Every upstream of a policy by name; `default` is the policy's `upstream`.
pub type Upstreams = BTreeMap<Arc<str>, Arc<Upstream>>;

impl Compiler {
    /// The default `upstream` and the named `upstreams`, each compiled in its own file.
    pub(super) fn upstreams(
        &mut self,
        default: Option<(PathBuf, UpstreamSpec)>,
        named: Vec<(PathBuf, HashMap<String, UpstreamSpec>)>,
        watched: &mut Vec<PathBuf>,
    ) -> Upstreams {
        let mut out = Upstreams::new();
        if let Some((file, spec)) = default {
            self.file = file;
            if let Some(u) = self.upstream(DEFAULT_NAME, "upstream", spec, watched) {
                out.insert(u.name.clone(), Arc::new(u));
            }
        }
        for (file, map) in named {
            self.file = file;
            let mut map: Vec<_> = map.into_iter().collect();
            map.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, spec) in map {
                let at = format!("upstreams.{name}");
                if name == DEFAULT_NAME || !is_name(&name) {
                    self.err(
                        &at,
                        "upstream names use letters, digits, `-` and `_`, and `default` is the `upstream`",
                    );
                    continue;
                }
                if out.contains_key(name.as_str()) {
                    self.err(&at, "defined in more than one policy file");
                    continue;
                }
                if let Some(u) = self.upstream(&name, &at, spec, watched) {
                    out.insert(u.name.clone(), Arc::new(u));
                }
            }
        }
        out
    }

    fn upstream(
        &mut self,
        name: &str,
        at: &str,
        u: UpstreamSpec,
        watched: &mut Vec<PathBuf>,
    ) -> Option<Upstream> {
        let field = format!("{at}.url");
        let uri: http::Uri = match u.url.parse() {
            Ok(uri) => uri,
            Err(e) => {
                self.err(&field, format!("`{}` is not a URL: {e}", u.url));
                return None;
            }
        };
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            self.err(
                &field,
                format!(
                    "`{}` needs a scheme and host, like http://127.0.0.1:8080",
                    u.url
                ),
            );
            return None;
        };
        let https = scheme == http::uri::Scheme::HTTPS;
        if scheme != http::uri::Scheme::HTTP && !https {
            self.err(&field, format!("scheme `{scheme}` is not http or https"));
            return None;
        }
        if uri.query().is_some() {
            self.err(&field, "the upstream URL may not have a query");
        }
        if u.tls.is_some() && !https {
            self.err(format!("{at}.tls"), "TLS settings need an https:// URL");
        }
        let mut digest = Sha256::new();
        digest.update(scheme.as_str().as_bytes());
        // The pool connects to one address: a new one is a new pool.
        digest.update(b"://");
        digest.update(authority.as_str().as_bytes());
        let tls = if https {
            self.upstream_tls(
                u.tls.unwrap_or_default(),
                &format!("{at}.tls"),
                &mut digest,
                watched,
            )
        } else {
            None
        };
        let connect_timeout = self.positive(
            u.connect_timeout.map(|d| d.0),
            Duration::from_secs(5),
            &format!("{at}.connect_timeout"),
        );
        digest.update(connect_timeout.as_nanos().to_be_bytes());
        let max_concurrent = match u.max_concurrent {
            Some(0) => {
                self.err(format!("{at}.max_concurrent"), "must be greater than zero");
                1
            }
            Some(n) => n,
            None => 10_000,
        };
        Some(Upstream {
            name: Arc::from(name),
            url: u.url.clone(),
            scheme,
            authority,
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
            connect_timeout,
            idle_timeout: self.positive(
                u.idle_timeout.map(|d| d.0),
                Duration::from_secs(30),
                &format!("{at}.idle_timeout"),
            ),
            request_timeout: self.positive(
                u.request_timeout.map(|d| d.0),
                Duration::from_secs(60),
                &format!("{at}.request_timeout"),
            ),
            body_timeout: self.positive(
                u.body_timeout.map(|d| d.0),
                Duration::from_secs(10),
                &format!("{at}.body_timeout"),
            ),
            max_concurrent,
            retries: match &u.retries {
                Some(r) => self.retries(r, &format!("{at}.retries")),
                None => Retries::OFF,
            },
            breaker: u
                .breaker
                .as_ref()
                .map(|b| self.breaker(b, &format!("{at}.breaker"))),
            tls,
            transport_digest: digest.finalize().into(),
        })
    }

    fn ratio(&mut self, v: Option<f64>, default: f64, field: &str) -> f64 {
        match v {
            Some(x) if !(0.0..=1.0).contains(&x) => {
                self.err(field, format!("expected a share from 0 to 1, got {x}"));
                default
            }
            Some(x) => x,
            None => default,
        }
    }

    fn retries(&mut self, r: &RetrySpec, at: &str) -> Retries {
        let attempts = match r.attempts {
            Some(n) if n == 0 || n > 10 => {
                self.err(
                    format!("{at}.attempts"),
                    format!("expected 1 to 10, got {n}"),
                );
                1
            }
            Some(n) => n,
            None => 3,
        };
        let backoff = self.positive(
            r.backoff.map(|d| d.0),
            Duration::from_millis(25),
            &format!("{at}.backoff"),
        );
        let max_backoff = self.positive(
            r.max_backoff.map(|d| d.0),
            Duration::from_secs(1),
            &format!("{at}.max_backoff"),
        );
        if max_backoff < backoff {
            self.err(
                format!("{at}.max_backoff"),
                "must not be shorter than backoff",
            );
        }
        Retries {
            attempts,
            backoff,
            max_backoff,
            budget: self.ratio(r.budget, 0.2, &format!("{at}.budget")),
        }
    }

    fn breaker(&mut self, b: &BreakerSpec, at: &str) -> BreakerRules {
        let min_requests = match b.min_requests {
            Some(0) => {
                self.err(format!("{at}.min_requests"), "must be greater than zero");
                1
            }
            Some(n) => n,
            None => 20,
        };
        let probes = match b.probes {
            Some(0) => {
                self.err(format!("{at}.probes"), "must be greater than zero");
                1
            }
            Some(n) => n,
            None => 3,
        };
        let failure_ratio = self.ratio(b.failure_ratio, 0.5, &format!("{at}.failure_ratio"));
        if failure_ratio == 0.0 {
            self.err(
                format!("{at}.failure_ratio"),
                "must be greater than zero (0 would open on the first request)",
            );
        }
        BreakerRules {
            failure_ratio,
            window: self.positive(
                b.window.map(|d| d.0),
                Duration::from_secs(10),
                &format!("{at}.window"),
            ),
            min_requests,
            open_for: self.positive(
                b.open_for.map(|d| d.0),
                Duration::from_secs(5),
                &format!("{at}.open_for"),
            ),
            probes,
        }
    }

    /// A route's upstream: the named one (or the default) with the route's own overrides. An
    /// unknown name is an error; the route still compiles (against a stand-in that no policy
    /// in use ever holds) so that its other errors are reported too.
    pub(super) fn route_upstream(
        &mut self,
        upstreams: &Upstreams,
        spec: Option<&RouteUpstreamSpec>,
        at: &str,
    ) -> RouteUpstream {
        let spec_default = RouteUpstreamSpec::default();
        let spec = spec.unwrap_or(&spec_default);
        let name = spec.name.as_deref().unwrap_or(DEFAULT_NAME);
        let Some(target) = upstreams.get(name) else {
            // Without a default upstream the policy already carries that error.
            if name != DEFAULT_NAME || !upstreams.is_empty() {
                let known: Vec<&str> = upstreams.keys().map(|k| &**k).collect();
                self.err(
                    format!("{at}.upstream.name"),
                    format!(
                        "unknown upstream `{name}` (known: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            return RouteUpstream {
                target: Arc::new(unresolved()),
                body_timeout: Duration::from_secs(10),
                retries: Retries::OFF,
            };
        };
        RouteUpstream {
            target: target.clone(),
            body_timeout: self.positive(
                spec.body_timeout.map(|d| d.0),
                target.body_timeout,
                &format!("{at}.upstream.body_timeout"),
            ),
            retries: match &spec.retries {
                Some(r) => self.retries(r, &format!("{at}.upstream.retries")),
                None => target.retries,
            },
        }
    }
}

/// The stand-in target of a route whose upstream did not resolve (the policy has errors).
fn unresolved() -> Upstream {
    Upstream {
        name: Arc::from("unresolved"),
        url: String::new(),
        scheme: http::uri::Scheme::HTTP,
        authority: http::uri::Authority::from_static("unresolved.invalid"),
        path_prefix: String::new(),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(10),
        max_concurrent: 1,
        retries: Retries::OFF,
        breaker: None,
        tls: None,
        transport_digest: [0; 32],
    }
}

/// `ward explain`'s lines about a route's upstream.
pub fn explain(u: &RouteUpstream) -> String {
    use humantime::format_duration as d;
    let t = &u.target;
    let mut out = format!(
        "upstream: {} ({}), connect timeout {}, response idle timeout {}, request timeout {}, request body timeout {} (408)\n",
        t.name,
        t.url,
        d(t.connect_timeout),
        d(t.idle_timeout),
        d(t.request_timeout),
        d(u.body_timeout),
    );
    let r = &u.retries;
    if r.attempts > 1 {
        out.push_str(&format!(
            "retries: up to {} attempts for idempotent requests (GET, HEAD, PUT, DELETE, OPTIONS; POST with Idempotency-Key) after a connect failure, a reset before any response byte or a 502/503; backoff {} doubling to {} with jitter; budget {}% of requests\n",
            r.attempts,
            d(r.backoff),
            d(r.max_backoff),
            r.budget * 100.0
        ));
    } else {
        out.push_str("retries: none\n");
    }
    match &t.breaker {
        Some(b) => out.push_str(&format!(
            "circuit breaker: opens at {}% failures over {} (at least {} requests), 503 with Retry-After for {}, then {} probe(s) to close\n",
            b.failure_ratio * 100.0,
            d(b.window),
            b.min_requests,
            d(b.open_for),
            b.probes
        )),
        None => out.push_str("circuit breaker: none\n"),
    }
    out.push_str(&format!(
        "load shedding: 503 above {} requests in flight to {}\n",
        t.max_concurrent, t.name
    ));
    if let Some(tls) = &t.tls {
        out.push_str(&format!(
            "upstream TLS: roots from {}, SNI {}, client certificate {}\n",
            tls.roots,
            tls.server_name
                .as_deref()
                .unwrap_or_else(|| t.authority.host()),
            if tls.client_cert { "yes" } else { "no" }
        ));
    }
    out
}
