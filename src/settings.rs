//! Process settings from flags and matching environment variables: addresses, file paths, log
//! level. Not policy: nothing here changes without a restart, and nothing here is a security
//! rule an operator tunes live.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct ProxySettings {
    #[command(flatten)]
    pub serve: ServeSettings,
    /// PEM certificate chain; re-read when it changes on disk.
    #[arg(long, env = "WARD_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key; re-read when it changes on disk.
    #[arg(long, env = "WARD_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Another certificate, chosen by SNI: `NAMES=CERT,KEY` with NAMES comma-separated (`*.`
    /// wildcards allowed), e.g. `api.example.com,*.api.example.com=/tls/api/tls.crt,/tls/api/tls.key`.
    /// Repeatable (in WARD_TLS_SNI, entries separated by `;`); each pair re-read when it changes.
    /// A client without SNI, or naming no entry, gets --tls-cert.
    #[arg(long = "tls-sni", env = "WARD_TLS_SNI", value_name = "NAMES=CERT,KEY", value_delimiter = ';', value_parser = crate::sni::parse_spec)]
    pub tls_sni: Vec<crate::sni::SniSpec>,
    #[command(flatten)]
    pub runtime: RuntimeSettings,
}

/// Where the proxy listens, what it reads, where shared state lives: everything `proxy::prepare`
/// needs besides certificates. `ward demo` builds one too, so both run the same assembly.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// HTTPS listen address.
    #[arg(long, env = "WARD_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Admin listen address (/metrics, /healthz, /readyz, /policy). Keep it off public interfaces.
    #[arg(long, env = "WARD_ADMIN_LISTEN", default_value = "127.0.0.1:9901")]
    pub admin_listen: SocketAddr,
    /// Optional plain-HTTP listener that only redirects to HTTPS (308) and answers /healthz.
    #[arg(long, env = "WARD_REDIRECT_LISTEN")]
    pub redirect_listen: Option<SocketAddr>,
    /// Policy file, or directory of *.yaml policy files; reloaded live.
    #[arg(long, env = "WARD_POLICY", default_value = "policies/default.yaml")]
    pub policy: PathBuf,
    /// Redis for state shared by every replica (rate limits, revocations, refresh claims,
    /// lockouts): redis://, rediss:// (TLS), or a Cluster as redis+cluster://host:port,host:port.
    /// Without it, that state is kept in memory.
    #[arg(long, env = "WARD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<crate::redis_link::RedisTarget>,
    /// Prefix of every Redis key, one per deployment sharing a Redis.
    #[arg(long, env = "WARD_REDIS_PREFIX", default_value = "ward")]
    pub redis_prefix: String,
    /// File holding the bearer token of the admin port's control API (revocations, lockouts);
    /// or set WARD_ADMIN_TOKEN. Without either, the control API is off.
    #[arg(long, env = "WARD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RuntimeSettings {
    /// Log filter, e.g. `info` or `ward=debug`.
    #[arg(long, env = "WARD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Longest wait for in-flight requests after SIGTERM.
    #[arg(long, env = "WARD_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// After SIGTERM, how long to keep serving with /readyz answering 503 before the listener
    /// closes and the drain starts; give it the time your load balancer or Kubernetes endpoints
    /// take to stop sending (a few seconds). 0: close at once.
    #[arg(long, env = "WARD_PRE_STOP_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub pre_stop_delay: Duration,
    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "WARD_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("expected a duration like 30s: {e}"))
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("--admin-token-file / WARD_ADMIN_TOKEN_FILE: cannot read {}: {source}", path.display())]
    AdminTokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: the admin token must be at least 16 characters")]
    AdminTokenShort(&'static str),
}

impl ServeSettings {
    /// The control API's token: from the file, else from `WARD_ADMIN_TOKEN`; none means off.
    pub fn admin_token(&self) -> Result<Option<std::sync::Arc<[u8]>>, SettingsError> {
        let (token, source) = match &self.admin_token_file {
            Some(path) => (
                std::fs::read_to_string(path)
                    .map_err(|source| SettingsError::AdminTokenFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
                "--admin-token-file / WARD_ADMIN_TOKEN_FILE",
            ),
            None => match std::env::var("WARD_ADMIN_TOKEN") {
                Ok(t) => (t.trim().to_owned(), "WARD_ADMIN_TOKEN"),
                Err(_) => return Ok(None),
            },
        };
        if token.len() < 16 {
            return Err(SettingsError::AdminTokenShort(source));
        }
        Ok(Some(std::sync::Arc::from(token.into_bytes())))
    }
}
