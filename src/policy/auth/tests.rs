use std::path::PathBuf;

use crate::policy::compile::compile_sources;

fn compile(yaml: &str) -> Result<crate::policy::Policy, String> {
    compile_sources(&[(PathBuf::from("p.yaml"), yaml.to_owned())]).map_err(|e| e.to_string())
}

fn with_identity(identity: &str, route_auth: &str) -> String {
    format!(
        "version: 1\nupstream: {{url: http://127.0.0.1:9}}\nidentity:\n{identity}\nroutes:\n  - name: api\n    auth: {route_auth}\n"
    )
}

const ISSUER: &str = "  issuers:\n    - name: main\n      issuer: https://issuer.example\n      audiences: [api]\n      algorithms: [ES256]\n      jwks: {url: https://issuer.example/jwks.json}";

#[test]
fn a_good_issuer_compiles_with_safe_defaults() {
    let p = compile(&with_identity(
        ISSUER,
        "{require: required, issuers: [main]}",
    ))
    .unwrap();
    let is = &p.identity.issuers[0];
    assert_eq!(is.rules.leeway, 30);
    assert_eq!(is.rules.max_token_bytes, 8 * 1024);
    assert_eq!(is.rules.claims.subject, "sub");
    assert_eq!(p.identity.cache_max_entries, 100_000);
    assert_eq!(p.routes[0].auth.issuers.len(), 1);
    assert_eq!(p.identity.headers.subject, "x-ward-subject");
}

#[test]
fn none_is_refused_in_any_spelling() {
    for none in ["none", "None", "NONE"] {
        let e = compile(&with_identity(
            &ISSUER.replace("[ES256]", &format!("[ES256, {none}]")),
            "{require: required, issuers: [main]}",
        ))
        .unwrap_err();
        assert!(
            e.contains("p.yaml: identity.issuers[0].algorithms[1]: `none` means an unsigned token: never accepted"),
            "{e}"
        );
    }
}

#[test]
fn a_secret_in_the_policy_text_is_refused() {
    let e = compile(&with_identity(
        "  issuers:\n    - name: h\n      issuer: i\n      audiences: [a]\n      algorithms: [HS256]\n      hmac: {secret: 'correct horse battery staple and more'}",
        "{require: required, issuers: [h]}",
    ))
    .unwrap_err();
    assert!(
        e.contains("identity.issuers[0].hmac.secret: a secret never goes in the policy text"),
        "{e}"
    );
    assert!(
        !e.contains("correct horse"),
        "the secret is not echoed: {e}"
    );
}

#[test]
fn hmac_needs_a_secret_source_and_never_mixes_with_public_keys() {
    let e = compile(&with_identity(
        &ISSUER.replace("[ES256]", "[HS256]"),
        "{require: required, issuers: [main]}",
    ))
    .unwrap_err();
    assert!(
        e.contains("identity.issuers[0].algorithms: an HMAC algorithm needs an `hmac` secret source, not `jwks`"),
        "{e}"
    );
    let e = compile(&with_identity(
        &ISSUER.replace("[ES256]", "[ES256, HS256]"),
        "{require: required, issuers: [main]}",
    ))
    .unwrap_err();
    assert!(
        e.contains("HMAC and public-key algorithms cannot share an issuer"),
        "{e}"
    );
    let e = compile(&with_identity(
        "  issuers:\n    - name: h\n      issuer: i\n      audiences: [a]\n      algorithms: [HS256]\n      hmac: {secret_env: WARD_TEST_SURELY_UNSET_VARIABLE}",
        "{require: required, issuers: [h]}",
    ))
    .unwrap_err();
    assert!(
        e.contains("identity.issuers[0].hmac.secret_env: environment variable `WARD_TEST_SURELY_UNSET_VARIABLE` is not set"),
        "{e}"
    );
}

