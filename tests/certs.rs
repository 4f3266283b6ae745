//! `ward certs dev`: the real binary writes a development CA and leaf, keys private, nothing
//! overwritten; `ward proxy` serves the leaf and a client trusting only that CA accepts it for the
//! names asked for and no other.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

const WARD: &str = env!("CARGO_BIN_EXE_ward");

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn certs_dev_writes_a_ca_and_leaf_with_private_keys_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let made = Command::new(WARD)
        .args(["certs", "dev", "--out"])
        .arg(&out)
        .args(["--host", "api.test", "--host", "10.9.8.7"])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let printed = String::from_utf8_lossy(&made.stdout);
    assert!(
        printed.contains("localhost, 127.0.0.1, ::1, api.test, 10.9.8.7"),
        "{printed}"
    );
    assert!(!printed.contains("PRIVATE"), "no key material is printed");
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("ca.key")), 0o600);
    assert_eq!(mode(&out.join("tls.key")), 0o600);
    assert_eq!(mode(&out.join("ca.crt")), 0o644);
    assert_eq!(mode(&out.join("tls.crt")), 0o644);
    let leaf = ward::tls::load_certified_key(&ward::tls::CertPaths {
        cert: out.join("tls.crt"),
        key: out.join("tls.key"),
    })
    .expect("the leaf and its key load as ward proxy loads them");
    let expires = ward::tls::not_after(leaf.end_entity_cert().unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let days = (expires - now) / 86_400;
    assert!((364..=365).contains(&days), "{days} days");

    let key_before = std::fs::read(out.join("tls.key")).unwrap();
    let again = Command::new(WARD)
        .args(["certs", "dev", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists; not overwriting"), "{err}");
    assert_eq!(std::fs::read(out.join("tls.key")).unwrap(), key_before);

    let bad = Command::new(WARD)
        .args(["certs", "dev", "--host", "bad name!", "--out"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--host \"bad name!\""));
    assert!(
        !dir.path().join("other").exists(),
        "nothing written on error"
    );
}

#[tokio::test]
async fn the_proxy_serves_the_dev_leaf_to_clients_trusting_the_dev_ca() {
    let upstream = support::Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let made = Command::new(WARD)
        .args(["certs", "dev", "--host", "api.test", "--out"])
        .arg(&tls)
        .output()
        .unwrap();
    assert!(made.status.success());
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, support::render(support::BASIC, upstream.addr)).unwrap();
    let mut child = Command::new(WARD)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--tls-cert")
        .arg(tls.join("tls.crt"))
        .arg("--tls-key")
        .arg(tls.join("tls.key"))
        .arg("--policy")
        .arg(&policy)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let serving: serde_json::Value = loop {
        let line = lines.next().expect("ward logs before it serves").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "ward proxy serving" {
            break v;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let addr: std::net::SocketAddr = serving["listen"].as_str().unwrap().parse().unwrap();
    let ca = std::fs::read(tls.join("ca.crt")).unwrap();
    let get = |host: &'static str| {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .tls_built_in_root_certs(false)
            .resolve(host, addr)
            .no_proxy()
            .build()
            .unwrap();
        async move {
            client
                .get(format!("https://{host}:{}/hello", addr.port()))
                .send()
                .await
        }
    };
    assert_eq!(get("localhost").await.unwrap().status(), 200);
    assert_eq!(get("api.test").await.unwrap().status(), 200);
    assert!(
        get("other.test").await.is_err(),
        "a name the leaf was not made for is refused"
    );
    let _ = child.kill();
    let _ = child.wait();
}
