//! Sessions at the edge, over real TLS to real proxies, with the real payments service and real
//! Redis: refresh-token single use across two proxies, and lockout with backoff shared by two
//! proxies.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::sessions::*;
use support::{eventually, start_in, start_payments, Options, Running, Upstream};
use ward::state::revocation::Revocations;

// ---- refresh-token single use ----

#[tokio::test]
async fn a_refresh_token_used_twice_at_once_through_two_replicas_succeeds_once_and_revokes_the_session(
) {
    let prefix = prefix();
    let link = Arc::new(
        ward::redis_link::RedisLink::connect(
            "redis://127.0.0.1:6379".parse().unwrap(),
            &prefix,
            ward::telemetry::Metrics::new().redis.clone(),
        )
        .unwrap(),
    );
    let publisher = Revocations::redis(link, ward::telemetry::Metrics::new().revocation.clone());
    let pay = start_payments(Some(publisher)).await;
    let a = pay
        .proxy(PAYMENTS, opts_redis("redis://127.0.0.1:6379", &prefix))
        .await;
    let b = pay
        .proxy(PAYMENTS, opts_redis("redis://127.0.0.1:6379", &prefix))
        .await;
    let (_, refresh) = login(&a, &pay).await;
    let body = json!({"refresh_token": refresh});
    let (ra, rb) = tokio::join!(
        post(&a, "/v1/auth/refresh", body.clone(), None),
        post(&b, "/v1/auth/refresh", body.clone(), None)
    );
    let mut statuses = [ra.status().as_u16(), rb.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 401], "exactly one use succeeds");
    let (ok, refused) = if ra.status() == 200 {
        (ra, rb)
    } else {
        (rb, ra)
    };
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:ward:problem:refresh-token-reused");
    let issued: Value = ok.json().await.unwrap();
    let new_access = issued["access_token"].as_str().unwrap();
    // The whole family is revoked at the edge, the pair just issued included.
    for p in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(2), || async {
                get(p, "/v1/payments", new_access).await.status() == 401
            })
            .await,
            "the session is revoked on every replica"
        );
    }
    // A third use is reuse too.
    let again = post(&b, "/v1/auth/refresh", body, None).await;
    assert_eq!(again.status(), 401);
    assert!(
        a.metric(r#"ward_security_events_total{event="refresh_reuse"}"#)
            .await
            + b.metric(r#"ward_security_events_total{event="refresh_reuse"}"#)
                .await
            >= 2.0
    );
}

/// An upstream that fails the first refresh (503), then accepts.
async fn flaky_refresh_upstream() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let calls = calls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let status = if n == 0 { 503 } else { 200 };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("x-session-id", "family-1")
                                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                        b"{}",
                                    )))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
            });
        }
    });
    addr
}

const REFRESH_ONLY: &str = r#"
version: 1
upstream: { url: UPSTREAM, idle_timeout: 2s, request_timeout: 5s }
sessions:
  revocation: {}
defaults:
  rate_limits: []
routes:
  - name: refresh
    match: { path: { exact: /refresh } }
    refresh_token: { json_field: refresh_token, family_header: X-Session-Id }
  - name: cookie-refresh
    match: { path: { exact: /cookie-refresh } }
    refresh_token: { cookie: rt }
"#;

#[tokio::test]
async fn an_upstream_failure_releases_the_claim_so_an_honest_retry_is_not_theft() {
    let addr = flaky_refresh_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, support::render(REFRESH_ONLY, addr)).unwrap();
    let opts = Options {
        admin_token: Some(ADMIN_TOKEN.into()),
        ..Options::default()
    };
    let p = start_in(dir, path, Upstream::start().await, opts).await;
    let body = json!({"refresh_token": "opaque-refresh-token-1"});
    assert_eq!(
        post(&p, "/refresh", body.clone(), None).await.status(),
        503,
        "the upstream failed"
    );
    assert_eq!(
        post(&p, "/refresh", body.clone(), None).await.status(),
        200,
        "released: the retry is a first use"
    );
    let third = post(&p, "/refresh", body, None).await;
    assert_eq!(third.status(), 401);
    let problem: Value = third.json().await.unwrap();
    assert_eq!(problem["type"], "urn:ward:problem:refresh-token-reused");
    // The family the upstream named when it accepted the token is revoked.
    let (status, list) = admin(&p, reqwest::Method::GET, "/revocations", None).await;
    assert_eq!(status, 200);
    let revoked = &list["revocations"];
    assert_eq!(revoked[0]["kind"], "session", "{list}");
    assert_eq!(revoked[0]["id"], "family-1", "{list}");
    // The time the checks added is measured for the two requests that reached the upstream.
    let count = p
        .metric(r#"ward_session_check_duration_seconds_count{route="refresh"}"#)
        .await;
    assert_eq!(
        count, 2.0,
        "the 503 and the 200; the reused token was refused before"
    );
}

