//! The one integration-test harness, for the proxy and the payments service alike: an in-process
//! test PKI (rcgen), a recording upstream on 127.0.0.1:0, the real proxy on 127.0.0.1:0 with a
//! policy written to a temp directory, clients that trust only the test CA, `eventually` polling,
//! and in its modules the payments service under test (`service`), Redis servers a test owns
//! (`redis_servers`) and test issuers (`tokens`). Nothing here stands in for ward's own code.
//! Each test binary uses part of it, hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod identity;
pub mod redis_servers;
pub mod service;
pub mod sessions;
pub mod tokens;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use ward::policy::PolicyStore;
use ward::proxy::{self, Proxy};
use ward::telemetry::Metrics;
use ward::tls::{CertPaths, CertStore};

/// A test certificate authority and leaf certificates for `localhost` and 127.0.0.1.
pub struct Pki {
    ca_key: rcgen::KeyPair,
    ca_cert: rcgen::Certificate,
    pub ca_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ward test CA");
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca_pem = ca_cert.pem();
        Pki {
            ca_key,
            ca_cert,
            ca_pem,
        }
    }

    /// A fresh leaf `(cert PEM, key PEM)`; `cn` makes leaves distinguishable.
    pub fn leaf(&self, cn: &str) -> (String, String) {
        self.leaf_for(cn, &["localhost", "127.0.0.1"])
    }

    /// A fresh leaf like [`Pki::leaf`] for other names.
    pub fn leaf_for(&self, cn: &str, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A fresh leaf like [`Pki::leaf`] whose validity ends at `not_after`.
    pub fn leaf_until(&self, cn: &str, not_after: time::OffsetDateTime) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn root_store(&self) -> rustls::RootCertStore {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        roots
    }
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// A real HTTP server on 127.0.0.1:0 that records what reaches it.
/// `/slow` waits for the `x-delay-ms` request header's milliseconds before answering.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rec = seen.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let rec = rec.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let rec = rec.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_owned();
                            let headers = req.headers().clone();
                            let delay = headers
                                .get("x-delay-ms")
                                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            rec.lock().unwrap().push(Seen {
                                method,
                                path: path.clone(),
                                headers,
                                body_len: body.len(),
                            });
                            if path == "/slow" {
                                tokio::time::sleep(Duration::from_millis(delay.unwrap_or(1000)))
                                    .await;
                            }
                            let resp = Response::builder()
                                .header("content-type", "application/json")
                                .header("server", "upstream-test/1.0")
                                .header("x-powered-by", "leaky-framework")
                                .header("connection", "x-hop-secret")
                                .header("x-hop-secret", "1")
                                .body(Full::new(Bytes::from(format!(
                                    "{{\"path\":\"{path}\",\"body_len\":{}}}",
                                    body.len()
                                ))))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

/// A running proxy with its files and handles.
pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub redirect: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub policy_path: PathBuf,
    pub cert_paths: CertPaths,
    /// The files of each `Options::sni` entry, in order (leaves with CN `sni-0`, `sni-1`, ...).
    pub sni_paths: Vec<CertPaths>,
    pub pki: Pki,
    pub upstream: Upstream,
    shutdown: Option<oneshot::Sender<()>>,
    reload: tokio::sync::mpsc::Sender<()>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Turns a policy template into YAML: `UPSTREAM` becomes the upstream's URL.
pub fn render(template: &str, upstream: SocketAddr) -> String {
    template.replace("UPSTREAM", &format!("http://{upstream}"))
}

pub struct Options {
    pub redirect: bool,
    pub drain_timeout: Duration,
    /// `--redis-url` and `--redis-prefix`: shared limits in that Redis.
    pub redis: Option<(String, String)>,
    /// The control API's token (off without one).
    pub admin_token: Option<String>,
    /// Revocations shared with something else in the test (an in-process payments service);
    /// default: memory, or Redis with `redis`.
    pub revocations: Option<Arc<ward::state::revocation::Revocations>>,
    /// The proxy's metrics (to share handles with something else in the test).
    pub metrics: Option<Metrics>,
    /// Certificates chosen by SNI (`--tls-sni`): the names of each, e.g. `["api.test"]`.
    pub sni: Vec<Vec<&'static str>>,
    /// `--pre-stop-delay`.
    pub pre_stop_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            redirect: false,
            drain_timeout: Duration::from_secs(10),
            redis: None,
            admin_token: None,
            revocations: None,
            metrics: None,
            sni: Vec::new(),
            pre_stop_delay: Duration::ZERO,
        }
    }
}

