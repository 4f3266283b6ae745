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
    /// The default upstream: where allowed requests are forwarded (routes name it `default`).
    pub upstream: Option<UpstreamSpec>,
    /// More upstreams by name, for routes' `upstream.name` (edge use with several backends).
    pub upstreams: Option<std::collections::HashMap<String, UpstreamSpec>>,
    /// Connection-level settings, applied to new connections.
    pub server: Option<ServerSpec>,
    /// Who callers are: token issuers, API keys, and the identity headers sent upstream.
    pub identity: Option<IdentitySpec>,
    /// Sessions at the edge: revocation, the lockout key, security events.
    pub sessions: Option<SessionsSpec>,
    /// Settings every route inherits unless it overrides them.
    pub defaults: Option<DefaultsSpec>,
    /// Routes, first match wins. A request matching no route gets 404.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

pub use super::upstream::{
    BreakerSpec, RetrySpec, RouteUpstreamSpec, UpstreamSpec, UpstreamTlsSpec,
};

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
    /// How ward talks to Redis when it runs with `--redis-url` (shared rate limits).
    pub redis: Option<RedisSpec>,
    /// The header that carries the client IP, as ward decided it, to the upstream: one address; client-sent copies (and any `X-Forwarded-For` chain) are removed. Default `X-Forwarded-For`.
    pub client_ip_header: Option<HeaderNameSpec>,
    /// Also send `Forwarded: for=<client>;proto=https` (RFC 7239). Default false.
    pub forwarded: Option<bool>,
}

/// Deadlines and the circuit breaker for Redis calls. Without `--redis-url` these are unused.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// Longest wait for one Redis answer; past it the call counts as failed and the limit's `on_redis_error` applies. Default 250ms.
    pub timeout: Option<Dur>,
    /// Consecutive failed calls that open the breaker (no Redis call at all while open). Default 5.
    pub breaker_failures: Option<u32>,
    /// How long the breaker stays open before one probe call may try Redis again. Default 2s.
    pub breaker_cooldown: Option<Dur>,
}

/// Token issuers, API keys and the identity headers.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    /// JWT issuers, referenced by name from routes' `auth.issuers`.
    #[serde(default)]
    pub issuers: Vec<IssuerSpec>,
    /// Static API keys for machine clients, stored as hashes in a separate file.
    pub api_keys: Option<ApiKeysSpec>,
    /// Headers that carry the verified identity to the upstream. Client-sent copies are always removed, on every route.
    pub headers: Option<IdentityHeadersSpec>,
    /// Verified-token cache: a hot token costs no signature check until it expires.
    pub cache: Option<TokenCacheSpec>,
}

/// One JWT issuer: where its keys are and what its tokens must satisfy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerSpec {
    /// Name routes use in `auth.issuers`; letters, digits, `-`, `_`.
    pub name: String,
    /// The `iss` claim, compared exactly (a trailing slash matters).
    pub issuer: String,
    /// `aud` must hold one of these, compared exactly. At least one.
    pub audiences: Vec<String>,
    /// Accepted `alg` values: EdDSA, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512; HS256, HS384, HS512 only with `hmac`. `none` is never accepted.
    pub algorithms: Vec<String>,
    /// Public keys from a JWKS file or URL (exactly one of `jwks` and `hmac`).
    pub jwks: Option<JwksSpec>,
    /// A shared HMAC secret, read from a file or an environment variable (never from the policy text).
    pub hmac: Option<HmacSpec>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Default 30s, at most 5m.
    pub leeway: Option<Dur>,
    /// Claims that must be present besides `exp`, `iss`, `aud` and the subject (always required).
    pub required_claims: Option<Vec<String>>,
    /// Largest token accepted (401 above it, before any parsing). Default 8KiB.
    pub max_token_size: Option<Size>,
    /// When set, the header's `typ` must equal it (case-insensitive, `application/` optional), e.g. `JWT` or `at+jwt`.
    pub typ: Option<String>,
    /// Which claims hold the subject, tenant, roles and scopes.
    pub claims: Option<ClaimNamesSpec>,
}

/// Where an issuer's public keys come from: exactly one of `url` and `file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwksSpec {
    /// `https://` (or `http://` on loopback) URL of the JWK Set. Fetched at start, then every `refresh`, and at once (at most every `min_refetch`) when a token names an unknown `kid`.
    pub url: Option<String>,
    /// A JWK Set file, relative to the policy file; re-read when it changes.
    pub file: Option<String>,
    /// Time between scheduled fetches of `url`. Default 5m.
    pub refresh: Option<Dur>,
    /// Least time between two fetches triggered by unknown `kid`s, so garbage kids cannot make ward hammer the issuer. Default 30s.
    pub min_refetch: Option<Dur>,
    /// Deadline of one fetch. Default 5s.
    pub timeout: Option<Dur>,
    /// PEM bundle of CAs to trust for an `https://` url, relative to the policy file. Default: the system's roots.
    pub ca_file: Option<String>,
}

