//! The key store: the live public keys of every JWKS source the policy names. Keys are not
//! policy: they change on the issuer's schedule, so they live beside the `PolicyStore`, one
//! `ArcSwap` per source, each refreshed by its own task and keeping the last good set, exactly
//! like certificates.
//!
//! A URL source is fetched at once, then every `refresh`, and early when a token names an unknown
//! `kid` (at most once per `min_refetch`, so garbage kids cannot make ward hammer the issuer).
//! A failed fetch keeps the last good keys; until a source has loaded once, `/readyz` says so and
//! routes that need it answer 503. A file source is read at once and re-read when it changes.
//! `jku`, `x5u` and the like are never fetched: only the URLs in the policy are.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;

use crate::identity::keyset::{KeySet, MAX_JWKS_BYTES};
use crate::policy::auth::{JwksLocation, JwksSource};
use crate::policy::{KeySource, Policy};

/// Metric handles.
#[derive(Clone)]
pub struct KeyMetrics {
    /// `{issuer, result}`: ok, error.
    pub refreshes: prometheus::IntCounterVec,
    /// `{issuer}`: keys in the live set.
    pub keys: prometheus::IntGaugeVec,
    /// `{issuer}`: unix time of the last successful load.
    pub loaded_at: prometheus::IntGaugeVec,
}

/// One source's live keys.
pub struct LiveKeys {
    pub source: JwksSource,
    /// The issuer name used in metrics (the first issuer naming this source).
    pub label: String,
    current: ArcSwapOption<KeySet>,
    status: Mutex<Status>,
    refetch: Notify,
}

#[derive(Debug, Clone, Default)]
pub struct Status {
    pub loaded_at: Option<SystemTime>,
    pub last_error: Option<String>,
}

impl LiveKeys {
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    pub fn status(&self) -> Status {
        self.status.lock().expect("key status lock").clone()
    }

    /// Asks for an early fetch (a token named an unknown `kid`); the task applies the floor.
    pub fn refetch(&self) {
        self.refetch.notify_one();
    }

    fn loaded(&self, set: KeySet, metrics: &KeyMetrics) {
        let n = set.len();
        self.current.store(Some(Arc::new(set)));
        let now = SystemTime::now();
        *self.status.lock().expect("key status lock") = Status {
            loaded_at: Some(now),
            last_error: None,
        };
        metrics
            .refreshes
            .with_label_values(&[&self.label, "ok"])
            .inc();
        metrics.keys.with_label_values(&[&self.label]).set(n as i64);
        metrics.loaded_at.with_label_values(&[&self.label]).set(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
    }

    fn failed(&self, error: String, metrics: &KeyMetrics) {
        tracing::warn!(
            issuer = self.label.as_str(),
            error = error.as_str(),
            "JWKS refresh failed; keeping the last good keys"
        );
        self.status.lock().expect("key status lock").last_error = Some(error);
        metrics
            .refreshes
            .with_label_values(&[&self.label, "error"])
            .inc();
    }
}

pub struct KeyStore {
    /// Hashed with foldhash, not std's SipHash: looked up on every authenticated request by a
    /// name from the policy (std's hasher spent about 390 instructions on it, callgrind).
    sources: ArcSwap<foldhash::HashMap<Arc<str>, Arc<LiveKeys>>>,
    tasks: Mutex<HashMap<Arc<str>, tokio::task::JoinHandle<()>>>,
    metrics: KeyMetrics,
}

impl KeyStore {
    pub fn new(metrics: KeyMetrics) -> KeyStore {
        KeyStore {
            sources: ArcSwap::default(),
            tasks: Mutex::default(),
            metrics,
        }
    }

    /// The live keys of a source (by `JwksSource::id`).
    pub fn get(&self, id: &str) -> Option<Arc<LiveKeys>> {
        self.sources.load().get(id).cloned()
    }

    /// Starts a task for every source `policy` names that has none yet, stops those it no longer
    /// names. A file source is read before this returns. Call with each new policy.
    pub fn reconcile(&self, policy: &Policy) {
        let mut wanted: HashMap<Arc<str>, (JwksSource, String)> = HashMap::new();
        for is in &policy.identity.issuers {
            if let KeySource::Jwks(src) = &is.keys {
                wanted
                    .entry(src.id.clone())
                    .or_insert_with(|| (src.clone(), is.rules.name.to_string()));
            }
        }
        let current = self.sources.load_full();
        let mut next: foldhash::HashMap<Arc<str>, Arc<LiveKeys>> = Default::default();
        let mut tasks = self.tasks.lock().expect("key task lock");
        for (id, (source, label)) in wanted {
            if let Some(live) = current.get(&id) {
                next.insert(id, live.clone());
                continue;
            }
            let live = Arc::new(LiveKeys {
                source,
                label,
                current: ArcSwapOption::empty(),
                status: Mutex::default(),
                refetch: Notify::new(),
            });
            if let JwksLocation::File(path) = &live.source.location {
                match read_file(path) {
                    Ok(set) => live.loaded(set, &self.metrics),
                    Err(e) => live.failed(e, &self.metrics),
                }
            }
            tasks.insert(
                id.clone(),
                tokio::spawn(maintain(live.clone(), self.metrics.clone())),
            );
            next.insert(id, live);
        }
        tasks.retain(|id, task| {
            let keep = next.contains_key(id);
            if !keep {
                task.abort();
            }
            keep
        });
        self.sources.store(Arc::new(next));
    }

