//! Transport: slow clients, connection caps, HTTP/2 abuse, drain, admin and redirect listeners.

mod support;

use std::time::Duration;

use support::{eventually, start, start_with, Options, BASIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn slowloris_header_timeout_closes_the_connection() {
    let p = start(BASIC).await;
    let mut tls = p.tls_connect(&[b"http/1.1"]).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    // header_read_timeout is 1s; the bound here only keeps a broken build from hanging the suite.
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .expect("the proxy closed the slow connection");
    // Closed at the header deadline without a word: no response bytes, and no TLS close_notify.
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
        Ok(n) => panic!(
            "expected the connection to be closed, read {n} bytes: {}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
    assert_eq!(p.upstream.count(), 0);
    assert_eq!(
        p.status(false, "/ok").await,
        200,
        "other clients are served"
    );
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let p = start(&BASIC.replace(
        "  header_read_timeout: 1s",
        "  header_read_timeout: 5s\n  max_connections: 2",
    ))
    .await;
    let _a = p.tls_connect(&[b"http/1.1"]).await;
    let _b = p.tls_connect(&[b"http/1.1"]).await;
    let mut cfg = rustls::ClientConfig::builder_with_provider(ward::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(p.pki.root_store())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let third = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await;
    let refused = third.expect_err("the third connection is refused");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionReset,
        "closed at accept, before any TLS: {refused}"
    );
    let (_, m) = p.admin_get("/metrics").await;
    assert!(
        m.contains(r#"ward_connections_refused_total{reason="max_connections"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn oversized_http2_header_lists_end_only_the_offender() {
    let p = start(BASIC).await;
    let bad = p
        .client(true)
        .get(p.url("/big"))
        .header("x-big", "v".repeat(80 * 1024))
        .send()
        .await;
    assert_eq!(
        bad.expect("the proxy answers the stream").status(),
        431,
        "the oversized header list is refused on its stream"
    );
    assert_eq!(
        p.client(true)
            .get(p.url("/fine"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(p.upstream.count(), 1);
}

#[tokio::test]
async fn http2_rapid_reset_ends_the_offending_connection_only() {
    let p = start(BASIC).await;
    let tls = p.tls_connect(&[b"h2"]).await;
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let mut refused = false;
    for _ in 0..500 {
        let req = http::Request::builder()
            .uri(p.url("/slow"))
            .header("x-delay-ms", "2000")
            .body(())
            .unwrap();
        match client.send_request(req, true) {
            Ok((resp, _)) => drop(resp), // dropping the response future resets the stream
            Err(_) => {
                refused = true;
                break;
            }
        }
        match tokio::time::timeout(Duration::from_millis(5), client.clone().ready()).await {
            Ok(Ok(c)) => client = c,
            Ok(Err(_)) => {
                refused = true;
                break;
            }
            Err(_) => {}
        }
    }
    let ended = refused
        || tokio::time::timeout(Duration::from_secs(5), conn_task)
            .await
            .is_ok();
    assert!(ended, "the resetting connection was ended (GOAWAY)");
    assert_eq!(p.status(true, "/fine").await, 200, "others are served");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_turns_readiness_off() {
    let mut p = start_with(
        BASIC,
        Options {
            redirect: false,
            drain_timeout: Duration::from_secs(10),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    let c = p.client(false);
    let url = p.url("/slow");
    let in_flight = tokio::spawn(async move {
        c.get(url)
            .header("x-delay-ms", "1500")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(eventually(Duration::from_secs(5), || async { p.upstream.count() == 1 }).await);
    p.shutdown();
    assert!(
        eventually(Duration::from_secs(2), || async {
            p.admin_get("/readyz").await.0 == 503
        })
        .await,
        "readyz turns 503 while draining"
    );
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the in-flight request completes"
    );
    tokio::time::timeout(Duration::from_secs(10), &mut p.task)
        .await
        .expect("run returns after the drain")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(p.addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn admin_port_serves_metrics_health_and_policy() {
    let p = start(BASIC).await;
    p.client(false).get(p.url("/m")).send().await.unwrap();
    let (s, m) = p.admin_get("/metrics").await;
    assert_eq!(s, 200);
    for want in [
        r#"ward_requests_total{route="all",status="2xx"} 1"#,
        "ward_request_duration_seconds_bucket{route=\"all\"",
        "ward_upstream_duration_seconds_bucket{route=\"all\"",
        r#"ward_rate_limit_decisions_total{decision="allowed",limit="per_ip"} 1"#,
        "ward_open_connections",
        "ward_policy_info{hash=",
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }
    assert_eq!(p.admin_get("/healthz").await.0, 200);
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    let (_, policy) = p.admin_get("/policy").await;
    let v: serde_json::Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(v["hash"].as_str().unwrap().len(), 64);
    assert_eq!(v["routes"], serde_json::json!(["health", "all"]));
    assert_eq!(v["sources"][0], p.policy_path.display().to_string());
}

#[tokio::test]
async fn readyz_is_503_when_the_upstream_is_unreachable() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let p = start(&BASIC.replace("url: UPSTREAM", &format!("url: http://{addr}"))).await;
    let (s, body) = p.admin_get("/readyz").await;
    assert_eq!(s, 503);
    assert!(body.contains("upstream unreachable"));
}

#[tokio::test]
async fn plain_http_listener_only_redirects_and_answers_health() {
    let p = start_with(
        BASIC,
        Options {
            redirect: true,
            ..Options::default()
        },
    )
    .await;
    let plain = p.redirect.unwrap();
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let r = c
        .get(format!("http://{plain}/v1/payments?x=1"))
        .header("host", "pay.example.com:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://pay.example.com:{}/v1/payments?x=1", p.addr.port()).as_str()
    );
    assert_eq!(
        c.get(format!("http://{plain}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(p.upstream.count(), 0);
}

/// One raw HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn http2_continuation_flood_ends_the_offending_connection_only() {
    let p = start(BASIC).await;
    let mut tls = p.tls_connect(&[b"h2"]).await;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&h2_frame(0x4, 0, 0, &[])).await.unwrap();
    // HEADERS without END_HEADERS: :method GET, :scheme https, :path /, then a literal header
    // whose value never ends; CONTINUATION frames keep feeding it.
    let mut block = vec![
        0x82, 0x87, 0x84, 0x40, 0x03, b'x', b'-', b'a', 0x7f, 0xff, 0xff, 0x3f,
    ];
    block.extend(std::iter::repeat_n(b'a', 1024));
    tls.write_all(&h2_frame(0x1, 0x0, 1, &block)).await.unwrap();
    let chunk = vec![b'a'; 16 * 1024];
    let mut sent = 0usize;
    let mut ended = false;
    // Bounded: at most 8 MiB of CONTINUATION frames, far past the 64 KiB header-list limit.
    for _ in 0..512 {
        if tls.write_all(&h2_frame(0x9, 0x0, 1, &chunk)).await.is_err() {
            ended = true;
            break;
        }
        sent += chunk.len();
    }
    if !ended {
        // The proxy may have answered with GOAWAY and closed; read until end of stream.
        let mut buf = vec![0u8; 64 * 1024];
        ended = loop {
            match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
    }
    assert!(
        ended,
        "the connection survived {sent} bytes of CONTINUATION frames"
    );
    assert_eq!(p.upstream.count(), 0);
    assert_eq!(p.status(true, "/fine").await, 200, "others are served");
}
