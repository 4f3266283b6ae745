//! Rate limits, counted in two places of the pipeline:
//!
//! - stage 4, before authentication, the limits keyed by the connection and the request (client
//!   IP, IP and User-Agent, route, a header): a flood of forged tokens is refused here and costs
//!   no signature check;
//! - stage 8, after authorization, the limits keyed by the verified caller (subject, tenant, API
//!   key id) and an API key's own limit.
//!
//! Both add to one [`Permit`], whose tightest enforced decision becomes the RateLimit headers of
//! the response: the IETF `RateLimit-Policy` / `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers) and `X-RateLimit-*` for older clients. The request is
//! refused (429) if any enforced limit refuses; a limit whose shared store is down follows its
//! fallback (count locally, or 503).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue};

use super::headers::per_response;
use crate::client_ip::IpText;
use crate::identity::{AuthMethod, Principal};
use crate::limit::{Checked, Decision, Limiter, Quota, Source, Unavailable};
use crate::policy::{Mode, Policy, RateKey, RateLimit, Route};
use crate::proxy::rejection::Rejection;
use crate::telemetry::Metrics;

// Constants, so the names are checked once at compile time, not on every response.
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// What the limiter stages need besides the request.
pub struct Limits<'a> {
    pub limiter: &'a Limiter,
    pub metrics: &'a Metrics,
    pub policy: &'a Policy,
}

/// The limits counted so far for one request.
#[derive(Debug, Default)]
pub struct Permit {
    /// The enforced limit with the fewest requests left (a refusing one first).
    tightest: Option<(Arc<str>, u32, Decision)>,
    /// An API key's own limit, added to the route's RateLimit-Policy.
    extra_policy: Option<String>,
    /// Shadow-mode limits that would have refused.
    pub shadowed: Vec<Arc<str>>,
}

impl Permit {
    /// Sets the RateLimit headers on the response (none when no enforced limit was counted);
    /// the values that change from one response to the next are marked `per_response`. The four
    /// values share one buffer, each number written once: one allocation, not one per value, and
    /// no list of pairs in between (1,000 instructions less per response, callgrind).
    pub fn write_headers(&self, route: &Route, h: &mut HeaderMap) {
        let Some((name, limit, d)) = &self.tightest else {
            return;
        };
        let policy = match (&route.rate_limit_policy, &self.extra_policy) {
            (Some(p), None) => Some(p.clone()),
            (Some(p), Some(extra)) => {
                HeaderValue::from_str(&format!("{}, {extra}", p.to_str().unwrap_or(""))).ok()
            }
            (None, Some(extra)) => HeaderValue::from_str(extra).ok(),
            (None, None) => None,
        };
        if let Some(p) = policy {
            h.insert(RATELIMIT_POLICY, p);
        }
        // `"<name>";r=<remaining>;t=<reset><limit>`: the X-RateLimit values are slices of it.
        let reset = ceil_secs(d.reset_after);
        let mut text = String::with_capacity(name.len() + 48);
        text.push('"');
        text.push_str(name);
        text.push_str("\";r=");
        let remaining_at = text.len();
        push_decimal(&mut text, u64::from(d.remaining));
        let remaining_end = text.len();
        text.push_str(";t=");
        let reset_at = text.len();
        push_decimal(&mut text, reset);
        let item = text.len();
        push_decimal(&mut text, u64::from(*limit));
        let all = Bytes::from(text);
        let value = |from: usize, to: usize| HeaderValue::from_maybe_shared(all.slice(from..to));
        if let Ok(v) = value(0, item) {
            h.insert(RATELIMIT, per_response(v));
        }
        let numbers = [
            (X_RATELIMIT_LIMIT, item, all.len(), false),
            (X_RATELIMIT_REMAINING, remaining_at, remaining_end, true),
            (X_RATELIMIT_RESET, reset_at, item, true),
        ];
        for (n, from, to, changes) in numbers {
            let v = value(from, to).expect("digits are a valid header value");
            h.insert(n, if changes { per_response(v) } else { v });
        }
    }

