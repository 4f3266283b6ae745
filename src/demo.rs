//! `ward demo`: the proxy with the default policy in front of a built-in upstream, with an
//! ephemeral self-signed certificate held in memory (no key is written anywhere) and in-memory
//! limits. The policy is copied to a fresh directory so it can be edited live.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::policy::PolicyStore;
use crate::proxy::{self, Proxy};
use crate::telemetry::Metrics;
use crate::tls::{self, CertStore};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoSettings {
    /// HTTPS listen address.
    #[arg(long, env = "WARD_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Admin listen address.
    #[arg(long, env = "WARD_ADMIN_LISTEN", default_value = "127.0.0.1:9901")]
    pub admin_listen: SocketAddr,
    /// Where the demo writes its editable policy (default: a new temporary directory).
    #[arg(long, env = "WARD_DEMO_DIR")]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: crate::settings::RuntimeSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot prepare the demo directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] crate::policy::LoadError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
}

pub async fn run(
    settings: DemoSettings,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DemoError> {
    let dir = match settings.dir.clone() {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("ward-demo-{}", uuid::Uuid::new_v4().simple())),
    };
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::Dir {
        path: dir.clone(),
        source,
    })?;

    let upstream = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| DemoError::Bind {
            addr: "127.0.0.1:0".parse().expect("valid"),
            source,
        })?;
    let upstream_addr = upstream.local_addr().map_err(|source| DemoError::Dir {
        path: dir.clone(),
        source,
    })?;
    tokio::spawn(echo_upstream(upstream));

    let policy_path = dir.join("policy.yaml");
    let policy_text =
        crate::DEFAULT_POLICY.replace("http://127.0.0.1:8080", &format!("http://{upstream_addr}"));
    std::fs::write(&policy_path, policy_text).map_err(|source| DemoError::Dir {
        path: policy_path.clone(),
        source,
    })?;
    let store = Arc::new(PolicyStore::open(&policy_path)?);

    let (cert_pem, key_pem) = tls::self_signed();
    let certs = CertStore::new(tls::certified_from_pem(&cert_pem, &key_pem)?, None);
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| DemoError::Bind { addr, source })
    };
    let listener = bind(settings.listen).await?;
    let admin = bind(settings.admin_listen).await?;
    let https = listener.local_addr().map_err(|source| DemoError::Dir {
        path: dir.clone(),
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| DemoError::Dir {
        path: dir.clone(),
        source,
    })?;

    println!("ward demo is running (Ctrl-C to stop)");
    println!(
        "  proxy:    https://localhost:{}/  (self-signed certificate, made just now)",
        https.port()
    );
    println!("  admin:    http://{admin_addr}/metrics  /policy  /readyz");
    println!("  upstream: http://{upstream_addr}/  (built-in echo service)");
    println!(
        "  policy:   {}  (edit it; changes apply live)",
        policy_path.display()
    );
    println!("try:");
    println!(
        "  curl -sk -i https://localhost:{}/v1/payments",
        https.port()
    );
    println!("  for i in 1 2 3 4 5 6; do curl -sk -o /dev/null -w '%{{http_code}}\\n' -X POST -H 'content-type: application/json' -d '{{}}' https://localhost:{}/v1/auth/login; done", https.port());

    proxy::run(
        Proxy {
            listener,
            admin,
            redirect: None,
            policy: store,
            certs,
            metrics,
            drain_timeout: settings.runtime.drain_timeout,
        },
        shutdown,
    )
    .await?;
    Ok(())
}

/// A small JSON echo service standing in for the payments backend.
pub async fn echo_upstream(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let method = req.method().to_string();
                let path = req.uri().path().to_owned();
                let request_id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes().len())
                    .unwrap_or(0);
                let json = serde_json::json!({"service": "ward-demo-upstream", "method": method, "path": path, "request_id": request_id, "body_bytes": body});
                let mut r = Response::new(Full::new(Bytes::from(json.to_string())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r.headers_mut().insert(
                    header::SERVER,
                    HeaderValue::from_static("demo-upstream/1.0"),
                );
                Ok::<_, Infallible>(r)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
