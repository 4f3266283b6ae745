//! THE request pipeline. `handle` is the infallible shell: it loads the policy snapshot once,
//! runs the stages, turns a `Rejection` into a problem+json response, hardens every response
//! and records the outcome. `run_stages` lists every security stage, in order, one line each.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{header, HeaderMap, HeaderValue, Request, Response};
use hyper::body::Incoming;

use super::discard::Unread;
use super::rejection::AuthFault;
use super::rejection::Rejection;
use super::stage;
use super::stage::authn::Verifier;
use super::stage::rate_limit::{Limits, Permit};
use super::stage::session::{About, Pending, Sessions};
use super::token_cache::TokenCache;
use super::upstream::InBody;
use super::upstream::{self, Forwarded, ProxyBody};
use crate::access_log::{AccessLine, ProxyFacts};
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
use crate::{client_ip, request_id};

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
    /// Per upstream: connection pool, circuit breaker, retry budget, in-flight count.
    pub upstreams: upstream::Registry,
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
        request_id: request_id::accept_or_new(req.headers()),
        route: None,
        client_ip: conn.peer.ip(),
        permit: Permit::default(),
        principal: None,
        shadowed: Vec::new(),
        preflight_answered: false,
        upstream_time: None,
    };

    // The body stays here until a stage takes it, so that an answer given before it was read
    // (413, 401, 429...) can still let the client finish sending: see `discard`.
    let (parts, body) = req.into_parts();
    let unread = Unread {
        end_stream: http_body::Body::is_end_stream(&body),
    };
    let mut body = Some(body);
    let req = Request::from_parts(parts, unread);
    let expects_continue = req.headers().contains_key(header::EXPECT);

    let result = run_stages(&shared, &policy, &conn, req, &mut body, &mut ex).await;
    if let Some(rest) = body {
        super::discard::after_early_answer(rest, conn.proto, expects_continue);
    }

    let (mut response, reason) = match result {
        Ok(r) => (r, None),
        Err(rejection) => {
            refusal_event(&shared, &ex, &rejection);
            (
                rejection.to_response(&ex.request_id),
                Some(rejection.reason()),
            )
        }
    };
    harden(&policy, &ex, origin.as_ref(), response.headers_mut());

    let status = response.status();
    let elapsed = started.elapsed();
    let m = &shared.metrics;
    let class = status_class(status.as_u16());
    match &ex.route {
        Some(r) => {
            let rm = &r.metrics;
            rm.requests[class]
                .get(m, |m| {
                    m.requests.with_label_values(&[&r.name, CLASSES[class]])
                })
                .inc();
            rm.duration
                .get(m, |m| m.request_duration.with_label_values(&[&r.name]))
                .observe(elapsed.as_secs_f64());
        }
        None => {
            m.requests.with_label_values(&["-", CLASSES[class]]).inc();
            m.request_duration
                .with_label_values(&["-"])
                .observe(elapsed.as_secs_f64());
        }
    }
    let route = ex.route.as_ref().map_or("-", |r| &*r.name);
    let who = ex.principal.as_deref();
    AccessLine {
        service: "proxy",
        request_id: ex.request_id.to_str().unwrap_or("-"),
        method: method.as_str(),
        path: path.as_str(),
        route,
        status: status.as_u16(),
        duration: elapsed,
        client_ip: ex.client_ip,
        tenant: who.and_then(|p| p.tenant.as_deref()),
        subject: who.map(|p| p.subject.as_str()),
        proxy: Some(ProxyFacts {
            decision: if reason.is_some() { "deny" } else { "allow" },
            reason: reason.as_deref().unwrap_or(""),
            shadow: &ex.shadowed.join(","),
            upstream: ex.upstream_time,
            bytes_in,
            bytes_out: http_body::Body::size_hint(response.body()).exact(),
            protocol: conn.proto,
            auth_method: who.map(|p| p.method.as_str()),
        }),
    }
    .emit();
    Ok(response)
}

