//! Stage 10, forwarding (502/503/504, 408, 413): pooled keep-alive HTTP/1.1 (or HTTPS) to the
//! route's upstream, bodies streaming both ways, and every resilience decision in one place, in
//! this order:
//!
//! 1. load shedding: more than `max_concurrent` requests in flight to the upstream: 503 at once;
//! 2. the request body: one with a Content-Length streams (its size was checked already), one
//!    without (chunked, HTTP/2 DATA) is read first, bounded by `max_body`; a small body of a
//!    retryable request is read too, so a retry can send it again; no body bytes for
//!    `body_timeout`: 408, and the upstream exchange is abandoned;
//! 3. for each attempt, the circuit breaker (open: 503 with Retry-After at once), the exchange
//!    under the idle and request deadlines (504), and the outcome reported to the breaker;
//! 4. a retry only for an idempotent request, after a connect failure, a reset before any
//!    response byte or a 502/503, with backoff and jitter, within the attempts, the deadline and
//!    the retry budget.

pub mod body;
pub mod breaker;
pub mod pool;
pub mod registry;
pub mod retry;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

pub use registry::{Registry, UpstreamMetrics};

use self::body::{CountingBody, StallingBody, TimedBody};
use self::pool::PoolError;
use super::discard::{self, Bounded};
use super::rejection::Rejection;
use super::stage::headers;
use crate::policy::{Mode, Policy, Route};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Largest request body read ahead so that a retry can send it again; a bigger one streams and
/// is sent once.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// What the pipeline learned about the client, for the forwarding headers.
pub struct Forwarded<'a> {
    /// The client as the pipeline decided it (trusted hops applied).
    pub client_ip: IpAddr,
    pub proto: &'static str,
    pub request_id: &'a HeaderValue,
    pub traceparent: HeaderValue,
    pub started_trace: bool,
    /// The verified caller, sent upstream in the policy's identity headers.
    pub principal: Option<&'a crate::identity::Principal>,
}

pub struct Forwarding {
    pub response: Response<ProxyBody>,
    pub upstream_time: Duration,
}

/// A request body on its way upstream: still arriving, or already read by a stage that needed
/// to look inside it (refresh-token single use, login lockout), and then forwarded unchanged.
pub enum InBody {
    Stream(Incoming),
    Read(Bytes),
}

/// The body as it goes upstream: whole (it can be sent again), or a stream sent once.
enum Outgoing {
    Replay(Bytes),
    Once(Option<ProxyBody>),
}

/// Why one attempt got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No response head within the idle timeout or the request deadline.
    Timeout,
    /// No connection (refused, unreachable, connect timeout, TLS handshake).
    Connect,
    /// The connection closed or reset before a complete response head.
    Reset,
    /// A response head that is not HTTP, or too large.
    BadResponse,
    /// The client stopped sending its body: not the upstream's fault.
    BodyStalled,
}

impl Failure {
    fn event(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Connect => "connect_error",
            Failure::Reset => "reset",
            Failure::BadResponse => "bad_response",
            Failure::BodyStalled => "body_timeout",
        }
    }

    fn rejection(self) -> Rejection {
        match self {
            Failure::Timeout => Rejection::UpstreamTimeout,
            Failure::Connect | Failure::Reset | Failure::BadResponse => {
                Rejection::UpstreamUnavailable
            }
            Failure::BodyStalled => Rejection::RequestTimeout,
        }
    }
}

