//! State that every replica must share, one concern per module, each with two backends: memory
//! (one replica, `ward demo`) and Redis (several replicas). Rate limits live in `limit`; here:
//!
//! - [`revocation`]: revoked tokens, sessions and subjects, read on every request from an
//!   in-process copy that Redis pub/sub keeps current (no round trip per request);
//! - [`refresh`]: refresh-token single use: a claim per token hash, committed when the upstream
//!   accepted it, released when it failed;
//! - [`lockout`]: failed logins per identity (keyed by an HMAC, never the identity) and per
//!   client IP, with backoff and locks;
//! - [`events`]: security events: a log line, a counter, and a bounded queue to the audit sink.
//!
//! Both `proxy` and `payments` use this module (the service publishes its revocations here);
//! it knows nothing of HTTP requests.

pub mod events;
pub mod lockout;
pub mod refresh;
pub mod revocation;

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    now_ms() / 1000
}
