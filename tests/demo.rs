//! `ward demo` end to end: the binary on a fresh directory, the README walkthrough through the
//! proxy (log in, create a payment, list it, refresh, read the audit trail), then SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

#[tokio::test]
async fn demo_runs_the_walkthrough_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(dir.path().join("demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base, mut password, mut admin) = (None, None, None);
    while base.is_none() || password.is_none() || admin.is_none() {
        let line = lines
            .next()
            .expect("the demo prints its URLs and login")
            .unwrap();
        let t = line.trim();
        if let Some(url) = t.strip_prefix("proxy:") {
            base = Some(
                url.split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches('/')
                    .to_owned(),
            );
        } else if let Some(p) = t.strip_prefix("password:") {
            password = Some(p.trim().to_owned());
        } else if let Some(a) = t.strip_prefix("admin:") {
            admin = Some(
                a.split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches("/metrics")
                    .to_owned(),
            );
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let (base, password, admin) = (base.unwrap(), password.unwrap(), admin.unwrap());
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    // The demo's certificate is made at start and printed nowhere: this client accepts it.
    let c = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .no_proxy()
        .build()
        .unwrap();

    let login = c
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"tenant": "demo", "email": "admin@demo.example", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    assert_eq!(
        login.headers()["x-frame-options"],
        "DENY",
        "answers pass the proxy's hardening"
    );
    let tokens: Value = login.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();

    let body = json!({"amount": "49.90", "currency": "EUR", "description": "Order 1001", "payer_account": "DE89 3704 0044 0532 0130 00"});
    let created = c
        .post(format!("{base}/v1/payments"))
        .bearer_auth(&access)
        .header("idempotency-key", "order-1001")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let payment: Value = created.json().await.unwrap();
    assert_eq!(payment["payer_account"], "****3000");

    // A forged token (the valid one with another subject, its signature kept) and an unsigned
    // one are refused by the proxy itself: ward's problem type, and counted at the edge.
    let mut parts: Vec<String> = access.split('.').map(str::to_owned).collect();
    let mut claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &parts[1])
            .unwrap(),
    )
    .unwrap();
    claims["role"] = "admin".into();
    claims["sub"] = "someone-else".into();
    parts[1] = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        claims.to_string(),
    );
    let forged = parts.join(".");
    let unsigned = format!(
        "{}.{}.",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            r#"{"alg":"none","typ":"JWT"}"#
        ),
        parts[1]
    );
    for token in [&forged, &unsigned] {
        let refused = c
            .get(format!("{base}/v1/payments"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        assert!(refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["type"], "urn:ward:problem:invalid-credentials");
    }
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"ward_auth_decisions_total{reason="unauthorized:bad_signature",result="deny",route="payments"} 1"#),
        "{metrics}"
    );

    let list: Value = c
        .get(format!("{base}/v1/payments?status=pending"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["id"], payment["id"]);

    let rotated = c
        .post(format!("{base}/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let access = rotated.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let audit: Value = c
        .get(format!("{base}/v1/audit?action=payment.created"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"][0]["resource_id"], payment["id"]);

    // The walkthrough's sessions: the spent refresh token presented again is refused by ward and
    // revokes its session, so the access token that refresh issued stops working at once.
    let replay = c
        .post(format!("{base}/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
    let problem: Value = replay.json().await.unwrap();
    assert_eq!(problem["type"], "urn:ward:problem:refresh-token-reused");
    let refused_at_edge = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 401);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["type"], "urn:ward:problem:invalid-credentials", "{p}");
    };
    refused_at_edge(
        c.get(format!("{base}/v1/payments"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap(),
    )
    .await;
    // A logout in the service refuses its access token at the edge, at once.
    let login = c
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"tenant": "demo", "email": "admin@demo.example", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let access = login.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let logout = c
        .post(format!("{base}/v1/auth/logout"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    refused_at_edge(
        c.get(format!("{base}/v1/payments"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap(),
    )
    .await;

    // The proxy's deny route keeps the service's internal endpoint private.
    assert_eq!(
        c.post(format!("{base}/internal/v1/security-events"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let ready = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);

    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the demo stops cleanly: {status:?}");
}
