//! Key material: Ed25519 token-signing keys (one active signer, others verify-only, published as
//! JWKS), AES-256-GCM data keys for fields encrypted at rest, and shared secrets read from files.
//!
//! Keys are loaded once at start; anything missing, unreadable, readable by others or looking like a
//! placeholder is a [`KeyError`] naming the setting, so the service fails fast instead of running
//! with weak configuration. This module never logs key material.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{setting}: cannot read {path}: {source}")]
    Read {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{setting}: {path} is readable by group or others; run chmod 600 on it")]
    Permissions {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("{setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A `kid=path` pair from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub kid: String,
    pub path: PathBuf,
}

impl std::str::FromStr for KeyRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kid, path) = s.split_once('=').ok_or("expected KID=PATH")?;
        check_kid(kid)?;
        Ok(KeyRef {
            kid: kid.to_string(),
            path: PathBuf::from(path),
        })
    }
}

fn check_kid(kid: &str) -> Result<(), String> {
    if kid.is_empty()
        || kid.len() > 64
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "key id {kid:?} must be 1 to 64 of A-Z a-z 0-9 - _ ."
        ));
    }
    Ok(())
}

/// Read a secret file, refusing files that other users could read.
pub fn read_secret_file(setting: &'static str, path: &Path) -> Result<Vec<u8>, KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
            setting,
            path: path.to_path_buf(),
            source,
        })?;
        if !private_enough(
            std::os::unix::fs::MetadataExt::uid(&meta),
            meta.permissions().mode(),
        ) {
            return Err(KeyError::Permissions {
                setting,
                path: path.to_path_buf(),
            });
        }
    }
    std::fs::read(path).map_err(|source| KeyError::Read {
        setting,
        path: path.to_path_buf(),
        source,
    })
}

/// Whether a key file's owner and mode keep it private: nothing for others, and nothing for the
/// group either, except read access when root owns the file. That exception is how Kubernetes
/// mounts a Secret for a non-root process (owner root, group the pod's `fsGroup`, mode 0440, whatever
/// `defaultMode` says), and the rule PostgreSQL applies to its own server key.
#[cfg(unix)]
fn private_enough(uid: u32, mode: u32) -> bool {
    mode & 0o077 == 0 || (uid == 0 && mode & 0o037 == 0)
}

/// Write a file readable only by its owner.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    file.write_all(contents)
        .and_then(|_| file.sync_all())
        .map_err(|source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        })
}

const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "change-me",
    "placeholder",
    "example",
    "secret",
    "password",
    "xxxx",
    "todo",
];

