//! # ward: a security sidecar for payments APIs
//!
//! One binary, `ward`, with subcommands. The architecture, module by module:
//!
//! - [`settings`]: process settings from flags and env vars (addresses, paths). Not policy.
//! - [`policy`]: YAML policy files → `PolicySpec` (serde, unknown fields refused) → `compile` →
//!   an immutable `Policy` with matchers built ahead of time → `PolicyStore` (one `ArcSwap`).
//!   `watch` turns directory events (editors' renames, Kubernetes `..data` swaps) and SIGHUP
//!   into reloads; a bad reload keeps the last good policy.
//! - [`tls`]: certificate loading, the rustls `ServerConfig` (TLS 1.2/1.3, ALPN h2 + http/1.1),
//!   and the `CertStore` that swaps certificates for new handshakes (and reports their expiry);
//!   `ward certs dev`'s name-constrained development CA and leaf.
//! - [`identity`]: the token vocabulary both services speak: `Principal` (a verified caller),
//!   `AuthMethod`, the payments service's `Role` and `AccessClaims`. Data only, no I/O.
//! - [`limit`]: GCRA rate limiting behind the `Limiter` enum (memory now, Redis next).
//! - [`proxy`]: the transport (accept, handshake, HTTP/1 framing guard, hyper-util auto server,
//!   drain), the admin and redirect listeners, and `proxy::pipeline`, where every request runs
//!   through the security stages in order:
//!
//!   1. framing (400);
//!   2. route selection and deny routes (404 / configured 4xx);
//!   3. request limits (405 / 414 / 431 / 415 / 413);
//!   4. rate limits (429);
//!   5. CORS preflight (204 / 403);
//!   6. forward (502 / 504);
//!   7. response hardening (security headers, CORS, RateLimit headers, request id) on every
//!      response, errors included.
//! - [`telemetry`]: JSON logs and the Prometheus metric handles.
//! - [`payments`]: `ward payments`, the bundled upstream: token issuing with rotation, payments
//!   with validation and idempotency, the tenant-scoped tamper-evident audit trail, on SQLite or
//!   PostgreSQL. `payments::api` is the router, the per-request shell and one file per resource;
//!   `payments::domain` the rules free of HTTP and SQL (the payment state machine, lockout);
//!   `payments::store` typed rows over SQL written once for both engines; `payments::audit` the
//!   audit actions and hash chains. It never imports `proxy`, and `proxy` never imports it.
//! - [`demo`]: `ward demo`, the whole thing on a fresh machine with embedded defaults.
//! - [`health`]: `ward health`, the container probe: one GET to the admin port with a deadline.

#![forbid(unsafe_code)]

pub mod demo;
pub mod health;
pub mod identity;
pub mod keystore;
pub mod limit;
pub mod payments;
pub mod policy;
pub mod proxy;
pub mod redis_link;
pub mod settings;
pub mod telemetry;
pub mod tls;

/// The default policy shipped in `policies/default.yaml`, embedded for `ward demo`.
pub const DEFAULT_POLICY: &str = include_str!("../policies/default.yaml");
