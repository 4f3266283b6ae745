//! `ward proxy`: the transport around the pipeline. Accept, TLS handshake (with a deadline),
//! HTTP/1.1 or HTTP/2 by ALPN (hyper's server for the protocol chosen), connection caps, the HTTP/1
//! framing guard, graceful drain; plus the reload tasks for policy and certificates, the admin
//! listener and the optional plain-HTTP redirect listener. Security decisions on requests live
//! in `pipeline`; this module only hands it connection facts.

pub mod admin;
pub mod control;
pub mod discard;
pub mod guard;
pub mod launch;
pub mod pipeline;
pub mod redirect;
pub mod rejection;
pub mod stage;
pub mod token_cache;
pub mod trace;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::keystore::KeyStore;
use crate::limit::{Limiter, MemoryLimiter, RedisLimiter};
use crate::policy::{store::Reloaded, watch, Policy, PolicyStore};
use crate::redis_link::RedisLink;
use crate::sni::Certificates;
use crate::state::events::{EventKind, SecurityEvent, SecurityEvents};
use crate::state::lockout::Lockouts;
use crate::state::refresh::RefreshClaims;
use crate::state::revocation::Revocations;
use crate::telemetry::Metrics;
pub use pipeline::{ConnInfo, Shared};

/// Everything `run` needs, already bound and loaded (start-up errors happen before this).
pub struct Proxy {
    pub listener: TcpListener,
    pub admin: TcpListener,
    pub redirect: Option<TcpListener>,
    pub policy: Arc<PolicyStore>,
    /// The listener's certificates: the default and those chosen by SNI.
    pub certs: Arc<Certificates>,
    pub metrics: Metrics,
    /// Shared state for several replicas (`--redis-url`); `None` keeps limits in memory.
    pub redis: Option<Arc<RedisLink>>,
    /// Revocations, checked on every verified token; in `ward demo` the same value the payments
    /// service revokes into.
    pub revocations: Arc<Revocations>,
    /// The control API's bearer token (`--admin-token-file` / `WARD_ADMIN_TOKEN`); `None`: off.
    pub admin_token: Option<Arc<[u8]>>,
    /// Requests to reload the policy now (production: SIGHUP, see `launch`; tests: their own
    /// sender, so a test reloads only its own proxy).
    pub reload_requests: tokio::sync::mpsc::Receiver<()>,
    /// Longest wait for in-flight requests after shutdown starts.
    pub drain_timeout: Duration,
    /// After the shutdown signal, how long to keep serving with /readyz answering 503 before the
    /// listener closes: the time load balancers and Kubernetes endpoints take to stop sending.
    pub pre_stop_delay: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot watch {what} for changes: {source}")]
    Watch {
        what: &'static str,
        #[source]
        source: notify::Error,
    },
    #[error("the policy locks out logins across replicas (--redis-url) but names no sessions.lockout_key: every replica must key identities alike")]
    LockoutKey,
    #[error("cannot read a listener address: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves until `shutdown` resolves, then drains (up to `drain_timeout`) and returns.
pub async fn run(proxy: Proxy, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
    let first = proxy.policy.snapshot();
    proxy.metrics.set_policy(&first.hash);
    proxy.metrics.set_certificate_expiry(&proxy.certs);
    let memory = MemoryLimiter::new(
        first.server.rate_limit_max_keys,
        proxy.metrics.rate_limit_keys_evicted.clone(),
    );
    let limiter = match &proxy.redis {
        Some(link) => Limiter::Redis(Arc::new(RedisLimiter::new(link.clone(), memory))),
        None => Limiter::Memory(memory),
    };
    let (refresh, lockouts) = match &proxy.redis {
        Some(link) => (
            RefreshClaims::redis(link.clone()),
            Lockouts::redis(link.clone()),
        ),
        None => (RefreshClaims::memory(100_000), Lockouts::memory(100_000)),
    };
    if proxy.redis.is_some()
        && first.sessions.lockout_key.is_none()
        && first.routes.iter().any(|r| r.lockout.is_some())
    {
        return Err(ProxyError::LockoutKey);
    }
    let events = SecurityEvents::new(proxy.metrics.events.clone());
    events.configure(first.sessions.events_sink.as_ref());
    let revocation_sync = tokio::spawn(proxy.revocations.clone().sync());
    let keys = Arc::new(KeyStore::new(proxy.metrics.jwks.clone()));
    keys.reconcile(&first);
    let m = &proxy.metrics;
    let shared = Arc::new(Shared {
        limiter,
        revocations: proxy.revocations.clone(),
        admin_token: proxy.admin_token.clone(),
        refresh,
        lockouts,
        events,
        own_lockout_key: {
            use rand::RngCore;
            let mut k = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut k);
            k
        },
        keys,
        tokens: token_cache::TokenCache::new(
            first.identity.cache_max_entries,
            m.token_cache_lookups.with_label_values(&["hit"]),
            m.token_cache_lookups.with_label_values(&["miss"]),
            m.token_cache_entries.clone(),
        ),
        policy: proxy.policy.clone(),
        metrics: proxy.metrics.clone(),
        upstreams: upstream::Registry::new(m.upstream.clone()),
        draining: AtomicBool::new(false),
    });
    drop(first);
    let acceptor = TlsAcceptor::from(crate::tls::server_config(proxy.certs.clone())?);
    let https_port = proxy.listener.local_addr()?.port();

