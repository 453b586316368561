//! Accepting connections and speaking HTTP on them. The API thread accepts every connection, lets
//! it in if the caps allow (see [`crate::admission`]; a refused one is answered 503 and closed),
//! and serves it with hyper (HTTP/1.1, with upgrades): hyper parses every request, whatever its
//! form (kept alive, pipelined, split across packets, slow), and a client that does not finish its
//! request headers in time is disconnected. Handlers run on the work runtime (see
//! `http::on_work_runtime`); a connection upgraded to a WebSocket moves there with its socket
//! (see [`crate::stream`]), so streaming never wakes the API thread.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{self, Caps, ConnectionStats, Refusal};
use crate::stream::FollowingStream;

/// Limits of the HTTP layer.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// How long a client has to send a request's headers, counted from the connection's start
    /// or the end of its previous response (so it is also the idle time a kept-alive connection
    /// is allowed). Established WebSockets are not affected.
    pub header_read_timeout: Duration,
    /// Connections open at once, in all (WebSockets included).
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_connections_per_client: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        }
    }
}

/// Default of [`HttpLimits::max_connections`]: far more than a team's clients hold, well under
/// the descriptors a process gets.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of [`HttpLimits::max_connections_per_client`]: a browser holds about six connections
/// per tab plus its WebSockets; a quarter of the relay's connections for one address.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;
/// Refusals being answered at once; beyond this a refused connection is closed without an answer,
/// so refusing costs no more descriptors than this.
const REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refused client has to send its request for the 503; one that sends none is closed.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

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
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS_IN_FLIGHT));
    let caps = Caps {
        total: limits.max_connections,
        per_client: limits.max_connections_per_client,
    };
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
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
        let slot = match admission::admit(&stats, addr.ip(), caps) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(tcp, why, &refusals, &connections);
                continue;
            }
        };
        let io = TokioIo::new(FollowingStream::new(tcp, stats.clone(), slot));
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

/// Answers a refused connection `503` and closes it (or just closes it when many refusals are
/// being answered already).
fn refuse(
    tcp: tokio::net::TcpStream,
    why: Refusal,
    refusals: &Arc<tokio::sync::Semaphore>,
    connections: &TaskTracker,
) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    let message = match why {
        Refusal::Full => "The relay has too many open connections; try again later",
        Refusal::ClientFull => "Too many open connections from this address; try again later",
    };
    tracing::warn!(reason = message, "refusing a connection");
    connections.spawn(async move {
        let _permit = permit;
        let answer = hyper::service::service_fn(move |_req| async move {
            let mut res = crate::envelope::error(StatusCode::SERVICE_UNAVAILABLE, message);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok::<_, std::convert::Infallible>(res)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(REFUSAL_TIMEOUT)
            .keep_alive(false)
            .serve_connection(TokioIo::new(tcp), answer);
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT * 2, conn).await;
    });
}
