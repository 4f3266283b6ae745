//! THE request pipeline. `handle` is the infallible shell: it loads the policy snapshot once,
//! runs the stages, turns a `Rejection` into a problem+json response, hardens every response
//! and records the outcome. `run_stages` lists every security stage, in order, one line each.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;

use super::rejection::AuthFault;
use super::rejection::Rejection;
use super::stage;
use super::stage::authn::Verifier;
use super::stage::rate_limit::{Limits, Permit};
use super::stage::session::{About, Pending, Sessions};
use super::token_cache::TokenCache;
use super::upstream::InBody;
use super::upstream::{self, Forwarded, ProxyBody, UpstreamClient};
use crate::identity::Principal;
use crate::keystore::KeyStore;
use crate::limit::Limiter;
use crate::policy::spec::Unsynced;
use crate::policy::{Mode, Policy, PolicyStore, Route};
use crate::state::events::{EventKind, SecurityEvent, SecurityEvents};
use crate::state::lockout::Lockouts;
use crate::state::refresh::RefreshClaims;
use crate::state::revocation::{Revocations, Verdict};
use crate::telemetry::Metrics;

static EMPTY_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

/// What every request handler shares.
pub struct Shared {
    pub policy: Arc<PolicyStore>,
    /// Live JWKS keys, beside the policy (keys change on the issuer's schedule, not the operator's).
    pub keys: Arc<KeyStore>,
    pub tokens: TokenCache,
    pub limiter: Limiter,
    pub revocations: Arc<Revocations>,
    pub refresh: RefreshClaims,
    pub lockouts: Lockouts,
    pub events: SecurityEvents,
    /// The lockout HMAC key when the policy names none (one per process: fine for one replica).
    pub own_lockout_key: [u8; 32],
    /// The control API's bearer token; `None`: the API is off.
    pub admin_token: Option<Arc<[u8]>>,
    pub metrics: Metrics,
    pub client: UpstreamClient,
    /// Set on SIGTERM: /readyz answers 503 from then on.
    pub draining: AtomicBool,
}

impl Shared {
    /// The session stores, as stage 9 needs them for one policy snapshot.
    fn sessions<'a>(&'a self, policy: &'a Policy) -> Sessions<'a> {
        Sessions {
            policy,
            refresh: &self.refresh,
            lockouts: &self.lockouts,
            revocations: &self.revocations,
            events: &self.events,
            lockout_key: policy
                .sessions
                .lockout_key
                .as_ref()
                .map_or(&self.own_lockout_key[..], |k| &k.0[..]),
            store_errors: &self.metrics.session_store_errors,
        }
    }
}

/// What the transport knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub proto: &'static str,
}

/// What the stages learn about one request, for the response and the log line.
struct Exchange {
    request_id: HeaderValue,
    route: Option<Arc<Route>>,
    client_ip: IpAddr,
    permit: Permit,
    principal: Option<Arc<Principal>>,
    shadowed: Vec<String>,
    preflight_answered: bool,
    upstream_time: Option<Duration>,
}

pub async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let policy = shared.policy.snapshot();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let bytes_in = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut ex = Exchange {
        request_id: request_id(req.headers()),
        route: None,
        client_ip: conn.peer.ip(),
        permit: Permit::default(),
        principal: None,
        shadowed: Vec::new(),
        preflight_answered: false,
        upstream_time: None,
    };

    let result = run_stages(&shared, &policy, &conn, req, &mut ex).await;

    let (mut response, reason) = match result {
        Ok(r) => (r, None),
        Err(rejection) => {
            refusal_event(&shared, &ex, &rejection);
            (
                problem(&rejection, &ex.request_id),
                Some(rejection.reason()),
            )
        }
    };
    harden(&policy, &ex, origin.as_ref(), response.headers_mut());

    let status = response.status();
    let route = ex.route.as_ref().map_or("-", |r| &*r.name);
    let elapsed = started.elapsed();
    let m = &shared.metrics;
    m.requests
        .with_label_values(&[route, status_class(status.as_u16())])
        .inc();
    m.request_duration
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    let who = ex.principal.as_deref();
    tracing::info!(
        request_id = ex.request_id.to_str().unwrap_or("-"),
        method = method.as_str(),
        path = path.as_str(),
        route,
        status = status.as_u16(),
        decision = if reason.is_some() { "deny" } else { "allow" },
        reason = reason.as_deref().unwrap_or(""),
        shadow = ex.shadowed.join(",").as_str(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        upstream_ms = ex.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
        bytes_in,
        bytes_out = http_body::Body::size_hint(response.body()).exact(),
        client_ip = %ex.client_ip,
        protocol = conn.proto,
        subject = who.map(|p| p.subject.as_str()),
        tenant = who.and_then(|p| p.tenant.as_deref()),
        auth_method = who.map(|p| p.method.as_str()),
        "request"
    );
    Ok(response)
}

