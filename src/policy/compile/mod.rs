//! Spec → `Policy`. Every check on a policy happens here, and every error found is reported,
//! each with its file, YAML position where known, and field path.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};

use super::matcher::{HostMatch, PathMatch, RouteMatch};
use super::{
    Cors, Deny, Fallback, HeaderRules, OriginPattern, Policy, RateKey, RateLimit, RedisTuning,
    RequestLimits, Route, Server,
};
use crate::policy::spec::{
    CorsSpec, DefaultsSpec, HeaderRulesSpec, IdentitySpec, LimitsSpec, Mode, OnRedisError,
    PolicySpec, RateLimitSpec, RouteSpec, SessionsSpec,
};

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub file: PathBuf,
    /// 1-based line and column, when the YAML parser knows them.
    pub position: Option<(usize, usize)>,
    /// Field path like `routes[2].limits.max_body`; empty for file-level problems.
    pub field: String,
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((l, c)) = self.position {
            write!(f, ":{l}:{c}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// Why a policy could not be loaded: every error found, in file order.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy directory {} holds no *.yaml file", .0.display())]
    Empty(PathBuf),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<CompileError>),
}

/// The policy files under `path`: the file itself, or a directory's visible `*.yaml`/`*.yml` files in name order.
/// Hidden entries are skipped, which also skips Kubernetes' `..data` bookkeeping.
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LoadError::Empty(path.to_owned()));
    }
    Ok(files)
}

/// Reads and compiles the policy at `path` (a file or a directory). Blocking: call it off the request path.
pub fn load(path: &Path) -> Result<Policy, LoadError> {
    let files = policy_files(path)?;
    let mut sources = Vec::with_capacity(files.len());
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|source| LoadError::Read {
            path: f.clone(),
            source,
        })?;
        sources.push((f.clone(), text));
    }
    compile_sources(&sources)
}

/// Compiles already-read sources `(file name, YAML text)`.
pub fn compile_sources(sources: &[(PathBuf, String)]) -> Result<Policy, LoadError> {
    let mut errors = Vec::new();
    let mut specs = Vec::new();
    let mut hasher = Sha256::new();
    for (file, text) in sources {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        match serde_norway::from_str::<PolicySpec>(text) {
            Ok(spec) => specs.push((file.clone(), spec)),
            Err(e) => errors.push(yaml_error(file, &e)),
        }
    }
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }
    let mut c = Compiler {
        errors: Vec::new(),
        file: PathBuf::new(),
        inputs: hasher.clone(),
    };
    let policy = c.policy(specs, hex::encode(hasher.finalize()));
    if c.errors.is_empty() {
        Ok(policy.expect("a policy is built whenever no error was recorded"))
    } else {
        Err(LoadError::Invalid(c.errors))
    }
}

fn yaml_error(file: &Path, e: &serde_norway::Error) -> CompileError {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    let (field, message) = match text.split_once(": ") {
        Some((f, m)) if !f.contains(' ') => (f.to_owned(), m.to_owned()),
        _ => (String::new(), text),
    };
    CompileError {
        file: file.to_owned(),
        position: e.location().map(|l| (l.line(), l.column())),
        field,
        message,
    }
}

pub(super) struct Compiler {
    pub(super) errors: Vec<CompileError>,
    /// The file being compiled: errors name it, relative paths start from it.
    pub(super) file: PathBuf,
    /// Digest of everything read: the policy files, and the files and secrets they reference.
    pub(super) inputs: Sha256,
}

const DEFAULT_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

