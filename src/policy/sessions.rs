//! The sessions part of a policy, compiled: revocation at the edge, the lockout key, security
//! event delivery, and per route refresh-token single use and login lockout.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use sha2::Digest;

use super::compile::{resolve, Compiler};
use super::spec::{
    LockoutSpec, OnStoreError, RefreshTokenSpec, SecretSourceSpec, SessionsSpec, Unsynced,
};
use crate::state::events::Sink;
use crate::state::lockout::Rules;

/// Policy-wide session settings.
#[derive(Debug, Default)]
pub struct Sessions {
    pub revocation: Option<Revocation>,
    /// The lockout identities' HMAC key; `None`: the process makes one at start.
    pub lockout_key: Option<Secret>,
    pub events_sink: Option<Sink>,
}

/// Bytes that must not be printed.
#[derive(Clone)]
pub struct Secret(pub Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Revocation {
    pub on_unsynced: Unsynced,
    pub max_token_lifetime: Duration,
}

/// Where a refresh token is in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    JsonField(String),
    Cookie(String),
}

/// Where the token's family (session) comes from, learnt when the upstream accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FamilySource {
    ResponseHeader(HeaderName),
    TokenClaim(String),
    Unknown,
}

#[derive(Debug)]
pub struct RefreshRule {
    pub source: TokenSource,
    pub family: FamilySource,
    pub lifetime: Duration,
    pub max_body: usize,
    pub on_store_error: OnStoreError,
}

#[derive(Debug)]
pub struct LockoutRule {
    pub identity: Vec<String>,
    pub failure_statuses: Vec<StatusCode>,
    pub rules: Rules,
    pub per_ip: Option<Rules>,
    pub max_body: usize,
    pub on_store_error: OnStoreError,
}

