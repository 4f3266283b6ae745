//! Forwarding, request limits and response hardening over real TLS to a real upstream.

mod support;

use std::time::Duration;

use support::{start, BASIC};

#[tokio::test]
async fn http1_and_http2_are_both_served() {
    let p = start(BASIC).await;
    let r1 = p.client(false).get(p.url("/a")).send().await.unwrap();
    assert_eq!(r1.version(), http::Version::HTTP_11);
    assert_eq!(r1.status(), 200);
    let r2 = p.client(true).get(p.url("/b")).send().await.unwrap();
    assert_eq!(r2.version(), http::Version::HTTP_2);
    assert_eq!(r2.status(), 200);
    assert_eq!(p.upstream.count(), 2);
}

#[tokio::test]
async fn security_headers_are_set_and_leaky_headers_removed() {
    let p = start(BASIC).await;
    for h2 in [false, true] {
        let r = p.client(h2).get(p.url("/x")).send().await.unwrap();
        let h = r.headers();
        assert_eq!(
            h["strict-transport-security"],
            "max-age=63072000; includeSubDomains"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["cache-control"], "no-store");
        assert!(h.get("server").is_none(), "Server leaked: {h:?}");
        assert!(h.get("x-powered-by").is_none());
        assert!(
            h.get("x-hop-secret").is_none(),
            "a header named in Connection must not pass"
        );
    }
}

