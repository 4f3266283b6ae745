//! The `ward` binary: parse the command line, then hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use ward::payments;
use ward::policy;
use ward::proxy;
use ward::settings::ProxySettings;
use ward::telemetry::{self, Metrics};
use ward::tls::{self, CertPaths};

/// mimalloc instead of glibc malloc: the request path allocates many small short-lived buffers
/// (headers, frames), where glibc's arena bookkeeping showed up at the top of profiles. Built
/// without transparent huge pages (the `no_thp` feature: mimalloc does not ask for them): with
/// them, 9,000 idle connections held 7 KiB (HTTP/1.1) and 19 KiB (HTTP/2) more each
/// (bench/idle.sh). The `system-allocator` feature keeps glibc's, for heap profilers that see
/// only `malloc` (`HEAP=1 bench/idle.sh`, valgrind's DHAT).
#[cfg(not(feature = "system-allocator"))]
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
    /// Also says where shared state would live and which session protections are on.
    Check {
        path: PathBuf,
        /// The `--redis-url` the proxy would run with (shared state in Redis; else memory).
        #[arg(long, env = "WARD_REDIS_URL", hide_env_values = true)]
        redis_url: Option<ward::redis_link::RedisTarget>,
    },
    /// Show which route, limits and headers would apply to a request.
    Explain {
        path: PathBuf,
        method: String,
        url: String,
    },
    /// Print the JSON Schema of the policy file.
    Schema,
    /// Revoke a token (by jti), a session or a subject on a running proxy (every replica).
    Revoke(ward::admin_client::RevokeArgs),
    /// Revocations held by a running proxy.
    Revocations {
        #[command(subcommand)]
        command: RevocationsCommand,
    },
    /// Show or clear a login lockout on a running proxy.
    Lockout {
        #[command(subcommand)]
        command: ward::admin_client::LockoutCommand,
    },
    /// API keys for machine clients: the proxy stores only their hashes.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Run the bundled payments and audit service (default), or bootstrap its first tenant.
    #[command(args_conflicts_with_subcommands = true)]
    Payments {
        #[command(subcommand)]
        command: Option<PaymentsCommand>,
        #[command(flatten)]
        serve: Box<payments::config::ServeArgs>,
    },
    /// Key material.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Probe the admin port: exit 0 when /healthz (or /readyz) answers 200, else 1.
    Health(ward::health::HealthArgs),
    /// TLS material.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a development CA and a leaf it signed for localhost, 127.0.0.1, ::1 and each --host:
    /// ca.crt, ca.key, tls.crt, tls.key (keys mode 600). Never overwrites. Not for production.
    Dev {
        /// Output directory (created, mode 700).
        #[arg(long)]
        out: PathBuf,
        /// Another name or IP address for the leaf; repeatable.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RevocationsCommand {
    /// Every live revocation, as JSON.
    List(ward::admin_client::ControlTarget),
}

