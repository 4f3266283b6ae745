//! Rate limits: exact counts, 429 with Retry-After, the RateLimit header fields, exemptions.

mod support;

use support::start;

const POLICY: &str = r#"
version: 1
upstream: { url: UPSTREAM }
defaults:
  rate_limits:
    - { name: per_ip, key: ip, limit: 100, period: 15m }
routes:
  - name: health
    match: { path: { exact: /healthz } }
    rate_limits: []
  - name: auth
    match: { path: { prefix: /v1/auth } }
    rate_limits:
      - { name: auth_per_ip, key: ip, limit: 5, period: 15m }
  - name: keyed
    match: { path: { prefix: /keyed } }
    rate_limits:
      - { name: per_key, key: "header:X-Api-Key", limit: 2, period: 1m }
  - name: shadow
    match: { path: { prefix: /shadow } }
    rate_limits:
      - { name: shadow_limit, key: ip, limit: 1, period: 1m, mode: shadow }
  - name: rest
    match: { path: { prefix: / } }
"#;

#[tokio::test]
async fn auth_route_allows_exactly_five_then_429_with_retry_after() {
    let p = start(POLICY).await;
    let c = p.client(false);
    for i in 0..5 {
        let r = c.post(p.url("/v1/auth/login")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {}", i + 1);
        assert_eq!(r.headers()["ratelimit-policy"], "\"auth_per_ip\";q=5;w=900");
        assert_eq!(r.headers()["x-ratelimit-limit"], "5");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            (4 - i).to_string().as_str()
        );
        assert!(r.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(&format!("\"auth_per_ip\";r={};t=", 4 - i)));
    }
    let r = c.post(p.url("/v1/auth/login")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (179..=180).contains(&retry),
        "one emission interval (15m / 5): {retry}"
    );
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "urn:ward:problem:rate-limited");
    assert_eq!(p.upstream.count(), 5);
    assert_eq!(
        p.metric(r#"ward_security_events_total{event="rate_limited"}"#)
            .await,
        1.0,
        "a refusal is a security event"
    );
    // The same IP is limited on HTTP/2 too: one counter per key, whatever the protocol.
    assert_eq!(
        p.client(true)
            .post(p.url("/v1/auth/login"))
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    // Another route's limit is separate.
    assert_eq!(
        c.get(p.url("/v1/payments")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn health_route_is_exempt() {
    let p = start(POLICY).await;
    let c = p.client(false);
    for _ in 0..120 {
        let r = c.get(p.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("ratelimit").is_none());
    }
}

#[tokio::test]
async fn default_limit_is_100_per_ip() {
    let p = start(POLICY).await;
    let c = p.client(true);
    for i in 0..100 {
        assert_eq!(
            c.get(p.url("/anything")).send().await.unwrap().status(),
            200,
            "request {}",
            i + 1
        );
    }
    assert_eq!(
        c.get(p.url("/anything")).send().await.unwrap().status(),
        429
    );
}

#[tokio::test]
async fn header_keys_count_separately() {
    let p = start(POLICY).await;
    let c = p.client(false);
    for key in ["a", "b"] {
        for _ in 0..2 {
            assert_eq!(
                c.get(p.url("/keyed"))
                    .header("x-api-key", key)
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
        assert_eq!(
            c.get(p.url("/keyed"))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .status(),
            429
        );
    }
}

#[tokio::test]
async fn shadow_limits_count_but_never_block() {
    let p = start(POLICY).await;
    let c = p.client(false);
    for _ in 0..3 {
        assert_eq!(c.get(p.url("/shadow")).send().await.unwrap().status(), 200);
    }
    let (_, m) = p.admin_get("/metrics").await;
    assert!(
        m.contains(
            r#"ward_rate_limit_decisions_total{decision="shadow_limited",limit="shadow_limit"} 2"#
        ),
        "{m}"
    );
}