#[test]
fn an_hmac_issuer_from_a_file_must_be_named_by_the_route() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let identity = format!(
        "  issuers:\n    - name: h\n      issuer: i\n      audiences: [a]\n      algorithms: [HS256]\n      hmac: {{secret_file: {}}}",
        secret.display()
    );
    let ok = compile(&with_identity(
        &identity,
        "{require: required, issuers: [h]}",
    ))
    .unwrap();
    assert_eq!(ok.watched_files, std::slice::from_ref(&secret));
    let inherited = format!(
        "version: 1\nupstream: {{url: http://127.0.0.1:9}}\nidentity:\n{identity}\ndefaults:\n  auth: {{issuers: [h]}}\nroutes:\n  - name: api\n    auth: {{require: required}}\n"
    );
    let e = compile(&inherited).unwrap_err();
    assert!(
        e.contains("defaults.auth.issuers[0]: HMAC issuer `h` must be named by each route"),
        "{e}"
    );
}

#[test]
fn unknown_issuers_and_missing_key_sources_are_refused() {
    let e = compile(&with_identity(
        ISSUER,
        "{require: required, issuers: [mian]}",
    ))
    .unwrap_err();
    assert!(
        e.contains(
            "routes[0].auth.issuers[0]: unknown issuer `mian` (define it under identity.issuers)"
        ),
        "{e}"
    );
    let e = compile(&with_identity(ISSUER, "{require: required}")).unwrap_err();
    assert!(
        e.contains("authentication is required but no issuer and no API keys are accepted"),
        "{e}"
    );
    let e = compile(&with_identity(
        &ISSUER.replace(
            "jwks: {url: https://issuer.example/jwks.json}",
            "leeway: 10s",
        ),
        "{require: required, issuers: [main]}",
    ))
    .unwrap_err();
    assert!(
        e.contains("identity.issuers[0]: give exactly one of `jwks` and `hmac`"),
        "{e}"
    );
    let e = compile(&with_identity(
        &ISSUER.replace(
            "https://issuer.example/jwks.json",
            "http://issuer.example/jwks.json",
        ),
        "{require: required, issuers: [main]}",
    ))
    .unwrap_err();
    assert!(
        e.contains("identity.issuers[0].jwks.url: must be https://"),
        "{e}"
    );
    let e = compile(&with_identity(
        &ISSUER.replace("audiences: [api]", "audiences: []"),
        "{require: required, issuers: [main]}",
    ))
    .unwrap_err();
    assert!(
        e.contains("identity.issuers[0].audiences: list at least one"),
        "{e}"
    );
}

#[test]
fn authorization_rules_need_required_auth_and_identity_limits_need_auth() {
    let e = compile(&with_identity(
        ISSUER,
        "{require: optional, issuers: [main], roles: [admin]}",
    ))
    .unwrap_err();
    assert!(e.contains("routes[0].auth.require: roles, scopes, claims or tenant rules need `require: required`"), "{e}");
    let e = compile(
        "version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: api\n    rate_limits: [{name: t, key: tenant, limit: 1, period: 1m}]\n",
    )
    .unwrap_err();
    assert!(
        e.contains("routes[0].rate_limits[0].key: `tenant` counts by the verified caller, but route `api` does not authenticate"),
        "{e}"
    );
}

#[test]
fn api_key_files_hold_hashes_only() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    std::fs::write(
        &keys,
        "keys:\n  - id: k1\n    hash: wk_plaintextkeyinsteadofahash\n",
    )
    .unwrap();
    let policy = format!(
        "version: 1\nupstream: {{url: http://127.0.0.1:9}}\nidentity:\n  api_keys: {{file: {}}}\nroutes:\n  - name: api\n    auth: {{require: required, api_keys: true}}\n",
        keys.display()
    );
    let e = compile(&policy).unwrap_err();
    assert!(
        e.contains("keys[0].hash: expected `sha256:` and 64 hex digits"),
        "{e}"
    );
    assert!(!e.contains("wk_plaintext"), "the key is not echoed: {e}");
    let (_, hash) = crate::identity::apikey::generate();
    std::fs::write(
        &keys,
        format!("keys:\n  - id: k1\n    hash: {hash}\n    rate_limit: {{limit: 10, period: 1m}}\n"),
    )
    .unwrap();
    let p = compile(&policy).unwrap();
    let table = p.identity.api_keys.as_ref().unwrap();
    assert_eq!(table.header, "x-api-key");
    assert_eq!(
        table.keys.keys[0].rate_limit,
        Some((10, std::time::Duration::from_secs(60)))
    );
}
