//! The `ward` binary: check, explain, schema, start-up errors, SIGTERM drain; shipped policies.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const WARD: &str = env!("CARGO_BIN_EXE_ward");

#[test]
fn every_shipped_policy_compiles() {
    let mut n = 0;
    for dir in ["policies", "policies/examples", "bench"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "yaml") {
                ward::policy::load(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                n += 1;
            }
        }
    }
    assert!(n >= 3, "found {n} policies");
}

#[test]
fn the_committed_json_schema_matches_the_code() {
    let committed = std::fs::read_to_string("policies/ward-policy.schema.json").unwrap();
    assert_eq!(
        committed.trim(),
        ward::policy::schema_json().trim(),
        "run `ward schema > policies/ward-policy.schema.json`"
    );
}

#[test]
fn check_accepts_a_good_policy_and_names_the_fault_in_a_bad_one() {
    let ok = Command::new(WARD)
        .args(["check", "policies/default.yaml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nupstream: {url: http://127.0.0.1:1}\nroutes:\n  - name: a\n    limits:\n      max_bdy: 1MiB\n  - name: a\n").unwrap();
    let out = Command::new(WARD).arg("check").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:6:7: routes[0].limits: unknown field `max_bdy`",
            bad.display()
        )),
        "{err}"
    );
}

#[test]
fn check_reports_every_semantic_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nupstream: {url: http://127.0.0.1:1}\nroutes:\n  - name: a\n  - name: a\n    match: {path: {glob: nope}}\n").unwrap();
    let out = Command::new(WARD).arg("check").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[1].name: duplicate route name `a`"),
        "{err}"
    );
    assert!(
        err.contains("routes[1].match.path.glob: `nope` must start with `/`"),
        "{err}"
    );
}

#[test]
fn explain_shows_the_route_limits_and_headers() {
    let out = Command::new(WARD)
        .args([
            "explain",
            "policies/default.yaml",
            "POST",
            "https://api.example.com/v1/auth/login",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("route: login"), "{text}");
    assert!(
        text.contains("lockout: identity [tenant, email], 5 failures in 15m lock for 15m"),
        "{text}"
    );
    assert!(text.contains("rate limit auth_per_ip: 5 per 15m"), "{text}");
    assert!(
        text.contains("response header: x-frame-options: DENY"),
        "{text}"
    );
}

#[test]
fn missing_certificate_fails_start_naming_the_file() {
    let out = Command::new(WARD)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .args(["--policy", "policies/default.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/tls.crt"), "{err}");
}

#[test]
fn invalid_policy_fails_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("p.yaml");
    std::fs::write(&bad, "version: 1\nroutes: []\n").unwrap();
    let out = Command::new(WARD)
        .args(["proxy", "--tls-cert", "x", "--tls-key", "y", "--policy"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream: no policy file defines the upstream"),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
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
    let mut child = Command::new(WARD)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--drain-timeout",
            "10s",
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
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<String>>());
    let addr: std::net::SocketAddr = serving["listen"].as_str().unwrap().parse().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .no_proxy()
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{}/slow?card=4111111111111111",
        addr.port()
    );
    let in_flight = tokio::spawn(async move {
        client
            .get(url)
            .header("x-delay-ms", "1500")
            .header("authorization", "Bearer SECRET-TOKEN-123")
            .header("cookie", "session=SECRET-COOKIE-456")
            .header("x-request-id", "log-test-1")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(support::eventually(Duration::from_secs(10), || async { upstream.count() == 1 }).await);
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the in-flight request completed"
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "ward exits 0 after draining: {status:?}");

    // The request's JSON log line: fields present, no query values, no credentials.
    let lines = log.join().unwrap();
    let line = lines
        .iter()
        .find(|l| l.contains("log-test-1"))
        .expect("a log line for the request");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["service"], "proxy");
    assert_eq!(v["request_id"], "log-test-1");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/slow");
    assert_eq!(v["route"], "all");
    assert_eq!(v["status"], 200);
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0 && v["timestamp"].is_string());
    for l in &lines {
        assert!(
            !l.contains("SECRET") && !l.contains("4111111111111111"),
            "secret in log: {l}"
        );
    }
}
