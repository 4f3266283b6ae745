//! Logging (JSON lines through `tracing`) and the Prometheus registry with one struct of handles.
//!
//! Metric labels are route names and rule names, never raw paths, so cardinality stays bounded.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Installs the global JSON log subscriber. `level` is an env-filter directive such as `info`.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}

/// Every metric the proxy exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub rate_limit_decisions: IntCounterVec,
    pub shadow_blocks: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub policy_info: IntGaugeVec,
    pub cert_reloads: IntCounterVec,
    pub tls_handshake_errors: IntCounter,
    pub open_connections: IntGauge,
    pub connections_refused: IntCounterVec,
    pub rate_limit_keys_evicted: IntCounter,
    pub framing_rejections: IntCounterVec,
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
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            rate_limit_decisions,
            shadow_blocks,
            policy_reloads,
            policy_info,
            cert_reloads,
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    pub fn upstream_timer(&self, route: &str) -> Histogram {
        self.upstream_duration.with_label_values(&[route])
    }
}