    fn note(&mut self, name: &Arc<str>, limit: u32, d: Decision) {
        let tighter = self.tightest.as_ref().is_none_or(|(_, _, t)| {
            (!d.allowed && t.allowed) || (d.allowed == t.allowed && d.remaining < t.remaining)
        });
        if tighter {
            self.tightest = Some((name.clone(), limit, d));
        }
    }
}

/// Stage 4: the limits keyed by the connection and the request.
pub async fn check_pre_auth(
    ctx: &Limits<'_>,
    route: &Route,
    headers: &HeaderMap,
    client_ip: IpAddr,
    permit: &mut Permit,
) -> Result<(), Rejection> {
    match route.rate_limits.as_slice() {
        [] => Ok(()),
        [one] => {
            let key = pre_auth_key(one, &route.name, headers, client_ip);
            let checked = count(ctx, one, &key, quota(one)).await;
            settle(ctx, [(one, checked)], permit)
        }
        many => {
            let checks = many.iter().map(|rl| async move {
                let key = pre_auth_key(rl, &route.name, headers, client_ip);
                (rl, count(ctx, rl, &key, quota(rl)).await)
            });
            settle(ctx, futures_util::future::join_all(checks).await, permit)
        }
    }
}

/// Stage 8: the limits keyed by the verified caller, and an API key's own limit.
pub async fn check_identity(
    ctx: &Limits<'_>,
    route: &Route,
    principal: Option<&Principal>,
    client_ip: IpAddr,
    permit: &mut Permit,
) -> Result<(), Rejection> {
    let own = principal.and_then(|p| api_key_limit(ctx.policy, p));
    if route.identity_rate_limits.is_empty() && own.is_none() {
        return Ok(());
    }
    let checks = route.identity_rate_limits.iter().map(|rl| async move {
        let key = identity_key(rl, principal, client_ip);
        (rl, count(ctx, rl, &key, quota(rl)).await)
    });
    let mut results = futures_util::future::join_all(checks).await;
    let own_result;
    if let Some((rl, id)) = &own {
        permit.extra_policy = Some(rl.policy_item.clone());
        let key = format!("{}|key|{id}", rl.name);
        own_result = count(ctx, rl, &key, quota(rl)).await;
        results.push((rl, own_result));
    }
    settle(ctx, results, permit)
}

fn quota(rl: &RateLimit) -> Quota {
    Quota {
        limit: rl.limit,
        period: rl.period,
    }
}

async fn count(
    ctx: &Limits<'_>,
    rl: &RateLimit,
    key: &str,
    quota: Quota,
) -> Result<Checked, Unavailable> {
    ctx.limiter
        .check(key, quota, rl.fallback, &ctx.policy.server.redis)
        .await
}

/// Records every decision, fills the permit, and refuses if an enforced limit refused.
fn settle<'r>(
    ctx: &Limits<'_>,
    results: impl IntoIterator<Item = (&'r RateLimit, Result<Checked, Unavailable>)>,
    permit: &mut Permit,
) -> Result<(), Rejection> {
    let mut refused: Option<Rejection> = None;
    for (rl, result) in results {
        let label = |decision: &str| {
            ctx.metrics
                .rate_limit_decisions
                .with_label_values(&[&rl.name, decision])
                .inc();
        };
        let checked = match result {
            Ok(c) => c,
            Err(Unavailable { retry_after }) => {
                label("unavailable");
                if rl.mode == Mode::Enforce && refused.is_none() {
                    refused = Some(Rejection::RateLimitUnavailable {
                        limit: rl.name.clone(),
                        retry_after,
                    });
                }
                continue;
            }
        };
        if checked.source == Source::LocalFallback {
            ctx.metrics
                .rate_limit_fallbacks
                .with_label_values(&[&rl.name])
                .inc();
        }
        let d = checked.decision;
        match (d.allowed, rl.mode) {
            (true, _) => rl
                .allowed
                .get(ctx.metrics, |m| {
                    m.rate_limit_decisions
                        .with_label_values(&[&rl.name, "allowed"])
                })
                .inc(),
            (false, Mode::Shadow) => {
                label("shadow_limited");
                permit.shadowed.push(rl.name.clone());
            }
            (false, Mode::Enforce) => {
                label("limited");
                let later = match &refused {
                    Some(Rejection::RateLimited { retry_after, .. }) => {
                        d.retry_after > *retry_after
                    }
                    Some(_) => false,
                    None => true,
                };
                if later {
                    refused = Some(Rejection::RateLimited {
                        limit: rl.name.clone(),
                        retry_after: d.retry_after,
                    });
                }
            }
        }
        if rl.mode == Mode::Enforce {
            permit.note(&rl.name, rl.limit, d);
        }
    }
    refused.map_or(Ok(()), Err)
}