/// `shadow_body` counts an unsized body that runs over `max_body` on a route whose limits are in shadow mode.
pub async fn forward(
    upstreams: &Registry,
    policy: &Policy,
    route: &Route,
    req: Request<InBody>,
    fwd: Forwarded<'_>,
    shadow_body: Option<prometheus::IntCounter>,
) -> Result<Forwarding, Rejection> {
    let ru = &route.upstream;
    let up = &*ru.target;
    let name = &*up.name;
    let m = &upstreams.metrics;
    let live = upstreams.get(up);
    // 1. Load shedding: answered at once, never queued.
    let Some(in_flight) = live.enter(up.max_concurrent) else {
        m.event(name, "shed");
        tracing::warn!(
            upstream = name,
            limit = up.max_concurrent,
            "upstream at max_concurrent: request shed"
        );
        return Err(Rejection::UpstreamOverloaded);
    };
    let deadline = Instant::now() + up.request_timeout;
    let (mut parts, body) = req.into_parts();
    let retryable = ru.retries.attempts > 1 && retry::idempotent(&parts.method, &parts.headers);

    // 2. The body.
    let (mut outgoing, stalled) = match body {
        InBody::Read(bytes) => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            (Outgoing::Replay(bytes), None)
        }
        // No body: sent the same way by every attempt.
        InBody::Stream(incoming) if incoming.is_end_stream() => {
            (Outgoing::Replay(Bytes::new()), None)
        }
        InBody::Stream(incoming) => {
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let mut body = StallingBody::new(incoming, ru.body_timeout);
            let stalled = body.stalled.clone();
            let read_first = match declared {
                Some(n) => retryable && n <= MAX_REPLAY_BODY,
                None => route.limits.mode != Mode::Shadow,
            };
            let outgoing = if read_first {
                let read = tokio::time::timeout_at(
                    deadline.into(),
                    discard::read_at_most(&mut body, route.limits.max_body),
                )
                .await;
                let bytes = match read {
                    Err(_) => return Err(Rejection::RequestTimeout),
                    Ok(Bounded::Failed(_)) if stalled.load(Ordering::Acquire) => {
                        m.event(name, "body_timeout");
                        return Err(Rejection::RequestTimeout);
                    }
                    Ok(Bounded::TooLarge) => {
                        // The client is still sending: it gets to finish and read the 413.
                        discard::drain(body);
                        return Err(Rejection::BodyTooLarge);
                    }
                    Ok(Bounded::Failed(_)) => return Err(Rejection::BadBody),
                    Ok(Bounded::Complete(bytes)) => bytes,
                };
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                Outgoing::Replay(bytes)
            } else if declared.is_none() {
                Outgoing::Once(Some(
                    CountingBody {
                        inner: body,
                        seen: 0,
                        limit: route.limits.max_body,
                        over: shadow_body,
                    }
                    .boxed_unsync(),
                ))
            } else {
                Outgoing::Once(Some(body.boxed_unsync()))
            };
            (outgoing, Some(stalled))
        }
    };
    let host = super::stage::framing::host_of(&parts).map(str::to_owned);
    upstream_head(&mut parts, policy, route, host, fwd)?;
    live.budget.deposit(ru.retries.budget);
    let attempts = match (&outgoing, retryable) {
        (Outgoing::Replay(_), true) => ru.retries.attempts,
        _ => 1,
    };

    // 3 and 4. Attempts.
    let started = Instant::now();
    let mut attempt = 1;
    let mut last: Option<Rejection> = None;
    let response = loop {
        let pass = match &up.breaker {
            None => None,
            Some(rules) => {
                let admitted = live.breaker.admit(rules, Instant::now());
                set_gauge(m, name, &live);
                match admitted {
                    Ok(p) => Some(p),
                    Err(wait) => {
                        m.event(name, "breaker_open");
                        // A retry that finds the breaker open returns the last attempt's failure.
                        return Err(
                            last.unwrap_or(Rejection::UpstreamCircuitOpen { retry_after: wait })
                        );
                    }
                }
            }
        };
        let body = match &mut outgoing {
            Outgoing::Replay(b) => full(b.clone()),
            Outgoing::Once(b) => b
                .take()
                .expect("a streamed body is sent by one attempt only"),
        };
        let req = attempt_head(&mut parts, body, attempt == attempts);
        let now = Instant::now();
        let wait = up.idle_timeout.min(deadline.saturating_duration_since(now));
        let result = match tokio::time::timeout(wait, live.pool.send(req)).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(e)) => {
                let f = classify(
                    &e,
                    stalled.as_ref().is_some_and(|s| s.load(Ordering::Acquire)),
                );
                tracing::debug!(upstream = name, error = %e, failure = f.event(), "upstream request failed");
                Err(f)
            }
            Ok(Ok(r)) => Ok(r),
        };
        let (ok, retry_cause) = match &result {
            Ok((r, _))
                if matches!(
                    r.status(),
                    StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                ) =>
            {
                (false, Some("status"))
            }
            Ok((r, _)) => (r.status() != StatusCode::GATEWAY_TIMEOUT, None),
            Err(Failure::BodyStalled) => (true, None),
            Err(f @ (Failure::Connect | Failure::Reset)) => (false, Some(f.event())),
            Err(Failure::Timeout | Failure::BadResponse) => (false, None),
        };
        if let (Some(rules), Some(pass)) = (&up.breaker, pass) {
            live.breaker.record(rules, pass, ok, Instant::now());
            set_gauge(m, name, &live);
        }
        if let Err(f) = &result {
            m.event(name, f.event());
        }
        let Some(cause) = retry_cause.filter(|_| attempt < attempts) else {
            break result;
        };
        let pause = retry::backoff(&ru.retries, attempt);
        if Instant::now() + pause >= deadline {
            break result;
        }
        if !live.budget.withdraw() {
            m.event(name, "retry_budget_exhausted");
            tracing::info!(upstream = name, request_id = ?parts.headers.get(crate::request_id::HEADER_NAME), cause, "retry budget spent: not retried");
            break result;
        }
        m.event(name, "retry");
        tracing::info!(upstream = name, request_id = ?parts.headers.get(crate::request_id::HEADER_NAME), attempt, cause, "retrying upstream request");
        last = Some(match &result {
            Ok(_) => Rejection::UpstreamUnavailable,
            Err(f) => f.rejection(),
        });
        drop(result);
        tokio::time::sleep(pause).await;
        attempt += 1;
    };
    let upstream_time = started.elapsed();
    let (mut response, checkout) = response.map_err(Failure::rejection)?;
    headers::strip_hop_by_hop(response.headers_mut());
    let response = response
        .map(|b| TimedBody::new(b, up.idle_timeout, deadline, in_flight, checkout).boxed_unsync());
    Ok(Forwarding {
        response,
        upstream_time,
    })
}

