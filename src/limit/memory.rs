//! The in-process GCRA store. Memory is bounded: at most `max_keys` keys over all shards; when a
//! shard is full, keys whose state has fully decayed go first (forgetting them changes nothing),
//! then the key closest to decayed (the least harm a flood of fresh keys can do).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::{gcra, Decision, Quota};

const SHARDS: usize = 64;

#[derive(Debug)]
pub struct MemoryLimiter {
    shards: Vec<Mutex<HashMap<Box<str>, u64>>>,
    epoch: Instant,
    max_per_shard: AtomicUsize,
    evicted: prometheus::IntCounter,
}

impl MemoryLimiter {
    pub fn new(max_keys: usize, evicted: prometheus::IntCounter) -> MemoryLimiter {
        MemoryLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: Instant::now(),
            max_per_shard: AtomicUsize::new(per_shard(max_keys)),
            evicted,
        }
    }

    /// Applies a new key bound (policy reload); shards shrink on their next insert.
    pub fn set_max_keys(&self, max_keys: usize) {
        self.max_per_shard
            .store(per_shard(max_keys), Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("limiter shard lock").len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn check(&self, key: &str, quota: Quota) -> Decision {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let shard = &self.shards[shard_of(key)];
        let mut map = shard.lock().expect("limiter shard lock");
        if let Some(tat) = map.get_mut(key) {
            let (new_tat, d) = gcra(Some(*tat), now, quota);
            *tat = new_tat;
            return d;
        }
        let (new_tat, d) = gcra(None, now, quota);
        let cap = self.max_per_shard.load(Ordering::Relaxed);
        if map.len() >= cap {
            let before = map.len();
            map.retain(|_, tat| *tat > now);
            while map.len() >= cap {
                let oldest = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => {
                        map.remove(&k);
                    }
                    None => break,
                }
            }
            self.evicted.inc_by((before - map.len()) as u64);
        }
        map.insert(key.into(), new_tat);
        d
    }
}

fn per_shard(max_keys: usize) -> usize {
    max_keys.div_ceil(SHARDS).max(1)
}

fn shard_of(key: &str) -> usize {
    // FNV-1a: cheap, and the shard choice needs no resistance to collisions (the map hashes again).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h as usize) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_bound() {
        let m = MemoryLimiter::new(1000, prometheus::IntCounter::new("e", "e").unwrap());
        let q = Quota {
            limit: 10,
            period: Duration::from_secs(3600),
        };
        for i in 0..50_000 {
            m.check(&format!("ip:{i}"), q);
        }
        assert!(m.len() <= 1000 + SHARDS, "{} keys kept", m.len());
        assert!(m.evicted.get() >= 48_000, "{} evicted", m.evicted.get());
    }
}
