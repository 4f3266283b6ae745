//! `ward revoke`, `ward revocations list` and `ward lockout show|clear`: clients of a running
//! proxy's control API on its admin port (see `proxy::control`). The admin token comes from a
//! file or the environment, never a flag value (flags show in `ps`), and is never printed.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

/// Where the control API is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub struct ControlTarget {
    /// The proxy's admin address, `http://HOST:PORT`.
    #[arg(long, env = "WARD_ADMIN_URL", default_value = "http://127.0.0.1:9901")]
    pub admin: String,
    /// File holding the admin token (the proxy's `--admin-token-file`).
    #[arg(long, env = "WARD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RevokeKind {
    /// One token, by its `jti`.
    Jti,
    /// Every token of a session (refresh-token family), by its `sid`.
    Session,
    /// Every token of a subject issued before a time (default: now).
    Subject,
}

#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    pub kind: RevokeKind,
    pub id: String,
    /// For `subject`: revoke tokens issued before this RFC 3339 time (default: now).
    #[arg(long)]
    pub before: Option<String>,
    /// How long the revocation is kept (default: the policy's `max_token_lifetime`).
    #[arg(long, value_parser = crate::settings::parse_duration)]
    pub ttl: Option<Duration>,
    #[command(flatten)]
    pub target: ControlTarget,
}

#[derive(Debug, Clone, Subcommand)]
pub enum LockoutCommand {
    /// Show the lockout state of an identity (its fields in the route's order) or a client IP.
    Show(LockoutArgs),
    /// Clear it.
    Clear(LockoutArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LockoutArgs {
    /// The login route's name in the policy.
    #[arg(long)]
    pub route: String,
    /// One value per identity field of the route's lockout, in order (e.g. tenant, then email).
    #[arg(long = "value")]
    pub values: Vec<String>,
    /// A client IP instead of an identity.
    #[arg(long)]
    pub ip: Option<String>,
    #[command(flatten)]
    pub target: ControlTarget,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no admin token: set --admin-token-file or WARD_ADMIN_TOKEN")]
    NoToken,
    #[error("cannot read the admin token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--before {0:?}: expected an RFC 3339 time like 2026-11-30T12:00:00Z")]
    Before(String),
    #[error("cannot reach the control API at {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the control API answered {status}: {body}")]
    Refused { status: u16, body: String },
}

impl ControlTarget {
    fn token(&self) -> Result<String, ControlError> {
        if let Some(path) = &self.admin_token_file {
            return std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|source| ControlError::TokenFile {
                    path: path.clone(),
                    source,
                });
        }
        std::env::var("WARD_ADMIN_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or(ControlError::NoToken)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ControlError> {
        let token = self.token()?;
        let url = format!("{}{path_and_query}", self.admin.trim_end_matches('/'));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|source| ControlError::Request {
                url: url.clone(),
                source,
            })?;
        let mut req = client.request(method, &url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|source| ControlError::Request {
            url: url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(ControlError::Refused { status, body: text });
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }
}

pub async fn revoke(args: &RevokeArgs) -> Result<serde_json::Value, ControlError> {
    let kind = match args.kind {
        RevokeKind::Jti => "token",
        RevokeKind::Session => "session",
        RevokeKind::Subject => "subject",
    };
    let before = match &args.before {
        Some(t) => Some(
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|_| ControlError::Before(t.clone()))?
                .unix_timestamp(),
        ),
        None => None,
    };
    let body = serde_json::json!({
        "kind": kind,
        "id": args.id,
        "before": before,
        "ttl_seconds": args.ttl.map(|d| d.as_secs()),
    });
    args.target
        .call(reqwest::Method::POST, "/revocations", Some(body))
        .await
}

pub async fn list(target: &ControlTarget) -> Result<serde_json::Value, ControlError> {
    target
        .call(reqwest::Method::GET, "/revocations", None)
        .await
}

pub async fn lockout(command: &LockoutCommand) -> Result<serde_json::Value, ControlError> {
    let (method, args) = match command {
        LockoutCommand::Show(a) => (reqwest::Method::GET, a),
        LockoutCommand::Clear(a) => (reqwest::Method::DELETE, a),
    };
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    let mut query = format!("/lockouts?route={}", enc(&args.route));
    for v in &args.values {
        query.push_str(&format!("&value={}", enc(v)));
    }
    if let Some(ip) = &args.ip {
        query.push_str(&format!("&ip={}", enc(ip)));
    }
    args.target.call(method, &query, None).await
}
