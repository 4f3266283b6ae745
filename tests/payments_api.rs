//! Payments: tenant isolation, idempotency, validation, state machine, encryption at rest, and the
//! operational endpoints, against both stores.

mod support;

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use support::service::{assert_problem, new_key, payment_body, Kind, Service};
use ward::payments::store::{PaymentFilter, StoreError};

async fn payments_and_audit_of_another_tenant_are_invisible(kind: Kind) {
    let svc = Service::start(kind).await;
    let acme = svc.new_tenant("acme").await;
    let globex = svc.new_tenant("globex").await;
    let a = svc.login(&acme).await;
    let g = svc.login(&globex).await;
    let created = svc
        .create_payment(&a.access, &new_key(), payment_body("10.00"))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();

    assert_eq!(
        svc.get(&format!("/v1/payments/{id}"), Some(&a.access))
            .await
            .status,
        StatusCode::OK
    );
    // Another tenant's payment is 404 (never 403): its existence is not revealed.
    assert_problem(
        &svc.get(&format!("/v1/payments/{id}"), Some(&g.access))
            .await,
        404,
    );
    assert_problem(
        &svc.post(
            &format!("/v1/payments/{id}/cancel"),
            Some(&g.access),
            json!({}),
        )
        .await,
        404,
    );
    let list = svc.get("/v1/payments", Some(&g.access)).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 0);
    // The same idempotency key in another tenant is a different request, not a replay.
    let key = new_key();
    let first = svc
        .create_payment(&a.access, &key, payment_body("1.00"))
        .await;
    let other = svc
        .create_payment(&g.access, &key, payment_body("1.00"))
        .await;
    assert_eq!(other.status, StatusCode::CREATED);
    assert_ne!(first.body["id"], other.body["id"]);

    let audit = svc
        .get(&format!("/v1/audit?resource_id={id}"), Some(&g.access))
        .await;
    assert_eq!(audit.status, StatusCode::OK);
    assert_eq!(
        audit.body["items"].as_array().unwrap().len(),
        0,
        "audit is tenant-scoped"
    );
    let audit = svc
        .get(&format!("/v1/audit?resource_id={id}"), Some(&a.access))
        .await;
    assert_eq!(audit.body["items"][0]["action"], "payment.created");
    let all = svc.get("/v1/audit?limit=100", Some(&g.access)).await;
    for item in all.body["items"].as_array().unwrap() {
        assert_ne!(item["resource_id"], id.as_str());
    }
}
both_stores!(payments_and_audit_of_another_tenant_are_invisible);

async fn twenty_concurrent_identical_requests_create_exactly_one_payment(kind: Kind) {
    let svc = Arc::new(Service::start(kind).await);
    let acme = svc.new_tenant("acme").await;
    let token = svc.login(&acme).await.access;
    let key = new_key();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let svc = svc.clone();
        let token = token.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            svc.create_payment(&token, &key, payment_body("25.00"))
                .await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut replays = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        if r.headers.get("idempotent-replayed").is_some() {
            replays += 1;
        }
        ids.insert(r.body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "every response names the same payment");
    assert_eq!(replays, 19);
    assert_eq!(svc.db.raw_count("SELECT COUNT(*) FROM payments").await, 1);
    let audit = svc
        .get("/v1/audit?action=payment.created", Some(&token))
        .await;
    assert_eq!(audit.body["items"].as_array().unwrap().len(), 1);
    // Same key, different body: 422.
    let r = svc
        .create_payment(&token, &key, payment_body("26.00"))
        .await;
    assert_problem(&r, 422);
    assert_eq!(r.body["type"], "urn:ward:problem:idempotency-key-reused");
    // No key at all: 400.
    let r = svc
        .send(
            reqwest::Method::POST,
            "/v1/payments",
            Some(&token),
            Some(payment_body("1.00")),
            &[],
        )
        .await;
    assert_problem(&r, 400);
}
both_stores!(twenty_concurrent_identical_requests_create_exactly_one_payment);

