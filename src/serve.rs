//! The accept-and-drain loop both services run: accept until shutdown (backing off on accept
//! errors such as running out of file descriptors, instead of spinning), hand each connection to
//! its own task, then give in-flight requests a bounded time to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

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
