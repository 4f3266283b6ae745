//! Logging (JSON lines through `tracing`) and the Prometheus registry with one struct of handles.
//!
//! Metric labels are route names and rule names, never raw paths, so cardinality stays bounded.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::sni::Certificates;

/// Where log lines go: the proxy and `ward demo` log to stdout; the payments tools to stderr
/// (their stdout carries what they print, like bootstrap's one-time password).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    Stderr,
}

/// Installs the global JSON log subscriber, one line shape for every service (see
/// `access_log`). `level` is an env-filter directive such as `info`.
///
/// Lines are formatted on the request's thread into a shared buffer; a background thread writes
/// the buffer out every 50 ms (at once past 256 KiB). The request path makes no system call
/// and wakes no thread for logging. If the output cannot keep up and 8 MiB are pending, further
/// lines are dropped and counted in `dropped` (bounded memory, availability first).
/// Keep the returned guard alive: dropping it writes out what is pending.
pub fn init_logging(level: &str, output: LogOutput, dropped: IntCounter) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sink = Arc::new(LogSink {
        pending: Mutex::new(Vec::with_capacity(64 * 1024)),
        wake: Condvar::new(),
        stop: AtomicBool::new(false),
        dropped,
    });
    let writer = sink.clone();
    let flusher = std::thread::Builder::new()
        .name("ward-log".into())
        .spawn(move || sink_loop(&writer, output))
        .expect("spawning the log writer thread at start-up");
    let installed = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(LogWriter(sink.clone()))
        .try_init();
    if installed.is_ok() {
        // The request line skips tracing's formatter (a quarter of a request's instructions):
        // `access_log` writes it into the same buffer, when the filter lets it through.
        let on = tracing::enabled!(target: "ward::access_log", tracing::Level::INFO);
        let _ = ACCESS_OUTPUT.set(if on {
            AccessOutput::Direct(sink.clone())
        } else {
            AccessOutput::Off
        });
    }
    LogGuard {
        sink,
        flusher: Some(flusher),
    }
}

const LOG_FLUSH_EVERY: Duration = Duration::from_millis(50);
const LOG_FLUSH_AT: usize = 256 * 1024;
const LOG_MAX_PENDING: usize = 8 * 1024 * 1024;

pub(crate) struct LogSink {
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
    stop: AtomicBool,
    dropped: IntCounter,
}

fn sink_loop(sink: &LogSink, output: LogOutput) {
    let mut out: Box<dyn std::io::Write> = match output {
        LogOutput::Stdout => Box::new(std::io::stdout()),
        LogOutput::Stderr => Box::new(std::io::stderr()),
    };
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        let stopping = {
            let guard = sink.pending.lock().expect("log buffer lock");
            let (mut guard, _) = sink
                .wake
                .wait_timeout_while(guard, LOG_FLUSH_EVERY, |p| {
                    p.len() < LOG_FLUSH_AT && !sink.stop.load(Ordering::Relaxed)
                })
                .expect("log buffer lock");
            std::mem::swap(&mut *guard, &mut spare);
            sink.stop.load(Ordering::Relaxed)
        };
        if !spare.is_empty() {
            let _ = out.write_all(&spare);
            let _ = out.flush();
            spare.clear();
        }
        if stopping {
            return;
        }
    }
}

/// Hands tracing a writer that appends to the shared buffer.
#[derive(Clone)]
struct LogWriter(Arc<LogSink>);

impl LogSink {
    /// Appends whole lines to the pending buffer, or drops and counts them when it is full.
    pub(crate) fn append(&self, buf: &[u8]) {
        let mut pending = self.pending.lock().expect("log buffer lock");
        if pending.len() + buf.len() > LOG_MAX_PENDING {
            self.dropped.inc();
            return;
        }
        pending.extend_from_slice(buf);
        if pending.len() >= LOG_FLUSH_AT {
            self.wake.notify_one();
        }
    }
}

/// Where the request log line goes (see `access_log`).
pub(crate) enum AccessOutput {
    /// Straight into the log buffer, already formatted as one JSON line.
    Direct(Arc<LogSink>),
    /// The level filter drops the line.
    Off,
}

/// Set by `init_logging` when it installed ward's subscriber; unset (tests, other subscribers),
/// the line goes through `tracing` like any other event.
static ACCESS_OUTPUT: std::sync::OnceLock<AccessOutput> = std::sync::OnceLock::new();

pub(crate) fn access_output() -> Option<&'static AccessOutput> {
    ACCESS_OUTPUT.get()
}

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

/// Writes out pending log lines when dropped.
pub struct LogGuard {
    sink: Arc<LogSink>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.sink.stop.store(true, Ordering::Relaxed);
        self.sink.wake.notify_one();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
    }
}

