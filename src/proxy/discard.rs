//! What happens to a request body the proxy answered before reading (413 for a declared size
//! over the limit, 401, 429, 403...): it is read and thrown away, up to a bound, so the client
//! gets to read the answer.
//!
//! Dropping the body at once resets an HTTP/2 stream (RST_STREAM) while the client is still
//! uploading, and on HTTP/1.1 closes a connection with unread bytes (the kernel then sends a TCP
//! RST). Common clients treat either as a failed transfer and never show the status: curl 7.88
//! posting 2 MB over HTTP/2 got nothing from ward. nginx reads and discards the rest instead;
//! so does this, within [`MAX_DISCARD_BYTES`] and [`MAX_DISCARD_TIME`] per request, after which
//! the stream is reset (or the connection closed) as before. Nothing read here reaches the
//! upstream or any log: the bytes are counted and dropped.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Most bytes of an unread body read and dropped after an early answer.
pub const MAX_DISCARD_BYTES: u64 = 8 * 1024 * 1024;
/// Longest time spent doing so.
pub const MAX_DISCARD_TIME: Duration = Duration::from_secs(10);

/// What the stages before stage 9 see of the body while `handle` keeps it: only whether there is
/// one (`is_end_stream`, as the limits stage asks). It yields nothing; the body itself is taken
/// by stage 9 or, after an early answer, discarded here.
#[derive(Debug, Clone, Copy)]
pub struct Unread {
    pub end_stream: bool,
}

impl hyper::body::Body for Unread {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.end_stream
    }
}

/// Reads and drops what is left of `body` in its own task, within the bounds. An HTTP/1.1 client
/// that sent `Expect: 100-continue` has not sent its body and will not: it reads the final answer
/// instead, so nothing is waited for.
pub fn after_early_answer(body: Incoming, proto: &str, expects_continue: bool) {
    if hyper::body::Body::is_end_stream(&body) || (proto == "http/1.1" && expects_continue) {
        return;
    }
    drain(body);
}

/// Reads and drops the rest of a body that is being read (its client is sending), in its own
/// task, within the bounds: for an answer given part way through, such as a body found over
/// its limit while it was read.
pub fn drain<B>(body: B)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
{
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let read = tokio::time::timeout(MAX_DISCARD_TIME, discard(body, MAX_DISCARD_BYTES)).await;
        tracing::debug!(?read, "unread request body after an early answer");
    });
}

/// How reading a body with a bound ended.
#[derive(Debug)]
pub enum Bounded<E> {
    /// The whole body, within the bound.
    Complete(bytes::Bytes),
    /// More than the bound: nothing more was read (the caller answers, then [`drain`]s).
    TooLarge,
    /// The body failed (the client reset, or a stall).
    Failed(E),
}

/// Reads `body` to its end if it holds at most `max` bytes; leaves the rest in `body` when it
/// holds more, so that the caller can answer and then let the client finish (trailers are
/// dropped: no upstream request of ward's carries them).
pub async fn read_at_most<B>(body: &mut B, max: u64) -> Bounded<B::Error>
where
    B: hyper::body::Body + Unpin,
{
    let mut read = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Bounded::Failed(e),
        };
        if let Ok(data) = frame.into_data() {
            if (read.len() + bytes::Buf::remaining(&data)) as u64 > max {
                return Bounded::TooLarge;
            }
            read.extend_from_slice(bytes::Buf::chunk(&data));
        }
    }
    Bounded::Complete(read.freeze())
}

/// How the discarding ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Discarded {
    /// The client finished its body: its stream or connection ends cleanly.
    Complete(u64),
    /// More than the bound: the body is dropped unread (stream reset, connection closed).
    TooLarge,
    /// The client reset or closed first.
    Broken,
}

async fn discard<B>(mut body: B, max: u64) -> Discarded
where
    B: hyper::body::Body + Unpin,
{
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Discarded::Broken;
        };
        if let Some(data) = frame.data_ref() {
            total += bytes::Buf::remaining(data) as u64;
            if total > max {
                return Discarded::TooLarge;
            }
        }
    }
    Discarded::Complete(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn a_body_within_the_bound_is_read_to_its_end_and_a_larger_one_is_not() {
        let body = Full::new(Bytes::from(vec![0u8; 1000]));
        assert_eq!(discard(body, 1000).await, Discarded::Complete(1000));

        let chunks = (0..10).map(|_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![0u8; 100])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        assert_eq!(discard(body, 999).await, Discarded::TooLarge);
    }

    #[tokio::test]
    async fn a_bounded_read_keeps_the_rest_of_a_larger_body_unread() {
        let frames = |n| {
            let chunks = (0..n).map(|i| {
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![
                    i;
                    100
                ])))
            });
            StreamBody::new(futures_util::stream::iter(chunks))
        };
        let mut whole = frames(3);
        match read_at_most(&mut whole, 300).await {
            Bounded::Complete(b) => assert_eq!(b.len(), 300),
            other => panic!("{other:?}"),
        }
        let mut larger = frames(10);
        assert!(matches!(
            read_at_most(&mut larger, 250).await,
            Bounded::TooLarge
        ));
        // The third frame went over: the seven after it are still there for `drain`.
        assert_eq!(discard(larger, u64::MAX).await, Discarded::Complete(700));
    }
}
