//! Shared by the session tests (`proxy_revocation`, `proxy_sessions`): the policy in front of the
//! bundled payments service, Redis options with a fresh key prefix, and small request helpers.

use serde_json::{json, Value};

use super::{Options, Payments, Running};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// In front of the bundled payments service (`UPSTREAM`): its keys, revocation, refresh single
/// use, lockout and the audit sink.
pub const PAYMENTS: &str = r#"
version: 1
upstream: { url: UPSTREAM, idle_timeout: 5s, request_timeout: 10s }
identity:
  issuers:
    - name: payments
      issuer: ward-payments
      audiences: [ward-api]
      algorithms: [EdDSA]
      jwks: { url: UPSTREAM/.well-known/jwks.json, refresh: 1h, min_refetch: 1s, timeout: 2s }
      claims: { roles: role }
sessions:
  revocation: { on_unsynced: fail_closed, max_token_lifetime: 1h }
  lockout_key: { secret_file: lockout.key }
  events:
    queue: 1000
    sink: { url: UPSTREAM/internal/v1/security-events, token_file: TOKEN_FILE, flush_every: 100ms }
defaults:
  rate_limits: []
routes:
  - name: login
    match: { path: { exact: /v1/auth/login } }
    lockout: { identity: [tenant, email], max_failures: 3, backoff_base: 0s }
  - name: refresh
    match: { path: { exact: /v1/auth/refresh } }
    refresh_token: { json_field: refresh_token, family_header: X-Session-Id }
  - name: auth
    match: { path: { prefix: /v1/auth } }
    auth: { require: optional, issuers: [payments] }
  - name: api
    match: { path: { prefix: /v1 } }
    auth: { require: required, issuers: [payments] }
"#;

pub fn prefix() -> String {
    format!("ward-test-{}", uuid::Uuid::new_v4().simple())
}

pub fn opts_redis(url: &str, prefix: &str) -> Options {
    Options {
        redis: Some((url.to_owned(), prefix.to_owned())),
        admin_token: Some(ADMIN_TOKEN.into()),
        ..Options::default()
    }
}

pub async fn post(p: &Running, path: &str, body: Value, token: Option<&str>) -> reqwest::Response {
    let mut r = p.client(false).post(p.url(path)).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

pub async fn get(p: &Running, path: &str, token: &str) -> reqwest::Response {
    p.client(false)
        .get(p.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

pub async fn login(p: &Running, pay: &Payments) -> (String, String) {
    let r = post(
        p,
        "/v1/auth/login",
        json!({"tenant": pay.setup.tenant, "email": pay.setup.email, "password": pay.setup.password}),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    (
        t["access_token"].as_str().unwrap().to_owned(),
        t["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// The answer is ward's own refusal of a revoked token, not the service's.
pub async fn assert_revoked_at_the_edge(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 401, "{what}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["type"], "urn:ward:problem:invalid-credentials",
        "{what}: refused by ward, not the service: {body}"
    );
}

pub async fn admin(
    p: &Running,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method, format!("http://{}{path}", p.admin))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The Redis keys matching `pattern` (at 127.0.0.1:6379).
pub async fn redis_keys(pattern: &str) -> Vec<String> {
    let out = tokio::process::Command::new("redis-cli")
        .args(["--scan", "--pattern", pattern])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Deletes the Redis keys matching `pattern`: a test's own prefix, at its end.
pub async fn delete_keys(pattern: &str) {
    for key in redis_keys(pattern).await {
        let _ = tokio::process::Command::new("redis-cli")
            .args(["del", &key])
            .output()
            .await;
    }
}