/// An HMAC secret source: exactly one of `secret_file` and `secret_env`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacSpec {
    /// File holding the secret (at least 32 bytes; surrounding whitespace is trimmed), relative to the policy file.
    pub secret_file: Option<String>,
    /// Environment variable holding the secret (at least 32 bytes).
    pub secret_env: Option<String>,
    /// Never allowed: a secret in the policy text would be in every copy and log of it. Present only to give a clear error.
    pub secret: Option<serde_json::Value>,
}

/// Claim names (defaults in brackets).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimNamesSpec {
    /// [`sub`] the subject.
    pub subject: Option<String>,
    /// [`tenant`] the tenant id.
    pub tenant: Option<String>,
    /// [`roles`] a string (one role) or an array of strings.
    pub roles: Option<String>,
    /// [`scope`] a space-separated string or an array of strings.
    pub scopes: Option<String>,
}

/// Where API keys are and how clients send them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysSpec {
    /// YAML file of keys (`keys: [{id, hash: "sha256:<hex>", tenant, roles, scopes, rate_limit: {limit, period}}]`), relative to the policy file; re-read with the policy. Make one with `ward apikey generate`.
    pub file: String,
    /// Request header carrying the key. Default `X-Api-Key`. It is never forwarded upstream.
    pub header: Option<HeaderNameSpec>,
}

/// Header names for the identity sent upstream.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeadersSpec {
    /// Default `X-Ward-Subject`.
    pub subject: Option<HeaderNameSpec>,
    /// Default `X-Ward-Tenant`.
    pub tenant: Option<HeaderNameSpec>,
    /// Comma-separated roles. Default `X-Ward-Roles`.
    pub roles: Option<HeaderNameSpec>,
    /// `jwt` or `api_key`. Default `X-Ward-Auth-Method`.
    pub method: Option<HeaderNameSpec>,
}

/// The verified-token cache.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheSpec {
    /// Most tokens kept (by a keyed SipHash of the token, never the token). `0` turns the cache off. Default 100000.
    pub max_entries: Option<usize>,
}

/// Whether a route needs a verified caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Requirement {
    /// A valid token or API key is needed (401 without).
    Required,
    /// No credentials is fine; credentials sent must be valid (401 otherwise).
    Optional,
    /// Credentials are not checked (but identity headers are still stripped).
    None,
}

/// Authentication and authorization of a route; each field overrides the default's.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// `required`, `optional` or `none`. Default `none`.
    pub require: Option<Requirement>,
    /// Issuers whose tokens this route accepts (names from `identity.issuers`). An HMAC issuer must be named by the route itself, not inherited.
    pub issuers: Option<Vec<String>>,
    /// Accept API keys on this route. Default false.
    pub api_keys: Option<bool>,
    /// The caller needs one of these roles (403 otherwise).
    pub roles: Option<Vec<String>>,
    /// The caller needs every one of these scopes (403 otherwise).
    pub scopes: Option<Vec<String>>,
    /// Claim rules, all of which must hold (403 otherwise).
    pub claims: Option<Vec<ClaimRuleSpec>>,
    /// Tenant isolation: the caller's tenant must equal the tenant the request names (403 otherwise).
    pub tenant: Option<TenantRuleSpec>,
    /// Accept a token in the `access_token` query parameter (RFC 6750 §2.3). Default false: such a request is refused.
    pub token_in_query: Option<bool>,
    /// `shadow`: failures are logged and counted and the request goes on without an identity.
    pub mode: Option<Mode>,
}

/// A rule on one claim: exactly one of `equals`, `one_of`, `contains`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRuleSpec {
    pub claim: String,
    /// The claim equals this value.
    pub equals: Option<serde_json::Value>,
    /// The claim equals one of these values.
    pub one_of: Option<Vec<serde_json::Value>>,
    /// The claim is an array holding this value, or a space-separated string holding this word.
    pub contains: Option<serde_json::Value>,
}

/// Where the request names its tenant: exactly one of `header` and `path_segment`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRuleSpec {
    /// A request header holding the tenant id.
    pub header: Option<HeaderNameSpec>,
    /// The 1-based path segment holding the tenant id (`/v1/tenants/{t}/...` is segment 3).
    pub path_segment: Option<usize>,
}

/// Defaults for every route.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSpec {
    pub limits: Option<LimitsSpec>,
    pub headers: Option<HeadersSpec>,
    pub cors: Option<CorsSpec>,
    pub rate_limits: Option<Vec<RateLimitSpec>>,
    pub auth: Option<AuthSpec>,
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
    /// Authentication and authorization; each field overrides the default's.
    pub auth: Option<AuthSpec>,
    /// Refresh-token single use on this route (a token refresh endpoint).
    pub refresh_token: Option<RefreshTokenSpec>,
    /// Brute-force lockout on this route (a login endpoint).
    pub lockout: Option<LockoutSpec>,
    /// Which upstream the route forwards to, and its own body timeout and retries.
    pub upstream: Option<RouteUpstreamSpec>,
}

