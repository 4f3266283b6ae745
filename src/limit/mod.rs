//! Rate limiting: GCRA (the generic cell rate algorithm) behind one interface with two backends:
//! memory (one replica, the demo) and Redis (several replicas share every count). A limit of
//! `limit` per `period` admits `limit` requests at once and then one every `period / limit`: no
//! window-boundary bursts. The same arithmetic runs in both backends (in Rust for memory, in one
//! Lua script for Redis).
//!
//! A check can fail (Redis down or slow); each limit's [`Fallback`] then decides: count on this
//! replica alone against a share of the limit, or refuse.
//!
//! This module knows nothing of HTTP; the proxy builds keys and turns decisions into headers.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

pub use memory::MemoryLimiter;
pub use redis::RedisLimiter;

use crate::policy::RedisTuning;

/// The numbers a GCRA check needs.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub limit: u32,
    pub period: Duration,
}

impl Quota {
    /// Time between two admissions at the steady rate.
    pub fn emission_interval(&self) -> Duration {
        self.period / self.limit
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still admitted right now after this one.
    pub remaining: u32,
    /// Until the quota is whole again.
    pub reset_after: Duration,
    /// Until the next request would be admitted (zero when allowed).
    pub retry_after: Duration,
}

/// What a shared limit does while its backend is unavailable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fallback {
    /// Count on this replica alone, against `share` of the limit.
    Local { share: f64 },
    /// Refuse (the proxy answers 503 with Retry-After).
    Deny,
}

/// Which backend made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Redis,
    /// Redis was unavailable; this replica decided alone.
    LocalFallback,
}

/// A decision and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub decision: Decision,
    pub source: Source,
}

/// The backend could not decide and the limit's fallback is `Deny`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the rate-limit store is unavailable")]
pub struct Unavailable {
    /// A fair time for the client to come back (the breaker's cooldown).
    pub retry_after: Duration,
}

/// The limiter backends. An enum, not a trait object: the set is closed and the call stays static.
pub enum Limiter {
    Memory(MemoryLimiter),
    Redis(Arc<RedisLimiter>),
}

impl Limiter {
    /// Counts one request for `key` against `quota` and says whether it is admitted.
    pub async fn check(
        &self,
        key: &str,
        quota: Quota,
        fallback: Fallback,
        tuning: &RedisTuning,
    ) -> Result<Checked, Unavailable> {
        match self {
            Limiter::Memory(m) => Ok(Checked {
                decision: m.check(key, quota),
                source: Source::Memory,
            }),
            Limiter::Redis(r) => r.check(key, quota, fallback, tuning).await,
        }
    }

    /// The in-process store: the memory backend, or the Redis backend's fallback.
    pub fn memory(&self) -> &MemoryLimiter {
        match self {
            Limiter::Memory(m) => m,
            Limiter::Redis(r) => r.local(),
        }
    }
}

/// GCRA on a theoretical arrival time (`tat`, nanoseconds on the limiter's clock).
/// Returns the new `tat` to store (unchanged when denied) and the decision.
pub fn gcra(tat: Option<u64>, now: u64, quota: Quota) -> (u64, Decision) {
    let t = quota.emission_interval().as_nanos().max(1) as u64;
    let period = quota.period.as_nanos() as u64;
    gcra_step(tat.unwrap_or(now), now, t, period, 1)
}

/// One GCRA step in whole ticks of `tick_ns` nanoseconds (1 in memory; 1,000 on Redis's clock,
/// in microseconds): an emission `interval`, a `period`, the stored `tat` (`now` when none). The
/// Redis script runs the same arithmetic to know what to store; this says what was decided.
pub fn gcra_step(tat: u64, now: u64, interval: u64, period: u64, tick_ns: u64) -> (u64, Decision) {
    let ticks = |n: u64| Duration::from_nanos(n.saturating_mul(tick_ns));
    let tat = tat.max(now);
    let new_tat = tat + interval;
    let ahead = new_tat - now;
    if ahead <= period {
        let remaining = ((period - ahead) / interval).min(u64::from(u32::MAX)) as u32;
        (
            new_tat,
            Decision {
                allowed: true,
                remaining,
                reset_after: ticks(ahead),
                retry_after: Duration::ZERO,
            },
        )
    } else {
        (
            tat,
            Decision {
                allowed: false,
                remaining: 0,
                reset_after: ticks(tat - now),
                retry_after: ticks(ahead - period),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn admits_exactly_limit_at_once_then_one_per_interval() {
        let q = Quota {
            limit: 5,
            period: Duration::from_secs(15 * 60),
        };
        let mut tat = None;
        for i in 0..5 {
            let (t, d) = gcra(tat, 0, q);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
            tat = Some(t);
        }
        let (_, d) = gcra(tat, 0, q);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(180));
        // One interval later exactly one more is admitted.
        let (t, d) = gcra(tat, 180 * SEC, q);
        assert!(d.allowed);
        assert!(!gcra(Some(t), 180 * SEC, q).1.allowed);
    }

    #[test]
    fn a_full_period_of_quiet_restores_the_whole_quota() {
        let q = Quota {
            limit: 3,
            period: Duration::from_secs(60),
        };
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra(tat, 0, q).0);
        }
        let (_, d) = gcra(tat, 60 * SEC, q);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
    }
}
