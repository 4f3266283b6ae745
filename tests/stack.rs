//! The whole stack in one process: the real proxy over real TLS (a client that trusts only the
//! test CA) in front of the real payments service, each on 127.0.0.1:0. The client IP the proxy
//! decides is the one the service records: behind a trusted balancer, the balancer's client;
//! otherwise the connection's peer, whatever `X-Forwarded-For` the client made up.

mod support;

use serde_json::{json, Value};
use support::{start_payments, Options, Payments, Running};

/// Plain forwarding to the service, no identity stage: the service verifies its own tokens.
const POLICY: &str = r#"
version: 1
upstream: { url: UPSTREAM, idle_timeout: 5s, request_timeout: 10s }
server:
TRUST
defaults:
  rate_limits: []
routes:
  - name: all
"#;

async fn proxy(pay: &Payments, trust_loopback_balancer: bool) -> Running {
    let trust = if trust_loopback_balancer {
        "  trusted_proxies: [127.0.0.1/32]"
    } else {
        "  trusted_proxies: []"
    };
    pay.proxy(&POLICY.replace("TRUST", trust), Options::default())
        .await
}

/// Logs in through the proxy with a made-up `X-Forwarded-For`, then reads the login's audit
/// record through the proxy.
async fn login_audit_ip(p: &Running, pay: &Payments, forwarded_for: &str) -> String {
    let c = p.client(false);
    let r = c
        .post(p.url("/v1/auth/login"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({
            "tenant": pay.setup.tenant,
            "email": pay.setup.email,
            "password": pay.setup.password,
        }))
        .send()
        .await
        .expect("the proxy answers over TLS with the test CA");
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let t: Value = r.json().await.unwrap();
    let token = t["access_token"].as_str().unwrap();
    let audit: Value = c
        .get(p.url("/v1/audit?action=auth.login_succeeded"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let record = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["request_id"] == request_id.as_str())
        .unwrap_or_else(|| panic!("the login {request_id} is audited: {audit}"));
    record["client_ip"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn behind_a_trusted_balancer_the_audit_trail_records_the_true_client_ip() {
    let pay = start_payments(None).await;
    let p = proxy(&pay, true).await;
    // The test client plays the balancer at 127.0.0.1; the leftmost entry is what a client
    // behind it claimed, which no one trusts.
    let ip = login_audit_ip(&p, &pay, "198.51.100.66, 203.0.113.7").await;
    assert_eq!(ip, "203.0.113.7");
}

#[tokio::test]
async fn without_a_trusted_balancer_a_made_up_forwarded_for_is_not_believed() {
    let pay = start_payments(None).await;
    let p = proxy(&pay, false).await;
    let ip = login_audit_ip(&p, &pay, "203.0.113.7").await;
    assert_eq!(ip, "127.0.0.1", "the peer of the proxy's connection");
}
