//! Shared by the identity tests (`proxy_identity`, `proxy_jwks`): a policy with JWKS, HMAC and
//! API-key issuers in front of a recording upstream, and the "refused at the edge" assertion.

use std::time::Duration;

use serde_json::Value;

use super::tokens::{jwks, DocServer, TestKey};
use super::{eventually, start_in, Options, Running, Upstream};

pub const POLICY: &str = r#"
version: 1
upstream: { url: UPSTREAM, idle_timeout: 2s, request_timeout: 5s }
identity:
  issuers:
    - name: test
      issuer: https://issuer.test
      audiences: [payments-api]
      algorithms: [ES256, EdDSA, RS256]
      jwks: { url: JWKS_URL, refresh: 1h, min_refetch: 100ms, timeout: 1s }
      leeway: 30s
    - name: strict
      issuer: https://strict.test
      audiences: [payments-api]
      algorithms: [ES256]
      jwks: { url: JWKS_URL, refresh: 1h, min_refetch: 100ms, timeout: 1s }
      leeway: 0s
  api_keys: { file: keys.yaml }
defaults:
  rate_limits: []
  limits: { max_header_bytes: 32KiB }
routes:
  - name: public
    match: { path: { prefix: /public } }
  - name: admin
    match: { path: { prefix: /admin } }
    auth: { require: required, issuers: [test], roles: [admin] }
  - name: tenants
    match: { path: { prefix: /tenants } }
    auth: { require: required, issuers: [test], tenant: { path_segment: 2 } }
  - name: premium
    match: { path: { prefix: /premium } }
    auth:
      require: required
      issuers: [test]
      claims: [{ claim: plan, one_of: [pro, enterprise] }]
      scopes: [payments:write]
  - name: shadowed
    match: { path: { prefix: /shadow } }
    auth: { require: required, issuers: [test], mode: shadow }
  - name: query
    match: { path: { prefix: /query } }
    auth: { require: required, issuers: [test], token_in_query: true }
  - name: optional
    match: { path: { prefix: /optional } }
    auth: { require: optional, issuers: [test] }
  - name: machines
    match: { path: { prefix: /machines } }
    auth: { require: required, api_keys: true, issuers: [test] }
  - name: short-lived
    match: { path: { prefix: /strict } }
    auth: { require: required, issuers: [strict] }
  - name: api
    match: { path: { prefix: / } }
    auth: { require: required, issuers: [test] }
"#;

pub struct World {
    pub proxy: Running,
    pub jwks: DocServer,
    pub es: TestKey,
    pub ed: TestKey,
    pub api_key: String,
}

pub async fn world_with(jwks_doc: Option<String>, es: TestKey, ed: TestKey) -> World {
    let jwks = DocServer::start(jwks_doc).await;
    let (api_key, hash) = ward::identity::apikey::generate();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.yaml"),
        format!(
            "keys:\n  - id: batch-job\n    hash: {hash}\n    tenant: t-machines\n    roles: [merchant]\n"
        ),
    )
    .unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(
        &policy_path,
        super::render(POLICY, upstream.addr).replace("JWKS_URL", &jwks.url()),
    )
    .unwrap();
    let proxy = start_in(dir, policy_path, upstream, Options::default()).await;
    World {
        proxy,
        jwks,
        es,
        ed,
        api_key,
    }
}

pub async fn world() -> World {
    let (es, ed) = (TestKey::es256("es-1"), TestKey::eddsa("ed-1"));
    let doc = jwks(&[&es, &ed]);
    let w = world_with(Some(doc), es, ed).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            w.proxy.admin_get("/readyz").await.0 == 200
        })
        .await,
        "keys load at start"
    );
    w
}

pub async fn get(w: &World, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = w.proxy.client(false).get(w.proxy.url(path));
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.send().await.expect("the proxy answers")
}

/// A 401 problem from ward itself, and nothing reached the upstream.
pub async fn assert_refused_at_the_edge(
    w: &World,
    resp: reqwest::Response,
    what: &str,
    before: usize,
) {
    assert_eq!(resp.status(), 401, "{what}");
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"))
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["type"] == "urn:ward:problem:invalid-credentials"
            || body["type"] == "urn:ward:problem:authentication-required",
        "{what}: {body}"
    );
    assert_eq!(body["request_id"], id.as_str(), "{what}");
    assert_eq!(
        body.as_object().unwrap().len(),
        4,
        "{what}: no detail: {body}"
    );
    assert_eq!(
        w.proxy.upstream.count(),
        before,
        "{what} reached the upstream"
    );
}