/// Every security stage, in order. Cheap checks and IP-keyed limits come first, so a flood of
/// requests or forged tokens costs a hash lookup; signature checks come after them.
async fn run_stages(
    shared: &Shared,
    policy: &Policy,
    conn: &ConnInfo,
    req: Request<Incoming>,
    ex: &mut Exchange,
) -> Result<Response<ProxyBody>, Rejection> {
    // 1. Framing: one Host, no CL with TE (400). HTTP/1 bytes were already vetted by the guard.
    stage::framing::check(&req)?;
    // 2. Route selection (404), deny routes (their 4xx).
    let route = stage::route::select(policy, &req)?;
    ex.route = Some(route.clone());
    if let Some((mode, denied)) = stage::route::check_deny(&route) {
        enforce(mode, Err(denied), shared, ex)?;
    }
    // 3. Request limits: method, URL, headers, content type, declared body size (405/414/431/415/413).
    let preflight = route.cors.is_some() && stage::cors::is_preflight(&req);
    enforce(
        route.limits.mode,
        stage::limits::check(&route.limits, &req, preflight),
        shared,
        ex,
    )?;
    // 4. Rate limits keyed by client IP, User-Agent, header or route (429; 503 if Redis is down and the limit says deny).
    ex.client_ip = client_ip(policy, conn.peer.ip(), req.headers());
    let limits = Limits {
        limiter: &shared.limiter,
        metrics: &shared.metrics,
        policy,
    };
    let counted = stage::rate_limit::check_pre_auth(
        &limits,
        &route,
        req.headers(),
        ex.client_ip,
        &mut ex.permit,
    )
    .await;
    record_shadowed_limits(shared, ex);
    counted?;
    // 5. CORS preflight, answered here (204 / 403); a refused one carries no CORS headers.
    ex.preflight_answered = preflight;
    if let Some(answer) = stage::cors::preflight(&route, &req)? {
        return Ok(answer.map(|()| upstream::empty()));
    }
    // 6. Authentication: bearer JWT or API key, not revoked → the verified caller, if any
    //    (401; 503 while keys or revocations never loaded).
    ex.principal = authenticate(shared, policy, &route, &req, ex)?;
    // 7. Authorization on roles, scopes, claims and tenant (403); needs the caller as evidence.
    if let Some(caller) = ex.principal.clone() {
        let verdict = stage::authz::check(&route.auth, &caller, req.headers(), req.uri());
        record_auth(shared, &route, &verdict, route.auth.mode);
        enforce(route.auth.mode, verdict, shared, ex)?;
    }
    // 8. Rate limits keyed by the verified caller: subject, tenant, API key (429 / 503).
    let counted = stage::rate_limit::check_identity(
        &limits,
        &route,
        ex.principal.as_deref(),
        ex.client_ip,
        &mut ex.permit,
    )
    .await;
    record_shadowed_limits(shared, ex);
    counted?;
    // 9. Sessions: refresh-token single use (401 on reuse), login lockout (429); a bounded body read (400).
    let (parts, body) = req.into_parts();
    let body = stage::session::read_body(
        &route,
        &parts.headers,
        body,
        policy.upstream.request_timeout,
    )
    .await?;
    let sessions = shared.sessions(policy);
    let about = About {
        route: &route.name,
        client_ip: ex.client_ip,
        request_id: ex.request_id.to_str().unwrap_or("-"),
    };
    let pending = match &body {
        InBody::Read(bytes) => {
            stage::session::before(&sessions, &route, &parts.headers, bytes, &about).await?
        }
        InBody::Stream(_) => Pending::default(),
    };
    // 10. Forward to the upstream with the caller's identity headers (502/504; 413/400 for a bad unsized body).
    let trusted = is_trusted(policy, conn.peer.ip());
    let (traceparent, started_trace) = traceparent(&parts.headers);
    let fwd = Forwarded {
        peer_trusted: trusted,
        peer_ip: conn.peer.ip(),
        proto: "https",
        request_id: &ex.request_id,
        traceparent,
        started_trace,
        principal: ex.principal.as_deref(),
    };
    let timer = shared.metrics.upstream_timer(&route.name);
    // Looked up only for shadow-mode limits: the one case that counts an over-limit unsized body.
    let shadow_body = (route.limits.mode == Mode::Shadow).then(|| {
        shared
            .metrics
            .shadow_blocks
            .with_label_values(&[&*route.name, "body-too-large"])
    });
    let req = Request::from_parts(parts, body);
    let forwarded = upstream::forward(&shared.client, policy, &route, req, fwd, shadow_body).await;
    // 11. Sessions, on the upstream's answer: commit or release the refresh token, count a failed login.
    let answered = forwarded
        .as_ref()
        .map(|f| (f.response.status(), f.response.headers()));
    let (status, headers) = answered.unwrap_or((http::StatusCode::BAD_GATEWAY, &EMPTY_HEADERS));
    stage::session::after(&sessions, &route, pending, status, headers, &about).await;
    let forwarded = forwarded?;
    timer.observe(forwarded.upstream_time.as_secs_f64());
    ex.upstream_time = Some(forwarded.upstream_time);
    // 12. Response hardening happens in `handle`, for this response and every rejection alike.
    Ok(forwarded.response)
}