async fn status_changes_follow_the_state_machine(kind: Kind) {
    let svc = Service::start(kind).await;
    let acme = svc.new_tenant("acme").await;
    let t = svc.login(&acme).await.access;
    let id = svc
        .create_payment(&t, &new_key(), payment_body("5.00"))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = svc
        .post(&format!("/v1/payments/{id}/cancel"), Some(&t), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "cancelled");
    let again = svc
        .post(&format!("/v1/payments/{id}/cancel"), Some(&t), json!({}))
        .await;
    assert_problem(&again, 409);
    assert_eq!(again.body["type"], "urn:ward:problem:illegal-transition");
    assert_eq!(
        svc.get(&format!("/v1/payments/{id}"), Some(&t)).await.body["status"],
        "cancelled"
    );
    let audit = svc
        .get(
            &format!("/v1/audit?resource_id={id}&action=payment.cancelled"),
            Some(&t),
        )
        .await;
    assert_eq!(audit.body["items"][0]["details"]["from"], "pending");
    assert_eq!(audit.body["items"][0]["details"]["to"], "cancelled");
    assert_problem(
        &svc.post("/v1/payments/not-a-uuid/cancel", Some(&t), json!({}))
            .await,
        404,
    );
}
both_stores!(status_changes_follow_the_state_machine);

async fn an_unknown_status_in_the_database_is_an_error_not_pending(kind: Kind) {
    let svc = Service::start(kind).await;
    let acme = svc.new_tenant("acme").await;
    let t = svc.login(&acme).await.access;
    let id = svc
        .create_payment(&t, &new_key(), payment_body("5.00"))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let changed = svc
        .db
        .write_unchecked("payments", "status", "bogus", &format!("id = '{id}'"))
        .await;
    assert_eq!(changed, 1);

    // The store names the column and the value instead of reading it as some status.
    let store = svc.store().await;
    let err = store.payment(&acme.tenant_id, &id).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { column: "payments.status", value } if value == "bogus"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        r#"stored data is inconsistent: payments.status holds "bogus""#
    );
    let listed = store
        .list_payments(
            &acme.tenant_id,
            &PaymentFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(
            &listed,
            Err(StoreError::Corrupt {
                column: "payments.status",
                ..
            })
        ),
        "{listed:?}"
    );
    store.close().await;

    // Over HTTP: a 500, never a payment shown as pending, and no move away from a status nobody knows.
    let r = svc.get(&format!("/v1/payments/{id}"), Some(&t)).await;
    assert_problem(&r, 500);
    assert_eq!(r.body["type"], "urn:ward:problem:internal");
    assert_problem(&svc.get("/v1/payments", Some(&t)).await, 500);
    assert_problem(
        &svc.post(&format!("/v1/payments/{id}/cancel"), Some(&t), json!({}))
            .await,
        500,
    );
    let still = svc
        .db
        .raw_count(&format!(
            "SELECT COUNT(*) FROM payments WHERE id = '{id}' AND status = 'bogus'"
        ))
        .await;
    assert_eq!(still, 1, "the cancel changed nothing");
}
both_stores!(an_unknown_status_in_the_database_is_an_error_not_pending);

async fn the_payer_account_is_encrypted_at_rest_and_shown_masked(kind: Kind) {
    let svc = Service::start(kind).await;
    let acme = svc.new_tenant("acme").await;
    let t = svc.login(&acme).await.access;
    let r = svc
        .create_payment(&t, &new_key(), payment_body("5.00"))
        .await;
    assert_eq!(r.body["payer_account"], "****3000");
    let id = r.body["id"].as_str().unwrap();
    let raw = svc
        .db
        .raw_bytes(&format!(
            "SELECT payer_ciphertext FROM payments WHERE id = '{id}'"
        ))
        .await;
    let plaintext = b"DE89370400440532013000";
    assert!(
        raw.len() >= plaintext.len() + 12 + 16,
        "nonce and tag are stored"
    );
    assert!(
        !raw.windows(plaintext.len()).any(|w| w == plaintext),
        "raw column holds no plaintext"
    );
    assert!(!raw.windows(10).any(|w| w == b"3704004405"));
    // Nowhere else in the database either: not in the idempotency record, not in the audit trail.
    for table in ["payments", "idempotency_keys", "audit_log"] {
        let n = svc
            .db
            .raw_count(&format!(
                "SELECT COUNT(*) FROM {table} WHERE {} LIKE '%DE89370400440532013000%' OR {} LIKE '%3704 0044%'",
                text_of(table),
                text_of(table)
            ))
            .await;
        assert_eq!(n, 0, "plaintext found in {table}");
    }
    // It decrypts with the configured key.
    let store = svc.store().await;
    let row = store.payment(&acme.tenant_id, id).await.unwrap().unwrap();
    let opened = svc
        .config
        .data_keys
        .open(&row.payer_key_id, &row.payer_ciphertext, id.as_bytes())
        .unwrap();
    assert_eq!(opened, plaintext);
    store.close().await;
}
both_stores!(the_payer_account_is_encrypted_at_rest_and_shown_masked);

