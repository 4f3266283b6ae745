//! The token vocabulary both services speak: who a verified caller is ([`Principal`]), how they
//! proved it ([`AuthMethod`]), the roles of the bundled payments service ([`Role`]) and the claims
//! its access tokens carry ([`AccessClaims`]); plus the pure verification the proxy applies to any
//! issuer's tokens: [`keyset`] (a strictly parsed JWKS or HMAC secret) and [`jwt`] (the compact
//! JWS checks), and [`apikey`] (static keys stored as hashes).
//!
//! `proxy` and `payments` both use this module and never import each other. It holds data and
//! pure functions only: no I/O, no HTTP, no clock.

pub mod apikey;
pub mod jwt;
pub mod keyset;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A role in the bundled payments service. Other issuers' roles are plain strings in
/// [`Principal::roles`]; this enum is the payments service's own, closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Merchant,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Merchant, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Merchant => "merchant",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The claims of an access token issued by the bundled payments service. `sid` is the session
/// (refresh-token family) id, `tenant` the tenant id, `role` one [`Role`].
///
/// The proxy does not deserialize this type (it reads any issuer's claims by the names its
/// policy maps); it is the one definition of what the bundled issuer puts in a token, and the
/// claim names below are what a policy maps for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub tenant: String,
    pub role: Role,
    pub sid: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

impl AccessClaims {
    /// The claim that names the tenant.
    pub const TENANT_CLAIM: &'static str = "tenant";
    /// The claim that names the role (one string).
    pub const ROLE_CLAIM: &'static str = "role";
    /// The claim that names the session.
    pub const SESSION_CLAIM: &'static str = "sid";

    /// The verified caller these claims describe.
    pub fn into_principal(self) -> Principal {
        Principal {
            subject: self.sub,
            tenant: Some(self.tenant),
            roles: vec![self.role.as_str().to_owned()],
            scopes: Vec::new(),
            session: Some(self.sid),
            token_id: Some(self.jti),
            issued_at: Some(self.iat),
            expires_at: Some(self.exp),
            method: AuthMethod::Jwt {
                issuer: Arc::from(self.iss.as_str()),
            },
            claims: Arc::default(),
        }
    }
}

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// A signed JWT from the named issuer (the issuer's name in the proxy's policy, or the `iss`
    /// claim in the payments service).
    Jwt { issuer: Arc<str> },
    /// A static API key, by its id (never the key).
    ApiKey { id: Arc<str> },
}

impl AuthMethod {
    /// `jwt` or `api_key`: the value of the auth-method identity header and log field.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMethod::Jwt { .. } => "jwt",
            AuthMethod::ApiKey { .. } => "api_key",
        }
    }
}

/// A verified caller: the evidence authentication hands to authorization and to identity-keyed
/// limits. Built only by a verifier (JWT signature and claims checked, or an API key matched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub`, or the API key's id.
    pub subject: String,
    pub tenant: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    /// The session (refresh-token family), `sid`.
    pub session: Option<String>,
    /// The token's own id, `jti`.
    pub token_id: Option<String>,
    /// Unix seconds.
    pub issued_at: Option<i64>,
    /// Unix seconds; `None` only for API keys.
    pub expires_at: Option<i64>,
    pub method: AuthMethod,
    /// Every claim of the token, for claim rules (empty for API keys and the payments service).
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("Admin"), None);
    }

    #[test]
    fn access_claims_become_a_jwt_principal_with_one_role() {
        let p = AccessClaims {
            iss: "ward-payments".into(),
            aud: "ward".into(),
            sub: "u1".into(),
            tenant: "t1".into(),
            role: Role::Auditor,
            sid: "s1".into(),
            jti: "j1".into(),
            iat: 10,
            exp: 20,
        }
        .into_principal();
        assert_eq!(p.subject, "u1");
        assert_eq!(p.tenant.as_deref(), Some("t1"));
        assert!(p.has_role("auditor") && !p.has_role("admin"));
        assert_eq!(p.method.as_str(), "jwt");
        assert_eq!(p.expires_at, Some(20));
    }
}
