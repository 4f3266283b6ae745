//! JWKS keys and the verified-token cache at the edge, over real TLS with a real JWKS server:
//! a hot token verified once, expiry in the cache, key rotation, a failing JWKS URL, the refetch
//! floor for unknown kids, and a cold start with the issuer down.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::eventually;
use support::identity::*;
use support::tokens::{self, claims, jwks, TestKey};

#[tokio::test]
async fn a_hot_token_is_verified_once_then_served_from_the_cache() {
    let w = world().await;
    let token = w.ed.sign(&claims("alice", "t1", &[]));
    for _ in 0..5 {
        assert_eq!(get(&w, "/v1/payments", Some(&token)).await.status(), 200);
    }
    let hits = w
        .proxy
        .metric(r#"ward_token_cache_lookups_total{result="hit"}"#)
        .await;
    let misses = w
        .proxy
        .metric(r#"ward_token_cache_lookups_total{result="miss"}"#)
        .await;
    assert_eq!((hits, misses), (4.0, 1.0));
}

#[tokio::test]
async fn a_cached_token_is_refused_once_it_expires() {
    let strict = TestKey::es256("strict-1");
    let w = world_with(Some(jwks(&[&strict])), strict, TestKey::eddsa("unused")).await;
    let now = tokens::now();
    let mut c = claims("alice", "t1", &[]);
    c["iss"] = "https://strict.test".into();
    c["exp"] = (now + 2).into();
    let token = w.es.sign(&c);
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&w, "/strict/x", Some(&token)).await.status() == 200
        })
        .await
    );
    // Served from the cache while valid ...
    assert_eq!(get(&w, "/strict/x", Some(&token)).await.status(), 200);
    assert!(
        w.proxy
            .metric(r#"ward_token_cache_lookups_total{result="hit"}"#)
            .await
            >= 1.0
    );
    // ... and never past exp.
    while tokens::now() < now + 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = w.proxy.upstream.count();
    let resp = get(&w, "/strict/x", Some(&token)).await;
    assert_refused_at_the_edge(&w, resp, "expired cached token", before).await;
}

#[tokio::test]
async fn jwks_rotation_adds_new_keys_and_removes_old_ones_even_from_the_cache() {
    let w = world().await;
    let old = w.es.sign(&claims("alice", "t1", &[]));
    assert_eq!(get(&w, "/v1/payments", Some(&old)).await.status(), 200);
    assert_eq!(
        get(&w, "/v1/payments", Some(&old)).await.status(),
        200,
        "now cached"
    );

    // The issuer rotates: es-2 in, es-1 out.
    let new_key = TestKey::es256("es-2");
    w.jwks.set(Some(jwks(&[&new_key, &w.ed])));
    let new = new_key.sign(&claims("bob", "t1", &[]));
    // The unknown kid triggers an early refetch (at most every min_refetch).
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&w, "/v1/payments", Some(&new)).await.status() == 200
        })
        .await,
        "the new kid is accepted after a refetch"
    );
    let before = w.proxy.upstream.count();
    let resp = get(&w, "/v1/payments", Some(&old)).await;
    assert_refused_at_the_edge(&w, resp, "token of a removed key, cached before", before).await;
}

#[tokio::test]
async fn a_failing_jwks_url_keeps_the_last_good_keys() {
    let w = world().await;
    let token = w.ed.sign(&claims("alice", "t1", &[]));
    w.jwks.set(None);
    // An unknown kid makes ward refetch, which fails: the last good keys keep serving.
    let unknown = TestKey::eddsa("ed-9").sign(&claims("x", "t1", &[]));
    let hits = w.jwks.hits();
    assert_eq!(get(&w, "/v1/payments", Some(&unknown)).await.status(), 401);
    assert!(
        eventually(Duration::from_secs(5), || async { w.jwks.hits() > hits }).await,
        "the refetch happened"
    );
    assert_eq!(get(&w, "/v1/payments", Some(&token)).await.status(), 200);
    // A broken document is no better than none: the last good keys still serve.
    w.jwks
        .set(Some(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into()));
    let hits = w.jwks.hits();
    let unknown = TestKey::eddsa("ed-10").sign(&claims("x", "t1", &[]));
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&w, "/v1/payments", Some(&unknown)).await.status() == 401 && w.jwks.hits() > hits
        })
        .await,
        "the broken document was fetched"
    );
    let fresh = w.ed.sign(&claims("bob", "t1", &[]));
    assert_eq!(get(&w, "/v1/payments", Some(&fresh)).await.status(), 200);
    assert_eq!(
        w.proxy.admin_get("/readyz").await.0,
        200,
        "loaded once: still ready"
    );
    assert!(
        w.proxy
            .metric(r#"ward_jwks_refreshes_total{issuer="test",result="error"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_floor() {
    let w = world().await;
    let garbage: Vec<String> = (0..30)
        .map(|i| TestKey::es256(&format!("garbage-{i}")).sign(&claims("x", "t1", &[])))
        .collect();
    let start = w.jwks.hits();
    let began = std::time::Instant::now();
    for t in &garbage {
        assert_eq!(get(&w, "/v1/payments", Some(t)).await.status(), 401);
    }
    // The floor (min_refetch 100ms) bounds the fetches by the time taken, whatever the number
    // of unknown kids: at most one per 100ms, plus the one in flight.
    let allowed = (began.elapsed().as_millis() / 100) as usize + 2;
    let fetched = w.jwks.hits() - start;
    assert!(
        fetched <= allowed && fetched < garbage.len(),
        "{fetched} fetches for {} unknown kids (at most {allowed})",
        garbage.len()
    );
}

#[tokio::test]
async fn a_cold_start_with_the_jwks_url_down_is_not_ready_and_answers_503_not_401() {
    let (es, ed) = (TestKey::es256("es-1"), TestKey::eddsa("ed-1"));
    let doc = jwks(&[&es, &ed]);
    let w = world_with(None, es, ed).await;
    let (status, why) = w.proxy.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(why.contains("keys not loaded: test"), "{why}");
    let token = w.es.sign(&claims("alice", "t1", &[]));
    let resp = get(&w, "/v1/payments", Some(&token)).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "urn:ward:problem:auth-unavailable");
    assert_eq!(w.proxy.upstream.count(), 0);
    // The issuer comes up: keys load, ward becomes ready, the token passes.
    w.jwks.set(Some(doc));
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.proxy.admin_get("/readyz").await.0 == 200
        })
        .await
    );
    assert_eq!(get(&w, "/v1/payments", Some(&token)).await.status(), 200);
}
