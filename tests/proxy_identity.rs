//! Identity at the edge, over real TLS to the real proxy, with a real JWKS server and a real
//! recording upstream: valid tokens pass with identity headers, every hostile token gets a 401
//! problem and never reaches the upstream, authorization rules, API keys and shadow mode. JWKS
//! rotation, outages and the verified-token cache are in `proxy_jwks`.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::identity::*;
use support::tokens::{self, claims, compact, DocServer, TestKey};

#[tokio::test]
async fn valid_es256_and_eddsa_tokens_reach_the_upstream_with_the_identity_headers() {
    let w = world().await;
    for key in [&w.es, &w.ed] {
        let token = key.sign(&claims("alice", "t1", &["admin", "ops"]));
        let resp = w
            .proxy
            .client(true)
            .get(w.proxy.url("/v1/payments"))
            .header("authorization", format!("Bearer {token}"))
            .header("x-ward-subject", "mallory")
            .header("x-ward-tenant", "t-evil")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{:?}", key.alg);
        let seen = w.proxy.upstream.last();
        assert_eq!(seen.headers["x-ward-subject"], "alice");
        assert_eq!(seen.headers["x-ward-tenant"], "t1");
        assert_eq!(seen.headers["x-ward-roles"], "admin,ops");
        assert_eq!(seen.headers["x-ward-auth-method"], "jwt");
        assert_eq!(seen.headers.get_all("x-ward-subject").iter().count(), 1);
    }
}

#[tokio::test]
async fn client_sent_identity_headers_are_stripped_on_routes_without_auth() {
    let w = world().await;
    let resp = w
        .proxy
        .client(false)
        .get(w.proxy.url("/public/x"))
        .header("x-ward-subject", "admin")
        .header("x-ward-roles", "admin")
        .header("x-ward-auth-method", "jwt")
        .header("x-api-key", &w.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = w.proxy.upstream.last();
    for h in [
        "x-ward-subject",
        "x-ward-roles",
        "x-ward-auth-method",
        "x-api-key",
    ] {
        assert!(!seen.headers.contains_key(h), "{h} reached the upstream");
    }
}

#[tokio::test]
async fn missing_credentials_get_401_with_a_bearer_challenge() {
    let w = world().await;
    let resp = get(&w, "/v1/payments", None).await;
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"ward\"",
        "no error code without credentials (RFC 6750 §3.1)"
    );
    assert_refused_at_the_edge(&w, resp, "no token", 0).await;
}

