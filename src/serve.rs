//! The accept-and-drain loop both services run: accept until shutdown (backing off on accept
//! errors such as running out of file descriptors, instead of spinning), hand each connection to
//! its own task, then give in-flight requests a bounded time to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

/// TCP keepalive on every accepted connection: a peer that vanished (host gone, network cut)
/// is found by the kernel within a minute (30 s idle, then three probes 10 s apart) and its
/// connection closed. This is the dead-peer check for idle HTTP/2 connections too, in place of
/// HTTP/2 PINGs, whose keep-alive bookkeeping in hyper ran on every poll of a connection (1,034
/// instructions per request over HTTP/2, callgrind).
pub const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(30))
    .with_interval(Duration::from_secs(10))
    .with_retries(3);

/// Accepts connections until `shutdown` resolves; `on_accept` spawns each connection's task.
pub async fn accept_until(
    listener: &TcpListener,
    shutdown: impl Future<Output = ()>,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&KEEPALIVE);
                    on_accept(tcp, peer);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => return,
        }
    }
}

/// Waits for the connections `graceful` watches to finish, at most `timeout`. Returns whether
/// they all did.
pub async fn drain(graceful: GracefulShutdown, timeout: Duration) -> bool {
    tracing::info!(connections = graceful.count(), "draining");
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?timeout,
            "drain deadline passed; closing remaining connections"
        );
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_keep_alive_at_the_tcp_level() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let accepted = accept_until(
            &listener,
            async move { rx.await.unwrap_or(()) },
            |tcp, _| {
                let s = socket2::SockRef::from(&tcp);
                let seen = (
                    s.keepalive().unwrap(),
                    s.tcp_keepalive_time().unwrap(),
                    s.tcp_keepalive_interval().unwrap(),
                    s.tcp_keepalive_retries().unwrap(),
                );
                if let Some(tx) = tx.take() {
                    assert_eq!(
                        seen,
                        (true, Duration::from_secs(30), Duration::from_secs(10), 3)
                    );
                    let _ = tx.send(());
                }
            },
        );
        tokio::time::timeout(Duration::from_secs(10), accepted)
            .await
            .expect("the connection was accepted");
    }
}
