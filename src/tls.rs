//! TLS: load the certificate chain and key, build the rustls `ServerConfig`, and swap the
//! certificate when the files change (cert-manager rewrites them in place). A bad new
//! certificate keeps the last good one serving.
//!
//! Only TLS 1.2 and 1.3 with the ring provider's AEAD suites (AES-GCM, ChaCha20-Poly1305, ECDHE
//! key exchange); ALPN offers h2 and http/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate file {}: {source}", path.display())]
    CertFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("TLS certificate file {} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("cannot read TLS key file {}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("TLS key {} does not fit certificate {}: {source}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("cannot read the certificate's validity: {0}")]
    Validity(#[source] yasna::ASN1Error),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the certificate comes from: files (reloadable) or memory (the demo's ephemeral one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Reads and checks a certificate chain and its key from PEM files.
pub fn load_certified_key(paths: &CertPaths) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.cert)
        .map_err(|source| TlsError::CertFile {
            path: paths.cert.clone(),
            source,
        })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::CertFile {
            path: paths.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(paths.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|source| TlsError::KeyFile {
        path: paths.key.clone(),
        source,
    })?;
    certified_from_der(chain, key, &paths.cert, &paths.key)
}

/// Builds a `CertifiedKey` from PEM text held in memory.
pub fn certified_from_pem(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let mem = Path::new("<memory>");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::CertFile {
            path: mem.into(),
            source,
        })?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| TlsError::KeyFile {
            path: mem.into(),
            source,
        })?;
    certified_from_der(chain, key, mem, mem)
}

fn certified_from_der(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert: &Path,
    keyp: &Path,
) -> Result<CertifiedKey, TlsError> {
    CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: keyp.to_owned(),
        source,
    })
}

/// Holds the current certificate; rustls asks it on every handshake, so a swap applies to the
/// next handshake while open connections keep theirs.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    paths: Option<CertPaths>,
}

impl CertStore {
    pub fn new(key: CertifiedKey, paths: Option<CertPaths>) -> Arc<CertStore> {
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(key),
            paths,
        })
    }

    /// The certificate serving now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    pub fn paths(&self) -> Option<&CertPaths> {
        self.paths.as_ref()
    }

    /// Re-reads the files. On error the current certificate stays. Blocking: reload task only.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(paths) = &self.paths else {
            return Ok(false);
        };
        let key = load_certified_key(paths)?;
        if key.cert == self.current.load().cert {
            return Ok(false);
        }
        self.current.store(Arc::new(key));
        Ok(true)
    }

    /// The `notAfter` of the certificate serving now, as unix seconds.
    pub fn not_after(&self) -> Result<i64, TlsError> {
        let current = self.current.load();
        let leaf = current
            .end_entity_cert()
            .map_err(|_| TlsError::NoCertificate(PathBuf::from("<current>")))?;
        not_after(leaf)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The server configuration: TLS 1.2/1.3, ALPN h2 then http/1.1, certificate from `store` (one
/// `CertStore`, or `sni::Certificates` choosing among several).
pub fn server_config(
    store: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Days the demo's self-signed certificate is valid: TLS scanners flag serving certificates valid
/// for more than 398 days (rcgen's default runs to the year 4096).
pub const SELF_SIGNED_DAYS: i64 = 90;

/// A fresh self-signed certificate for `localhost`/127.0.0.1, as PEM `(cert, key)`, valid from five
/// minutes ago for [`SELF_SIGNED_DAYS`]. Nothing is written to disk.
pub fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("generating an ECDSA key cannot fail");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("valid names");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(SELF_SIGNED_DAYS);
    let cert = params
        .self_signed(&key)
        .expect("self-signing with a fresh key cannot fail");
    (cert.pem(), key.serialize_pem())
}

/// The serving certificate's `notAfter` as unix seconds, read from the leaf (first) certificate.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, TlsError> {
    read_not_after(cert.as_ref())
        .map(|t| t.unix_timestamp())
        .map_err(TlsError::Validity)
}

/// Walks the DER of an X.509 certificate (RFC 5280 §4.1) to `tbsCertificate.validity.notAfter`;
/// everything else is skipped unread.
fn read_not_after(der: &[u8]) -> Result<time::OffsetDateTime, yasna::ASN1Error> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|cert| {
            let not_after = cert.next().read_sequence(|tbs| {
                // version [0] EXPLICIT, absent in v1 certificates
                tbs.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_i64()))?;
                tbs.next().read_der()?; // serialNumber
                tbs.next().read_der()?; // signature
                tbs.next().read_der()?; // issuer
                let not_after = tbs.next().read_sequence(|validity| {
                    validity.next().read_der()?; // notBefore
                    let r = validity.next();
                    // UTCTime through 2049, GeneralizedTime from 2050 on (RFC 5280 §4.1.2.5)
                    if r.lookahead_tag()? == yasna::tags::TAG_UTCTIME {
                        Ok(*r.read_utctime()?.datetime())
                    } else {
                        Ok(*r.read_generalized_time()?.datetime())
                    }
                })?;
                // subject, subjectPublicKeyInfo, unique ids, extensions
                while tbs.read_optional(|r| r.read_der())?.is_some() {}
                Ok(not_after)
            })?;
            cert.next().read_der()?; // signatureAlgorithm
            cert.next().read_der()?; // signatureValue
            Ok(not_after)
        })
    })
}