    /// Sources that have never loaded, with their last error: not ready while any is listed.
    pub fn unready(&self) -> Vec<(String, String)> {
        self.sources
            .load()
            .values()
            .filter(|l| l.keys().is_none())
            .map(|l| {
                (
                    l.label.clone(),
                    l.status()
                        .last_error
                        .unwrap_or_else(|| "not loaded yet".into()),
                )
            })
            .collect()
    }

    /// Every source with its state, for `/policy`.
    pub fn describe(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = self
            .sources
            .load()
            .values()
            .map(|l| {
                let s = l.status();
                serde_json::json!({
                    "issuer": l.label,
                    "source": match &l.source.location {
                        JwksLocation::Url(u) => u.clone(),
                        JwksLocation::File(p) => p.display().to_string(),
                    },
                    "kids": l.keys().map(|k| k.kids().into_iter().map(str::to_owned).collect::<Vec<_>>()),
                    "loaded_at": s.loaded_at.map(crate::telemetry::rfc3339),
                    "last_error": s.last_error,
                })
            })
            .collect();
        out.sort_by(|a, b| a["issuer"].as_str().cmp(&b["issuer"].as_str()));
        out
    }
}

impl Drop for KeyStore {
    fn drop(&mut self) {
        for (_, t) in self.tasks.lock().expect("key task lock").drain() {
            t.abort();
        }
    }
}

fn read_file(path: &Path) -> Result<KeySet, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    KeySet::from_jwks(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

async fn maintain(live: Arc<LiveKeys>, metrics: KeyMetrics) {
    match live.source.location.clone() {
        JwksLocation::Url(url) => poll_url(&live, &metrics, &url).await,
        JwksLocation::File(path) => watch_file(&live, &metrics, &path).await,
    }
}

async fn poll_url(live: &LiveKeys, metrics: &KeyMetrics, url: &str) {
    let client = match http_client(&live.source) {
        Ok(c) => c,
        Err(e) => {
            live.failed(e, metrics);
            return;
        }
    };
    let src = &live.source;
    let mut failures: u32 = 0;
    loop {
        let fetched_at = Instant::now();
        match fetch(&client, url).await {
            Ok(set) => {
                failures = 0;
                live.loaded(set, metrics);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                live.failed(e, metrics);
            }
        }
        // Next scheduled fetch: the refresh period, or sooner with backoff after failures.
        let wait = if failures == 0 {
            src.refresh
        } else {
            (Duration::from_millis(500) * 2u32.saturating_pow(failures.min(10) - 1))
                .min(src.refresh)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = live.refetch.notified() => {
                // An unknown kid: fetch now, but never sooner than min_refetch after the last fetch.
                tokio::time::sleep_until((fetched_at + src.min_refetch).into()).await;
            }
        }
    }
}

fn http_client(src: &JwksSource) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(src.timeout)
        .connect_timeout(src.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("ward/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &src.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| format!("cannot build the JWKS client: {e}"))
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<KeySet, String> {
    let mut resp = client
        .get(url)
        .header("accept", "application/jwk-set+json, application/json")
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: status {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("GET {url}: larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    KeySet::from_jwks(&body).map_err(|e| format!("GET {url}: {e}"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn watch_file(live: &LiveKeys, metrics: &KeyMetrics, path: &Path) {
    let dir = crate::policy::watch::watch_dir(path);
    let (_watcher, mut rx) =
        match crate::policy::watch::watch(&[dir], crate::policy::watch::file_names(&[path])) {
            Ok(w) => w,
            Err(e) => {
                live.failed(format!("cannot watch {}: {e}", path.display()), metrics);
                return;
            }
        };
    while crate::policy::watch::next_change(&mut rx).await.is_some() {
        let p = path.to_owned();
        match tokio::task::spawn_blocking(move || read_file(&p)).await {
            Ok(Ok(set)) => {
                live.loaded(set, metrics);
                tracing::info!(issuer = live.label.as_str(), "JWKS file reloaded");
            }
            Ok(Err(e)) => live.failed(e, metrics),
            Err(e) => live.failed(e.to_string(), metrics),
        }
    }
}
