//! The serde mirror of a policy file. No logic lives here: `compile` turns it into a `Policy`.
//!
//! Every struct denies unknown fields, so a typo is an error instead of a protection silently off.
//! A policy path may be one file or a directory of `*.yaml` files read in name order; `upstream`,
//! `server` and `defaults` may each appear in at most one file, and the files' `routes` are
//! concatenated in that order (first match wins).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::units::{Cidr, Dur, HeaderNameSpec, HeaderValueSpec, MethodName, SerdeMapKey, Size};

/// One policy file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Policy language version; only `1` exists.
    pub version: u32,
    /// Where allowed requests are forwarded.
    pub upstream: Option<UpstreamSpec>,
    /// Connection-level settings, applied to new connections.
    pub server: Option<ServerSpec>,
    /// Settings every route inherits unless it overrides them.
    pub defaults: Option<DefaultsSpec>,
    /// Routes, first match wins. A request matching no route gets 404.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// The upstream service.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// `http://host:port` (or `https://`) of the upstream; a path prefix is kept.
    pub url: String,
    /// Longest wait for the upstream's response headers, and for each response body chunk (504 before headers). Default 30s.
    pub idle_timeout: Option<Dur>,
    /// Longest time for the whole exchange with the upstream (504 before headers). Default 60s.
    pub request_timeout: Option<Dur>,
}

/// Whether a rule blocks (`enforce`, the default) or only logs and counts what it would block (`shadow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// Connection-level settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Peers whose X-Forwarded-For is believed (the client IP is the rightmost untrusted address). Default: none.
    pub trusted_proxies: Option<Vec<Cidr>>,
    /// Time a client has to send a complete request head (slowloris guard). Default 10s.
    pub header_read_timeout: Option<Dur>,
    /// Time a client has to finish the TLS handshake. Default 10s.
    pub handshake_timeout: Option<Dur>,
    /// Open client connections above which new ones are closed at once. Default 10000.
    pub max_connections: Option<usize>,
    /// HTTP/2 concurrent streams per connection. Default 100.
    pub max_concurrent_streams: Option<u32>,
    /// Keys the in-memory rate limiter keeps at most; the least recently limited are dropped first. Default 100000.
    pub rate_limit_max_keys: Option<usize>,
}

/// Defaults for every route.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSpec {
    pub limits: Option<LimitsSpec>,
    pub headers: Option<HeadersSpec>,
    pub cors: Option<CorsSpec>,
    pub rate_limits: Option<Vec<RateLimitSpec>>,
}

/// A route: a matcher plus overrides of the defaults.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name; used in metrics, logs and rate-limit keys.
    pub name: String,
    /// What the route matches; an empty match matches every request.
    #[serde(rename = "match", default)]
    pub matcher: MatchSpec,
    /// Answer without contacting the upstream.
    pub deny: Option<DenySpec>,
    /// Request limits; each field overrides the default's.
    pub limits: Option<LimitsSpec>,
    /// Header rules; `set` entries are merged over the defaults', `remove` lists are joined.
    pub headers: Option<HeadersSpec>,
    /// CORS for this route; replaces the default's.
    pub cors: Option<CorsSpec>,
    /// Rate limits for this route; replaces the default list (`[]` exempts the route).
    pub rate_limits: Option<Vec<RateLimitSpec>>,
}

/// Request matcher: every given part must match.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// `api.example.com` or `*.example.com` (any subdomain); compared without port, case-insensitive.
    pub host: Option<String>,
    pub path: Option<PathSpec>,
    pub methods: Option<Vec<MethodName>>,
}

/// Path matcher: exactly one of `exact`, `prefix` (segment-aware: `/v1` matches `/v1` and `/v1/x`, not `/v1x`) or `glob` (`*` one segment, `**` any depth).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub glob: Option<String>,
}

/// A route that answers by itself.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DenySpec {
    /// 4xx status to answer with. Default 403.
    pub status: Option<u16>,
    #[serde(default)]
    pub mode: Mode,
}

/// Limits checked before anything is forwarded.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Largest request body (413). Default 1MiB.
    pub max_body: Option<Size>,
    /// Longest path plus query (414). Default 8KiB.
    pub max_url: Option<Size>,
    /// Most request headers (431). Default 100.
    pub max_headers: Option<usize>,
    /// Largest single header, name plus value (431). Default 8KiB.
    pub max_header_bytes: Option<Size>,
    /// Largest sum of all headers (431). Default 32KiB.
    pub max_total_header_bytes: Option<Size>,
    /// Allowed methods (405). Default GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS.
    pub methods: Option<Vec<MethodName>>,
    /// Allowed request media types for requests with a body (415), e.g. `application/json`. Default: any.
    pub content_types: Option<Vec<String>>,
    /// `shadow` logs and counts violations of these limits without blocking.
    pub mode: Option<Mode>,
}

/// Header rules.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadersSpec {
    /// Rules for requests sent to the upstream.
    pub request: Option<HeaderRulesSpec>,
    /// Rules for every response, including the proxy's own errors.
    pub response: Option<HeaderRulesSpec>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesSpec {
    /// Headers to set (replacing any present).
    #[serde(default)]
    pub set: BTreeMap<SerdeMapKey, HeaderValueSpec>,
    /// Headers to remove.
    #[serde(default)]
    pub remove: Vec<HeaderNameSpec>,
}

/// Cross-origin resource sharing, answered at the proxy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Exact origins (`https://app.example.com`) or patterns with one leading `*.` label (`https://*.example.com`). `*` alone is refused when credentials are allowed.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for. Default GET, HEAD, POST.
    pub allow_methods: Option<Vec<MethodName>>,
    /// Request headers a preflight may ask for (case-insensitive). Default none.
    pub allow_headers: Option<Vec<HeaderNameSpec>>,
    /// Response headers exposed to scripts.
    pub expose_headers: Option<Vec<HeaderNameSpec>>,
    /// Send `Access-Control-Allow-Credentials: true`. Default false.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight. Default 10m.
    pub max_age: Option<Dur>,
}

/// A named rate limit: `limit` requests per `period` for each key, GCRA (no boundary bursts).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Name, used in headers, metrics and the counter key; the same name on two routes is one shared counter and must have the same settings.
    pub name: String,
    /// `ip`, `ip_user_agent`, `route` or `header:<Name>`.
    pub key: String,
    pub limit: u32,
    pub period: Dur,
    #[serde(default)]
    pub mode: Mode,
}
