//! GCRA in Redis: one Lua script per decision (one round trip, `EVALSHA`), on Redis's own clock
//! (`TIME`), so every replica counts against the same theoretical arrival time whatever its own
//! clock says. Keys expire when their state has fully decayed, so Redis holds no idle key.
//! When Redis cannot answer (down, slow, breaker open), the limit's fallback decides.

use std::sync::Arc;
use std::time::Duration;

use super::{Checked, Decision, Fallback, MemoryLimiter, Quota, Source, Unavailable};
use crate::policy::RedisTuning;
use crate::redis_link::{LuaScript, RedisLink};

/// KEYS[1]: the limit's key. ARGV[1]: emission interval, ARGV[2]: period (microseconds).
/// Returns {allowed, remaining, reset_after_us, retry_after_us}. Numbers are formatted with %d
/// before they are stored: Lua's default conversion keeps 14 digits, and these have 16.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead <= period then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(ahead / 1000))
  return {1, math.floor((period - ahead) / interval), ahead, 0}
end
return {0, 0, tat - now, ahead - period}
"#;

pub struct RedisLimiter {
    link: Arc<RedisLink>,
    script: LuaScript,
    /// Decides alone while Redis is unavailable (`Fallback::Local`).
    local: MemoryLimiter,
}

impl RedisLimiter {
    pub fn new(link: Arc<RedisLink>, local: MemoryLimiter) -> RedisLimiter {
        RedisLimiter {
            link,
            script: LuaScript::new(GCRA),
            local,
        }
    }

    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    pub fn local(&self) -> &MemoryLimiter {
        &self.local
    }

    pub async fn check(
        &self,
        key: &str,
        quota: Quota,
        fallback: Fallback,
        tuning: &RedisTuning,
    ) -> Result<Checked, Unavailable> {
        let interval = quota.emission_interval().as_micros().max(1) as u64;
        let period = quota.period.as_micros() as u64;
        let redis_key = self.link.key("rl", key);
        let answer: Result<Vec<i64>, _> = self
            .link
            .eval(
                "rate_limit",
                &self.script,
                &[&redis_key],
                &[interval, period],
                tuning,
            )
            .await;
        match answer.map_err(|e| e.to_string()).and_then(|v| decode(&v)) {
            Ok(decision) => Ok(Checked {
                decision,
                source: Source::Redis,
            }),
            Err(why) => {
                tracing::debug!(error = why.as_str(), "Redis rate limit unavailable");
                match fallback {
                    Fallback::Local { share } => {
                        let limit = ((f64::from(quota.limit) * share).floor() as u32).max(1);
                        Ok(Checked {
                            decision: self.local.check(
                                key,
                                Quota {
                                    limit,
                                    period: quota.period,
                                },
                            ),
                            source: Source::LocalFallback,
                        })
                    }
                    Fallback::Deny => Err(Unavailable {
                        retry_after: tuning.breaker_cooldown.max(Duration::from_secs(1)),
                    }),
                }
            }
        }
    }
}

/// The script's four numbers; anything else is a broken answer (an outage, not a decision).
fn decode(v: &[i64]) -> Result<Decision, String> {
    let &[allowed, remaining, reset, retry] = v else {
        return Err(format!("unexpected GCRA answer of {} values", v.len()));
    };
    if !(0..=1).contains(&allowed) || remaining < 0 || reset < 0 || retry < 0 {
        return Err("unexpected GCRA answer".into());
    }
    Ok(Decision {
        allowed: allowed == 1,
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        reset_after: Duration::from_micros(reset as u64),
        retry_after: Duration::from_micros(retry as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_four_sane_numbers_are_a_decision() {
        let d = decode(&[1, 4, 180_000_000, 0]).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 4);
        assert_eq!(d.reset_after, Duration::from_secs(180));
        assert!(decode(&[1, 4, 5]).is_err());
        assert!(decode(&[2, 0, 0, 0]).is_err());
        assert!(decode(&[0, -1, 0, 0]).is_err());
    }
}
