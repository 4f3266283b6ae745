//! The one Redis connection every Redis-backed store shares: a single node (`redis://`,
//! `rediss://`) through a multiplexed, self-reconnecting `ConnectionManager`, or a Cluster
//! (`redis+cluster://h1:p1,h2:p2`, `rediss+cluster://…`) through the crate's async cluster client.
//!
//! Every call has a deadline, and a circuit breaker sits in front of the connection: after
//! `breaker_failures` consecutive failed or slow calls, no call is made at all for
//! `breaker_cooldown` (the caller's outage policy applies at once, adding no latency), then one
//! probe call may try again; its success closes the breaker. Recovery is automatic.
//! Keys are `<prefix>:<kind>:{<key>}`: the braces are a Cluster hash tag, so every key of one
//! decision lives in one slot.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind};

use crate::policy::RedisTuning;

/// Where Redis is, from `--redis-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    /// Node URLs (`redis://host:port` or `rediss://…`).
    Cluster(Vec<String>),
}

impl std::str::FromStr for RedisTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let cluster = |rest: &str, scheme: &str| -> Result<RedisTarget, String> {
            // Credentials, if any, come first and apply to every node: user:pass@h1:p1,h2:p2
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((a, h)) => (format!("{a}@"), h),
                None => (String::new(), rest),
            };
            let nodes: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("{scheme}://{auth}{h}"))
                .collect();
            if nodes.is_empty() {
                return Err("a Redis Cluster URL names at least one node: redis+cluster://host:port,host:port".into());
            }
            Ok(RedisTarget::Cluster(nodes))
        };
        if let Some(rest) = s.strip_prefix("redis+cluster://") {
            cluster(rest, "redis")
        } else if let Some(rest) = s.strip_prefix("rediss+cluster://") {
            cluster(rest, "rediss")
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            redis::Client::open(s).map_err(|e| format!("invalid Redis URL: {e}"))?;
            Ok(RedisTarget::Single(s.to_owned()))
        } else {
            Err("expected redis://, rediss://, redis+cluster:// or rediss+cluster://".into())
        }
    }
}

