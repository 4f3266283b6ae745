//! Credential extraction and verification at the edge (`ward::proxy::stage::authn::authenticate`):
//! `Authorization` headers, the `access_token` query parameter and API keys, arbitrary, mixed with
//! real credentials (a token signed with the issuer's secret, the API key of the table).
//!
//! It must never panic; a caller is accepted only with a credential the fixture made (a principal
//! whose subject is that token's `sub`, or the API key's id), never from bytes alone; two
//! credentials are never both used; asking twice (the second time from the verified-token cache)
//! gives the same answer.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use ward::identity::AuthMethod;
use ward::keystore::KeyStore;
use ward::policy::Policy;
use ward::proxy::stage::authn::{authenticate, Verifier};
use ward::proxy::token_cache::TokenCache;
use ward_fuzz::{fixture, sign_hs256, NOW};

const POLICY: &str = r#"
version: 1
upstream: { url: "http://127.0.0.1:9" }
identity:
  issuers:
    - name: hs
      issuer: https://issuer.fuzz
      audiences: [api]
      algorithms: [HS256]
      hmac: { secret_env: WARD_FUZZ_HMAC_SECRET }
      leeway: 30s
    - name: hs2
      issuer: https://second.fuzz
      audiences: [api]
      algorithms: [HS256]
      hmac: { secret_file: jwt.secret }
  api_keys: { file: keys.yaml }
routes:
  - name: one
    match: { path: { prefix: /one } }
    auth: { require: required, issuers: [hs] }
  - name: both
    match: { path: { prefix: /both } }
    auth: { require: required, issuers: [hs, hs2], token_in_query: true, api_keys: true }
  - name: optional
    match: { path: { prefix: / } }
    auth: { require: optional, issuers: [hs, hs2], api_keys: true }
"#;

#[derive(Debug, Arbitrary)]
enum Part {
    /// Bytes of the input's choosing.
    Raw(Vec<u8>),
    /// A token signed with the issuers' secret, for `sub`, `iss` (one of two) and `exp`.
    Token { sub: String, second_issuer: bool, exp: i8 },
    /// The table's API key.
    ApiKey,
}

#[derive(Debug, Arbitrary)]
struct Input {
    route: u8,
    /// Header name (by index: authorization, x-api-key, cookie) and value.
    headers: Vec<(u8, Option<String>, Part)>,
    /// Placed as `?<prefix>access_token=<part>` when present.
    query: Option<(String, Part)>,
}

struct World {
    policy: Policy,
    keys: KeyStore,
    cache: TokenCache,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = &fixture().dir;
        let policy = ward::policy::compile::compile_sources(&[(dir.join("bearer.yaml"), POLICY.into())])
            .expect("the bearer target's policy compiles");
        let m = ward::telemetry::Metrics::new();
        let cache = TokenCache::new(
            1000,
            prometheus::IntCounter::new("h", "h").unwrap(),
            prometheus::IntCounter::new("m", "m").unwrap(),
            prometheus::IntGauge::new("s", "s").unwrap(),
        );
        World { policy, keys: KeyStore::new(m.jwks), cache }
    })
}

/// The bytes of a part, and the subject it may prove.
fn render(part: &Part) -> (Vec<u8>, Option<String>) {
    match part {
        Part::Raw(b) => (b.clone(), None),
        Part::Token { sub, second_issuer, exp } => {
            let iss = if *second_issuer { "https://second.fuzz" } else { "https://issuer.fuzz" };
            let claims = serde_json::json!({"iss": iss, "aud": "api", "sub": sub, "exp": NOW + i64::from(*exp)});
            let t = sign_hs256(r#"{"alg":"HS256","typ":"JWT"}"#, &claims.to_string());
            (t.into_bytes(), Some(sub.clone()))
        }
        Part::ApiKey => (fixture().api_key.clone().into_bytes(), Some("fuzz-key".into())),
    }
}

fuzz_target!(|input: Input| {
    let w = world();
    let i = usize::from(input.route) % 3;
    let (name, path) = [("one", "/one"), ("both", "/both"), ("optional", "/other")][i];
    let route = w.policy.routes.iter().find(|r| &*r.name == name).expect("a route");
    let mut proven = Vec::new();
    let mut headers = HeaderMap::new();
    for (name, scheme, part) in &input.headers {
        let name = ["authorization", "x-api-key", "cookie"][usize::from(*name) % 3];
        let (mut bytes, subject) = render(part);
        if let Some(s) = scheme {
            let mut b = s.clone().into_bytes();
            b.extend_from_slice(&bytes);
            bytes = b;
        }
        let Ok(value) = HeaderValue::from_bytes(&bytes) else { continue };
        headers.append(HeaderName::from_static(name), value);
        proven.extend(subject);
    }
    let mut uri = path.to_owned();
    if let Some((prefix, part)) = &input.query {
        let (bytes, subject) = render(part);
        uri = format!("{path}?{prefix}access_token={}", String::from_utf8_lossy(&bytes));
        proven.extend(subject);
    }
    let Ok(uri) = uri.parse::<Uri>() else { return };
    let v = Verifier { policy: &w.policy, keys: &w.keys, cache: &w.cache, now: NOW };
    let first = authenticate(&v, &route.auth, &headers, &uri);
    let again = authenticate(&v, &route.auth, &headers, &uri);
    assert_eq!(
        first.as_ref().map(|p| p.as_deref().cloned()).map_err(|r| format!("{r:?}")),
        again.as_ref().map(|p| p.as_deref().cloned()).map_err(|r| format!("{r:?}")),
        "the cached answer differs"
    );
    if let Ok(Some(p)) = first {
        assert!(
            proven.iter().any(|s| *s == p.subject),
            "a caller {:?} accepted without a credential that proves it",
            p.subject
        );
        if let AuthMethod::ApiKey { id } = &p.method {
            assert_eq!(&**id, "fuzz-key");
        }
        // Exactly one credential was present: more is ambiguous and must be refused.
        let query_tokens = uri.query().map_or(0, |q| {
            q.split('&').filter(|p| p.split_once('=').unwrap_or((p, "")).0 == "access_token").count()
        });
        let api_keys = if route.auth.api_keys { headers.get_all("x-api-key").iter().count() } else { 0 };
        let count = headers.get_all("authorization").iter().count() + query_tokens + api_keys;
        assert_eq!(count, 1, "a caller accepted from {count} credentials");
    }
});