#[derive(Debug, Subcommand)]
enum ApikeyCommand {
    /// Make a new random key: prints the key once (give it to the client) and the entry for the
    /// policy's API key file (which holds only its hash).
    Generate {
        /// Key id: what logs, metrics and limits name.
        #[arg(long)]
        id: String,
        /// Tenant the key is bound to.
        #[arg(long)]
        tenant: Option<String>,
        /// Roles of the key; repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Read a key from standard input and print its stored form (`sha256:<hex>`).
    Hash,
}

#[derive(Debug, Subcommand)]
enum PaymentsCommand {
    /// Serve the payments API.
    Serve(Box<payments::config::ServeArgs>),
    /// Create a tenant and its first admin; prints a generated password once.
    Bootstrap {
        #[command(flatten)]
        database: payments::config::DatabaseArgs,
        /// Tenant slug (a-z, 0-9, '-').
        #[arg(long)]
        tenant: String,
        /// Display name of the tenant.
        #[arg(long)]
        name: Option<String>,
        /// Email of the first admin.
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyKind {
    /// Ed25519 token-signing keypair: KID.private.pem (mode 600) and KID.public.pem.
    Signing,
    /// AES-256-GCM data key: KID.datakey (mode 600).
    Data,
    /// Random shared secret (webhook HMAC, internal token): KID.secret (mode 600).
    Secret,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Write a new key into a directory.
    Generate {
        #[arg(long, value_enum, default_value = "signing")]
        kind: KeyKind,
        /// Key id (file name stem).
        #[arg(long)]
        kid: String,
        /// Output directory.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every tenant's hash chain; names the first altered or removed record.
    Verify {
        #[command(flatten)]
        database: payments::config::DatabaseArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proxy(s) => {
            runtime(s.runtime.worker_threads).and_then(|rt| rt.block_on(run_proxy(s)))
        }
        Command::Demo(s) => runtime(s.runtime.worker_threads).and_then(|rt| {
            let metrics = Metrics::new();
            let _log = telemetry::init_logging(
                &s.runtime.log_level,
                telemetry::LogOutput::Stdout,
                metrics.log_lines_dropped.clone(),
            );
            rt.block_on(async {
                ward::demo::run(s, metrics, shutdown_signal())
                    .await
                    .map_err(anyhow::Error::from)
            })
        }),
        Command::Check { path, redis_url } => check(&path, redis_url.as_ref()),
        Command::Explain { path, method, url } => explain(&path, &method, &url),
        Command::Schema => {
            println!("{}", policy::schema_json());
            Ok(())
        }
        Command::Apikey { command } => apikey(command),
        Command::Revoke(args) => control(async move { ward::admin_client::revoke(&args).await }),
        Command::Revocations {
            command: RevocationsCommand::List(target),
        } => control(async move { ward::admin_client::list(&target).await }),
        Command::Lockout { command } => {
            control(async move { ward::admin_client::lockout(&command).await })
        }
        Command::Health(args) => runtime(Some(1)).and_then(|rt| {
            let status = rt.block_on(ward::health::probe(&args))?;
            println!("{status}");
            Ok(())
        }),
        Command::Certs {
            command: CertsCommand::Dev { out, hosts },
        } => certs_dev(&out, &hosts),
        command @ (Command::Payments { .. } | Command::Keys { .. } | Command::Audit { .. }) => {
            // The payments tools log JSON lines to stderr, keeping stdout for what they print
            // (bootstrap's one-time password, key file paths, verification results).
            let level = std::env::var("WARD_LOG_LEVEL").unwrap_or_else(|_| "info".into());
            let _log = telemetry::init_logging(
                &level,
                telemetry::LogOutput::Stderr,
                Metrics::new().log_lines_dropped,
            );
            runtime(None).and_then(|rt| rt.block_on(run_payments(command)))
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
    let _log = telemetry::init_logging(
        &s.runtime.log_level,
        telemetry::LogOutput::Stdout,
        metrics.log_lines_dropped.clone(),
    );
    let certs = proxy::launch::Certs::Files(
        CertPaths {
            cert: s.tls_cert.clone(),
            key: s.tls_key.clone(),
        },
        s.tls_sni.clone(),
    );
    let ready = proxy::launch::prepare(
        &s.serve,
        certs,
        metrics,
        None,
        s.runtime.drain_timeout,
        s.runtime.pre_stop_delay,
    )
    .await?;
    proxy::run(ready, shutdown_signal()).await?;
    Ok(())
}

/// The payments service and its tools (keys, audit).
async fn run_payments(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Payments { command, serve } => match command {
            None => serve_payments(serve).await,
            Some(PaymentsCommand::Serve(args)) => serve_payments(args).await,
            Some(PaymentsCommand::Bootstrap {
                database,
                tenant,
                name,
                email,
            }) => {
                let store = payments::store::Store::connect(
                    &database.database_url,
                    std::time::Duration::from_secs(10),
                )
                .await
                .context("open the payments database")?;
                let name = name.unwrap_or_else(|| tenant.clone());
                let created = payments::bootstrap(&store, &tenant, &name, &email).await;
                store.close().await;
                let created = created?;
                println!("tenant:   {} ({})", created.tenant, created.tenant_id);
                println!("email:    {}", created.email);
                println!("password: {}", created.password);
                println!("This password is shown once. Change it with POST /v1/auth/password.");
                Ok(())
            }
        },
        Command::Keys {
            command: KeysCommand::Generate { kind, kid, out },
        } => {
            match kind {
                KeyKind::Signing => {
                    let (private, public) = payments::keys::write_signing_keypair(&out, &kid)?;
                    println!("private key: {}", private.display());
                    println!("public key:  {}", public.display());
                }
                KeyKind::Data => {
                    let path = payments::keys::write_data_key(&out, &kid)?;
                    println!("data key: {}", path.display());
                }
                KeyKind::Secret => {
                    let path = out.join(format!("{kid}.secret"));
                    payments::keys::write_private_file(
                        &path,
                        payments::keys::Secret::generate_text().as_bytes(),
                    )?;
                    println!("secret: {}", path.display());
                }
            }
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { database },
        } => {
            let checked = payments::verify_audit(&database.database_url).await?;
            println!("audit chains intact: {checked} records verified");
            Ok(())
        }
        Command::Proxy(_)
        | Command::Demo(_)
        | Command::Check { .. }
        | Command::Explain { .. }
        | Command::Apikey { .. }
        | Command::Revoke(_)
        | Command::Revocations { .. }
        | Command::Lockout { .. }
        | Command::Schema
        | Command::Health(_)
        | Command::Certs { .. } => {
            unreachable!("only payments, keys and audit commands reach run_payments")
        }
    }
}

async fn serve_payments(args: Box<payments::config::ServeArgs>) -> anyhow::Result<()> {
    payments::launch(&args, shutdown_signal()).await?;
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

fn certs_dev(out: &std::path::Path, hosts: &[String]) -> anyhow::Result<()> {
    let pki = tls::write_dev_pki(out, hosts)?;
    println!(
        "development CA: {} (key {})",
        pki.ca_cert.display(),
        pki.ca_key.display()
    );
    println!(
        "certificate:    {} (key {})",
        pki.cert.display(),
        pki.key.display()
    );
    println!("names:          {}", pki.names.join(", "));
    println!(
        "valid for {} days; the CA ({} days) can sign only these names. Not for production.",
        tls::DEV_LEAF_DAYS,
        tls::DEV_CA_DAYS
    );
    println!(
        "use: ward proxy --tls-cert {} --tls-key {}   and   curl --cacert {} ...",
        pki.cert.display(),
        pki.key.display(),
        pki.ca_cert.display()
    );
    Ok(())
}

fn check(
    path: &std::path::Path,
    redis: Option<&ward::redis_link::RedisTarget>,
) -> anyhow::Result<()> {
    let p = policy::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "{}: ok ({} routes, hash {})",
        path.display(),
        p.routes.len(),
        &p.hash[..12]
    );
    print!(
        "{}",
        policy::state_summary(&p, redis.map(|r| r.to_string()).as_deref())
    );
    Ok(())
}

/// Runs one control API call and prints its JSON answer.
fn control(
    call: impl std::future::Future<Output = Result<serde_json::Value, ward::admin_client::ControlError>>,
) -> anyhow::Result<()> {
    let answer = runtime(Some(1))?.block_on(call)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

fn apikey(command: ApikeyCommand) -> anyhow::Result<()> {
    use ward::identity::apikey;
    match command {
        ApikeyCommand::Generate { id, tenant, roles } => {
            let (key, hash) = apikey::generate();
            println!("key (give it to the client; it is shown once and stored nowhere):");
            println!("  {key}");
            println!("entry for the API key file:");
            println!("  - id: {id}");
            println!("    hash: {hash}");
            if let Some(t) = tenant {
                println!("    tenant: {t}");
            }
            if !roles.is_empty() {
                println!("    roles: [{}]", roles.join(", "));
            }
        }
        ApikeyCommand::Hash => {
            let mut key = String::new();
            std::io::stdin()
                .read_line(&mut key)
                .context("read the key from standard input")?;
            let key = key.trim();
            anyhow::ensure!(!key.is_empty(), "no key on standard input");
            println!("{}", apikey::hash_text(key));
        }
    }
    Ok(())
}

fn explain(path: &std::path::Path, method: &str, url: &str) -> anyhow::Result<()> {
    let p = policy::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let method = http::Method::from_bytes(method.as_bytes()).context("invalid method")?;
    let uri: http::Uri = url.parse().context("invalid URL")?;
    print!("{}", policy::explain(&p, &method, uri.host(), uri.path()));
    Ok(())
}
