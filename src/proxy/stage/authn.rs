//! Stage 6, authentication (401; 503 while an issuer's keys have never loaded). Runs after the
//! IP-keyed limits, so a flood of forged tokens is refused before it costs a signature check.
//! Its evidence is the verified caller, if any: authorization and identity-keyed limits take it.
//!
//! Credentials: `Authorization: Bearer <token>` (scheme case-insensitive), the `access_token`
//! query parameter only where the route allows it, or an API key in the configured header.
//! Two Authorization headers, another scheme, a query token where not allowed, or a token and an
//! API key together are refused: ambiguity is how smuggled credentials get through.
//! A hot token is served from the verified-token cache (see `token_cache`).

use std::sync::Arc;

use http::{header, HeaderMap, Uri};

use super::super::token_cache::{Entry, TokenCache};
use crate::identity::jwt::{self, TokenFault};
use crate::identity::keyset::KeySet;
use crate::identity::Principal;
use crate::keystore::KeyStore;
use crate::policy::{AuthRule, Issuer, KeySource, Policy, Requirement};
use crate::proxy::rejection::{AuthFault, Rejection};

/// What authentication reads besides the request.
pub struct Verifier<'a> {
    pub policy: &'a Policy,
    pub keys: &'a KeyStore,
    pub cache: &'a TokenCache,
    /// Unix seconds.
    pub now: i64,
}

enum Credential<'r> {
    Bearer(&'r str),
    ApiKey(&'r str),
}

/// The verified caller, `None` when the route does not authenticate or the caller sent nothing
/// on a route where that is allowed.
pub fn authenticate(
    v: &Verifier<'_>,
    rule: &AuthRule,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Option<Arc<Principal>>, Rejection> {
    if rule.require == Requirement::None {
        return Ok(None);
    }
    let unauthorized = |f| Rejection::Unauthorized(f);
    match credential(v.policy, rule, headers, uri).map_err(unauthorized)? {
        None if rule.require == Requirement::Required => Err(unauthorized(AuthFault::Missing)),
        None => Ok(None),
        Some(Credential::ApiKey(key)) => {
            let table = v
                .policy
                .identity
                .api_keys
                .as_ref()
                .ok_or(unauthorized(AuthFault::UnknownApiKey))?;
            let found = table
                .keys
                .find(key)
                .ok_or(unauthorized(AuthFault::UnknownApiKey))?;
            Ok(Some(Arc::new(found.principal())))
        }
        Some(Credential::Bearer(token)) => verify_token(v, rule, token).map(Some),
    }
}

/// The one credential the request carries, if any.
fn credential<'r>(
    policy: &Policy,
    rule: &AuthRule,
    headers: &'r HeaderMap,
    uri: &'r Uri,
) -> Result<Option<Credential<'r>>, AuthFault> {
    let mut found = None;
    let mut authz = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(value) = authz.next() {
        if authz.next().is_some() {
            return Err(AuthFault::AmbiguousCredentials);
        }
        let text = value
            .to_str()
            .map_err(|_| AuthFault::Token(TokenFault::Malformed))?;
        let token = match text.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim_matches(' '),
            _ => return Err(AuthFault::AmbiguousCredentials),
        };
        if token.is_empty() {
            return Err(AuthFault::Token(TokenFault::Malformed));
        }
        found = Some(Credential::Bearer(token));
    }
    if let Some(q) = query_token(uri) {
        if !rule.token_in_query || found.is_some() {
            return Err(AuthFault::AmbiguousCredentials);
        }
        found = Some(Credential::Bearer(q));
    }
    if let Some(table) = &policy.identity.api_keys {
        let mut values = headers.get_all(&table.header).iter();
        if let Some(v) = values.next() {
            if rule.api_keys {
                // A second key header is as ambiguous as a second Authorization header.
                if found.is_some() || values.next().is_some() {
                    return Err(AuthFault::AmbiguousCredentials);
                }
                let key = v.to_str().map_err(|_| AuthFault::UnknownApiKey)?;
                found = Some(Credential::ApiKey(key));
            }
        }
    }
    Ok(found)
}

/// The value of an `access_token` query parameter (RFC 6750 §2.3), if present. Percent-encoded
/// tokens are not decoded: a JWT needs no escaping, so an escaped one is malformed anyway.
fn query_token(uri: &Uri) -> Option<&str> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == "access_token").then_some(v)
    })
}

