//! Compiling routes: matchers, request limits, header rules, CORS and rate limits.

use super::*;

impl Compiler {
    pub(in crate::policy) fn matcher(&mut self, r: &RouteSpec, at: &str) -> RouteMatch {
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

    pub(in crate::policy) fn limits(
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

    pub(in crate::policy) fn limits_over(
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

    pub(in crate::policy) fn header_rules(
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

    pub(in crate::policy) fn cors(&mut self, c: &CorsSpec, field: &str) -> Option<Cors> {
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

    pub(in crate::policy) fn rate_limit(
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
            allowed: Default::default(),
        })
    }
}

pub(super) fn clone_cors(c: &Cors) -> Cors {
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