/// The counter key of a limit counted before authentication. Header values and User-Agents are
/// cut to 256 bytes; a missing key header counts by IP, so leaving it out is no way around.
pub fn pre_auth_key(rl: &RateLimit, route: &str, headers: &HeaderMap, client_ip: IpAddr) -> String {
    let cut = |v: &[u8]| String::from_utf8_lossy(&v[..v.len().min(256)]).into_owned();
    match &rl.key {
        RateKey::Ip => ip_key(&rl.name, client_ip),
        RateKey::IpUserAgent => {
            let ua = headers
                .get(header::USER_AGENT)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            format!("{}|ipua|{client_ip}|{}", rl.name, cut(ua))
        }
        RateKey::Route => format!("{}|route|{route}", rl.name),
        RateKey::Header(h) => match headers.get(h) {
            Some(v) => format!("{}|hdr|{}", rl.name, cut(v.as_bytes())),
            None => ip_key(&rl.name, client_ip),
        },
        // Identity keys are counted in stage 8; compile keeps them out of this list.
        RateKey::Subject | RateKey::Tenant | RateKey::ApiKey => ip_key(&rl.name, client_ip),
    }
}

/// `<limit>|ip|<address>`, the key of most limits, built without `format!` (every request
/// builds one).
fn ip_key(name: &str, ip: IpAddr) -> String {
    let mut key = String::with_capacity(name.len() + 4 + 45);
    key.push_str(name);
    key.push_str("|ip|");
    key.push_str(IpText::new(ip).as_str());
    key
}

fn push_decimal(out: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
}

/// The counter key of a limit counted by the verified caller. Without a caller (optional
/// authentication, or a shadow-mode refusal) the request counts by IP; a caller without a tenant
/// counts by subject, and a caller that is not an API key by subject.
pub fn identity_key(rl: &RateLimit, principal: Option<&Principal>, client_ip: IpAddr) -> String {
    let cut = |s: &str| s.chars().take(256).collect::<String>();
    let Some(p) = principal else {
        return ip_key(&rl.name, client_ip);
    };
    match (&rl.key, &p.tenant, &p.method) {
        (RateKey::Tenant, Some(t), _) => format!("{}|tenant|{}", rl.name, cut(t)),
        (RateKey::ApiKey, _, AuthMethod::ApiKey { id }) => format!("{}|key|{id}", rl.name),
        _ => format!("{}|sub|{}", rl.name, cut(&p.subject)),
    }
}