/// How long the development CA made by `ward certs dev` is valid.
pub const DEV_CA_DAYS: i64 = 730;
/// How long its leaf is valid (under the 398 days browsers accept).
pub const DEV_LEAF_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("{} already exists; not overwriting TLS material (choose another --out)", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--host {0:?}: expected a DNS name (optionally `*.` first) or an IP address")]
    BadHost(String),
    #[error("cannot make the development certificates")]
    Generate(#[from] rcgen::Error),
}

/// The files `write_dev_pki` made: a CA (to trust in a browser or pass to curl) and a leaf for
/// `ward proxy --tls-cert/--tls-key`.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub names: Vec<String>,
}

/// Writes a development CA and a leaf signed by it for localhost, 127.0.0.1, ::1 and `hosts` into
/// `out`: `ca.crt`, `ca.key`, `tls.crt`, `tls.key` (the names of a Kubernetes TLS Secret). Keys are
/// mode 0600 and nothing is overwritten: if any of the four exists, nothing is written.
///
/// The CA carries name constraints for exactly these names, so its key, if it leaks from a
/// laptop, cannot mint a certificate that a client would accept for any other host.
pub fn write_dev_pki(out: &Path, hosts: &[String]) -> Result<DevPki, DevCertError> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hosts {
        let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
        if !valid_host(&h) {
            return Err(DevCertError::BadHost(h));
        }
        if !names.contains(&h) {
            names.push(h);
        }
    }
    let pki = DevPki {
        ca_cert: out.join("ca.crt"),
        ca_key: out.join("ca.key"),
        cert: out.join("tls.crt"),
        key: out.join("tls.key"),
        names,
    };
    for p in [&pki.ca_cert, &pki.ca_key, &pki.cert, &pki.key] {
        if p.symlink_metadata().is_ok() {
            return Err(DevCertError::Exists(p.clone()));
        }
    }

    let made = make_dev_pki(&pki.names)?;
    create_private_dir(out)?;
    write_new(&pki.ca_key, made.ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&pki.ca_cert, made.ca_cert.pem().as_bytes(), 0o644)?;
    write_new(&pki.key, made.leaf_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&pki.cert, made.leaf_cert.pem().as_bytes(), 0o644)?;
    Ok(pki)
}

struct DevMade {
    ca_key: rcgen::KeyPair,
    ca_cert: rcgen::Certificate,
    leaf_key: rcgen::KeyPair,
    leaf_cert: rcgen::Certificate,
}

