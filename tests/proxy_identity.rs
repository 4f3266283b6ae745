//! Identity at the edge, over real TLS to the real proxy, with a real JWKS server and a real
//! recording upstream: valid tokens pass with identity headers, every hostile token gets a 401
//! problem and never reaches the upstream, JWKS rotation and outages, the verified-token cache,
//! authorization rules, API keys and shadow mode.

mod support;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::tokens::{self, claims, compact, jwks, DocServer, TestKey};
use support::{eventually, start_in, Options, Running, Upstream};

const POLICY: &str = r#"
version: 1
upstream: { url: UPSTREAM, idle_timeout: 2s, request_timeout: 5s }
identity:
  issuers:
    - name: test
      issuer: https://issuer.test
      audiences: [payments-api]
      algorithms: [ES256, EdDSA, RS256]
      jwks: { url: JWKS_URL, refresh: 1h, min_refetch: 100ms, timeout: 1s }
      leeway: 30s
    - name: strict
      issuer: https://strict.test
      audiences: [payments-api]
      algorithms: [ES256]
      jwks: { url: JWKS_URL, refresh: 1h, min_refetch: 100ms, timeout: 1s }
      leeway: 0s
  api_keys: { file: keys.yaml }
defaults:
  rate_limits: []
  limits: { max_header_bytes: 32KiB }
routes:
  - name: public
    match: { path: { prefix: /public } }
  - name: admin
    match: { path: { prefix: /admin } }
    auth: { require: required, issuers: [test], roles: [admin] }
  - name: tenants
    match: { path: { prefix: /tenants } }
    auth: { require: required, issuers: [test], tenant: { path_segment: 2 } }
  - name: premium
    match: { path: { prefix: /premium } }
    auth:
      require: required
      issuers: [test]
      claims: [{ claim: plan, one_of: [pro, enterprise] }]
      scopes: [payments:write]
  - name: shadowed
    match: { path: { prefix: /shadow } }
    auth: { require: required, issuers: [test], mode: shadow }
  - name: query
    match: { path: { prefix: /query } }
    auth: { require: required, issuers: [test], token_in_query: true }
  - name: optional
    match: { path: { prefix: /optional } }
    auth: { require: optional, issuers: [test] }
  - name: machines
    match: { path: { prefix: /machines } }
    auth: { require: required, api_keys: true, issuers: [test] }
  - name: short-lived
    match: { path: { prefix: /strict } }
    auth: { require: required, issuers: [strict] }
  - name: api
    match: { path: { prefix: / } }
    auth: { require: required, issuers: [test] }
"#;

struct World {
    proxy: Running,
    jwks: DocServer,
    es: TestKey,
    ed: TestKey,
    api_key: String,
}

async fn world_with(jwks_doc: Option<String>, es: TestKey, ed: TestKey) -> World {
    let jwks = DocServer::start(jwks_doc).await;
    let (api_key, hash) = ward::identity::apikey::generate();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.yaml"),
        format!(
            "keys:\n  - id: batch-job\n    hash: {hash}\n    tenant: t-machines\n    roles: [merchant]\n"
        ),
    )
    .unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(
        &policy_path,
        support::render(POLICY, upstream.addr).replace("JWKS_URL", &jwks.url()),
    )
    .unwrap();
    let proxy = start_in(dir, policy_path, upstream, Options::default()).await;
    World {
        proxy,
        jwks,
        es,
        ed,
        api_key,
    }
}

async fn world() -> World {
    let (es, ed) = (TestKey::es256("es-1"), TestKey::eddsa("ed-1"));
    let doc = jwks(&[&es, &ed]);
    let w = world_with(Some(doc), es, ed).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            w.proxy.admin_get("/readyz").await.0 == 200
        })
        .await,
        "keys load at start"
    );
    w
}

async fn get(w: &World, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = w.proxy.client(false).get(w.proxy.url(path));
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.send().await.expect("the proxy answers")
}

/// A 401 problem from ward itself, and nothing reached the upstream.
async fn assert_refused_at_the_edge(w: &World, resp: reqwest::Response, what: &str, before: usize) {
    assert_eq!(resp.status(), 401, "{what}");
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"))
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["type"] == "urn:ward:problem:invalid-credentials"
            || body["type"] == "urn:ward:problem:authentication-required",
        "{what}: {body}"
    );
    assert_eq!(body["request_id"], id.as_str(), "{what}");
    assert_eq!(
        body.as_object().unwrap().len(),
        4,
        "{what}: no detail: {body}"
    );
    assert_eq!(
        w.proxy.upstream.count(),
        before,
        "{what} reached the upstream"
    );
}

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

