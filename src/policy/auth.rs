//! The identity part of a policy, compiled: issuers with their verification rules and key
//! sources, API keys, identity headers, and each route's authentication and authorization rule.
//!
//! Compilation reads the files an issuer or the API keys name (HMAC secrets, API key tables,
//! JWKS files for validation) and the environment variables for secrets: it runs in the reload
//! task, never on a request. A secret is never part of an error message or of `Debug` output.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;
use sha2::Digest;

use super::compile::Compiler;
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeysFile {
    keys: Vec<ApiKeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyEntry {
    id: String,
    hash: String,
    tenant: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    rate_limit: Option<ApiKeyLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyLimit {
    limit: u32,
    period: Dur,
}

const MAX_LEEWAY: Duration = Duration::from_secs(300);

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A policy-relative path: relative paths are taken from the policy file's directory.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

impl Compiler {
    /// Files besides the policy files whose change must reload the policy.
    pub(super) fn identity(
        &mut self,
        spec: Option<IdentitySpec>,
        watched: &mut Vec<PathBuf>,
    ) -> Identity {
        let Some(spec) = spec else {
            return Identity {
                cache_max_entries: 100_000,
                ..Identity::default()
            };
        };
        let mut issuers = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, is) in spec.issuers.iter().enumerate() {
            let at = format!("identity.issuers[{i}]");
            if !is_name(&is.name) {
                self.err(
                    format!("{at}.name"),
                    "issuer names use letters, digits, `-` and `_` only",
                );
            }
            if let Some(first) = seen.insert(is.name.clone(), i) {
                self.err(
                    format!("{at}.name"),
                    format!(
                        "duplicate issuer name `{}` (first at identity.issuers[{first}])",
                        is.name
                    ),
                );
            }
            if let Some(issuer) = self.issuer(is, &at, watched) {
                issuers.push(Arc::new(issuer));
            }
        }
        let api_keys = spec
            .api_keys
            .as_ref()
            .and_then(|a| self.api_keys(a, watched));
        let h = spec.headers.unwrap_or_default();
        let d = IdentityHeaders::default();
        let headers = IdentityHeaders {
            subject: h.subject.map_or(d.subject, |n| n.0),
            tenant: h.tenant.map_or(d.tenant, |n| n.0),
            roles: h.roles.map_or(d.roles, |n| n.0),
            method: h.method.map_or(d.method, |n| n.0),
        };
        let names = headers.all();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                self.err(
                    "identity.headers",
                    format!("`{n}` carries two identity fields"),
                );
            }
            if [
                http::header::AUTHORIZATION,
                http::header::HOST,
                http::header::COOKIE,
            ]
            .contains(n)
            {
                self.err(
                    "identity.headers",
                    format!("`{n}` cannot carry an identity field"),
                );
            }
        }
        Identity {
            issuers,
            api_keys,
            headers,
            cache_max_entries: spec.cache.and_then(|c| c.max_entries).unwrap_or(100_000),
        }
    }

    fn issuer(&mut self, is: &IssuerSpec, at: &str, watched: &mut Vec<PathBuf>) -> Option<Issuer> {
        let mut ok = true;
        if is.issuer.is_empty() {
            self.err(format!("{at}.issuer"), "must not be empty");
            ok = false;
        }
        if is.audiences.is_empty() || is.audiences.iter().any(String::is_empty) {
            self.err(
                format!("{at}.audiences"),
                "list at least one non-empty audience: a token for another service must not pass",
            );
            ok = false;
        }
        let mut algorithms = Vec::new();
        for (j, a) in is.algorithms.iter().enumerate() {
            if a.eq_ignore_ascii_case("none") {
                self.err(
                    format!("{at}.algorithms[{j}]"),
                    "`none` means an unsigned token: never accepted",
                );
                ok = false;
                continue;
            }
            match parse_algorithm(a) {
                Some(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Some(_) => {}
                None => {
                    self.err(
                        format!("{at}.algorithms[{j}]"),
                        format!("`{a}` is not one of EdDSA, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, HS256, HS384, HS512"),
                    );
                    ok = false;
                }
            }
        }
        if is.algorithms.is_empty() {
            self.err(format!("{at}.algorithms"), "list the algorithms to accept");
            ok = false;
        }
        let hmac = algorithms.iter().any(|a| is_hmac(*a));
        if hmac && algorithms.iter().any(|a| !is_hmac(*a)) {
            self.err(
                format!("{at}.algorithms"),
                "HMAC and public-key algorithms cannot share an issuer (a public key must never verify as an HMAC secret)",
            );
            ok = false;
        }
        let keys = match (&is.jwks, &is.hmac) {
            (Some(_), Some(_)) | (None, None) => {
                self.err(at, "give exactly one of `jwks` and `hmac`");
                None
            }
            (Some(_), None) if hmac => {
                self.err(
                    format!("{at}.algorithms"),
                    "an HMAC algorithm needs an `hmac` secret source, not `jwks`",
                );
                None
            }
            (None, Some(_)) if !hmac => {
                self.err(
                    format!("{at}.hmac"),
                    "an `hmac` secret verifies only HS256, HS384 or HS512",
                );
                None
            }
            (Some(j), None) => self.jwks(j, &format!("{at}.jwks")).map(KeySource::Jwks),
            (None, Some(h)) => self
                .hmac_secret(h, &format!("{at}.hmac"), &algorithms, watched)
                .map(KeySource::Hmac),
        };
        let leeway = is.leeway.map_or(Duration::from_secs(30), |d| d.0);
        if leeway > MAX_LEEWAY {
            self.err(format!("{at}.leeway"), "at most 5m");
            ok = false;
        }
        let max_token_bytes = match is.max_token_size {
            Some(s) if s.0 < 64 || s.0 > 64 * 1024 => {
                self.err(format!("{at}.max_token_size"), "between 64 and 64KiB");
                ok = false;
                0
            }
            Some(s) => s.0 as usize,
            None => 8 * 1024,
        };
        let c = is.claims.as_ref();
        let d = ClaimNames::default();
        let pick = |v: Option<&String>, d: String| v.cloned().unwrap_or(d);
        let claims = ClaimNames {
            subject: pick(c.and_then(|c| c.subject.as_ref()), d.subject),
            tenant: pick(c.and_then(|c| c.tenant.as_ref()), d.tenant),
            roles: pick(c.and_then(|c| c.roles.as_ref()), d.roles),
            scopes: pick(c.and_then(|c| c.scopes.as_ref()), d.scopes),
        };
        let keys = keys?;
        if !ok {
            return None;
        }
        let rules = Rules {
            name: Arc::from(is.name.as_str()),
            issuer: is.issuer.clone(),
            audiences: is.audiences.clone(),
            algorithms,
            leeway: leeway.as_secs(),
            required_claims: is.required_claims.clone().unwrap_or_default(),
            max_token_bytes,
            typ: is.typ.clone(),
            claims,
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        rules.hash(&mut h);
        match &keys {
            KeySource::Jwks(j) => j.hash(&mut h),
            KeySource::Hmac(set) => (Arc::as_ptr(set) as usize).hash(&mut h),
        }
        Some(Issuer {
            rules,
            keys,
            fingerprint: h.finish(),
        })
    }

    fn jwks(&mut self, j: &JwksSpec, at: &str) -> Option<JwksSource> {
        let location = match (&j.url, &j.file) {
            (Some(url), None) => {
                let Ok(uri) = url.parse::<http::Uri>() else {
                    self.err(format!("{at}.url"), format!("`{url}` is not a URL"));
                    return None;
                };
                let loopback = matches!(
                    uri.host(),
                    Some("localhost") | Some("127.0.0.1") | Some("[::1]")
                );
                match uri.scheme_str() {
                    Some("https") => {}
                    Some("http") if loopback => {}
                    _ => {
                        self.err(
                            format!("{at}.url"),
                            "must be https:// (http:// only to a loopback address): keys fetched in clear text could be swapped",
                        );
                        return None;
                    }
                }
                JwksLocation::Url(url.clone())
            }
            (None, Some(file)) => {
                let path = resolve(&self.file, file);
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        // Not an input of the policy: the key store reloads this file itself.
                        if let Err(e) = KeySet::from_jwks(&bytes) {
                            self.err(format!("{at}.file"), format!("{}: {e}", path.display()));
                            return None;
                        }
                    }
                    Err(e) => {
                        self.err(
                            format!("{at}.file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        return None;
                    }
                }
                JwksLocation::File(path)
            }
            _ => {
                self.err(at, "give exactly one of `url` and `file`");
                return None;
            }
        };
        let ca_file = j.ca_file.as_ref().map(|f| resolve(&self.file, f));
        if let Some(ca) = &ca_file {
            if let Err(e) = std::fs::metadata(ca) {
                self.err(
                    format!("{at}.ca_file"),
                    format!("cannot read {}: {e}", ca.display()),
                );
            }
        }
        let refresh = self.positive(
            j.refresh.map(|d| d.0),
            Duration::from_secs(300),
            &format!("{at}.refresh"),
        );
        let min_refetch = j.min_refetch.map_or(Duration::from_secs(30), |d| d.0);
        let timeout = self.positive(
            j.timeout.map(|d| d.0),
            Duration::from_secs(5),
            &format!("{at}.timeout"),
        );
        let id = format!(
            "{location:?}|{}|{}|{}|{ca_file:?}",
            refresh.as_millis(),
            min_refetch.as_millis(),
            timeout.as_millis()
        );
        Some(JwksSource {
            id: Arc::from(id.as_str()),
            location,
            refresh,
            min_refetch,
            timeout,
            ca_file,
        })
    }

    fn hmac_secret(
        &mut self,
        h: &super::spec::HmacSpec,
        at: &str,
        algorithms: &[jsonwebtoken::Algorithm],
        watched: &mut Vec<PathBuf>,
    ) -> Option<Arc<KeySet>> {
        if h.secret.is_some() {
            self.err(
                format!("{at}.secret"),
                "a secret never goes in the policy text (it would be in every copy and diff of it); use secret_file or secret_env",
            );
            return None;
        }
        let secret = match (&h.secret_file, &h.secret_env) {
            (Some(f), None) => {
                let path = resolve(&self.file, f);
                match std::fs::read(&path) {
                    Ok(b) => {
                        self.inputs.update(path.as_os_str().as_encoded_bytes());
                        self.inputs.update(&b);
                        watched.push(path);
                        b.trim_ascii().to_vec()
                    }
                    Err(e) => {
                        self.err(
                            format!("{at}.secret_file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        return None;
                    }
                }
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) => {
                    self.inputs.update(var.as_bytes());
                    self.inputs.update(v.as_bytes());
                    v.trim().as_bytes().to_vec()
                }
                Err(_) => {
                    self.err(
                        format!("{at}.secret_env"),
                        format!("environment variable `{var}` is not set"),
                    );
                    return None;
                }
            },
            _ => {
                self.err(at, "give exactly one of `secret_file` and `secret_env`");
                return None;
            }
        };
        match KeySet::from_hmac_secret(&secret, algorithms) {
            Ok(set) => Some(Arc::new(set)),
            Err(e) => {
                self.err(at, e.to_string());
                None
            }
        }
    }

    fn api_keys(&mut self, a: &ApiKeysSpec, watched: &mut Vec<PathBuf>) -> Option<ApiKeyTable> {
        let at = "identity.api_keys.file";
        let path = resolve(&self.file, &a.file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.err(at, format!("cannot read {}: {e}", path.display()));
                return None;
            }
        };
        self.inputs.update(path.as_os_str().as_encoded_bytes());
        self.inputs.update(text.as_bytes());
        watched.push(path.clone());
        let file: ApiKeysFile = match serde_norway::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                // The file holds only hashes, but keep its content out of the message anyway.
                let pos = e
                    .location()
                    .map(|l| format!(":{}:{}", l.line(), l.column()))
                    .unwrap_or_default();
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or("invalid YAML");
                self.err(at, format!("{}{pos}: {msg}", path.display()));
                return None;
            }
        };
        let mut keys = Vec::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (i, k) in file.keys.into_iter().enumerate() {
            let here = format!("{}: keys[{i}]", path.display());
            if !is_name(&k.id) {
                self.err(
                    at,
                    format!("{here}.id: use letters, digits, `-` and `_` only"),
                );
                continue;
            }
            if ids.insert(k.id.clone(), i).is_some() {
                self.err(at, format!("{here}.id: duplicate id `{}`", k.id));
                continue;
            }
            let Some(hash) = apikey::parse_hash(&k.hash) else {
                self.err(
                    at,
                    format!("{here}.hash: expected `sha256:` and 64 hex digits (store the hash, never the key; see `ward apikey generate`)"),
                );
                continue;
            };
            let rate_limit = match k.rate_limit {
                Some(l) if l.limit == 0 || l.period.0 < Duration::from_secs(1) => {
                    self.err(
                        at,
                        format!("{here}.rate_limit: limit at least 1 and period at least 1s"),
                    );
                    continue;
                }
                Some(l) => Some((l.limit, l.period.0)),
                None => None,
            };
            keys.push(ApiKey {
                id: Arc::from(k.id.as_str()),
                hash,
                tenant: k.tenant,
                roles: k.roles,
                scopes: k.scopes,
                rate_limit,
            });
        }
        Some(ApiKeyTable {
            header: a
                .header
                .as_ref()
                .map_or(HeaderName::from_static("x-api-key"), |h| h.0.clone()),
            keys: ApiKeys { keys },
            file: path,
        })
    }

    /// A route's rule: `over` field by field over `base` (the defaults').
    pub(super) fn auth_rule(
        &mut self,
        identity: &Identity,
        base: Option<&AuthSpec>,
        over: Option<&AuthSpec>,
        at: &str,
    ) -> AuthRule {
        let pick = |f: fn(&AuthSpec) -> bool| over.is_some_and(f);
        let base = base.cloned().unwrap_or_default();
        let over = over.cloned().unwrap_or_default();
        let own_issuers = pick(|a| a.issuers.is_some());
        let field = |own: bool, name: &str| {
            if own {
                format!("{at}.auth.{name}")
            } else {
                format!("defaults.auth.{name}")
            }
        };
        let require = over.require.or(base.require).unwrap_or(Requirement::None);
        let names = over.issuers.or(base.issuers).unwrap_or_default();
        let mut issuers = Vec::new();
        for (i, n) in names.iter().enumerate() {
            match identity.issuers.iter().find(|is| *is.rules.name == **n) {
                Some(is) => {
                    if matches!(is.keys, KeySource::Hmac(_)) && !own_issuers {
                        self.err(
                            field(false, &format!("issuers[{i}]")),
                            format!("HMAC issuer `{n}` must be named by each route that accepts it, not in defaults"),
                        );
                    }
                    issuers.push(is.clone());
                }
                None => self.err(
                    field(own_issuers, &format!("issuers[{i}]")),
                    format!("unknown issuer `{n}` (define it under identity.issuers)"),
                ),
            }
        }
        let api_keys = over.api_keys.or(base.api_keys).unwrap_or(false);
        if api_keys && identity.api_keys.is_none() {
            self.err(
                field(pick(|a| a.api_keys.is_some()), "api_keys"),
                "API keys are accepted here but identity.api_keys names no key file",
            );
        }
        if require != Requirement::None && issuers.is_empty() && !api_keys {
            self.err(
                field(pick(|a| a.require.is_some()), "require"),
                "authentication is required but no issuer and no API keys are accepted",
            );
        }
        let roles = over.roles.or(base.roles).unwrap_or_default();
        let scopes = over.scopes.or(base.scopes).unwrap_or_default();
        let own_claims = pick(|a| a.claims.is_some());
        let claims = over
            .claims
            .or(base.claims)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, c)| self.claim_rule(c, &field(own_claims, &format!("claims[{i}]"))))
            .collect::<Vec<_>>();
        let own_tenant = pick(|a| a.tenant.is_some());
        let tenant = match over.tenant.or(base.tenant) {
            None => None,
            Some(t) => match (t.header, t.path_segment) {
                (Some(h), None) => Some(TenantSource::Header(h.0)),
                (None, Some(n)) if n >= 1 => Some(TenantSource::PathSegment(n)),
                _ => {
                    self.err(
                        field(own_tenant, "tenant"),
                        "give exactly one of `header` and `path_segment` (1-based)",
                    );
                    None
                }
            },
        };
        let rule = AuthRule {
            require,
            issuers,
            api_keys,
            roles,
            scopes,
            claims,
            tenant,
            token_in_query: over.token_in_query.or(base.token_in_query).unwrap_or(false),
            mode: over.mode.or(base.mode).unwrap_or(Mode::Enforce),
        };
        if rule.require != Requirement::Required && rule.authorizes() {
            self.err(
                field(pick(|a| a.require.is_some()), "require"),
                "roles, scopes, claims or tenant rules need `require: required` (an anonymous caller has none of them)",
            );
        }
        rule
    }

    fn claim_rule(&mut self, c: &ClaimRuleSpec, at: &str) -> Option<ClaimRule> {
        if c.claim.is_empty() {
            self.err(format!("{at}.claim"), "must not be empty");
            return None;
        }
        let claim = c.claim.clone();
        match (&c.equals, &c.one_of, &c.contains) {
            (Some(v), None, None) => Some(ClaimRule::Equals {
                claim,
                value: v.clone(),
            }),
            (None, Some(vs), None) if !vs.is_empty() => Some(ClaimRule::OneOf {
                claim,
                values: vs.clone(),
            }),
            (None, None, Some(v)) => Some(ClaimRule::Contains {
                claim,
                value: v.clone(),
            }),
            _ => {
                self.err(
                    at,
                    "give exactly one of `equals`, `one_of` (not empty) and `contains`",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::policy::compile::compile_sources;

    fn compile(yaml: &str) -> Result<crate::policy::Policy, String> {
        compile_sources(&[(PathBuf::from("p.yaml"), yaml.to_owned())]).map_err(|e| e.to_string())
    }

    fn with_identity(identity: &str, route_auth: &str) -> String {
        format!(
            "version: 1\nupstream: {{url: http://127.0.0.1:9}}\nidentity:\n{identity}\nroutes:\n  - name: api\n    auth: {route_auth}\n"
        )
    }

    const ISSUER: &str = "  issuers:\n    - name: main\n      issuer: https://issuer.example\n      audiences: [api]\n      algorithms: [ES256]\n      jwks: {url: https://issuer.example/jwks.json}";

    #[test]
    fn a_good_issuer_compiles_with_safe_defaults() {
        let p = compile(&with_identity(
            ISSUER,
            "{require: required, issuers: [main]}",
        ))
        .unwrap();
        let is = &p.identity.issuers[0];
        assert_eq!(is.rules.leeway, 30);
        assert_eq!(is.rules.max_token_bytes, 8 * 1024);
        assert_eq!(is.rules.claims.subject, "sub");
        assert_eq!(p.identity.cache_max_entries, 100_000);
        assert_eq!(p.routes[0].auth.issuers.len(), 1);
        assert_eq!(p.identity.headers.subject, "x-ward-subject");
    }

    #[test]
    fn none_is_refused_in_any_spelling() {
        for none in ["none", "None", "NONE"] {
            let e = compile(&with_identity(
                &ISSUER.replace("[ES256]", &format!("[ES256, {none}]")),
                "{require: required, issuers: [main]}",
            ))
            .unwrap_err();
            assert!(
                e.contains("p.yaml: identity.issuers[0].algorithms[1]: `none` means an unsigned token: never accepted"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_secret_in_the_policy_text_is_refused() {
        let e = compile(&with_identity(
            "  issuers:\n    - name: h\n      issuer: i\n      audiences: [a]\n      algorithms: [HS256]\n      hmac: {secret: 'correct horse battery staple and more'}",
            "{require: required, issuers: [h]}",
        ))
        .unwrap_err();
        assert!(
            e.contains("identity.issuers[0].hmac.secret: a secret never goes in the policy text"),
            "{e}"
        );
        assert!(
            !e.contains("correct horse"),
            "the secret is not echoed: {e}"
        );
    }

    #[test]
    fn hmac_needs_a_secret_source_and_never_mixes_with_public_keys() {
        let e = compile(&with_identity(
            &ISSUER.replace("[ES256]", "[HS256]"),
            "{require: required, issuers: [main]}",
        ))
        .unwrap_err();
        assert!(
            e.contains("identity.issuers[0].algorithms: an HMAC algorithm needs an `hmac` secret source, not `jwks`"),
            "{e}"
        );
        let e = compile(&with_identity(
            &ISSUER.replace("[ES256]", "[ES256, HS256]"),
            "{require: required, issuers: [main]}",
        ))
        .unwrap_err();
        assert!(
            e.contains("HMAC and public-key algorithms cannot share an issuer"),
            "{e}"
        );
        let e = compile(&with_identity(
            "  issuers:\n    - name: h\n      issuer: i\n      audiences: [a]\n      algorithms: [HS256]\n      hmac: {secret_env: WARD_TEST_SURELY_UNSET_VARIABLE}",
            "{require: required, issuers: [h]}",
        ))
        .unwrap_err();
        assert!(
            e.contains("identity.issuers[0].hmac.secret_env: environment variable `WARD_TEST_SURELY_UNSET_VARIABLE` is not set"),
            "{e}"
        );
    }

    #[test]
    fn an_hmac_issuer_from_a_file_must_be_named_by_the_route() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("jwt.secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let identity = format!(
            "  issuers:\n    - name: h\n      issuer: i\n      audiences: [a]\n      algorithms: [HS256]\n      hmac: {{secret_file: {}}}",
            secret.display()
        );
        let ok = compile(&with_identity(
            &identity,
            "{require: required, issuers: [h]}",
        ))
        .unwrap();
        assert_eq!(ok.watched_files, std::slice::from_ref(&secret));
        let inherited = format!(
            "version: 1\nupstream: {{url: http://127.0.0.1:9}}\nidentity:\n{identity}\ndefaults:\n  auth: {{issuers: [h]}}\nroutes:\n  - name: api\n    auth: {{require: required}}\n"
        );
        let e = compile(&inherited).unwrap_err();
        assert!(
            e.contains("defaults.auth.issuers[0]: HMAC issuer `h` must be named by each route"),
            "{e}"
        );
    }

    #[test]
    fn unknown_issuers_and_missing_key_sources_are_refused() {
        let e = compile(&with_identity(
            ISSUER,
            "{require: required, issuers: [mian]}",
        ))
        .unwrap_err();
        assert!(
            e.contains("routes[0].auth.issuers[0]: unknown issuer `mian` (define it under identity.issuers)"),
            "{e}"
        );
        let e = compile(&with_identity(ISSUER, "{require: required}")).unwrap_err();
        assert!(
            e.contains("authentication is required but no issuer and no API keys are accepted"),
            "{e}"
        );
        let e = compile(&with_identity(
            &ISSUER.replace(
                "jwks: {url: https://issuer.example/jwks.json}",
                "leeway: 10s",
            ),
            "{require: required, issuers: [main]}",
        ))
        .unwrap_err();
        assert!(
            e.contains("identity.issuers[0]: give exactly one of `jwks` and `hmac`"),
            "{e}"
        );
        let e = compile(&with_identity(
            &ISSUER.replace(
                "https://issuer.example/jwks.json",
                "http://issuer.example/jwks.json",
            ),
            "{require: required, issuers: [main]}",
        ))
        .unwrap_err();
        assert!(
            e.contains("identity.issuers[0].jwks.url: must be https://"),
            "{e}"
        );
        let e = compile(&with_identity(
            &ISSUER.replace("audiences: [api]", "audiences: []"),
            "{require: required, issuers: [main]}",
        ))
        .unwrap_err();
        assert!(
            e.contains("identity.issuers[0].audiences: list at least one"),
            "{e}"
        );
    }

    #[test]
    fn authorization_rules_need_required_auth_and_identity_limits_need_auth() {
        let e = compile(&with_identity(
            ISSUER,
            "{require: optional, issuers: [main], roles: [admin]}",
        ))
        .unwrap_err();
        assert!(e.contains("routes[0].auth.require: roles, scopes, claims or tenant rules need `require: required`"), "{e}");
        let e = compile(
            "version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: api\n    rate_limits: [{name: t, key: tenant, limit: 1, period: 1m}]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("routes[0].rate_limits[0].key: `tenant` counts by the verified caller, but route `api` does not authenticate"),
            "{e}"
        );
    }

    #[test]
    fn api_key_files_hold_hashes_only() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.yaml");
        std::fs::write(
            &keys,
            "keys:\n  - id: k1\n    hash: wk_plaintextkeyinsteadofahash\n",
        )
        .unwrap();
        let policy = format!(
            "version: 1\nupstream: {{url: http://127.0.0.1:9}}\nidentity:\n  api_keys: {{file: {}}}\nroutes:\n  - name: api\n    auth: {{require: required, api_keys: true}}\n",
            keys.display()
        );
        let e = compile(&policy).unwrap_err();
        assert!(
            e.contains("keys[0].hash: expected `sha256:` and 64 hex digits"),
            "{e}"
        );
        assert!(!e.contains("wk_plaintext"), "the key is not echoed: {e}");
        let (_, hash) = crate::identity::apikey::generate();
        std::fs::write(
            &keys,
            format!(
                "keys:\n  - id: k1\n    hash: {hash}\n    rate_limit: {{limit: 10, period: 1m}}\n"
            ),
        )
        .unwrap();
        let p = compile(&policy).unwrap();
        let table = p.identity.api_keys.as_ref().unwrap();
        assert_eq!(table.header, "x-api-key");
        assert_eq!(
            table.keys.keys[0].rate_limit,
            Some((10, std::time::Duration::from_secs(60)))
        );
    }
}
