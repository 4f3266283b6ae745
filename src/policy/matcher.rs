//! Route matchers, built once at compile time; `matches` does no allocation.

use http::Method;
use regex::Regex;

#[derive(Debug)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    pub methods: Option<Vec<Method>>,
}

#[derive(Debug)]
pub enum HostMatch {
    /// Lower-case host.
    Exact(String),
    /// `.example.com` for `*.example.com`: at least one more label.
    Suffix(String),
}

#[derive(Debug)]
pub enum PathMatch {
    Exact(String),
    /// Without trailing slash; "" matches everything.
    Prefix(String),
    Glob(Regex),
}

impl RouteMatch {
    pub fn matches(&self, method: &Method, host: Option<&str>, path: &str) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return false;
            }
        }
        if let Some(h) = &self.host {
            let Some(host) = host else { return false };
            if !h.matches(host) {
                return false;
            }
        }
        match &self.path {
            None => true,
            Some(p) => p.matches(path),
        }
    }
}

impl HostMatch {
    /// `host` is as received, possibly with a port and in any case.
    pub fn matches(&self, host: &str) -> bool {
        let host = strip_port(host);
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

/// `example.com:8443` → `example.com`; `[::1]:443` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Glob(re) => re.is_match(path),
        }
    }

    /// `*` matches within one segment, `**` across segments, `?` one character; the rest is literal.
    pub fn glob(pattern: &str) -> Result<PathMatch, String> {
        if !pattern.starts_with('/') {
            return Err(format!("glob `{pattern}` must start with `/`"));
        }
        let mut re = String::from("^");
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    re.push_str(".*");
                }
                '*' => re.push_str("[^/]*"),
                '?' => re.push_str("[^/]"),
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        Regex::new(&re)
            .map(PathMatch::Glob)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_segment_aware() {
        let p = PathMatch::Prefix("/v1/auth".into());
        assert!(p.matches("/v1/auth"));
        assert!(p.matches("/v1/auth/login"));
        assert!(!p.matches("/v1/authz"));
        assert!(PathMatch::Prefix(String::new()).matches("/anything"));
    }

    #[test]
    fn glob_stars_respect_segments() {
        let g = PathMatch::glob("/v1/*/payments/**").unwrap();
        assert!(g.matches("/v1/acme/payments/123/cancel"));
        assert!(!g.matches("/v1/a/b/payments/1"));
        let g = PathMatch::glob("/files/?.txt").unwrap();
        assert!(g.matches("/files/a.txt"));
        assert!(!g.matches("/files/ab.txt"));
        assert!(PathMatch::glob("/a.b").unwrap().matches("/a.b"));
        assert!(!PathMatch::glob("/a.b").unwrap().matches("/axb"));
    }

    #[test]
    fn hosts_match_without_port_and_case() {
        let h = HostMatch::Exact("api.example.com".into());
        assert!(h.matches("API.example.com:8443"));
        let w = HostMatch::Suffix(".example.com".into());
        assert!(w.matches("a.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("evil-example.com"));
        assert_eq!(strip_port("[::1]:443"), "[::1]");
    }
}
