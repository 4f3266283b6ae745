//! A verified set of public keys: a JWKS document parsed strictly, or an HMAC secret. A document
//! that is malformed, holds a key of a type ward does not verify with, publishes private key
//! material, repeats a `kid` or holds a weak RSA key is refused as a whole: the caller keeps the
//! last good set. Pure: no I/O.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys one document may hold.
pub const MAX_KEYS: usize = 64;
/// Smallest RSA modulus accepted (bits).
const MIN_RSA_BITS: usize = 2048;

/// One verification key and the algorithms it may verify.
pub struct Key {
    pub kid: Option<String>,
    /// Algorithms this key verifies: its family's, narrowed by the JWK's `alg` when present.
    pub algorithms: Vec<Algorithm>,
    verifier: Verifier,
}

/// How a key checks a signature. Public keys verify with ring (the same library as TLS, with
/// assembly for P-256, P-384, Ed25519 and RSA: about 5x fewer instructions than pure Rust for
/// ES256); an HMAC secret goes through jsonwebtoken.
enum Verifier {
    /// A P-256 or P-384 point, uncompressed (`04 || x || y`), or an Ed25519 key: ring's public
    /// key encodings for those algorithms.
    Point(Vec<u8>),
    /// RSA modulus and exponent, big-endian, without leading zero bytes (ring refuses them).
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Hmac(DecodingKey),
}

impl Key {
    /// Whether `signature` (base64url, as in the token) signs `message` under this key for `alg`
    /// (one of `algorithms`). Fixed-size signatures only: a DER-encoded ECDSA signature fails.
    pub fn verifies(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        use ring::signature as sig;
        if !self.algorithms.contains(&alg) {
            return false;
        }
        let point = |v: &'static dyn sig::VerificationAlgorithm, key: &[u8], s: &[u8]| {
            sig::UnparsedPublicKey::new(v, key)
                .verify(message, s)
                .is_ok()
        };
        let rsa = |p: &'static sig::RsaParameters, n: &[u8], e: &[u8], s: &[u8]| {
            sig::RsaPublicKeyComponents { n, e }
                .verify(p, message, s)
                .is_ok()
        };
        if let Verifier::Hmac(key) = &self.verifier {
            return jsonwebtoken::crypto::verify(signature, message, key, alg).unwrap_or(false);
        }
        let Ok(s) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        match (&self.verifier, alg) {
            (Verifier::Point(k), Algorithm::ES256) => point(&sig::ECDSA_P256_SHA256_FIXED, k, &s),
            (Verifier::Point(k), Algorithm::ES384) => point(&sig::ECDSA_P384_SHA384_FIXED, k, &s),
            (Verifier::Point(k), Algorithm::EdDSA) => point(&sig::ED25519, k, &s),
            (Verifier::Rsa { n, e }, Algorithm::RS256) => {
                rsa(&sig::RSA_PKCS1_2048_8192_SHA256, n, e, &s)
            }
            (Verifier::Rsa { n, e }, Algorithm::RS384) => {
                rsa(&sig::RSA_PKCS1_2048_8192_SHA384, n, e, &s)
            }
            (Verifier::Rsa { n, e }, Algorithm::RS512) => {
                rsa(&sig::RSA_PKCS1_2048_8192_SHA512, n, e, &s)
            }
            (Verifier::Rsa { n, e }, Algorithm::PS256) => {
                rsa(&sig::RSA_PSS_2048_8192_SHA256, n, e, &s)
            }
            (Verifier::Rsa { n, e }, Algorithm::PS384) => {
                rsa(&sig::RSA_PSS_2048_8192_SHA384, n, e, &s)
            }
            (Verifier::Rsa { n, e }, Algorithm::PS512) => {
                rsa(&sig::RSA_PSS_2048_8192_SHA512, n, e, &s)
            }
            _ => false,
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The keys of one source, replaced whole.
#[derive(Debug, Default)]
pub struct KeySet {
    /// foldhash (seeded per process), not SipHash: looked up on every authenticated request.
    by_kid: foldhash::HashMap<String, Key>,
    /// Keys published without a `kid`: usable only by tokens without one.
    anonymous: Vec<Key>,
}

/// Why a key set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("the JWKS document is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the JWKS document is not a JSON object with a `keys` array")]
    NotAJwks,
    #[error("the JWKS document holds no key")]
    Empty,
    #[error("the JWKS document holds more than {MAX_KEYS} keys")]
    TooManyKeys,
    #[error("keys[{index}]: {reason}")]
    BadKey { index: usize, reason: String },
    #[error("keys[{index}]: kid `{kid}` appears twice")]
    DuplicateKid { index: usize, kid: String },
    #[error("the HMAC secret is shorter than 32 bytes")]
    WeakSecret,
}

