//! What several fuzz targets share: a directory with the files a policy may reference (an API
//! keys table, an HMAC secret, a JWKS document with a public key made at start), and the keys to
//! sign tokens with. Everything is made fresh in each fuzzing process; nothing here is a secret
//! of any deployment.

use std::path::PathBuf;
use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

/// The HMAC secret of the `hmac` issuers (32 bytes, the shortest ward accepts).
pub const HMAC_SECRET: &str = "fuzz-secret-0123456789abcdefghij";
/// The environment variable a policy may name for it.
pub const HMAC_SECRET_ENV: &str = "WARD_FUZZ_HMAC_SECRET";
/// The `kid` of the Ed25519 key in `jwks.json`.
pub const ED_KID: &str = "fuzz-ed";
/// Unix seconds the targets treat as now.
pub const NOW: i64 = 1_700_000_000;

pub struct Fixture {
    /// Holds `keys.yaml`, `jwt.secret` and `jwks.json`; a fuzzed policy file lives here.
    pub dir: PathBuf,
    /// The one API key of `keys.yaml`, id `fuzz-key`.
    pub api_key: String,
    /// Signs EdDSA tokens that `jwks.json` verifies.
    pub ed_signing: jsonwebtoken::EncodingKey,
    pub jwks: String,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ward-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let (api_key, hash) = ward::identity::apikey::generate();
        std::fs::write(
            dir.join("keys.yaml"),
            format!(
                "keys:\n  - id: fuzz-key\n    hash: {hash}\n    tenant: t1\n    roles: [merchant]\n    rate_limit: {{ limit: 5, period: 1m }}\n"
            ),
        )
        .expect("keys.yaml");
        std::fs::write(dir.join("jwt.secret"), format!("{HMAC_SECRET}\n")).expect("jwt.secret");
        std::env::set_var(HMAC_SECRET_ENV, HMAC_SECRET);
        let pair = ward::payments::keys::generate_signing_keypair();
        let der = pem_body(&pair.public_pem);
        let x = URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
        let jwks = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"{ED_KID}","alg":"EdDSA","use":"sig","x":"{x}"}}]}}"#
        );
        std::fs::write(dir.join("jwks.json"), &jwks).expect("jwks.json");
        let ed_signing = jsonwebtoken::EncodingKey::from_ed_pem(pair.private_pem.as_bytes())
            .expect("a fresh Ed25519 key");
        Fixture {
            dir,
            api_key,
            ed_signing,
            jwks,
        }
    })
}

fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).expect("PEM base64")
}

/// Signs `claims` (any JSON text) under `header` (any JSON text) with the HMAC secret: a token
/// whose signature is good whatever its header and claims say.
pub fn sign_hs256(header: &str, claims: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(HMAC_SECRET.as_bytes());
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("HMAC signs anything");
    format!("{input}.{sig}")
}

/// Signs with the Ed25519 key of `jwks.json`.
pub fn sign_eddsa(header: &str, claims: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &fixture().ed_signing,
        jsonwebtoken::Algorithm::EdDSA,
    )
    .expect("Ed25519 signs anything");
    format!("{input}.{sig}")
}