fn verify_token(
    v: &Verifier<'_>,
    rule: &AuthRule,
    token: &str,
) -> Result<Arc<Principal>, Rejection> {
    let invalid = |f| Rejection::Unauthorized(AuthFault::Token(f));
    let hash = v.cache.enabled().then(|| v.cache.hash(token));
    if let Some(h) = &hash {
        let hit = v.cache.get(h, v.now, |e| {
            rule.issuers
                .iter()
                .find(|is| *is.rules.name == *e.issuer)
                .is_some_and(|is| {
                    is.fingerprint == e.fingerprint && key_present(v.keys, is, e.kid.as_deref())
                })
        });
        if let Some(principal) = hit {
            return Ok(principal);
        }
    }
    let issuer = pick_issuer(rule, token)?;
    let unverified = jwt::parse(token, &issuer.rules).map_err(invalid)?;
    let (keys, live) = match &issuer.keys {
        KeySource::Hmac(set) => (set.clone(), None),
        KeySource::Jwks(src) => {
            let live = v.keys.get(&src.id).ok_or(Rejection::AuthUnavailable)?;
            (live.keys().ok_or(Rejection::AuthUnavailable)?, Some(live))
        }
    };
    let principal = match jwt::verify(&unverified, &issuer.rules, &keys, v.now) {
        Ok(p) => Arc::new(p),
        Err(TokenFault::UnknownKey) => {
            // Perhaps the issuer rotated: ask for an early refetch (rate-limited by the store).
            if let Some(live) = live {
                live.refetch();
            }
            return Err(invalid(TokenFault::UnknownKey));
        }
        Err(f) => return Err(invalid(f)),
    };
    if let (Some(h), Some(exp)) = (hash, principal.expires_at) {
        // The kid of the key that verified it (a kid-less token may have used a named key).
        let kid = keys
            .find(unverified.kid.as_deref(), unverified.alg)
            .and_then(|k| k.kid.as_deref())
            .map(Box::from);
        v.cache.insert(
            h,
            Entry {
                principal: principal.clone(),
                issuer: issuer.rules.name.clone(),
                fingerprint: issuer.fingerprint,
                kid,
                expires_at: exp,
            },
            v.now,
        );
    }
    Ok(principal)
}

/// The issuer whose rules apply: the route's only one, or the one whose `iss` the (not yet
/// verified) payload names. The choice only picks which rules and keys verify the token.
fn pick_issuer<'a>(rule: &'a AuthRule, token: &str) -> Result<&'a Arc<Issuer>, Rejection> {
    let unknown = Rejection::Unauthorized(AuthFault::UnknownIssuer);
    match rule.issuers.as_slice() {
        [] => Err(unknown),
        [only] => Ok(only),
        many => {
            let iss = unverified_issuer(token).ok_or(Rejection::Unauthorized(AuthFault::Token(
                TokenFault::Malformed,
            )))?;
            many.iter().find(|is| is.rules.issuer == iss).ok_or(unknown)
        }
    }
}

fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// Whether the key that verified a cached token is still published.
fn key_present(keys: &KeyStore, issuer: &Issuer, kid: Option<&str>) -> bool {
    match &issuer.keys {
        KeySource::Hmac(_) => true,
        KeySource::Jwks(src) => keys
            .get(&src.id)
            .and_then(|l| l.keys())
            .is_some_and(|set: Arc<KeySet>| set.contains(kid)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_access_token_parameter_is_a_query_token() {
        let uri: Uri = "/p?a=1&access_token=abc&b".parse().unwrap();
        assert_eq!(query_token(&uri), Some("abc"));
        let uri: Uri = "/p?xaccess_token=abc".parse().unwrap();
        assert_eq!(query_token(&uri), None);
        let uri: Uri = "/p".parse().unwrap();
        assert_eq!(query_token(&uri), None);
    }

    /// Found by the `bearer` fuzz target: with a good key in the first of two key headers the
    /// caller was accepted and the second header ignored.
    #[test]
    fn two_api_key_headers_are_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let (key, hash) = crate::identity::apikey::generate();
        std::fs::write(
            dir.path().join("keys.yaml"),
            format!("keys:\n  - id: k\n    hash: {hash}\n    tenant: t1\n"),
        )
        .unwrap();
        let yaml = "version: 1\nupstream: {url: http://127.0.0.1:9}\nidentity:\n  api_keys: {file: keys.yaml}\nroutes:\n  - name: api\n    auth: {require: required, api_keys: true}\n";
        let policy =
            crate::policy::compile::compile_sources(&[(dir.path().join("p.yaml"), yaml.into())])
                .unwrap();
        let keys = KeyStore::new(crate::telemetry::Metrics::new().jwks);
        let counter = || prometheus::IntCounter::new("c", "c").unwrap();
        let cache = TokenCache::new(
            10,
            counter(),
            counter(),
            prometheus::IntGauge::new("g", "g").unwrap(),
        );
        let v = Verifier {
            policy: &policy,
            keys: &keys,
            cache: &cache,
            now: 0,
        };
        let rule = &policy.routes[0].auth;
        let uri: Uri = "/p".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-api-key", key.parse().unwrap());
        assert!(matches!(
            authenticate(&v, rule, &headers, &uri),
            Ok(Some(_))
        ));
        headers.append("x-api-key", "".parse().unwrap());
        assert_eq!(
            authenticate(&v, rule, &headers, &uri).unwrap_err(),
            Rejection::Unauthorized(AuthFault::AmbiguousCredentials)
        );
    }
}
