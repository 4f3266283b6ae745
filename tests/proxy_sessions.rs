//! Sessions at the edge, over real TLS to real proxies, with the real payments service and real
//! Redis where the flow needs them: revocation seen by every replica, resync after a Redis
//! restart, fail_closed / fail_open at start, the service's logouts and password changes refused
//! at the edge, refresh-token single use across two proxies, lockout with backoff shared by two
//! proxies, and security events in the tenant's audit trail.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::redis_servers::RedisServer;
use support::tokens::{claims, jwks, DocServer, TestKey};
use support::{eventually, start_in, start_payments, Options, Running, Upstream};
use ward::state::revocation::Revocations;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// In front of the bundled payments service (`UPSTREAM`): its keys, revocation, refresh single
/// use, lockout and the audit sink.
const PAYMENTS: &str = r#"
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

fn prefix() -> String {
    format!("ward-test-{}", uuid::Uuid::new_v4().simple())
}

fn opts_redis(url: &str, prefix: &str) -> Options {
    Options {
        redis: Some((url.to_owned(), prefix.to_owned())),
        admin_token: Some(ADMIN_TOKEN.into()),
        ..Options::default()
    }
}

async fn post(p: &Running, path: &str, body: Value, token: Option<&str>) -> reqwest::Response {
    let mut r = p.client(false).post(p.url(path)).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn get(p: &Running, path: &str, token: &str) -> reqwest::Response {
    p.client(false)
        .get(p.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn login(p: &Running, pay: &support::Payments) -> (String, String) {
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
async fn assert_revoked_at_the_edge(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 401, "{what}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["type"], "urn:ward:problem:invalid-credentials",
        "{what}: refused by ward, not the service: {body}"
    );
}

async fn admin(
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

// ---- revocation with two replicas on Redis, with a JWKS issuer of the test's own ----

const ISSUER_POLICY: &str = r#"
version: 1
upstream: { url: UPSTREAM, idle_timeout: 2s, request_timeout: 5s }
identity:
  issuers:
    - name: test
      issuer: https://issuer.test
      audiences: [payments-api]
      algorithms: [ES256]
      jwks: { url: JWKS_URL, refresh: 1h, min_refetch: 100ms, timeout: 1s }
sessions:
  revocation: { on_unsynced: ON_UNSYNCED, max_token_lifetime: 1h }
defaults:
  rate_limits: []
routes:
  - name: api
    match: { path: { prefix: / } }
    auth: { require: required, issuers: [test] }
"#;

async fn issuer_replica(jwks_url: &str, redis: &str, prefix: &str, on_unsynced: &str) -> Running {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(
        &path,
        support::render(ISSUER_POLICY, upstream.addr)
            .replace("JWKS_URL", jwks_url)
            .replace("ON_UNSYNCED", on_unsynced),
    )
    .unwrap();
    start_in(dir, path, upstream, opts_redis(redis, prefix)).await
}

#[tokio::test]
async fn revocations_by_jti_session_and_subject_reach_a_second_replica_within_a_second() {
    let key = TestKey::es256("k1");
    let jwks_server = DocServer::start(Some(jwks(&[&key]))).await;
    let prefix = prefix();
    let a = issuer_replica(
        &jwks_server.url(),
        "redis://127.0.0.1:6379",
        &prefix,
        "fail_closed",
    )
    .await;
    let b = issuer_replica(
        &jwks_server.url(),
        "redis://127.0.0.1:6379",
        &prefix,
        "fail_closed",
    )
    .await;
    for p in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(10), || async {
                p.admin_get("/readyz").await.0 == 200
            })
            .await,
            "synced and ready"
        );
    }
    let mut by_jti = claims("alice", "t1", &[]);
    by_jti["jti"] = "jti-1".into();
    let mut by_sid = claims("bob", "t1", &[]);
    by_sid["sid"] = "sid-1".into();
    let mut by_sub = claims("carol", "t1", &[]);
    by_sub["iat"] = (support::tokens::now() - 10).into();
    let cases = [
        (key.sign(&by_jti), json!({"kind": "token", "id": "jti-1"})),
        (key.sign(&by_sid), json!({"kind": "session", "id": "sid-1"})),
        (key.sign(&by_sub), json!({"kind": "subject", "id": "carol"})),
    ];
    for (token, revocation) in &cases {
        assert_eq!(get(&b, "/x", token).await.status(), 200, "{revocation}");
        let (status, _) = admin(
            &a,
            reqwest::Method::POST,
            "/revocations",
            Some(revocation.clone()),
        )
        .await;
        assert_eq!(status, 201);
        assert!(
            eventually(Duration::from_secs(1), || async {
                get(&b, "/x", token).await.status() == 401
            })
            .await,
            "{revocation} reached the other replica within a second"
        );
        assert_revoked_at_the_edge(get(&a, "/x", token).await, "the replica that revoked").await;
    }
    // A subject revocation spares tokens issued after it.
    let mut later = claims("carol", "t1", &[]);
    later["iat"] = (support::tokens::now() + 2).into();
    assert_eq!(get(&b, "/x", &key.sign(&later)).await.status(), 200);
    // Listing shows them; a wrong admin token is refused and changes nothing.
    let (status, list) = admin(&b, reqwest::Method::GET, "/revocations", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["revocations"].as_array().unwrap().len(), 3, "{list}");
    let denied = reqwest::Client::new()
        .post(format!("http://{}/revocations", a.admin))
        .bearer_auth("wrong-token-wrong-token")
        .json(&json!({"kind": "token", "id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let missing = reqwest::Client::new()
        .get(format!("http://{}/revocations", a.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(
        b.metric(r#"ward_revocation_hits_total{kind="token"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_replica_resyncs_after_a_redis_restart() {
    let key = TestKey::es256("k1");
    let jwks_server = DocServer::start(Some(jwks(&[&key]))).await;
    let mut redis = RedisServer::start().await;
    let prefix = prefix();
    let p = issuer_replica(&jwks_server.url(), &redis.url(), &prefix, "fail_closed").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            p.admin_get("/readyz").await.0 == 200
        })
        .await
    );
    let mut c = claims("alice", "t1", &[]);
    c["jti"] = "missed-while-away".into();
    let token = key.sign(&c);
    assert_eq!(get(&p, "/x", &token).await.status(), 200);
    let resyncs = p.metric("ward_revocation_resyncs_total").await;
    redis.restart().await;
    // Written straight into Redis, never published: only a reload after reconnecting finds it.
    let member = "t|-|missed-while-away";
    let exp = (support::tokens::now() + 600).to_string();
    redis
        .cli(&["zadd", &format!("{prefix}:rev:{{all}}"), &exp, member])
        .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&p, "/x", &token).await.status() == 401
        })
        .await,
        "the replica reloaded the revocations after reconnecting"
    );
    assert!(p.metric("ward_revocation_resyncs_total").await > resyncs);
}

#[tokio::test]
async fn with_redis_down_at_start_fail_closed_answers_503_and_fail_open_lets_tokens_pass() {
    let key = TestKey::es256("k1");
    let jwks_server = DocServer::start(Some(jwks(&[&key]))).await;
    let dead = format!("redis://127.0.0.1:{}", support::redis_servers::free_port());
    let token = key.sign(&claims("alice", "t1", &[]));

    let closed = issuer_replica(&jwks_server.url(), &dead, &prefix(), "fail_closed").await;
    let resp = get(&closed, "/x", &token).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "urn:ward:problem:revocation-unavailable");
    assert_eq!(closed.upstream.count(), 0);
    let (status, why) = closed.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(why.contains("revocations not loaded"), "{why}");

    let open = issuer_replica(&jwks_server.url(), &dead, &prefix(), "fail_open").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&open, "/x", &token).await.status() == 200
        })
        .await
    );
    assert!(open.metric("ward_revocation_unsynced_passes_total").await >= 1.0);
}

