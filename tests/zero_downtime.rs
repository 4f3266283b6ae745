//! Zero downtime, with the real binary: SIGTERM turns /readyz to 503 at once, the proxy keeps
//! serving (new connections too) for `--pre-stop-delay` so the endpoints can drop it, then closes
//! the listener, drains what is in flight and exits 0.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WARD: &str = env!("CARGO_BIN_EXE_ward");

#[tokio::test]
async fn sigterm_turns_readiness_off_keeps_serving_through_the_pre_stop_delay_then_exits_0() {
    let upstream = support::Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = support::Pki::new();
    let (cert, key) = pki.leaf("binary");
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        support::render(support::BASIC, upstream.addr),
    )
    .unwrap();
    let delay = Duration::from_secs(4);
    let mut child = Command::new(WARD)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--drain-timeout",
            "10s",
            "--pre-stop-delay",
            "4s",
        ])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .arg("--policy")
        .arg(dir.path().join("policy.yaml"))
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
    // Keep reading so the child never blocks on a full pipe.
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<String>>());
    let addr: SocketAddr = serving["listen"].as_str().unwrap().parse().unwrap();
    let admin: SocketAddr = serving["admin"].as_str().unwrap().parse().unwrap();
    let readyz = move || async move {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    // A fresh client (a new connection) per request.
    let client = move || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .tls_built_in_root_certs(false)
            .resolve("localhost", addr)
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap()
    };
    let url = |path: &str| format!("https://localhost:{}{path}", addr.port());
    assert!(
        support::eventually(Duration::from_secs(10), || async { readyz().await == 200 }).await,
        "ready before the signal"
    );

    let c = client();
    let slow = url("/slow");
    let in_flight = tokio::spawn(async move {
        c.get(slow)
            .header("x-delay-ms", "1500")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(support::eventually(Duration::from_secs(10), || async { upstream.count() == 1 }).await);

    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(
        support::eventually(Duration::from_secs(2), || async { readyz().await == 503 }).await,
        "readyz turns 503 right after SIGTERM"
    );
    // Still inside the pre-stop delay: a new connection is accepted and served.
    let during = client().get(url("/during")).send().await;
    assert!(
        signalled.elapsed() < delay,
        "the check ran inside the delay; the machine is too slow for this test"
    );
    assert_eq!(
        during
            .expect("a new connection during the pre-stop delay is served")
            .status(),
        200
    );
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the request in flight completed"
    );

    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "ward exits 0 after draining: {status:?}");
    assert!(
        signalled.elapsed() >= delay,
        "the listener stayed open for the whole pre-stop delay"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after exit"
    );
    let lines = log.join().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("pre-stop delay")),
        "the delay is logged"
    );
}