/// Every hostile token of the issue's list: 401 problem, never upstream, no key ever fetched
/// from an address a token names.
#[tokio::test]
async fn hostile_tokens_get_401_and_never_reach_the_upstream() {
    let w = world().await;
    let attacker = DocServer::start(None).await;
    let evil = TestKey::es256("es-1"); // the same kid, another key
    let good = claims("alice", "t1", &["admin"]);
    let valid = w.es.sign(&good);
    let parts: Vec<&str> = valid.split('.').collect();
    let (h64, c64, s64) = (parts[0], parts[1], parts[2]);
    let header = |extra: Value| {
        let mut h = json!({"alg": "ES256", "typ": "JWT", "kid": "es-1"});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let sig = URL_SAFE_NO_PAD.decode(s64).unwrap();
    let der = {
        // The same r and s, DER-encoded (what OpenSSL emits, not what JWS carries).
        let int = |b: &[u8]| {
            let b: Vec<u8> = b.iter().copied().skip_while(|&x| x == 0).collect();
            let mut v = if b[0] & 0x80 != 0 { vec![0] } else { vec![] };
            v.extend(b);
            let mut out = vec![0x02, v.len() as u8];
            out.extend(v);
            out
        };
        let (r, s) = (int(&sig[..32]), int(&sig[32..]));
        let mut out = vec![0x30, (r.len() + s.len()) as u8];
        out.extend(r);
        out.extend(s);
        out
    };
    let mut flipped = sig.clone();
    flipped[10] ^= 0x01;
    let now = tokens::now();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        w.es.sign(&c)
    };
    let mut hostile: Vec<(&str, String)> = vec![
        (
            "alg none",
            compact(&json!({"alg": "none", "typ": "JWT"}), &good, b""),
        ),
        (
            "alg none with a dot",
            format!("{}.{c64}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)),
        ),
        (
            "alg None",
            compact(&header(json!({"alg": "None"})), &good, &sig),
        ),
        (
            "alg NONE",
            compact(&header(json!({"alg": "NONE"})), &good, &sig),
        ),
        (
            "missing alg",
            compact(&json!({"typ": "JWT", "kid": "es-1"}), &good, &sig),
        ),
        (
            "zeroed signature (CVE-2022-21449)",
            compact(&header(json!({})), &good, &[0u8; 64]),
        ),
        (
            "flipped signature",
            format!("{h64}.{c64}.{}", URL_SAFE_NO_PAD.encode(&flipped)),
        ),
        (
            "truncated signature",
            format!("{h64}.{c64}.{}", URL_SAFE_NO_PAD.encode(&sig[..40])),
        ),
        (
            "DER signature",
            format!("{h64}.{c64}.{}", URL_SAFE_NO_PAD.encode(&der)),
        ),
        ("tampered payload", {
            let mut c = good.clone();
            c["sub"] = "root".into();
            format!("{h64}.{}.{s64}", URL_SAFE_NO_PAD.encode(c.to_string()))
        }),
        (
            "expired beyond leeway",
            with(&|c| c["exp"] = (now - 31).into()),
        ),
        ("not yet valid", with(&|c| c["nbf"] = (now + 120).into())),
        (
            "missing exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "exp as a string",
            with(&|c| c["exp"] = (now + 600).to_string().into()),
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = "https://evil.test".into()),
        ),
        (
            "issuer with a trailing slash",
            with(&|c| c["iss"] = "https://issuer.test/".into()),
        ),
        (
            "missing issuer",
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
        ),
        ("wrong audience", with(&|c| c["aud"] = "other-api".into())),
        (
            "audience with a trailing slash",
            with(&|c| c["aud"] = "payments-api/".into()),
        ),
        (
            "missing audience",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "unknown kid",
            w.es.sign_with(
                &{
                    let mut h = w.es.header();
                    h.kid = Some("nobody".into());
                    h
                },
                &good,
            ),
        ),
        (
            "path-like kid",
            w.es.sign_with(
                &{
                    let mut h = w.es.header();
                    h.kid = Some("../../../etc/passwd".into());
                    h
                },
                &good,
            ),
        ),
        (
            "non-string kid",
            compact(&header(json!({"kid": 7})), &good, &sig),
        ),
        ("another key under our kid", evil.sign(&good)),
        ("attacker jwk embedded", {
            let mut h = evil.header();
            h.jwk = Some(serde_json::from_value(evil.jwk.clone()).unwrap());
            h.kid = Some("attacker".into());
            evil.sign_with(&h, &good)
        }),
        ("attacker jku", {
            let mut h = evil.header();
            h.jku = Some(attacker.url());
            h.kid = Some("attacker".into());
            evil.sign_with(&h, &good)
        }),
        ("attacker x5u", {
            let mut h = evil.header();
            h.x5u = Some(attacker.url());
            evil.sign_with(&h, &good)
        }),
        ("attacker x5c", {
            let mut h = evil.header();
            h.x5c = Some(vec![URL_SAFE_NO_PAD.encode(b"not a certificate")]);
            evil.sign_with(&h, &good)
        }),
        ("unknown crit", {
            let mut h = w.es.header();
            h.crit = Some(vec!["x-custom".into()]);
            w.es.sign_with(&h, &good)
        }),
        (
            "RS256 header on an EC key",
            compact(&header(json!({"alg": "RS256"})), &good, &sig),
        ),
        (
            "EdDSA header on an EC key",
            compact(&header(json!({"alg": "EdDSA"})), &good, &sig),
        ),
        (
            "ES256 header on an Ed25519 key",
            w.ed.sign_with(
                &{
                    let mut h = w.ed.header();
                    h.alg = Algorithm::EdDSA;
                    h.kid = Some("es-1".into());
                    h
                },
                &good,
            ),
        ),
        ("oversized", with(&|c| c["pad"] = "x".repeat(9000).into())),
        (
            "malformed base64",
            format!("{h64}.{}!.{s64}", &c64[..c64.len() - 1]),
        ),
        ("padded base64", format!("{h64}.{c64}==.{s64}")),
        (
            "non-JSON header",
            format!("{}.{c64}.{s64}", URL_SAFE_NO_PAD.encode("alg=ES256")),
        ),
        (
            "non-JSON payload",
            format!("{h64}.{}.{s64}", URL_SAFE_NO_PAD.encode("sub=alice")),
        ),
        ("two segments", format!("{h64}.{c64}")),
        ("four segments", format!("{valid}.{s64}")),
        ("five segments", format!("{valid}.{s64}.{s64}")),
        ("trailing dot", format!("{valid}.")),
    ];
    // HS256 signed with the public key, in every encoding an attacker might try.
    for (i, form) in
        w.es.public_forms
            .iter()
            .chain(&w.ed.public_forms)
            .enumerate()
    {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(if i < 4 { "es-1" } else { "ed-1" }.into());
        let t = jsonwebtoken::encode(&h, &good, &EncodingKey::from_secret(form)).unwrap();
        hostile.push(("HS256 signed with the public key", t));
    }
    for (what, token) in &hostile {
        let before = w.proxy.upstream.count();
        let resp = get(&w, "/v1/payments", Some(token)).await;
        assert_refused_at_the_edge(&w, resp, what, before).await;
    }
    // The framing of the header itself.
    for (what, value) in [
        ("empty bearer", "Bearer ".to_owned()),
        (
            "Basic scheme",
            format!("Basic {}", URL_SAFE_NO_PAD.encode("alice:secret")),
        ),
        ("token without a scheme", valid.clone()),
    ] {
        let before = w.proxy.upstream.count();
        let resp = w
            .proxy
            .client(false)
            .get(w.proxy.url("/v1/payments"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_refused_at_the_edge(&w, resp, what, before).await;
    }
    assert_eq!(
        attacker.hits(),
        0,
        "ward fetched a key from an address a token named"
    );
    // And the valid token still passes: the refusals above were about the tokens.
    assert_eq!(get(&w, "/v1/payments", Some(&valid)).await.status(), 200);
    let denied = w
        .proxy
        .metric(r#"ward_auth_decisions_total{reason="unauthorized:bad_signature",result="deny",route="api"}"#)
        .await;
    assert!(
        denied >= 4.0,
        "bad signatures are counted by reason: {denied}"
    );
}

#[tokio::test]
async fn two_authorization_headers_and_unallowed_query_tokens_are_refused() {
    let w = world().await;
    let a = w.es.sign(&claims("alice", "t1", &[]));
    let b = w.ed.sign(&claims("bob", "t1", &[]));
    let resp = w
        .proxy
        .client(false)
        .get(w.proxy.url("/v1/payments"))
        .header("authorization", format!("Bearer {a}"))
        .header("authorization", format!("Bearer {b}"))
        .send()
        .await
        .unwrap();
    assert_refused_at_the_edge(&w, resp, "two Authorization headers", 0).await;
    let resp = get(&w, &format!("/v1/payments?access_token={a}"), None).await;
    assert_refused_at_the_edge(&w, resp, "query token where not allowed", 0).await;
    let resp = get(&w, &format!("/v1/payments?access_token={a}"), Some(&a)).await;
    assert_refused_at_the_edge(&w, resp, "query token and header", 0).await;
    // Where the route allows it, the query token works.
    let resp = get(&w, &format!("/query/x?access_token={a}"), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(w.proxy.upstream.last().headers["x-ward-subject"], "alice");
}

#[tokio::test]
async fn roles_claims_scopes_and_tenant_rules_answer_403() {
    let w = world().await;
    let admin = w.es.sign(&claims("alice", "t1", &["admin"]));
    let merchant = w.es.sign(&claims("bob", "t1", &["merchant"]));
    assert_eq!(get(&w, "/admin/users", Some(&admin)).await.status(), 200);
    let resp = get(&w, "/admin/users", Some(&merchant)).await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "urn:ward:problem:forbidden");

    assert_eq!(
        get(&w, "/tenants/t1/payments", Some(&merchant))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&w, "/tenants/t2/payments", Some(&merchant))
            .await
            .status(),
        403
    );

    let mut c = claims("carol", "t1", &[]);
    c["plan"] = "pro".into();
    c["scope"] = "payments:read payments:write".into();
    assert_eq!(
        get(&w, "/premium/x", Some(&w.es.sign(&c))).await.status(),
        200
    );
    c["plan"] = "free".into();
    assert_eq!(
        get(&w, "/premium/x", Some(&w.es.sign(&c))).await.status(),
        403
    );
    c["plan"] = "pro".into();
    c["scope"] = "payments:read".into();
    assert_eq!(
        get(&w, "/premium/x", Some(&w.es.sign(&c))).await.status(),
        403
    );
    let before = w.proxy.upstream.count();
    assert_eq!(get(&w, "/admin/users", Some(&merchant)).await.status(), 403);
    assert_eq!(
        w.proxy.upstream.count(),
        before,
        "a 403 never reaches the upstream"
    );
}

#[tokio::test]
async fn optional_auth_passes_anonymous_callers_but_refuses_bad_tokens() {
    let w = world().await;
    assert_eq!(get(&w, "/optional/x", None).await.status(), 200);
    assert!(!w
        .proxy
        .upstream
        .last()
        .headers
        .contains_key("x-ward-subject"));
    let forged = TestKey::es256("es-1").sign(&claims("alice", "t1", &[]));
    let before = w.proxy.upstream.count();
    let resp = get(&w, "/optional/x", Some(&forged)).await;
    assert_refused_at_the_edge(&w, resp, "forged token on an optional route", before).await;
}

#[tokio::test]
async fn api_keys_authenticate_machine_clients_and_are_never_forwarded() {
    let w = world().await;
    let send = |key: &str, token: Option<&str>| {
        let mut r = w
            .proxy
            .client(false)
            .get(w.proxy.url("/machines/batch"))
            .header("x-api-key", key);
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.send()
    };
    let resp = send(&w.api_key, None).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = w.proxy.upstream.last();
    assert_eq!(seen.headers["x-ward-auth-method"], "api_key");
    assert_eq!(seen.headers["x-ward-subject"], "batch-job");
    assert_eq!(seen.headers["x-ward-tenant"], "t-machines");
    assert!(
        !seen.headers.contains_key("x-api-key"),
        "the key reached the upstream"
    );

    let (other, _) = ward::identity::apikey::generate();
    let before = w.proxy.upstream.count();
    let resp = send(&other, None).await.unwrap();
    assert_refused_at_the_edge(&w, resp, "unknown API key", before).await;
    let t = w.es.sign(&claims("alice", "t1", &[]));
    let resp = send(&w.api_key, Some(&t)).await.unwrap();
    assert_refused_at_the_edge(&w, resp, "API key and token together", before).await;
    // A route that does not accept API keys does not authenticate with one.
    let resp = w
        .proxy
        .client(false)
        .get(w.proxy.url("/v1/payments"))
        .header("x-api-key", &w.api_key)
        .send()
        .await
        .unwrap();
    assert_refused_at_the_edge(&w, resp, "API key where not accepted", before).await;
}

#[tokio::test]
async fn shadow_auth_logs_and_counts_but_lets_the_request_go_on_without_identity() {
    let w = world().await;
    let forged = TestKey::es256("es-1").sign(&claims("alice", "t1", &[]));
    let resp = w
        .proxy
        .client(false)
        .get(w.proxy.url("/shadow/x"))
        .header("authorization", format!("Bearer {forged}"))
        .header("x-ward-subject", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        !w.proxy
            .upstream
            .last()
            .headers
            .contains_key("x-ward-subject"),
        "a shadow refusal forwards no identity"
    );
    let shadow = w
        .proxy
        .metric(r#"ward_shadow_blocks_total{route="shadowed",rule="unauthorized:bad_signature"}"#)
        .await;
    assert_eq!(shadow, 1.0);
}
