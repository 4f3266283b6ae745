//! The real `ward` binary: crash safety under kill -9, and fail-fast configuration checks.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::service::{new_key, payment_body, write_key_files, KeyFiles, Kind, TestDb};

/// A spawned `ward payments serve`, killed when dropped.
struct Proc {
    child: Child,
    base: String,
    /// Every stderr line (the JSON log) seen so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_args(db: &TestDb, keys: &KeyFiles) -> Vec<String> {
    vec![
        "payments".into(),
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--database-url".into(),
        db.url.clone(),
        "--signing-key".into(),
        format!("bin-1={}", keys.signing.display()),
        "--data-key".into(),
        format!("data-1={}", keys.data.display()),
        "--webhook-secret-file".into(),
        keys.webhook.display().to_string(),
    ]
}

fn spawn(db: &TestDb, keys: &KeyFiles) -> Proc {
    spawn_with(serve_args(db, keys), &[])
}

fn spawn_with(args: Vec<String>, envs: &[(&str, String)]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ward");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    // Read the log until the listening line, then keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(t) = &tx {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "payments service listening" {
                        let _ = t.send(v["addr"].as_str().unwrap_or_default().to_string());
                        tx = None;
                    }
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("ward payments starts listening");
    Proc {
        child,
        base: format!("http://{addr}"),
        log,
    }
}

async fn post(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    key: Option<&str>,
    body: serde_json::Value,
) -> Result<(StatusCode, serde_json::Value), reqwest::Error> {
    let mut req = client.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let r = req.send().await?;
    let status = r.status();
    let v = r.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, v))
}

