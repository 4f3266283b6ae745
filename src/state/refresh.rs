//! Refresh-token single use. Each refresh token (by the SHA-256 of the token, never the token) is
//! claimed atomically before it is forwarded: the first claim wins and is *pending* until the
//! upstream answers. A 2xx *commits* it as used (remembering its family, the session to revoke if
//! it ever comes back); anything else *releases* it, so an honest retry after an upstream failure
//! is not called theft. A token presented while pending or after its commit is reused: the second
//! use is refused, and the family is revoked (at once when known; for a concurrent second use of a
//! token still pending, when the first use commits).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::policy::RedisTuning;
use crate::redis_link::{LuaScript, RedisFault, RedisLink};

pub type TokenHash = [u8; 32];

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: forward it, then commit or release.
    First,
    /// Used before (its family, when the first use's commit recorded one).
    Reused { family: Option<String> },
    /// Another use of it is in flight right now: also reuse.
    InFlight,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Pending { reused: bool },
    Used { family: Option<String> },
}

enum Backend {
    Memory(Mutex<HashMap<TokenHash, (State, i64)>>),
    Redis(Arc<RedisLink>),
}

pub struct RefreshClaims {
    backend: Backend,
    scripts: Scripts,
    max_memory_entries: usize,
}

struct Scripts {
    claim: LuaScript,
    commit: LuaScript,
    release: LuaScript,
}

/// KEYS[1]: the token's key. ARGV[1]: pending lifetime (ms). Returns {1} first use, {2} in flight
/// (now marked reused), {3, family} used before.
const CLAIM: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'p', 'PX', ARGV[1])
  return {1, ''}
end
if v == 'p' or v == 'pr' then
  redis.call('SET', KEYS[1], 'pr', 'KEEPTTL')
  return {2, ''}
end
return {3, string.sub(v, 3)}
"#;

/// KEYS[1]; ARGV[1]: lifetime (ms), ARGV[2]: family ('' for none). Returns 1 when a concurrent
/// use was seen while pending (the family must be revoked now).
const COMMIT: &str = r#"
local v = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'u:' .. ARGV[2], 'PX', ARGV[1])
if v == 'pr' then return 1 end
return 0
"#;

/// KEYS[1]. Releases a pending claim (never a committed one).
const RELEASE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v == 'p' or v == 'pr' then redis.call('DEL', KEYS[1]) end
return 0
"#;

impl RefreshClaims {
    pub fn memory(max_entries: usize) -> RefreshClaims {
        RefreshClaims {
            backend: Backend::Memory(Mutex::default()),
            scripts: Scripts::new(),
            max_memory_entries: max_entries.max(1),
        }
    }

    pub fn redis(link: Arc<RedisLink>) -> RefreshClaims {
        RefreshClaims {
            backend: Backend::Redis(link),
            scripts: Scripts::new(),
            max_memory_entries: 0,
        }
    }

    /// Claims `hash` for one use. `pending` bounds how long a claim stays pending if ward never
    /// learns the upstream's answer (a crash): then the token may be used again.
    pub async fn claim(
        &self,
        hash: &TokenHash,
        pending: Duration,
        tuning: &RedisTuning,
    ) -> Result<Claim, RedisFault> {
        match &self.backend {
            Backend::Memory(map) => {
                let now = super::now_ms();
                let mut map = map.lock().expect("refresh claims lock");
                let entry = map.get_mut(hash).filter(|(_, exp)| *exp > now);
                Ok(match entry {
                    None => {
                        self.bound(&mut map, now);
                        map.insert(
                            *hash,
                            (
                                State::Pending { reused: false },
                                now + pending.as_millis() as i64,
                            ),
                        );
                        Claim::First
                    }
                    Some((State::Pending { reused }, _)) => {
                        *reused = true;
                        Claim::InFlight
                    }
                    Some((State::Used { family }, _)) => Claim::Reused {
                        family: family.clone(),
                    },
                })
            }
            Backend::Redis(link) => {
                let key = key(link, hash);
                let (code, family): (i64, String) = link
                    .eval(
                        "refresh_claim",
                        &self.scripts.claim,
                        &[&key],
                        &[pending.as_millis() as u64],
                        tuning,
                    )
                    .await?;
                Ok(match code {
                    1 => Claim::First,
                    2 => Claim::InFlight,
                    _ => Claim::Reused {
                        family: (!family.is_empty()).then_some(family),
                    },
                })
            }
        }
    }

