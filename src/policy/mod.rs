//! Policy: what an operator tunes live. YAML files become a `PolicySpec` (spec.rs), which
//! `compile` turns into an immutable `Policy` with matchers built ahead of time; the `PolicyStore`
//! swaps whole policies atomically, and `watch` reloads on file changes and SIGHUP.
//!
//! Nothing here touches the network or a request: the proxy reads a `Policy` snapshot.

pub mod auth;
pub mod compile;
pub mod matcher;
pub mod sessions;
pub mod spec;
pub mod store;
pub mod units;
pub mod upstream;
pub mod watch;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;

pub use auth::{AuthRule, ClaimRule, Identity, IdentityHeaders, Issuer, KeySource, TenantSource};
pub use compile::{load, CompileError, LoadError};
pub use matcher::RouteMatch;
pub use spec::{Mode, Requirement};
pub use store::PolicyStore;
pub use upstream::{RouteUpstream, Upstream, Upstreams};

/// A compiled, validated policy. Immutable; replaced whole on reload.
#[derive(Debug)]
pub struct Policy {
    /// SHA-256 of the source files' bytes, in order.
    pub hash: String,
    pub sources: Vec<std::path::PathBuf>,
    pub loaded_at: SystemTime,
    /// Every upstream by name; the policy's `upstream` is `default`.
    pub upstreams: Upstreams,
    pub server: Server,
    pub routes: Vec<Arc<Route>>,
    /// Response headers from `defaults`, for answers given before a route is known (400, 404).
    pub default_response_headers: HeaderRules,
    /// Every distinct rate limit (by name), for the RateLimit-Policy header and metrics.
    pub rate_limit_names: Vec<Arc<str>>,
    pub identity: Identity,
    pub sessions: sessions::Sessions,
    /// Files besides the policy files whose change reloads the policy (API keys, HMAC secrets).
    pub watched_files: Vec<std::path::PathBuf>,
    /// Digest of every input (policy files, referenced files, secrets): a reload that changes
    /// only a referenced file still swaps the policy. Never published (secrets are in it).
    pub inputs: [u8; 32],
}

#[derive(Debug)]
pub struct Server {
    pub trusted_proxies: Vec<IpNet>,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    pub rate_limit_max_keys: usize,
    pub redis: RedisTuning,
    /// Where the decided client IP goes upstream.
    pub client_ip_header: HeaderName,
    pub forwarded: bool,
}

/// Deadline and breaker settings for Redis calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisTuning {
    pub timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    /// Where the route forwards, with its own body timeout and retries.
    pub upstream: RouteUpstream,
    pub deny: Option<Deny>,
    pub limits: RequestLimits,
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    pub cors: Option<Cors>,
    /// Limits counted before authentication (keys from the connection and the request).
    pub rate_limits: Vec<RateLimit>,
    /// Limits counted after authentication (keys from the verified caller).
    pub identity_rate_limits: Vec<RateLimit>,
    /// `RateLimit-Policy` for every enforced limit of the route, joined once at compile time.
    pub rate_limit_policy: Option<HeaderValue>,
    pub auth: AuthRule,
    /// Refresh-token single use (a refresh endpoint).
    pub refresh: Option<sessions::RefreshRule>,
    /// Brute-force lockout (a login endpoint).
    pub lockout: Option<sessions::LockoutRule>,
    /// The route's metric handles, looked up on first use (not policy: a memo beside it).
    pub metrics: crate::telemetry::RouteMetrics,
}

#[derive(Debug, Clone, Copy)]
pub struct Deny {
    pub status: http::StatusCode,
    pub mode: Mode,
}

#[derive(Debug)]
pub struct RequestLimits {
    pub max_body: u64,
    pub max_url: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_total_header_bytes: usize,
    pub methods: Vec<Method>,
    /// Lower-case media types without parameters; empty means any.
    pub content_types: Vec<String>,
    pub mode: Mode,
}

#[derive(Debug, Default)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Debug)]
pub struct Cors {
    pub origins: Vec<OriginPattern>,
    pub allow_methods: Vec<Method>,
    /// Lower-case names.
    pub allow_headers: Vec<HeaderName>,
    /// Pre-joined values for the response headers.
    pub allow_methods_value: HeaderValue,
    pub allow_headers_value: Option<HeaderValue>,
    pub expose_headers_value: Option<HeaderValue>,
    pub allow_credentials: bool,
    pub max_age_value: HeaderValue,
}

#[derive(Debug, Clone)]
pub enum OriginPattern {
    Exact(String),
    /// `scheme://*.suffix`: stores scheme and `.suffix`.
    Subdomain {
        scheme: String,
        suffix: String,
    },
    Any,
}

