//! # ward: a security sidecar for payments APIs
//!
//! One binary, `ward`, with subcommands. The architecture, module by module:
//!
//! - [`settings`]: process settings from flags and env vars (addresses, paths). Not policy.
//! - [`policy`]: YAML policy files → `PolicySpec` (serde, unknown fields refused) → `compile` →
//!   an immutable `Policy` with matchers built ahead of time → `PolicyStore` (one `ArcSwap`).
//!   `watch` turns directory events (editors' renames, Kubernetes `..data` swaps) and SIGHUP
//!   into reloads; a bad reload keeps the last good policy. `compile` is split by section
//!   (`server`, `route`), `auth` by what it compiles (`issuer`, `api_keys`, `rule`), `sessions`
//!   holds the session rules.
//! - [`tls`]: certificate loading, the rustls `ServerConfig` (TLS 1.2/1.3, ALPN h2 + http/1.1),
//!   and the `CertStore` that swaps certificates for new handshakes (and reports their expiry);
//!   `ward certs dev`'s name-constrained development CA and leaf.
//! - [`sni`]: several certificates on one listener, chosen by the client's server name (exact,
//!   then `*.` wildcard, else the default), each its own reloading `CertStore`.
//! - [`identity`]: the token vocabulary both services speak: `Principal` (a verified caller),
//!   `AuthMethod`, the payments service's `Role` and `AccessClaims`; and the pure verification the
//!   proxy applies to any issuer: `keyset` (strict JWKS), `jwt` (compact JWS and claims),
//!   `apikey` (hashed static keys). No I/O.
//! - [`limit`]: GCRA rate limiting behind the `Limiter` enum: memory (one replica, the demo) or
//!   Redis (every replica shares the count), fallible, with a per-limit fallback when Redis is out.
//! - [`redis_link`]: the one Redis connection (single node or Cluster) with a deadline per call
//!   and a circuit breaker, for every Redis-backed store.
//! - [`state`]: what replicas share besides limits: revocations (an in-process copy kept
//!   current by Redis pub/sub), refresh-token claims, lockouts, and security events with their
//!   bounded delivery to the audit sink. Used by the proxy and by the payments service, which
//!   publishes its revocations there.
//! - [`admin_client`]: `ward revoke`, `ward revocations`, `ward lockout`: clients of the control
//!   API on a running proxy's admin port.
//! - [`keystore`]: the live JWKS keys of each issuer the policy names, beside the policy store,
//!   fetched or watched by their own tasks, keeping the last good set.
//! - [`proxy`]: the transport (accept, handshake, HTTP/1 framing guard, hyper's server for the
//!   protocol ALPN chose, drain), the admin and redirect listeners, and `proxy::pipeline`, where
//!   every request runs through the security stages in order:
//!
//!   1. framing (400);
//!   2. route selection and deny routes (404 / configured 4xx);
//!   3. request limits (405 / 414 / 431 / 415 / 413);
//!   4. rate limits keyed by the connection and the request, before any signature check (429 / 503);
//!   5. CORS preflight (204 / 403);
//!   6. authentication: bearer JWT or API key, then revocation; the verified caller as evidence
//!      (401 / 503);
//!   7. authorization on roles, scopes, claims and tenant, taking the caller (403);
//!   8. rate limits keyed by the verified caller (429 / 503);
//!   9. sessions: refresh-token single use (401) and login lockout (429), reading a bounded body;
//!   10. forward to the route's upstream, with the caller in identity headers: load shedding and
//!       the circuit breaker (503 at once), a stalled request body (408), retries of idempotent
//!       requests within a budget, then 502 / 504;
//!   11. sessions on the upstream's answer: commit or release the refresh token, count a failed
//!       login;
//!   12. response hardening (security headers, CORS, RateLimit headers, request id) on every
//!       response, errors included.
//! - The edges both services share, one implementation each: [`request_id`] (accept a
//!   well-formed id or make one), [`client_ip`] (the client behind trusted hops),
//!   [`access_log`] (the one JSON request line: service, request id, method, path without query
//!   values, route, status, duration, client IP, tenant, subject), [`serve`] (accept with
//!   back-off, TCP keepalive, a task per connection, drain on shutdown), and [`telemetry`] (log setup with a
//!   bounded, drop-counting writer; Prometheus rendering; the proxy's metric handles).
//! - [`payments`]: `ward payments`, the bundled upstream: token issuing with rotation, payments
//!   with validation and idempotency, the tenant-scoped tamper-evident audit trail, on SQLite or
//!   PostgreSQL. `payments::api` is the router, the per-request shell and one file per resource;
//!   `payments::domain` the rules free of HTTP and SQL (the payment state machine, lockout);
//!   `payments::store` typed rows over SQL written once for both engines; `payments::audit` the
//!   audit actions and hash chains. It never imports `proxy`, and `proxy` never imports it.
//! - [`demo`]: `ward demo`, the whole thing on a fresh machine with embedded defaults.
//! - [`health`]: `ward health`, the container probe: one GET to the admin port with a deadline.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin_client;
pub mod client_ip;
pub mod demo;
pub mod health;
pub mod identity;
pub mod keystore;
pub mod limit;
pub mod payments;
pub mod policy;
pub mod proxy;
pub mod redis_link;
pub mod request_id;
pub mod serve;
pub mod settings;
pub mod sni;
pub mod state;
pub mod telemetry;
pub mod tls;

/// The default policy shipped in `policies/default.yaml`, embedded for `ward demo`.
pub const DEFAULT_POLICY: &str = include_str!("../policies/default.yaml");
