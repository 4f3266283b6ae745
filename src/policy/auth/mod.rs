//! The identity part of a policy, compiled: issuers with their verification rules and key
//! sources, API keys, identity headers, and each route's authentication and authorization rule.
//!
//! Compilation reads the files an issuer or the API keys name (HMAC secrets, API key tables,
//! JWKS files for validation) and the environment variables for secrets: it runs in the reload
//! task, never on a request. A secret is never part of an error message or of `Debug` output.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;
use sha2::Digest;

use super::compile::{is_name, resolve, Compiler};
use super::spec::{
    ApiKeysSpec, AuthSpec, ClaimRuleSpec, IdentitySpec, IssuerSpec, JwksSpec, Mode, Requirement,
};
use super::units::Dur;
use crate::identity::apikey::{self, ApiKey, ApiKeys};
use crate::identity::jwt::{ClaimNames, Rules};
use crate::identity::keyset::{is_hmac, parse_algorithm, KeySet};

/// Everything about callers' identity in one policy.
#[derive(Debug, Default)]
pub struct Identity {
    pub issuers: Vec<Arc<Issuer>>,
    pub api_keys: Option<ApiKeyTable>,
    pub headers: IdentityHeaders,
    /// 0 turns the verified-token cache off.
    pub cache_max_entries: usize,
}

/// One JWT issuer.
#[derive(Debug)]
pub struct Issuer {
    pub rules: Rules,
    pub keys: KeySource,
    /// Changes whenever the rules or the key source change, so a verification cached under other
    /// rules is never reused.
    pub fingerprint: u64,
}

/// Where an issuer's keys come from.
#[derive(Debug)]
pub enum KeySource {
    /// Published keys, held by the proxy's key store and refreshed there.
    Jwks(JwksSource),
    /// A shared secret, read at compile time.
    Hmac(Arc<KeySet>),
}

/// A JWKS location and its refresh settings; the key store keeps one live key set per `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwksSource {
    /// Stable identity of this source (location and settings), the key store's key.
    pub id: Arc<str>,
    pub location: JwksLocation,
    pub refresh: Duration,
    pub min_refetch: Duration,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksLocation {
    Url(String),
    File(PathBuf),
}

/// Static API keys and the header that carries them.
#[derive(Debug)]
pub struct ApiKeyTable {
    pub header: HeaderName,
    pub keys: ApiKeys,
    pub file: PathBuf,
}

/// Header names of the identity sent upstream.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub subject: HeaderName,
    pub tenant: HeaderName,
    pub roles: HeaderName,
    pub method: HeaderName,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            subject: HeaderName::from_static("x-ward-subject"),
            tenant: HeaderName::from_static("x-ward-tenant"),
            roles: HeaderName::from_static("x-ward-roles"),
            method: HeaderName::from_static("x-ward-auth-method"),
        }
    }
}

impl IdentityHeaders {
    pub fn all(&self) -> [&HeaderName; 4] {
        [&self.subject, &self.tenant, &self.roles, &self.method]
    }
}

/// A route's authentication and authorization.
#[derive(Debug)]
pub struct AuthRule {
    pub require: Requirement,
    pub issuers: Vec<Arc<Issuer>>,
    pub api_keys: bool,
    /// One of these (empty: no role needed).
    pub roles: Vec<String>,
    /// All of these.
    pub scopes: Vec<String>,
    pub claims: Vec<ClaimRule>,
    pub tenant: Option<TenantSource>,
    pub token_in_query: bool,
    pub mode: Mode,
}

impl AuthRule {
    pub fn none() -> AuthRule {
        AuthRule {
            require: Requirement::None,
            issuers: Vec::new(),
            api_keys: false,
            roles: Vec::new(),
            scopes: Vec::new(),
            claims: Vec::new(),
            tenant: None,
            token_in_query: false,
            mode: Mode::Enforce,
        }
    }

    /// Whether anything after authentication needs a principal.
    pub fn authorizes(&self) -> bool {
        !self.roles.is_empty()
            || !self.scopes.is_empty()
            || !self.claims.is_empty()
            || self.tenant.is_some()
    }
}

/// A rule on one claim.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimRule {
    Equals {
        claim: String,
        value: serde_json::Value,
    },
    OneOf {
        claim: String,
        values: Vec<serde_json::Value>,
    },
    Contains {
        claim: String,
        value: serde_json::Value,
    },
}

/// Where a request names its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    Header(HeaderName),
    /// 1-based.
    PathSegment(usize),
}

/// The API keys file.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

mod api_keys;
mod issuer;
mod rule;
#[cfg(test)]
mod tests;
