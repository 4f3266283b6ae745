//! CORS answered at the proxy.

mod support;

use support::start;

const POLICY: &str = r#"
version: 1
upstream: { url: UPSTREAM }
routes:
  - name: api
    match: { path: { prefix: /v1 } }
    limits: { methods: [GET, POST] }
    cors:
      allow_origins: ["https://app.example.com", "https://*.shop.example.com"]
      allow_methods: [GET, POST]
      allow_headers: [Authorization, Content-Type]
      expose_headers: [X-Request-Id]
      allow_credentials: true
      max_age: 5m
"#;

#[tokio::test]
async fn allowed_preflight_is_answered_at_the_proxy() {
    let p = start(POLICY).await;
    let r = p
        .client(false)
        .request(reqwest::Method::OPTIONS, p.url("/v1/payments"))
        .header("origin", "https://eu.shop.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(
        h["access-control-allow-origin"],
        "https://eu.shop.example.com"
    );
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "300");
    assert!(h["vary"].to_str().unwrap().contains("Origin"));
    assert_eq!(p.upstream.count(), 0, "preflights never reach the upstream");
}

#[tokio::test]
async fn disallowed_preflight_is_403_without_cors_headers() {
    let p = start(POLICY).await;
    let c = p.client(false);
    for (origin, method, headers) in [
        ("https://evil.example.net", "POST", ""),
        ("https://app.example.com", "DELETE", ""),
        ("https://app.example.com", "POST", "x-secret"),
        ("https://a.b.shop.example.com", "GET", ""),
    ] {
        let mut req = c
            .request(reqwest::Method::OPTIONS, p.url("/v1/payments"))
            .header("origin", origin)
            .header("access-control-request-method", method);
        if !headers.is_empty() {
            req = req.header("access-control-request-headers", headers);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "{origin} {method} {headers}");
        assert!(
            r.headers()
                .keys()
                .all(|k| !k.as_str().starts_with("access-control-")),
            "{:?}",
            r.headers()
        );
    }
    assert_eq!(p.upstream.count(), 0);
}

#[tokio::test]
async fn actual_requests_get_cors_headers_only_for_allowed_origins() {
    let p = start(POLICY).await;
    let c = p.client(true);
    let ok = c
        .get(p.url("/v1/payments"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        ok.headers()["access-control-expose-headers"],
        "x-request-id"
    );
    assert_eq!(ok.headers()["vary"], "Origin");
    let bad = c
        .get(p.url("/v1/payments"))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 200);
    assert!(bad.headers().get("access-control-allow-origin").is_none());
    assert_eq!(bad.headers()["vary"], "Origin");
}
