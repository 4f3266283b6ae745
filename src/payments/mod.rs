//! `ward payments`: the bundled payments and audit upstream.
//!
//! It issues the tokens the proxy verifies (EdDSA, published at `/.well-known/jwks.json`), takes
//! payments with strict validation and idempotency, and keeps a tamper-evident, tenant-scoped audit
//! trail written in the same transaction as every change. Backend invariants hold here even when a
//! client reaches the service without the proxy: it verifies tokens itself and trusts no identity
//! header. It never imports `proxy`.
//!
//! - [`config`]: flags and env into a checked [`Config`].
//! - [`api`]: the HTTP surface: the router and per-request shell, then one file per resource
//!   (sessions, users, payments, webhooks, audit, ops, the OpenAPI document); one handler per
//!   route, read top to bottom.
//! - [`domain`]: the rules, free of HTTP and SQL: the payment state machine and account lockout.
//! - [`auth`]: password hashing, access and refresh tokens.
//! - [`keys`]: signing keys (JWKS), data-encryption keys, secret files.
//! - [`store`]: the store interface with its SQLite and PostgreSQL implementations; typed rows.
//! - [`audit`]: the audit actions, records and their hash chain.
//! - [`validation`], [`webhook`], [`errors`], [`metrics`], [`demo`].

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod demo;
pub mod domain;
pub mod errors;
pub mod keys;
pub mod metrics;
pub mod store;
pub mod validation;
pub mod webhook;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

pub use config::Config;
use store::{NewUser, Store, StoreError};

use self::audit::{AuditAction, AuditContext, AuditEvent, SYSTEM_TENANT};

/// Errors that stop `ward payments` (start-up and CLI paths).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("keys: {0}")]
    Key(#[from] keys::KeyError),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("cannot listen on {addr} (--listen / WARD_PAYMENTS_LISTEN): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid --redis-url / WARD_PAYMENTS_REDIS_URL: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("audit chain broken: {0}")]
    AuditBroken(audit::ChainBreak),
}

impl From<errors::FieldError> for Error {
    fn from(e: errors::FieldError) -> Self {
        Error::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

/// Deadline for reading a request head; slow-loris connections are closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may finish after shutdown is signalled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `ward payments`: the configuration from its flags and files, the optional Redis publisher of
/// revocations, the listener; then [`run`], as `ward demo` runs it with its generated setup.
pub async fn launch(
    args: &config::ServeArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let mut config = Config::load(args)?;
    if let Some(target) = args.redis_url.clone() {
        // A publisher only: the service checks its sessions in its own database; the proxies
        // learn its revocations from here. (Its Redis metrics are not exported: its registry is
        // its own, and Redis is the proxies' concern.)
        let metrics = crate::telemetry::Metrics::new();
        let link = crate::redis_link::RedisLink::connect(
            target,
            &args.redis_prefix,
            metrics.redis.clone(),
        )?;
        config.revocations = Some(crate::state::revocation::Revocations::redis(
            std::sync::Arc::new(link),
            metrics.revocation.clone(),
        ));
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.listen,
            source,
        })?;
    run(listener, config, shutdown).await
}

/// Run the payments service on an already-bound listener until `shutdown` resolves.
///
/// Connects to the configured store, applies migrations, then serves HTTP/1.1 and HTTP/2 (h2c).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let store = Store::connect(&config.database_url, config.db_timeout).await?;
    serve(listener, config, store, shutdown).await
}

/// Serve with an already-connected store.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let state = api::AppState::new(config, store.clone());
    let router = api::router(state.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(addr = %addr, "payments service listening");
    }
    crate::serve::accept_until(&listener, shutdown, |stream, peer| {
        let router = router.clone();
        let state = state.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let router = router.clone();
            let state = state.clone();
            async move { Ok::<_, Infallible>(api::handle(router, state, peer, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    })
    .await;
    drop(listener);
    crate::serve::drain(graceful, DRAIN_TIMEOUT).await;
    store.close().await;
    tracing::info!("payments service stopped");
    Ok(())
}

/// What `bootstrap` created. The password is shown once and stored only as an argon2id hash.
#[derive(Debug, Clone)]
pub struct Bootstrapped {
    pub tenant_id: String,
    pub tenant: String,
    pub email: String,
    pub password: String,
}

/// Create a tenant and its first admin with a generated password.
pub async fn bootstrap(
    store: &Store,
    tenant_slug: &str,
    tenant_name: &str,
    email: &str,
) -> Result<Bootstrapped, Error> {
    let slug = validation::parse_slug(tenant_slug)?;
    let name = validation::normalize_text("name", tenant_name, 1, 200)?;
    let email = validation::parse_email(email)?;
    let password = auth::generate_password();
    let pw = password.clone();
    let password_hash = tokio::task::spawn_blocking(move || auth::hash_password(&pw))
        .await
        .expect("password hashing does not panic");
    let tenant_id = uuid::Uuid::new_v4().to_string();
    let admin = NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant_id.clone(),
        email: email.clone(),
        role: crate::identity::Role::Admin,
        password_hash,
    };
    let ctx = AuditContext {
        actor: "cli:bootstrap".into(),
        client_ip: "local".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let events = [
        AuditEvent::new(
            &ctx,
            SYSTEM_TENANT,
            AuditAction::TenantCreated,
            &tenant_id,
            serde_json::json!({ "slug": slug }),
        ),
        AuditEvent::new(
            &ctx,
            &tenant_id,
            AuditAction::UserCreated,
            &admin.id,
            serde_json::json!({ "email": validation::mask_email(&email), "role": "admin" }),
        ),
    ];
    store.create_tenant(&slug, &name, &admin, &events).await?;
    Ok(Bootstrapped {
        tenant_id,
        tenant: slug,
        email,
        password,
    })
}

/// `ward audit verify`: check every tenant's chain; the error names the first altered or removed record.
pub async fn verify_audit(database_url: &str) -> Result<u64, Error> {
    let store = Store::connect(database_url, Duration::from_secs(10)).await?;
    let result = store.verify_audit().await;
    store.close().await;
    result?.map_err(Error::AuditBroken)
}

/// Peer address of a request (set by the accept loop).
pub type Peer = SocketAddr;
