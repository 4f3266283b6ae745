//! `payments::demo::prepare`: what `ward demo` runs behind the proxy.

mod support;

use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_setup_serves_and_its_printed_credentials_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let setup = ward::payments::demo::prepare(dir.path()).await.unwrap();
    assert!(
        setup.password.len() >= 20,
        "a generated password, not a default"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ward::payments::run(listener, setup.config.clone(), async {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    let login = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "tenant": setup.tenant, "email": setup.email, "password": setup.password }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let token: serde_json::Value = login.json().await.unwrap();
    let created = client
        .post(format!("{base}/v1/payments"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .header("idempotency-key", "demo-1")
        .json(&support::service::payment_body("19.99"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    // The webhook secret file it wrote is the one the service checks.
    let secret = std::fs::read_to_string(&setup.webhook_secret_file).unwrap();
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let body =
        json!({ "id": "evt_demo", "type": "payment.succeeded", "payment_id": id }).to_string();
    let t = time::OffsetDateTime::now_utc().unix_timestamp();
    let sig = format!(
        "t={t},v1={}",
        ward::payments::webhook::sign(secret.trim().as_bytes(), t, body.as_bytes())
    );
    let r = client
        .post(format!("{base}/v1/webhooks/psp"))
        .header("content-type", "application/json")
        .header("ward-webhook-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    // A second prepare in the same directory refuses to overwrite the first one's keys.
    assert!(ward::payments::demo::prepare(dir.path()).await.is_err());
}