    // Reload tasks: policy (directory watch + SIGHUP) and certificates (directory watch).
    let policy_dir = watch::watch_dir(proxy.policy.path());
    let (_policy_watcher, policy_rx) =
        watch::watch(&[policy_dir], watch::policy_names(proxy.policy.path())).map_err(
            |source| ProxyError::Watch {
                what: "the policy directory",
                source,
            },
        )?;
    let reloader = tokio::spawn(reload_policy(
        shared.clone(),
        policy_rx,
        proxy.reload_requests,
    ));
    // One watcher for every certificate's files; a change re-reads them all (each store keeps its
    // last good certificate and reports whether anything changed).
    let cert_paths: Vec<&std::path::Path> = proxy
        .certs
        .stores()
        .filter_map(|s| s.paths())
        .flat_map(|p| [p.cert.as_path(), p.key.as_path()])
        .collect();
    let mut cert_watcher = None;
    let mut cert_task = None;
    if !cert_paths.is_empty() {
        let mut dirs: Vec<std::path::PathBuf> =
            cert_paths.iter().map(|p| watch::watch_dir(p)).collect();
        dirs.sort();
        dirs.dedup();
        let (w, rx) = watch::watch(&dirs, watch::file_names(&cert_paths)).map_err(|source| {
            ProxyError::Watch {
                what: "the certificate directory",
                source,
            }
        })?;
        cert_watcher = Some(w);
        cert_task = Some(tokio::spawn(reload_certs(
            proxy.certs.clone(),
            proxy.metrics.clone(),
            rx,
        )));
    }
    let admin_addr = proxy.admin.local_addr()?;
    let admin_task = tokio::spawn(admin::serve(proxy.admin, shared.clone()));
    let redirect_task = proxy
        .redirect
        .map(|l| tokio::spawn(redirect::serve(l, https_port)));

    tracing::info!(listen = %proxy.listener.local_addr()?, admin = %admin_addr, policy = %proxy.policy.path().display(), "ward proxy serving");
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    // Shutdown in two steps: readiness off at once, then `pre_stop_delay` more of normal service
    // (new connections included) while the endpoints drop this replica; only then stop accepting.
    let pre_stop_delay = proxy.pre_stop_delay;
    let pre_stop = async {
        shutdown.await;
        shared.draining.store(true, Ordering::SeqCst);
        if !pre_stop_delay.is_zero() {
            tracing::info!(delay = ?pre_stop_delay, "not ready; serving until the pre-stop delay ends");
            tokio::time::sleep(pre_stop_delay).await;
        }
    };
    crate::serve::accept_until(&proxy.listener, pre_stop, |tcp, peer| {
        let max = shared.policy.snapshot().server.max_connections;
        if open.load(Ordering::Relaxed) >= max {
            shared
                .metrics
                .connections_refused
                .with_label_values(&["max_connections"])
                .inc();
            return;
        }
        let slot = ConnSlot::new(open.clone(), shared.metrics.open_connections.clone());
        tokio::spawn(serve_connection(
            tcp,
            peer,
            acceptor.clone(),
            shared.clone(),
            graceful.watcher(),
            slot,
        ));
    })
    .await;

