//! SNI: which certificate a TLS handshake gets. An edge listener serves several hosts, each with
//! its own certificate (`--tls-sni NAMES=CERT,KEY`, repeatable); the client's server name picks
//! one, exact names before `*.` wildcards, and a handshake without a server name or with a name
//! no entry covers gets the default certificate (`--tls-cert/--tls-key`).
//!
//! Each certificate is a [`CertStore`] of its own: reloaded from its files when they change,
//! keeping the last good one when the new files are bad. This module only chooses; loading,
//! checking and swapping stay in [`crate::tls`]. It never refuses a handshake: choosing a
//! certificate is not access control (routes and their hosts are, in the policy).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::{CertPaths, CertStore, TlsError};

/// One `--tls-sni` entry as written: the names it serves and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniSpec {
    pub names: Vec<String>,
    pub paths: CertPaths,
}

/// Parses `NAMES=CERT,KEY`: NAMES is a comma-separated list of DNS names, each optionally
/// starting with `*.` (one label, as in certificates); CERT and KEY are PEM files.
pub fn parse_spec(s: &str) -> Result<SniSpec, String> {
    const SHAPE: &str =
        "expected NAMES=CERT,KEY, e.g. api.example.com,*.api.example.com=/tls/api.crt,/tls/api.key";
    let (names, files) = s.split_once('=').ok_or(SHAPE)?;
    let (cert, key) = files.split_once(',').ok_or(SHAPE)?;
    if cert.trim().is_empty() || key.trim().is_empty() || key.contains(',') {
        return Err(SHAPE.into());
    }
    let mut parsed = Vec::new();
    for n in names.split(',') {
        let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
        if !valid_name(&n) {
            return Err(format!(
                "{n:?} is not a DNS name (letters, digits, hyphens; `*.` allowed first)"
            ));
        }
        if !parsed.contains(&n) {
            parsed.push(n);
        }
    }
    Ok(SniSpec {
        names: parsed,
        paths: CertPaths {
            cert: PathBuf::from(cert.trim()),
            key: PathBuf::from(key.trim()),
        },
    })
}

/// A DNS name a client can send as SNI (no IP address: RFC 6066 forbids them there), or a
/// wildcard `*.` followed by at least two labels.
fn valid_name(n: &str) -> bool {
    let (name, wildcard) = match n.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (n, false),
    };
    let labels: Vec<&str> = name.split('.').collect();
    !name.is_empty()
        && name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && (!wildcard || labels.len() >= 2)
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[derive(Debug, thiserror::Error)]
pub enum SniError {
    #[error("--tls-sni: {name} is named by two entries ({} and {})", first.display(), second.display())]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("--tls-sni {names}: {source}")]
    Load {
        names: String,
        #[source]
        source: Box<TlsError>,
    },
}

/// The certificates of one listener and the choice among them.
#[derive(Debug)]
pub struct Certificates {
    default: Arc<CertStore>,
    named: Vec<Arc<CertStore>>,
    /// Exact names, lowercase, to an index into `named`.
    exact: HashMap<String, usize>,
    /// `*.example.com` kept as `example.com`.
    wildcard: HashMap<String, usize>,
}

impl Certificates {
    /// Only the default certificate (no SNI entries).
    pub fn single(default: Arc<CertStore>) -> Arc<Certificates> {
        Arc::new(Certificates {
            default,
            named: Vec::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        })
    }

    /// Loads every entry's files (a start-up error names the entry) behind `default`.
    pub fn load(default: Arc<CertStore>, specs: &[SniSpec]) -> Result<Arc<Certificates>, SniError> {
        let mut named = Vec::new();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut owner: HashMap<String, PathBuf> = HashMap::new();
        for spec in specs {
            let key =
                crate::tls::load_certified_key(&spec.paths).map_err(|source| SniError::Load {
                    names: spec.names.join(","),
                    source: Box::new(source),
                })?;
            let i = named.len();
            named.push(CertStore::new(key, Some(spec.paths.clone())));
            for n in &spec.names {
                if let Some(first) = owner.insert(n.clone(), spec.paths.cert.clone()) {
                    return Err(SniError::Duplicate {
                        name: n.clone(),
                        first,
                        second: spec.paths.cert.clone(),
                    });
                }
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_owned(), i),
                    None => exact.insert(n.clone(), i),
                };
            }
        }
        Ok(Arc::new(Certificates {
            default,
            named,
            exact,
            wildcard,
        }))
    }

    /// Every store: the default first. The reload task walks them all.
    pub fn stores(&self) -> impl Iterator<Item = &Arc<CertStore>> {
        std::iter::once(&self.default).chain(self.named.iter())
    }

    /// The store serving `server_name` (the default when none matches).
    pub fn choose(&self, server_name: Option<&str>) -> &Arc<CertStore> {
        let Some(name) = server_name else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return &self.named[i];
        }
        // A wildcard covers exactly one label: `*.example.com` serves `a.example.com`, not
        // `example.com` nor `a.b.example.com` (RFC 6125 §6.4.3).
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(&i) = self.wildcard.get(parent) {
                return &self.named[i];
            }
        }
        &self.default
    }

    /// The earliest `notAfter` among all certificates serving now (unix seconds): the expiry
    /// gauge shows the one to renew first.
    pub fn earliest_not_after(&self) -> Option<i64> {
        self.stores()
            .filter_map(|s| match s.not_after() {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a serving certificate's expiry");
                    None
                }
            })
            .min()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()).current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_names_then_certificate_and_key() {
        let s = parse_spec("API.example.com, *.pay.example.com.=/tls/a.crt,/tls/a.key").unwrap();
        assert_eq!(s.names, ["api.example.com", "*.pay.example.com"]);
        assert_eq!(s.paths.cert, PathBuf::from("/tls/a.crt"));
        assert_eq!(s.paths.key, PathBuf::from("/tls/a.key"));
        for bad in [
            "api.example.com",
            "api.example.com=/tls/a.crt",
            "api.example.com=/a,/b,/c",
            "=/a,/b",
            "127.0.0.1=/a,/b",
            "*.com=/a,/b",
            "a.*.example.com=/a,/b",
            "bad name=/a,/b",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }
}