impl KeySet {
    /// Parses a JWKS document (RFC 7517). Every key must be usable, or nothing is.
    pub fn from_jwks(bytes: &[u8]) -> Result<KeySet, KeySetError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(KeySetError::TooLarge);
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|_| KeySetError::NotAJwks)?;
        let keys = doc
            .as_object()
            .and_then(|o| o.get("keys"))
            .and_then(Value::as_array)
            .ok_or(KeySetError::NotAJwks)?;
        if keys.is_empty() {
            return Err(KeySetError::Empty);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeySetError::TooManyKeys);
        }
        let mut set = KeySet::default();
        for (index, jwk) in keys.iter().enumerate() {
            let key = parse_jwk(jwk).map_err(|reason| KeySetError::BadKey { index, reason })?;
            match key.kid.clone() {
                Some(kid) => {
                    if set.by_kid.insert(kid.clone(), key).is_some() {
                        return Err(KeySetError::DuplicateKid { index, kid });
                    }
                }
                None => set.anonymous.push(key),
            }
        }
        Ok(set)
    }

    /// A one-key set for an HMAC secret of at least 32 bytes.
    pub fn from_hmac_secret(
        secret: &[u8],
        algorithms: &[Algorithm],
    ) -> Result<KeySet, KeySetError> {
        if secret.len() < 32 {
            return Err(KeySetError::WeakSecret);
        }
        Ok(KeySet {
            by_kid: Default::default(),
            anonymous: vec![Key {
                kid: None,
                algorithms: algorithms.to_vec(),
                verifier: Verifier::Hmac(DecodingKey::from_secret(secret)),
            }],
        })
    }

    /// The key a token names, if it may verify `alg`. A token without a `kid` gets a key only when
    /// exactly one key of the set could verify it (no trial of several keys).
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self.by_kid.get(kid).filter(|k| k.algorithms.contains(&alg)),
            None => {
                let mut fits = self
                    .anonymous
                    .iter()
                    .chain(self.by_kid.values())
                    .filter(|k| k.algorithms.contains(&alg));
                let first = fits.next()?;
                fits.next().is_none().then_some(first)
            }
        }
    }

    /// Whether a key with this `kid` is still in the set (a cached token's key may be gone).
    pub fn contains(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(kid) => self.by_kid.contains_key(kid),
            None => !self.anonymous.is_empty() || !self.by_kid.is_empty(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `kid`s, sorted (for `/policy` and logs).
    pub fn kids(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }
}

/// Members that only a private key has; a JWKS that publishes them leaks its signer.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

fn parse_jwk(jwk: &Value) -> Result<Key, String> {
    let o = jwk.as_object().ok_or("not a JSON object")?;
    let text = |name: &str| -> Result<Option<&str>, String> {
        match o.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("`{name}` is not a string")),
        }
    };
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| o.contains_key(**m)) {
        return Err(format!("holds private key material (`{m}`)"));
    }
    let kid = text("kid")?;
    if let Some(k) = kid {
        if k.is_empty() || k.len() > 256 {
            return Err("`kid` must be 1 to 256 characters".into());
        }
    }
    if let Some(u) = text("use")? {
        if u != "sig" {
            return Err(format!("`use` is `{u}`, not `sig`"));
        }
    }
    if let Some(ops) = o.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("verify")));
        if !verifies {
            return Err("`key_ops` does not include `verify`".into());
        }
    }
    let kty = text("kty")?.ok_or("no `kty`")?;
    let b64 = |name: &str| -> Result<Vec<u8>, String> {
        let v = text(name)?.ok_or_else(|| format!("no `{name}`"))?;
        URL_SAFE_NO_PAD
            .decode(v)
            .map_err(|_| format!("`{name}` is not base64url without padding"))
    };
    let (family, verifier): (Vec<Algorithm>, Verifier) = match kty {
        "OKP" => match text("crv")? {
            Some("Ed25519") => {
                let x = b64("x")?;
                if x.len() != 32 {
                    return Err("an Ed25519 `x` must be 32 bytes".into());
                }
                (vec![Algorithm::EdDSA], Verifier::Point(x))
            }
            other => return Err(format!("OKP curve {other:?} is not supported (Ed25519 is)")),
        },
        "EC" => {
            let (alg, len) = match text("crv")? {
                Some("P-256") => (Algorithm::ES256, 32),
                Some("P-384") => (Algorithm::ES384, 48),
                other => {
                    return Err(format!(
                        "EC curve {other:?} is not supported (P-256 and P-384 are)"
                    ))
                }
            };
            let (x, y) = (b64("x")?, b64("y")?);
            for (name, v) in [("x", &x), ("y", &y)] {
                if v.len() != len {
                    return Err(format!("`{name}` must be {len} bytes for this curve"));
                }
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (vec![alg], Verifier::Point(point))
        }
        "RSA" => {
            let (n, e) = (b64("n")?, b64("e")?);
            // Significant bits: leading zero bytes do not count, and an empty modulus has none
            // (it must not underflow into a huge size).
            let significant =
                |v: &[u8]| v[v.iter().position(|&b| b != 0).unwrap_or(v.len())..].to_vec();
            let (n, e) = (significant(&n), significant(&e));
            let bits = n
                .first()
                .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus of {bits} bits is too small (at least {MIN_RSA_BITS})"
                ));
            }
            if e.is_empty() {
                return Err("RSA exponent `e` is zero".into());
            }
            let key = Verifier::Rsa { n, e };
            (
                vec![
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ],
                key,
            )
        }
        "oct" => return Err("symmetric (`oct`) keys are never taken from a JWKS".into()),
        other => return Err(format!("key type `{other}` is not supported")),
    };
    let algorithms = match text("alg")? {
        None => family,
        Some(a) => {
            let alg = parse_algorithm(a).ok_or_else(|| format!("`alg` `{a}` is not supported"))?;
            if !family.contains(&alg) {
                return Err(format!("`alg` `{a}` does not fit a `{kty}` key"));
            }
            vec![alg]
        }
    };
    Ok(Key {
        kid: kid.map(str::to_owned),
        algorithms,
        verifier,
    })
}

