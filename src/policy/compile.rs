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
use super::spec::{
    CorsSpec, DefaultsSpec, HeaderRulesSpec, IdentitySpec, LimitsSpec, Mode, OnRedisError,
    PolicySpec, RateLimitSpec, RouteSpec, SessionsSpec,
};
use super::{
    Cors, Deny, Fallback, HeaderRules, OriginPattern, Policy, RateKey, RateLimit, RedisTuning,
    RequestLimits, Route, Server, Upstream,
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
                upstream = self.upstream(u);
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
        if upstream.is_none() && !self.errors.iter().any(|e| e.field.starts_with("upstream")) {
            self.file = sources.first().cloned().unwrap_or_default();
            self.err("upstream", "no policy file defines the upstream");
        }
        if routes.is_empty() {
            self.file = sources.first().cloned().unwrap_or_default();
            self.err(
                "routes",
                "the policy has no routes (every request would get 404)",
            );
        }

        let mut watched_files = Vec::new();
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
                        if auth.require == super::Requirement::None {
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
            let route = Route {
                name: Arc::from(r.name.as_str()),
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
            upstream: upstream?,
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

    fn upstream(&mut self, u: super::spec::UpstreamSpec) -> Option<Upstream> {
        let uri: http::Uri = match u.url.parse() {
            Ok(uri) => uri,
            Err(e) => {
                self.err("upstream.url", format!("`{}` is not a URL: {e}", u.url));
                return None;
            }
        };
        let scheme = uri.scheme().cloned();
        let (Some(scheme), Some(authority)) = (scheme, uri.authority().cloned()) else {
            self.err(
                "upstream.url",
                format!(
                    "`{}` needs a scheme and host, like http://127.0.0.1:8080",
                    u.url
                ),
            );
            return None;
        };
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            self.err(
                "upstream.url",
                format!("scheme `{scheme}` is not http or https"),
            );
            return None;
        }
        if scheme == http::uri::Scheme::HTTPS {
            self.err(
                "upstream.url",
                "https upstreams are not supported yet; the sidecar talks plain HTTP to 127.0.0.1",
            );
            return None;
        }
        if uri.query().is_some() {
            self.err("upstream.url", "the upstream URL may not have a query");
        }
        Some(Upstream {
            scheme,
            authority,
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
            idle_timeout: self.positive(
                u.idle_timeout.map(|d| d.0),
                Duration::from_secs(30),
                "upstream.idle_timeout",
            ),
            request_timeout: self.positive(
                u.request_timeout.map(|d| d.0),
                Duration::from_secs(60),
                "upstream.request_timeout",
            ),
        })
    }

    pub(super) fn positive(
        &mut self,
        d: Option<Duration>,
        default: Duration,
        field: &str,
    ) -> Duration {
        match d {
            Some(d) if d.is_zero() => {
                self.err(field, "must be greater than zero");
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    fn server(&mut self, s: super::spec::ServerSpec) -> Server {
        let count = |c: &mut Self, v: Option<usize>, default: usize, field: &str| match v {
            Some(0) => {
                c.err(field, "must be greater than zero");
                default
            }
            Some(v) => v,
            None => default,
        };
        Server {
            trusted_proxies: s
                .trusted_proxies
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.0)
                .collect(),
            header_read_timeout: self.positive(
                s.header_read_timeout.map(|d| d.0),
                Duration::from_secs(10),
                "server.header_read_timeout",
            ),
            handshake_timeout: self.positive(
                s.handshake_timeout.map(|d| d.0),
                Duration::from_secs(10),
                "server.handshake_timeout",
            ),
            max_connections: count(self, s.max_connections, 10_000, "server.max_connections"),
            max_concurrent_streams: count(
                self,
                s.max_concurrent_streams.map(|v| v as usize),
                100,
                "server.max_concurrent_streams",
            ) as u32,
            rate_limit_max_keys: count(
                self,
                s.rate_limit_max_keys,
                100_000,
                "server.rate_limit_max_keys",
            ),
            client_ip_header: s
                .client_ip_header
                .map_or(http::HeaderName::from_static("x-forwarded-for"), |h| h.0),
            forwarded: s.forwarded.unwrap_or(false),
            redis: {
                let r = s.redis.unwrap_or_default();
                RedisTuning {
                    timeout: self.positive(
                        r.timeout.map(|d| d.0),
                        Duration::from_millis(250),
                        "server.redis.timeout",
                    ),
                    breaker_failures: count(
                        self,
                        r.breaker_failures.map(|v| v as usize),
                        5,
                        "server.redis.breaker_failures",
                    ) as u32,
                    breaker_cooldown: self.positive(
                        r.breaker_cooldown.map(|d| d.0),
                        Duration::from_secs(2),
                        "server.redis.breaker_cooldown",
                    ),
                }
            },
        }
    }

    fn matcher(&mut self, r: &RouteSpec, at: &str) -> RouteMatch {
        let m = &r.matcher;
        let host = m.host.as_ref().and_then(|h| {
            let h = h.to_ascii_lowercase();
            if let Some(rest) = h.strip_prefix("*.") {
                if rest.is_empty() || rest.contains('*') {
                    self.err(
                        format!("{at}.match.host"),
                        format!("`{h}` is not a host pattern like *.example.com"),
                    );
                    return None;
                }
                Some(HostMatch::Suffix(format!(".{rest}")))
            } else if h.is_empty() || h.contains(['*', '/', ' ']) {
                self.err(
                    format!("{at}.match.host"),
                    format!("`{h}` is not a host name"),
                );
                None
            } else {
                Some(HostMatch::Exact(h))
            }
        });
        let path = m.path.as_ref().and_then(|p| {
            let given: Vec<(&str, &String)> = [
                ("exact", &p.exact),
                ("prefix", &p.prefix),
                ("glob", &p.glob),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
            .collect();
            let [(kind, value)] = given[..] else {
                self.err(
                    format!("{at}.match.path"),
                    "give exactly one of exact, prefix or glob",
                );
                return None;
            };
            if !value.starts_with('/') {
                self.err(
                    format!("{at}.match.path.{kind}"),
                    format!("`{value}` must start with `/`"),
                );
                return None;
            }
            match kind {
                "exact" => Some(PathMatch::Exact(value.clone())),
                "prefix" => Some(PathMatch::Prefix(value.trim_end_matches('/').to_owned())),
                _ => match PathMatch::glob(value) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        self.err(format!("{at}.match.path.glob"), e);
                        None
                    }
                },
            }
        });
        RouteMatch {
            host,
            path,
            methods: m
                .methods
                .as_ref()
                .map(|ms| ms.iter().map(|m| m.0.clone()).collect()),
        }
    }

    fn limits(
        &mut self,
        base: &LimitsSpec,
        over: Option<&LimitsSpec>,
        field: &str,
    ) -> RequestLimits {
        let builtin = RequestLimits {
            max_body: 1024 * 1024,
            max_url: 8 * 1024,
            max_headers: 100,
            max_header_bytes: 8 * 1024,
            max_total_header_bytes: 32 * 1024,
            methods: DEFAULT_METHODS.to_vec(),
            content_types: Vec::new(),
            mode: Mode::Enforce,
        };
        let first = self.limits_over(&builtin, Some(base), field);
        self.limits_over(&first, over, field)
    }

    fn limits_over(
        &mut self,
        base: &RequestLimits,
        over: Option<&LimitsSpec>,
        field: &str,
    ) -> RequestLimits {
        let Some(o) = over else {
            return RequestLimits {
                methods: base.methods.clone(),
                content_types: base.content_types.clone(),
                ..*base
            };
        };
        let size = |c: &mut Self, v: Option<u64>, d: usize, name: &str| -> usize {
            match v {
                Some(0) => {
                    c.err(format!("{field}.{name}"), "must be greater than zero");
                    d
                }
                Some(v) => usize::try_from(v).unwrap_or(usize::MAX),
                None => d,
            }
        };
        let content_types = match &o.content_types {
            None => base.content_types.clone(),
            Some(list) => {
                let mut out = Vec::new();
                for (i, t) in list.iter().enumerate() {
                    let t = t.trim().to_ascii_lowercase();
                    if t.split('/').count() != 2
                        || t.contains([';', ' '])
                        || t.starts_with('/')
                        || t.ends_with('/')
                    {
                        self.err(
                            format!("{field}.content_types[{i}]"),
                            format!("`{t}` is not a media type like application/json"),
                        );
                    }
                    out.push(t);
                }
                out
            }
        };
        let methods = match &o.methods {
            Some(m) if m.is_empty() => {
                self.err(
                    format!("{field}.methods"),
                    "an empty list would refuse every request; use a deny route instead",
                );
                base.methods.clone()
            }
            Some(m) => m.iter().map(|m| m.0.clone()).collect(),
            None => base.methods.clone(),
        };
        RequestLimits {
            max_body: match o.max_body {
                Some(s) => s.0,
                None => base.max_body,
            },
            max_url: size(self, o.max_url.map(|s| s.0), base.max_url, "max_url"),
            max_headers: size(
                self,
                o.max_headers.map(|v| v as u64),
                base.max_headers,
                "max_headers",
            ),
            max_header_bytes: size(
                self,
                o.max_header_bytes.map(|s| s.0),
                base.max_header_bytes,
                "max_header_bytes",
            ),
            max_total_header_bytes: size(
                self,
                o.max_total_header_bytes.map(|s| s.0),
                base.max_total_header_bytes,
                "max_total_header_bytes",
            ),
            methods,
            content_types,
            mode: o.mode.unwrap_or(base.mode),
        }
    }

    fn header_rules(
        &mut self,
        base: Option<&HeaderRulesSpec>,
        over: Option<&HeaderRulesSpec>,
    ) -> HeaderRules {
        let mut set: Vec<(http::HeaderName, HeaderValue)> = Vec::new();
        let mut remove = Vec::new();
        for rules in [base, over].into_iter().flatten() {
            for (k, v) in &rules.set {
                set.retain(|(n, _)| n != k.0);
                set.push((k.0.clone(), v.0.clone()));
            }
            for r in &rules.remove {
                if !remove.contains(&r.0) {
                    remove.push(r.0.clone());
                }
            }
        }
        HeaderRules { set, remove }
    }

    fn cors(&mut self, c: &CorsSpec, field: &str) -> Option<Cors> {
        let mut origins = Vec::new();
        for (i, o) in c.allow_origins.iter().enumerate() {
            let at = format!("{field}.allow_origins[{i}]");
            if o == "*" {
                if c.allow_credentials {
                    self.err(at, "`*` cannot be combined with allow_credentials: true");
                    continue;
                }
                origins.push(OriginPattern::Any);
                continue;
            }
            let Some((scheme, host)) = o.split_once("://") else {
                self.err(
                    at,
                    format!("`{o}` is not an origin like https://app.example.com"),
                );
                continue;
            };
            if host.is_empty() || host.contains('/') || !(scheme == "https" || scheme == "http") {
                self.err(at, format!("`{o}` is not an origin like https://app.example.com (no path, no trailing slash)"));
                continue;
            }
            if let Some(rest) = host.strip_prefix("*.") {
                if rest.contains('*') || !rest.contains('.') {
                    self.err(at, format!("`{o}` may use `*` only as its whole first label, over a domain like example.com"));
                    continue;
                }
                origins.push(OriginPattern::Subdomain {
                    scheme: scheme.to_owned(),
                    suffix: format!(".{}", rest.to_ascii_lowercase()),
                });
            } else if host.contains('*') {
                self.err(
                    at,
                    format!("`{o}` may use `*` only as its whole first label"),
                );
            } else {
                origins.push(OriginPattern::Exact(o.to_ascii_lowercase()));
            }
        }
        let methods: Vec<Method> = c
            .allow_methods
            .as_ref()
            .map(|m| m.iter().map(|m| m.0.clone()).collect())
            .unwrap_or_else(|| vec![Method::GET, Method::HEAD, Method::POST]);
        let headers: Vec<http::HeaderName> = c
            .allow_headers
            .as_ref()
            .map(|h| h.iter().map(|h| h.0.clone()).collect())
            .unwrap_or_default();
        let join = |items: Vec<&str>| HeaderValue::from_str(&items.join(", ")).ok();
        let max_age = c.max_age.map(|d| d.0).unwrap_or(Duration::from_secs(600));
        Some(Cors {
            origins,
            allow_methods_value: join(methods.iter().map(Method::as_str).collect())
                .expect("methods are tokens"),
            allow_headers_value: if headers.is_empty() {
                None
            } else {
                join(headers.iter().map(|h| h.as_str()).collect())
            },
            expose_headers_value: c
                .expose_headers
                .as_ref()
                .filter(|h| !h.is_empty())
                .and_then(|h| join(h.iter().map(|h| h.0.as_str()).collect())),
            allow_methods: methods,
            allow_headers: headers,
            allow_credentials: c.allow_credentials,
            max_age_value: HeaderValue::from(max_age.as_secs()),
        })
    }

    fn rate_limit(
        &mut self,
        rl: &RateLimitSpec,
        field: &str,
        seen: &mut HashMap<String, (RateLimitSpec, String)>,
    ) -> Option<RateLimit> {
        let mut ok = true;
        if rl.name.is_empty()
            || !rl
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            self.err(
                format!("{field}.name"),
                "rate limit names use letters, digits, `-` and `_` only",
            );
            ok = false;
        }
        if rl.limit == 0 {
            self.err(
                format!("{field}.limit"),
                "must be at least 1 (use a deny route to refuse everything)",
            );
            ok = false;
        }
        if rl.period.0 < Duration::from_secs(1) {
            self.err(format!("{field}.period"), "must be at least 1s");
            ok = false;
        }
        let key = match rl.key.as_str() {
            "ip" => RateKey::Ip,
            "ip_user_agent" => RateKey::IpUserAgent,
            "route" => RateKey::Route,
            "subject" => RateKey::Subject,
            "tenant" => RateKey::Tenant,
            "api_key" => RateKey::ApiKey,
            other => match other
                .strip_prefix("header:")
                .map(|h| http::HeaderName::from_bytes(h.trim().as_bytes()))
            {
                Some(Ok(h)) => RateKey::Header(h),
                _ => {
                    self.err(
                        format!("{field}.key"),
                        format!("`{other}` is not ip, ip_user_agent, route, header:<Name>, subject, tenant or api_key"),
                    );
                    return None;
                }
            },
        };
        let fallback = match (rl.on_redis_error, rl.local_share) {
            (Some(OnRedisError::Deny), Some(_)) => {
                self.err(
                    format!("{field}.local_share"),
                    "applies only with on_redis_error: local",
                );
                ok = false;
                Fallback::Deny
            }
            (Some(OnRedisError::Deny), None) => Fallback::Deny,
            (_, share) => {
                let share = share.unwrap_or(1.0);
                if !(share > 0.0 && share <= 1.0) {
                    self.err(
                        format!("{field}.local_share"),
                        "must be more than 0 and at most 1",
                    );
                    ok = false;
                }
                Fallback::Local { share }
            }
        };
        let here = format!("{}: {field}", self.file.display());
        match seen.get(&rl.name) {
            Some((prev, at))
                if prev.key != rl.key
                    || prev.limit != rl.limit
                    || prev.period != rl.period
                    || prev.mode != rl.mode
                    || prev.on_redis_error != rl.on_redis_error
                    || prev.local_share != rl.local_share =>
            {
                self.err(field, format!("rate limit `{}` is also defined at {at} with other settings; one name is one counter", rl.name));
                ok = false;
            }
            Some(_) => {}
            None => {
                seen.insert(rl.name.clone(), (rl.clone(), here));
            }
        }
        ok.then(|| RateLimit {
            name: Arc::from(rl.name.as_str()),
            key,
            limit: rl.limit,
            period: rl.period.0,
            mode: rl.mode,
            fallback,
            policy_item: format!("\"{}\";q={};w={}", rl.name, rl.limit, rl.period.0.as_secs()),
        })
    }
}

fn clone_cors(c: &Cors) -> Cors {
    Cors {
        origins: c.origins.clone(),
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        allow_methods_value: c.allow_methods_value.clone(),
        allow_headers_value: c.allow_headers_value.clone(),
        expose_headers_value: c.expose_headers_value.clone(),
        allow_credentials: c.allow_credentials,
        max_age_value: c.max_age_value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<Policy, String> {
        compile_sources(&[(PathBuf::from("p.yaml"), yaml.to_owned())]).map_err(|e| e.to_string())
    }

    const MIN: &str = "version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: all\n";

    #[test]
    fn minimal_policy_gets_safe_defaults() {
        let p = compile(MIN).unwrap();
        let r = &p.routes[0];
        assert_eq!(r.limits.max_body, 1024 * 1024);
        assert!(!r.limits.methods.contains(&Method::TRACE));
        assert_eq!(p.server.header_read_timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_field_is_an_error_with_position() {
        let e = compile("version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: all\n    limits:\n      max_bdy: 1MiB\n").unwrap_err();
        assert!(
            e.starts_with("p.yaml:6:7: routes[0].limits: unknown field `max_bdy`"),
            "{e}"
        );
    }

    #[test]
    fn bad_size_names_the_field_and_position() {
        let e = compile("version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: all\n    limits:\n      max_body: 1 potato\n").unwrap_err();
        assert!(
            e.starts_with("p.yaml:6:17: routes[0].limits.max_body: unknown size unit `potato`"),
            "{e}"
        );
    }

    #[test]
    fn every_semantic_error_is_reported() {
        let e = compile(
            "version: 2\nupstream: {url: 'ftp://x'}\nroutes:\n  - name: a\n    rate_limits: [{name: x, key: bogus, limit: 1, period: 1m}]\n  - name: a\n    deny: {status: 500}\n",
        )
        .unwrap_err();
        for want in [
            "p.yaml: version: unsupported policy version 2",
            "p.yaml: upstream.url: scheme `ftp` is not http or https",
            "p.yaml: routes[0].rate_limits[0].key: `bogus` is not ip",
            "p.yaml: routes[1].name: duplicate route name `a`",
            "p.yaml: routes[1].deny.status: expected a 4xx status, got 500",
        ] {
            assert!(e.contains(want), "missing `{want}` in:\n{e}");
        }
    }

    #[test]
    fn same_rate_limit_name_with_other_settings_is_refused() {
        let e = compile(
            "version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: a\n    rate_limits: [{name: x, key: ip, limit: 1, period: 1m}]\n  - name: b\n    rate_limits: [{name: x, key: ip, limit: 2, period: 1m}]\n",
        )
        .unwrap_err();
        assert!(e.contains("routes[1].rate_limits[0]: rate limit `x` is also defined at p.yaml: routes[0].rate_limits[0]"), "{e}");
    }

    #[test]
    fn route_limits_override_defaults_field_by_field() {
        let p = compile(
            "version: 1\nupstream: {url: http://127.0.0.1:9}\ndefaults:\n  limits: {max_body: 10KiB, max_url: 100}\nroutes:\n  - name: a\n    limits: {max_body: 20}\n",
        )
        .unwrap();
        assert_eq!(p.routes[0].limits.max_body, 20);
        assert_eq!(p.routes[0].limits.max_url, 100);
    }

    #[test]
    fn cors_wildcard_with_credentials_is_refused() {
        let e = compile(
            "version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: a\n    cors: {allow_origins: ['*'], allow_credentials: true}\n",
        )
        .unwrap_err();
        assert!(
            e.contains("routes[0].cors.allow_origins[0]: `*` cannot be combined"),
            "{e}"
        );
    }

    #[test]
    fn origin_patterns_match_one_label() {
        let p = OriginPattern::Subdomain {
            scheme: "https".into(),
            suffix: ".example.com".into(),
        };
        assert!(p.matches("https://app.example.com"));
        assert!(!p.matches("https://a.b.example.com"));
        assert!(!p.matches("http://app.example.com"));
        assert!(!p.matches("https://example.com"));
        assert!(!p.matches("https://evil.com/.example.com"));
    }
}