#[tokio::test]
async fn proxy_errors_are_problem_json_with_security_headers() {
    let p = start(BASIC).await;
    let r = p
        .client(false)
        .request(reqwest::Method::TRACE, p.url("/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "urn:ward:problem:method-not-allowed");
    assert_eq!(body["status"], 405);
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(p.upstream.count(), 0);
}

#[tokio::test]
async fn forwarding_headers_are_set_by_the_proxy_alone() {
    let p = start(BASIC).await;
    let r = p
        .client(false)
        .get(p.url("/fwd"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-request-id", "client-id-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("connection", "x-drop-me")
        .header("x-drop-me", "secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-id-1");
    let seen = p.upstream.last();
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "an untrusted peer's XFF is replaced"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(
        seen.headers["x-forwarded-host"],
        format!("localhost:{}", p.addr.port()).as_str()
    );
    assert_eq!(seen.headers["x-request-id"], "client-id-1");
    assert_eq!(
        seen.headers["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert!(seen.headers.get("x-drop-me").is_none());

    p.client(false)
        .get(p.url("/fwd2"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let seen = p.upstream.last();
    let id = seen.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32, "a malformed id is replaced: {id}");
    let tp = seen.headers["traceparent"].to_str().unwrap();
    assert!(
        tp.starts_with("00-") && tp.len() == 55,
        "a trace is started: {tp}"
    );
}

#[tokio::test]
async fn trusted_proxy_forwarded_for_names_the_client() {
    let policy = BASIC.replace(
        "  header_read_timeout: 1s",
        "  header_read_timeout: 1s\n  trusted_proxies: [127.0.0.0/8]",
    );
    let p = start(&policy).await;
    p.client(false)
        .get(p.url("/t"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    // The upstream gets the client as ward decided it: one address, no chain to walk.
    let seen = p.upstream.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9");
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert!(!seen.headers.contains_key("forwarded"));
}

#[tokio::test]
async fn body_over_limit_with_content_length_is_413_and_never_forwarded() {
    let p = start(BASIC).await;
    for h2 in [false, true] {
        let r = p
            .client(h2)
            .post(p.url("/upload"))
            .body(vec![b'a'; 2048])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
    }
    let ok = p
        .client(false)
        .post(p.url("/upload"))
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(p.upstream.count(), 1);
    assert_eq!(p.upstream.last().body_len, 1024);
}

#[tokio::test]
async fn chunked_body_over_limit_is_413_and_never_forwarded() {
    let p = start(BASIC).await;
    let chunk = "a".repeat(600);
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    let resp = p.raw(req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("urn:ward:problem:body-too-large"));
    // A streamed HTTP/2 body without a length is bounded the same way.
    let stream = futures_util::stream::iter(
        (0..3).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'b'; 600]))),
    );
    let r = p
        .client(true)
        .post(p.url("/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(p.upstream.count(), 0);
    // Within the limit, a chunked body is forwarded whole.
    let small = "POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert!(p.raw(small.as_bytes()).await.starts_with("HTTP/1.1 200"));
    assert_eq!(p.upstream.last().body_len, 5);
}

#[tokio::test]
async fn expect_continue_over_limit_gets_413_before_the_body() {
    let p = start(BASIC).await;
    let resp = p.raw(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(!resp.contains("100 Continue"));
    assert_eq!(p.upstream.count(), 0);
}

#[tokio::test]
async fn long_url_is_414() {
    let p = start(BASIC).await;
    let r = p
        .client(false)
        .get(p.url(&format!("/{}", "a".repeat(300))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 414);
    assert_eq!(p.upstream.count(), 0);
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let p = start(BASIC).await;
    let mut req = p.client(false).get(p.url("/h"));
    for i in 0..25 {
        req = req.header(format!("x-h{i}"), "v");
    }
    assert_eq!(req.send().await.unwrap().status(), 431);
    let big = p
        .client(true)
        .get(p.url("/h"))
        .header("x-big", "v".repeat(9000))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 431);
    assert_eq!(p.upstream.count(), 0);
}

const ROUTES: &str = r#"
version: 1
upstream: { url: UPSTREAM, idle_timeout: 1s, request_timeout: 3s }
routes:
  - name: internal
    match: { path: { prefix: /internal } }
    deny: { status: 404 }
  - name: shadowed
    match: { path: { prefix: /shadow } }
    deny: { mode: shadow }
    limits: { max_body: 10, mode: shadow }
  - name: json
    match: { host: localhost, path: { glob: "/v1/*/payments" }, methods: [POST] }
    limits: { content_types: [application/json] }
  - name: rest
    match: { path: { prefix: / } }
"#;

#[tokio::test]
async fn deny_routes_answer_without_the_upstream() {
    let p = start(ROUTES).await;
    let r = p
        .client(false)
        .get(p.url("/internal/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(p.upstream.count(), 0);
}

#[tokio::test]
async fn content_type_outside_the_route_list_is_415() {
    let p = start(ROUTES).await;
    let bad = p
        .client(false)
        .post(p.url("/v1/acme/payments"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 415);
    let good = p
        .client(false)
        .post(p.url("/v1/acme/payments"))
        .header("content-type", "application/json; charset=utf-8")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    assert_eq!(p.upstream.count(), 1);
}

#[tokio::test]
async fn shadow_rules_forward_and_count_what_they_would_block() {
    let p = start(ROUTES).await;
    let r = p
        .client(false)
        .post(p.url("/shadow/x"))
        .body(vec![b'a'; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "shadow mode never blocks");
    assert_eq!(p.upstream.count(), 1);
    let (_, metrics) = p.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"ward_shadow_blocks_total{route="shadowed",rule="denied"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ward_shadow_blocks_total{route="shadowed",rule="body-too-large"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn slow_upstream_is_504_and_dead_upstream_is_502() {
    let p = start(ROUTES).await;
    let r = p
        .client(false)
        .get(p.url("/slow"))
        .header("x-delay-ms", "2500")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    // Accept, then close at once: a real socket that never answers HTTP.
    tokio::spawn(async move {
        loop {
            let (s, _) = dead.accept().await.unwrap();
            drop(s);
        }
    });
    p.write_policy(&ROUTES.replace("url: UPSTREAM", &format!("url: http://{dead_addr}")));
    let client = p.client(false);
    let changed = support::eventually(Duration::from_secs(5), || async {
        client
            .get(p.url("/y"))
            .send()
            .await
            .map(|r| r.status() == 502)
            .unwrap_or(false)
    })
    .await;
    assert!(changed, "a closed upstream connection gives 502");
}