/// Revocation, the lockout key and security events.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionsSpec {
    /// Check every verified token against the revocations (by `jti`, `sid`, subject). Present: on.
    pub revocation: Option<RevocationSpec>,
    /// HMAC key for lockout identities (so no raw email or username is stored or logged). Needed with `--redis-url` (every replica must use the same key); without it, one is made at start.
    pub lockout_key: Option<SecretSourceSpec>,
    /// Security events: always logged and counted; delivered to an audit sink when one is set.
    pub events: Option<EventsSpec>,
}

/// Token revocation at the edge.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevocationSpec {
    /// While this replica has never loaded the revocations (Redis down at start): `fail_closed` (default) answers 503 to requests with a token; `fail_open` lets them pass, counted and logged.
    pub on_unsynced: Option<Unsynced>,
    /// How long a session or subject revocation is kept: at least the longest life of an access token. Default 1h.
    pub max_token_lifetime: Option<Dur>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unsynced {
    FailClosed,
    FailOpen,
}

/// A secret from a file or an environment variable, never the policy text.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretSourceSpec {
    /// File holding the secret (at least 32 bytes), relative to the policy file.
    pub secret_file: Option<String>,
    /// Environment variable holding it.
    pub secret_env: Option<String>,
    /// Never allowed; present only to give a clear error.
    pub secret: Option<serde_json::Value>,
}

/// Security events.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsSpec {
    /// The audit intake events are delivered to, in batches.
    pub sink: Option<EventSinkSpec>,
    /// Events waiting for delivery at most; more are dropped and counted. Default 10000.
    pub queue: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventSinkSpec {
    /// e.g. the payments service's `http://127.0.0.1:8080/internal/v1/security-events`.
    pub url: String,
    /// File holding the intake's bearer token, relative to the policy file.
    pub token_file: String,
    /// Events per delivery, at most. Default 100.
    pub batch: Option<usize>,
    /// Longest wait to fill a batch. Default 1s.
    pub flush_every: Option<Dur>,
}

/// What a session store does when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Refuse with 503 (the default: these are security checks).
    Deny,
    /// Let the request through without the check, counted and logged.
    Allow,
}

/// Refresh-token single use: exactly one of `json_field` and `cookie`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshTokenSpec {
    /// The request body is JSON and this top-level string field holds the refresh token.
    pub json_field: Option<String>,
    /// The refresh token is in this cookie.
    pub cookie: Option<String>,
    /// The upstream names the token's family (session) in this response header on success; a reuse revokes that session.
    pub family_header: Option<HeaderNameSpec>,
    /// Or: the refresh token is a JWT whose claim (e.g. `sid`) names its family.
    pub family_claim: Option<String>,
    /// How long a used token is remembered: at least the refresh token's own life. Default 7d.
    pub lifetime: Option<Dur>,
    /// Largest body read to find the token (400 above it). Default 16KiB.
    pub max_body: Option<Size>,
    /// When Redis cannot answer: `deny` (default, 503) or `allow` (forward without the check).
    pub on_redis_error: Option<OnStoreError>,
}

/// Brute-force lockout of a login route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockoutSpec {
    /// Top-level string fields of the JSON body that together name the identity (e.g. `[tenant, email]`); normalised (Unicode NFC, case, whitespace) and keyed by HMAC.
    pub identity: Vec<String>,
    /// Upstream statuses that count as a failed attempt. Default [401].
    pub failure_statuses: Option<Vec<u16>>,
    /// Failures within `window` that lock the identity. Default 5.
    pub max_failures: Option<u32>,
    /// Default 15m.
    pub window: Option<Dur>,
    /// How long a lock lasts. Default 15m.
    pub lock_for: Option<Dur>,
    /// Wait after the first failure, doubled after each next one (until the lock). Default 1s; 0s turns backoff off.
    pub backoff_base: Option<Dur>,
    /// Longest backoff wait. Default 60s.
    pub backoff_max: Option<Dur>,
    /// Failures from one client IP across identities (credential stuffing). Default 20 in 15m lock 15m.
    pub per_ip: Option<IpLockoutSpec>,
    /// Largest body read to find the identity (400 above it). Default 16KiB.
    pub max_body: Option<Size>,
    /// When Redis cannot answer: `deny` (default, 503) or `allow` (forward without lockout).
    pub on_redis_error: Option<OnStoreError>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpLockoutSpec {
    pub max_failures: u32,
    pub window: Dur,
    pub lock_for: Dur,
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
    /// Counted before authentication: `ip`, `ip_user_agent`, `route`, `header:<Name>`. Counted after it, by the verified caller: `subject`, `tenant`, `api_key` (a request without one counts by IP).
    pub key: String,
    pub limit: u32,
    pub period: Dur,
    #[serde(default)]
    pub mode: Mode,
    /// With `--redis-url`, what happens when Redis fails or is slow: `local` (default) counts this replica alone against `local_share` of the limit; `deny` answers 503 with Retry-After.
    pub on_redis_error: Option<OnRedisError>,
    /// Share of `limit` each replica admits alone while Redis is unavailable (`local`). Default 1.0 (each replica the whole limit); 1/replicas keeps the total.
    pub local_share: Option<f64>,
}

/// What a shared limit does while Redis is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    Local,
    Deny,
}
