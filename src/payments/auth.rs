//! Credentials and tokens: argon2id password hashes, EdDSA access tokens, opaque refresh tokens.
//!
//! The service verifies its own access tokens on every protected route and never trusts identity
//! headers from outside. Refresh tokens are random 256-bit values; only their SHA-256 is stored.
//! This module does no I/O: the store keeps sessions, the API layer decides what to do.

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm as ArgonAlgorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, Header, Validation};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::keys::SigningKeys;
use crate::identity::{AccessClaims, Principal, Role};

/// argon2id with the OWASP Password Storage Cheat Sheet minimum: m = 19 MiB, t = 2, p = 1.
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("static argon2 parameters are valid");
    Argon2::new(ArgonAlgorithm::Argon2id, Version::V0x13, params)
}

/// Hash a password (CPU-heavy: call from `spawn_blocking`).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with valid parameters cannot fail")
        .to_string()
}

/// Verify a password against a PHC string (CPU-heavy: call from `spawn_blocking`).
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A random password for bootstrap and demo users: 24 URL-safe characters (144 bits).
pub fn generate_password() -> String {
    let mut bytes = [0u8; 18];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new refresh token and the hash under which it is stored.
pub fn new_refresh_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = format!("wrt_{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = refresh_token_hash(&token);
    (token, hash)
}

pub fn refresh_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The caller of a protected payments route: a verified [`Principal`] of this service's own
/// issuer, narrowed to what the service requires of it (a tenant, one known role, a session).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub tenant_id: String,
    pub role: Role,
    pub session_id: String,
}

impl Caller {
    /// `None` when the principal lacks a tenant, a session or exactly one known role: such a
    /// principal did not come from this service's tokens.
    pub fn from_principal(p: Principal) -> Option<Caller> {
        let [role] = p.roles.as_slice() else {
            return None;
        };
        Some(Caller {
            role: Role::parse(role)?,
            user_id: p.subject,
            tenant_id: p.tenant?,
            session_id: p.session?,
        })
    }
}

/// Issues and verifies access tokens with the configured keys.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    pub keys: SigningKeys,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token has no kid or an unknown kid")]
    UnknownKey,
    #[error("token claims do not describe a caller of this service")]
    NotACaller,
    #[error("token rejected: {0}")]
    Rejected(#[from] jsonwebtoken::errors::Error),
}

impl TokenIssuer {
    pub fn issue(&self, user_id: &str, tenant_id: &str, role: Role, session_id: &str) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id.to_string(),
            tenant: tenant_id.to_string(),
            role,
            sid: session_id.to_string(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.active_kid().to_string());
        jsonwebtoken::encode(&header, &claims, self.keys.encoding_key())
            .expect("signing with a loaded Ed25519 key cannot fail")
    }

    /// Check signature (by `kid`), algorithm, issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.keys.decoding_key(&kid).ok_or(TokenError::UnknownKey)?;
        // Only EdDSA: the algorithm is fixed here, never taken from the token.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &validation)?;
        Caller::from_principal(data.claims.into_principal()).ok_or(TokenError::NotACaller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::keys::generate_signing_keypair;

    fn issuer(kid: &str, pem: &str, verify: &[(String, String)]) -> TokenIssuer {
        TokenIssuer {
            keys: SigningKeys::from_pems(kid, pem, verify).unwrap(),
            issuer: "ward-payments".into(),
            audience: "ward".into(),
            access_ttl: Duration::from_secs(900),
        }
    }

    #[test]
    fn tokens_verify_after_the_signer_rotates_to_a_new_key() {
        let old = generate_signing_keypair();
        let new = generate_signing_keypair();
        let before = issuer("k1", &old.private_pem, &[]);
        let token = before.issue("u", "t", Role::Merchant, "s");
        let after = issuer(
            "k2",
            &new.private_pem,
            &[("k1".into(), old.public_pem.clone())],
        );
        let p = after.verify(&token).unwrap();
        assert_eq!((p.user_id.as_str(), p.role), ("u", Role::Merchant));
        let stranger = issuer("k1", &new.private_pem, &[]);
        assert!(
            stranger.verify(&token).is_err(),
            "same kid, different key must fail"
        );
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let k = generate_signing_keypair();
        let a = issuer("k", &k.private_pem, &[]);
        let mut b = a.clone();
        b.audience = "other".into();
        assert!(b.verify(&a.issue("u", "t", Role::Admin, "s")).is_err());
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let h = hash_password("correct horse battery");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong", &h));
    }
}
