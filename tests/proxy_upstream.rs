//! Upstream resilience with real sockets: upstreams that hang, reset, answer garbage, send an
//! oversized head or an endless body; the circuit breaker, retries within their budget, load
//! shedding, the request-body timeout, named and https upstreams, connection reuse, and policies
//! that name an unknown upstream or an unreadable CA bundle.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{eventually, start, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A policy with one catch-all route to `FAKE`; `EXTRA` lines go under `upstream:`.
const POLICY: &str = r#"
version: 1
upstream:
  url: FAKE
  idle_timeout: 1s
  request_timeout: 3s
EXTRA
routes:
  - name: all
    match: { path: { prefix: / } }
"#;

fn policy(fake: SocketAddr, extra: &str) -> String {
    POLICY
        .replace("FAKE", &format!("http://{fake}"))
        .replace("EXTRA", extra)
}

/// A raw TCP upstream on 127.0.0.1:0 that hands every connection to `serve`.
async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

/// Reads a request head (up to the blank line).
async fn read_head(tcp: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// An HTTP upstream answering every request with `status`, counting requests by method.
struct Counting {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Counting {
    async fn start(status: u16) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let rec = seen.clone();
        tokio::spawn(serve_http(listener, move |req: Request<Incoming>| {
            rec.lock().unwrap().push(req.method().to_string());
            async move {
                let _ = req.into_body().collect().await;
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(b"answer")))
                    .unwrap()
            }
        }));
        Counting { addr, seen }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn serve_http<F, Fut>(listener: TcpListener, f: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    while let Ok((tcp, _)) = listener.accept().await {
        let f = f.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let f = f.clone();
                async move { Ok::<_, Infallible>(f(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn get(p: &Running, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = p.client(false).get(p.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_hanging_upstream_gets_504_at_the_idle_timeout() {
    let fake = raw_upstream(|mut tcp| async move {
        read_head(&mut tcp).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(tcp);
    })
    .await;
    let p = start(&policy(fake, "")).await;
    let t = Instant::now();
    let (status, _, body) = get(&p, "/hang").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream-timeout"), "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "answered at the 1s idle timeout, well before the upstream gives up"
    );
    assert_eq!(
        p.metric(r#"ward_upstream_events_total{event="timeout",upstream="default"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_reset_mid_response_ends_the_answer_and_the_proxy_keeps_serving() {
    let fake = raw_upstream(|mut tcp| async move {
        let head = read_head(&mut tcp).await;
        if head.starts_with(b"GET /ok") {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            return;
        }
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial")
            .await;
        drop(tcp); // closed before the promised length
    })
    .await;
    let p = start(&policy(fake, "")).await;
    let r = p.client(false).get(p.url("/reset")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the head had arrived");
    let body = tokio::time::timeout(Duration::from_secs(10), r.bytes())
        .await
        .expect("the cut answer ends instead of hanging");
    assert!(
        body.is_err(),
        "the client sees a truncated body, not a complete one"
    );
    assert_eq!(get(&p, "/ok").await.0, 200, "the proxy keeps serving");
}

#[tokio::test]
async fn a_garbage_response_gets_502() {
    let fake = raw_upstream(|mut tcp| async move {
        read_head(&mut tcp).await;
        let _ = tcp
            .write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n\x00\x01garbage")
            .await;
    })
    .await;
    let p = start(&policy(fake, "")).await;
    let t = Instant::now();
    let (status, _, body) = get(&p, "/").await;
    assert_eq!(status, 502, "{body}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        p.metric(r#"ward_upstream_events_total{event="bad_response",upstream="default"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_oversized_response_head_gets_502() {
    let fake = raw_upstream(|mut tcp| async move {
        read_head(&mut tcp).await;
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..2000 {
            head.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(100)).as_bytes());
        }
        head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        let _ = tcp.write_all(&head).await;
    })
    .await;
    let p = start(&policy(fake, "")).await;
    let (status, _, body) = get(&p, "/").await;
    assert_eq!(status, 502, "a 200 KB head is refused: {body}");
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_request_deadline() {
    let fake = raw_upstream(|mut tcp| async move {
        read_head(&mut tcp).await;
        if tcp
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
        while tcp.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await;
    let p = start(&policy(fake, "")).await;
    let t = Instant::now();
    let mut r = p.client(false).get(p.url("/endless")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut received = 0usize;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(20), r.chunk()).await {
            Err(_) => panic!("the endless body was not cut"),
            Ok(Ok(Some(c))) => received += c.len(),
            Ok(Ok(None)) => break "complete",
            Ok(Err(_)) => break "cut",
        }
    };
    assert_eq!(ended, "cut", "after {received} bytes");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "cut at the 3s request timeout"
    );
}

#[tokio::test]
async fn the_breaker_opens_on_a_down_upstream_answers_503_at_once_and_closes_after_probes() {
    // A free port with nothing listening: connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let p = start(&policy(
        addr,
        "  breaker: { failure_ratio: 0.5, window: 30s, min_requests: 4, open_for: 1s, probes: 2 }",
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(get(&p, "/").await.0, 502, "refused connections");
    }
    let breaker = r#"ward_upstream_breaker_state{upstream="default"}"#;
    assert_eq!(p.metric(breaker).await, 1.0, "open");
    let t = Instant::now();
    let (status, headers, body) = get(&p, "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream-circuit-open"), "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert!(t.elapsed() < Duration::from_millis(900), "at once");

    // The upstream comes back on the same port.
    let listener = TcpListener::bind(addr).await.unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let s = served.clone();
    tokio::spawn(serve_http(listener, move |_req| {
        s.fetch_add(1, Ordering::SeqCst);
        async { Response::new(Full::new(Bytes::from_static(b"back"))) }
    }));
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&p, "/").await.0 == 200
        })
        .await,
        "a probe goes through once open_for has passed"
    );
    assert_eq!(get(&p, "/").await.0, 200);
    assert_eq!(p.metric(breaker).await, 0.0, "closed after two good probes");
    assert!(
        p.metric(r#"ward_upstream_events_total{event="breaker_open",upstream="default"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn retries_only_idempotent_requests_and_stay_within_the_budget() {
    let up = Counting::start(503).await;
    let p = start(&policy(
        up.addr,
        "  retries: { attempts: 3, backoff: 1ms, max_backoff: 2ms, budget: 0.2 }",
    ))
    .await;
    let c = p.client(false);
    for _ in 0..10 {
        let r = c.post(p.url("/pay")).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 503);
    }
    assert_eq!(
        up.count(),
        10,
        "a POST without Idempotency-Key is never retried"
    );
    let r = c
        .post(p.url("/pay"))
        .header("idempotency-key", "k-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "the upstream's last answer");
    assert_eq!(up.count(), 13, "a POST with Idempotency-Key: 3 attempts");
    for _ in 0..20 {
        assert_eq!(get(&p, "/").await.0, 503);
    }
    // 31 requests earned 6.2 retries; 2 were spent on the POST, 4 are left for the GETs.
    assert_eq!(
        up.count(),
        13 + 20 + 4,
        "retries never exceed 20% of requests"
    );
    let retries = r#"ward_upstream_events_total{event="retry",upstream="default"}"#;
    assert_eq!(p.metric(retries).await, 6.0);
    assert!(
        p.metric(
            r#"ward_upstream_events_total{event="retry_budget_exhausted",upstream="default"}"#
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn requests_over_max_concurrent_are_shed_at_once() {
    let p = start(&support::BASIC.replace(
        "  request_timeout: 5s",
        "  request_timeout: 5s\n  max_concurrent: 2",
    ))
    .await;
    let slow = |p: &Running| {
        p.client(false)
            .get(p.url("/slow"))
            .header("x-delay-ms", "1200")
            .send()
    };
    let a = tokio::spawn(slow(&p));
    let b = tokio::spawn(slow(&p));
    let in_flight = r#"ward_upstream_in_flight{upstream="default"}"#;
    assert!(
        eventually(Duration::from_secs(5), || async {
            p.metric(in_flight).await == 2.0
        })
        .await
    );
    let t = Instant::now();
    let (status, headers, body) = get(&p, "/third").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream-overloaded"), "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "not queued behind the slow ones"
    );
    assert_eq!(a.await.unwrap().unwrap().status(), 200);
    assert_eq!(b.await.unwrap().unwrap().status(), 200);
    assert!(
        p.upstream
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.path == "/slow"),
        "the shed request never reached the upstream"
    );
    assert_eq!(
        p.metric(r#"ward_upstream_events_total{event="shed",upstream="default"}"#)
            .await,
        1.0
    );
    assert_eq!(p.metric(in_flight).await, 0.0, "places are given back");
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_the_upstream_exchange_is_abandoned() {
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let fake = raw_upstream(move |mut tcp| {
        let closed = closed_tx.clone();
        async move {
            // Read everything until ward closes the connection; report how much arrived.
            let mut got = 0;
            let mut buf = [0u8; 4096];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            let _ = closed.send(got);
        }
    })
    .await;
    let p = start(
        &policy(fake, "  body_timeout: 500ms")
            .replace("request_timeout: 3s", "request_timeout: 30s"),
    )
    .await;
    let mut tls = p.tls_connect(&[b"http/1.1"]).await;
    tls.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let t = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            other => panic!("no answer to the stalled upload: {other:?}"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "cut at the 500ms body timeout, not the 30s request timeout"
    );
    let got = tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
        .await
        .expect("ward closes the upstream connection")
        .unwrap();
    assert!(
        got > 0,
        "the head had gone upstream before the body stalled"
    );
    assert_eq!(
        p.metric(r#"ward_upstream_events_total{event="body_timeout",upstream="default"}"#)
            .await,
        1.0
    );
}

/// An HTTPS upstream with its own test CA on 127.0.0.1:0; records the SNI name of each handshake.
async fn tls_upstream(pki: &support::Pki) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let (cert, key) = pki.leaf("upstream");
    use rustls_pki_types::pem::PemObject;
    let certs = vec![rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(ward::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let names: Arc<Mutex<Vec<String>>> = Arc::default();
    let rec = names.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let rec = rec.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                rec.lock()
                    .unwrap()
                    .push(tls.get_ref().1.server_name().unwrap_or("-").to_owned());
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"over tls"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, names)
}

#[tokio::test]
async fn a_named_https_upstream_is_reached_with_the_policy_ca_and_sni() {
    let upstream_pki = support::Pki::new();
    let (addr, names) = tls_upstream(&upstream_pki).await;
    let other_ca = support::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("upstream-ca.pem"), &upstream_pki.ca_pem).unwrap();
    std::fs::write(dir.path().join("other-ca.pem"), &other_ca.ca_pem).unwrap();
    let template = format!(
        r#"
version: 1
upstream:
  url: UPSTREAM
upstreams:
  secure:
    url: https://127.0.0.1:{port}
    tls: {{ ca_bundle: {dir}/upstream-ca.pem, server_name: localhost }}
  untrusted:
    url: https://127.0.0.1:{port}
    tls: {{ ca_bundle: {dir}/other-ca.pem, server_name: localhost }}
routes:
  - name: secure
    match: {{ path: {{ prefix: /secure }} }}
    upstream: {{ name: secure }}
  - name: untrusted
    match: {{ path: {{ prefix: /untrusted }} }}
    upstream: {{ name: untrusted }}
  - name: plain
    match: {{ path: {{ prefix: / }} }}
"#,
        port = addr.port(),
        dir = dir.path().display()
    );
    let p = start(&template).await;
    let (status, _, body) = get(&p, "/secure/x").await;
    assert_eq!((status, body.as_str()), (200, "over tls"));
    assert_eq!(
        names.lock().unwrap().as_slice(),
        ["localhost"],
        "SNI from server_name"
    );
    let (status, _, _) = get(&p, "/untrusted/x").await;
    assert_eq!(
        status, 502,
        "a certificate outside the named CA bundle is refused"
    );
    assert_eq!(
        get(&p, "/plain").await.0,
        200,
        "the default upstream still serves the rest"
    );
    assert_eq!(p.upstream.count(), 1);

    let (_, explain) = explain(&p.policy_path, "/secure/x");
    assert!(
        explain.contains("upstream: secure (https://127.0.0.1:"),
        "{explain}"
    );
    assert!(explain.contains("SNI localhost"), "{explain}");
}

fn explain(policy: &std::path::Path, path: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args([
            "explain",
            &policy.display().to_string(),
            "GET",
            &format!("https://localhost{path}"),
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn check(policy: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["check", &path.display().to_string()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_refuses_an_unknown_upstream_and_an_unreadable_ca_bundle() {
    let (ok, out) = check(
        "version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: a\n    upstream: {name: nope}\n",
    );
    assert!(!ok);
    assert!(
        out.contains(
            "policy.yaml: routes[0].upstream.name: unknown upstream `nope` (known: default)"
        ),
        "{out}"
    );
    let (ok, out) = check(
        "version: 1\nupstreams:\n  bank:\n    url: https://bank.example\n    tls: {ca_bundle: /nonexistent/ca.pem}\nroutes:\n  - name: a\n    upstream: {name: bank}\n",
    );
    assert!(!ok);
    assert!(
        out.contains("policy.yaml: upstreams.bank.tls.ca_bundle: cannot read /nonexistent/ca.pem"),
        "{out}"
    );
    let (ok, out) = check(
        "version: 1\nupstream:\n  url: http://127.0.0.1:9\n  retries: {attempts: 3, budget: 0.2}\n  breaker: {failure_ratio: 0.5}\nroutes:\n  - name: a\n",
    );
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_reload_naming_an_unknown_upstream_keeps_the_last_good_policy() {
    let p = start(support::BASIC).await;
    p.write_policy(&format!(
        "{}    upstream: {{ name: missing }}\n",
        support::BASIC
    ));
    p.reload();
    let errors = r#"ward_policy_reloads_total{result="error"}"#;
    assert!(
        eventually(Duration::from_secs(10), || async {
            p.metric(errors).await >= 1.0
        })
        .await
    );
    let (_, policy) = p.admin_get("/policy").await;
    assert!(policy.contains("unknown upstream `missing`"), "{policy}");
    assert_eq!(get(&p, "/still").await.0, 200);
}

#[tokio::test]
async fn upstream_connections_are_reused_and_one_closed_while_idle_is_replaced() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    // Keep-alive without a word of its limits: after answering `/once`, the upstream closes that
    // connection 100 ms later, while it waits idle in ward's pool.
    let fake = raw_upstream(move |mut tcp| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            loop {
                let head = read_head(&mut tcp).await;
                if head.is_empty() {
                    return;
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if tcp.write_all(answer).await.is_err() {
                    return;
                }
                if head.starts_with(b"GET /once ") {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return;
                }
            }
        }
    })
    .await;
    let p = start(&policy(fake, "")).await;
    for i in 0..5 {
        let (status, _, body) = get(&p, "/a").await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "five requests in turn share one upstream connection"
    );
    assert_eq!(get(&p, "/once").await.0, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A POST is never retried by policy; one that found its pooled connection closed was never
    // sent, so it goes out on a new connection.
    let r = p.client(false).post(p.url("/b")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