/// Stage 6 with its bookkeeping: the decision is counted, and in shadow mode a refusal lets the
/// request go on without a caller.
fn authenticate(
    shared: &Shared,
    policy: &Policy,
    route: &Route,
    req: &Request<Incoming>,
    ex: &mut Exchange,
) -> Result<Option<Arc<Principal>>, Rejection> {
    if route.auth.require == crate::policy::Requirement::None {
        return Ok(None);
    }
    let verifier = Verifier {
        policy,
        keys: &shared.keys,
        cache: &shared.tokens,
        now: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    };
    let verdict = stage::authn::authenticate(&verifier, &route.auth, req.headers(), req.uri())
        .and_then(|p| match (p, &policy.sessions.revocation) {
            (Some(p), Some(rule)) => check_revocation(shared, rule, p, route, ex, verifier.now),
            (p, _) => Ok(p),
        });
    record_auth(shared, route, &verdict, route.auth.mode);
    match (verdict, route.auth.mode) {
        (Ok(p), _) => Ok(p),
        (Err(r), Mode::Enforce) => Err(r),
        (Err(r), Mode::Shadow) => {
            record_shadow(shared, ex, &r.reason());
            Ok(None)
        }
    }
}

/// The revocation half of stage 6: a verified token whose id, session or subject was revoked is
/// refused; while this replica has never loaded the revocations, the policy decides.
fn check_revocation(
    shared: &Shared,
    rule: &crate::policy::sessions::Revocation,
    p: Arc<Principal>,
    route: &Route,
    ex: &Exchange,
    now: i64,
) -> Result<Option<Arc<Principal>>, Rejection> {
    if !matches!(p.method, crate::identity::AuthMethod::Jwt { .. }) {
        return Ok(Some(p));
    }
    match shared.revocations.check(&p, now) {
        Verdict::Clear => Ok(Some(p)),
        Verdict::Revoked(kind) => {
            shared
                .revocations
                .metrics
                .hits
                .with_label_values(&[kind.as_str()])
                .inc();
            shared.events.emit(SecurityEvent {
                kind: EventKind::TokenRevoked,
                tenant_id: p.tenant.clone(),
                subject: Some(p.subject.clone()),
                client_ip: Some(ex.client_ip),
                request_id: ex.request_id.to_str().ok().map(str::to_owned),
                route: Some(route.name.to_string()),
                reason: kind.as_str().to_owned(),
            });
            Err(Rejection::Unauthorized(AuthFault::Revoked(kind)))
        }
        Verdict::Unsynced => match rule.on_unsynced {
            Unsynced::FailClosed => Err(Rejection::RevocationUnavailable),
            Unsynced::FailOpen => {
                shared.revocations.metrics.unsynced_passes.inc();
                tracing::warn!(
                    route = &*route.name,
                    "revocations not loaded yet; token let through (fail_open)"
                );
                Ok(Some(p))
            }
        },
    }
}

/// The security event a refusal is worth (those with a caller to name are emitted where the
/// caller is known: revoked tokens, refresh reuse, lockouts).
fn refusal_event(shared: &Shared, ex: &Exchange, rejection: &Rejection) {
    let kind = match rejection {
        Rejection::Unauthorized(AuthFault::Revoked(_)) => return,
        Rejection::Unauthorized(_) | Rejection::Forbidden(_) => EventKind::AuthFailed,
        Rejection::RateLimited { .. } => EventKind::RateLimited,
        _ => return,
    };
    let who = ex.principal.as_deref();
    shared.events.emit(SecurityEvent {
        kind,
        tenant_id: who.and_then(|p| p.tenant.clone()),
        subject: who.map(|p| p.subject.clone()),
        client_ip: Some(ex.client_ip),
        request_id: ex.request_id.to_str().ok().map(str::to_owned),
        route: ex.route.as_ref().map(|r| r.name.to_string()),
        reason: rejection.reason(),
    });
}