/// The JOSE name of an algorithm ward verifies; `none` in any spelling is not one.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "EdDSA" => Algorithm::EdDSA,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

/// Whether an algorithm is HMAC (a shared secret, never a published key).
pub fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed_jwk(kid: &str) -> Value {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode([7u8; 32])})
    }

    fn doc(keys: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }

    #[test]
    fn a_good_document_gives_keys_by_kid_and_algorithm() {
        let set = KeySet::from_jwks(&doc(vec![ed_jwk("a"), ed_jwk("b")])).unwrap();
        assert_eq!(set.kids(), ["a", "b"]);
        assert!(set.find(Some("a"), Algorithm::EdDSA).is_some());
        assert!(set.find(Some("a"), Algorithm::ES256).is_none());
        assert!(set.find(Some("c"), Algorithm::EdDSA).is_none());
        // Two keys could verify a kid-less EdDSA token: no guessing.
        assert!(set.find(None, Algorithm::EdDSA).is_none());
    }

    #[test]
    fn one_bad_key_refuses_the_whole_document() {
        let cases: Vec<(Value, &str)> = vec![
            (
                serde_json::json!({"kty": "oct", "k": "c2VjcmV0"}),
                "symmetric",
            ),
            (
                serde_json::json!({"kty": "OKP", "crv": "X25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32])}),
                "not supported",
            ),
            (
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "d": "x"}),
                "private key material",
            ),
            (
                serde_json::json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"}),
                "too small",
            ),
            (
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "alg": "ES256"}),
                "does not fit",
            ),
            (
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "use": "enc"}),
                "not `sig`",
            ),
            (serde_json::json!({"kty": "XYZ"}), "not supported"),
        ];
        for (bad, want) in cases {
            let e = KeySet::from_jwks(&doc(vec![ed_jwk("good"), bad.clone()])).unwrap_err();
            assert!(e.to_string().contains(want), "{bad}: {e}");
        }
        assert_eq!(
            KeySet::from_jwks(b"{\"keys\": 1}").unwrap_err(),
            KeySetError::NotAJwks
        );
        assert_eq!(
            KeySet::from_jwks(&doc(vec![])).unwrap_err(),
            KeySetError::Empty
        );
        assert!(matches!(
            KeySet::from_jwks(&doc(vec![ed_jwk("a"), ed_jwk("a")])).unwrap_err(),
            KeySetError::DuplicateKid { .. }
        ));
    }

    /// Found by the `jwks` fuzz target: an empty modulus underflowed the bit count (a panic in
    /// debug builds; in release a huge size that passed the minimum, and the key was accepted).
    #[test]
    fn an_empty_or_zero_padded_rsa_modulus_is_measured_by_its_significant_bits() {
        let e =
            KeySet::from_jwks(br#"{"keys": [{"kty": "RSA", "kid": "r", "n": "", "e": "AQAB"}]}"#)
                .unwrap_err();
        assert!(
            e.to_string().contains("RSA modulus of 0 bits is too small"),
            "{e}"
        );
        // 258 bytes, of which 2000 bits are significant (the old count said 2056).
        let mut padded = vec![0u8; 8];
        padded.extend([0xffu8; 250]);
        let jwk =
            serde_json::json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(padded), "e": "AQAB"});
        let e = KeySet::from_jwks(&doc(vec![jwk])).unwrap_err();
        assert!(
            e.to_string()
                .contains("RSA modulus of 2000 bits is too small"),
            "{e}"
        );
    }

    #[test]
    fn none_is_no_algorithm_in_any_spelling() {
        for n in ["none", "None", "NONE", "", "nOnE", "HS256 "] {
            assert_eq!(parse_algorithm(n), None, "{n:?}");
        }
    }

    #[test]
    fn short_hmac_secrets_are_refused() {
        assert_eq!(
            KeySet::from_hmac_secret(b"short", &[Algorithm::HS256]).unwrap_err(),
            KeySetError::WeakSecret
        );
        let set = KeySet::from_hmac_secret(&[1u8; 32], &[Algorithm::HS256]).unwrap();
        assert!(set.find(None, Algorithm::HS256).is_some());
        assert!(set.find(None, Algorithm::HS384).is_none());
    }
}
