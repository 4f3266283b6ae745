//! Rate limiting: GCRA (the generic cell rate algorithm) behind one interface, so the Redis
//! backend can slot in beside the memory one. A limit of `limit` per `period` admits `limit`
//! requests at once and then one every `period / limit`: no window-boundary bursts.
//!
//! This module knows nothing of HTTP; the proxy builds keys and turns decisions into headers.

pub mod memory;

use std::time::Duration;

pub use memory::MemoryLimiter;

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

/// The limiter backends. An enum, not a trait object: the set is closed and the call stays static.
#[derive(Debug)]
pub enum Limiter {
    Memory(MemoryLimiter),
}

impl Limiter {
    /// Counts one request for `key` against `quota` and says whether it is admitted.
    pub async fn check(&self, key: &str, quota: Quota) -> Decision {
        match self {
            Limiter::Memory(m) => m.check(key, quota),
        }
    }
}

/// GCRA on a theoretical arrival time (`tat`, nanoseconds on the limiter's clock).
/// Returns the new `tat` to store (unchanged when denied) and the decision.
pub fn gcra(tat: Option<u64>, now: u64, quota: Quota) -> (u64, Decision) {
    let t = quota.emission_interval().as_nanos().max(1) as u64;
    let period = quota.period.as_nanos() as u64;
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + t;
    let ahead = new_tat - now;
    if ahead <= period {
        let remaining = ((period - ahead) / t) as u32;
        (
            new_tat,
            Decision {
                allowed: true,
                remaining,
                reset_after: Duration::from_nanos(ahead),
                retry_after: Duration::ZERO,
            },
        )
    } else {
        let retry = ahead - period;
        (
            tat,
            Decision {
                allowed: false,
                remaining: 0,
                reset_after: Duration::from_nanos(tat - now),
                retry_after: Duration::from_nanos(retry),
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