impl OriginPattern {
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => o.eq_ignore_ascii_case(origin),
            OriginPattern::Subdomain { scheme, suffix } => {
                let Some(rest) = origin
                    .strip_prefix(scheme.as_str())
                    .and_then(|r| r.strip_prefix("://"))
                else {
                    return false;
                };
                let rest = rest.to_ascii_lowercase();
                rest.len() > suffix.len()
                    && rest.ends_with(suffix.as_str())
                    && !rest[..rest.len() - suffix.len()].contains(['/', '@', '.'])
            }
        }
    }
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    Ip,
    IpUserAgent,
    Route,
    Header(HeaderName),
    /// The verified caller's subject.
    Subject,
    /// The verified caller's tenant.
    Tenant,
    /// The API key's id.
    ApiKey,
}

impl RateKey {
    /// Whether the key comes from the verified caller (counted after authentication).
    pub fn is_identity(&self) -> bool {
        matches!(self, RateKey::Subject | RateKey::Tenant | RateKey::ApiKey)
    }
}

pub use crate::limit::Fallback;

#[derive(Debug, Clone)]
pub struct RateLimit {
    pub name: Arc<str>,
    pub key: RateKey,
    pub limit: u32,
    pub period: Duration,
    pub mode: Mode,
    pub fallback: Fallback,
    /// `"name";q=limit;w=seconds`, ready for the RateLimit-Policy header.
    pub policy_item: String,
    /// `ward_rate_limit_decisions_total{limit,decision="allowed"}`, looked up on first use.
    pub allowed: crate::telemetry::Resolved<prometheus::IntCounter>,
}

impl Policy {
    /// Whether `ip` is a trusted hop (its X-Forwarded-For is believed).
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.server.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// First route that matches, with its index.
    pub fn route_for(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
    ) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(method, host, path))
    }
}

/// The JSON Schema of a policy file, generated from the spec types so it cannot drift.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(spec::PolicySpec);
    serde_json::to_string_pretty(&schema).expect("a schema serializes")
}

