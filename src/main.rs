//! The `ward` binary: parse the command line, then hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use ward::policy::{self, PolicyStore};
use ward::proxy::{self, Proxy};
use ward::settings::ProxySettings;
use ward::telemetry::{self, Metrics};
use ward::tls::{self, CertPaths, CertStore};

/// mimalloc instead of glibc malloc: the request path allocates many small short-lived buffers
/// (headers, frames), where glibc's arena bookkeeping showed up at the top of profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ward", version, about = "A security sidecar for payments APIs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the TLS-terminating proxy.
    Proxy(ProxySettings),
    /// Run the proxy in front of a built-in upstream with embedded defaults.
    Demo(ward::demo::DemoSettings),
    /// Validate a policy file or directory exactly as a reload would; non-zero exit on error.
    Check { path: PathBuf },
    /// Show which route, limits and headers would apply to a request.
    Explain {
        path: PathBuf,
        method: String,
        url: String,
    },
    /// Print the JSON Schema of the policy file.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proxy(s) => {
            runtime(s.runtime.worker_threads).and_then(|rt| rt.block_on(run_proxy(s)))
        }
        Command::Demo(s) => runtime(s.runtime.worker_threads).and_then(|rt| {
            let metrics = Metrics::new();
            let _log = telemetry::init_logging(&s.runtime.log_level, &metrics);
            rt.block_on(async {
                ward::demo::run(s, metrics, shutdown_signal())
                    .await
                    .map_err(anyhow::Error::from)
            })
        }),
        Command::Check { path } => check(&path),
        Command::Explain { path, method, url } => explain(&path, &method, &url),
        Command::Schema => {
            println!("{}", policy::schema_json());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One worker thread means the current-thread scheduler (no work-stealing overhead); more, the
/// multi-thread one.
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match workers {
        Some(1) | Some(0) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run_proxy(s: ProxySettings) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let _log = telemetry::init_logging(&s.runtime.log_level, &metrics);
    let store = PolicyStore::open(&s.policy)
        .map_err(|e| anyhow::anyhow!("invalid policy, not starting:\n{e}"))?;
    let paths = CertPaths {
        cert: s.tls_cert.clone(),
        key: s.tls_key.clone(),
    };
    let key = tls::load_certified_key(&paths)?;
    let certs = CertStore::new(key, Some(paths));
    let listener = TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen / WARD_LISTEN)", s.listen))?;
    let admin = TcpListener::bind(s.admin_listen).await.with_context(|| {
        format!(
            "cannot listen on {} (--admin-listen / WARD_ADMIN_LISTEN)",
            s.admin_listen
        )
    })?;
    let redirect = match s.redirect_listen {
        Some(a) => Some(TcpListener::bind(a).await.with_context(|| {
            format!("cannot listen on {a} (--redirect-listen / WARD_REDIRECT_LISTEN)")
        })?),
        None => None,
    };
    proxy::run(
        Proxy {
            listener,
            admin,
            redirect,
            policy: Arc::new(store),
            certs,
            metrics,
            drain_timeout: s.runtime.drain_timeout,
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler at start-up");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let p = policy::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "{}: ok ({} routes, hash {})",
        path.display(),
        p.routes.len(),
        &p.hash[..12]
    );
    Ok(())
}

fn explain(path: &std::path::Path, method: &str, url: &str) -> anyhow::Result<()> {
    let p = policy::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let method = http::Method::from_bytes(method.as_bytes()).context("invalid method")?;
    let uri: http::Uri = url.parse().context("invalid URL")?;
    print!("{}", policy::explain(&p, &method, uri.host(), uri.path()));
    Ok(())
}
