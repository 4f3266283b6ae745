//! The verified-token cache: a hot token costs a keyed hash and a map lookup instead of a
//! signature check. Keyed by a 128-bit SipHash-2-4 of the token under a key drawn at random when
//! the process starts, never by the token itself. SipHash is a pseudorandom function: without the
//! key nobody can make a token whose hash equals a cached one's (an attacker's chance per try is
//! about entries / 2^128), so the hash stands for the token as safely as a SHA-256 did, at an
//! eighth of the instructions (callgrind, a 330-byte ES256 token: SHA-256 10,883, SipHash 1,379).
//! The key never leaves the process, so the hashes mean nothing to anyone else. An entry serves
//! only while:
//! the token has not expired (`exp`, no leeway: never longer than the token's own life), the
//! issuer's rules are the ones it was verified under (a policy change invalidates), and the key
//! that verified it is still in the issuer's key set (a removed key evicts its tokens).
//! Bounded: at most `max_entries`; expired entries go first when a shard is full.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use siphasher::sip128::{Hasher128, SipHasher24};

use crate::identity::Principal;

const SHARDS: usize = 32;

/// A token's keyed hash (see the module docs).
pub type TokenHash = u128;

/// The map's own hasher: the key is already a keyed pseudorandom value, so hashing it again
/// (SipHash-1-3, the std default) would add nothing but instructions.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; this keeps any other input well mixed enough for a map.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).rotate_left(29);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type Shard = HashMap<TokenHash, Entry, BuildHasherDefault<Prehashed>>;

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
    /// This process's SipHash key.
    key: (u64, u64),
    shards: Vec<Mutex<Shard>>,
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
            key: (rand::random(), rand::random()),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
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

    /// The cache key of `token`.
    pub fn hash(&self, token: &str) -> TokenHash {
        let mut h = SipHasher24::new_with_keys(self.key.0, self.key.1);
        h.write(token.as_bytes());
        h.finish128().into()
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

    fn shard(&self, hash: &TokenHash) -> &Mutex<Shard> {
        // The high half picks the shard, the low half the bucket: independent bits for each.
        &self.shards[(hash >> 64) as usize % SHARDS]
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
        let h = c.hash("token");
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

    /// The key is drawn per cache: the same token hashes differently in another process, and
    /// two tokens that differ in one byte do not share a hash.
    #[test]
    fn the_hash_is_keyed_per_cache() {
        let (a, b) = (cache(10), cache(10));
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.sig";
        assert_eq!(a.hash(token), a.hash(token));
        assert_ne!(
            a.hash(token),
            b.hash(token),
            "a second key gives another hash"
        );
        assert_ne!(a.hash(token), a.hash(&token.replace("sig", "sih")));
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let c = cache(64);
        for i in 0..10_000 {
            c.insert(c.hash(&i.to_string()), entry(1000), 0);
        }
        assert!(c.size.get() <= 64, "{}", c.size.get());
        let off = cache(0);
        off.insert(off.hash("t"), entry(1000), 0);
        assert!(off.get(&off.hash("t"), 1, |_| true).is_none());
    }
}