fn set_gauge(m: &UpstreamMetrics, name: &str, live: &registry::Live) {
    m.breaker_state
        .with_label_values(&[name])
        .set(live.breaker.state().gauge());
}

/// One attempt's request: the prepared head with `body`. The last attempt (the only one, for
/// most requests that cannot be retried) takes the headers instead of copying them.
fn attempt_head(
    parts: &mut http::request::Parts,
    body: ProxyBody,
    last: bool,
) -> Request<ProxyBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = if last {
        std::mem::take(&mut parts.headers)
    } else {
        parts.headers.clone()
    };
    req
}

/// What went wrong, from the exchange's error chain.
fn classify(e: &PoolError, stalled: bool) -> Failure {
    if stalled {
        return Failure::BodyStalled;
    }
    let PoolError::Exchange(e) = e else {
        return Failure::Connect;
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return Failure::Reset;
            }
            if h.is_parse() || h.is_parse_too_large() || h.is_parse_status() {
                return Failure::BadResponse;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ) {
                return Failure::Reset;
            }
        }
        source = s.source();
    }
    Failure::BadResponse
}

// Header names as constants: a `&str` name is parsed and validated again on every use.
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The head as the upstream sees it: its URI, hop-by-hop headers stripped, forwarding and
/// identity headers set by ward alone.
fn upstream_head(
    parts: &mut http::request::Parts,
    policy: &Policy,
    route: &Route,
    host: Option<String>,
    fwd: Forwarded<'_>,
) -> Result<(), Rejection> {
    let up = &*route.upstream.target;
    let path_and_query = match parts.uri.path_and_query() {
        // No prefix: the client's path and query, already parsed, shared rather than copied.
        Some(pq) if up.path_prefix.is_empty() => pq.clone(),
        pq => format!("{}{}", up.path_prefix, pq.map_or("/", |p| p.as_str()))
            .parse()
            .map_err(|_| Rejection::Framing(super::rejection::FramingFault::MalformedHead))?,
    };
    // Origin form: the connection already names the upstream (its Host header is the client's).
    parts.uri = Uri::from(path_and_query);
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    // What only ward may say: the client's forwarding chain, its `Expect` (answered here), the
    // identity headers (and the API key, a secret the upstream does not need); set below.
    let identity = &policy.identity;
    let api_key = identity.api_keys.as_ref().map(|k| &k.header);
    let [subject, tenant, roles, method] = identity.headers.all();
    headers::remove_present(
        h,
        [
            &header::EXPECT,
            &X_FORWARDED_FOR,
            &header::FORWARDED,
            subject,
            tenant,
            roles,
            method,
        ]
        .into_iter()
        .chain(api_key),
    );
    if let Some(host) = &host {
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert(header::HOST, v.clone());
            h.insert(X_FORWARDED_HOST, v);
        }
    }
    // The client as ward decided it, in exactly one header (one address): the upstream, trusting
    // only ward, needs no chain to walk, and a client's forged hops never reach it.
    let server = &policy.server;
    h.insert(
        server.client_ip_header.clone(),
        HeaderValue::from_str(crate::client_ip::IpText::new(fwd.client_ip).as_str())
            .expect("IP addresses are valid header values"),
    );
    if server.forwarded {
        h.insert(
            header::FORWARDED,
            HeaderValue::from_str(&crate::client_ip::forwarded(fwd.client_ip, fwd.proto))
                .expect("addresses and protocol names are valid header values"),
        );
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    h.insert(crate::request_id::HEADER_NAME, fwd.request_id.clone());
    h.insert(super::trace::TRACEPARENT, fwd.traceparent);
    if fwd.started_trace {
        h.remove(TRACESTATE);
    }
    identity_headers(policy, fwd.principal, h);
    headers::apply(&route.request_headers, h);
    Ok(())
}

/// Identity headers are ward's alone: client-sent copies were removed (on every route, see
/// `upstream_head`); the verified caller's subject, tenant, roles and auth method are set when
/// there is one.
fn identity_headers(
    policy: &Policy,
    principal: Option<&crate::identity::Principal>,
    h: &mut http::HeaderMap,
) {
    let names = &policy.identity.headers;
    let Some(p) = principal else { return };
    let mut set = |name: &http::HeaderName, value: &str| match HeaderValue::from_str(value) {
        Ok(v) => {
            h.insert(name.clone(), v);
        }
        Err(_) => {
            tracing::warn!(header = %name, "identity value is not a valid header value; not sent")
        }
    };
    set(&names.subject, &p.subject);
    if let Some(t) = &p.tenant {
        set(&names.tenant, t);
    }
    if !p.roles.is_empty() {
        set(&names.roles, &p.roles.join(","));
    }
    set(&names.method, p.method.as_str());
}