// ---- the bundled payments service revokes, the edge refuses ----

#[tokio::test]
async fn a_logout_and_a_password_change_refuse_the_old_access_token_at_the_edge() {
    let metrics = ward::telemetry::Metrics::new();
    let revocations = Revocations::memory(metrics.revocation.clone());
    let pay = start_payments(Some(revocations.clone())).await;
    let p = pay
        .proxy(
            PAYMENTS,
            Options {
                revocations: Some(revocations),
                metrics: Some(metrics),
                ..Options::default()
            },
        )
        .await;
    let (access, _) = login(&p, &pay).await;
    assert_eq!(get(&p, "/v1/payments", &access).await.status(), 200);
    assert_eq!(
        post(&p, "/v1/auth/logout", json!({}), Some(&access))
            .await
            .status(),
        204
    );
    assert_revoked_at_the_edge(get(&p, "/v1/payments", &access).await, "after logout").await;

    let (access, _) = login(&p, &pay).await;
    let new_password = "a brand new passphrase 42";
    let changed = post(
        &p,
        "/v1/auth/password",
        json!({"current_password": pay.setup.password, "new_password": new_password}),
        Some(&access),
    )
    .await;
    assert_eq!(changed.status(), 204);
    assert_revoked_at_the_edge(
        get(&p, "/v1/payments", &access).await,
        "after a password change",
    )
    .await;
    assert_eq!(
        p.metric(r#"ward_revocation_hits_total{kind="subject"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_logout_published_through_redis_reaches_every_replica() {
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
    let (access, _) = login(&a, &pay).await;
    assert_eq!(get(&b, "/v1/payments", &access).await.status(), 200);
    assert_eq!(
        post(&a, "/v1/auth/logout", json!({}), Some(&access))
            .await
            .status(),
        204
    );
    assert!(
        eventually(Duration::from_secs(1), || async {
            get(&b, "/v1/payments", &access).await.status() == 401
        })
        .await
    );
    assert_revoked_at_the_edge(get(&b, "/v1/payments", &access).await, "the other replica").await;
}

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

// ---- security events ----

#[tokio::test]
async fn security_events_land_in_the_tenants_audit_trail() {
    let metrics = ward::telemetry::Metrics::new();
    let revocations = Revocations::memory(metrics.revocation.clone());
    let pay = start_payments(Some(revocations.clone())).await;
    let p = pay
        .proxy(
            PAYMENTS,
            Options {
                revocations: Some(revocations),
                admin_token: Some(ADMIN_TOKEN.into()),
                ..Options::default()
            },
        )
        .await;
    let (access, _) = login(&p, &pay).await;
    let (auditor_view, _) = login(&p, &pay).await;
    // Revoke the first token's session at the edge, then present it: token_revoked, for the tenant.
    let sid = {
        use base64::Engine;
        let payload = access.split('.').nth(1).unwrap();
        let c: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        c["sid"].as_str().unwrap().to_owned()
    };
    let (status, _) = admin(
        &p,
        reqwest::Method::POST,
        "/revocations",
        Some(json!({"kind": "session", "id": sid})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(get(&p, "/v1/payments", &access).await.status(), 401);
    let found = eventually(Duration::from_secs(10), || async {
        let page: Value = get(&p, "/v1/audit?action=proxy.security_event", &auditor_view)
            .await
            .json()
            .await
            .unwrap_or(Value::Null);
        page["items"].as_array().is_some_and(|items| {
            items
                .iter()
                .any(|i| i["resource_id"] == "token_revoked" && i["details"]["reason"] == "session")
        })
    })
    .await;
    assert!(found, "the event is in the tenant's own audit trail");
    assert!(p.metric("ward_security_events_delivered_total").await >= 1.0);
}

const SINK_DOWN: &str = r#"
version: 1
upstream: { url: UPSTREAM, idle_timeout: 2s, request_timeout: 5s }
identity:
  issuers:
    - name: test
      issuer: https://issuer.test
      audiences: [payments-api]
      algorithms: [ES256]
      jwks: { url: JWKS_URL }
sessions:
  events:
    queue: 5
    sink: { url: SINK_URL, token_file: TOKEN_FILE, batch: 2, flush_every: 50ms }
defaults:
  rate_limits: []
routes:
  - name: api
    match: { path: { prefix: / } }
    auth: { require: required, issuers: [test] }
"#;

#[tokio::test]
async fn a_sink_that_is_down_drops_and_counts_events_and_never_blocks_a_request() {
    let key = TestKey::es256("k1");
    let jwks_server = DocServer::start(Some(jwks(&[&key]))).await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("sink.token");
    std::fs::write(&token_file, "sink-token-0123456789").unwrap();
    let dead = support::redis_servers::free_port();
    let path = dir.path().join("policy.yaml");
    std::fs::write(
        &path,
        support::render(SINK_DOWN, upstream.addr)
            .replace("JWKS_URL", &jwks_server.url())
            .replace("SINK_URL", &format!("http://127.0.0.1:{dead}/events"))
            .replace("TOKEN_FILE", &token_file.display().to_string()),
    )
    .unwrap();
    let p = start_in(dir, path, upstream, Options::default()).await;
    let forged = TestKey::es256("k1").sign(&claims("x", "t1", &[]));
    for _ in 0..40 {
        assert_eq!(get(&p, "/x", &forged).await.status(), 401);
    }
    assert_eq!(
        p.metric(r#"ward_security_events_total{event="auth_failed"}"#)
            .await,
        40.0
    );
    let dropped = p.metric("ward_security_events_dropped_total").await;
    assert!(dropped >= 30.0, "{dropped} dropped of 40 with a queue of 5");
    assert!(
        p.metric("ward_security_event_delivery_failures_total")
            .await
            >= 1.0
    );
}