impl Compiler {
    pub(super) fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(CompileError {
            file: self.file.clone(),
            position: None,
            field: field.into(),
            message: message.into(),
        });
    }

    fn policy(&mut self, specs: Vec<(PathBuf, PolicySpec)>, hash: String) -> Option<Policy> {
        let mut upstream = None;
        let mut named_upstreams = Vec::new();
        let mut server = None;
        let mut defaults: Option<(PathBuf, DefaultsSpec)> = None;
        let mut identity_spec: Option<(PathBuf, IdentitySpec)> = None;
        let mut sessions_spec: Option<(PathBuf, SessionsSpec)> = None;
        let mut routes = Vec::new();
        let sources: Vec<PathBuf> = specs.iter().map(|(f, _)| f.clone()).collect();
        for (file, spec) in specs {
            self.file = file.clone();
            if spec.version != 1 {
                self.err(
                    "version",
                    format!("unsupported policy version {} (expected 1)", spec.version),
                );
            }
            if let Some(u) = spec.upstream {
                if upstream.is_some() {
                    self.err("upstream", "defined in more than one policy file");
                }
                upstream = Some((file.clone(), u));
            }
            if let Some(u) = spec.upstreams {
                named_upstreams.push((file.clone(), u));
            }
            if let Some(s) = spec.server {
                if server.is_some() {
                    self.err("server", "defined in more than one policy file");
                }
                server = Some(self.server(s));
            }
            if let Some(i) = spec.identity {
                if identity_spec.is_some() {
                    self.err("identity", "defined in more than one policy file");
                }
                identity_spec = Some((file.clone(), i));
            }
            if let Some(x) = spec.sessions {
                if sessions_spec.is_some() {
                    self.err("sessions", "defined in more than one policy file");
                }
                sessions_spec = Some((file.clone(), x));
            }
            if let Some(d) = spec.defaults {
                if defaults.is_some() {
                    self.err("defaults", "defined in more than one policy file");
                }
                defaults = Some((file.clone(), d));
            }
            for (i, r) in spec.routes.into_iter().enumerate() {
                routes.push((file.clone(), i, r));
            }
        }
        let (defaults_file, defaults) = defaults.unwrap_or_default();
        if upstream.is_none() && named_upstreams.is_empty() {
            self.file = sources.first().cloned().unwrap_or_default();
            self.err("upstream", "no policy file defines the upstream");
        }
        let mut watched_files = Vec::new();
        let upstreams = self.upstreams(upstream, named_upstreams, &mut watched_files);
        if routes.is_empty() {
            self.file = sources.first().cloned().unwrap_or_default();
            self.err(
                "routes",
                "the policy has no routes (every request would get 404)",
            );
        }

        let identity = match identity_spec {
            Some((file, spec)) => {
                self.file = file;
                self.identity(Some(spec), &mut watched_files)
            }
            None => self.identity(None, &mut watched_files),
        };
        let sessions = match sessions_spec {
            Some((file, spec)) => {
                self.file = file;
                self.sessions(Some(spec))
            }
            None => self.sessions(None),
        };

        self.file = defaults_file;
        let base_limits = self.limits(
            &LimitsSpec::default(),
            defaults.limits.as_ref(),
            "defaults.limits",
        );
        let base_cors = defaults
            .cors
            .as_ref()
            .and_then(|c| self.cors(c, "defaults.cors"));
        let base_rate = defaults.rate_limits.clone().unwrap_or_default();
        let mut rate_seen: HashMap<String, (RateLimitSpec, String)> = HashMap::new();
        let mut names: HashMap<String, String> = HashMap::new();
        let mut compiled = Vec::new();
        for (file, i, r) in routes {
            self.file = file;
            let at = format!("routes[{i}]");
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.err(
                    format!("{at}.name"),
                    "route names use letters, digits, `-` and `_` only",
                );
            }
            if let Some(first) =
                names.insert(r.name.clone(), format!("{}: {at}", self.file.display()))
            {
                self.err(
                    format!("{at}.name"),
                    format!("duplicate route name `{}` (first at {first})", r.name),
                );
            }
            let auth = self.auth_rule(&identity, defaults.auth.as_ref(), r.auth.as_ref(), &at);
            let specs = r.rate_limits.clone().unwrap_or_else(|| base_rate.clone());
            let mut rate_limits = Vec::new();
            let mut identity_rate_limits = Vec::new();
            for (j, rl) in specs.iter().enumerate() {
                let field = if r.rate_limits.is_some() {
                    format!("{at}.rate_limits[{j}]")
                } else {
                    format!("defaults.rate_limits[{j}]")
                };
                match self.rate_limit(rl, &field, &mut rate_seen) {
                    Some(l) if l.key.is_identity() => {
                        if auth.require == crate::policy::Requirement::None {
                            self.err(
                                format!("{field}.key"),
                                format!("`{}` counts by the verified caller, but route `{}` does not authenticate (auth.require: none)", rl.key, r.name),
                            );
                        }
                        identity_rate_limits.push(l);
                    }
                    Some(l) => rate_limits.push(l),
                    None => {}
                }
            }
            let items: Vec<&str> = rate_limits
                .iter()
                .chain(&identity_rate_limits)
                .filter(|l| l.mode == Mode::Enforce)
                .map(|l| l.policy_item.as_str())
                .collect();
            let rate_limit_policy = HeaderValue::from_str(&items.join(", "))
                .ok()
                .filter(|_| !items.is_empty());
            let upstream = self.route_upstream(&upstreams, r.upstream.as_ref(), &at);
            let route = Route {
                name: Arc::from(r.name.as_str()),
                upstream,
                matcher: self.matcher(&r, &at),
                deny: r.deny.as_ref().and_then(|d| {
                    let status = d.status.unwrap_or(403);
                    match StatusCode::from_u16(status) {
                        Ok(s) if s.is_client_error() => Some(Deny {
                            status: s,
                            mode: d.mode,
                        }),
                        _ => {
                            self.err(
                                format!("{at}.deny.status"),
                                format!("expected a 4xx status, got {status}"),
                            );
                            None
                        }
                    }
                }),
                limits: self.limits_over(&base_limits, r.limits.as_ref(), &format!("{at}.limits")),
                request_headers: self.header_rules(
                    defaults.headers.as_ref().and_then(|h| h.request.as_ref()),
                    r.headers.as_ref().and_then(|h| h.request.as_ref()),
                ),
                response_headers: self.header_rules(
                    defaults.headers.as_ref().and_then(|h| h.response.as_ref()),
                    r.headers.as_ref().and_then(|h| h.response.as_ref()),
                ),
                cors: match &r.cors {
                    Some(c) => self.cors(c, &format!("{at}.cors")),
                    None => base_cors.as_ref().map(clone_cors),
                },
                rate_limits,
                identity_rate_limits,
                rate_limit_policy,
                auth,
                refresh: r
                    .refresh_token
                    .as_ref()
                    .and_then(|x| self.refresh_rule(x, &format!("{at}.refresh_token"))),
                lockout: r
                    .lockout
                    .as_ref()
                    .and_then(|x| self.lockout_rule(x, &format!("{at}.lockout"))),
                metrics: Default::default(),
            };
            compiled.push(Arc::new(route));
        }
        let mut rate_limit_names: Vec<Arc<str>> =
            rate_seen.keys().map(|k| Arc::from(k.as_str())).collect();
        rate_limit_names.sort();
        Some(Policy {
            hash,
            sources,
            loaded_at: SystemTime::now(),
            upstreams,
            server: server.unwrap_or_else(|| self.server(Default::default())),
            routes: compiled,
            default_response_headers: self.header_rules(
                defaults.headers.as_ref().and_then(|h| h.response.as_ref()),
                None,
            ),
            rate_limit_names,
            identity,
            sessions,
            watched_files,
            inputs: self.inputs.clone().finalize().into(),
        })
    }
}

mod route;
use route::clone_cors;
mod server;
#[cfg(test)]
mod tests;

/// A name a policy gives an issuer or an upstream: ASCII letters, digits, `-` and `_`.
pub(in crate::policy) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A policy-relative path: relative paths are taken from the policy file's directory.
pub(in crate::policy) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}
