//! `ward demo`: the proxy with the default policy in front of the bundled payments service, on a
//! fresh machine with nothing configured: an ephemeral self-signed certificate held in memory (no
//! TLS key is written anywhere), in-memory limits, and for the service freshly generated keys, an
//! SQLite file and a bootstrapped demo tenant whose generated password is printed once. Everything
//! lives in a new directory; the policy there can be edited live.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;

use crate::payments;
use crate::proxy;
use crate::settings::ServeSettings;
use crate::state::revocation::Revocations;
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
    #[error("the embedded default policy has changed: the demo cannot find {0}")]
    Template(&'static str),
    #[error(transparent)]
    Policy(#[from] crate::policy::LoadError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    #[error(transparent)]
    Launch(#[from] proxy::launch::LaunchError),
    #[error(transparent)]
    Payments(#[from] payments::Error),
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
    let io_err = |source| DemoError::Dir {
        path: dir.clone(),
        source,
    };

    // The payments service: fresh keys, an SQLite file and a bootstrapped tenant in `dir/payments`.
    let setup = payments::demo::prepare(&dir.join("payments")).await?;
    let upstream = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| DemoError::Bind {
            addr: "127.0.0.1:0".parse().expect("a valid address"),
            source,
        })?;
    let upstream_addr = upstream.local_addr().map_err(io_err)?;
    let (stop_payments, payments_stopped) = tokio::sync::oneshot::channel::<()>();
    // The service revokes into the proxy's own copy: a logout is refused at the edge at once,
    // with no Redis.
    let revocations = Revocations::memory(metrics.revocation.clone());
    let mut config = setup.config.clone();
    config.revocations = Some(revocations.clone());
    let payments_task = tokio::spawn(payments::run(upstream, config, async {
        let _ = payments_stopped.await;
    }));

    let policy_path = dir.join("policy.yaml");
    let policy_text = demo_policy(&upstream_addr.to_string(), &setup.internal_token_file)?;
    std::fs::write(&policy_path, policy_text).map_err(|source| DemoError::Dir {
        path: policy_path.clone(),
        source,
    })?;
    // The same assembly as `ward proxy`: only the certificate (made in memory, never written) and
    // the revocations (shared with the service above) are the demo's own.
    let (cert_pem, key_pem) = tls::self_signed();
    let certs = CertStore::new(tls::certified_from_pem(&cert_pem, &key_pem)?, None);
    let serve = ServeSettings {
        listen: settings.listen,
        admin_listen: settings.admin_listen,
        redirect_listen: None,
        policy: policy_path.clone(),
        redis_url: None,
        redis_prefix: "ward".into(),
        admin_token_file: None,
    };
    let ready = proxy::launch::prepare(
        &serve,
        proxy::launch::Certs::Ready(certs),
        metrics,
        Some(revocations),
        settings.runtime.drain_timeout,
        settings.runtime.pre_stop_delay,
    )
    .await?;
    let https = ready.listener.local_addr().map_err(io_err)?;
    let admin_addr = ready.admin.local_addr().map_err(io_err)?;

    let b = format!("https://localhost:{}", https.port());
    println!("ward demo is running (Ctrl-C to stop)");
    println!("  proxy:    {b}/  (self-signed certificate, made just now)");
    println!("  admin:    http://{admin_addr}/metrics  /policy  /readyz");
    println!(
        "  payments: http://{upstream_addr}/  (the bundled payments service, SQLite in {})",
        dir.join("payments").display()
    );
    println!(
        "  policy:   {}  (edit it; changes apply live)",
        policy_path.display()
    );
    println!("demo login (generated for this run, shown once):");
    println!("  tenant:   {}", setup.tenant);
    println!("  email:    {}", setup.email);
    println!("  password: {}", setup.password);
    println!("try:");
    println!(
        "  curl -sk {b}/v1/auth/login -H 'content-type: application/json' -d '{{\"tenant\":\"{}\",\"email\":\"{}\",\"password\":\"{}\"}}'",
        setup.tenant, setup.email, setup.password
    );

    let served = proxy::run(ready, shutdown).await;
    // The proxy has drained; now the service behind it stops.
    let _ = stop_payments.send(());
    match payments_task.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(error = %e, "the payments task failed"),
    }
    served?;
    Ok(())
}

/// The default policy pointed at this run's service, with security events delivered to its
/// audit intake (the default policy leaves the sink commented out: it needs the service's token).
fn demo_policy(upstream: &str, internal_token: &std::path::Path) -> Result<String, DemoError> {
    const SINK: &str = "# sink: { url: http://127.0.0.1:8080/internal/v1/security-events, token_file: /run/secrets/ward/internal.token }";
    if !crate::DEFAULT_POLICY.contains(SINK) {
        return Err(DemoError::Template(
            "the default policy's commented security-event sink",
        ));
    }
    let sink = format!(
        "sink: {{ url: http://127.0.0.1:8080/internal/v1/security-events, token_file: {} }}",
        internal_token.display()
    );
    Ok(crate::DEFAULT_POLICY
        .replace(SINK, &sink)
        .replace("http://127.0.0.1:8080", &format!("http://{upstream}")))
}
