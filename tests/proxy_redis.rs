//! Shared rate limits in Redis, over real TLS to real proxies: two replicas share one count on
//! the machine's Redis and on a three-master Redis Cluster this test starts; an outage (Redis
//! killed, hung, or answering garbage) follows each limit's policy, and recovery is automatic.

mod support;

use std::time::Duration;

use support::redis_servers::{RedisCluster, RedisServer};
use support::{eventually, start_with, Options, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHARED: &str = r#"
version: 1
upstream: { url: UPSTREAM, idle_timeout: 2s, request_timeout: 5s }
server:
  redis: { timeout: 200ms, breaker_failures: 3, breaker_cooldown: 2s }
defaults:
  rate_limits: []
routes:
  - name: limited
    match: { path: { prefix: /limited } }
    rate_limits: [{ name: shared, key: ip, limit: 10, period: 1h }]
  - name: local
    match: { path: { prefix: /local } }
    rate_limits: [{ name: local_fallback, key: ip, limit: 4, period: 1h, on_redis_error: local, local_share: 0.5 }]
  - name: roomy
    match: { path: { prefix: /roomy } }
    rate_limits: [{ name: roomy, key: ip, limit: 1000, period: 1h }]
  - name: deny
    match: { path: { prefix: /deny } }
    rate_limits: [{ name: deny_fallback, key: ip, limit: 1000, period: 1h, on_redis_error: deny }]
"#;

fn prefix() -> String {
    format!("ward-test-{}", uuid::Uuid::new_v4().simple())
}

async fn replica(redis_url: &str, prefix: &str) -> Running {
    start_with(
        SHARED,
        Options {
            redis: Some((redis_url.to_owned(), prefix.to_owned())),
            ..Options::default()
        },
    )
    .await
}

/// Alternates `n` requests between the replicas; returns how many were admitted.
async fn admitted(replicas: &[&Running], path: &str, n: usize) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let r = replicas[i % replicas.len()];
        let resp = r.client(i % 2 == 0).get(r.url(path)).send().await.unwrap();
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => assert!(resp.headers().contains_key("retry-after")),
            other => panic!("unexpected status {other}"),
        }
    }
    ok
}

async fn redis_cli(args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_limit_of_n_across_two_replicas_admits_exactly_n_on_a_single_redis() {
    let prefix = prefix();
    let a = replica("redis://127.0.0.1:6379", &prefix).await;
    let b = replica("redis://127.0.0.1:6379", &prefix).await;
    assert_eq!(admitted(&[&a, &b], "/limited", 16).await, 10);
    // The count lives in Redis under this deployment's prefix, as a Cluster hash-tagged key.
    let keys = redis_cli(&["--scan", "--pattern", &format!("{prefix}:*")]).await;
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys, [format!("{prefix}:rl:{{shared|ip|127.0.0.1}}")]);
    let ttl: i64 = redis_cli(&["pttl", keys[0]]).await.trim().parse().unwrap();
    assert!(ttl > 0, "the key expires (pttl {ttl})");
    // Both replicas tell the client the same, shared state.
    let resp = a.client(false).get(a.url("/limited")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["ratelimit-policy"], "\"shared\";q=10;w=3600");
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
    redis_cli(&["del", keys[0]]).await;
}