/// Every security stage, in order. Cheap checks and IP-keyed limits come first, so a flood of
/// requests or forged tokens costs a hash lookup; signature checks come after them.
async fn run_stages(
    shared: &Arc<Shared>,
    policy: &Arc<Policy>,
    conn: &ConnInfo,
    req: Request<Unread>,
    body: &mut Option<Incoming>,
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
    ex.client_ip = client_ip::client_ip(conn.peer.ip(), req.headers(), |ip| policy.is_trusted(ip));
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
    let (parts, _) = req.into_parts();
    let body = body
        .take()
        .expect("stage 9 is the one place that takes the body");
    let body = stage::session::read_body(
        &route,
        &parts.headers,
        body,
        route.upstream.target.request_timeout,
    )
    .await?;
    let sessions = shared.sessions(policy);
    let about = About {
        route: &route.name,
        client_ip: ex.client_ip,
        request_id: ex.request_id.to_str().unwrap_or("-"),
    };
    // What the session checks hold the request for, before the upstream and on its answer (the
    // clock is read only on routes that have them).
    let timed = route.refresh.is_some() || route.lockout.is_some();
    let started = timed.then(Instant::now);
    let pending = match &body {
        InBody::Read(bytes) => {
            stage::session::before(&sessions, &route, &parts.headers, bytes, &about).await?
        }
        InBody::Stream(_) => Pending::default(),
    };
    let checks_before = started.map(|t| t.elapsed());
    // 10. Forward to the route's upstream with the caller's identity headers: load shedding and
    //     the circuit breaker (503), a stalled body (408), retries, then 502/504 (413/400 for a bad unsized body).
    let (traceparent, started_trace) = super::trace::traceparent(&parts.headers);
    let fwd = Forwarded {
        client_ip: ex.client_ip,
        proto: "https",
        request_id: &ex.request_id,
        traceparent,
        started_trace,
        principal: ex.principal.as_deref(),
    };
    let timer = route
        .metrics
        .upstream_duration
        .get(&shared.metrics, |m| m.upstream_timer(&route.name));
    // Looked up only for shadow-mode limits: the one case that counts an over-limit unsized body.
    let shadow_body = (route.limits.mode == Mode::Shadow).then(|| {
        shared
            .metrics
            .shadow_blocks
            .with_label_values(&[&*route.name, "body-too-large"])
    });
    let req = Request::from_parts(parts, body);
    let forwarded =
        upstream::forward(&shared.upstreams, policy, &route, req, fwd, shadow_body).await;
    // 11. Sessions, on the upstream's answer: release the refresh token or count a failed login
    //     now; commit the token or clear the account once the answer is on its way.
    let answered = forwarded
        .as_ref()
        .map(|f| (f.response.status(), f.response.headers()));
    let (status, headers) = answered.unwrap_or((http::StatusCode::BAD_GATEWAY, &EMPTY_HEADERS));
    let started = timed.then(Instant::now);
    let settle = stage::session::after(&sessions, &route, pending, status, headers, &about).await;
    if let (Some(before), Some(after)) = (checks_before, started) {
        shared
            .metrics
            .session_check_duration
            .with_label_values(&[&route.name])
            .observe((before + after.elapsed()).as_secs_f64());
    }
    if !settle.is_empty() {
        let (shared, policy) = (Arc::clone(shared), Arc::clone(policy));
        tokio::spawn(
            async move { stage::session::settle(&shared.sessions(&policy), settle).await },
        );
    }
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
    req: &Request<Unread>,
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
    use std::borrow::Cow;
    let (result, reason): (_, Cow<str>) = match verdict {
        Ok(_) => {
            return route
                .metrics
                .auth_allowed
                .get(&shared.metrics, |m| {
                    m.auth_decisions
                        .with_label_values(&[&route.name, "allow", "ok"])
                })
                .inc()
        }
        Err(r) if mode == Mode::Shadow => ("shadow", r.reason().into()),
        Err(r) => ("deny", r.reason().into()),
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

/// Stage 12, response hardening: security headers, CORS, RateLimit headers and the request id,
/// on every response, the proxy's own refusals included.
fn harden(policy: &Policy, ex: &Exchange, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
    let rules = ex
        .route
        .as_ref()
        .map_or(&policy.default_response_headers, |r| &r.response_headers);
    // Room for what is added below (the rules, five RateLimit headers, the request id, CORS) in
    // one allocation, instead of the map growing and rehashing part way.
    h.reserve(rules.set.len() + 10);
    stage::headers::apply(rules, h);
    if let (Some(route), false) = (&ex.route, ex.preflight_answered) {
        stage::cors::decorate(route, origin, h);
    }
    if let Some(route) = &ex.route {
        ex.permit.write_headers(route, h);
    }
    h.insert(
        request_id::HEADER_NAME,
        stage::headers::per_response(ex.request_id.clone()),
    );
}

/// The `status` label of `ward_requests_total`, by [`status_class`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index in [`CLASSES`] of a status code.
fn status_class(s: u16) -> usize {
    match s {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}
