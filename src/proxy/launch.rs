//! Assembling a proxy from its settings: load and compile the policy, bind the listeners,
//! connect Redis, read the control API's token, build the revocation store. `ward proxy` and
//! `ward demo` both go through [`prepare`], so the demo cannot drift from production; they differ
//! only in what they hand it (certificates from files or made in memory; revocations of their own
//! or shared with the payments service in the same process).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::Proxy;
use crate::policy::{LoadError, PolicyStore};
use crate::redis_link::RedisLink;
use crate::settings::{ServeSettings, SettingsError};
use crate::sni::{Certificates, SniSpec};
use crate::state::revocation::Revocations;
use crate::telemetry::Metrics;
use crate::tls::{CertPaths, CertStore};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("invalid policy, not starting:\n{0}")]
    Policy(#[from] LoadError),
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind {
        addr: SocketAddr,
        setting: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid --redis-url / WARD_REDIS_URL: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Sni(#[from] crate::sni::SniError),
}

/// Where the serving certificate comes from.
pub enum Certs {
    /// PEM files, watched and reloaded (`ward proxy`): the default certificate, and those chosen
    /// by SNI (`--tls-sni`).
    Files(CertPaths, Vec<SniSpec>),
    /// Made in memory (`ward demo`): never written anywhere.
    Ready(Arc<CertStore>),
}

/// Everything `proxy::run` needs, ready (policy loaded, certificate loaded, listeners bound), in
/// that order: a start-up error names the first thing wrong.
pub async fn prepare(
    settings: &ServeSettings,
    certs: Certs,
    metrics: Metrics,
    shared_revocations: Option<Arc<Revocations>>,
    drain_timeout: Duration,
    pre_stop_delay: Duration,
) -> Result<Proxy, LaunchError> {
    let policy = Arc::new(PolicyStore::open(&settings.policy)?);
    let certs = match certs {
        Certs::Files(paths, sni) => Certificates::load(
            CertStore::new(crate::tls::load_certified_key(&paths)?, Some(paths)),
            &sni,
        )?,
        Certs::Ready(store) => Certificates::single(store),
    };
    let bind = |addr: SocketAddr, setting: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| LaunchError::Bind {
                addr,
                setting,
                source,
            })
    };
    let listener = bind(settings.listen, "--listen / WARD_LISTEN").await?;
    let admin = bind(settings.admin_listen, "--admin-listen / WARD_ADMIN_LISTEN").await?;
    let redirect = match settings.redirect_listen {
        Some(a) => Some(bind(a, "--redirect-listen / WARD_REDIRECT_LISTEN").await?),
        None => None,
    };
    let redis = match settings.redis_url.clone() {
        Some(target) => {
            tracing::info!(redis = %target, prefix = settings.redis_prefix.as_str(), "shared state in Redis");
            Some(Arc::new(RedisLink::connect(
                target,
                &settings.redis_prefix,
                metrics.redis.clone(),
            )?))
        }
        None => None,
    };
    let admin_token = settings.admin_token()?;
    let revocations = match (shared_revocations, &redis) {
        (Some(r), _) => r,
        (None, Some(link)) => Revocations::redis(link.clone(), metrics.revocation.clone()),
        (None, None) => Revocations::memory(metrics.revocation.clone()),
    };
    let (reload_tx, reload_requests) = tokio::sync::mpsc::channel(1);
    tokio::spawn(forward_sighup(reload_tx));
    Ok(Proxy {
        listener,
        admin,
        redirect,
        policy,
        certs,
        metrics,
        redis,
        revocations,
        admin_token,
        reload_requests,
        drain_timeout,
        pre_stop_delay,
    })
}

/// SIGHUP asks for a policy reload.
async fn forward_sighup(tx: tokio::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; file changes still reload the policy");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading policy");
        // A full channel already holds a pending reload.
        let _ = tx.try_send(());
    }
}