    // Drain: readiness off, no new connections, in-flight requests finish up to the deadline.
    shared.draining.store(true, Ordering::SeqCst);
    drop(proxy.listener);
    crate::serve::drain(graceful, proxy.drain_timeout).await;
    reloader.abort();
    revocation_sync.abort();
    if let Some(t) = cert_task {
        t.abort();
    }
    drop(cert_watcher);
    admin_task.abort();
    if let Some(t) = redirect_task {
        t.abort();
    }
    tracing::info!("ward proxy stopped");
    Ok(())
}

/// Counts an open connection for as long as it lives.
struct ConnSlot {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl ConnSlot {
    fn new(open: Arc<AtomicUsize>, gauge: prometheus::IntGauge) -> ConnSlot {
        open.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        ConnSlot { open, gauge }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    watcher: Watcher,
    _slot: ConnSlot,
) {
    let server = {
        let p = shared.policy.snapshot();
        (
            p.server.handshake_timeout,
            p.server.header_read_timeout,
            p.server.max_concurrent_streams,
        )
    };
    let (handshake_timeout, header_read_timeout, max_streams) = server;
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            shared.metrics.tls_handshake_errors.inc();
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            shared.metrics.tls_handshake_errors.inc();
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let info = ConnInfo {
        peer,
        proto: if h2 { "h2" } else { "http/1.1" },
    };
    let svc_shared = shared.clone();
    let handle = move |req| pipeline::handle(svc_shared.clone(), info, req);
    // TLS's ALPN already chose the protocol, so each connection gets hyper's server for it
    // directly (no protocol sniffing, and a task sized for its own protocol alone).
    let result = if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(max_streams)
            .max_header_list_size(64 * 1024)
            // Rapid reset (CVE-2023-44487) and its server-side twin: cap resets, then GOAWAY.
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(64))
            // No HTTP/2 PINGs: a vanished peer is found by TCP keepalive (see `serve::KEEPALIVE`).
            .keep_alive_interval(None);
        // Boxed: the pipeline's future is several KiB (every stage's state across its awaits)
        // and h2 moves it by value into a task per stream, three copies; one allocation instead
        // saves 4,500 instructions per request (callgrind).
        let service = service_fn(move |req| Box::pin(handle(req)));
        watcher
            .watch(builder.serve_connection(TokioIo::new(tls), service))
            .await
    } else {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            // The framing guard ends input early after a bad pipelined head; finish the answer owed.
            .half_close(true)
            .max_buf_size(guard::MAX_HEAD + 16 * 1024)
            .max_headers(guard::MAX_HEADER_LINES + 8);
        let fault_shared = shared.clone();
        let io = guard::Guard::new(
            tls,
            Box::new(move |fault| guard_reply(&fault_shared, fault)),
        );
        // Boxed too: in place, the pipeline's future sat in every connection's task, idle ones
        // included (6.4 KiB more per idle connection, bench/idle.sh); boxed, it exists only while
        // a request is in flight, for 880 instructions per request (callgrind).
        let service = service_fn(move |req| Box::pin(handle(req)));
        watcher
            .watch(builder.serve_connection(TokioIo::new(io), service))
            .await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The raw HTTP/1.1 response the framing guard writes: problem+json plus the default headers.
fn guard_reply(shared: &Shared, fault: guard::Fault) -> Vec<u8> {
    use rejection::Rejection;
    let rejection = match fault {
        guard::Fault::Framing(f) => Rejection::Framing(f),
        guard::Fault::HeadTooLarge => Rejection::HeadersTooLarge,
    };
    let reason = match fault {
        guard::Fault::Framing(f) => f.as_str(),
        guard::Fault::HeadTooLarge => "head_too_large",
    };
    shared
        .metrics
        .framing_rejections
        .with_label_values(&[reason])
        .inc();
    let id = crate::request_id::random_hex(16);
    let (status, _, _) = rejection.parts();
    let body = rejection.body(&id);
    tracing::info!(
        request_id = id.as_str(),
        status = status.as_u16(),
        decision = "deny",
        reason = rejection.reason().as_str(),
        "request refused by the framing guard"
    );
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\nx-request-id: {id}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (n, v) in &shared.policy.snapshot().default_response_headers.set {
        if let Ok(v) = v.to_str() {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

async fn reload_policy(
    shared: Arc<Shared>,
    mut changes: tokio::sync::mpsc::Receiver<()>,
    mut requests: tokio::sync::mpsc::Receiver<()>,
) {
    // Files the policy references (API keys, HMAC secrets) reload it too; the watcher follows
    // the policy's list.
    let mut referenced = ReferencedFiles::watch(&shared.policy.snapshot());
    loop {
        tokio::select! {
            change = watch::next_change(&mut changes) => if change.is_none() { return },
            Some(()) = requests.recv() => tracing::info!("reload requested"),
            Some(()) = referenced.next_change() => tracing::info!("a file the policy references changed: reloading"),
        }
        reload_now(&shared).await;
        let p = shared.policy.snapshot();
        if p.watched_files != referenced.files {
            referenced = ReferencedFiles::watch(&p);
        }
    }
}

/// A watcher on the files the policy references besides the policy files.
struct ReferencedFiles {
    files: Vec<std::path::PathBuf>,
    watcher: Option<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)>,
}

impl ReferencedFiles {
    fn watch(policy: &Policy) -> ReferencedFiles {
        let files = policy.watched_files.clone();
        let mut dirs: Vec<std::path::PathBuf> = files.iter().map(|f| watch::watch_dir(f)).collect();
        dirs.sort();
        dirs.dedup();
        let paths: Vec<&std::path::Path> = files.iter().map(|f| f.as_path()).collect();
        let watcher = if files.is_empty() {
            None
        } else {
            match watch::watch(&dirs, watch::file_names(&paths)) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the files the policy references; SIGHUP still reloads them");
                    None
                }
            }
        };
        ReferencedFiles { files, watcher }
    }

    async fn next_change(&mut self) -> Option<()> {
        match &mut self.watcher {
            Some((_, rx)) => watch::next_change(rx).await,
            None => std::future::pending().await,
        }
    }
}

/// Reloads the policy off the async threads, records the outcome, and brings what hangs off the
/// policy (key sources, cache and limiter bounds) in line with it.
pub async fn reload_now(shared: &Arc<Shared>) {
    let store = shared.policy.clone();
    let outcome = tokio::task::spawn_blocking(move || store.reload()).await;
    let m = &shared.metrics;
    match outcome {
        Ok(Ok(Reloaded::Changed)) => {
            let p = shared.policy.snapshot();
            m.policy_reloads.with_label_values(&["changed"]).inc();
            m.set_policy(&p.hash);
            shared
                .limiter
                .memory()
                .set_max_keys(p.server.rate_limit_max_keys);
            shared.tokens.set_max_entries(p.identity.cache_max_entries);
            shared.keys.reconcile(&p);
            shared.events.configure(p.sessions.events_sink.as_ref());
            tracing::info!(
                hash = p.hash.as_str(),
                routes = p.routes.len(),
                "policy reloaded"
            );
        }
        Ok(Ok(Reloaded::Unchanged)) => m.policy_reloads.with_label_values(&["unchanged"]).inc(),
        Ok(Err(e)) => {
            m.policy_reloads.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "policy reload failed; keeping the last good policy");
            shared.events.emit(SecurityEvent {
                kind: EventKind::PolicyReloadFailed,
                tenant_id: None,
                subject: None,
                client_ip: None,
                request_id: None,
                route: None,
                reason: "invalid policy".into(),
            });
        }
        Err(e) => tracing::error!(error = %e, "policy reload task failed"),
    }
}

async fn reload_certs(
    certs: Arc<Certificates>,
    metrics: Metrics,
    mut changes: tokio::sync::mpsc::Receiver<()>,
) {
    while watch::next_change(&mut changes).await.is_some() {
        let set = certs.clone();
        let outcomes = tokio::task::spawn_blocking(move || {
            set.stores()
                .map(|s| (s.paths().map(|p| p.cert.clone()), s.reload()))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(outcomes) = outcomes else {
            tracing::error!("certificate reload task failed");
            continue;
        };
        for (cert, outcome) in outcomes {
            let cert = cert.as_deref().map(|p| p.display().to_string());
            match outcome {
                Ok(true) => {
                    metrics.cert_reloads.with_label_values(&["changed"]).inc();
                    tracing::info!(cert = cert.as_deref(), "TLS certificate reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    metrics.cert_reloads.with_label_values(&["error"]).inc();
                    tracing::error!(cert = cert.as_deref(), error = %e, "TLS certificate reload failed; keeping the current certificate");
                }
            }
        }
        metrics.set_certificate_expiry(&certs);
    }
}