/// An API key's own limit, as a rate limit named `api_key` counted per key id.
fn api_key_limit(policy: &Policy, p: &Principal) -> Option<(RateLimit, Arc<str>)> {
    let AuthMethod::ApiKey { id } = &p.method else {
        return None;
    };
    let table = policy.identity.api_keys.as_ref()?;
    let key = table.keys.keys.iter().find(|k| k.id == *id)?;
    let (limit, period) = key.rate_limit?;
    Some((
        RateLimit {
            name: Arc::from("api_key"),
            key: RateKey::ApiKey,
            limit,
            period,
            mode: Mode::Enforce,
            fallback: crate::limit::Fallback::Local { share: 1.0 },
            policy_item: format!("\"api_key\";q={limit};w={}", period.as_secs()),
            allowed: Default::default(),
        },
        id.clone(),
    ))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(key: RateKey) -> RateLimit {
        RateLimit {
            name: Arc::from("l"),
            key,
            limit: 5,
            period: Duration::from_secs(60),
            mode: Mode::Enforce,
            fallback: crate::limit::Fallback::Deny,
            policy_item: String::new(),
            allowed: Default::default(),
        }
    }

    fn principal(tenant: Option<&str>, method: AuthMethod) -> Principal {
        Principal {
            subject: "alice".into(),
            tenant: tenant.map(str::to_owned),
            roles: vec![],
            scopes: vec![],
            session: None,
            token_id: None,
            issued_at: None,
            expires_at: None,
            method,
            claims: Arc::default(),
        }
    }

    #[test]
    fn pre_auth_keys_come_from_the_connection_and_the_request() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::USER_AGENT, HeaderValue::from_static("curl/8"));
        h.insert("x-client", HeaderValue::from_str(&"c".repeat(400)).unwrap());
        assert_eq!(
            pre_auth_key(&limit(RateKey::Ip), "r", &h, ip),
            "l|ip|10.1.2.3"
        );
        assert_eq!(
            pre_auth_key(&limit(RateKey::IpUserAgent), "r", &h, ip),
            "l|ipua|10.1.2.3|curl/8"
        );
        assert_eq!(
            pre_auth_key(&limit(RateKey::Route), "r", &h, ip),
            "l|route|r"
        );
        let by_header = limit(RateKey::Header(HeaderName::from_static("x-client")));
        assert_eq!(
            pre_auth_key(&by_header, "r", &h, ip).len(),
            "l|hdr|".len() + 256
        );
        let missing = limit(RateKey::Header(HeaderName::from_static("x-other")));
        assert_eq!(pre_auth_key(&missing, "r", &h, ip), "l|ip|10.1.2.3");
        for ip in ["0.0.0.0", "255.10.0.199", "2001:db8::1", "::ffff:1.2.3.4"] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(
                pre_auth_key(&limit(RateKey::Ip), "r", &h, parsed),
                format!("l|ip|{parsed}")
            );
        }
        let mut n = String::new();
        for v in [0, 7, 10, 99, 100, u64::from(u32::MAX), u64::MAX] {
            n.clear();
            push_decimal(&mut n, v);
            assert_eq!(n, v.to_string());
        }
    }

    #[test]
    fn identity_keys_come_from_the_verified_caller() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let jwt = AuthMethod::Jwt { issuer: "i".into() };
        let p = principal(Some("t1"), jwt.clone());
        assert_eq!(
            identity_key(&limit(RateKey::Tenant), Some(&p), ip),
            "l|tenant|t1"
        );
        assert_eq!(
            identity_key(&limit(RateKey::Subject), Some(&p), ip),
            "l|sub|alice"
        );
        assert_eq!(
            identity_key(&limit(RateKey::ApiKey), Some(&p), ip),
            "l|sub|alice"
        );
        let no_tenant = principal(None, jwt);
        assert_eq!(
            identity_key(&limit(RateKey::Tenant), Some(&no_tenant), ip),
            "l|sub|alice"
        );
        let key = principal(None, AuthMethod::ApiKey { id: "batch".into() });
        assert_eq!(
            identity_key(&limit(RateKey::ApiKey), Some(&key), ip),
            "l|key|batch"
        );
        assert_eq!(
            identity_key(&limit(RateKey::Tenant), None, ip),
            "l|ip|10.1.2.3"
        );
    }

    #[test]
    fn the_tightest_decision_names_the_headers() {
        let d = |allowed, remaining| Decision {
            allowed,
            remaining,
            reset_after: Duration::from_millis(1500),
            retry_after: Duration::ZERO,
        };
        let mut p = Permit::default();
        p.note(&Arc::from("wide"), 100, d(true, 90));
        p.note(&Arc::from("narrow"), 5, d(true, 2));
        p.note(&Arc::from("wider"), 1000, d(true, 900));
        assert_eq!(&*p.tightest.as_ref().unwrap().0, "narrow");
        p.note(&Arc::from("refusing"), 10, d(false, 0));
        p.note(&Arc::from("later"), 3, d(true, 0));
        assert_eq!(&*p.tightest.as_ref().unwrap().0, "refusing");
    }
}
