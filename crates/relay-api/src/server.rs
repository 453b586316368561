//! Accepting connections and speaking HTTP on them. The API thread accepts every connection and
//! serves it with hyper (HTTP/1.1, with upgrades): hyper parses every request, whatever its form
//! (kept alive, pipelined, split across packets, slow), and a client that does not finish its
//! request headers in time is disconnected. Handlers run on the work runtime (see
//! `http::on_work_runtime`); a connection upgraded to a WebSocket moves there with its socket
//! (see [`crate::stream`]), so streaming never wakes the API thread.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::stream::{ConnectionStats, FollowingStream};

/// Limits of the HTTP layer.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// How long a client has to send a request's headers, counted from the connection's start
    /// or the end of its previous response (so it is also the idle time a kept-alive connection
    /// is allowed). Established WebSockets are not affected.
    pub header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// Default of [`HttpLimits::header_read_timeout`]: far more than any client on a slow network
/// needs for a few hundred bytes of headers, short enough that idle sockets do not pile up.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a stopping server waits for requests in progress before dropping their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on every connection `listener` accepts until `stop`, then lets requests in
/// progress finish (WebSockets are closed by their sessions, not here).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stats: Arc<ConnectionStats>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _addr)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY, Nagle holds a small frame back until the previous one is acked,
        // and the client's delayed ACK turns that into up to 40 ms per event.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(FollowingStream::new(tcp, stats.clone()));
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(io, service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.cancelled() => {
                    // Finish the request in progress, if any, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests in progress did not finish in time; their connections are dropped"
        );
    }
}
