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
#[derive(Debug, Clone)]
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

/// The server configuration: TLS 1.2/1.3, ALPN h2 then http/1.1, certificate from `store`.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A fresh self-signed certificate for `localhost`/127.0.0.1, as PEM `(cert, key)`. Nothing is written to disk.
pub fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("generating an ECDSA key cannot fail");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("valid names");
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
}
