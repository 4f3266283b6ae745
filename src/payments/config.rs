//! Process settings for `ward payments`: flags and environment variables, loaded once into a
//! [`Config`]. Missing or insecure settings fail here, at start, with a message naming the setting.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::auth::TokenIssuer;
use super::domain::lockout::LockoutPolicy;
use super::keys::{read_secret_file, DataKeys, KeyError, KeyRef, Secret, SigningKeys};

/// Settings shared by every `ward payments` subcommand that opens the database.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH` (default; the file is created) or `postgres://USER@HOST/DB`.
    #[arg(
        long,
        env = "WARD_PAYMENTS_DATABASE_URL",
        default_value = "sqlite://ward-payments.db"
    )]
    pub database_url: String,
}

/// Settings of the running service.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; loopback by default.
    #[arg(long, env = "WARD_PAYMENTS_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Active token-signing key as KID=PATH to an Ed25519 PKCS#8 private key PEM (mode 600).
    #[arg(long, env = "WARD_PAYMENTS_SIGNING_KEY")]
    pub signing_key: Option<KeyRef>,
    /// Alternative to --signing-key: the private key PEM itself, from the environment only.
    #[arg(
        long = "signing-key-pem-from-env",
        env = "WARD_PAYMENTS_SIGNING_KEY_PEM",
        hide_env_values = true,
        hide = true
    )]
    pub signing_key_pem: Option<String>,
    /// Key id for WARD_PAYMENTS_SIGNING_KEY_PEM.
    #[arg(long, env = "WARD_PAYMENTS_SIGNING_KID")]
    pub signing_kid: Option<String>,
    /// Verify-only keys (previous signers) as KID=PATH to a public or private PEM; repeatable.
    #[arg(long, env = "WARD_PAYMENTS_VERIFY_KEYS", value_delimiter = ',')]
    pub verify_key: Vec<KeyRef>,
    /// Data-encryption keys as KID=PATH to a file with base64 of 32 random bytes (mode 600); the first
    /// is active, the others only decrypt. Repeatable.
    #[arg(long, env = "WARD_PAYMENTS_DATA_KEYS", value_delimiter = ',')]
    pub data_key: Vec<KeyRef>,
    /// File holding the PSP webhook HMAC secret (mode 600, at least 32 random characters).
    #[arg(long, env = "WARD_PAYMENTS_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// File holding the bearer token the proxy uses for /internal/v1/security-events (optional;
    /// the endpoint answers 404 without it).
    #[arg(long, env = "WARD_PAYMENTS_INTERNAL_TOKEN_FILE")]
    pub internal_token_file: Option<PathBuf>,
    /// `iss` of issued access tokens.
    #[arg(long, env = "WARD_PAYMENTS_ISSUER", default_value = "ward-payments")]
    pub issuer: String,
    /// `aud` of issued access tokens.
    #[arg(long, env = "WARD_PAYMENTS_AUDIENCE", default_value = "ward-api")]
    pub audience: String,
    /// Proxies whose X-Forwarded-For is believed (loopback always is); repeatable.
    #[arg(long, env = "WARD_PAYMENTS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxy: Vec<IpAddr>,
    /// Redis shared with the proxies: logouts, password changes, admin revocations and refresh
    /// reuse are published there, so every proxy refuses the session's access tokens at once.
    #[arg(long, env = "WARD_PAYMENTS_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<crate::redis_link::RedisTarget>,
    /// The proxies' `--redis-prefix`.
    #[arg(long, env = "WARD_PAYMENTS_REDIS_PREFIX", default_value = "ward")]
    pub redis_prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{0}: required")]
    Missing(&'static str),
}

/// Everything the service needs, loaded and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub tokens: TokenIssuer,
    pub refresh_ttl: Duration,
    pub data_keys: DataKeys,
    pub webhook_secret: Secret,
    pub webhook_tolerance: Duration,
    pub internal_token: Option<Secret>,
    pub trusted_proxies: Vec<IpAddr>,
    pub lockout: LockoutPolicy,
    /// Where session revocations are published for the proxy (Redis, or the proxy's own
    /// in-process copy in `ward demo`); `None`: the service enforces them alone.
    pub revocations: Option<std::sync::Arc<crate::state::revocation::Revocations>>,
    /// Deadline for acquiring a connection and for each statement.
    pub db_timeout: Duration,
    pub max_body_bytes: usize,
}

