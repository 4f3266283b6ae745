use super::*;

fn compile(yaml: &str) -> Result<Policy, String> {
    compile_sources(&[(PathBuf::from("p.yaml"), yaml.to_owned())]).map_err(|e| e.to_string())
}

const MIN: &str = "version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: all\n";

#[test]
fn minimal_policy_gets_safe_defaults() {
    let p = compile(MIN).unwrap();
    let r = &p.routes[0];
    assert_eq!(r.limits.max_body, 1024 * 1024);
    assert!(!r.limits.methods.contains(&Method::TRACE));
    assert_eq!(p.server.header_read_timeout, Duration::from_secs(10));
}

#[test]
fn unknown_field_is_an_error_with_position() {
    let e = compile("version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: all\n    limits:\n      max_bdy: 1MiB\n").unwrap_err();
    assert!(
        e.starts_with("p.yaml:6:7: routes[0].limits: unknown field `max_bdy`"),
        "{e}"
    );
}

#[test]
fn bad_size_names_the_field_and_position() {
    let e = compile("version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: all\n    limits:\n      max_body: 1 potato\n").unwrap_err();
    assert!(
        e.starts_with("p.yaml:6:17: routes[0].limits.max_body: unknown size unit `potato`"),
        "{e}"
    );
}

#[test]
fn every_semantic_error_is_reported() {
    let e = compile(
        "version: 2\nupstream: {url: 'ftp://x'}\nroutes:\n  - name: a\n    rate_limits: [{name: x, key: bogus, limit: 1, period: 1m}]\n  - name: a\n    deny: {status: 500}\n",
    )
    .unwrap_err();
    for want in [
        "p.yaml: version: unsupported policy version 2",
        "p.yaml: upstream.url: scheme `ftp` is not http or https",
        "p.yaml: routes[0].rate_limits[0].key: `bogus` is not ip",
        "p.yaml: routes[1].name: duplicate route name `a`",
        "p.yaml: routes[1].deny.status: expected a 4xx status, got 500",
    ] {
        assert!(e.contains(want), "missing `{want}` in:\n{e}");
    }
}

#[test]
fn same_rate_limit_name_with_other_settings_is_refused() {
    let e = compile(
        "version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: a\n    rate_limits: [{name: x, key: ip, limit: 1, period: 1m}]\n  - name: b\n    rate_limits: [{name: x, key: ip, limit: 2, period: 1m}]\n",
    )
    .unwrap_err();
    assert!(e.contains("routes[1].rate_limits[0]: rate limit `x` is also defined at p.yaml: routes[0].rate_limits[0]"), "{e}");
}

#[test]
fn route_limits_override_defaults_field_by_field() {
    let p = compile(
        "version: 1\nupstream: {url: http://127.0.0.1:9}\ndefaults:\n  limits: {max_body: 10KiB, max_url: 100}\nroutes:\n  - name: a\n    limits: {max_body: 20}\n",
    )
    .unwrap();
    assert_eq!(p.routes[0].limits.max_body, 20);
    assert_eq!(p.routes[0].limits.max_url, 100);
}

#[test]
fn cors_wildcard_with_credentials_is_refused() {
    let e = compile(
        "version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: a\n    cors: {allow_origins: ['*'], allow_credentials: true}\n",
    )
    .unwrap_err();
    assert!(
        e.contains("routes[0].cors.allow_origins[0]: `*` cannot be combined"),
        "{e}"
    );
}

#[test]
fn origin_patterns_match_one_label() {
    let p = OriginPattern::Subdomain {
        scheme: "https".into(),
        suffix: ".example.com".into(),
    };
    assert!(p.matches("https://app.example.com"));
    assert!(!p.matches("https://a.b.example.com"));
    assert!(!p.matches("http://app.example.com"));
    assert!(!p.matches("https://example.com"));
    assert!(!p.matches("https://evil.com/.example.com"));
}