impl std::fmt::Display for RedisTarget {
    /// The target without credentials, for logs and `ward check`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let strip = |u: &str| match (u.split_once("://"), u.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
            _ => u.to_owned(),
        };
        match self {
            RedisTarget::Single(u) => f.write_str(&strip(u)),
            RedisTarget::Cluster(nodes) => write!(
                f,
                "cluster [{}]",
                nodes
                    .iter()
                    .map(|n| strip(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Why a Redis call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisFault {
    #[error("the Redis breaker is open")]
    BreakerOpen,
    #[error("no Redis connection yet")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis call failed: {0}")]
    Failed(#[from] RedisError),
    #[error("Redis answered something else than expected: {0}")]
    Unexpected(#[from] redis::ParsingError),
}

/// Metric handles for the link.
#[derive(Clone)]
pub struct RedisMetrics {
    pub up: prometheus::IntGauge,
    pub breaker_open: prometheus::IntGauge,
    pub errors: prometheus::IntCounterVec,
    pub latency: prometheus::Histogram,
    /// Rate-limit decisions carried per call (single node; see `limit::redis`).
    pub batch_size: prometheus::Histogram,
}

enum Conn {
    Single(ConnectionManager),
    /// Connected in the background; `None` until the first connection succeeds.
    Cluster(ArcSwapOption<ClusterConnection>),
}

/// A Lua script called by its SHA-1 (`EVALSHA`), sent whole (`EVAL`) only when the server does
/// not know it yet (`NOSCRIPT`: first use, a restart, a new Cluster node).
pub struct LuaScript {
    source: &'static str,
    sha: String,
}

impl LuaScript {
    pub fn new(source: &'static str) -> LuaScript {
        LuaScript {
            source,
            sha: redis::Script::new(source).get_hash().to_owned(),
        }
    }
}

pub struct RedisLink {
    target: RedisTarget,
    conn: Arc<Conn>,
    prefix: String,
    breaker: Breaker,
    metrics: RedisMetrics,
    connector: Option<tokio::task::JoinHandle<()>>,
}

impl RedisLink {
    /// Creates the link without waiting for Redis: ward starts (and applies each limit's outage
    /// policy) while Redis is down, and connects when it comes up. Needs a tokio runtime.
    pub fn connect(
        target: RedisTarget,
        prefix: &str,
        metrics: RedisMetrics,
    ) -> Result<RedisLink, RedisError> {
        let (conn, connector) = match &target {
            RedisTarget::Single(url) => {
                let client = open_client(url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                let manager = ConnectionManager::new_lazy_with_config(client, config)?;
                (Arc::new(Conn::Single(manager)), None)
            }
            RedisTarget::Cluster(nodes) => {
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .tcp_settings(tcp_settings())
                    .connection_timeout(Duration::from_secs(1))
                    .retries(1)
                    .build()?;
                let conn = Arc::new(Conn::Cluster(ArcSwapOption::empty()));
                let task = tokio::spawn(connect_cluster(client, conn.clone()));
                (conn, Some(task))
            }
        };
        metrics.up.set(0);
        metrics.breaker_open.set(0);
        Ok(RedisLink {
            target,
            conn,
            prefix: prefix.to_owned(),
            breaker: Breaker::new(),
            metrics,
            connector,
        })
    }

    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>:<kind>:{<key>}` (pieces pushed in turn: through `format!` a rate-limit decision
    /// cost about 1,100 instructions more, callgrind).
    pub fn key(&self, kind: &str, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + key.len() + 4);
        for piece in [&*self.prefix, ":", kind, ":{", key, "}"] {
            k.push_str(piece);
        }
        k
    }

    /// Counts a call that was not made or gave no answer, by `op` and `kind`.
    pub fn count_error(&self, op: &str, kind: &str) {
        self.metrics.errors.with_label_values(&[op, kind]).inc();
    }

    /// Records how many rate-limit decisions one call carries.
    pub fn observe_batch(&self, decisions: usize) {
        self.metrics.batch_size.observe(decisions as f64);
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Runs `script` on `keys` and `args` within the deadline and through the breaker.
    /// `op` names the call in `ward_redis_errors_total{op}`.
    pub async fn eval<T: redis::FromRedisValue, A: redis::ToRedisArgs>(
        &self,
        op: &'static str,
        script: &LuaScript,
        keys: &[&str],
        args: &[A],
        tuning: &RedisTuning,
    ) -> Result<T, RedisFault> {
        self.guarded(op, tuning, self.eval_once(script, keys, args))
            .await
    }

    /// Runs one command within the deadline and through the breaker.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
        tuning: &RedisTuning,
    ) -> Result<T, RedisFault> {
        self.guarded(op, tuning, self.query(cmd)).await
    }

    /// A plain client for one node (Cluster: node `i` modulo their number), for pub/sub: a
    /// message published on any Cluster node reaches the subscribers of every node.
    pub fn node_client(&self, i: usize) -> Result<redis::Client, RedisError> {
        match &self.target {
            RedisTarget::Single(url) => open_client(url),
            RedisTarget::Cluster(nodes) => open_client(&nodes[i % nodes.len()]),
        }
    }

    async fn guarded<T>(
        &self,
        op: &'static str,
        tuning: &RedisTuning,
        call: impl std::future::Future<Output = Result<T, RedisFault>>,
    ) -> Result<T, RedisFault> {
        let probing = match self.breaker.admit() {
            Admit::Closed => false,
            Admit::Probe => true,
            Admit::Open => {
                self.metrics
                    .errors
                    .with_label_values(&[op, "breaker_open"])
                    .inc();
                return Err(RedisFault::BreakerOpen);
            }
        };
        let started = Instant::now();
        let result = tokio::time::timeout(tuning.timeout, call).await;
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(RedisFault::Timeout(tuning.timeout)),
        };
        match &result {
            Ok(_) => {
                self.breaker.success();
                self.metrics.up.set(1);
                self.metrics.breaker_open.set(0);
            }
            Err(e) => {
                let opened = self.breaker.failure(probing, tuning);
                self.metrics.up.set(0);
                if opened {
                    self.metrics.breaker_open.set(1);
                    tracing::warn!(error = %e, cooldown = ?tuning.breaker_cooldown, "Redis breaker opened");
                }
                let kind = match e {
                    RedisFault::Timeout(_) => "timeout",
                    RedisFault::NotConnected => "not_connected",
                    RedisFault::Failed(_) | RedisFault::Unexpected(_) => "error",
                    RedisFault::BreakerOpen => "breaker_open",
                };
                self.metrics.errors.with_label_values(&[op, kind]).inc();
            }
        }
        result
    }

    async fn eval_once<T: redis::FromRedisValue, A: redis::ToRedisArgs>(
        &self,
        script: &LuaScript,
        keys: &[&str],
        args: &[A],
    ) -> Result<T, RedisFault> {
        let build = |verb: &str, body: &str| {
            // Sized once (numbers take at most 20 digits): grown argument by argument, the
            // command's buffers were reallocated four times per call (~500 instructions).
            let data = verb.len() + body.len() + keys.iter().map(|k| k.len()).sum::<usize>();
            let mut c = redis::Cmd::with_capacity(
                3 + keys.len() + args.len(),
                data + 20 * (1 + args.len()),
            );
            c.arg(verb).arg(body).arg(keys.len()).arg(keys).arg(args);
            c
        };
        let evalsha = build("EVALSHA", &script.sha);
        match self.query(&evalsha).await {
            Err(RedisFault::Failed(e))
                if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                self.query(&build("EVAL", script.source)).await
            }
            other => other,
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisFault> {
        let value = match &*self.conn {
            Conn::Single(m) => m.clone().req_packed_command(cmd).await?,
            Conn::Cluster(slot) => {
                let Some(c) = slot.load_full() else {
                    return Err(RedisFault::NotConnected);
                };
                (*c).clone().req_packed_command(cmd).await?
            }
        };
        // A server error (NOSCRIPT, a script error) arrives as a value; make it an error.
        Ok(redis::from_redis_value(value.extract_error()?)?)
    }
}

impl Drop for RedisLink {
    fn drop(&mut self) {
        if let Some(t) = self.connector.take() {
            t.abort();
        }
    }
}

/// Every Redis connection ward opens sends at once (`TCP_NODELAY`). The redis crate leaves
/// Nagle's algorithm on by default, which holds a command written while another is unanswered
/// (the second of two concurrent lockout gates, a deferred commit beside the next request's
/// check) until the first reply: a second round trip where one was meant.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

fn open_client(url: &str) -> Result<redis::Client, RedisError> {
    let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
    redis::Client::open(info)
}

async fn connect_cluster(client: redis::cluster::ClusterClient, conn: Arc<Conn>) {
    let Conn::Cluster(slot) = &*conn else { return };
    let mut wait = Duration::from_millis(100);
    loop {
        match client.get_async_connection().await {
            Ok(c) => {
                slot.store(Some(Arc::new(c)));
                tracing::info!("connected to the Redis Cluster");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "cannot connect to the Redis Cluster yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

enum Admit {
    Closed,
    Probe,
    Open,
}

/// Consecutive failures open it for a cooldown; then one probe at a time decides.
struct Breaker {
    epoch: Instant,
    failures: AtomicU32,
    /// Nanoseconds since `epoch` until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    fn new() -> Breaker {
        Breaker {
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    fn admit(&self) -> Admit {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Admit::Closed;
        }
        if self.now() < until {
            return Admit::Open;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Admit::Probe,
            Err(_) => Admit::Open,
        }
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// Records a failure; true when this failure opened the breaker.
    fn failure(&self, probing: bool, tuning: &RedisTuning) -> bool {
        let reopen = self.now() + tuning.breaker_cooldown.as_nanos() as u64;
        if probing {
            self.open_until.store(reopen.max(1), Ordering::Release);
            self.probing.store(false, Ordering::Release);
            return false;
        }
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= tuning.breaker_failures && self.open_until.load(Ordering::Acquire) == 0 {
            self.open_until.store(reopen.max(1), Ordering::Release);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_node_or_a_cluster() {
        assert_eq!(
            "redis://127.0.0.1:6379".parse::<RedisTarget>().unwrap(),
            RedisTarget::Single("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            "redis+cluster://a:1,b:2".parse::<RedisTarget>().unwrap(),
            RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        let t: RedisTarget = "rediss+cluster://u:secret@a:1,b:2".parse().unwrap();
        assert_eq!(
            t,
            RedisTarget::Cluster(vec![
                "rediss://u:secret@a:1".into(),
                "rediss://u:secret@b:2".into()
            ])
        );
        assert!(!t.to_string().contains("secret"), "{t}");
        assert!("http://x".parse::<RedisTarget>().is_err());
        assert!("redis+cluster://".parse::<RedisTarget>().is_err());
    }

    /// Keys are `<prefix>:<kind>:{<key>}`: the braces are the Cluster hash tag that keeps one
    /// limit's or one identity's keys on one slot (connecting is lazy: no Redis needed here).
    #[tokio::test]
    async fn keys_carry_the_prefix_the_kind_and_a_hash_tag() {
        let link = RedisLink::connect(
            "redis://127.0.0.1:9".parse().unwrap(),
            "ward-x",
            crate::telemetry::Metrics::new().redis.clone(),
        )
        .unwrap();
        assert_eq!(
            link.key("rl", "api:ip:1.2.3.4"),
            "ward-x:rl:{api:ip:1.2.3.4}"
        );
        assert_eq!(link.key("lo", ""), "ward-x:lo:{}");
    }

    #[test]
    fn default_tuning_leaves_room_for_a_busy_redis() {
        // 50 ms timed out under saturation (the local fallback took over while Redis was up).
        let yaml = "version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: all\n";
        let p =
            crate::policy::compile::compile_sources(&[("p.yaml".into(), yaml.to_owned())]).unwrap();
        assert_eq!(p.server.redis.timeout, Duration::from_millis(250));
        assert_eq!(p.server.redis.breaker_failures, 5);
        assert_eq!(p.server.redis.breaker_cooldown, Duration::from_secs(2));
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_one_probe_decides() {
        let tuning = RedisTuning {
            timeout: Duration::from_millis(10),
            breaker_failures: 2,
            breaker_cooldown: Duration::ZERO,
        };
        let b = Breaker::new();
        assert!(matches!(b.admit(), Admit::Closed));
        assert!(!b.failure(false, &tuning));
        assert!(b.failure(false, &tuning), "the second failure opens it");
        assert!(b.is_open());
        // Cooldown zero: the next caller probes, the one after waits for the probe.
        assert!(matches!(b.admit(), Admit::Probe));
        assert!(matches!(b.admit(), Admit::Open));
        b.failure(true, &tuning);
        assert!(matches!(b.admit(), Admit::Probe));
        b.success();
        assert!(!b.is_open());
        assert!(matches!(b.admit(), Admit::Closed));
    }
}
