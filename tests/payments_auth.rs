//! Token issuing, rotation, revocation and lockout, against both stores.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::service::{assert_problem, tokens, Kind, Service};
use ward::payments::store::StoreError;

async fn refresh_rotates_and_reuse_revokes_the_family(kind: Kind) {
    let svc = Service::start(kind).await;
    let admin = svc.new_tenant("acme").await;
    let first = svc.login(&admin).await;

    let r = svc
        .post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": first.refresh }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let second = tokens(&r);
    assert_ne!(
        second.refresh, first.refresh,
        "a new refresh token is issued"
    );
    assert_eq!(
        svc.get("/v1/payments", Some(&second.access)).await.status,
        StatusCode::OK
    );

    // The spent token again: reuse. The whole family dies, including the newest tokens.
    let r = svc
        .post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": first.refresh }),
        )
        .await;
    assert_problem(&r, 401);
    let r = svc
        .post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": second.refresh }),
        )
        .await;
    assert_problem(&r, 401);
    assert_problem(&svc.get("/v1/payments", Some(&second.access)).await, 401);
    assert_problem(&svc.get("/v1/payments", Some(&first.access)).await, 401);

    // Another session of the same user is untouched, and the attack is in the audit trail.
    let other = svc.login(&admin).await;
    let audit = svc
        .get(
            "/v1/audit?action=auth.refresh_reuse_detected",
            Some(&other.access),
        )
        .await;
    assert_eq!(audit.status, StatusCode::OK);
    assert_eq!(audit.body["items"].as_array().unwrap().len(), 1);
    // Refresh tokens are stored only as hashes.
    let plain = svc
        .db
        .raw_count(&format!(
            "SELECT COUNT(*) FROM refresh_tokens WHERE token_hash = '{}'",
            first.refresh
        ))
        .await;
    assert_eq!(plain, 0);
}
both_stores!(refresh_rotates_and_reuse_revokes_the_family);

async fn logout_revokes_the_session_and_its_refresh_token(kind: Kind) {
    let svc = Service::start(kind).await;
    let admin = svc.new_tenant("acme").await;
    let t = svc.login(&admin).await;
    let keep = svc.login(&admin).await;
    let r = svc
        .post("/v1/auth/logout", Some(&t.access), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_problem(&svc.get("/v1/payments", Some(&t.access)).await, 401);
    assert_problem(
        &svc.post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": t.refresh }),
        )
        .await,
        401,
    );
    assert_eq!(
        svc.get("/v1/payments", Some(&keep.access)).await.status,
        StatusCode::OK,
        "other sessions live on"
    );
}
both_stores!(logout_revokes_the_session_and_its_refresh_token);

async fn password_change_revokes_every_session_of_the_user(kind: Kind) {
    let svc = Service::start(kind).await;
    let mut admin = svc.new_tenant("acme").await;
    let a = svc.login(&admin).await;
    let b = svc.login(&admin).await;
    let wrong = svc
        .post("/v1/auth/password", Some(&a.access), json!({ "current_password": "not-the-password", "new_password": "a-brand-new-long-password" }))
        .await;
    assert_problem(&wrong, 401);
    let short = svc
        .post(
            "/v1/auth/password",
            Some(&a.access),
            json!({ "current_password": admin.password, "new_password": "short" }),
        )
        .await;
    assert_problem(&short, 422);
    assert_eq!(short.body["errors"][0]["field"], "new_password");
    let r = svc
        .post("/v1/auth/password", Some(&a.access), json!({ "current_password": admin.password, "new_password": "a-brand-new-long-password" }))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    for t in [&a, &b] {
        assert_problem(&svc.get("/v1/payments", Some(&t.access)).await, 401);
        assert_problem(
            &svc.post(
                "/v1/auth/refresh",
                None,
                json!({ "refresh_token": t.refresh }),
            )
            .await,
            401,
        );
    }
    assert_problem(
        &svc.try_login(&admin.tenant, &admin.email, &admin.password)
            .await,
        401,
    );
    admin.password = "a-brand-new-long-password".into();
    svc.login(&admin).await;
}
both_stores!(password_change_revokes_every_session_of_the_user);