impl Config {
    /// The defaults the issue asks for: 15-minute access tokens, 7-day refresh tokens,
    /// 5 failures in 15 minutes lock for 15 minutes, 5-minute webhook tolerance.
    pub fn new(
        database_url: String,
        signing_keys: SigningKeys,
        data_keys: DataKeys,
        webhook_secret: Secret,
        issuer: String,
        audience: String,
    ) -> Config {
        Config {
            database_url,
            tokens: TokenIssuer {
                keys: signing_keys,
                issuer,
                audience,
                access_ttl: Duration::from_secs(15 * 60),
            },
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            data_keys,
            webhook_secret,
            webhook_tolerance: Duration::from_secs(300),
            internal_token: None,
            trusted_proxies: Vec::new(),
            lockout: LockoutPolicy {
                max_failures: 5,
                window: Duration::from_secs(15 * 60),
                duration: Duration::from_secs(15 * 60),
            },
            revocations: None,
            db_timeout: Duration::from_secs(5),
            max_body_bytes: 64 * 1024,
        }
    }

    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        const SIGNING: &str = "--signing-key / WARD_PAYMENTS_SIGNING_KEY (or WARD_PAYMENTS_SIGNING_KEY_PEM with WARD_PAYMENTS_SIGNING_KID)";
        let (kid, pem) = match (&args.signing_key, &args.signing_key_pem) {
            (Some(r), None) => {
                let raw = read_secret_file("--signing-key / WARD_PAYMENTS_SIGNING_KEY", &r.path)?;
                (r.kid.clone(), String::from_utf8_lossy(&raw).into_owned())
            }
            (None, Some(pem)) => {
                let kid = args.signing_kid.clone().ok_or(ConfigError::Missing(
                    "--signing-kid / WARD_PAYMENTS_SIGNING_KID",
                ))?;
                (kid, pem.clone())
            }
            (Some(_), Some(_)) => {
                return Err(KeyError::Invalid {
                    setting: SIGNING,
                    reason: "set either a key file or a PEM in the environment, not both".into(),
                }
                .into())
            }
            (None, None) => return Err(ConfigError::Missing(SIGNING)),
        };
        let mut verify = Vec::new();
        for r in &args.verify_key {
            let raw = std::fs::read(&r.path).map_err(|source| KeyError::Read {
                setting: "--verify-key / WARD_PAYMENTS_VERIFY_KEYS",
                path: r.path.clone(),
                source,
            })?;
            verify.push((r.kid.clone(), String::from_utf8_lossy(&raw).into_owned()));
        }
        let signing = SigningKeys::from_pems(&kid, &pem, &verify)?;
        if args.data_key.is_empty() {
            return Err(ConfigError::Missing("--data-key / WARD_PAYMENTS_DATA_KEYS"));
        }
        let data_keys = DataKeys::from_files(&args.data_key)?;
        let secret_path = args
            .webhook_secret_file
            .as_ref()
            .ok_or(ConfigError::Missing(
                "--webhook-secret-file / WARD_PAYMENTS_WEBHOOK_SECRET_FILE",
            ))?;
        let webhook_secret = Secret::from_file(
            "--webhook-secret-file / WARD_PAYMENTS_WEBHOOK_SECRET_FILE",
            secret_path,
        )?;
        let internal_token = match &args.internal_token_file {
            Some(p) => Some(Secret::from_file(
                "--internal-token-file / WARD_PAYMENTS_INTERNAL_TOKEN_FILE",
                p,
            )?),
            None => None,
        };
        let mut config = Config::new(
            args.database.database_url.clone(),
            signing,
            data_keys,
            webhook_secret,
            args.issuer.clone(),
            args.audience.clone(),
        );
        config.internal_token = internal_token;
        config.trusted_proxies = args.trusted_proxy.clone();
        Ok(config)
    }
}