/// Checks that arrive together share one Redis call (one script deciding each in turn), and the
/// shared count stays exact: concurrent requests through two replicas admit exactly the limit.
#[tokio::test]
async fn concurrent_checks_share_redis_calls_and_the_count_stays_exact() {
    let prefix = prefix();
    let a = replica("redis://127.0.0.1:6379", &prefix).await;
    let b = replica("redis://127.0.0.1:6379", &prefix).await;
    let mut burst = tokio::task::JoinSet::new();
    for (i, r) in [&a, &b].into_iter().enumerate() {
        let client = r.client(true);
        for _ in 0..40 {
            let (client, url) = (client.clone(), r.url("/limited"));
            burst.spawn(async move { (i, client.get(url).send().await.unwrap().status()) });
        }
    }
    let mut ok = 0;
    while let Some(done) = burst.join_next().await {
        match done.unwrap().1.as_u16() {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        ok, 10,
        "80 concurrent requests against a shared limit of 10"
    );
    let mut decisions = 0.0;
    let mut calls = 0.0;
    for r in [&a, &b] {
        decisions += r.metric("ward_redis_rate_limit_batch_size_sum").await;
        calls += r.metric("ward_redis_rate_limit_batch_size_count").await;
    }
    assert_eq!(decisions, 80.0, "every check went to Redis");
    assert!(
        calls < 80.0,
        "concurrent checks share calls: {calls} calls for 80 decisions"
    );
    redis_cli(&["del", &format!("{prefix}:rl:{{shared|ip|127.0.0.1}}")]).await;
}

#[tokio::test]
async fn a_limit_of_n_across_two_replicas_admits_exactly_n_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3).await;
    let prefix = prefix();
    let a = replica(&cluster.url(), &prefix).await;
    let b = replica(&cluster.url(), &prefix).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.metric("ward_redis_up").await == 1.0 || {
                // The first calls may race the cluster connection; they fall back locally.
                let _ = a.client(false).get(a.url("/deny")).send().await;
                false
            }
        })
        .await,
        "the replica reaches the cluster"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            let _ = b.client(false).get(b.url("/deny")).send().await;
            b.metric("ward_redis_up").await == 1.0
        })
        .await
    );
    assert_eq!(admitted(&[&a, &b], "/limited", 16).await, 10);
    let keys = cluster.keys(&format!("{prefix}:rl:*")).await;
    assert!(
        keys.contains(&format!("{prefix}:rl:{{shared|ip|127.0.0.1}}")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_killed_redis_falls_back_per_limit_and_recovery_is_automatic() {
    let mut redis = RedisServer::start().await;
    let p = replica(&redis.url(), &prefix()).await;
    assert_eq!(p.status(false, "/deny/x").await, 200);
    assert_eq!(p.metric("ward_redis_up").await, 1.0);

    redis.stop().await;
    // on_redis_error: deny answers 503 with Retry-After and never reaches the upstream.
    let before = p.upstream.count();
    let resp = p.client(false).get(p.url("/deny/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "urn:ward:problem:rate-limit-unavailable");
    assert_eq!(p.upstream.count(), before);
    // on_redis_error: local counts on this replica alone, against half of its limit of 4.
    assert_eq!(admitted(&[&p], "/local", 4).await, 2);
    assert!(
        p.metric(r#"ward_rate_limit_fallbacks_total{limit="local_fallback"}"#)
            .await
            >= 4.0
    );
    // After three failures the breaker is open: no call is even tried.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let _ = p.client(false).get(p.url("/deny/x")).send().await;
            p.metric("ward_redis_breaker_open").await == 1.0
        })
        .await
    );
    let skipped = p
        .metric(r#"ward_redis_errors_total{kind="breaker_open",op="rate_limit"}"#)
        .await;
    let _ = p.client(false).get(p.url("/deny/x")).send().await;
    assert!(
        p.metric(r#"ward_redis_errors_total{kind="breaker_open",op="rate_limit"}"#)
            .await
            > skipped
    );

    // Redis returns: after the cooldown a probe succeeds and the limits are shared again.
    redis.restart().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            p.status(false, "/deny/x").await == 200
        })
        .await,
        "recovered"
    );
    assert_eq!(p.metric("ward_redis_up").await, 1.0);
    assert_eq!(p.metric("ward_redis_breaker_open").await, 0.0);
}

#[tokio::test]
async fn a_hung_redis_costs_at_most_the_timeout_then_the_breaker_skips_it() {
    let redis = RedisServer::start().await;
    let p = replica(&redis.url(), &prefix()).await;
    assert_eq!(p.status(false, "/roomy/x").await, 200);
    redis.pause().await;
    // Every answer still comes (local fallback); the calls that wait end at the 200ms deadline.
    for _ in 0..6 {
        assert_eq!(p.status(false, "/roomy/x").await, 200);
    }
    let timeouts = p
        .metric(r#"ward_redis_errors_total{kind="timeout",op="rate_limit"}"#)
        .await;
    assert_eq!(
        timeouts, 3.0,
        "three timeouts open the breaker; then no call waits"
    );
    assert_eq!(p.metric("ward_redis_breaker_open").await, 1.0);
    redis.resume().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let _ = p.client(false).get(p.url("/deny/x")).send().await;
            p.metric("ward_redis_breaker_open").await == 0.0
        })
        .await
    );
}

