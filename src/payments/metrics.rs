//! Prometheus metrics of the payments service, in their own registry (never the global one, so
//! tests and the proxy in the same process do not collide). Labelled by route template, never by raw path.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub payments_created_total: IntCounter,
    pub auth_events_total: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts one authentication event (`login_succeeded`, `lockout`, `refresh`, ...).
    pub fn auth_event(&self, kind: &str) {
        self.auth_events_total.with_label_values(&[kind]).inc();
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                "ward_payments_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ward_payments_http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let payments_created_total = IntCounter::new(
            "ward_payments_created_total",
            "Payments created (not counting idempotent replays)",
        )
        .expect("valid metric");
        let auth_events_total = IntCounterVec::new(
            Opts::new(
                "ward_payments_auth_events_total",
                "Authentication events by kind",
            ),
            &["event"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration_seconds.clone()),
            Box::new(payments_created_total.clone()),
            Box::new(auth_events_total.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests_total,
            request_duration_seconds,
            payments_created_total,
            auth_events_total,
        }
    }

    pub fn render(&self) -> String {
        crate::telemetry::render(&self.registry)
    }
}
