//! The audit trail: written with every change, filtered per tenant, and verified by `ward audit verify`,
//! which must name the first record that was altered or removed.

mod support;

use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;
use support::service::{new_key, payment_body, Kind, Service};

fn verify(url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["audit", "verify", "--database-url", url])
        .env("RUST_LOG", "error")
        .output()
        .expect("run ward audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A tenant with a few audited events: bootstrap, login, three payments, one cancel.
async fn busy_tenant(svc: &Service) -> (support::service::Creds, String) {
    let acme = svc.new_tenant("acme").await;
    let t = svc.login(&acme).await.access;
    let mut last = String::new();
    for amount in ["1.00", "2.00", "3.00"] {
        last = svc
            .create_payment(&t, &new_key(), payment_body(amount))
            .await
            .body["id"]
            .as_str()
            .unwrap()
            .to_string();
    }
    svc.post(&format!("/v1/payments/{last}/cancel"), Some(&t), json!({}))
        .await;
    (acme, t)
}

async fn editing_an_audit_row_makes_verify_fail_at_that_row(kind: Kind) {
    let svc = Service::start(kind).await;
    let (acme, _) = busy_tenant(&svc).await;
    let (ok, text) = verify(&svc.db.url);
    assert!(ok, "intact chains verify: {text}");
    assert!(text.contains("records verified"));
    // seq 1 user.created, 2 login, 3..5 payments, 6 cancel. Edit seq 3.
    let id_of_3 = {
        let store = svc.store().await;
        let rows = store
            .list_audit(
                &acme.tenant_id,
                &ward::payments::store::AuditFilter {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        store.close().await;
        rows.iter().find(|r| r.seq == 3).unwrap().id.clone()
    };
    let changed = svc
        .db
        .raw_execute(&format!(
            "UPDATE audit_log SET details = '{{\"amount\":\"999999.00\"}}' WHERE tenant_id = '{}' AND seq = 3",
            acme.tenant_id
        ))
        .await;
    assert_eq!(changed, 1);
    let (ok, text) = verify(&svc.db.url);
    assert!(!ok, "an edited row must fail verification");
    assert!(
        text.contains("seq 3") && text.contains(&id_of_3) && text.contains("altered"),
        "{text}"
    );
}
both_stores!(editing_an_audit_row_makes_verify_fail_at_that_row);

async fn deleting_an_audit_row_makes_verify_fail_at_that_row(kind: Kind) {
    let svc = Service::start(kind).await;
    let (acme, _) = busy_tenant(&svc).await;
    svc.db
        .raw_execute(&format!(
            "DELETE FROM audit_log WHERE tenant_id = '{}' AND seq = 4",
            acme.tenant_id
        ))
        .await;
    let (ok, text) = verify(&svc.db.url);
    assert!(!ok);
    assert!(text.contains("seq 4 was removed"), "{text}");
}
both_stores!(deleting_an_audit_row_makes_verify_fail_at_that_row);

async fn deleting_the_newest_audit_rows_is_detected(kind: Kind) {
    let svc = Service::start(kind).await;
    let (acme, _) = busy_tenant(&svc).await;
    svc.db
        .raw_execute(&format!(
            "DELETE FROM audit_log WHERE tenant_id = '{}' AND seq >= 5",
            acme.tenant_id
        ))
        .await;
    let (ok, text) = verify(&svc.db.url);
    assert!(!ok);
    assert!(text.contains("after seq 4 were removed"), "{text}");
}
both_stores!(deleting_the_newest_audit_rows_is_detected);

async fn every_auth_and_payment_event_is_recorded_with_its_context(kind: Kind) {
    let svc = Service::start(kind).await;
    let (acme, t) = busy_tenant(&svc).await;
    svc.try_login(&acme.tenant, &acme.email, "wrong-password!")
        .await;
    let second = svc.login(&acme).await;
    let r = svc
        .post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": second.refresh }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    svc.post("/v1/auth/logout", Some(&second.access), json!({}))
        .await;
    let all = svc.get("/v1/audit?limit=100", Some(&t)).await;
    assert_eq!(all.status, StatusCode::OK);
    let items = all.body["items"].as_array().unwrap();
    let actions: Vec<&str> = items
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    for a in [
        "user.created",
        "auth.login_succeeded",
        "payment.created",
        "payment.cancelled",
        "auth.login_failed",
        "auth.refresh",
        "auth.logout",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    // Newest first, contiguous sequence, every record with its context and without secrets.
    let seqs: Vec<i64> = items.iter().map(|i| i["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] == w[1] + 1), "{seqs:?}");
    let text = all.body.to_string();
    assert!(!text.contains(&acme.password), "no password in audit");
    assert!(!text.contains(&second.refresh), "no refresh token in audit");
    assert!(!text.contains("admin@example.com"), "emails are masked");
    assert!(!text.contains("DE89370400440532013000"));
    for i in items {
        assert!(!i["request_id"].as_str().unwrap().is_empty());
        assert!(!i["client_ip"].as_str().unwrap().is_empty());
        assert_eq!(i["hash"].as_str().unwrap().len(), 64);
    }
    // Filters: action, resource type, time window, cursor.
    let pays = svc
        .get("/v1/audit?resource_type=payment&limit=2", Some(&t))
        .await;
    assert_eq!(pays.body["items"].as_array().unwrap().len(), 2);
    let cursor = pays.body["next_cursor"].as_str().unwrap();
    let rest = svc
        .get(
            &format!("/v1/audit?resource_type=payment&limit=2&cursor={cursor}"),
            Some(&t),
        )
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 2);
    assert!(rest.body["items"][0]["seq"].as_i64() < pays.body["items"][1]["seq"].as_i64());
    let future = svc
        .get("/v1/audit?since=2999-01-01T00:00:00Z", Some(&t))
        .await;
    assert_eq!(future.body["items"].as_array().unwrap().len(), 0);
    let past = svc
        .get("/v1/audit?until=2000-01-01T00:00:00Z", Some(&t))
        .await;
    assert_eq!(past.body["items"].as_array().unwrap().len(), 0);
    let (ok, text) = verify(&svc.db.url);
    assert!(ok, "{text}");
}
both_stores!(every_auth_and_payment_event_is_recorded_with_its_context);

async fn concurrent_writers_spread_over_lanes_and_every_lane_is_verified(kind: Kind) {
    let svc = std::sync::Arc::new(Service::start(kind).await);
    let acme = svc.new_tenant("acme").await;
    let t = svc.login(&acme).await.access;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (svc, t) = (svc.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            svc.create_payment(&t, &format!("lane-{i}"), payment_body("7.00"))
                .await
                .status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::CREATED);
    }
    let (ok, text) = verify(&svc.db.url);
    assert!(ok, "{text}");
    let store = svc.store().await;
    let rows = store
        .list_audit(
            &acme.tenant_id,
            &ward::payments::store::AuditFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store.close().await;
    assert_eq!(rows.len(), 26, "user.created, login, 24 payments");
    // Tamper with the newest record of the highest lane in use.
    let victim = rows.iter().max_by_key(|r| (r.lane, r.seq)).unwrap().clone();
    svc.db
        .raw_execute(&format!(
            "UPDATE audit_log SET actor = 'mallory' WHERE id = '{}'",
            victim.id
        ))
        .await;
    let (ok, text) = verify(&svc.db.url);
    assert!(!ok);
    assert!(
        text.contains(&format!(
            "lane {}: record seq {} (id {}) was altered",
            victim.lane, victim.seq, victim.id
        )),
        "{text}"
    );
    // Put it back: the chain verifies again, so the check is about content, not about the edit.
    svc.db
        .raw_execute(&format!(
            "UPDATE audit_log SET actor = '{}' WHERE id = '{}'",
            victim.actor, victim.id
        ))
        .await;
    assert!(verify(&svc.db.url).0);
    // Moving a record to another lane (one where its seq is free, else a lane that does not exist)
    // breaks verification too.
    let other_lane = (0..ward::payments::audit::AUDIT_LANES)
        .find(|l| *l != victim.lane && !rows.iter().any(|r| r.lane == *l && r.seq == victim.seq))
        .unwrap_or(99);
    svc.db
        .raw_execute(&format!(
            "UPDATE audit_log SET lane = {other_lane} WHERE id = '{}'",
            victim.id
        ))
        .await;
    let (ok, text) = verify(&svc.db.url);
    assert!(!ok, "{text}");
}
both_stores!(concurrent_writers_spread_over_lanes_and_every_lane_is_verified);