fn text_of(table: &str) -> &'static str {
    match table {
        "payments" => "(description || payer_masked || currency)",
        "idempotency_keys" => "(request_hash || response_body)",
        _ => "(details || resource_id)",
    }
}

async fn every_invalid_input_gets_a_4xx_with_a_clear_message(kind: Kind) {
    let svc = Service::start(kind).await;
    let acme = svc.new_tenant("acme").await;
    let t = svc.login(&acme).await.access;
    let base = || payment_body("12.50");
    let with = |field: &str, value: serde_json::Value| {
        let mut b = base();
        b[field] = value;
        b
    };
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (with("amount", json!("0.00")), 422, "amount"),
        (with("amount", json!("0")), 422, "amount"),
        (with("amount", json!("-5.00")), 422, "amount"),
        (with("amount", json!("1.001")), 422, "amount"),
        (with("amount", json!("10000000.01")), 422, "amount"),
        (with("amount", json!("1e3")), 422, "amount"),
        (with("amount", json!("abc")), 422, "amount"),
        (with("amount", json!(12.5)), 400, "amount"),
        (with("currency", json!("XYZ")), 422, "currency"),
        (with("currency", json!("eur")), 422, "currency"),
        (with("currency", json!("XAU")), 422, "currency"),
        (with("currency", json!("HRK")), 422, "currency"),
        (with("description", json!("a\u{0007}b")), 422, "description"),
        (
            with("description", json!("x".repeat(501))),
            422,
            "description",
        ),
        (
            with("description", json!("evil\u{202E}txt")),
            422,
            "description",
        ),
        (with("payer_account", json!("12")), 422, "payer_account"),
        (
            with("payer_account", json!("DE89<script>")),
            422,
            "payer_account",
        ),
        (
            with("payer_account", json!("DE89\n3704")),
            422,
            "payer_account",
        ),
        (with("surprise", json!(true)), 400, "."),
        (json!({ "amount": "1.00", "currency": "EUR" }), 400, "."),
    ];
    for (body, status, field) in cases {
        let r = svc.create_payment(&t, &new_key(), body.clone()).await;
        assert_problem(&r, status);
        let text = r.body.to_string();
        if field != "." {
            assert!(
                r.body["errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["field"] == field)),
                "{body} should name field {field}: {text}"
            );
        }
        assert!(
            r.body["errors"][0]["message"].as_str().is_some()
                || r.body["detail"].as_str().is_some(),
            "{body} should explain: {text}"
        );
    }
    // JPY has no minor units; BHD has three.
    let mut jpy = base();
    jpy["currency"] = json!("JPY");
    jpy["amount"] = json!("500.5");
    assert_problem(&svc.create_payment(&t, &new_key(), jpy.clone()).await, 422);
    jpy["amount"] = json!("500");
    assert_eq!(
        svc.create_payment(&t, &new_key(), jpy).await.status,
        StatusCode::CREATED
    );
    // Several bad fields at once are all reported.
    let r = svc
        .create_payment(
            &t,
            &new_key(),
            json!({ "amount": "0", "currency": "EUR", "payer_account": "1" }),
        )
        .await;
    assert_eq!(r.body["errors"].as_array().unwrap().len(), 2);
    // NFC normalization: a decomposed é is stored composed.
    let r = svc
        .create_payment(&t, &new_key(), with("description", json!("Cafe\u{301}")))
        .await;
    assert_eq!(r.body["description"], "Caf\u{e9}");
    // Not JSON, wrong media type, too large, trailing garbage, bad query, unknown route and method.
    let r = svc
        .client
        .post(format!("{}/v1/payments", svc.base))
        .bearer_auth(&t)
        .header("idempotency-key", new_key())
        .header("content-type", "text/plain")
        .body("amount=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for raw in ["{", "{\"amount\":\"1.00\"} x", "[]", ""] {
        let r = svc
            .client
            .post(format!("{}/v1/payments", svc.base))
            .bearer_auth(&t)
            .header("idempotency-key", new_key())
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{raw:?}");
    }
    let big = with("description", json!("x".repeat(70 * 1024)));
    assert_problem(&svc.create_payment(&t, &new_key(), big).await, 413);
    assert_problem(&svc.get("/v1/payments?status=lost", Some(&t)).await, 422);
    assert_problem(&svc.get("/v1/payments?limit=1000", Some(&t)).await, 422);
    assert_problem(&svc.get("/v1/payments?limit=ten", Some(&t)).await, 400);
    assert_problem(&svc.get("/v1/payments?cursor=%%%", Some(&t)).await, 422);
    assert_problem(&svc.get("/v1/payments?bogus=1", Some(&t)).await, 400);
    assert_problem(&svc.get("/v1/audit?since=yesterday", Some(&t)).await, 422);
    assert_problem(&svc.get("/v1/nothing", Some(&t)).await, 404);
    assert_problem(
        &svc.send(reqwest::Method::DELETE, "/v1/payments", Some(&t), None, &[])
            .await,
        405,
    );
    let r = svc.try_login("Bad Tenant!", "not-an-email", "").await;
    assert_problem(&r, 422);
    assert_eq!(r.body["errors"].as_array().unwrap().len(), 3);
    let long_key = "k".repeat(300);
    assert_problem(&svc.create_payment(&t, &long_key, base()).await, 422);
}
both_stores!(every_invalid_input_gets_a_4xx_with_a_clear_message);

async fn listing_filters_by_status_and_pages_with_a_cursor(kind: Kind) {
    let svc = Service::start(kind).await;
    let acme = svc.new_tenant("acme").await;
    let t = svc.login(&acme).await.access;
    let mut ids = Vec::new();
    for i in 0..7 {
        let r = svc
            .create_payment(&t, &new_key(), payment_body(&format!("{}.00", i + 1)))
            .await;
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    for id in &ids[..2] {
        svc.post(&format!("/v1/payments/{id}/cancel"), Some(&t), json!({}))
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/payments?limit=3&status=pending&cursor={c}"),
            None => "/v1/payments?limit=3&status=pending".to_string(),
        };
        let r = svc.get(&path, Some(&t)).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        for item in r.body["items"].as_array().unwrap() {
            assert_eq!(item["status"], "pending");
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut expected: Vec<String> = ids[2..].to_vec();
    expected.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, expected, "each pending payment exactly once");
    let cancelled = svc.get("/v1/payments?status=cancelled", Some(&t)).await;
    assert_eq!(cancelled.body["items"].as_array().unwrap().len(), 2);
}
both_stores!(listing_filters_by_status_and_pages_with_a_cursor);

async fn operational_endpoints_answer_and_the_request_id_reaches_logs_and_audit(kind: Kind) {
    let svc = Service::start(kind).await;
    assert_eq!(svc.get("/healthz", None).await.status, StatusCode::OK);
    assert_eq!(svc.get("/readyz", None).await.status, StatusCode::OK);
    let doc = svc.get("/openapi.json", None).await;
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/payments",
        "/v1/payments/{id}/cancel",
        "/v1/webhooks/psp",
        "/v1/audit",
    ] {
        assert!(doc.body["paths"][path].is_object(), "{path} documented");
    }
    let acme = svc.new_tenant("acme").await;
    let t = svc.login(&acme).await.access;
    let r = svc
        .send(
            reqwest::Method::POST,
            "/v1/payments",
            Some(&t),
            Some(payment_body("3.00")),
            &[
                ("idempotency-key", "rid-test"),
                ("x-request-id", "req-from-proxy-123"),
                ("x-forwarded-for", "203.0.113.7"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.headers.get("x-request-id").unwrap(), "req-from-proxy-123");
    let audit = svc.get("/v1/audit?action=payment.created", Some(&t)).await;
    assert_eq!(audit.body["items"][0]["request_id"], "req-from-proxy-123");
    assert_eq!(
        audit.body["items"][0]["client_ip"], "203.0.113.7",
        "XFF from a loopback proxy is believed"
    );
    let metrics = svc
        .client
        .get(format!("{}/metrics", svc.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ward_payments_created_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/v1/payments\""));
}
both_stores!(operational_endpoints_answer_and_the_request_id_reaches_logs_and_audit);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_when_the_database_is_gone() {
    let svc = Service::start(Kind::Postgres).await;
    assert_eq!(svc.get("/readyz", None).await.status, StatusCode::OK);
    let name = svc.db.url.rsplit('/').next().unwrap().to_string();
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(support::service::PG_ADMIN_URL)
            .await
            .unwrap();
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    let r = svc.get("/readyz", None).await;
    assert_problem(&r, 503);
    assert_eq!(
        svc.get("/healthz", None).await.status,
        StatusCode::OK,
        "the process itself is alive"
    );
}
