//! The verified-token cache: a hot token costs a SHA-256 and a map lookup instead of a signature
//! check. Keyed by the SHA-256 of the token, never the token. An entry serves only while:
//! the token has not expired (`exp`, no leeway: never longer than the token's own life), the
//! issuer's rules are the ones it was verified under (a policy change invalidates), and the key
//! that verified it is still in the issuer's key set (a removed key evicts its tokens).
//! Bounded: at most `max_entries`; expired entries go first when a shard is full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::identity::Principal;

const SHARDS: usize = 32;

pub type TokenHash = [u8; 32];

pub fn hash(token: &str) -> TokenHash {
    // ring's SHA-256 (assembly): a third of the RustCrypto one's instructions on a 300-byte token.
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[derive(Clone)]
pub struct Entry {
    pub principal: Arc<Principal>,
    /// The issuer's name and rule fingerprint at verification time.
    pub issuer: Arc<str>,
    pub fingerprint: u64,
    /// The key that verified the token (`None`: the issuer's only key or an HMAC secret).
    pub kid: Option<Box<str>>,
    /// `exp`, unix seconds.
    pub expires_at: i64,
}

pub struct TokenCache {
    shards: Vec<Mutex<HashMap<TokenHash, Entry>>>,
    max_per_shard: AtomicUsize,
    pub hits: prometheus::IntCounter,
    pub misses: prometheus::IntCounter,
    pub size: prometheus::IntGauge,
}

impl TokenCache {
    pub fn new(
        max_entries: usize,
        hits: prometheus::IntCounter,
        misses: prometheus::IntCounter,
        size: prometheus::IntGauge,
    ) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_per_shard: AtomicUsize::new(per_shard(max_entries)),
            hits,
            misses,
            size,
        }
    }

    /// Applies a new bound (policy reload); 0 empties the cache and turns it off.
    pub fn set_max_entries(&self, max_entries: usize) {
        self.max_per_shard
            .store(per_shard(max_entries), Ordering::Relaxed);
        if max_entries == 0 {
            for s in &self.shards {
                s.lock().expect("token cache shard lock").clear();
            }
            self.size.set(0);
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_per_shard.load(Ordering::Relaxed) > 0
    }

    /// The principal for `hash` if its entry has not expired at `now` (unix seconds); `valid`
    /// decides the rest (issuer fingerprint, key still present). An entry found invalid is dropped.
    pub fn get(
        &self,
        hash: &TokenHash,
        now: i64,
        valid: impl FnOnce(&Entry) -> bool,
    ) -> Option<Arc<Principal>> {
        let mut map = self.shard(hash).lock().expect("token cache shard lock");
        let found = match map.get(hash) {
            Some(e) if now < e.expires_at && valid(e) => Some(e.principal.clone()),
            Some(_) => {
                map.remove(hash);
                self.size.dec();
                None
            }
            None => None,
        };
        drop(map);
        match &found {
            Some(_) => self.hits.inc(),
            None => self.misses.inc(),
        }
        found
    }

    pub fn insert(&self, hash: TokenHash, entry: Entry, now: i64) {
        let cap = self.max_per_shard.load(Ordering::Relaxed);
        if cap == 0 || entry.expires_at <= now {
            return;
        }
        let mut map = self.shard(&hash).lock().expect("token cache shard lock");
        if map.len() >= cap && !map.contains_key(&hash) {
            let before = map.len();
            map.retain(|_, e| e.expires_at > now);
            while map.len() >= cap {
                let Some(k) = map.keys().next().copied() else {
                    break;
                };
                map.remove(&k);
            }
            self.size.sub((before - map.len()) as i64);
        }
        if map.insert(hash, entry).is_none() {
            self.size.inc();
        }
    }

    fn shard(&self, hash: &TokenHash) -> &Mutex<HashMap<TokenHash, Entry>> {
        &self.shards[hash[0] as usize % SHARDS]
    }
}

fn per_shard(max_entries: usize) -> usize {
    if max_entries == 0 {
        0
    } else {
        max_entries.div_ceil(SHARDS).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthMethod;

    fn cache(max: usize) -> TokenCache {
        TokenCache::new(
            max,
            prometheus::IntCounter::new("h", "h").unwrap(),
            prometheus::IntCounter::new("m", "m").unwrap(),
            prometheus::IntGauge::new("s", "s").unwrap(),
        )
    }

    fn entry(exp: i64) -> Entry {
        Entry {
            principal: Arc::new(Principal {
                subject: "u".into(),
                tenant: None,
                roles: vec![],
                scopes: vec![],
                session: None,
                token_id: None,
                issued_at: None,
                expires_at: Some(exp),
                method: AuthMethod::Jwt { issuer: "i".into() },
                claims: Arc::default(),
            }),
            issuer: "i".into(),
            fingerprint: 1,
            kid: None,
            expires_at: exp,
        }
    }

    #[test]
    fn an_entry_serves_until_exp_and_while_valid() {
        let c = cache(100);
        let h = hash("token");
        c.insert(h, entry(100), 0);
        assert!(c.get(&h, 99, |_| true).is_some());
        assert!(c.get(&h, 100, |_| true).is_none(), "never past exp");
        c.insert(h, entry(100), 0);
        assert!(
            c.get(&h, 50, |_| false).is_none(),
            "an invalid entry is dropped"
        );
        assert!(c.get(&h, 50, |_| true).is_none());
        assert_eq!(c.size.get(), 0);
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let c = cache(64);
        for i in 0..10_000 {
            c.insert(hash(&i.to_string()), entry(1000), 0);
        }
        assert!(c.size.get() <= 64, "{}", c.size.get());
        let off = cache(0);
        off.insert(hash("t"), entry(1000), 0);
        assert!(off.get(&hash("t"), 1, |_| true).is_none());
    }
}