async fn five_failures_lock_the_account_and_the_lock_survives_a_restart(kind: Kind) {
    let mut svc = Service::start(kind).await;
    let admin = svc.new_tenant("acme").await;
    // Success resets the counter: 4 failures, a success, 4 failures: still open.
    for _ in 0..4 {
        assert_problem(
            &svc.try_login(&admin.tenant, &admin.email, "wrong-password!")
                .await,
            401,
        );
    }
    svc.login(&admin).await;
    for _ in 0..4 {
        assert_problem(
            &svc.try_login(&admin.tenant, &admin.email, "wrong-password!")
                .await,
            401,
        );
    }
    svc.login(&admin).await;
    // Five in a row lock it: now even the right password is refused, with the same answer.
    for _ in 0..5 {
        assert_problem(
            &svc.try_login(&admin.tenant, &admin.email, "wrong-password!")
                .await,
            401,
        );
    }
    let locked = svc
        .try_login(&admin.tenant, &admin.email, &admin.password)
        .await;
    assert_problem(&locked, 401);
    let unknown = svc
        .try_login(&admin.tenant, "nobody@example.com", "wrong-password!")
        .await;
    assert_eq!(
        locked.body["type"], unknown.body["type"],
        "locked and unknown look the same"
    );
    assert_eq!(locked.body["title"], unknown.body["title"]);
    svc.restart().await;
    assert_problem(
        &svc.try_login(&admin.tenant, &admin.email, &admin.password)
            .await,
        401,
    );
    // The lockout is audited.
    let store = svc.store().await;
    let page = store
        .list_audit(
            &admin.tenant_id,
            &ward::payments::store::AuditFilter {
                action: Some("auth.lockout".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    store.close().await;
}
both_stores!(five_failures_lock_the_account_and_the_lock_survives_a_restart);

async fn lock_ends_after_the_configured_duration(kind: Kind) {
    let db = support::service::TestDb::new(kind).await;
    let mut config = support::service::test_config(&db.url);
    config.lockout.duration = std::time::Duration::from_millis(500);
    let svc = Service::start_with(db, config).await;
    let admin = svc.new_tenant("acme").await;
    for _ in 0..5 {
        svc.try_login(&admin.tenant, &admin.email, "wrong-password!")
            .await;
    }
    assert_problem(
        &svc.try_login(&admin.tenant, &admin.email, &admin.password)
            .await,
        401,
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if svc
            .try_login(&admin.tenant, &admin.email, &admin.password)
            .await
            .status
            == StatusCode::OK
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lock never ended");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
both_stores!(lock_ends_after_the_configured_duration);

async fn unknown_user_and_wrong_password_get_the_same_answer(kind: Kind) {
    let svc = Service::start(kind).await;
    let admin = svc.new_tenant("acme").await;
    let wrong = svc
        .try_login(&admin.tenant, &admin.email, "wrong-password!")
        .await;
    let unknown_user = svc
        .try_login(&admin.tenant, "ghost@example.com", "wrong-password!")
        .await;
    let unknown_tenant = svc
        .try_login("no-such-tenant", &admin.email, "wrong-password!")
        .await;
    for r in [&wrong, &unknown_user, &unknown_tenant] {
        assert_problem(r, 401);
        assert_eq!(r.body["type"], wrong.body["type"]);
        assert_eq!(r.body["title"], wrong.body["title"]);
        assert_eq!(r.body.get("detail"), wrong.body.get("detail"));
    }
}
both_stores!(unknown_user_and_wrong_password_get_the_same_answer);

async fn an_unknown_role_in_the_database_is_an_error_and_signs_nobody_in(kind: Kind) {
    let svc = Service::start(kind).await;
    let admin = svc.new_tenant("acme").await;
    let before = svc.login(&admin).await;
    let changed = svc
        .db
        .write_unchecked(
            "users",
            "role",
            "root",
            &format!("tenant_id = '{}'", admin.tenant_id),
        )
        .await;
    assert_eq!(changed, 1);

    // The store names the column and the value instead of guessing a role.
    let store = svc.store().await;
    let err = store
        .user_for_login(&admin.tenant_id, &admin.email)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { column: "users.role", value } if value == "root"),
        "{err:?}"
    );
    store.close().await;

    // Login and refresh fail before they write anything: no new session, no spent refresh
    // token, no `auth.login_succeeded` or `auth.refresh` record.
    assert_problem(
        &svc.try_login(&admin.tenant, &admin.email, &admin.password)
            .await,
        500,
    );
    assert_problem(
        &svc.post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": before.refresh }),
        )
        .await,
        500,
    );
    let tenant = &admin.tenant_id;
    assert_eq!(
        svc.db
            .raw_count(&format!(
                "SELECT COUNT(*) FROM sessions WHERE tenant_id = '{tenant}'"
            ))
            .await,
        1,
        "only the session from before"
    );
    assert_eq!(
        svc.db.raw_count(&format!(
            "SELECT COUNT(*) FROM refresh_tokens WHERE tenant_id = '{tenant}' AND used_at IS NOT NULL"
        ))
        .await,
        0
    );
    assert_eq!(
        svc.db.raw_count(&format!(
            "SELECT COUNT(*) FROM audit_log WHERE tenant_id = '{tenant}' AND action IN ('auth.login_succeeded', 'auth.refresh')"
        ))
        .await,
        1,
        "only the login from before"
    );
}
both_stores!(an_unknown_role_in_the_database_is_an_error_and_signs_nobody_in);

async fn access_tokens_carry_the_claims_and_verify_with_the_published_jwks(kind: Kind) {
    use base64::Engine;
    let svc = Service::start(kind).await;
    let admin = svc.new_tenant("acme").await;
    let t = svc.login(&admin).await;
    let jwks = svc.get("/.well-known/jwks.json", None).await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.headers["cache-control"], "public, max-age=300");
    let r = svc
        .post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": t.refresh }),
        )
        .await;
    assert_eq!(
        r.headers["cache-control"], "no-store",
        "token responses are never cached"
    );
    let jwk: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.body.clone()).unwrap();
    let header = jsonwebtoken::decode_header(&t.access).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let kid = header.kid.unwrap();
    let key =
        jsonwebtoken::DecodingKey::from_jwk(jwk.find(&kid).expect("kid is published")).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["ward-api"]);
    v.set_issuer(&["ward-payments"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&t.access, &key, &v)
        .unwrap()
        .claims;
    for c in [
        "iss", "aud", "sub", "tenant", "role", "sid", "jti", "iat", "exp",
    ] {
        assert!(claims.get(c).is_some(), "claim {c} missing");
    }
    assert_eq!(claims["tenant"], admin.tenant_id.as_str());
    assert_eq!(claims["role"], "admin");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    // A forged token (signed by another key under the same kid) is refused, and so is a tampered one.
    let other = ward::payments::keys::generate_signing_keypair();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(kid);
    let forged = jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_pem(other.private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_problem(&svc.get("/v1/payments", Some(&forged)).await, 401);
    let mut parts: Vec<String> = t.access.split('.').map(str::to_string).collect();
    let mut payload: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&parts[1])
            .unwrap(),
    )
    .unwrap();
    payload["role"] = "admin".into();
    payload["tenant"] = "00000000-0000-0000-0000-000000000000".into();
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string());
    assert_problem(&svc.get("/v1/payments", Some(&parts.join("."))).await, 401);
}
both_stores!(access_tokens_carry_the_claims_and_verify_with_the_published_jwks);