/// Every metric the proxy exports.
#[derive(Clone)]
pub struct Metrics {
    /// Tells one set of metrics from another (clones share it, and share the metrics too), so a
    /// [`Resolved`] handle is only ever used with the metrics it came from.
    id: u64,
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    /// Time the session checks (refresh single use, login lockout) held a request on its way,
    /// before the upstream and on its answer, by route: what they add to its latency.
    pub session_check_duration: HistogramVec,
    pub rate_limit_decisions: IntCounterVec,
    pub shadow_blocks: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub policy_info: IntGaugeVec,
    pub cert_reloads: IntCounterVec,
    pub tls_certificate_expiry: IntGauge,
    pub tls_handshake_errors: IntCounter,
    pub open_connections: IntGauge,
    pub connections_refused: IntCounterVec,
    pub rate_limit_keys_evicted: IntCounter,
    pub framing_rejections: IntCounterVec,
    pub log_lines_dropped: IntCounter,
    pub auth_decisions: IntCounterVec,
    pub token_cache_lookups: IntCounterVec,
    pub token_cache_entries: IntGauge,
    pub rate_limit_fallbacks: IntCounterVec,
    pub jwks: crate::keystore::KeyMetrics,
    pub redis: crate::redis_link::RedisMetrics,
    pub revocation: crate::state::revocation::RevocationMetrics,
    pub events: crate::state::events::EventMetrics,
    pub session_store_errors: IntCounterVec,
    pub upstream: crate::proxy::upstream::UpstreamMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c =
                IntCounterVec::new(Opts::new(name, help), labels).expect("metric names are valid");
            registry
                .register(Box::new(c.clone()))
                .expect("each metric is registered once");
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.clone()),
                &["route"],
            )
            .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("each metric is registered once");
            h
        };
        let requests = counter(
            "ward_requests_total",
            "Requests answered, by route and status class.",
            &["route", "status"],
        );
        let request_duration = histogram(
            "ward_request_duration_seconds",
            "Time from request head to response head, by route.",
        );
        let upstream_duration = histogram(
            "ward_upstream_duration_seconds",
            "Time the upstream took to answer with headers, by route.",
        );
        let session_check_duration = HistogramVec::new(
            HistogramOpts::new(
                "ward_session_check_duration_seconds",
                "Time the session checks added to a request on a route with refresh or lockout \
                 rules (before the upstream and on its answer; deferred writes not included).",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                0.025, 0.1,
            ]),
            &["route"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(session_check_duration.clone()))
            .expect("registered once");
        let rate_limit_decisions = counter(
            "ward_rate_limit_decisions_total",
            "Rate-limit decisions by limit: allowed, limited, shadow_limited.",
            &["limit", "decision"],
        );
        let shadow_blocks = counter(
            "ward_shadow_blocks_total",
            "Requests a shadow-mode rule would have blocked, by route and rule.",
            &["route", "rule"],
        );
        let policy_reloads = counter(
            "ward_policy_reloads_total",
            "Policy reloads by result: changed, unchanged, error.",
            &["result"],
        );
        let cert_reloads = counter(
            "ward_cert_reloads_total",
            "Certificate reloads by result: changed, error.",
            &["result"],
        );
        let connections_refused = counter(
            "ward_connections_refused_total",
            "Client connections closed at accept, by reason.",
            &["reason"],
        );
        let framing_rejections = counter(
            "ward_framing_rejections_total",
            "HTTP/1 requests refused by the framing guard, by reason.",
            &["reason"],
        );
        let policy_info = IntGaugeVec::new(
            Opts::new(
                "ward_policy_info",
                "The active policy (value 1), labelled by its hash.",
            ),
            &["hash"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(policy_info.clone()))
            .expect("registered once");
        let tls_certificate_expiry = IntGauge::new(
            "ward_tls_certificate_expiry_timestamp_seconds",
            "The serving certificate's notAfter, in unix seconds.",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(tls_certificate_expiry.clone()))
            .expect("registered once");
        let tls_handshake_errors = IntCounter::new(
            "ward_tls_handshake_errors_total",
            "TLS handshakes that failed or timed out.",
        )
        .expect("valid counter");
        registry
            .register(Box::new(tls_handshake_errors.clone()))
            .expect("registered once");
        let open_connections =
            IntGauge::new("ward_open_connections", "Client connections open now.")
                .expect("valid gauge");
        registry
            .register(Box::new(open_connections.clone()))
            .expect("registered once");
        let rate_limit_keys_evicted = IntCounter::new(
            "ward_rate_limit_keys_evicted_total",
            "Rate-limit keys dropped to keep memory bounded.",
        )
        .expect("valid counter");
        registry
            .register(Box::new(rate_limit_keys_evicted.clone()))
            .expect("registered once");
        let log_lines_dropped = IntCounter::new(
            "ward_log_lines_dropped_total",
            "Log lines dropped because stdout could not keep up.",
        )
        .expect("valid counter");
        registry
            .register(Box::new(log_lines_dropped.clone()))
            .expect("registered once");
        let auth_decisions = counter(
            "ward_auth_decisions_total",
            "Authentication and authorization decisions by route, result (allow, deny, shadow) and reason.",
            &["route", "result", "reason"],
        );
        let token_cache_lookups = counter(
            "ward_token_cache_lookups_total",
            "Verified-token cache lookups by result: hit, miss.",
            &["result"],
        );
        let rate_limit_fallbacks = counter(
            "ward_rate_limit_fallbacks_total",
            "Rate-limit decisions made on this replica alone because Redis was unavailable, by limit.",
            &["limit"],
        );
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let token_cache_entries = gauge(
            "ward_token_cache_entries",
            "Verified tokens held in the cache now.",
        );
        let jwks = crate::keystore::KeyMetrics {
            refreshes: counter(
                "ward_jwks_refreshes_total",
                "JWKS loads by issuer and result: ok, error.",
                &["issuer", "result"],
            ),
            keys: gauge_vec(
                "ward_jwks_keys",
                "Keys in the issuer's live key set.",
                &["issuer"],
            ),
            loaded_at: gauge_vec(
                "ward_jwks_loaded_timestamp_seconds",
                "Unix time of the issuer's last successful key load (age: time() minus this).",
                &["issuer"],
            ),
        };
        let redis_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ward_redis_call_duration_seconds",
                "Time of Redis calls, answered or not.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(redis_latency.clone()))
            .expect("registered once");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "ward_redis_rate_limit_batch_size",
                "Rate-limit decisions carried by one Redis call (single node; checks that arrive together share a call).",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(batch_size.clone()))
            .expect("registered once");
        let redis = crate::redis_link::RedisMetrics {
            up: gauge(
                "ward_redis_up",
                "1 when the last Redis call succeeded, 0 when it failed (or no call yet).",
            ),
            breaker_open: gauge(
                "ward_redis_breaker_open",
                "1 while the Redis circuit breaker is open (no Redis calls are made).",
            ),
            errors: counter(
                "ward_redis_errors_total",
                "Redis calls that gave no answer, by operation and kind: timeout, error, not_connected, breaker_open, queue_full (rate-limit checks waiting for a batch are bounded).",
                &["op", "kind"],
            ),
            latency: redis_latency,
            batch_size,
        };
        let int_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let revocation = crate::state::revocation::RevocationMetrics {
            entries: gauge(
                "ward_revocations",
                "Revocations held in this replica's in-process copy.",
            ),
            synced: gauge(
                "ward_revocations_synced",
                "1 while the revocation copy is loaded and kept current (memory: always), 0 otherwise.",
            ),
            hits: counter(
                "ward_revocation_hits_total",
                "Requests refused because their token was revoked, by kind: token, session, subject.",
                &["kind"],
            ),
            resyncs: int_counter(
                "ward_revocation_resyncs_total",
                "Full loads of the revocations from Redis (start and every reconnect).",
            ),
            bad_messages: int_counter(
                "ward_revocation_bad_messages_total",
                "Revocation messages or entries that did not parse (ignored).",
            ),
            unsynced_passes: int_counter(
                "ward_revocation_unsynced_passes_total",
                "Tokens let through unchecked because the revocations were never loaded (fail_open).",
            ),
        };
        let events = crate::state::events::EventMetrics {
            emitted: counter(
                "ward_security_events_total",
                "Security events by kind: auth_failed, token_revoked, refresh_reuse, lockout_started, lockout_ended, rate_limited, policy_reload_failed.",
                &["event"],
            ),
            dropped: int_counter(
                "ward_security_events_dropped_total",
                "Security events not delivered because the queue to the sink was full.",
            ),
            delivered: int_counter(
                "ward_security_events_delivered_total",
                "Security events delivered to the sink.",
            ),
            delivery_failures: int_counter(
                "ward_security_event_delivery_failures_total",
                "Failed deliveries to the sink (each retried).",
            ),
        };
        let session_store_errors = counter(
            "ward_session_store_errors_total",
            "Refresh-token and lockout store calls that failed, by store.",
            &["store"],
        );
        let upstream = crate::proxy::upstream::UpstreamMetrics {
            breaker_state: gauge_vec(
                "ward_upstream_breaker_state",
                "Circuit breaker of each upstream: 0 closed, 1 open, 2 half-open.",
                &["upstream"],
            ),
            events: counter(
                "ward_upstream_events_total",
                "Upstream decisions and failures by upstream and event: retry, retry_budget_exhausted, breaker_open, shed, body_timeout, connect_error, reset, bad_response, timeout.",
                &["upstream", "event"],
            ),
            in_flight: gauge_vec(
                "ward_upstream_in_flight",
                "Requests in flight to each upstream (load shedding above max_concurrent).",
                &["upstream"],
            ),
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            upstream,
            revocation,
            events,
            session_store_errors,
            auth_decisions,
            token_cache_lookups,
            token_cache_entries,
            rate_limit_fallbacks,
            jwks,
            redis,
            log_lines_dropped,
            registry,
            requests,
            request_duration,
            upstream_duration,
            session_check_duration,
            rate_limit_decisions,
            shadow_blocks,
            policy_reloads,
            policy_info,
            cert_reloads,
            tls_certificate_expiry,
            tls_handshake_errors,
            open_connections,
            connections_refused,
            rate_limit_keys_evicted,
            framing_rejections,
        }
    }

    /// Marks `hash` as the active policy.
    pub fn set_policy(&self, hash: &str) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[hash]).set(1);
    }

    /// Records the serving certificates' expiry (at start and after each certificate reload):
    /// the earliest among them, the one to renew first.
    pub fn set_certificate_expiry(&self, certs: &Certificates) {
        if let Some(t) = certs.earliest_not_after() {
            self.tls_certificate_expiry.set(t);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    pub fn upstream_timer(&self, route: &str) -> Histogram {
        self.upstream_duration.with_label_values(&[route])
    }
}

/// One labelled metric's handle, looked up on first use and kept by the policy object it
/// belongs to (a route, a rate limit), instead of looked up per request: `with_label_values`
/// hashes every label value with SipHash and reads the vector's map under a lock, about 380
/// instructions a lookup (callgrind), and a request made six of them. A policy reload builds new
/// routes, whose handles resolve again to the same series (same labels, same counts).
///
/// Bound to the [`Metrics`] that filled it: used with any other (one process running several
/// proxies, as tests do), the handle is looked up afresh each time, never shared.
pub struct Resolved<T>(OnceLock<(u64, T)>);

impl<T: Clone> Resolved<T> {
    /// The handle `lookup` finds in `metrics`, looked up only the first time.
    pub fn get(&self, metrics: &Metrics, lookup: impl Fn(&Metrics) -> T) -> Cow<'_, T> {
        let (owner, handle) = self.0.get_or_init(|| (metrics.id, lookup(metrics)));
        if *owner == metrics.id {
            Cow::Borrowed(handle)
        } else {
            Cow::Owned(lookup(metrics))
        }
    }
}

