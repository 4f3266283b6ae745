//! Compiling issuers: verification rules, JWKS sources and HMAC secrets.

use super::*;

impl Compiler {
    /// Files besides the policy files whose change must reload the policy.
    pub(in crate::policy) fn identity(
        &mut self,
        spec: Option<IdentitySpec>,
        watched: &mut Vec<PathBuf>,
    ) -> Identity {
        let Some(spec) = spec else {
            return Identity {
                cache_max_entries: 100_000,
                ..Identity::default()
            };
        };
        let mut issuers = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, is) in spec.issuers.iter().enumerate() {
            let at = format!("identity.issuers[{i}]");
            if !is_name(&is.name) {
                self.err(
                    format!("{at}.name"),
                    "issuer names use letters, digits, `-` and `_` only",
                );
            }
            if let Some(first) = seen.insert(is.name.clone(), i) {
                self.err(
                    format!("{at}.name"),
                    format!(
                        "duplicate issuer name `{}` (first at identity.issuers[{first}])",
                        is.name
                    ),
                );
            }
            if let Some(issuer) = self.issuer(is, &at, watched) {
                issuers.push(Arc::new(issuer));
            }
        }
        let api_keys = spec
            .api_keys
            .as_ref()
            .and_then(|a| self.api_keys(a, watched));
        let h = spec.headers.unwrap_or_default();
        let d = IdentityHeaders::default();
        let headers = IdentityHeaders {
            subject: h.subject.map_or(d.subject, |n| n.0),
            tenant: h.tenant.map_or(d.tenant, |n| n.0),
            roles: h.roles.map_or(d.roles, |n| n.0),
            method: h.method.map_or(d.method, |n| n.0),
        };
        let names = headers.all();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                self.err(
                    "identity.headers",
                    format!("`{n}` carries two identity fields"),
                );
            }
            if [
                http::header::AUTHORIZATION,
                http::header::HOST,
                http::header::COOKIE,
            ]
            .contains(n)
            {
                self.err(
                    "identity.headers",
                    format!("`{n}` cannot carry an identity field"),
                );
            }
        }
        Identity {
            issuers,
            api_keys,
            headers,
            cache_max_entries: spec.cache.and_then(|c| c.max_entries).unwrap_or(100_000),
        }
    }

    pub(super) fn issuer(
        &mut self,
        is: &IssuerSpec,
        at: &str,
        watched: &mut Vec<PathBuf>,
    ) -> Option<Issuer> {
        let mut ok = true;
        if is.issuer.is_empty() {
            self.err(format!("{at}.issuer"), "must not be empty");
            ok = false;
        }
        if is.audiences.is_empty() || is.audiences.iter().any(String::is_empty) {
            self.err(
                format!("{at}.audiences"),
                "list at least one non-empty audience: a token for another service must not pass",
            );
            ok = false;
        }
        let mut algorithms = Vec::new();
        for (j, a) in is.algorithms.iter().enumerate() {
            if a.eq_ignore_ascii_case("none") {
                self.err(
                    format!("{at}.algorithms[{j}]"),
                    "`none` means an unsigned token: never accepted",
                );
                ok = false;
                continue;
            }
            match parse_algorithm(a) {
                Some(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Some(_) => {}
                None => {
                    self.err(
                        format!("{at}.algorithms[{j}]"),
                        format!("`{a}` is not one of EdDSA, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, HS256, HS384, HS512"),
                    );
                    ok = false;
                }
            }
        }
        if is.algorithms.is_empty() {
            self.err(format!("{at}.algorithms"), "list the algorithms to accept");
            ok = false;
        }
        let hmac = algorithms.iter().any(|a| is_hmac(*a));
        if hmac && algorithms.iter().any(|a| !is_hmac(*a)) {
            self.err(
                format!("{at}.algorithms"),
                "HMAC and public-key algorithms cannot share an issuer (a public key must never verify as an HMAC secret)",
            );
            ok = false;
        }
        let keys = match (&is.jwks, &is.hmac) {
            (Some(_), Some(_)) | (None, None) => {
                self.err(at, "give exactly one of `jwks` and `hmac`");
                None
            }
            (Some(_), None) if hmac => {
                self.err(
                    format!("{at}.algorithms"),
                    "an HMAC algorithm needs an `hmac` secret source, not `jwks`",
                );
                None
            }
            (None, Some(_)) if !hmac => {
                self.err(
                    format!("{at}.hmac"),
                    "an `hmac` secret verifies only HS256, HS384 or HS512",
                );
                None
            }
            (Some(j), None) => self.jwks(j, &format!("{at}.jwks")).map(KeySource::Jwks),
            (None, Some(h)) => self
                .hmac_secret(h, &format!("{at}.hmac"), &algorithms, watched)
                .map(KeySource::Hmac),
        };
        let leeway = is.leeway.map_or(Duration::from_secs(30), |d| d.0);
        if leeway > MAX_LEEWAY {
            self.err(format!("{at}.leeway"), "at most 5m");
            ok = false;
        }
        let max_token_bytes = match is.max_token_size {
            Some(s) if s.0 < 64 || s.0 > 64 * 1024 => {
                self.err(format!("{at}.max_token_size"), "between 64 and 64KiB");
                ok = false;
                0
            }
            Some(s) => s.0 as usize,
            None => 8 * 1024,
        };
        let c = is.claims.as_ref();
        let d = ClaimNames::default();
        let pick = |v: Option<&String>, d: String| v.cloned().unwrap_or(d);
        let claims = ClaimNames {
            subject: pick(c.and_then(|c| c.subject.as_ref()), d.subject),
            tenant: pick(c.and_then(|c| c.tenant.as_ref()), d.tenant),
            roles: pick(c.and_then(|c| c.roles.as_ref()), d.roles),
            scopes: pick(c.and_then(|c| c.scopes.as_ref()), d.scopes),
        };
        let keys = keys?;
        if !ok {
            return None;
        }
        let rules = Rules {
            name: Arc::from(is.name.as_str()),
            issuer: is.issuer.clone(),
            audiences: is.audiences.clone(),
            algorithms,
            leeway: leeway.as_secs(),
            required_claims: is.required_claims.clone().unwrap_or_default(),
            max_token_bytes,
            typ: is.typ.clone(),
            claims,
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        rules.hash(&mut h);
        match &keys {
            KeySource::Jwks(j) => j.hash(&mut h),
            KeySource::Hmac(set) => (Arc::as_ptr(set) as usize).hash(&mut h),
        }
        Some(Issuer {
            rules,
            keys,
            fingerprint: h.finish(),
        })
    }

    pub(super) fn jwks(&mut self, j: &JwksSpec, at: &str) -> Option<JwksSource> {
        let location = match (&j.url, &j.file) {
            (Some(url), None) => {
                let Ok(uri) = url.parse::<http::Uri>() else {
                    self.err(format!("{at}.url"), format!("`{url}` is not a URL"));
                    return None;
                };
                let loopback = matches!(
                    uri.host(),
                    Some("localhost") | Some("127.0.0.1") | Some("[::1]")
                );
                match uri.scheme_str() {
                    Some("https") => {}
                    Some("http") if loopback => {}
                    _ => {
                        self.err(
                            format!("{at}.url"),
                            "must be https:// (http:// only to a loopback address): keys fetched in clear text could be swapped",
                        );
                        return None;
                    }
                }
                JwksLocation::Url(url.clone())
            }
            (None, Some(file)) => {
                let path = resolve(&self.file, file);
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        // Not an input of the policy: the key store reloads this file itself.
                        if let Err(e) = KeySet::from_jwks(&bytes) {
                            self.err(format!("{at}.file"), format!("{}: {e}", path.display()));
                            return None;
                        }
                    }
                    Err(e) => {
                        self.err(
                            format!("{at}.file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        return None;
                    }
                }
                JwksLocation::File(path)
            }
            _ => {
                self.err(at, "give exactly one of `url` and `file`");
                return None;
            }
        };
        let ca_file = j.ca_file.as_ref().map(|f| resolve(&self.file, f));
        if let Some(ca) = &ca_file {
            if let Err(e) = std::fs::metadata(ca) {
                self.err(
                    format!("{at}.ca_file"),
                    format!("cannot read {}: {e}", ca.display()),
                );
            }
        }
        let refresh = self.positive(
            j.refresh.map(|d| d.0),
            Duration::from_secs(300),
            &format!("{at}.refresh"),
        );
        let min_refetch = j.min_refetch.map_or(Duration::from_secs(30), |d| d.0);
        let timeout = self.positive(
            j.timeout.map(|d| d.0),
            Duration::from_secs(5),
            &format!("{at}.timeout"),
        );
        let id = format!(
            "{location:?}|{}|{}|{}|{ca_file:?}",
            refresh.as_millis(),
            min_refetch.as_millis(),
            timeout.as_millis()
        );
        Some(JwksSource {
            id: Arc::from(id.as_str()),
            location,
            refresh,
            min_refetch,
            timeout,
            ca_file,
        })
    }

    pub(super) fn hmac_secret(
        &mut self,
        h: &crate::policy::spec::HmacSpec,
        at: &str,
        algorithms: &[jsonwebtoken::Algorithm],
        watched: &mut Vec<PathBuf>,
    ) -> Option<Arc<KeySet>> {
        if h.secret.is_some() {
            self.err(
                format!("{at}.secret"),
                "a secret never goes in the policy text (it would be in every copy and diff of it); use secret_file or secret_env",
            );
            return None;
        }
        let secret = match (&h.secret_file, &h.secret_env) {
            (Some(f), None) => {
                let path = resolve(&self.file, f);
                match std::fs::read(&path) {
                    Ok(b) => {
                        self.inputs.update(path.as_os_str().as_encoded_bytes());
                        self.inputs.update(&b);
                        watched.push(path);
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
        match KeySet::from_hmac_secret(&secret, algorithms) {
            Ok(set) => Some(Arc::new(set)),
            Err(e) => {
                self.err(at, e.to_string());
                None
            }
        }
    }
}
