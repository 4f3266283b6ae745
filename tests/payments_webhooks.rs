//! PSP webhooks: signature, tolerance window, replay, and the state machine they drive.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::service::{assert_problem, new_key, payment_body, Kind, Reply, Service};
use ward::payments::webhook;

async fn deliver(svc: &Service, body: &serde_json::Value, timestamp: i64, secret: &[u8]) -> Reply {
    let raw = body.to_string();
    let sig = format!(
        "t={timestamp},v1={}",
        webhook::sign(secret, timestamp, raw.as_bytes())
    );
    let r = svc
        .client
        .post(format!("{}/v1/webhooks/psp", svc.base))
        .header("content-type", "application/json")
        .header("ward-webhook-signature", sig)
        .body(raw)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn signed_webhooks_move_payments_and_bad_stale_or_replayed_ones_are_refused(kind: Kind) {
    let svc = Service::start(kind).await;
    let acme = svc.new_tenant("acme").await;
    let t = svc.login(&acme).await.access;
    let id = svc
        .create_payment(&t, &new_key(), payment_body("9.99"))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = svc.config.webhook_secret.expose().to_vec();
    let event = json!({ "id": "evt_1", "type": "payment.succeeded", "payment_id": id });

    // Wrong secret, missing header, tampered body: 401, nothing changes.
    assert_problem(
        &deliver(
            &svc,
            &event,
            now(),
            b"an-entirely-different-secret-value-123",
        )
        .await,
        401,
    );
    let unsigned = svc.post("/v1/webhooks/psp", None, event.clone()).await;
    assert_problem(&unsigned, 401);
    // Stale: a correct signature over an old timestamp.
    let stale = deliver(&svc, &event, now() - 3600, &secret).await;
    assert_problem(&stale, 401);
    assert_eq!(stale.body["type"], "urn:ward:problem:webhook-stale");
    assert_eq!(
        svc.get(&format!("/v1/payments/{id}"), Some(&t)).await.body["status"],
        "pending"
    );

    // Valid: pending → succeeded.
    let ok = deliver(&svc, &event, now(), &secret).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(
        svc.get(&format!("/v1/payments/{id}"), Some(&t)).await.body["status"],
        "succeeded"
    );

    // The same delivery again, freshly signed: replay.
    let replay = deliver(&svc, &event, now(), &secret).await;
    assert_problem(&replay, 409);
    assert_eq!(replay.body["type"], "urn:ward:problem:webhook-replayed");

    // Illegal transition: a succeeded payment cannot fail.
    let fail = json!({ "id": "evt_2", "type": "payment.failed", "payment_id": id });
    let r = deliver(&svc, &fail, now(), &secret).await;
    assert_problem(&r, 409);
    assert_eq!(r.body["type"], "urn:ward:problem:illegal-transition");
    // Succeeded → refunded is legal; refunded → anything is not; a cancel now is 409 too.
    let refund = json!({ "id": "evt_3", "type": "payment.refunded", "payment_id": id });
    assert_eq!(
        deliver(&svc, &refund, now(), &secret).await.status,
        StatusCode::OK
    );
    assert_problem(
        &svc.post(&format!("/v1/payments/{id}/cancel"), Some(&t), json!({}))
            .await,
        409,
    );
    let refund_again = json!({ "id": "evt_4", "type": "payment.refunded", "payment_id": id });
    assert_problem(&deliver(&svc, &refund_again, now(), &secret).await, 409);
    // Unknown payment and malformed events.
    let ghost = json!({ "id": "evt_5", "type": "payment.succeeded", "payment_id": uuid::Uuid::new_v4().to_string() });
    assert_problem(&deliver(&svc, &ghost, now(), &secret).await, 404);
    let odd = json!({ "id": "evt_6", "type": "payment.teleported", "payment_id": id });
    assert_problem(&deliver(&svc, &odd, now(), &secret).await, 400);

    // Each applied delivery is audited in the payment's tenant.
    let audit = svc
        .get(
            &format!("/v1/audit?action=payment.webhook_applied&resource_id={id}"),
            Some(&t),
        )
        .await;
    let items = audit.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["details"]["to"], "refunded");
    assert_eq!(items[1]["details"]["event_id"], "evt_1");
    assert_eq!(items[1]["actor"], "psp");
}
both_stores!(signed_webhooks_move_payments_and_bad_stale_or_replayed_ones_are_refused);

async fn the_internal_security_event_endpoint_requires_its_token(kind: Kind) {
    let svc = Service::start(kind).await;
    let tenant = svc.new_tenant("events").await;
    let event = json!({ "events": [
        { "kind": "rate_limited", "client_ip": "198.51.100.4", "request_id": "r-1", "route": "login", "reason": "rate_limited:auth_per_ip" },
        { "kind": "token_revoked", "tenant_id": tenant.tenant_id, "subject": "u-1", "client_ip": "198.51.100.5", "reason": "session" },
    ]});
    assert_problem(
        &svc.post("/internal/v1/security-events", None, event.clone())
            .await,
        401,
    );
    assert_problem(
        &svc.post(
            "/internal/v1/security-events",
            Some("wrong-token"),
            event.clone(),
        )
        .await,
        401,
    );
    let token = String::from_utf8(
        svc.config
            .internal_token
            .as_ref()
            .unwrap()
            .expose()
            .to_vec(),
    )
    .unwrap();
    let r = svc
        .post("/internal/v1/security-events", Some(&token), event)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    for bad in [
        json!({ "events": [{ "kind": "DROP TABLE" }] }),
        json!({ "events": [] }),
    ] {
        let r = svc
            .post("/internal/v1/security-events", Some(&token), bad)
            .await;
        assert_problem(&r, 422);
    }
    // The single-event form of before: not a batch.
    let r = svc
        .post(
            "/internal/v1/security-events",
            Some(&token),
            json!({ "kind": "rate_limited" }),
        )
        .await;
    assert_problem(&r, 400);
    // An event without a known tenant goes to the system chain; one naming a tenant, to its own.
    assert_eq!(
        svc.db
            .raw_count("SELECT COUNT(*) FROM audit_log WHERE action = 'proxy.security_event' AND client_ip = '198.51.100.4' AND tenant_id = '00000000-0000-0000-0000-000000000000'")
            .await,
        1
    );
    assert_eq!(
        svc.db
            .raw_count(&format!("SELECT COUNT(*) FROM audit_log WHERE action = 'proxy.security_event' AND resource_id = 'token_revoked' AND tenant_id = '{}'", tenant.tenant_id))
            .await,
        1
    );
}
both_stores!(the_internal_security_event_endpoint_requires_its_token);
