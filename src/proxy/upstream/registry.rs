//! What the proxy keeps per upstream across requests and policy reloads: the connection pool
//! (plain HTTP or rustls), the circuit breaker, the retry budget and the in-flight count. Looked
//! up by the upstream's name; the pool is rebuilt only when the upstream's transport settings
//! (scheme, address, connect timeout, TLS inputs) change, and the breaker and budget are never
//! reset by a reload.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec};

use super::breaker::Breaker;
use super::pool::Pool;
use super::retry::Budget;
use crate::policy::Upstream;

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Largest upstream response head ward buffers (hyper's read buffer): a bigger one is a 502.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Metric handles of the upstream decisions.
#[derive(Clone)]
pub struct UpstreamMetrics {
    /// `ward_upstream_breaker_state{upstream}`: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// `ward_upstream_events_total{upstream,event}`: retry, retry_budget_exhausted,
    /// breaker_open, shed, body_timeout, connect_error, reset, bad_response, timeout.
    pub events: IntCounterVec,
    /// `ward_upstream_in_flight{upstream}`.
    pub in_flight: IntGaugeVec,
}

impl UpstreamMetrics {
    pub fn event(&self, upstream: &str, event: &str) {
        self.events.with_label_values(&[upstream, event]).inc();
    }
}

/// One upstream's live state.
pub struct Live {
    digest: [u8; 32],
    pub pool: Arc<Pool>,
    pub breaker: Arc<Breaker>,
    pub budget: Arc<Budget>,
    in_flight: Arc<AtomicUsize>,
    /// `ward_upstream_in_flight{upstream}`, looked up once here rather than per request.
    gauge: IntGauge,
}

/// A request's place among an upstream's in-flight requests, given back when dropped (when the
/// response body ends or is abandoned).
pub struct InFlight {
    count: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

impl Live {
    /// A place among the in-flight requests, or `None` when `max` are already in flight.
    pub fn enter(&self, max: usize) -> Option<InFlight> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.gauge.inc();
        Some(InFlight {
            count: self.in_flight.clone(),
            gauge: self.gauge.clone(),
        })
    }
}

pub struct Registry {
    /// foldhash (seeded per process), not SipHash: looked up by upstream name on every request.
    live: RwLock<foldhash::HashMap<Arc<str>, Arc<Live>>>,
    pub metrics: UpstreamMetrics,
}

impl Registry {
    pub fn new(metrics: UpstreamMetrics) -> Registry {
        Registry {
            live: RwLock::default(),
            metrics,
        }
    }

    /// The live state of `up`, made on first use and remade (keeping breaker, budget and count)
    /// when its transport settings changed.
    pub fn get(&self, up: &Upstream) -> Arc<Live> {
        if let Some(l) = self
            .live
            .read()
            .expect("registry lock is never poisoned")
            .get(&up.name)
        {
            if l.digest == up.transport_digest {
                return l.clone();
            }
        }
        let mut map = self.live.write().expect("registry lock is never poisoned");
        let old = map.get(&up.name);
        if let Some(l) = old.filter(|l| l.digest == up.transport_digest) {
            return l.clone();
        }
        let live = Arc::new(Live {
            digest: up.transport_digest,
            pool: Arc::new(pool(up)),
            breaker: old.map_or_else(Arc::default, |l| l.breaker.clone()),
            budget: old.map_or_else(Arc::default, |l| l.budget.clone()),
            in_flight: old.map_or_else(Arc::default, |l| l.in_flight.clone()),
            gauge: self.metrics.in_flight.with_label_values(&[&up.name]),
        });
        map.insert(up.name.clone(), live.clone());
        live
    }
}

/// The keep-alive HTTP/1.1 connections of one upstream: plain TCP, or rustls with the policy's
/// roots, SNI name and client certificate.
fn pool(up: &Upstream) -> Pool {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(up.connect_timeout));
    http.enforce_http(false);
    let tls = match &up.tls {
        Some(t) => (*t.config).clone(),
        // A plain-HTTP upstream never uses it: the connector only wraps https:// URIs.
        None => rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    // The name was checked when the policy compiled.
    let sni = up
        .tls
        .as_ref()
        .and_then(|t| t.server_name.as_deref())
        .and_then(|n| {
            rustls_pki_types::ServerName::try_from(n)
                .ok()
                .map(|n| n.to_owned())
        });
    let builder = match sni {
        Some(name) => {
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let connector = builder.enable_http1().wrap_connector(http);
    // The scheme and authority were checked when the policy compiled.
    let target = Uri::builder()
        .scheme(up.scheme.clone())
        .authority(up.authority.clone())
        .path_and_query("/")
        .build()
        .expect("a compiled upstream has a valid scheme and authority");
    let host =
        HeaderValue::from_str(up.authority.as_str()).expect("an authority is a valid header value");
    Pool::new(
        connector,
        target,
        host,
        2048,
        std::time::Duration::from_secs(90),
        MAX_RESPONSE_HEAD,
    )
}