/// A human-readable account of what applies to a request (for `ward explain`).
pub fn explain(policy: &Policy, method: &Method, host: Option<&str>, path: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let Some(r) = policy.route_for(method, host, path) else {
        let _ = writeln!(
            out,
            "no route matches {method} {path}: 404 (urn:ward:problem:no-route)"
        );
        return out;
    };
    let _ = writeln!(out, "route: {}", r.name);
    out.push_str(&upstream::explain(&r.upstream));
    if let Some(d) = r.deny {
        let _ = writeln!(out, "deny: {} ({:?} mode)", d.status, d.mode);
    }
    let l = &r.limits;
    let _ = writeln!(
        out,
        "limits ({:?}): max_body={}B max_url={}B max_headers={} max_header_bytes={}B max_total_header_bytes={}B",
        l.mode, l.max_body, l.max_url, l.max_headers, l.max_header_bytes, l.max_total_header_bytes
    );
    let _ = writeln!(
        out,
        "methods: {}",
        l.methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "content types: {}",
        if l.content_types.is_empty() {
            "any".to_owned()
        } else {
            l.content_types.join(", ")
        }
    );
    let a = &r.auth;
    match a.require {
        Requirement::None => {
            let _ = writeln!(
                out,
                "auth: none (credentials not checked; identity headers stripped)"
            );
        }
        req => {
            let issuers: Vec<&str> = a.issuers.iter().map(|i| &*i.rules.name).collect();
            let _ = writeln!(
                out,
                "auth: {} ({:?} mode): issuers [{}], API keys {}, token in query {}",
                if req == Requirement::Required {
                    "required"
                } else {
                    "optional"
                },
                a.mode,
                issuers.join(", "),
                if a.api_keys { "accepted" } else { "refused" },
                if a.token_in_query {
                    "accepted"
                } else {
                    "refused"
                },
            );
            for is in &a.issuers {
                let rules = &is.rules;
                let keys = match &is.keys {
                    KeySource::Jwks(src) => match &src.location {
                        auth::JwksLocation::Url(u) => format!("JWKS {u}"),
                        auth::JwksLocation::File(p) => format!("JWKS file {}", p.display()),
                    },
                    KeySource::Hmac(_) => "HMAC secret".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "issuer {}: iss {}, aud [{}], alg [{}], leeway {}s, keys from {keys}",
                    rules.name,
                    rules.issuer,
                    rules.audiences.join(", "),
                    rules
                        .algorithms
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    rules.leeway,
                );
            }
            if !a.roles.is_empty() {
                let _ = writeln!(out, "authz: one of roles [{}]", a.roles.join(", "));
            }
            if !a.scopes.is_empty() {
                let _ = writeln!(out, "authz: all of scopes [{}]", a.scopes.join(", "));
            }
            for c in &a.claims {
                let _ = writeln!(out, "authz: claim {c:?}");
            }
            if let Some(t) = &a.tenant {
                let _ = writeln!(out, "authz: caller's tenant must equal {t:?}");
            }
        }
    }
    if let Some(rt) = &r.refresh {
        let _ = writeln!(
            out,
            "refresh token: single use, from {:?}, family from {:?}, remembered {}",
            rt.source,
            rt.family,
            humantime::format_duration(rt.lifetime)
        );
    }
    if let Some(l) = &r.lockout {
        let _ = writeln!(
            out,
            "lockout: identity [{}], {} failures in {} lock for {}, backoff {} to {}{}",
            l.identity.join(", "),
            l.rules.max_failures,
            humantime::format_duration(l.rules.window),
            humantime::format_duration(l.rules.lock_for),
            humantime::format_duration(l.rules.backoff_base),
            humantime::format_duration(l.rules.backoff_max),
            l.per_ip.map_or(String::new(), |ip| format!(
                "; per client IP {} failures in {}",
                ip.max_failures,
                humantime::format_duration(ip.window)
            )),
        );
    }
    if r.rate_limits.is_empty() && r.identity_rate_limits.is_empty() {
        let _ = writeln!(out, "rate limits: none (exempt)");
    }
    for (when, list) in [
        ("before auth", &r.rate_limits),
        ("after auth", &r.identity_rate_limits),
    ] {
        for rl in list {
            let fallback = match rl.fallback {
                Fallback::Local { share } => format!("local at {share} of the limit"),
                Fallback::Deny => "deny (503)".to_owned(),
            };
            let _ = writeln!(
                out,
                "rate limit {}: {} per {} by {:?} ({:?}), counted {when}; if Redis is down: {fallback}",
                rl.name,
                rl.limit,
                humantime::format_duration(rl.period),
                rl.key,
                rl.mode
            );
        }
    }
    for (n, v) in &r.response_headers.set {
        let _ = writeln!(
            out,
            "response header: {n}: {}",
            v.to_str().unwrap_or("<binary>")
        );
    }
    for n in &r.response_headers.remove {
        let _ = writeln!(out, "response header removed: {n}");
    }
    match &r.cors {
        Some(c) => {
            let _ = writeln!(
                out,
                "cors: {} origin pattern(s), methods {}, credentials {}",
                c.origins.len(),
                c.allow_methods_value.to_str().unwrap_or(""),
                c.allow_credentials
            );
        }
        None => {
            let _ = writeln!(out, "cors: not handled at the proxy");
        }
    }
    out
}

/// Where shared state lives and which session protections are on (for `ward check`).
pub fn state_summary(policy: &Policy, redis: Option<&str>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let store = match redis {
        Some(r) => format!("redis {r} (shared by every replica)"),
        None => "memory (this replica alone; give --redis-url to share)".to_owned(),
    };
    let _ = writeln!(out, "shared state: {store}");
    let names = |f: fn(&Route) -> bool| {
        let n: Vec<&str> = policy
            .routes
            .iter()
            .filter(|r| f(r))
            .map(|r| &*r.name)
            .collect();
        if n.is_empty() {
            "none".to_owned()
        } else {
            n.join(", ")
        }
    };
    let _ = writeln!(
        out,
        "rate limits: {}",
        if policy.rate_limit_names.is_empty() {
            "none".to_owned()
        } else {
            policy.rate_limit_names.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "revocation: {}",
        match policy.sessions.revocation {
            Some(r) => format!("on ({:?} while not loaded)", r.on_unsynced),
            None => "off".to_owned(),
        }
    );
    let _ = writeln!(
        out,
        "refresh-token single use: {}",
        names(|r| r.refresh.is_some())
    );
    let _ = writeln!(out, "login lockout: {}", names(|r| r.lockout.is_some()));
    let key = match (&policy.sessions.lockout_key, redis) {
        (Some(_), _) => "from the policy",
        (None, Some(_)) if policy.routes.iter().any(|r| r.lockout.is_some()) => {
            "MISSING: with --redis-url every replica needs sessions.lockout_key (the proxy refuses to start)"
        }
        (None, _) => "made at start (one replica)",
    };
    let _ = writeln!(out, "lockout key: {key}");
    let _ = writeln!(
        out,
        "security events: {}",
        match &policy.sessions.events_sink {
            Some(s) => format!("logged, counted, delivered to {}", s.url),
            None => "logged and counted".to_owned(),
        }
    );
    out
}
