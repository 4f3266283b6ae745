//! `ward health`, the container probe: the real binary against a real admin port on 127.0.0.1:0.

mod support;

use std::time::{Duration, Instant};

use support::{start, BASIC};

struct Probe {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn health(args: &[&str], env: &[(&str, String)]) -> Probe {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.arg("health").args(args).env_remove("WARD_ADMIN_LISTEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    Probe {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn health_exits_zero_when_the_admin_port_answers_200() {
    let p = start(BASIC).await;
    let admin = p.admin.to_string();

    let live = health(&["--admin", &admin], &[]).await;
    assert!(live.ok, "{}", live.stderr);
    assert!(live.stdout.contains("200"), "{}", live.stdout);

    let ready = health(&["--admin", &format!("http://{admin}/"), "--ready"], &[]).await;
    assert!(ready.ok, "{}", ready.stderr);

    // With no flag it follows the proxy's own setting; 0.0.0.0 there means loopback here.
    let from_env = health(
        &[],
        &[("WARD_ADMIN_LISTEN", format!("0.0.0.0:{}", p.admin.port()))],
    )
    .await;
    assert!(from_env.ok, "{}", from_env.stderr);
}

#[tokio::test]
async fn health_exits_one_when_not_ready() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let p = start(&BASIC.replace("url: UPSTREAM", &format!("url: http://{gone}"))).await;
    let admin = p.admin.to_string();

    assert!(health(&["--admin", &admin], &[]).await.ok, "alive");
    let ready = health(&["--admin", &admin, "--ready"], &[]).await;
    assert_eq!(ready.code, Some(1));
    assert!(
        ready
            .stderr
            .contains(&format!("http://{admin}/readyz: answered 503")),
        "{}",
        ready.stderr
    );
}

#[tokio::test]
async fn health_exits_one_when_nothing_listens_or_nothing_answers() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = closed.local_addr().unwrap().to_string();
    drop(closed);
    let refused = health(&["--admin", &gone], &[]).await;
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("cannot connect"),
        "{}",
        refused.stderr
    );

    // Accepts, then never answers: the deadline ends the probe.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    let started = Instant::now();
    let hung = health(&["--admin", &addr, "--timeout", "300ms"], &[]).await;
    assert_eq!(hung.code, Some(1));
    assert!(
        hung.stderr.contains("no answer within 300ms"),
        "{}",
        hung.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    held.abort();

    let https = health(&["--admin", "https://127.0.0.1:9901"], &[]).await;
    assert_eq!(https.code, Some(1));
    assert!(https.stderr.contains("plain HTTP"), "{}", https.stderr);
}
