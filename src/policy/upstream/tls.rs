//! TLS to an `https://` upstream: the CA bundle (or the system's roots), the SNI name and the
//! client certificate, read and checked when the policy compiles, into one rustls client config.

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{resolve, UpstreamTls, UpstreamTlsSpec};
use crate::policy::compile::Compiler;

impl Compiler {
    /// Reads a PEM file the TLS settings name; an unreadable one is an error naming the file and field.
    fn pem_file(
        &mut self,
        p: &str,
        field: &str,
        digest: &mut Sha256,
        watched: &mut Vec<PathBuf>,
    ) -> Option<Vec<u8>> {
        let path = resolve(&self.file, p);
        match std::fs::read(&path) {
            Ok(bytes) => {
                self.inputs.update(path.as_os_str().as_encoded_bytes());
                self.inputs.update(&bytes);
                digest.update(path.as_os_str().as_encoded_bytes());
                digest.update(&bytes);
                watched.push(path);
                Some(bytes)
            }
            Err(e) => {
                self.err(field, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    pub(super) fn upstream_tls(
        &mut self,
        t: UpstreamTlsSpec,
        at: &str,
        digest: &mut Sha256,
        watched: &mut Vec<PathBuf>,
    ) -> Option<UpstreamTls> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        let roots_from = match &t.ca_bundle {
            Some(p) => {
                let field = format!("{at}.ca_bundle");
                let bytes = self.pem_file(p, &field, digest, watched)?;
                for der in CertificateDer::pem_slice_iter(&bytes) {
                    match der
                        .map_err(|e| e.to_string())
                        .and_then(|d| roots.add(d).map_err(|e| e.to_string()))
                    {
                        Ok(()) => {}
                        Err(e) => self.err(&field, format!("{p}: bad certificate: {e}")),
                    }
                }
                if roots.is_empty() {
                    self.err(&field, format!("{p} holds no PEM certificate"));
                    return None;
                }
                p.clone()
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for der in found.certs {
                    let _ = roots.add(der);
                }
                if roots.is_empty() {
                    self.err(at, "no system root certificates found; name a ca_bundle");
                    return None;
                }
                digest.update(b"system roots");
                "system roots".to_owned()
            }
        };
        if let Some(n) = &t.server_name {
            if ServerName::try_from(n.as_str()).is_err() {
                self.err(
                    format!("{at}.server_name"),
                    format!("`{n}` is not a DNS name or IP address"),
                );
            }
            digest.update(n.as_bytes());
        }
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .with_root_certificates(roots);
        let config = match (&t.client_cert, &t.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(c), Some(k)) => {
                let cf = format!("{at}.client_cert");
                let kf = format!("{at}.client_key");
                let certs = self.pem_file(c, &cf, digest, watched);
                let key = self.pem_file(k, &kf, digest, watched);
                let (certs, key) = (certs?, key?);
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&certs)
                    .filter_map(Result::ok)
                    .collect();
                if chain.is_empty() {
                    self.err(&cf, format!("{c} holds no PEM certificate"));
                    return None;
                }
                let Ok(key) = PrivateKeyDer::from_pem_slice(&key) else {
                    self.err(&kf, format!("{k} holds no PEM private key"));
                    return None;
                };
                match builder.with_client_auth_cert(chain, key) {
                    Ok(c) => c,
                    Err(e) => {
                        self.err(&kf, format!("{k} does not fit {c}: {e}"));
                        return None;
                    }
                }
            }
            _ => {
                self.err(at, "client_cert and client_key go together");
                return None;
            }
        };
        Some(UpstreamTls {
            config: Arc::new(config),
            server_name: t.server_name.clone(),
            roots: roots_from,
            client_cert: t.client_cert.is_some(),
        })
    }
}
