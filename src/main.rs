//! The `ward` binary: parse the command line and call into the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ward::payments;

#[derive(Debug, Parser)]
#[command(name = "ward", version, about = "A security sidecar for payments APIs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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
    }
}

async fn serve_payments(args: Box<payments::config::ServeArgs>) -> anyhow::Result<()> {
    let config = payments::Config::load(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    payments::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
