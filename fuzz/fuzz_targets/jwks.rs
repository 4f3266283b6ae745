//! JWKS parsing (`ward::identity::keyset::KeySet::from_jwks`) on arbitrary bytes.
//!
//! It must never panic; an accepted document is a JSON object whose `keys` array holds 1 to
//! MAX_KEYS keys, none with private key material, no RSA modulus under 2048 significant bits, no
//! `kid` twice, and every key in the set can be found by its `kid`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use ward::identity::keyset::{KeySet, MAX_KEYS};

const PRIVATE: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

fuzz_target!(|data: &[u8]| {
    let Ok(set) = KeySet::from_jwks(data) else {
        return;
    };
    let doc: Value = serde_json::from_slice(data).expect("an accepted JWKS is JSON");
    let keys = doc["keys"].as_array().expect("an accepted JWKS has a keys array");
    assert!(!keys.is_empty() && keys.len() <= MAX_KEYS);
    assert_eq!(set.len(), keys.len());
    let mut kids = Vec::new();
    for k in keys {
        let o = k.as_object().expect("every key is an object");
        for m in PRIVATE {
            assert!(!o.contains_key(m), "a key with private member `{m}` accepted");
        }
        if o.get("kty").and_then(Value::as_str) == Some("RSA") {
            use base64::Engine;
            let n = o["n"].as_str().expect("an RSA key has n");
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(n).unwrap_or_default();
            let start = n.iter().position(|&b| b != 0).unwrap_or(n.len());
            let bits = n[start..].first().map_or(0, |b| (n.len() - start) * 8 - b.leading_zeros() as usize);
            assert!(bits >= 2048, "an RSA key of {bits} significant bits accepted");
        }
        if let Some(kid) = o.get("kid").and_then(Value::as_str) {
            assert!(set.contains(Some(kid)));
            kids.push(kid);
        }
    }
    let n = kids.len();
    kids.sort_unstable();
    kids.dedup();
    assert_eq!(kids.len(), n, "a kid twice");
    assert_eq!(set.kids(), kids);
});