    /// The upstream accepted the token: remember it as used for `lifetime` (the token's own life).
    /// Returns true when another use came in while it was pending: that family must be revoked.
    pub async fn commit(
        &self,
        hash: &TokenHash,
        family: Option<&str>,
        lifetime: Duration,
        tuning: &RedisTuning,
    ) -> Result<bool, RedisFault> {
        match &self.backend {
            Backend::Memory(map) => {
                let now = super::now_ms();
                let mut map = map.lock().expect("refresh claims lock");
                let reused = matches!(map.get(hash), Some((State::Pending { reused: true }, _)));
                map.insert(
                    *hash,
                    (
                        State::Used {
                            family: family.map(str::to_owned),
                        },
                        now + lifetime.as_millis() as i64,
                    ),
                );
                Ok(reused)
            }
            Backend::Redis(link) => {
                let key = key(link, hash);
                let lifetime = lifetime.as_millis().to_string();
                let reused: i64 = link
                    .eval(
                        "refresh_commit",
                        &self.scripts.commit,
                        &[&key],
                        &[lifetime.as_str(), family.unwrap_or("")],
                        tuning,
                    )
                    .await?;
                Ok(reused == 1)
            }
        }
    }

    /// The upstream refused or failed: the token may be presented again.
    pub async fn release(&self, hash: &TokenHash, tuning: &RedisTuning) -> Result<(), RedisFault> {
        match &self.backend {
            Backend::Memory(map) => {
                let mut map = map.lock().expect("refresh claims lock");
                if matches!(map.get(hash), Some((State::Pending { .. }, _))) {
                    map.remove(hash);
                }
                Ok(())
            }
            Backend::Redis(link) => {
                let key = key(link, hash);
                link.eval::<i64, u64>(
                    "refresh_release",
                    &self.scripts.release,
                    &[&key],
                    &[],
                    tuning,
                )
                .await?;
                Ok(())
            }
        }
    }

    /// Memory stays bounded: expired entries go first, then the soonest to expire.
    fn bound(&self, map: &mut HashMap<TokenHash, (State, i64)>, now: i64) {
        if map.len() < self.max_memory_entries {
            return;
        }
        map.retain(|_, (_, exp)| *exp > now);
        while map.len() >= self.max_memory_entries {
            let Some(k) = map.iter().min_by_key(|(_, (_, e))| *e).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&k);
        }
    }
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            claim: LuaScript::new(CLAIM),
            commit: LuaScript::new(COMMIT),
            release: LuaScript::new(RELEASE),
        }
    }
}

fn key(link: &RedisLink, hash: &TokenHash) -> String {
    link.key("rt", &hex::encode(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning() -> RedisTuning {
        RedisTuning {
            timeout: Duration::from_secs(1),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn a_token_is_used_once_and_released_on_failure() {
        let c = RefreshClaims::memory(100);
        let (h, t, p) = ([1u8; 32], tuning(), Duration::from_secs(30));
        assert_eq!(c.claim(&h, p, &t).await.unwrap(), Claim::First);
        c.release(&h, &t).await.unwrap();
        assert_eq!(c.claim(&h, p, &t).await.unwrap(), Claim::First, "released");
        assert!(!c
            .commit(&h, Some("s1"), Duration::from_secs(60), &t)
            .await
            .unwrap());
        assert_eq!(
            c.claim(&h, p, &t).await.unwrap(),
            Claim::Reused {
                family: Some("s1".into())
            }
        );
        c.release(&h, &t).await.unwrap();
        assert!(
            matches!(c.claim(&h, p, &t).await.unwrap(), Claim::Reused { .. }),
            "a committed use is never released"
        );
    }

    #[tokio::test]
    async fn a_concurrent_second_use_is_reuse_and_revokes_at_commit() {
        let c = RefreshClaims::memory(100);
        let (h, t, p) = ([2u8; 32], tuning(), Duration::from_secs(30));
        assert_eq!(c.claim(&h, p, &t).await.unwrap(), Claim::First);
        assert_eq!(c.claim(&h, p, &t).await.unwrap(), Claim::InFlight);
        assert!(c
            .commit(&h, Some("s1"), Duration::from_secs(60), &t)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn memory_stays_within_its_bound() {
        let c = RefreshClaims::memory(10);
        for i in 0..1000u32 {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_be_bytes());
            c.claim(&h, Duration::from_secs(30), &tuning())
                .await
                .unwrap();
        }
        let Backend::Memory(map) = &c.backend else {
            unreachable!()
        };
        assert!(map.lock().unwrap().len() <= 10);
    }
}
