//! JWS compact parsing and verification (`ward::identity::jwt::parse` and `verify`) with a fixed
//! key set: an HMAC secret, and an Ed25519 key from a JWKS document.
//!
//! Two kinds of input: a raw token (anything at all), and a header and claims of the input's
//! choosing signed with a real key, so the claim checks are reached with a good signature. A
//! token is accepted only if its `alg` is on the allow-list and its key verifies it, it has not
//! expired (within leeway), its `nbf` and `iat` are not in the future, `iss` is the issuer and
//! `aud` holds an audience; a raw token is never accepted (it cannot carry a good signature).

#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use ward::identity::jwt::{parse, verify, ClaimNames, Rules, TokenFault};
use ward::identity::keyset::KeySet;
use ward_fuzz::{fixture, sign_eddsa, sign_hs256, NOW};

#[derive(Debug, Arbitrary)]
enum Input {
    Raw(String),
    Signed {
        eddsa: bool,
        header: String,
        claims: String,
    },
    /// Well-formed JSON of the input's choosing around the claims that matter.
    Shaped {
        eddsa: bool,
        alg: u8,
        kid: Option<String>,
        exp: Option<i64>,
        nbf: Option<i64>,
        iat: Option<f64>,
        iss: u8,
        aud: Vec<u8>,
        sub: Option<String>,
        extra: Vec<(String, String)>,
    },
}

fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(|| Rules {
        name: Arc::from("fuzz"),
        issuer: "https://issuer.fuzz".into(),
        audiences: vec!["api".into(), "other".into()],
        algorithms: vec![Algorithm::HS256, Algorithm::EdDSA],
        leeway: 30,
        required_claims: vec![],
        max_token_bytes: 8192,
        typ: None,
        claims: ClaimNames::default(),
    })
}

fn hmac_keys() -> &'static KeySet {
    static K: OnceLock<KeySet> = OnceLock::new();
    K.get_or_init(|| {
        KeySet::from_hmac_secret(ward_fuzz::HMAC_SECRET.as_bytes(), &[Algorithm::HS256]).unwrap()
    })
}

fn jwks_keys() -> &'static KeySet {
    static K: OnceLock<KeySet> = OnceLock::new();
    K.get_or_init(|| KeySet::from_jwks(fixture().jwks.as_bytes()).expect("the fixture's JWKS"))
}

fuzz_target!(|input: Input| {
    let r = rules();
    let (token, signed, eddsa) = match input {
        Input::Raw(t) => (t, false, false),
        Input::Signed { eddsa, header, claims } => {
            let t = if eddsa { sign_eddsa(&header, &claims) } else { sign_hs256(&header, &claims) };
            (t, true, eddsa)
        }
        Input::Shaped { eddsa, alg, kid, exp, nbf, iat, iss, aud, sub, extra } => {
            let alg = ["HS256", "EdDSA", "none", "RS256", "hs256", "ES256"][usize::from(alg) % 6];
            let mut header = serde_json::json!({ "alg": alg, "typ": "JWT" });
            if let Some(k) = kid {
                header["kid"] = Value::String(k);
            }
            let mut claims = serde_json::Map::new();
            for (k, v) in extra {
                claims.insert(k, Value::String(v));
            }
            let issuers = ["https://issuer.fuzz", "https://issuer.fuzz/", "", "https://other"];
            claims.insert("iss".into(), issuers[usize::from(iss) % 4].into());
            let auds = ["api", "other", "API", "x"];
            let aud: Vec<Value> = aud.iter().map(|a| auds[usize::from(*a) % 4].into()).collect();
            claims.insert("aud".into(), if aud.len() == 1 { aud[0].clone() } else { aud.into() });
            if let Some(e) = exp {
                claims.insert("exp".into(), (NOW + e % 100).into());
            }
            if let Some(n) = nbf {
                claims.insert("nbf".into(), (NOW + n % 100).into());
            }
            if let Some(i) = iat {
                claims.insert("iat".into(), serde_json::Number::from_f64(i).map_or(Value::Null, Value::Number));
            }
            if let Some(s) = sub {
                claims.insert("sub".into(), s.into());
            }
            let (h, c) = (header.to_string(), Value::Object(claims).to_string());
            let t = if eddsa { sign_eddsa(&h, &c) } else { sign_hs256(&h, &c) };
            (t, true, eddsa)
        }
    };
    let Ok(unverified) = parse(&token, r) else {
        return;
    };
    assert!(r.algorithms.contains(&unverified.alg));
    assert!(token.len() <= r.max_token_bytes);
    assert_eq!(token.split('.').count(), 3);
    for keys in [hmac_keys(), jwks_keys()] {
        let verdict = verify(&unverified, r, keys, NOW);
        let Ok(p) = verdict else {
            let signer = if eddsa { Algorithm::EdDSA } else { Algorithm::HS256 };
            if verdict == Err(TokenFault::BadSignature) && signed && unverified.alg == signer {
                assert!(keys_differ(eddsa, keys), "a good signature refused");
            }
            continue;
        };
        assert!(signed, "a token nobody signed was accepted: {token}");
        assert_eq!(eddsa, std::ptr::eq(keys, jwks_keys()), "verified by the other key");
        let claims = payload(&token);
        let exp = claims.get("exp").and_then(Value::as_f64).expect("exp is required");
        assert!(exp > (NOW - 30) as f64, "an expired token accepted");
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
            assert!(nbf <= (NOW + 30) as f64 + 1.0, "a token not yet valid accepted");
        }
        if let Some(iat) = claims.get("iat").and_then(Value::as_f64) {
            assert!(iat <= (NOW + 30) as f64 + 1.0, "a token issued in the future accepted");
        }
        assert_eq!(claims.get("iss").and_then(Value::as_str), Some("https://issuer.fuzz"));
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => r.audiences.contains(a),
            Some(Value::Array(v)) => v.iter().any(|a| a.as_str().is_some_and(|a| r.audiences.iter().any(|w| w == a))),
            _ => false,
        };
        assert!(aud_ok, "a token for another audience accepted");
        assert!(!p.subject.is_empty());
        assert_eq!(claims.get("sub").and_then(Value::as_str), Some(p.subject.as_str()));
    }
});

/// Whether `keys` is not the set that holds the signing key.
fn keys_differ(eddsa: bool, keys: &KeySet) -> bool {
    eddsa != std::ptr::eq(keys, jwks_keys())
}

fn payload(token: &str) -> serde_json::Map<String, Value> {
    use base64::Engine;
    let p = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).unwrap();
    match serde_json::from_slice(&bytes).unwrap() {
        Value::Object(m) => m,
        _ => unreachable!("verify accepted a payload that is not an object"),
    }
}
