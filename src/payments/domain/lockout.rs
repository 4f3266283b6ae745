//! Account lockout: `max_failures` failed logins within `window` lock the account for
//! `duration`. The lock is stored with the user, so it survives a restart; a successful login
//! clears the count.
//!
//! Times are unix milliseconds, passed in by the caller (the store, inside the transaction that
//! reads and writes the counters).

use std::time::Duration;

/// The lockout rule.
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    pub max_failures: i64,
    pub window: Duration,
    pub duration: Duration,
}

/// An account's failed-login counters, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailedLogins {
    /// Failures counted in the current window.
    pub count: i64,
    /// When the current window started.
    pub first_failed_at: Option<i64>,
    pub locked_until: Option<i64>,
}

/// What one more failed login does to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The account is locked: the attempt is not counted, so the lock ends on schedule.
    WhileLocked,
    /// Counted; the account stays open. Store these counters (and no lock).
    Counted { count: i64, first_failed_at: i64 },
    /// This failure reached the limit: the account is locked until `until` and the count starts over.
    LockedNow { until: i64 },
}

/// Why a login of a known user is refused. The client never learns which (one 401 for all); the
/// audit trail records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    WrongPassword,
    AccountLocked,
}

impl Refusal {
    /// The `reason` recorded in the audit details.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::WrongPassword => "wrong_password",
            Refusal::AccountLocked => "account_locked",
        }
    }
}

/// Is an account with this `locked_until` locked at `now`? A lock ends at `until` exactly.
pub fn is_locked(locked_until: Option<i64>, now: i64) -> bool {
    locked_until.is_some_and(|until| until > now)
}

/// May a known user log in? Only with the right password on an unlocked account: while locked,
/// even the right password is refused, so guessing on cannot find it.
pub fn check_login(password_ok: bool, locked_until: Option<i64>, now: i64) -> Result<(), Refusal> {
    if is_locked(locked_until, now) {
        Err(Refusal::AccountLocked)
    } else if password_ok {
        Ok(())
    } else {
        Err(Refusal::WrongPassword)
    }
}

impl LockoutPolicy {
    /// Count one failed login at `now` against an account's counters.
    pub fn record_failure(&self, before: FailedLogins, now: i64) -> Failure {
        if is_locked(before.locked_until, now) {
            return Failure::WhileLocked;
        }
        let window_ms = self.window.as_millis() as i64;
        let (count, first_failed_at) = match before.first_failed_at {
            Some(first) if now - first < window_ms => (before.count + 1, first),
            _ => (1, now),
        };
        if count >= self.max_failures {
            Failure::LockedNow {
                until: now + self.duration.as_millis() as i64,
            }
        } else {
            Failure::Counted {
                count,
                first_failed_at,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn policy() -> LockoutPolicy {
        LockoutPolicy {
            max_failures: 5,
            window: Duration::from_secs(15 * 60),
            duration: Duration::from_secs(10 * 60),
        }
    }

    /// Apply failures the way the store does and return the counters after each one.
    fn fail(
        p: &LockoutPolicy,
        mut state: FailedLogins,
        at: &[i64],
    ) -> (FailedLogins, Vec<Failure>) {
        let mut outcomes = Vec::new();
        for &now in at {
            let f = p.record_failure(state, now);
            match f {
                Failure::WhileLocked => {}
                Failure::Counted {
                    count,
                    first_failed_at,
                } => {
                    state = FailedLogins {
                        count,
                        first_failed_at: Some(first_failed_at),
                        locked_until: None,
                    }
                }
                Failure::LockedNow { until } => {
                    state = FailedLogins {
                        count: 0,
                        first_failed_at: None,
                        locked_until: Some(until),
                    }
                }
            }
            outcomes.push(f);
        }
        (state, outcomes)
    }

    #[test]
    fn the_fifth_failure_within_the_window_locks_for_the_duration() {
        let (state, outcomes) = fail(
            &policy(),
            FailedLogins::default(),
            &[0, MIN, 2 * MIN, 3 * MIN, 4 * MIN],
        );
        assert_eq!(
            outcomes[..4],
            [
                Failure::Counted {
                    count: 1,
                    first_failed_at: 0
                },
                Failure::Counted {
                    count: 2,
                    first_failed_at: 0
                },
                Failure::Counted {
                    count: 3,
                    first_failed_at: 0
                },
                Failure::Counted {
                    count: 4,
                    first_failed_at: 0
                },
            ]
        );
        assert_eq!(
            outcomes[4],
            Failure::LockedNow {
                until: 4 * MIN + 10 * MIN
            }
        );
        assert!(is_locked(state.locked_until, 14 * MIN - 1));
        assert!(
            !is_locked(state.locked_until, 14 * MIN),
            "the lock ends on schedule"
        );
    }

    #[test]
    fn failures_outside_the_window_start_a_new_count() {
        let p = policy();
        let (state, _) = fail(&p, FailedLogins::default(), &[0, MIN, 2 * MIN, 3 * MIN]);
        assert_eq!(state.count, 4);
        // 15 minutes after the first failure the window has passed: this one counts as the first.
        assert_eq!(
            p.record_failure(state, 15 * MIN),
            Failure::Counted {
                count: 1,
                first_failed_at: 15 * MIN
            }
        );
        assert_eq!(
            p.record_failure(state, 15 * MIN - 1),
            Failure::LockedNow {
                until: 25 * MIN - 1
            }
        );
    }

    #[test]
    fn attempts_while_locked_are_not_counted_and_an_expired_lock_counts_afresh() {
        let p = policy();
        let locked = FailedLogins {
            count: 0,
            first_failed_at: None,
            locked_until: Some(20 * MIN),
        };
        assert_eq!(p.record_failure(locked, 19 * MIN), Failure::WhileLocked);
        assert_eq!(
            p.record_failure(locked, 20 * MIN),
            Failure::Counted {
                count: 1,
                first_failed_at: 20 * MIN
            }
        );
        assert!(!is_locked(None, 0));
    }

    #[test]
    fn a_locked_account_refuses_even_the_right_password() {
        let until = Some(20 * MIN);
        assert_eq!(check_login(true, None, 0), Ok(()));
        assert_eq!(check_login(false, None, 0), Err(Refusal::WrongPassword));
        assert_eq!(
            check_login(true, until, 19 * MIN),
            Err(Refusal::AccountLocked)
        );
        assert_eq!(
            check_login(false, until, 19 * MIN),
            Err(Refusal::AccountLocked)
        );
        assert_eq!(
            check_login(true, until, 20 * MIN),
            Ok(()),
            "an expired lock is no lock"
        );
        assert_eq!(Refusal::WrongPassword.as_str(), "wrong_password");
        assert_eq!(Refusal::AccountLocked.as_str(), "account_locked");
    }
}
