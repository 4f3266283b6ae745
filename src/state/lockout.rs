//! Brute-force lockout: failed logins counted per key (an identity's HMAC, or a client IP),
//! attempts spaced by exponential backoff, then a lock. The same arithmetic runs in memory and in
//! one Lua script per operation in Redis (on Redis's clock), so every replica sees one count.
//!
//! A key's state: failures in the current window, when the window started, the earliest time the
//! next attempt is allowed (backoff), and the end of a lock. A success clears the key. A lock that
//! has run out is noticed by the next check, which reports it (the "lockout ended" event) and
//! starts the key afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::policy::RedisTuning;
use crate::redis_link::{LuaScript, RedisFault, RedisLink};

/// How failures turn into backoff and locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub max_failures: u32,
    pub window: Duration,
    pub lock_for: Duration,
    /// Zero: no backoff.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// Whether an attempt may go to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Open, and nothing is recorded for the key: a success has nothing to clear.
    Clean,
    /// Open, with failures recorded in the window (not yet backing off).
    Open,
    /// A lock ran out just now: open, and the lock's end is worth an event.
    Ended,
    /// Locked, or backing off: come back after `retry_after`.
    Wait { retry_after: Duration, locked: bool },
}

/// What one failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub failures: u32,
    /// This failure started a lock.
    pub locked: bool,
}

/// A key's state, for the admin API (unix milliseconds; 0 when not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct State {
    pub failures: u32,
    pub window_start: i64,
    pub next_allowed: i64,
    pub locked_until: i64,
}

enum Backend {
    Memory(Mutex<HashMap<String, (State, i64)>>),
    Redis(Arc<RedisLink>),
}

pub struct Lockouts {
    backend: Backend,
    check: LuaScript,
    failure: LuaScript,
    max_memory_keys: usize,
}

/// Returns {code, wait_ms}: 0 open, 1 locked, 2 lock ended (now open), 3 backing off, 4 open with
/// nothing recorded.
const CHECK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'l', 'n', 'f')
if not v[1] and not v[2] and not v[3] then return {4, 0} end
local l = tonumber(v[1]) or 0
local n = tonumber(v[2]) or 0
if l > now then return {1, l - now} end
if l > 0 then
  redis.call('DEL', KEYS[1])
  return {2, 0}
end
if n > now then return {3, n - now} end
return {0, 0}
"#;

/// ARGV: window, max failures, lock, backoff base, backoff max (ms). Returns {failures, locked}.
const FAILURE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local v = redis.call('HMGET', KEYS[1], 'f', 'w')
local f = tonumber(v[1]) or 0
local w = tonumber(v[2]) or 0
if now - w >= window then f = 0; w = now end
f = f + 1
local locked = 0
if f >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'l', string.format('%d', now + tonumber(ARGV[3])))
  locked = 1
elseif tonumber(ARGV[4]) > 0 then
  local d = tonumber(ARGV[4]) * 2 ^ (f - 1)
  if d > tonumber(ARGV[5]) then d = tonumber(ARGV[5]) end
  redis.call('HSET', KEYS[1], 'n', string.format('%d', now + d))
end
redis.call('HSET', KEYS[1], 'f', f, 'w', string.format('%d', w))
redis.call('PEXPIRE', KEYS[1], math.max(window, tonumber(ARGV[3])))
return {f, locked}
"#;

impl Lockouts {
    pub fn memory(max_keys: usize) -> Lockouts {
        Lockouts {
            backend: Backend::Memory(Mutex::default()),
            check: LuaScript::new(CHECK),
            failure: LuaScript::new(FAILURE),
            max_memory_keys: max_keys.max(1),
        }
    }

    pub fn redis(link: Arc<RedisLink>) -> Lockouts {
        Lockouts {
            backend: Backend::Redis(link),
            check: LuaScript::new(CHECK),
            failure: LuaScript::new(FAILURE),
            max_memory_keys: 0,
        }
    }

    pub async fn check(&self, key: &str, tuning: &RedisTuning) -> Result<Gate, RedisFault> {
        let (code, wait) = match &self.backend {
            Backend::Memory(map) => {
                let now = super::now_ms();
                let mut map = map.lock().expect("lockout lock");
                match map.get(key).map(|(s, _)| *s) {
                    Some(s) if s.locked_until > now => (1, s.locked_until - now),
                    Some(s) if s.locked_until > 0 => {
                        map.remove(key);
                        (2, 0)
                    }
                    Some(s) if s.next_allowed > now => (3, s.next_allowed - now),
                    Some(_) => (0, 0),
                    None => (4, 0),
                }
            }
            Backend::Redis(link) => {
                let k = link.key("lo", key);
                link.eval::<(i64, i64), u64>("lockout", &self.check, &[&k], &[], tuning)
                    .await?
            }
        };
        let retry_after = Duration::from_millis(wait.max(0) as u64);
        Ok(match code {
            1 => Gate::Wait {
                retry_after,
                locked: true,
            },
            2 => Gate::Ended,
            3 => Gate::Wait {
                retry_after,
                locked: false,
            },
            4 => Gate::Clean,
            _ => Gate::Open,
        })
    }