/// The CA, name-constrained to `names`, and a leaf for `names` (the first is its common name).
fn make_dev_pki(names: &[String]) -> Result<DevMade, rcgen::Error> {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "ward development CA");
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "ward (development only)");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(
                    ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                )),
                Err(_) => rcgen::GeneralSubtree::DnsName(n.trim_start_matches("*.").to_owned()),
            })
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    ca.not_before = now - time::Duration::minutes(5);
    ca.not_after = now + time::Duration::days(DEV_CA_DAYS);
    let ca_cert = ca.self_signed(&ca_key)?;

    let leaf_key = rcgen::KeyPair::generate()?;
    let mut leaf = rcgen::CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, names[0].as_str());
    leaf.is_ca = rcgen::IsCa::ExplicitNoCa;
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - time::Duration::minutes(5);
    leaf.not_after = now + time::Duration::days(DEV_LEAF_DAYS);
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;

    Ok(DevMade {
        ca_key,
        ca_cert,
        leaf_key,
        leaf_cert,
    })
}

/// A DNS name of letters, digits and hyphens (a leading `*.` allowed), or an IP address.
fn valid_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn create_private_dir(dir: &Path) -> Result<(), DevCertError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DevCertError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Creates `path` with `mode`; fails if it exists (no overwrite, no following a planted symlink).
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), DevCertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| DevCertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                DevCertError::Exists(path.to_owned())
            } else {
                err(e)
            }
        })?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_reads_utctime_and_generalized_time() {
        let key = rcgen::KeyPair::generate().unwrap();
        for (y, m, d) in [
            (2031, time::Month::June, 1),
            (2051, time::Month::January, 2),
        ] {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            let at = time::Date::from_calendar_date(y, m, d)
                .unwrap()
                .midnight()
                .assume_utc();
            params.not_after = at;
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(not_after(cert.der()).unwrap(), at.unix_timestamp());
        }
        assert!(not_after(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])).is_err());
    }

    /// Found by the TLS scan (.ci/tls-scan: testssl's cert_validityPeriod, HIGH): the demo's
    /// certificate ran from 1975 to 4096.
    #[test]
    fn the_self_signed_certificate_is_valid_for_days_not_centuries() {
        let (pem, _) = self_signed();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let left = not_after(&der).unwrap() - time::OffsetDateTime::now_utc().unix_timestamp();
        let days = SELF_SIGNED_DAYS * 86_400;
        assert!(left > days - 60 && left <= days, "{left} s left");
    }

    #[test]
    fn hosts_are_dns_names_or_ip_addresses() {
        for ok in ["api.test", "*.dev.example", "10.0.0.1", "::1", "a-b.c"] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in ["", "bad name", "-a.test", "a..b", "*.", "a.*.b", "x/y"] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn the_dev_ca_cannot_vouch_for_names_outside_its_constraints() {
        use rustls::client::danger::ServerCertVerifier;
        let names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "api.test".into()];
        let made = make_dev_pki(&names).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(made.ca_cert.der().clone()).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider())
                .build()
                .unwrap();
        let now = rustls_pki_types::UnixTime::now();
        let verify = |cert: &CertificateDer<'_>, name: &str| {
            let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
            verifier.verify_server_cert(cert, &[], &name, &[], now)
        };
        assert!(verify(made.leaf_cert.der(), "api.test").is_ok());
        assert!(verify(made.leaf_cert.der(), "127.0.0.1").is_ok());
        assert!(verify(made.leaf_cert.der(), "other.test").is_err());

        // A leaf the CA key signs for another name is refused by the CA's name constraints.
        let key = rcgen::KeyPair::generate().unwrap();
        let evil = rcgen::CertificateParams::new(vec!["bank.example".to_owned()])
            .unwrap()
            .signed_by(&key, &made.ca_cert, &made.ca_key)
            .unwrap();
        let refused = verify(evil.der(), "bank.example").unwrap_err();
        assert!(
            format!("{refused:?}").contains("NameConstraint"),
            "{refused:?}"
        );
    }
}