/// `ward_auth_decisions_total{route,result,reason}`.
fn record_auth<T>(shared: &Shared, route: &Route, verdict: &Result<T, Rejection>, mode: Mode) {
    let (result, reason) = match verdict {
        Ok(_) => ("allow", "ok".to_owned()),
        Err(r) if mode == Mode::Shadow => ("shadow", r.reason()),
        Err(r) => ("deny", r.reason()),
    };
    shared
        .metrics
        .auth_decisions
        .with_label_values(&[&route.name, result, &reason])
        .inc();
}

fn record_shadowed_limits(shared: &Shared, ex: &mut Exchange) {
    for name in std::mem::take(&mut ex.permit.shadowed) {
        record_shadow(shared, ex, &format!("rate_limited:{name}"));
    }
}

/// In `shadow` mode a refusal is logged and counted as "would have blocked", then let through.
fn enforce(
    mode: Mode,
    result: Result<(), Rejection>,
    shared: &Shared,
    ex: &mut Exchange,
) -> Result<(), Rejection> {
    match (result, mode) {
        (Ok(()), _) => Ok(()),
        (Err(r), Mode::Enforce) => Err(r),
        (Err(r), Mode::Shadow) => {
            record_shadow(shared, ex, &r.reason());
            Ok(())
        }
    }
}

fn record_shadow(shared: &Shared, ex: &mut Exchange, rule: &str) {
    let route = ex.route.as_ref().map_or("-", |r| &*r.name);
    shared
        .metrics
        .shadow_blocks
        .with_label_values(&[route, rule])
        .inc();
    ex.shadowed.push(rule.to_owned());
}

/// Security headers, CORS, rate-limit headers and the request id, on every response.
fn harden(policy: &Policy, ex: &Exchange, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
    let rules = ex
        .route
        .as_ref()
        .map_or(&policy.default_response_headers, |r| &r.response_headers);
    stage::headers::apply(rules, h);
    if let (Some(route), false) = (&ex.route, ex.preflight_answered) {
        stage::cors::decorate(route, origin, h);
    }
    if let Some(route) = &ex.route {
        for (n, v) in ex.permit.headers(route) {
            h.insert(n, v);
        }
    }
    h.insert(
        HeaderName::from_static("x-request-id"),
        ex.request_id.clone(),
    );
}

pub fn problem(rejection: &Rejection, request_id: &HeaderValue) -> Response<ProxyBody> {
    let (status, _, _) = rejection.parts();
    let body = rejection.body(request_id.to_str().unwrap_or("-"));
    let mut r = Response::new(upstream::full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    for (n, v) in rejection.headers() {
        h.insert(n, v);
    }
    r
}

fn status_class(s: u16) -> &'static str {
    match s {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A client's X-Request-Id is kept only if short and plain (letters, digits, `-_.:`); otherwise a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 64
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
        {
            return v.clone();
        }
    }
    HeaderValue::from_str(&random_hex(16)).expect("hex is a valid header value")
}

/// `bytes` (at most 16) random bytes as lower-case hex, from the thread's CSPRNG (seeded once
/// from the OS, so the request path makes no getrandom system call).
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = [0u8; 16];
    let buf = &mut buf[..bytes.min(16)];
    rand::thread_rng().fill_bytes(buf);
    hex::encode(buf)
}

/// A valid W3C traceparent passes through; otherwise a new trace starts. Returns (value, started).
fn traceparent(headers: &HeaderMap) -> (HeaderValue, bool) {
    if let Some(v) = headers.get("traceparent") {
        if valid_traceparent(v.as_bytes()) {
            return (v.clone(), false);
        }
    }
    let trace = random_hex(16);
    let span = random_hex(8);
    (
        HeaderValue::from_str(&format!("00-{trace}-{span}-00"))
            .expect("hex is a valid header value"),
        true,
    )
}

fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    v.len() == 55
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[..2])
        && &v[..2] != b"ff"
        && hex(&v[3..35])
        && v[3..35].iter().any(|&c| c != b'0')
        && hex(&v[36..52])
        && v[36..52].iter().any(|&c| c != b'0')
        && hex(&v[53..])
}

fn is_trusted(policy: &Policy, ip: IpAddr) -> bool {
    policy
        .server
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&ip))
}

/// The socket peer, unless it is a trusted proxy: then the rightmost X-Forwarded-For address that
/// is not itself trusted (addresses further left are the client's to forge).
fn client_ip(policy: &Policy, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !is_trusted(policy, peer) {
        return peer;
    }
    let mut client = peer;
    for v in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(s) = v.to_str() else { return client };
        for part in s.rsplit(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) if is_trusted(policy, ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation_follows_w3c() {
        assert!(valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
    }

    #[test]
    fn forged_request_ids_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("a b\"<script>"));
        assert_ne!(request_id(&h), "a b\"<script>");
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"a".repeat(65)).unwrap(),
        );
        assert_eq!(request_id(&h).len(), 32);
    }
}