    pub async fn failure(
        &self,
        key: &str,
        rules: &Rules,
        tuning: &RedisTuning,
    ) -> Result<Failure, RedisFault> {
        let ms = |d: Duration| d.as_millis() as u64;
        match &self.backend {
            Backend::Memory(map) => {
                let now = super::now_ms();
                let mut map = map.lock().expect("lockout lock");
                self.bound(&mut map, now);
                let (s, _) = map.entry(key.to_owned()).or_default();
                if now - s.window_start >= ms(rules.window) as i64 {
                    s.failures = 0;
                    s.window_start = now;
                }
                s.failures += 1;
                let locked = s.failures >= rules.max_failures;
                if locked {
                    s.locked_until = now + ms(rules.lock_for) as i64;
                } else if !rules.backoff_base.is_zero() {
                    s.next_allowed = now + backoff(rules, s.failures) as i64;
                }
                let failures = s.failures;
                let expires = now + ms(rules.window.max(rules.lock_for)) as i64;
                map.get_mut(key).expect("inserted above").1 = expires;
                Ok(Failure { failures, locked })
            }
            Backend::Redis(link) => {
                let k = link.key("lo", key);
                let (failures, locked): (i64, i64) = link
                    .eval(
                        "lockout",
                        &self.failure,
                        &[&k],
                        &[
                            ms(rules.window),
                            u64::from(rules.max_failures),
                            ms(rules.lock_for),
                            ms(rules.backoff_base),
                            ms(rules.backoff_max),
                        ],
                        tuning,
                    )
                    .await?;
                Ok(Failure {
                    failures: failures.max(0) as u32,
                    locked: locked == 1,
                })
            }
        }
    }

    /// A success clears the key.
    pub async fn clear(&self, key: &str, tuning: &RedisTuning) -> Result<(), RedisFault> {
        match &self.backend {
            Backend::Memory(map) => {
                map.lock().expect("lockout lock").remove(key);
                Ok(())
            }
            Backend::Redis(link) => {
                let mut del = redis::cmd("DEL");
                del.arg(link.key("lo", key));
                link.run::<i64>("lockout", &del, tuning).await?;
                Ok(())
            }
        }
    }

    pub async fn show(&self, key: &str, tuning: &RedisTuning) -> Result<Option<State>, RedisFault> {
        match &self.backend {
            Backend::Memory(map) => {
                let now = super::now_ms();
                Ok(map
                    .lock()
                    .expect("lockout lock")
                    .get(key)
                    .filter(|(_, exp)| *exp > now)
                    .map(|(s, _)| *s))
            }
            Backend::Redis(link) => {
                let mut get = redis::cmd("HMGET");
                get.arg(link.key("lo", key)).arg(&["f", "w", "n", "l"][..]);
                let v: Vec<Option<i64>> = link.run("lockout", &get, tuning).await?;
                if v.iter().all(Option::is_none) {
                    return Ok(None);
                }
                let at = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
                Ok(Some(State {
                    failures: at(0).max(0) as u32,
                    window_start: at(1),
                    next_allowed: at(2),
                    locked_until: at(3),
                }))
            }
        }
    }

    fn bound(&self, map: &mut HashMap<String, (State, i64)>, now: i64) {
        if map.len() < self.max_memory_keys {
            return;
        }
        map.retain(|_, (_, exp)| *exp > now);
        while map.len() >= self.max_memory_keys {
            let Some(k) = map
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&k);
        }
    }
}

/// The wait after the `failures`th failure: base × 2^(failures − 1), at most max (ms).
fn backoff(rules: &Rules, failures: u32) -> u64 {
    let base = rules.backoff_base.as_millis() as u64;
    let factor = 1u64
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u64::MAX);
    base.saturating_mul(factor)
        .min(rules.backoff_max.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            max_failures: 3,
            window: Duration::from_secs(900),
            lock_for: Duration::from_secs(900),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3),
        }
    }

    fn tuning() -> RedisTuning {
        RedisTuning {
            timeout: Duration::from_secs(1),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_max() {
        let r = rules();
        assert_eq!(
            (1..=4).map(|f| backoff(&r, f)).collect::<Vec<_>>(),
            [1000, 2000, 3000, 3000]
        );
        assert_eq!(backoff(&r, 200), 3000);
    }

    #[tokio::test]
    async fn failures_back_off_then_lock_and_a_success_clears() {
        let l = Lockouts::memory(100);
        let t = tuning();
        assert_eq!(l.check("k", &t).await.unwrap(), Gate::Clean);
        let f = l.failure("k", &rules(), &t).await.unwrap();
        assert_eq!(
            f,
            Failure {
                failures: 1,
                locked: false
            }
        );
        assert!(matches!(
            l.check("k", &t).await.unwrap(),
            Gate::Wait { locked: false, retry_after } if retry_after > Duration::from_millis(900)
        ));
        l.failure("k", &rules(), &t).await.unwrap();
        assert!(l.failure("k", &rules(), &t).await.unwrap().locked);
        assert!(matches!(
            l.check("k", &t).await.unwrap(),
            Gate::Wait { locked: true, .. }
        ));
        assert_eq!(l.show("k", &t).await.unwrap().unwrap().failures, 3);
        l.clear("k", &t).await.unwrap();
        assert_eq!(l.check("k", &t).await.unwrap(), Gate::Clean);
        assert_eq!(l.show("k", &t).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_lock_that_ran_out_is_reported_once() {
        let l = Lockouts::memory(100);
        let t = tuning();
        let r = Rules {
            max_failures: 1,
            lock_for: Duration::ZERO,
            ..rules()
        };
        assert!(l.failure("k", &r, &t).await.unwrap().locked);
        assert_eq!(l.check("k", &t).await.unwrap(), Gate::Ended);
        assert_eq!(l.check("k", &t).await.unwrap(), Gate::Clean);
    }

    #[tokio::test]
    async fn a_gate_with_failures_recorded_is_open_not_clean() {
        let l = Lockouts::memory(100);
        let t = tuning();
        let r = Rules {
            backoff_base: Duration::ZERO,
            ..rules()
        };
        l.failure("k", &r, &t).await.unwrap();
        assert_eq!(l.check("k", &t).await.unwrap(), Gate::Open);
        assert_eq!(l.check("other", &t).await.unwrap(), Gate::Clean);
    }
}
