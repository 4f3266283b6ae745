//! Stage 4, rate limits (429). Runs before any expensive check, so a flood costs a hash lookup.
//! Every limit of the route is counted; the request is refused if any enforced limit refuses.
//! The returned headers go on every response of a limited route: the IETF `RateLimit-Policy` /
//! `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) and `X-RateLimit-*` for older clients,
//! describing the limit with the fewest requests left.

use std::net::IpAddr;
use std::time::Duration;

use http::{header, HeaderName, HeaderValue, Request};

use crate::limit::{Decision, Limiter, Quota};
use crate::policy::{Mode, RateKey, Route};
use crate::proxy::rejection::Rejection;
use crate::telemetry::Metrics;

/// Headers to add to the response, and the shadow-mode limits that would have refused.
#[derive(Debug, Default)]
pub struct Permit {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub shadowed: Vec<std::sync::Arc<str>>,
}

pub async fn check<B>(
    limiter: &Limiter,
    metrics: &Metrics,
    route: &Route,
    req: &Request<B>,
    client_ip: IpAddr,
) -> (Permit, Result<(), Rejection>) {
    let mut permit = Permit::default();
    if route.rate_limits.is_empty() {
        return (permit, Ok(()));
    }
    let mut tightest: Option<(&crate::policy::RateLimit, Decision)> = None;
    let mut refused: Option<Rejection> = None;
    for rl in &route.rate_limits {
        let key = match &rl.key {
            RateKey::Ip => format!("{}|ip|{client_ip}", rl.name),
            RateKey::IpUserAgent => {
                let ua = req
                    .headers()
                    .get(header::USER_AGENT)
                    .map(|v| v.as_bytes())
                    .unwrap_or_default();
                format!(
                    "{}|ipua|{client_ip}|{}",
                    rl.name,
                    String::from_utf8_lossy(&ua[..ua.len().min(256)])
                )
            }
            RateKey::Route => format!("{}|route|{}", rl.name, route.name),
            RateKey::Header(h) => match req.headers().get(h) {
                Some(v) => format!(
                    "{}|hdr|{}",
                    rl.name,
                    String::from_utf8_lossy(&v.as_bytes()[..v.len().min(256)])
                ),
                // No key header: count by IP so that leaving the header out is no way around the limit.
                None => format!("{}|ip|{client_ip}", rl.name),
            },
        };
        let d = limiter
            .check(
                &key,
                Quota {
                    limit: rl.limit,
                    period: rl.period,
                },
            )
            .await;
        let decision = match (d.allowed, rl.mode) {
            (true, _) => "allowed",
            (false, Mode::Shadow) => "shadow_limited",
            (false, Mode::Enforce) => "limited",
        };
        metrics
            .rate_limit_decisions
            .with_label_values(&[&rl.name, decision])
            .inc();
        if !d.allowed {
            match rl.mode {
                Mode::Shadow => permit.shadowed.push(rl.name.clone()),
                Mode::Enforce => {
                    let retry = refused.as_ref().map_or(Duration::ZERO, |r| match r {
                        Rejection::RateLimited { retry_after, .. } => *retry_after,
                        _ => Duration::ZERO,
                    });
                    if refused.is_none() || d.retry_after > retry {
                        refused = Some(Rejection::RateLimited {
                            limit: rl.name.clone(),
                            retry_after: d.retry_after,
                        });
                    }
                }
            }
        }
        if rl.mode == Mode::Enforce
            && tightest
                .as_ref()
                .is_none_or(|(_, t)| d.remaining < t.remaining || (!d.allowed && t.allowed))
        {
            tightest = Some((rl, d));
        }
    }
    let policies: Vec<&str> = route
        .rate_limits
        .iter()
        .filter(|r| r.mode == Mode::Enforce)
        .map(|r| r.policy_item.as_str())
        .collect();
    if let Some((rl, d)) = tightest {
        let reset = ceil_secs(d.reset_after);
        let mut push = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                permit.headers.push((HeaderName::from_static(name), v));
            }
        };
        push("ratelimit-policy", policies.join(", "));
        push(
            "ratelimit",
            format!("\"{}\";r={};t={}", rl.name, d.remaining, reset),
        );
        push("x-ratelimit-limit", rl.limit.to_string());
        push("x-ratelimit-remaining", d.remaining.to_string());
        push("x-ratelimit-reset", reset.to_string());
        if !d.allowed {
            push("retry-after", ceil_secs(d.retry_after).max(1).to_string());
        }
    }
    if let Some(Rejection::RateLimited { retry_after, .. }) = &refused {
        if !permit.headers.iter().any(|(n, _)| n == header::RETRY_AFTER) {
            permit.headers.push((
                header::RETRY_AFTER,
                HeaderValue::from(ceil_secs(*retry_after).max(1)),
            ));
        }
    }
    (permit, refused.map_or(Ok(()), Err))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