#[tokio::test]
async fn a_redis_that_answers_garbage_is_an_outage() {
    // A TCP server that answers every command with something that is not RESP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || tcp.write_all(b"?? garbage ??\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let p = replica(&format!("redis://127.0.0.1:{port}"), &prefix()).await;
    assert_eq!(p.status(false, "/local/x").await, 200);
    let resp = p.client(false).get(p.url("/deny/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        p.metric(r#"ward_rate_limit_fallbacks_total{limit="local_fallback"}"#)
            .await
            >= 1.0
    );
    assert_eq!(p.metric("ward_redis_up").await, 0.0);
}

/// The Redis rate limiter on the machine's Redis, outside any proxy, with room for `queue`
/// waiting checks.
fn limiter_alone(
    prefix: &str,
    metrics: &ward::telemetry::Metrics,
    queue: usize,
) -> ward::limit::RedisLimiter {
    use ward::limit::{MemoryLimiter, RedisLimiter};
    use ward::redis_link::RedisLink;
    let link = RedisLink::connect(
        "redis://127.0.0.1:6379".parse().unwrap(),
        prefix,
        metrics.redis.clone(),
    )
    .unwrap();
    RedisLimiter::with_queue(
        std::sync::Arc::new(link),
        MemoryLimiter::new(100, metrics.rate_limit_keys_evicted.clone()),
        queue,
    )
}

fn redis_tuning() -> ward::policy::RedisTuning {
    ward::policy::RedisTuning {
        timeout: Duration::from_secs(2),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_secs(1),
    }
}

/// One call decides a whole batch in arrival order: several keys with their own quotas, one of
/// them asked five times (sent once with a count), each check with its own exact answer. The
/// first check finds nothing waiting or in flight and makes its own call at once; the nine that
/// arrive while it is in flight go as one batch.
#[tokio::test]
async fn one_redis_call_decides_a_batch_of_keys_in_arrival_order() {
    use ward::limit::{Fallback, Quota, Source};

    let prefix = prefix();
    let metrics = ward::telemetry::Metrics::new();
    let limiter = limiter_alone(&prefix, &metrics, 4096);
    let tuning = redis_tuning();
    let quota = |limit| Quota {
        limit,
        period: Duration::from_secs(3600),
    };
    let asks = [("a", 3), ("b", 2), ("a", 3), ("a", 3), ("c", 1), ("b", 2)]
        .into_iter()
        .chain([("a", 3), ("a", 3), ("b", 2), ("c", 1)]);
    // Polled together in one task: the first is sent, the others are queued before the batcher
    // takes them.
    let checks = asks.map(|(key, limit)| {
        let (limiter, tuning) = (&limiter, &tuning);
        async move {
            let deny = Fallback::Deny;
            (
                key,
                limiter
                    .check(key, quota(limit), deny, tuning)
                    .await
                    .unwrap(),
            )
        }
    });
    let answers = futures_util::future::join_all(checks).await;
    let allowed = |k: &str| {
        answers
            .iter()
            .filter(|(key, c)| *key == k && c.decision.allowed)
            .map(|(_, c)| c.decision.remaining)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        allowed("a"),
        [2, 1, 0],
        "a: three of five, in arrival order"
    );
    assert_eq!(allowed("b"), [1, 0]);
    assert_eq!(allowed("c"), [0]);
    for (key, c) in &answers {
        assert_eq!(c.source, Source::Redis);
        assert_eq!(
            c.decision.allowed,
            c.decision.retry_after.is_zero(),
            "{key}"
        );
    }
    let denied_a = answers
        .iter()
        .filter(|(k, c)| *k == "a" && !c.decision.allowed);
    for (_, c) in denied_a {
        // One request is admitted every 20 minutes once the quota of 3 per hour is spent.
        let retry = c.decision.retry_after.as_secs_f64();
        assert!((1199.0..=1200.0).contains(&retry), "retry after {retry}");
    }
    assert_eq!(
        (
            metrics.redis.batch_size.get_sample_count(),
            metrics.redis.batch_size.get_sample_sum()
        ),
        (2, 10.0),
        "ten checks: the first alone at once, then one Redis call for the nine others"
    );
    for key in ["a", "b", "c"] {
        redis_cli(&["del", &format!("{prefix}:rl:{{{key}}}")]).await;
    }
}

/// A check that finds the batcher's queue full does not wait: Redis is treated as unavailable
/// for it, so its limit's fallback decides (the local share, or 503), and it is counted. The
/// first check, with nothing waiting or in flight, makes its own call and takes no room.
#[tokio::test]
async fn a_full_queue_is_an_outage_and_each_limit_s_fallback_decides() {
    use ward::limit::{Fallback, Quota, Source};

    let prefix = prefix();
    let metrics = ward::telemetry::Metrics::new();
    let limiter = limiter_alone(&prefix, &metrics, 2);
    let tuning = redis_tuning();
    let quota = Quota {
        limit: 100,
        period: Duration::from_secs(3600),
    };
    let local = Fallback::Local { share: 0.5 };
    // Polled together in one task: the first goes alone, the next two fill the queue before the
    // batcher runs.
    let fallbacks = [local, local, local, local, Fallback::Deny, Fallback::Deny];
    let checks = fallbacks.map(|fallback| {
        let (limiter, tuning) = (&limiter, &tuning);
        async move { limiter.check("k", quota, fallback, tuning).await }
    });
    let answers = futures_util::future::join_all(checks).await;
    let sources: Vec<_> = answers
        .iter()
        .map(|a| a.as_ref().map(|c| c.source).ok())
        .collect();
    assert_eq!(
        sources,
        [
            Some(Source::Redis),
            Some(Source::Redis),
            Some(Source::Redis),
            Some(Source::LocalFallback),
            None,
            None
        ],
        "one alone and two queued, decided in Redis; the rest fell back (local share, then deny)"
    );
    let remaining: Vec<_> = answers[..4]
        .iter()
        .map(|a| a.as_ref().unwrap().decision.remaining)
        .collect();
    assert_eq!(
        remaining,
        [99, 98, 97, 49],
        "Redis counts 100 in turn; the local share is half of 100"
    );
    for denied in &answers[4..] {
        assert_eq!(
            denied.as_ref().unwrap_err().retry_after,
            Duration::from_secs(1)
        );
    }
    assert_eq!(
        metrics
            .redis
            .errors
            .with_label_values(&["rate_limit", "queue_full"])
            .get(),
        3
    );
    // A check given up while in flight is no longer pending: with nothing else waiting, the next
    // burst's first check goes alone again and the queue holds two more.
    let given_up =
        futures_util::FutureExt::now_or_never(limiter.check("k", quota, Fallback::Deny, &tuning));
    assert!(
        given_up.is_none(),
        "polled once and dropped before Redis answered"
    );
    let checks = [(); 4].map(|()| {
        let (limiter, tuning) = (&limiter, &tuning);
        async move { limiter.check("k", quota, Fallback::Deny, tuning).await }
    });
    let sources: Vec<_> = futures_util::future::join_all(checks)
        .await
        .iter()
        .map(|a| a.as_ref().map(|c| c.source).ok())
        .collect();
    let redis = Some(Source::Redis);
    assert_eq!(sources, [redis, redis, redis, None]);
    redis_cli(&["del", &format!("{prefix}:rl:{{k}}")]).await;
}
