//! Static API keys for machine clients, a second way in beside JWTs. Keys are stored only as
//! SHA-256 hashes (a key is 256 random bits, so a fast hash is enough: there is nothing to guess),
//! each bound to a tenant, roles and optionally its own rate limit. A presented key is hashed and
//! compared with every stored hash in constant time. Pure: no I/O.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthMethod, Principal};

/// One key: its id (what logs, metrics and limits name), never the key itself.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: Arc<str>,
    pub hash: [u8; 32],
    pub tenant: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    /// The key's own limit: requests per period, counted per key.
    pub rate_limit: Option<(u32, Duration)>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    pub fn principal(&self) -> Principal {
        Principal {
            subject: self.id.to_string(),
            tenant: self.tenant.clone(),
            roles: self.roles.clone(),
            scopes: self.scopes.clone(),
            session: None,
            token_id: None,
            issued_at: None,
            expires_at: None,
            method: AuthMethod::ApiKey {
                id: self.id.clone(),
            },
            claims: Arc::default(),
        }
    }
}

/// The table of keys a policy names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApiKeys {
    pub keys: Vec<ApiKey>,
}

/// Longest key accepted from a request; longer ones are refused before hashing.
pub const MAX_KEY_BYTES: usize = 256;

impl ApiKeys {
    /// The key matching `presented`. Every stored hash is compared, in constant time each.
    pub fn find(&self, presented: &str) -> Option<&ApiKey> {
        if presented.is_empty() || presented.len() > MAX_KEY_BYTES {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.hash.ct_eq(&digest)) {
                found = Some(k);
            }
        }
        found
    }
}

/// `sha256:<64 hex>` → the hash bytes.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    let bytes = hex::decode(hex).ok()?;
    bytes.try_into().ok()
}

/// The stored form of a key: `sha256:<64 hex>`.
pub fn hash_text(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A new random key (`wk_` and 256 bits, base64url) and its stored form.
pub fn generate() -> (String, String) {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = format!("wk_{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash_text(&key);
    (key, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_by_its_hash_only() {
        let (key, hash) = generate();
        let (other, _) = generate();
        let table = ApiKeys {
            keys: vec![ApiKey {
                id: "batch".into(),
                hash: parse_hash(&hash).unwrap(),
                tenant: Some("t1".into()),
                roles: vec!["merchant".into()],
                scopes: vec![],
                rate_limit: None,
            }],
        };
        assert_eq!(&*table.find(&key).unwrap().id, "batch");
        assert!(table.find(&other).is_none());
        assert!(table.find(&hash).is_none(), "the stored hash is not a key");
        assert!(table.find("").is_none());
        let p = table.find(&key).unwrap().principal();
        assert_eq!(p.method.as_str(), "api_key");
        assert_eq!(p.tenant.as_deref(), Some("t1"));
    }

    #[test]
    fn stored_forms_are_checked() {
        assert!(parse_hash("sha256:00").is_none());
        assert!(parse_hash(&format!("md5:{}", "0".repeat(64))).is_none());
        assert!(parse_hash(&format!("sha256:{}", "0".repeat(64))).is_some());
    }
}
