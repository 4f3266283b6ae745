//! Security events: what an operator and a tenant's auditors want to know happened at the edge.
//! Each is a structured JSON log line and a Prometheus counter, and, when a sink is configured,
//! is delivered in batches to the bundled payments service's internal audit intake, where it
//! lands in the audit chain of the tenant it concerns. The queue is bounded and never blocks a
//! request: when the sink is down or slow, events beyond the queue are dropped and counted.
//! Events never carry a token, a password or an unmasked identity.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::mpsc;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    AuthFailed,
    TokenRevoked,
    RefreshReuse,
    LockoutStarted,
    LockoutEnded,
    RateLimited,
    PolicyReloadFailed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AuthFailed => "auth_failed",
            EventKind::TokenRevoked => "token_revoked",
            EventKind::RefreshReuse => "refresh_reuse",
            EventKind::LockoutStarted => "lockout_started",
            EventKind::LockoutEnded => "lockout_ended",
            EventKind::RateLimited => "rate_limited",
            EventKind::PolicyReloadFailed => "policy_reload_failed",
        }
    }
}

/// One event, as the sink receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityEvent {
    pub kind: EventKind,
    /// The tenant it concerns (from a verified token or API key); `None`: the system tenant.
    pub tenant_id: Option<String>,
    pub subject: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub request_id: Option<String>,
    pub route: Option<String>,
    /// A short reason, e.g. `expired`, `session`, `identity` (never a credential).
    pub reason: String,
}

/// Where events go besides logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    pub url: String,
    /// File holding the bearer token the intake expects (re-read at each (re)start of delivery).
    pub token_file: PathBuf,
    pub queue: usize,
    pub batch: usize,
    pub flush_every: Duration,
}

#[derive(Clone)]
pub struct EventMetrics {
    /// `{event}`
    pub emitted: prometheus::IntCounterVec,
    pub dropped: prometheus::IntCounter,
    pub delivered: prometheus::IntCounter,
    pub delivery_failures: prometheus::IntCounter,
}

struct Delivery {
    sink: Sink,
    tx: mpsc::Sender<SecurityEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct SecurityEvents {
    metrics: EventMetrics,
    delivery: ArcSwapOption<Delivery>,
}

impl SecurityEvents {
    pub fn new(metrics: EventMetrics) -> SecurityEvents {
        SecurityEvents {
            metrics,
            delivery: ArcSwapOption::empty(),
        }
    }

    /// Logs, counts and (when a sink is configured) queues `e`. Never blocks.
    pub fn emit(&self, e: SecurityEvent) {
        self.metrics
            .emitted
            .with_label_values(&[e.kind.as_str()])
            .inc();
        tracing::warn!(
            security_event = e.kind.as_str(),
            tenant = e.tenant_id.as_deref(),
            subject = e.subject.as_deref(),
            client_ip = e.client_ip.map(|ip| ip.to_string()),
            request_id = e.request_id.as_deref(),
            route = e.route.as_deref(),
            reason = e.reason.as_str(),
            "security event"
        );
        if let Some(d) = self.delivery.load().as_ref() {
            if d.tx.try_send(e).is_err() {
                self.metrics.dropped.inc();
            }
        }
    }

    /// Starts, replaces or stops delivery to match `sink` (call with each new policy).
    pub fn configure(&self, sink: Option<&Sink>) {
        let current = self.delivery.load();
        if current.as_ref().map(|d| &d.sink) == sink {
            return;
        }
        let next = sink.map(|s| {
            let (tx, rx) = mpsc::channel(s.queue.max(1));
            Arc::new(Delivery {
                sink: s.clone(),
                tx,
                task: tokio::spawn(deliver(s.clone(), rx, self.metrics.clone())),
            })
        });
        self.delivery.store(next);
    }
}

/// Takes batches off the queue and posts them; a failed post is retried with backoff while the
/// queue (bounded) absorbs or drops what comes meanwhile.
async fn deliver(sink: Sink, mut rx: mpsc::Receiver<SecurityEvent>, metrics: EventMetrics) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the security event client");
            return;
        }
    };
    let mut batch: Vec<SecurityEvent> = Vec::with_capacity(sink.batch);
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(e) => batch.push(e),
                None => return,
            }
        }
        // Fill the batch for at most `flush_every`.
        let deadline = tokio::time::Instant::now() + sink.flush_every;
        while batch.len() < sink.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        let mut wait = Duration::from_millis(200);
        loop {
            match post(&client, &sink, &batch).await {
                Ok(()) => {
                    metrics.delivered.inc_by(batch.len() as u64);
                    batch.clear();
                    break;
                }
                Err(e) => {
                    metrics.delivery_failures.inc();
                    tracing::warn!(error = e.as_str(), retry_in = ?wait, events = batch.len(), "security event delivery failed");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

async fn post(
    client: &reqwest::Client,
    sink: &Sink,
    batch: &[SecurityEvent],
) -> Result<(), String> {
    let token = std::fs::read_to_string(&sink.token_file)
        .map_err(|e| format!("cannot read {}: {e}", sink.token_file.display()))?;
    let resp = client
        .post(&sink.url)
        .bearer_auth(token.trim())
        .json(&serde_json::json!({ "events": batch }))
        .send()
        .await
        .map_err(|e| format!("POST {}: {e}", sink.url))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("POST {}: status {}", sink.url, resp.status()))
    }
}
