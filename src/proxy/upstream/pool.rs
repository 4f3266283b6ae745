//! Keep-alive HTTP/1.1 (or HTTPS) connections to one upstream, reused last-in first-out.
//!
//! One upstream is one address, so the pool is a stack of idle connections behind a mutex held
//! for a push or a pop, nothing else: no key to hash, no waiter queue, no task per request. A
//! connection goes back on the stack when its response body has ended (`Checkout`, carried by
//! the response body and returned when the body is dropped); one whose body was abandoned is
//! closed, as HTTP/1.1 cannot abandon a response and keep the connection. A request that a
//! reused connection could not take (the upstream closed it while it was idle) is sent again on
//! a new connection: it never left ward, so this is no retry in the policy's sense.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use tower::ServiceExt;

use super::registry::Connector;
use super::ProxyBody;

/// Why a request got no response head.
#[derive(Debug)]
pub enum PoolError {
    /// No connection: refused, unreachable, connect timeout or TLS handshake.
    Connect(super::BoxError),
    /// The connection failed while the request was sent or its answer read.
    Exchange(hyper::Error),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Connect(e) => write!(f, "connect: {e}"),
            PoolError::Exchange(e) => write!(f, "exchange: {e}"),
        }
    }
}

struct Idle {
    conn: SendRequest<ProxyBody>,
    since: Instant,
}

pub struct Pool {
    connector: Connector,
    /// The upstream's `scheme://authority`, for connecting.
    target: Uri,
    /// The Host header of a request that came without one (HTTP/1.0).
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    max_head: usize,
}

/// A connection lent to one exchange; given back to its pool by `finish` when the response body
/// ended, closed otherwise.
pub struct Checkout {
    conn: Option<SendRequest<ProxyBody>>,
    pool: Arc<Pool>,
}

impl Checkout {
    /// The exchange is over: the connection goes back when the body was read to its end, at once
    /// when it can take the next request, else once it can (an early answer whose request body
    /// is still being sent), within the idle timeout.
    pub fn finish(mut self, body_ended: bool) {
        let Some(mut conn) = self.conn.take().filter(|_| body_ended) else {
            return;
        };
        if conn.is_ready() {
            self.pool.put(conn);
        } else if !conn.is_closed() {
            let pool = Arc::clone(&self.pool);
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(pool.idle_timeout, conn.ready()).await {
                    pool.put(conn);
                }
            });
        }
    }
}

impl Pool {
    pub fn new(
        connector: Connector,
        target: Uri,
        host: HeaderValue,
        max_idle: usize,
        idle_timeout: Duration,
        max_head: usize,
    ) -> Pool {
        Pool {
            connector,
            target,
            host,
            idle: Mutex::default(),
            max_idle,
            idle_timeout,
            max_head,
        }
    }

    /// Sends `req` (its URI in origin form) on an idle connection, or a new one.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Checkout), PoolError> {
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        loop {
            let (mut conn, reused) = match self.take() {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            // An idle connection is ready at once; one handed back an instant ago may still be
            // finishing its last response.
            if let Err(e) = conn.ready().await {
                if reused {
                    continue;
                }
                return Err(PoolError::Exchange(e));
            }
            match conn.try_send_request(req).await {
                Ok(response) => {
                    let checkout = Checkout {
                        conn: Some(conn),
                        pool: Arc::clone(self),
                    };
                    return Ok((response, checkout));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed while idle. A new one takes it.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(PoolError::Exchange(e.into_error())),
                },
            }
        }
    }

    fn take(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().expect("pool lock is never poisoned");
        while let Some(i) = idle.pop() {
            if !i.conn.is_closed() && i.since.elapsed() < self.idle_timeout {
                return Some(i.conn);
            }
        }
        None
    }

    fn put(&self, conn: SendRequest<ProxyBody>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock is never poisoned");
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, PoolError> {
        let io = self
            .connector
            .clone()
            .oneshot(self.target.clone())
            .await
            .map_err(PoolError::Connect)?;
        let (conn, driver) = http1::Builder::new()
            .max_buf_size(self.max_head)
            .handshake(io)
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(conn)
    }
}
