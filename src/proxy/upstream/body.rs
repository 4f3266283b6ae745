//! Bodies on their way through: the client's request body with its stall deadline, a shadow-mode
//! body that counts what runs over `max_body`, and the upstream's response body, cut off when it
//! stalls or outlives the exchange's deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::pool::Checkout;
use super::registry::InFlight;
use super::BoxError;

#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes within the body timeout")]
pub struct BodyStalled;

/// The client's request body, failing with [`BodyStalled`] (and raising `stalled`) when no bytes
/// arrive for `idle`: a trickling client cannot hold an upstream exchange open.
pub struct StallingBody {
    inner: Incoming,
    idle: Duration,
    timer: WaitTimer,
    pub stalled: Arc<AtomicBool>,
}

impl StallingBody {
    pub fn new(inner: Incoming, idle: Duration) -> StallingBody {
        StallingBody {
            inner,
            idle,
            timer: WaitTimer::default(),
            stalled: Arc::default(),
        }
    }
}

/// The countdown of a body's current wait, armed only when the body has to wait: a body whose
/// frames are ready when polled (a small response that came with its head) never creates a
/// timer. The response body's two timers and the request body's one, each created, boxed and
/// dropped on every request, cost 2,000 instructions a request (callgrind).
#[derive(Default)]
struct WaitTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl WaitTimer {
    /// The body made progress: its next wait starts a new countdown.
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Whether the current wait has run out, its countdown set to end at `until()` when the
    /// wait has just begun.
    fn expired(&mut self, cx: &mut Context<'_>, until: impl FnOnce() -> Instant) -> bool {
        if !self.armed {
            let until = tokio::time::Instant::from_std(until());
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(until),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(until))),
            }
            self.armed = true;
        }
        let sleep = self.sleep.as_mut().expect("armed above");
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl Body for StallingBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                this.timer.disarm();
                return Poll::Ready(Some(Ok(f)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let idle = this.idle;
        if this.timer.expired(cx, || Instant::now() + idle) {
            this.stalled.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(BodyStalled.into())));
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

/// A request body in shadow mode: streams, and remembers once that it went over the limit.
pub struct CountingBody {
    pub inner: StallingBody,
    pub seen: u64,
    pub limit: u64,
    /// Incremented once, the first time the body goes over; then dropped.
    pub over: Option<prometheus::IntCounter>,
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
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
        }
        polled
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

/// The upstream's response body, cut off when it stalls for `idle` or runs past `deadline`. It
/// holds the request's place among the upstream's in-flight requests until it ends.
pub struct TimedBody {
    inner: Incoming,
    idle: Duration,
    deadline: Instant,
    /// One countdown per wait, to the idle limit or the deadline, whichever comes first.
    timer: WaitTimer,
    _in_flight: InFlight,
    /// The connection, given back to its pool when the body was read to its end.
    checkout: Option<Checkout>,
    ended: bool,
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        if let Some(c) = self.checkout.take() {
            c.finish(self.ended || self.inner.is_end_stream());
        }
    }
}

impl TimedBody {
    pub fn new(
        inner: Incoming,
        idle: Duration,
        deadline: Instant,
        in_flight: InFlight,
        checkout: Checkout,
    ) -> TimedBody {
        TimedBody {
            inner,
            idle,
            deadline,
            timer: WaitTimer::default(),
            _in_flight: in_flight,
            checkout: Some(checkout),
            ended: false,
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
                // A body that never waits never meets its timer: it meets the deadline here.
                if Instant::now() >= this.deadline {
                    return Poll::Ready(Some(Err(BodyTimeout.into())));
                }
                this.timer.disarm();
                return Poll::Ready(Some(Ok(f)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let (idle, deadline) = (this.idle, this.deadline);
        if this
            .timer
            .expired(cx, || (Instant::now() + idle).min(deadline))
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
