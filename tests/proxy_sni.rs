//! Several certificates on one listener, chosen by SNI (`--tls-sni`), each reloaded on change
//! with its last good kept; the default certificate without SNI or for an unknown name.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::DigitallySignedStruct;
use support::{eventually, start_with, Options, Running, BASIC};

/// Accepts any certificate: these tests look at which one the proxy chose, including the default
/// one offered to a name it does not cover (which a verifying client would refuse).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf the proxy presents to a handshake naming `sni` (`None`: no SNI at all, as a client
/// connecting to a bare IP address sends).
async fn served(p: &Running, sni: Option<&str>) -> Vec<u8> {
    let provider = ward::tls::provider();
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
        None => ServerName::from(p.addr.ip()),
    };
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn der_of(path: &std::path::Path) -> Vec<u8> {
    der(&std::fs::read_to_string(path).unwrap())
}

async fn two_hosts() -> Running {
    start_with(
        BASIC,
        Options {
            sni: vec![vec!["api.test"], vec!["*.pay.test", "pay.example"]],
            ..Options::default()
        },
    )
    .await
}

#[tokio::test]
async fn sni_selects_each_hosts_certificate_and_the_default_otherwise() {
    let p = two_hosts().await;
    let default = der_of(&p.cert_paths.cert);
    let api = der_of(&p.sni_paths[0].cert);
    let pay = der_of(&p.sni_paths[1].cert);

    assert_eq!(served(&p, Some("api.test")).await, api);
    assert_eq!(served(&p, Some("API.Test")).await, api, "names ignore case");
    assert_eq!(served(&p, Some("eu.pay.test")).await, pay, "wildcard");
    assert_eq!(served(&p, Some("pay.example")).await, pay, "second name");
    assert_eq!(
        served(&p, Some("pay.test")).await,
        default,
        "a wildcard does not cover its parent"
    );
    assert_eq!(
        served(&p, Some("a.eu.pay.test")).await,
        default,
        "a wildcard covers one label"
    );
    assert_eq!(served(&p, Some("unknown.test")).await, default);
    assert_eq!(served(&p, None).await, default, "no SNI: the default");
    assert_eq!(served(&p, Some("localhost")).await, default);

    // A client that verifies: each host's name checks out against its own certificate, over h2.
    for host in ["api.test", "eu.pay.test"] {
        let c = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(p.pki.ca_pem.as_bytes()).unwrap())
            .tls_built_in_root_certs(false)
            .resolve(host, p.addr)
            .no_proxy()
            .build()
            .unwrap();
        let r = c
            .get(format!("https://{host}:{}/hello", p.addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
        assert_eq!(r.version(), http::Version::HTTP_2);
    }
}

#[tokio::test]
async fn each_sni_certificate_reloads_on_change_and_keeps_the_last_good() {
    let p = two_hosts().await;
    let default = der_of(&p.cert_paths.cert);
    let pay = der_of(&p.sni_paths[1].cert);
    // A handshake first: the proxy is serving, so its certificate watcher is in place.
    assert_eq!(
        served(&p, Some("api.test")).await,
        der_of(&p.sni_paths[0].cert)
    );
    let (cert, key) = p.pki.leaf_for("api-two", &["api.test"]);
    let new_api = der(&cert);
    support::write_atomically(&p.sni_paths[0].key, &key);
    support::write_atomically(&p.sni_paths[0].cert, &cert);
    let swapped = eventually(Duration::from_secs(3), || async {
        served(&p, Some("api.test")).await == new_api
    })
    .await;
    assert!(
        swapped,
        "new handshakes for api.test present its new certificate: {}",
        p.admin_get("/metrics").await.1
    );
    assert_eq!(
        served(&p, Some("x.pay.test")).await,
        pay,
        "others unchanged"
    );
    assert_eq!(served(&p, None).await, default);

    std::fs::write(&p.sni_paths[0].cert, "not a certificate").unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            p.metric(r#"ward_cert_reloads_total{result="error"}"#).await >= 1.0
        })
        .await,
        "a bad certificate is reported"
    );
    assert_eq!(
        served(&p, Some("api.test")).await,
        new_api,
        "the last good certificate keeps serving"
    );
}

#[tokio::test]
async fn the_expiry_gauge_shows_the_certificate_to_renew_first() {
    let p = two_hosts().await;
    assert_eq!(
        served(&p, None).await,
        der_of(&p.cert_paths.cert),
        "serving"
    );
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(3);
    let soon = soon.replace_nanosecond(0).unwrap();
    let (cert, key) = p.pki.leaf_until("pay-soon", soon);
    // The leaf is for localhost; the gauge does not care which names a certificate holds.
    support::write_atomically(&p.sni_paths[1].key, &key);
    support::write_atomically(&p.sni_paths[1].cert, &cert);
    assert!(
        eventually(Duration::from_secs(3), || async {
            p.metric("ward_tls_certificate_expiry_timestamp_seconds")
                .await
                == soon.unix_timestamp() as f64
        })
        .await,
        "the gauge shows the SNI certificate expiring in three days"
    );
}