/// A shared secret (webhook HMAC key, internal token). Refuses short or placeholder-looking values.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn parse(setting: &'static str, raw: &[u8]) -> Result<Self, KeyError> {
        let trimmed = String::from_utf8_lossy(raw).trim().to_string();
        if trimmed.len() < 32 {
            return Err(KeyError::Invalid {
                setting,
                reason: "secret must be at least 32 characters of random data".into(),
            });
        }
        let lower = trimmed.to_ascii_lowercase();
        if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
            return Err(KeyError::Invalid {
                setting,
                reason: "secret looks like a placeholder; generate a random one".into(),
            });
        }
        Ok(Secret(trimmed.into_bytes()))
    }

    pub fn from_file(setting: &'static str, path: &Path) -> Result<Self, KeyError> {
        Self::parse(setting, &read_secret_file(setting, path)?)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// A fresh random secret, URL-safe base64 of 32 bytes.
    pub fn generate_text() -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

/// Token keys: the active signer plus every key accepted for verification (including the signer).
#[derive(Clone)]
pub struct SigningKeys {
    active_kid: String,
    encoding: EncodingKey,
    verifying: HashMap<String, (DecodingKey, [u8; 32])>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("active_kid", &self.active_kid)
            .field("verify_kids", &self.verifying.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SigningKeys {
    /// Build from the active private key PEM and any number of verify-only public (or private) PEMs.
    pub fn from_pems(
        active_kid: &str,
        active_pem: &str,
        verify: &[(String, String)],
    ) -> Result<Self, KeyError> {
        const SETTING: &str = "--signing-key / WARD_PAYMENTS_SIGNING_KEY";
        check_kid(active_kid).map_err(|reason| KeyError::Invalid {
            setting: SETTING,
            reason,
        })?;
        let signing = SigningKey::from_pkcs8_pem(active_pem).map_err(|e| KeyError::Invalid {
            setting: SETTING,
            reason: format!("key {active_kid}: not an Ed25519 PKCS#8 private key PEM ({e})"),
        })?;
        let der = signing.to_pkcs8_der().map_err(|e| KeyError::Invalid {
            setting: SETTING,
            reason: format!("key {active_kid}: {e}"),
        })?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let mut verifying = HashMap::new();
        let public = signing.verifying_key().to_bytes();
        verifying.insert(active_kid.to_string(), (decoding_key(&public)?, public));
        for (kid, pem) in verify {
            const VSETTING: &str = "--verify-key / WARD_PAYMENTS_VERIFY_KEYS";
            check_kid(kid).map_err(|reason| KeyError::Invalid {
                setting: VSETTING,
                reason,
            })?;
            let key = VerifyingKey::from_public_key_pem(pem)
                .or_else(|_| SigningKey::from_pkcs8_pem(pem).map(|k| k.verifying_key()))
                .map_err(|e| KeyError::Invalid {
                    setting: VSETTING,
                    reason: format!("key {kid}: not an Ed25519 PEM ({e})"),
                })?;
            if verifying.contains_key(kid) {
                return Err(KeyError::Invalid {
                    setting: VSETTING,
                    reason: format!("key id {kid} is used twice"),
                });
            }
            let bytes = key.to_bytes();
            verifying.insert(kid.clone(), (decoding_key(&bytes)?, bytes));
        }
        Ok(SigningKeys {
            active_kid: active_kid.to_string(),
            encoding,
            verifying,
        })
    }

    pub fn active_kid(&self) -> &str {
        &self.active_kid
    }

    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    pub fn decoding_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.verifying.get(kid).map(|(k, _)| k)
    }

    /// The public keys as a JWK Set (RFC 7517, OKP keys per RFC 8037), sorted by kid.
    pub fn jwks(&self) -> serde_json::Value {
        let mut kids: Vec<&String> = self.verifying.keys().collect();
        kids.sort();
        let keys: Vec<serde_json::Value> = kids
            .into_iter()
            .map(|kid| {
                let (_, x) = &self.verifying[kid];
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(x),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

fn decoding_key(public: &[u8; 32]) -> Result<DecodingKey, KeyError> {
    DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(public)).map_err(|e| {
        KeyError::Invalid {
            setting: "signing keys",
            reason: e.to_string(),
        }
    })
}

/// A freshly generated Ed25519 keypair as PEM text (private PKCS#8, public SPKI).
pub struct GeneratedKeypair {
    pub private_pem: String,
    pub public_pem: String,
}

pub fn generate_signing_keypair() -> GeneratedKeypair {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let private_pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("a fresh key encodes")
        .to_string();
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("a fresh key encodes");
    GeneratedKeypair {
        private_pem,
        public_pem,
    }
}

/// Write `DIR/KID.private.pem` (mode 600) and `DIR/KID.public.pem`. Returns both paths.
pub fn write_signing_keypair(dir: &Path, kid: &str) -> Result<(PathBuf, PathBuf), KeyError> {
    check_kid(kid).map_err(|reason| KeyError::Invalid {
        setting: "--kid",
        reason,
    })?;
    let pair = generate_signing_keypair();
    let private = dir.join(format!("{kid}.private.pem"));
    let public = dir.join(format!("{kid}.public.pem"));
    write_private_file(&private, pair.private_pem.as_bytes())?;
    std::fs::write(&public, pair.public_pem.as_bytes()).map_err(|source| KeyError::Write {
        path: public.clone(),
        source,
    })?;
    Ok((private, public))
}

/// Write `DIR/KID.datakey` (mode 600): base64 of 32 random bytes for AES-256-GCM.
pub fn write_data_key(dir: &Path, kid: &str) -> Result<PathBuf, KeyError> {
    check_kid(kid).map_err(|reason| KeyError::Invalid {
        setting: "--kid",
        reason,
    })?;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let path = dir.join(format!("{kid}.datakey"));
    write_private_file(&path, STANDARD.encode(bytes).as_bytes())?;
    Ok(path)
}

/// Field-encryption keys: new data is sealed with the active key, old data opens with the key id
/// stored beside it, so keys rotate without re-encrypting everything at once.
#[derive(Clone)]
pub struct DataKeys {
    active: String,
    keys: HashMap<String, Aes256Gcm>,
    /// Keyed fingerprint for request bodies that contain personal data (idempotency comparison),
    /// derived from the active key so a stored fingerprint cannot be brute-forced offline.
    mac_key: [u8; 32],
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys")
            .field("active", &self.active)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("unknown data key id {0}")]
    UnknownKey(String),
    #[error("ciphertext does not authenticate")]
    Corrupt,
}

impl DataKeys {
    /// The first key is the active one.
    pub fn from_raw(keys: &[(String, Vec<u8>)]) -> Result<Self, KeyError> {
        const SETTING: &str = "--data-key / WARD_PAYMENTS_DATA_KEYS";
        let Some((active, _)) = keys.first() else {
            return Err(KeyError::Invalid {
                setting: SETTING,
                reason: "at least one data key is required (generate one with `ward keys generate --kind data`)".into(),
            });
        };
        let mut map = HashMap::new();
        let mut mac_key = [0u8; 32];
        for (kid, raw) in keys {
            check_kid(kid).map_err(|reason| KeyError::Invalid {
                setting: SETTING,
                reason,
            })?;
            let text = String::from_utf8_lossy(raw);
            let bytes = STANDARD
                .decode(text.trim())
                .map_err(|_| KeyError::Invalid {
                    setting: SETTING,
                    reason: format!("key {kid}: not base64"),
                })?;
            if bytes.len() != 32 {
                return Err(KeyError::Invalid {
                    setting: SETTING,
                    reason: format!("key {kid}: must be 32 bytes, found {}", bytes.len()),
                });
            }
            if bytes.iter().all(|b| *b == bytes[0]) {
                return Err(KeyError::Invalid {
                    setting: SETTING,
                    reason: format!("key {kid}: looks like a placeholder (all bytes equal)"),
                });
            }
            if kid == active {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                h.update(b"ward-payments request fingerprint v1");
                h.update(&bytes);
                mac_key = h.finalize().into();
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes).expect("length checked above");
            map.insert(kid.clone(), cipher);
        }
        Ok(DataKeys {
            active: active.clone(),
            keys: map,
            mac_key,
        })
    }

    pub fn from_files(refs: &[KeyRef]) -> Result<Self, KeyError> {
        let mut raw = Vec::new();
        for r in refs {
            raw.push((
                r.kid.clone(),
                read_secret_file("--data-key / WARD_PAYMENTS_DATA_KEYS", &r.path)?,
            ));
        }
        Self::from_raw(&raw)
    }

    /// HMAC-SHA256 fingerprint of `data`, hex encoded.
    pub fn fingerprint(&self, data: &[u8]) -> String {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.mac_key)
            .expect("HMAC accepts any key length");
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Encrypt with the active key; `aad` binds the ciphertext to its row. Output is nonce || ciphertext.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> (String, Vec<u8>) {
        let cipher = &self.keys[&self.active];
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of a short field cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        (self.active.clone(), out)
    }

    pub fn open(&self, kid: &str, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let cipher = self
            .keys
            .get(kid)
            .ok_or_else(|| SealError::UnknownKey(kid.to_string()))?;
        if sealed.len() < 12 {
            return Err(SealError::Corrupt);
        }
        let (nonce, ct) = sealed.split_at(12);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| SealError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_must_be_private_except_root_owned_group_read() {
        assert!(private_enough(1000, 0o100600));
        assert!(private_enough(1000, 0o100400));
        assert!(
            !private_enough(1000, 0o100640),
            "group-readable, not root's"
        );
        assert!(!private_enough(1000, 0o100604));
        // a Kubernetes Secret volume with fsGroup: root-owned, group-readable
        assert!(private_enough(0, 0o100440));
        assert!(private_enough(0, 0o100640));
        assert!(!private_enough(0, 0o100660), "group-writable");
        assert!(!private_enough(0, 0o100444), "world-readable");
        assert!(!private_enough(0, 0o100644));
    }

    fn random_key() -> Vec<u8> {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        STANDARD.encode(b).into_bytes()
    }

    #[test]
    fn sealed_data_opens_after_rotation_with_its_old_key() {
        let old = DataKeys::from_raw(&[("k1".into(), random_key())]).unwrap();
        let k1 = old.keys["k1"].clone();
        let (kid, sealed) = old.seal(b"DE89370400440532013000", b"row-1");
        let mut rotated = DataKeys::from_raw(&[("k2".into(), random_key())]).unwrap();
        rotated.keys.insert("k1".into(), k1);
        assert_eq!(
            rotated.open(&kid, &sealed, b"row-1").unwrap(),
            b"DE89370400440532013000"
        );
        assert!(
            rotated.open(&kid, &sealed, b"row-2").is_err(),
            "aad binds the row"
        );
        assert_eq!(rotated.seal(b"x", b"").0, "k2");
    }

    #[test]
    fn placeholder_secrets_are_refused() {
        assert!(Secret::parse("s", b"changeme").is_err());
        assert!(Secret::parse("s", b"this-is-my-placeholder-value-0123456789").is_err());
        assert!(Secret::parse("s", Secret::generate_text().as_bytes()).is_ok());
        assert!(
            DataKeys::from_raw(&[("k".into(), STANDARD.encode([7u8; 32]).into_bytes())]).is_err()
        );
    }

    #[test]
    fn jwks_lists_signer_and_verify_only_keys() {
        let a = generate_signing_keypair();
        let b = generate_signing_keypair();
        let keys =
            SigningKeys::from_pems("a", &a.private_pem, &[("b".into(), b.public_pem)]).unwrap();
        let jwks = keys.jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, ["a", "b"]);
        assert!(keys.decoding_key("b").is_some());
    }
}