#[tokio::test]
async fn bad_refresh_bodies_get_400_from_ward_and_claim_nothing() {
    let addr = flaky_refresh_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, support::render(REFRESH_ONLY, addr)).unwrap();
    let p = start_in(dir, path, Upstream::start().await, Options::default()).await;
    for (what, body) in [
        ("not JSON", "refresh_token=abc".to_owned()),
        ("no field", r#"{"token":"abc"}"#.to_owned()),
        (
            "the field twice",
            r#"{"refresh_token":"abc","refresh_token":"def"}"#.to_owned(),
        ),
        ("not a string", r#"{"refresh_token":123}"#.to_owned()),
        (
            "over the bound",
            format!(r#"{{"refresh_token":"{}"}}"#, "a".repeat(20_000)),
        ),
    ] {
        let r = p
            .client(false)
            .post(p.url("/refresh"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
    }
    // A cookie-borne token: present once, used once.
    let send = |cookie: &'static str| {
        p.client(false)
            .post(p.url("/cookie-refresh"))
            .header("cookie", cookie)
            .send()
    };
    assert_eq!(send("a=1; rt=cookie-token").await.unwrap().status(), 503);
    assert_eq!(send("rt=cookie-token").await.unwrap().status(), 200);
    assert_eq!(send("rt=cookie-token").await.unwrap().status(), 401);
    assert_eq!(send("a=1").await.unwrap().status(), 400);
}

// ---- lockout ----

/// An upstream login that accepts only the password "right" (401 otherwise), and counts calls.
async fn login_upstream() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let calls = calls.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            use http_body_util::BodyExt;
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let status = if v["password"] == "right" { 200 } else { 401 };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                        b"{\"answer\":\"same for everyone\"}",
                                    )))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
            });
        }
    });
    (addr, counted)
}

const LOGIN: &str = r#"
version: 1
upstream: { url: UPSTREAM, idle_timeout: 2s, request_timeout: 5s }
server:
  trusted_proxies: [127.0.0.1/32]
sessions:
  lockout_key: { secret_file: lockout.key }
defaults:
  rate_limits: []
routes:
  - name: login
    match: { path: { exact: /login } }
    lockout:
      identity: [tenant, email]
      max_failures: 3
      window: 15m
      lock_for: LOCK_FOR
      backoff_base: BACKOFF
      backoff_max: 2s
      per_ip: { max_failures: 5, window: 15m, lock_for: 15m }
"#;

async fn login_replica(
    addr: std::net::SocketAddr,
    redis: Option<(&str, &str)>,
    lock_for: &str,
    backoff: &str,
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    support::write_lockout_key(dir.path());
    let path = dir.path().join("policy.yaml");
    std::fs::write(
        &path,
        support::render(LOGIN, addr)
            .replace("LOCK_FOR", lock_for)
            .replace("BACKOFF", backoff),
    )
    .unwrap();
    let opts = match redis {
        Some((url, prefix)) => opts_redis(url, prefix),
        None => Options {
            admin_token: Some(ADMIN_TOKEN.into()),
            ..Options::default()
        },
    };
    start_in(dir, path, Upstream::start().await, opts).await
}