impl<T> Default for Resolved<T> {
    fn default() -> Self {
        Resolved(OnceLock::new())
    }
}

/// A copied policy object looks its handles up again.
impl<T> Clone for Resolved<T> {
    fn clone(&self) -> Self {
        Resolved::default()
    }
}

impl<T> std::fmt::Debug for Resolved<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Resolved"
        } else {
            "Unresolved"
        })
    }
}

/// A route's per-request metric handles (see [`Resolved`]).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// `ward_requests_total{route,status}`, by status class 1xx to 5xx.
    pub requests: [Resolved<IntCounter>; 5],
    /// `ward_request_duration_seconds{route}`.
    pub duration: Resolved<Histogram>,
    /// `ward_upstream_duration_seconds{route}`.
    pub upstream_duration: Resolved<Histogram>,
    /// `ward_auth_decisions_total{route,result="allow",reason="ok"}`.
    pub auth_allowed: Resolved<IntCounter>,
}

/// The Prometheus text exposition of a registry: one implementation for both services (each
/// keeps its own registry, so the proxy and the service in one process never collide).
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding into a Vec cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// RFC 3339 in UTC, for logs and the admin port.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolved_handle_counts_only_into_the_metrics_it_came_from() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let route = RouteMetrics::default();
        let lookup = |m: &Metrics| m.requests.with_label_values(&["r", "2xx"]);
        route.requests[1].get(&a, lookup).inc();
        route.requests[1].get(&b, lookup).inc();
        route.requests[1].get(&a, lookup).inc();
        // A clone of the metrics shares them, and so may share the handle.
        route.requests[1].get(&a.clone(), lookup).inc();
        assert_eq!(lookup(&a).get(), 3);
        assert_eq!(lookup(&b).get(), 1);
        assert!(matches!(
            route.requests[1].get(&a, lookup),
            Cow::Borrowed(_)
        ));
        assert!(matches!(route.requests[1].get(&b, lookup), Cow::Owned(_)));
    }
}