async fn identity_headers_from_outside_are_ignored(kind: Kind) {
    let svc = Service::start(kind).await;
    let admin = svc.new_tenant("acme").await;
    let r = svc
        .send(
            reqwest::Method::GET,
            "/v1/payments",
            None,
            None,
            &[
                ("x-user-id", "anyone"),
                ("x-tenant-id", admin.tenant_id.as_str()),
                ("x-role", "admin"),
            ],
        )
        .await;
    assert_problem(&r, 401);
}
both_stores!(identity_headers_from_outside_are_ignored);

async fn roles_limit_what_users_may_do(kind: Kind) {
    let svc = Service::start(kind).await;
    let admin = svc.new_tenant("acme").await;
    let at = svc.login(&admin).await;
    let auditor = svc
        .add_user(&at.access, &admin, "audit@example.com", "auditor")
        .await;
    let merchant = svc
        .add_user(&at.access, &admin, "shop@example.com", "merchant")
        .await;
    let aud = svc.login(&auditor).await;
    let mer = svc.login(&merchant).await;
    assert_problem(
        &svc.create_payment(&aud.access, "k1", support::service::payment_body("1.00"))
            .await,
        403,
    );
    assert_eq!(
        svc.create_payment(&mer.access, "k1", support::service::payment_body("1.00"))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_problem(&svc.get("/v1/audit", Some(&mer.access)).await, 403);
    assert_eq!(
        svc.get("/v1/audit", Some(&aud.access)).await.status,
        StatusCode::OK
    );
    let dup = svc
        .post("/v1/users", Some(&at.access), json!({ "email": "SHOP@example.com", "role": "merchant", "password": "long-enough-password" }))
        .await;
    assert_problem(&dup, 409);
    // The same email may exist in another tenant.
    let other = svc.new_tenant("globex").await;
    let ot = svc.login(&other).await;
    svc.add_user(&ot.access, &other, "shop@example.com", "merchant")
        .await;
}
both_stores!(roles_limit_what_users_may_do);

async fn keys_rotate_without_logging_anyone_out(kind: Kind) {
    use ward::payments::keys::{generate_signing_keypair, SigningKeys};
    let db = support::service::TestDb::new(kind).await;
    let old = generate_signing_keypair();
    let new = generate_signing_keypair();
    let mut config = support::service::test_config(&db.url);
    config.tokens.keys = SigningKeys::from_pems("old", &old.private_pem, &[]).unwrap();
    let mut svc = Service::start_with(db, config).await;
    let admin = svc.new_tenant("acme").await;
    let before = svc.login(&admin).await;

    // Rotate: "new" signs, "old" only verifies.
    svc.stop().await;
    svc.config.tokens.keys = SigningKeys::from_pems(
        "new",
        &new.private_pem,
        &[("old".into(), old.public_pem.clone())],
    )
    .unwrap();
    svc.restart().await;
    assert_eq!(
        svc.get("/v1/payments", Some(&before.access)).await.status,
        StatusCode::OK
    );
    let jwks = svc.get("/.well-known/jwks.json", None).await;
    let kids: Vec<&str> = jwks.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["new", "old"]);
    let after = svc.login(&admin).await;
    assert_eq!(
        jsonwebtoken::decode_header(&after.access)
            .unwrap()
            .kid
            .as_deref(),
        Some("new")
    );

    // Retire "old" completely: its tokens stop verifying.
    svc.stop().await;
    svc.config.tokens.keys = SigningKeys::from_pems("new", &new.private_pem, &[]).unwrap();
    svc.restart().await;
    assert_problem(&svc.get("/v1/payments", Some(&before.access)).await, 401);
    assert_eq!(
        svc.get("/v1/payments", Some(&after.access)).await.status,
        StatusCode::OK
    );
}
both_stores!(keys_rotate_without_logging_anyone_out);