async fn login(client: &reqwest::Client, base: &str, c: &ward::payments::Bootstrapped) -> String {
    let (status, v) = post(
        client,
        format!("{base}/v1/auth/login"),
        None,
        None,
        json!({ "tenant": c.tenant, "email": c.email, "password": c.password }),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{v:?}");
    v["access_token"].as_str().unwrap().to_string()
}

async fn every_payment_that_got_201_survives_kill_9_with_its_audit_record(kind: Kind) {
    let db = TestDb::new(kind).await;
    let keys = write_key_files(db.dir.path());
    let store = ward::payments::store::Store::connect(&db.url, Duration::from_secs(5))
        .await
        .unwrap();
    let creds = ward::payments::bootstrap(&store, "crash", "Crash test", "ops@example.com")
        .await
        .unwrap();
    store.close().await;

    let proc = spawn(&db, &keys);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let token = login(&client, &proc.base, &creds).await;

    let confirmed = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, base, token) = (client.clone(), proc.base.clone(), token.clone());
        let (confirmed, count, stop) = (confirmed.clone(), count.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // Bounded: at most 200 attempts per task.
            for _ in 0..200 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match post(
                    &client,
                    format!("{base}/v1/payments"),
                    Some(&token),
                    Some(&new_key()),
                    payment_body("4.20"),
                )
                .await
                {
                    Ok((StatusCode::CREATED, v)) => {
                        confirmed
                            .lock()
                            .unwrap()
                            .push(v["id"].as_str().unwrap().to_string());
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((status, v)) => panic!("unexpected {status}: {v:?}"),
                    Err(_) => break, // the process is gone
                }
            }
        }));
    }
    // Kill in the middle of the burst, with requests in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::SeqCst) < 150 {
        assert!(tokio::time::Instant::now() < deadline, "burst too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut proc = proc;
    proc.child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    proc.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    drop(proc);
    let ids = confirmed.lock().unwrap().clone();
    assert!(ids.len() >= 150);

    let proc = spawn(&db, &keys);
    let token = login(&client, &proc.base, &creds).await;
    for id in &ids {
        let r = client
            .get(format!("{}/v1/payments/{id}", proc.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "payment {id} got 201 but is gone"
        );
        let a: serde_json::Value = client
            .get(format!(
                "{}/v1/audit?action=payment.created&resource_id={id}",
                proc.base
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            a["items"].as_array().unwrap().len(),
            1,
            "payment {id} has no audit record"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["audit", "verify", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
both_stores!(every_payment_that_got_201_survives_kill_9_with_its_audit_record);

fn start_fails(args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .env_remove("WARD_PAYMENTS_SIGNING_KEY")
        .env_remove("WARD_PAYMENTS_SIGNING_KEY_PEM")
        .output()
        .unwrap();
    assert!(!out.status.success(), "start must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn missing_or_insecure_configuration_fails_fast_naming_the_setting() {
    let db = TestDb::new(Kind::Sqlite).await;
    let keys = write_key_files(db.dir.path());
    let full = serve_args(&db, &keys);
    let without = |flag: &str| -> Vec<String> {
        let mut v = full.clone();
        let i = v.iter().position(|a| a == flag).unwrap();
        v.drain(i..i + 2);
        v
    };
    assert!(start_fails(&without("--signing-key")).contains("--signing-key"));
    assert!(start_fails(&without("--data-key")).contains("--data-key"));
    assert!(start_fails(&without("--webhook-secret-file")).contains("--webhook-secret-file"));

    let placeholder = db.dir.path().join("placeholder.secret");
    ward::payments::keys::write_private_file(&placeholder, b"changeme-changeme-changeme-changeme")
        .unwrap();
    let mut args = without("--webhook-secret-file");
    args.extend([
        "--webhook-secret-file".to_string(),
        placeholder.display().to_string(),
    ]);
    let err = start_fails(&args);
    assert!(
        err.contains("--webhook-secret-file") && err.contains("placeholder"),
        "{err}"
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys.signing, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = start_fails(&full);
        assert!(
            err.contains("--signing-key") && err.contains("chmod 600"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn keys_generate_writes_a_usable_keypair_with_private_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["keys", "generate", "--kid", "k-2026", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let private = std::fs::read_to_string(dir.path().join("k-2026.private.pem")).unwrap();
    let public = std::fs::read_to_string(dir.path().join("k-2026.public.pem")).unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("PRIVATE KEY"),
        "key material is not printed"
    );
    let keys =
        ward::payments::keys::SigningKeys::from_pems("k-2026", &private, &[("old".into(), public)])
            .unwrap();
    assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("k-2026.private.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }
}

#[tokio::test]
async fn the_signing_key_can_come_from_the_environment() {
    let db = TestDb::new(Kind::Sqlite).await;
    let keys = write_key_files(db.dir.path());
    let mut args = serve_args(&db, &keys);
    let i = args.iter().position(|a| a == "--signing-key").unwrap();
    args.drain(i..i + 2);
    let pem = std::fs::read_to_string(&keys.signing).unwrap();
    let proc = spawn_with(
        args,
        &[
            ("WARD_PAYMENTS_SIGNING_KEY_PEM", pem),
            ("WARD_PAYMENTS_SIGNING_KID", "from-env".into()),
        ],
    );
    let jwks: serde_json::Value = reqwest::get(format!("{}/.well-known/jwks.json", proc.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "from-env");
}

#[tokio::test]
async fn request_logs_are_json_lines_carrying_the_proxy_request_id() {
    let db = TestDb::new(Kind::Sqlite).await;
    let keys = write_key_files(db.dir.path());
    let proc = spawn(&db, &keys);
    let r = reqwest::Client::new()
        .get(format!("{}/v1/payments", proc.base))
        .header("x-request-id", "log-check-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = proc.log.lock().unwrap().iter().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                // The product's one line shape (see `access_log`).
                v["message"] == "request"
                    && v["service"] == "payments"
                    && v["request_id"] == "log-check-42"
                    && v["method"] == "GET"
                    && v["path"] == "/v1/payments"
                    && v["status"] == 401
                    && v["route"] == "/v1/payments"
                    && v["duration_ms"].is_number()
                    && v["client_ip"] == "127.0.0.1"
            })
        });
        if found {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no JSON log line with the request id"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bootstrap_prints_a_generated_password_once_and_it_logs_in() {
    let db = TestDb::new(Kind::Sqlite).await;
    let keys = write_key_files(db.dir.path());
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_ward"))
            .args([
                "payments",
                "bootstrap",
                "--database-url",
                &db.url,
                "--tenant",
                "first",
                "--email",
                "Owner@Example.com",
            ])
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let password = text
        .lines()
        .find_map(|l| l.strip_prefix("password:"))
        .map(|p| p.trim().to_string())
        .expect("password line");
    assert!(password.len() >= 20);
    // A second bootstrap of the same tenant is refused; no second password is minted for it.
    assert!(!run().status.success());
    let proc = spawn(&db, &keys);
    let creds = ward::payments::Bootstrapped {
        tenant_id: String::new(),
        tenant: "first".into(),
        email: "owner@example.com".into(),
        password,
    };
    login(&reqwest::Client::new(), &proc.base, &creds).await;
}
