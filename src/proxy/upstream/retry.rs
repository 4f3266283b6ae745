//! Retries: which requests may be sent twice, how long to wait between attempts, and the retry
//! budget that keeps retries a bounded share of an upstream's traffic (so a struggling upstream
//! is never hit by a retry storm on top of its load).

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, Method};
use rand::Rng;

use crate::policy::upstream::Retries;

/// Whether the request may be sent again: a method that is idempotent by definition, or a POST
/// whose `Idempotency-Key` lets the upstream recognise a second copy.
pub fn idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    ) || (*method == Method::POST && headers.contains_key("idempotency-key"))
}

/// The wait before retry number `n` (1 for the first retry): `backoff` doubled per retry, capped
/// at `max_backoff`, then a random 50-100% of it so that replicas do not retry in step.
pub fn backoff(rules: &Retries, n: u32) -> Duration {
    let doubled = rules
        .backoff
        .saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let cap = doubled.min(rules.max_backoff);
    cap.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// Retries allowed so far: every request deposits `budget` (a share of one retry), every retry
/// withdraws one whole. Over any stretch of time retries stay within that share of requests;
/// the balance is capped so a long quiet spell does not bank a burst.
#[derive(Debug, Default)]
pub struct Budget {
    /// In thousandths of a retry, so that shares add up exactly.
    balance: Mutex<u64>,
}

const ONE: u64 = 1000;
/// The most retries a budget may hold in reserve.
const MAX_BALANCE: u64 = 100 * ONE;

impl Budget {
    pub fn deposit(&self, share: f64) {
        let add = (share * ONE as f64).round() as u64;
        let mut b = self.balance.lock().expect("budget lock is never poisoned");
        *b = (*b + add).min(MAX_BALANCE);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        let mut b = self.balance.lock().expect("budget lock is never poisoned");
        if *b >= ONE {
            *b -= ONE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_requests_are_retried() {
        let none = HeaderMap::new();
        let mut key = HeaderMap::new();
        key.insert("idempotency-key", "k1".parse().unwrap());
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(idempotent(&m, &none), "{m}");
        }
        assert!(!idempotent(&Method::POST, &none));
        assert!(idempotent(&Method::POST, &key));
        assert!(!idempotent(&Method::PATCH, &key));
    }

    #[test]
    fn retries_stay_within_the_share_of_requests() {
        let b = Budget::default();
        let mut retries = 0;
        for _ in 0..100 {
            b.deposit(0.2);
            while b.withdraw() {
                retries += 1;
            }
        }
        assert_eq!(retries, 20);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let r = Retries {
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            budget: 0.2,
        };
        for _ in 0..50 {
            let first = backoff(&r, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&r, 3);
            assert!(third >= Duration::from_millis(150) && third <= Duration::from_millis(300));
        }
    }
}