#[tokio::test]
async fn a_hot_token_is_verified_once_then_served_from_the_cache() {
    let w = world().await;
    let token = w.ed.sign(&claims("alice", "t1", &[]));
    for _ in 0..5 {
        assert_eq!(get(&w, "/v1/payments", Some(&token)).await.status(), 200);
    }
    let hits = w
        .proxy
        .metric(r#"ward_token_cache_lookups_total{result="hit"}"#)
        .await;
    let misses = w
        .proxy
        .metric(r#"ward_token_cache_lookups_total{result="miss"}"#)
        .await;
    assert_eq!((hits, misses), (4.0, 1.0));
}

#[tokio::test]
async fn a_cached_token_is_refused_once_it_expires() {
    let strict = TestKey::es256("strict-1");
    let w = world_with(Some(jwks(&[&strict])), strict, TestKey::eddsa("unused")).await;
    let now = tokens::now();
    let mut c = claims("alice", "t1", &[]);
    c["iss"] = "https://strict.test".into();
    c["exp"] = (now + 2).into();
    let token = w.es.sign(&c);
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&w, "/strict/x", Some(&token)).await.status() == 200
        })
        .await
    );
    // Served from the cache while valid ...
    assert_eq!(get(&w, "/strict/x", Some(&token)).await.status(), 200);
    assert!(
        w.proxy
            .metric(r#"ward_token_cache_lookups_total{result="hit"}"#)
            .await
            >= 1.0
    );
    // ... and never past exp.
    while tokens::now() < now + 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = w.proxy.upstream.count();
    let resp = get(&w, "/strict/x", Some(&token)).await;
    assert_refused_at_the_edge(&w, resp, "expired cached token", before).await;
}

#[tokio::test]
async fn jwks_rotation_adds_new_keys_and_removes_old_ones_even_from_the_cache() {
    let w = world().await;
    let old = w.es.sign(&claims("alice", "t1", &[]));
    assert_eq!(get(&w, "/v1/payments", Some(&old)).await.status(), 200);
    assert_eq!(
        get(&w, "/v1/payments", Some(&old)).await.status(),
        200,
        "now cached"
    );

    // The issuer rotates: es-2 in, es-1 out.
    let new_key = TestKey::es256("es-2");
    w.jwks.set(Some(jwks(&[&new_key, &w.ed])));
    let new = new_key.sign(&claims("bob", "t1", &[]));
    // The unknown kid triggers an early refetch (at most every min_refetch).
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&w, "/v1/payments", Some(&new)).await.status() == 200
        })
        .await,
        "the new kid is accepted after a refetch"
    );
    let before = w.proxy.upstream.count();
    let resp = get(&w, "/v1/payments", Some(&old)).await;
    assert_refused_at_the_edge(&w, resp, "token of a removed key, cached before", before).await;
}

#[tokio::test]
async fn a_failing_jwks_url_keeps_the_last_good_keys() {
    let w = world().await;
    let token = w.ed.sign(&claims("alice", "t1", &[]));
    w.jwks.set(None);
    // An unknown kid makes ward refetch, which fails: the last good keys keep serving.
    let unknown = TestKey::eddsa("ed-9").sign(&claims("x", "t1", &[]));
    let hits = w.jwks.hits();
    assert_eq!(get(&w, "/v1/payments", Some(&unknown)).await.status(), 401);
    assert!(
        eventually(Duration::from_secs(5), || async { w.jwks.hits() > hits }).await,
        "the refetch happened"
    );
    assert_eq!(get(&w, "/v1/payments", Some(&token)).await.status(), 200);
    // A broken document is no better than none: the last good keys still serve.
    w.jwks
        .set(Some(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into()));
    let hits = w.jwks.hits();
    let unknown = TestKey::eddsa("ed-10").sign(&claims("x", "t1", &[]));
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&w, "/v1/payments", Some(&unknown)).await.status() == 401 && w.jwks.hits() > hits
        })
        .await,
        "the broken document was fetched"
    );
    let fresh = w.ed.sign(&claims("bob", "t1", &[]));
    assert_eq!(get(&w, "/v1/payments", Some(&fresh)).await.status(), 200);
    assert_eq!(
        w.proxy.admin_get("/readyz").await.0,
        200,
        "loaded once: still ready"
    );
    assert!(
        w.proxy
            .metric(r#"ward_jwks_refreshes_total{issuer="test",result="error"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_floor() {
    let w = world().await;
    let garbage: Vec<String> = (0..30)
        .map(|i| TestKey::es256(&format!("garbage-{i}")).sign(&claims("x", "t1", &[])))
        .collect();
    let start = w.jwks.hits();
    let began = std::time::Instant::now();
    for t in &garbage {
        assert_eq!(get(&w, "/v1/payments", Some(t)).await.status(), 401);
    }
    // The floor (min_refetch 100ms) bounds the fetches by the time taken, whatever the number
    // of unknown kids: at most one per 100ms, plus the one in flight.
    let allowed = (began.elapsed().as_millis() / 100) as usize + 2;
    let fetched = w.jwks.hits() - start;
    assert!(
        fetched <= allowed && fetched < garbage.len(),
        "{fetched} fetches for {} unknown kids (at most {allowed})",
        garbage.len()
    );
}

#[tokio::test]
async fn a_cold_start_with_the_jwks_url_down_is_not_ready_and_answers_503_not_401() {
    let (es, ed) = (TestKey::es256("es-1"), TestKey::eddsa("ed-1"));
    let doc = jwks(&[&es, &ed]);
    let w = world_with(None, es, ed).await;
    let (status, why) = w.proxy.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(why.contains("keys not loaded: test"), "{why}");
    let token = w.es.sign(&claims("alice", "t1", &[]));
    let resp = get(&w, "/v1/payments", Some(&token)).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "urn:ward:problem:auth-unavailable");
    assert_eq!(w.proxy.upstream.count(), 0);
    // The issuer comes up: keys load, ward becomes ready, the token passes.
    w.jwks.set(Some(doc));
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.proxy.admin_get("/readyz").await.0 == 200
        })
        .await
    );
    assert_eq!(get(&w, "/v1/payments", Some(&token)).await.status(), 200);
}
