//! Test issuers: keys made at run time (rcgen), tokens signed with them (jsonwebtoken), a JWKS
//! document of their public halves, and a real HTTP server that publishes it and can be told to
//! fail. Nothing is committed; nothing stands in for ward's verification.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "payments-api";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A signing key with its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The public key in several encodings, for the "HMAC with the public key" attacks.
    pub public_forms: Vec<Vec<u8>>,
}

impl TestKey {
    pub fn es256(kid: &str) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw().to_vec();
        assert_eq!(raw.len(), 65);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        });
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
            public_forms: vec![
                kp.public_key_pem().into_bytes(),
                kp.public_key_der(),
                raw.clone(),
                jwk.to_string().into_bytes(),
            ],
            jwk,
        }
    }

    pub fn eddsa(kid: &str) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let raw = kp.public_key_raw().to_vec();
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": URL_SAFE_NO_PAD.encode(&raw),
        });
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&kp.serialize_der()),
            public_forms: vec![
                kp.public_key_pem().into_bytes(),
                kp.public_key_der(),
                raw,
                jwk.to_string().into_bytes(),
            ],
            jwk,
        }
    }

    pub fn header(&self) -> Header {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        h.typ = Some("JWT".into());
        h
    }

    /// A token with `claims` and this key's usual header.
    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&self.header(), claims, &self.encoding).unwrap()
    }

    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).unwrap()
    }
}

/// Claims that pass: issuer, audience, 10 minutes to live, a tenant and a role.
pub fn claims(sub: &str, tenant: &str, roles: &[&str]) -> Value {
    let now = now();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "tenant": tenant, "roles": roles,
        "iat": now, "exp": now + 600, "jti": uuid::Uuid::new_v4().to_string(),
    })
}

pub fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// Joins base64url segments into a compact token (for hand-made hostile tokens).
pub fn compact(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// A real HTTP server that serves one document at any path and counts requests. `None` as the
/// document answers 503 (the issuer is down).
#[derive(Clone)]
pub struct DocServer {
    pub addr: SocketAddr,
    pub doc: Arc<Mutex<Option<String>>>,
    pub hits: Arc<AtomicUsize>,
}

impl DocServer {
    pub async fn start(doc: Option<String>) -> DocServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = DocServer {
            addr,
            doc: Arc::new(Mutex::new(doc)),
            hits: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let s = s.clone();
                        async move {
                            s.hits.fetch_add(1, Ordering::SeqCst);
                            let doc = s.doc.lock().unwrap().clone();
                            let resp = match doc {
                                Some(d) => Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(d)))
                                    .unwrap(),
                                None => Response::builder()
                                    .status(StatusCode::SERVICE_UNAVAILABLE)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks.json", self.addr.port())
    }

    pub fn set(&self, doc: Option<String>) {
        *self.doc.lock().unwrap() = doc;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
