//! The circuit breaker of one upstream: closed (counting outcomes in a sliding window), open
//! (every request gets 503 with Retry-After at once, no connection attempted), half-open (a few
//! probes go through; all succeeding closes it, one failing opens it again).
//!
//! The rules come from the policy snapshot on every call, so a reload retunes a breaker without
//! forgetting its state. One mutex per upstream, held for a few arithmetic steps.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::policy::upstream::BreakerRules;

/// Buckets of the sliding window: outcomes older than the window fall off one bucket at a time.
const BUCKETS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The value of `ward_upstream_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// How a request got through the breaker: its outcome must be reported with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Normal,
    Probe,
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    /// Which slot of time this bucket counts (start / bucket length).
    epoch: u64,
    ok: u32,
    failed: u32,
}

#[derive(Debug)]
struct Inner {
    state: State,
    opened_at: Instant,
    buckets: [Bucket; BUCKETS as usize],
    probes_out: u32,
    probes_ok: u32,
}

#[derive(Debug)]
pub struct Breaker {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Default for Breaker {
    fn default() -> Self {
        let now = Instant::now();
        Breaker {
            start: now,
            inner: Mutex::new(Inner {
                state: State::Closed,
                opened_at: now,
                buckets: [Bucket::default(); BUCKETS as usize],
                probes_out: 0,
                probes_ok: 0,
            }),
        }
    }
}

impl Breaker {
    /// Whether a request may go to the upstream now; `Err(retry_after)` while open.
    pub fn admit(&self, rules: &BreakerRules, now: Instant) -> Result<Pass, Duration> {
        let mut s = self.inner.lock().expect("breaker lock is never poisoned");
        if s.state == State::Open {
            let reopen = s.opened_at + rules.open_for;
            if now < reopen {
                return Err(reopen - now);
            }
            s.state = State::HalfOpen;
            s.probes_out = 0;
            s.probes_ok = 0;
        }
        match s.state {
            State::Closed => Ok(Pass::Normal),
            State::HalfOpen if s.probes_out < rules.probes => {
                s.probes_out += 1;
                Ok(Pass::Probe)
            }
            // Every probe is out: the others wait for their verdict, answered like an open breaker.
            State::HalfOpen | State::Open => Err(Duration::from_secs(1)),
        }
    }

    /// Reports the outcome of a request `admit` let through.
    pub fn record(&self, rules: &BreakerRules, pass: Pass, ok: bool, now: Instant) {
        let mut s = self.inner.lock().expect("breaker lock is never poisoned");
        match (pass, s.state) {
            (Pass::Probe, State::HalfOpen) if !ok => self.open(&mut s, now),
            (Pass::Probe, State::HalfOpen) => {
                s.probes_ok += 1;
                if s.probes_ok >= rules.probes {
                    s.state = State::Closed;
                    s.buckets = [Bucket::default(); BUCKETS as usize];
                }
            }
            (Pass::Normal, State::Closed) => {
                let slot = rules.window / BUCKETS;
                let epoch = (now.saturating_duration_since(self.start).as_nanos()
                    / slot.as_nanos().max(1)) as u64;
                let b = &mut s.buckets[(epoch % u64::from(BUCKETS)) as usize];
                if b.epoch != epoch {
                    *b = Bucket {
                        epoch,
                        ok: 0,
                        failed: 0,
                    };
                }
                if ok {
                    b.ok += 1;
                } else {
                    b.failed += 1;
                }
                let live = s
                    .buckets
                    .iter()
                    .filter(|b| epoch.saturating_sub(b.epoch) < u64::from(BUCKETS));
                let (total, failed) = live.fold((0u32, 0u32), |(t, f), b| {
                    (t + b.ok + b.failed, f + b.failed)
                });
                if total >= rules.min_requests
                    && f64::from(failed) >= rules.failure_ratio * f64::from(total)
                {
                    self.open(&mut s, now);
                }
            }
            // Outcomes of requests admitted before the state changed say nothing new.
            _ => {}
        }
    }

    fn open(&self, s: &mut Inner, now: Instant) {
        s.state = State::Open;
        s.opened_at = now;
    }

    pub fn state(&self) -> State {
        self.inner
            .lock()
            .expect("breaker lock is never poisoned")
            .state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: BreakerRules = BreakerRules {
        failure_ratio: 0.5,
        window: Duration::from_secs(10),
        min_requests: 4,
        open_for: Duration::from_secs(5),
        probes: 2,
    };

    #[test]
    fn opens_at_the_failure_ratio_then_closes_after_every_probe_succeeds() {
        let b = Breaker::default();
        let t = Instant::now();
        for ok in [true, false, true] {
            b.record(&RULES, b.admit(&RULES, t).unwrap(), ok, t);
        }
        assert_eq!(b.state(), State::Closed, "below min_requests");
        b.record(&RULES, b.admit(&RULES, t).unwrap(), false, t);
        assert_eq!(b.state(), State::Open);
        let wait = b.admit(&RULES, t + Duration::from_secs(1)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(4));
        let later = t + Duration::from_secs(6);
        let p1 = b.admit(&RULES, later).unwrap();
        let p2 = b.admit(&RULES, later).unwrap();
        assert_eq!((p1, p2), (Pass::Probe, Pass::Probe));
        assert!(
            b.admit(&RULES, later).is_err(),
            "only `probes` probes at once"
        );
        b.record(&RULES, p1, true, later);
        assert_eq!(b.state(), State::HalfOpen);
        b.record(&RULES, p2, true, later);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let b = Breaker::default();
        let t = Instant::now();
        for _ in 0..4 {
            b.record(&RULES, b.admit(&RULES, t).unwrap(), false, t);
        }
        let later = t + Duration::from_secs(6);
        let p = b.admit(&RULES, later).unwrap();
        b.record(&RULES, p, false, later);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(&RULES, later).unwrap_err(), Duration::from_secs(5));
    }

    #[test]
    fn old_failures_fall_out_of_the_window() {
        let b = Breaker::default();
        let t = Instant::now();
        for _ in 0..3 {
            b.record(&RULES, Pass::Normal, false, t);
        }
        let later = t + Duration::from_secs(11);
        for _ in 0..3 {
            b.record(&RULES, Pass::Normal, true, later);
        }
        b.record(&RULES, Pass::Normal, false, later);
        assert_eq!(b.state(), State::Closed, "1 failure in 4 is under 50%");
    }
}
