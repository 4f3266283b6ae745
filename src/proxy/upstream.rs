//! Stage 6, forwarding (502/504): one pooled keep-alive HTTP/1.1 client to the upstream; bodies
//! stream both ways. A request body with a Content-Length streams (its size was checked already);
//! one without (chunked, or HTTP/2 DATA frames) is read first, bounded by the route's
//! `max_body`, so a malformed or oversized chunked body never reaches the upstream.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Sleep;

use super::rejection::Rejection;
use super::stage::headers;
use crate::policy::{Mode, Policy, Route};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<HttpConnector, ProxyBody>;

pub fn client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(2048)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

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

/// `shadow_body` counts an unsized body that runs over `max_body` on a route whose limits are in shadow mode.
pub async fn forward(
    client: &UpstreamClient,
    policy: &Policy,
    route: &Route,
    req: Request<InBody>,
    fwd: Forwarded<'_>,
    shadow_body: Option<prometheus::IntCounter>,
) -> Result<Forwarding, Rejection> {
    let up = &policy.upstream;
    let deadline = Instant::now() + up.request_timeout;
    let (mut parts, body) = req.into_parts();
    let host = super::stage::framing::host_of(&parts).map(str::to_owned);

    // Body: stream what declared its length, read (bounded) what did not.
    let incoming = match body {
        InBody::Stream(incoming) => incoming,
        InBody::Read(bytes) => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            return send(
                client,
                policy,
                route,
                parts,
                host,
                full(bytes),
                fwd,
                deadline,
            )
            .await;
        }
    };
    let body = if parts.headers.contains_key(header::CONTENT_LENGTH) || incoming.is_end_stream() {
        incoming.map_err(BoxError::from).boxed_unsync()
    } else if route.limits.mode == Mode::Shadow {
        CountingBody {
            inner: incoming,
            seen: 0,
            limit: route.limits.max_body,
            over: shadow_body,
        }
        .boxed_unsync()
    } else {
        let limit = usize::try_from(route.limits.max_body).unwrap_or(usize::MAX);
        match tokio::time::timeout_at(deadline.into(), Limited::new(incoming, limit).collect())
            .await
        {
            Err(_) => return Err(Rejection::RequestTimeout),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Rejection::BodyTooLarge)
            }
            Ok(Err(_)) => return Err(Rejection::BadBody),
            Ok(Ok(collected)) => {
                let bytes = collected.to_bytes();
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                full(bytes)
            }
        }
    };

    send(client, policy, route, parts, host, body, fwd, deadline).await
}

/// Sends the request upstream and waits for the response head.
#[allow(clippy::too_many_arguments)]
async fn send(
    client: &UpstreamClient,
    policy: &Policy,
    route: &Route,
    mut parts: http::request::Parts,
    host: Option<String>,
    body: ProxyBody,
    fwd: Forwarded<'_>,
    deadline: Instant,
) -> Result<Forwarding, Rejection> {
    let up = &policy.upstream;
    // Head: the upstream URI, hop-by-hop stripped, forwarding headers set by us alone.
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = Uri::builder()
        .scheme(up.scheme.clone())
        .authority(up.authority.clone())
        .path_and_query(format!("{}{}", up.path_prefix, path))
        .build()
        .map_err(|_| Rejection::Framing(super::rejection::FramingFault::MalformedHead))?;
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    h.remove(header::EXPECT);
    if let Some(host) = &host {
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert(header::HOST, v.clone());
            h.insert("x-forwarded-host", v);
        }
    }
    // The client as ward decided it, in exactly one header (one address): the upstream, trusting
    // only ward, needs no chain to walk, and a client's forged hops never reach it.
    let server = &policy.server;
    h.remove("x-forwarded-for");
    h.remove(header::FORWARDED);
    h.insert(
        server.client_ip_header.clone(),
        HeaderValue::from_str(&fwd.client_ip.to_string())
            .expect("IP addresses are valid header values"),
    );
    if server.forwarded {
        h.insert(
            header::FORWARDED,
            HeaderValue::from_str(&crate::client_ip::forwarded(fwd.client_ip, fwd.proto))
                .expect("addresses and protocol names are valid header values"),
        );
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static(fwd.proto));
    h.insert("x-request-id", fwd.request_id.clone());
    h.insert("traceparent", fwd.traceparent);
    if fwd.started_trace {
        h.remove("tracestate");
    }
    identity_headers(policy, fwd.principal, h);
    headers::apply(&route.request_headers, h);
    let upstream_req = Request::from_parts(parts, body);

    let started = Instant::now();
    let wait = up
        .idle_timeout
        .min(deadline.saturating_duration_since(started));
    let result = tokio::time::timeout(wait, client.request(upstream_req)).await;
    let upstream_time = started.elapsed();
    let mut response = match result {
        Err(_) => return Err(Rejection::UpstreamTimeout),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upstream request failed");
            return Err(Rejection::UpstreamUnavailable);
        }
        Ok(Ok(r)) => r,
    };
    headers::strip_hop_by_hop(response.headers_mut());
    let response = response.map(|b| TimedBody::new(b, up.idle_timeout, deadline).boxed_unsync());
    Ok(Forwarding {
        response,
        upstream_time,
    })
}

/// Identity headers are ward's alone: client-sent copies (and the API key, a secret the upstream
/// does not need) are removed on every route; the verified caller's subject, tenant, roles and
/// auth method are set when there is one.
fn identity_headers(
    policy: &Policy,
    principal: Option<&crate::identity::Principal>,
    h: &mut http::HeaderMap,
) {
    let names = &policy.identity.headers;
    for n in names.all() {
        h.remove(n);
    }
    if let Some(keys) = &policy.identity.api_keys {
        h.remove(&keys.header);
    }
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

/// A request body in shadow mode: streams, and remembers once that it went over the limit.
struct CountingBody {
    inner: Incoming,
    seen: u64,
    limit: u64,
    /// Incremented once, the first time the body goes over; then dropped.
    over: Option<prometheus::IntCounter>,
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.limit {
                        if let Some(counter) = this.over.take() {
                            counter.inc();
                            tracing::warn!(
                                limit = this.limit,
                                "shadow: request body over max_body would have been refused"
                            );
                        }
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream response body stalled or exceeded the request timeout")]
pub struct BodyTimeout;

/// The upstream's response body, cut off when it stalls for `idle` or runs past `deadline`.
struct TimedBody {
    inner: Incoming,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
}

impl TimedBody {
    fn new(inner: Incoming, idle: Duration, deadline: Instant) -> TimedBody {
        TimedBody {
            inner,
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.idle_timer.as_mut().reset(next);
                return Poll::Ready(Some(Ok(f)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if this.idle_timer.as_mut().poll(cx).is_ready()
            || this.deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        Poll::Pending
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
