//! Rate-limit key derivation (`ward::proxy::stage::rate_limit::pre_auth_key` and
//! `identity_key`) on arbitrary headers, addresses and callers.
//!
//! It must never panic; a key always starts with the limit's name and a kind that says what was
//! counted (so an attacker-chosen header value can never make another kind's key); its length is
//! bounded whatever the request holds (values are cut to 256 bytes); a missing key header counts
//! by IP; two requests that differ in what is counted (within the cut) get different keys; the
//! same request always gets the same key.

#![no_main]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ward::identity::{AuthMethod, Principal};
use ward::limit::Fallback;
use ward::policy::{Mode, RateKey, RateLimit};
use ward::proxy::stage::rate_limit::{identity_key, pre_auth_key};

#[derive(Debug, Arbitrary)]
struct Input {
    key: u8,
    ip: [u8; 16],
    v6: bool,
    route: String,
    user_agent: Option<Vec<u8>>,
    header: Option<Vec<u8>>,
    other: Vec<u8>,
    caller: Option<(String, Option<String>, bool)>,
}

const NAME: &str = "lim";

fn limit(key: RateKey) -> RateLimit {
    RateLimit {
        name: Arc::from(NAME),
        key,
        limit: 5,
        period: Duration::from_secs(60),
        mode: Mode::Enforce,
        fallback: Fallback::Deny,
        policy_item: String::new(),
        allowed: Default::default(),
    }
}

fn ip_of(i: &Input) -> IpAddr {
    if i.v6 {
        IpAddr::from(i.ip)
    } else {
        IpAddr::from([i.ip[0], i.ip[1], i.ip[2], i.ip[3]])
    }
}

fn cut(v: &[u8]) -> &[u8] {
    &v[..v.len().min(256)]
}

fuzz_target!(|input: Input| {
    let ip = ip_of(&input);
    let mut headers = HeaderMap::new();
    if let Some(ua) = input.user_agent.as_deref().and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.insert(header::USER_AGENT, ua);
    }
    let hname = HeaderName::from_static("x-client");
    if let Some(h) = input.header.as_deref().and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.insert(hname.clone(), h);
    }
    let kinds = [
        RateKey::Ip,
        RateKey::IpUserAgent,
        RateKey::Route,
        RateKey::Header(hname.clone()),
        RateKey::Subject,
        RateKey::Tenant,
        RateKey::ApiKey,
    ];
    let kind = &kinds[usize::from(input.key) % kinds.len()];
    let rl = limit(kind.clone());
    // Route names are short policy names; keep the input's to 64 characters.
    let route: String = input.route.chars().take(64).collect();
    let route = route.as_str();

    let k = pre_auth_key(&rl, route, &headers, ip);
    assert_eq!(k, pre_auth_key(&rl, route, &headers, ip), "not deterministic");
    assert!(k.len() <= NAME.len() + 4 * 64 + 3 * 256 + 64, "key of {} bytes", k.len());
    let kind_of = |k: &str| k.strip_prefix("lim|").and_then(|r| r.split('|').next()).map(str::to_owned);
    let want = match kind {
        RateKey::IpUserAgent => "ipua",
        RateKey::Route => "route",
        RateKey::Header(h) if headers.contains_key(h) => "hdr",
        _ => "ip",
    };
    assert_eq!(kind_of(&k).as_deref(), Some(want), "{k}");
    if want == "ip" {
        assert_eq!(k, format!("lim|ip|{ip}"));
    }

    // A second request that differs only in the counted value.
    let mut other = headers.clone();
    let changed = match kind {
        RateKey::IpUserAgent => HeaderValue::from_bytes(&input.other).ok().map(|v| other.insert(header::USER_AGENT, v)),
        RateKey::Header(h) => HeaderValue::from_bytes(&input.other).ok().map(|v| other.insert(h.clone(), v)),
        _ => None,
    };
    if changed.is_some() {
        let name = if let RateKey::Header(h) = kind { h.clone() } else { header::USER_AGENT };
        // A missing User-Agent counts as an empty one (same address, same counter); a missing
        // key header counts by IP, which the kind check above covers.
        let value = |h: &HeaderMap| match h.get(&name) {
            Some(v) => Some(cut(v.as_bytes()).to_vec()),
            None if name == header::USER_AGENT => Some(Vec::new()),
            None => None,
        };
        let (a, b) = (value(&headers), value(&other));
        let ka = pre_auth_key(&rl, route, &headers, ip);
        let kb = pre_auth_key(&rl, route, &other, ip);
        let utf8 = |v: &Option<Vec<u8>>| v.as_deref().is_none_or(|v| std::str::from_utf8(v).is_ok());
        if a != b && utf8(&a) && utf8(&b) {
            assert_ne!(ka, kb, "two different values share a counter");
        }
        if a == b {
            assert_eq!(ka, kb, "the same counted value, two counters");
        }
    }

    // After authentication.
    let principal = input.caller.as_ref().map(|(sub, tenant, api)| Principal {
        subject: sub.clone(),
        tenant: tenant.clone(),
        roles: vec![],
        scopes: vec![],
        session: None,
        token_id: None,
        issued_at: None,
        expires_at: None,
        method: if *api { AuthMethod::ApiKey { id: Arc::from(sub.as_str()) } } else { AuthMethod::Jwt { issuer: Arc::from("i") } },
        claims: Arc::default(),
    });
    let k = identity_key(&rl, principal.as_ref(), ip);
    assert_eq!(k, identity_key(&rl, principal.as_ref(), ip));
    match &principal {
        None => assert_eq!(k, format!("lim|ip|{ip}"), "no caller counts by IP"),
        Some(p) => {
            let kind = kind_of(&k).expect("lim|kind|...");
            assert!(["tenant", "key", "sub"].contains(&kind.as_str()), "{k}");
            // (The kind segment is never `ip`: limit names have no `|`, so it is the second field.)
            let counted = &k[NAME.len() + kind.len() + 2..];
            match kind.as_str() {
                "tenant" => assert_eq!(Some(counted), p.tenant.as_deref().map(|t| &t[..t.char_indices().nth(256).map_or(t.len(), |(i, _)| i)])),
                "key" => assert!(matches!(p.method, AuthMethod::ApiKey { .. })),
                _ => assert!(p.subject.starts_with(counted)),
            }
        }
    }
});