pub async fn start(policy_template: &str) -> Running {
    start_with(policy_template, Options::default()).await
}

pub async fn start_with(policy_template: &str, opts: Options) -> Running {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, render(policy_template, upstream.addr)).unwrap();
    start_in(dir, policy_path, upstream, opts).await
}

/// Starts the proxy on an existing policy path (file or directory) inside `dir`.
pub async fn start_in(
    dir: tempfile::TempDir,
    policy_path: PathBuf,
    upstream: Upstream,
    opts: Options,
) -> Running {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("leaf-one");
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let cert_paths = CertPaths {
        cert: tls_dir.join("tls.crt"),
        key: tls_dir.join("tls.key"),
    };
    std::fs::write(&cert_paths.cert, cert).unwrap();
    std::fs::write(&cert_paths.key, key).unwrap();

    let mut sni = Vec::new();
    for (i, names) in opts.sni.iter().enumerate() {
        let (cert, key) = pki.leaf_for(&format!("sni-{i}"), names);
        let paths = CertPaths {
            cert: tls_dir.join(format!("sni-{i}.crt")),
            key: tls_dir.join(format!("sni-{i}.key")),
        };
        std::fs::write(&paths.cert, cert).unwrap();
        std::fs::write(&paths.key, key).unwrap();
        sni.push(ward::sni::SniSpec {
            names: names.iter().map(|n| n.to_string()).collect(),
            paths,
        });
    }
    let sni_paths = sni.iter().map(|s| s.paths.clone()).collect();

    let store = Arc::new(PolicyStore::open(&policy_path).expect("test policy compiles"));
    let certs = ward::sni::Certificates::load(
        CertStore::new(
            ward::tls::load_certified_key(&cert_paths).unwrap(),
            Some(cert_paths.clone()),
        ),
        &sni,
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect = if opts.redirect {
        Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let addr = listener.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let redirect_addr = redirect.as_ref().map(|l| l.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let metrics = opts.metrics.clone().unwrap_or_default();
    let redis = opts.redis.as_ref().map(|(url, prefix)| {
        Arc::new(
            ward::redis_link::RedisLink::connect(
                url.parse().unwrap(),
                prefix,
                metrics.redis.clone(),
            )
            .unwrap(),
        )
    });
    let revocations = opts.revocations.clone().unwrap_or_else(|| match &redis {
        Some(link) => {
            ward::state::revocation::Revocations::redis(link.clone(), metrics.revocation.clone())
        }
        None => ward::state::revocation::Revocations::memory(metrics.revocation.clone()),
    });
    let admin_token = opts
        .admin_token
        .as_ref()
        .map(|t| Arc::<[u8]>::from(t.as_bytes().to_vec()));
    let (reload_tx, reload_requests) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(async move {
        proxy::run(
            Proxy {
                listener,
                admin,
                redirect,
                policy: store,
                certs,
                metrics,
                redis,
                revocations,
                admin_token,
                reload_requests,
                drain_timeout: opts.drain_timeout,
                pre_stop_delay: opts.pre_stop_delay,
            },
            async {
                let _ = rx.await;
            },
        )
        .await
        .unwrap();
    });
    Running {
        addr,
        admin: admin_addr,
        redirect: redirect_addr,
        dir,
        policy_path,
        cert_paths,
        sni_paths,
        pki,
        upstream,
        shutdown: Some(tx),
        reload: reload_tx,
        task,
    }
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// An HTTPS client that trusts only the test CA; `h2` picks HTTP/2 via ALPN, else HTTP/1.1.
    pub fn client(&self, h2: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.pki.ca_pem.as_bytes()).unwrap(),
            )
            .tls_built_in_root_certs(false)
            .resolve("localhost", self.addr)
            .https_only(true)
            .no_proxy()
            .timeout(Duration::from_secs(15));
        b = if h2 {
            b.http2_adaptive_window(false)
        } else {
            b.http1_only()
        };
        b.build().unwrap()
    }

    /// The status of a GET to `path`, over HTTP/2 when `h2`; a request that gets no answer fails
    /// the test.
    pub async fn status(&self, h2: bool, path: &str) -> u16 {
        match self.client(h2).get(self.url(path)).send().await {
            Ok(r) => r.status().as_u16(),
            Err(e) => panic!("GET {path} got no answer: {e}"),
        }
    }

    /// Asks this proxy, and only this one, to reload its policy now (as SIGHUP does for the
    /// binary).
    pub fn reload(&self) {
        let _ = self.reload.try_send(());
    }

    /// Begins graceful shutdown (as SIGTERM does).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// The value of one Prometheus sample on the admin port (0 when absent), e.g.
    /// `ward_token_cache_lookups_total{result="hit"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().unwrap())
            })
            .unwrap_or(0.0)
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Writes raw bytes over a real TLS connection (ALPN http/1.1) and returns all the proxy sent back
    /// until it closed the connection or went quiet for a second.
    pub async fn raw(&self, bytes: &[u8]) -> String {
        let mut tls = self.tls_connect(&[b"http/1.1"]).await;
        tls.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match tokio::time::timeout(Duration::from_secs(1), tls.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub async fn tls_connect(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(ward::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.pki.root_store())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        connector
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap()
    }

    /// Rewrites the policy file the way editors do: write a new file, then rename it over the old.
    pub fn write_policy(&self, template: &str) {
        write_atomically(&self.policy_path, &render(template, self.upstream.addr));
    }
}

pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `check` until it holds or `limit` passes; never a bare sleep.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A policy with one catch-all route, the default security headers and a per-IP limit.
pub const BASIC: &str = r#"
version: 1
upstream:
  url: UPSTREAM
  idle_timeout: 2s
  request_timeout: 5s
server:
  header_read_timeout: 1s
defaults:
  limits:
    max_body: 1KiB
    max_url: 256
    max_headers: 20
  headers:
    response:
      set:
        Strict-Transport-Security: "max-age=63072000; includeSubDomains"
        X-Content-Type-Options: nosniff
        X-Frame-Options: DENY
        Content-Security-Policy: "default-src 'none'"
        Cache-Control: no-store
      remove: [Server, X-Powered-By]
  rate_limits:
    - name: per_ip
      key: ip
      limit: 1000
      period: 15m
routes:
  - name: health
    match: { path: { exact: /healthz } }
    rate_limits: []
  - name: all
    match: { path: { prefix: / } }
"#;

/// The bundled payments service, in process on 127.0.0.1:0, set up as `ward demo` sets it up
/// (fresh keys, SQLite in a temp dir, the demo tenant with a generated password), revoking into
/// `revocations` when given.
pub struct Payments {
    pub addr: SocketAddr,
    pub setup: ward::payments::demo::DemoSetup,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

pub async fn start_payments(
    revocations: Option<Arc<ward::state::revocation::Revocations>>,
) -> Payments {
    let dir = tempfile::tempdir().unwrap();
    let setup = ward::payments::demo::prepare(&dir.path().join("payments"))
        .await
        .unwrap();
    let mut config = setup.config.clone();
    config.revocations = revocations;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = ward::payments::run(listener, config, async {
            let _ = rx.await;
        })
        .await;
    });
    Payments {
        addr,
        setup,
        _dir: dir,
        _stop: tx,
    }
}

impl Payments {
    /// Starts a proxy in front of this service with `template` (`UPSTREAM` is the service's URL,
    /// `TOKEN_FILE` its internal token file).
    pub async fn proxy(&self, template: &str, opts: Options) -> Running {
        let dir = tempfile::tempdir().unwrap();
        write_lockout_key(dir.path());
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(
            &policy_path,
            render(template, self.addr).replace(
                "TOKEN_FILE",
                &self.setup.internal_token_file.display().to_string(),
            ),
        )
        .unwrap();
        let unused = Upstream::start().await;
        let p = start_in(dir, policy_path, unused, opts).await;
        assert!(
            eventually(Duration::from_secs(10), || async {
                p.admin_get("/readyz").await.0 == 200
            })
            .await,
            "the proxy loads the service's keys"
        );
        p
    }
}

/// `lockout.key` in `dir`: the same test key for every replica of a test (made for tests, not a
/// secret of anything).
pub fn write_lockout_key(dir: &Path) {
    std::fs::write(dir.join("lockout.key"), "test-lockout-key-".repeat(3)).unwrap();
}