impl Compiler {
    pub(super) fn sessions(&mut self, spec: Option<SessionsSpec>) -> Sessions {
        let Some(spec) = spec else {
            return Sessions::default();
        };
        let revocation = spec.revocation.map(|r| Revocation {
            on_unsynced: r.on_unsynced.unwrap_or(Unsynced::FailClosed),
            max_token_lifetime: self.positive(
                r.max_token_lifetime.map(|d| d.0),
                Duration::from_secs(3600),
                "sessions.revocation.max_token_lifetime",
            ),
        });
        let lockout_key = spec
            .lockout_key
            .as_ref()
            .and_then(|s| self.secret(s, "sessions.lockout_key"));
        let events_sink = spec.events.as_ref().and_then(|e| {
            let queue = match e.queue {
                Some(0) => {
                    self.err("sessions.events.queue", "must be greater than zero");
                    1
                }
                Some(q) => q,
                None => 10_000,
            };
            let s = e.sink.as_ref()?;
            if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
                self.err(
                    "sessions.events.sink.url",
                    format!("`{}` is not an http(s) URL", s.url),
                );
            }
            let token_file = resolve(&self.file, &s.token_file);
            if let Err(e) = std::fs::metadata(&token_file) {
                self.err(
                    "sessions.events.sink.token_file",
                    format!("cannot read {}: {e}", token_file.display()),
                );
            }
            let batch = match s.batch {
                Some(0) => {
                    self.err("sessions.events.sink.batch", "must be greater than zero");
                    1
                }
                Some(b) => b.min(1000),
                None => 100,
            };
            Some(Sink {
                url: s.url.clone(),
                token_file,
                queue,
                batch,
                flush_every: self.positive(
                    s.flush_every.map(|d| d.0),
                    Duration::from_secs(1),
                    "sessions.events.sink.flush_every",
                ),
            })
        });
        Sessions {
            revocation,
            lockout_key,
            events_sink,
        }
    }

    /// A secret of at least 32 bytes from a file or an env var; never from the policy text.
    fn secret(&mut self, s: &SecretSourceSpec, at: &str) -> Option<Secret> {
        if s.secret.is_some() {
            self.err(
                format!("{at}.secret"),
                "a secret never goes in the policy text (it would be in every copy and diff of it); use secret_file or secret_env",
            );
            return None;
        }
        let bytes = match (&s.secret_file, &s.secret_env) {
            (Some(f), None) => {
                let path = resolve(&self.file, f);
                match std::fs::read(&path) {
                    Ok(b) => {
                        self.inputs.update(path.as_os_str().as_encoded_bytes());
                        self.inputs.update(&b);
                        b.trim_ascii().to_vec()
                    }
                    Err(e) => {
                        self.err(
                            format!("{at}.secret_file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        return None;
                    }
                }
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) => {
                    self.inputs.update(var.as_bytes());
                    self.inputs.update(v.as_bytes());
                    v.trim().as_bytes().to_vec()
                }
                Err(_) => {
                    self.err(
                        format!("{at}.secret_env"),
                        format!("environment variable `{var}` is not set"),
                    );
                    return None;
                }
            },
            _ => {
                self.err(at, "give exactly one of `secret_file` and `secret_env`");
                return None;
            }
        };
        if bytes.len() < 32 {
            self.err(at, "the secret is shorter than 32 bytes");
            return None;
        }
        Some(Secret(Arc::from(bytes)))
    }

    pub(super) fn refresh_rule(&mut self, r: &RefreshTokenSpec, at: &str) -> Option<RefreshRule> {
        let source = match (&r.json_field, &r.cookie) {
            (Some(f), None) if !f.is_empty() => TokenSource::JsonField(f.clone()),
            (None, Some(c)) if !c.is_empty() => TokenSource::Cookie(c.clone()),
            _ => {
                self.err(at, "give exactly one of `json_field` and `cookie`");
                return None;
            }
        };
        let family = match (&r.family_header, &r.family_claim) {
            (Some(h), None) => FamilySource::ResponseHeader(h.0.clone()),
            (None, Some(c)) => FamilySource::TokenClaim(c.clone()),
            (None, None) => FamilySource::Unknown,
            (Some(_), Some(_)) => {
                self.err(at, "give at most one of `family_header` and `family_claim`");
                return None;
            }
        };
        Some(RefreshRule {
            source,
            family,
            lifetime: self.positive(
                r.lifetime.map(|d| d.0),
                Duration::from_secs(7 * 24 * 3600),
                &format!("{at}.lifetime"),
            ),
            max_body: self.body_bound(r.max_body.map(|s| s.0), &format!("{at}.max_body")),
            on_store_error: r.on_redis_error.unwrap_or(OnStoreError::Deny),
        })
    }

    pub(super) fn lockout_rule(&mut self, l: &LockoutSpec, at: &str) -> Option<LockoutRule> {
        if l.identity.is_empty() || l.identity.iter().any(String::is_empty) {
            self.err(
                format!("{at}.identity"),
                "name the JSON fields that identify the account, e.g. [tenant, email]",
            );
            return None;
        }
        let mut statuses = Vec::new();
        for (i, s) in l
            .failure_statuses
            .clone()
            .unwrap_or(vec![401])
            .iter()
            .enumerate()
        {
            match StatusCode::from_u16(*s) {
                Ok(code) if code.is_client_error() => statuses.push(code),
                _ => self.err(
                    format!("{at}.failure_statuses[{i}]"),
                    format!("expected a 4xx status, got {s}"),
                ),
            }
        }
        let d = |v: Option<&super::units::Dur>, default: u64| {
            v.map_or(Duration::from_secs(default), |d| d.0)
        };
        let max_failures = l.max_failures.unwrap_or(5);
        if max_failures == 0 {
            self.err(format!("{at}.max_failures"), "must be at least 1");
        }
        let rules = Rules {
            max_failures: max_failures.max(1),
            window: self.positive(
                l.window.map(|d| d.0),
                Duration::from_secs(900),
                &format!("{at}.window"),
            ),
            lock_for: self.positive(
                l.lock_for.map(|d| d.0),
                Duration::from_secs(900),
                &format!("{at}.lock_for"),
            ),
            backoff_base: d(l.backoff_base.as_ref(), 1),
            backoff_max: d(l.backoff_max.as_ref(), 60),
        };
        if rules.backoff_max < rules.backoff_base {
            self.err(format!("{at}.backoff_max"), "must be at least backoff_base");
        }
        let per_ip = match &l.per_ip {
            Some(p) if p.max_failures == 0 || p.window.0.is_zero() || p.lock_for.0.is_zero() => {
                self.err(
                    format!("{at}.per_ip"),
                    "max_failures, window and lock_for must be greater than zero",
                );
                None
            }
            Some(p) => Some(Rules {
                max_failures: p.max_failures,
                window: p.window.0,
                lock_for: p.lock_for.0,
                backoff_base: Duration::ZERO,
                backoff_max: Duration::ZERO,
            }),
            None => Some(Rules {
                max_failures: 20,
                window: Duration::from_secs(900),
                lock_for: Duration::from_secs(900),
                backoff_base: Duration::ZERO,
                backoff_max: Duration::ZERO,
            }),
        };
        Some(LockoutRule {
            identity: l.identity.clone(),
            failure_statuses: statuses,
            rules,
            per_ip,
            max_body: self.body_bound(l.max_body.map(|s| s.0), &format!("{at}.max_body")),
            on_store_error: l.on_redis_error.unwrap_or(OnStoreError::Deny),
        })
    }

    fn body_bound(&mut self, v: Option<u64>, at: &str) -> usize {
        match v {
            Some(0) => {
                self.err(at, "must be greater than zero");
                16 * 1024
            }
            Some(v) if v > 1024 * 1024 => {
                self.err(at, "at most 1MiB (the body is held in memory to be read)");
                16 * 1024
            }
            Some(v) => v as usize,
            None => 16 * 1024,
        }
    }
}