/// One login attempt from a client IP of the test's choosing (the policy trusts 127.0.0.1 as a
/// proxy, so X-Forwarded-For names the client).
async fn attempt(p: &Running, email: &str, password: &str, ip: &str) -> reqwest::Response {
    p.client(false)
        .post(p.url("/login"))
        .header("x-forwarded-for", ip)
        .header("x-request-id", "fixed-request-id")
        .json(&json!({"tenant": "t1", "email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn lockout_after_n_failures_is_shared_by_two_replicas_and_never_reaches_the_upstream() {
    let (addr, calls) = login_upstream().await;
    let prefix = prefix();
    let a = login_replica(addr, Some(("redis://127.0.0.1:6379", &prefix)), "15m", "0s").await;
    let b = login_replica(addr, Some(("redis://127.0.0.1:6379", &prefix)), "15m", "0s").await;
    for (i, p) in [&a, &b, &a].into_iter().enumerate() {
        assert_eq!(
            attempt(p, "alice@example.com", "wrong", "198.51.100.1")
                .await
                .status(),
            401,
            "failure {i}"
        );
    }
    let before = calls.load(std::sync::atomic::Ordering::SeqCst);
    // The identity is locked on both replicas, whatever the spelling of the email.
    for p in [&b, &a] {
        let r = attempt(p, "  ALICE@example.com ", "right", "198.51.100.2").await;
        assert_eq!(r.status(), 429);
        assert!(
            r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 800
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["type"], "urn:ward:problem:too-many-attempts");
    }
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "a locked login never reaches the upstream"
    );
    // No raw email in Redis: the key is an HMAC.
    let out = tokio::process::Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("{prefix}:lo:*")])
        .output()
        .await
        .unwrap();
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(keys.contains(&format!("{prefix}:lo:{{id:")), "{keys}");
    assert!(!keys.to_lowercase().contains("alice"), "{keys}");
    // The admin API clears it, on every replica.
    let (status, state) = admin(
        &a,
        reqwest::Method::GET,
        "/lockouts?route=login&value=t1&value=alice%40example.com",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(state["locked"], true, "{state}");
    let (status, _) = admin(
        &a,
        reqwest::Method::DELETE,
        "/lockouts?route=login&value=t1&value=alice%40example.com",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        attempt(&b, "alice@example.com", "right", "198.51.100.3")
            .await
            .status(),
        200
    );
    for line in keys.lines().filter(|l| !l.is_empty()) {
        let _ = tokio::process::Command::new("redis-cli")
            .args(["del", line])
            .output()
            .await;
    }
}

#[tokio::test]
async fn a_success_clears_the_failures_the_identity_had() {
    let (addr, _) = login_upstream().await;
    let prefix = prefix();
    let p = login_replica(addr, Some(("redis://127.0.0.1:6379", &prefix)), "15m", "0s").await;
    let id_pattern = format!("{prefix}:lo:{{id:*");
    let id_keys = || redis_keys(&id_pattern);
    for _ in 0..2 {
        let r = attempt(&p, "dave@example.com", "wrong", "198.51.100.1").await;
        assert_eq!(r.status(), 401);
    }
    assert!(!id_keys().await.is_empty(), "two failures are recorded");
    let ok = attempt(&p, "dave@example.com", "right", "198.51.100.1").await;
    assert_eq!(ok.status(), 200);
    // The clear is written once the answer has left.
    assert!(
        eventually(Duration::from_secs(5), || async {
            id_keys().await.is_empty()
        })
        .await,
        "the success cleared the identity's failures"
    );
    // Counting starts afresh: two more failures stay below the three that lock.
    for _ in 0..2 {
        let r = attempt(&p, "dave@example.com", "wrong", "198.51.100.1").await;
        assert_eq!(r.status(), 401);
    }
    let ok = attempt(&p, "dave@example.com", "right", "198.51.100.1").await;
    assert_eq!(
        ok.status(),
        200,
        "not locked: the earlier failures were cleared"
    );
    delete_keys(&format!("{prefix}:*")).await;
}

#[tokio::test]
async fn attempts_are_spaced_by_backoff_and_a_lock_ends_after_its_period() {
    let (addr, _) = login_upstream().await;
    let p = login_replica(addr, None, "1s", "1s").await;
    assert_eq!(
        attempt(&p, "bob@example.com", "wrong", "198.51.100.1")
            .await
            .status(),
        401
    );
    // Too soon after a failure: backoff (1s after the first failure, 2s after the second).
    let early = attempt(&p, "bob@example.com", "wrong", "198.51.100.1").await;
    assert_eq!(early.status(), 429);
    assert_eq!(early.headers()["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(
        attempt(&p, "bob@example.com", "wrong", "198.51.100.1")
            .await
            .status(),
        401,
        "after the backoff"
    );
    let early = attempt(&p, "bob@example.com", "wrong", "198.51.100.1").await;
    assert_eq!(early.status(), 429);
    assert_eq!(early.headers()["retry-after"], "2", "the wait doubled");
    tokio::time::sleep(Duration::from_millis(2050)).await;
    assert_eq!(
        attempt(&p, "bob@example.com", "wrong", "198.51.100.1")
            .await
            .status(),
        401,
        "third failure: locked now"
    );
    assert_eq!(
        attempt(&p, "bob@example.com", "right", "198.51.100.1")
            .await
            .status(),
        429
    );
    assert!(
        p.metric(r#"ward_security_events_total{event="lockout_started"}"#)
            .await
            >= 1.0
    );
    // The lock lasts one second; then the identity starts afresh.
    assert!(
        eventually(Duration::from_secs(5), || async {
            attempt(&p, "bob@example.com", "right", "198.51.100.1")
                .await
                .status()
                == 200
        })
        .await
    );
    assert!(
        p.metric(r#"ward_security_events_total{event="lockout_ended"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn failures_across_identities_from_one_ip_lock_that_ip() {
    let (addr, _) = login_upstream().await;
    let p = login_replica(addr, None, "15m", "0s").await;
    for i in 0..5 {
        let r = attempt(&p, &format!("user{i}@example.com"), "wrong", "203.0.113.9").await;
        assert_eq!(r.status(), 401, "identity {i}");
    }
    // A sixth identity, never tried, from the same IP: the IP is locked.
    assert_eq!(
        attempt(&p, "fresh@example.com", "right", "203.0.113.9")
            .await
            .status(),
        429
    );
    // The same identity from another IP is fine.
    assert_eq!(
        attempt(&p, "fresh@example.com", "right", "203.0.113.10")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn known_and_unknown_identities_get_byte_identical_answers() {
    let pay = start_payments(None).await;
    let p = pay.proxy(PAYMENTS, Options::default()).await;
    let try_login = |email: String| {
        let c = p.client(false);
        let url = p.url("/v1/auth/login");
        let tenant = pay.setup.tenant.clone();
        async move {
            c.post(url)
                .header("x-request-id", "same-request-id")
                .json(&json!({"tenant": tenant, "email": email, "password": "wrong password!"}))
                .send()
                .await
                .unwrap()
        }
    };
    let mut answers = Vec::new();
    for email in [pay.setup.email.clone(), "nobody@demo.example".to_owned()] {
        for _ in 0..3 {
            assert_eq!(try_login(email.clone()).await.status(), 401);
        }
        let locked = try_login(email).await;
        assert_eq!(locked.status(), 429);
        let mut headers: Vec<(String, String)> = locked
            .headers()
            .iter()
            .filter(|(n, _)| *n != "date")
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        answers.push((headers, locked.bytes().await.unwrap()));
    }
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test]
async fn bad_login_bodies_get_400_and_lock_no_one() {
    let (addr, calls) = login_upstream().await;
    let p = login_replica(addr, None, "15m", "0s").await;
    for body in [
        r#"not json"#,
        r#"{"tenant":"t1"}"#,
        r#"{"tenant":"t1","email":"a@b.c","email":"d@e.f"}"#,
        r#"{"tenant":"t1","email":7}"#,
    ] {
        for _ in 0..4 {
            let r = p
                .client(false)
                .post(p.url("/login"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{body}");
        }
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(
        attempt(&p, "a@b.c", "right", "198.51.100.1").await.status(),
        200
    );
}
