//! Revocation at the edge, over real TLS to real proxies, with the real payments service and real
//! Redis where the flow needs them: revocation seen by every replica, resync after a Redis
//! restart, fail_closed / fail_open at start, the service's logouts and password changes refused
//! at the edge, and security events in the tenant's audit trail.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::redis_servers::RedisServer;
use support::sessions::*;
use support::tokens::{claims, jwks, DocServer, TestKey};
use support::{eventually, start_in, start_payments, Options, Running, Upstream};
use ward::state::revocation::Revocations;

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
