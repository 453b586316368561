//! Which runtime serves a connection. The API thread accepts every connection and looks at the
//! start of its first request without consuming it. WebSocket sessions (`GET /ws/…`) are
//! handed to the work runtime, whose threads stream: their socket events then never wake the
//! API thread, which stays idle enough for the kernel to run it as soon as a request arrives.
//! Every other connection stays on the API thread (its handlers still run on the work runtime,
//! see `http::on_work_runtime`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How the first request of a WebSocket session starts.
const WS_REQUEST: &[u8] = b"GET /ws/";
/// How long a new connection may take to send the start of its first request before it is
/// served on the API thread regardless (where a slow client costs nothing but a task).
const FIRST_BYTES_LIMIT: Duration = Duration::from_secs(5);
/// Connections accepted but not yet picked up by a server.
const BACKLOG: usize = 256;

/// Connections for the API thread's server.
pub(crate) struct ApiConnections {
    rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    local: SocketAddr,
}

/// Connections for the work runtime's server, as std sockets: they are registered with the
/// runtime that accepts them from here.
pub(crate) struct WorkConnections {
    rx: mpsc::Receiver<(std::net::TcpStream, SocketAddr)>,
    local: SocketAddr,
}

/// Starts accepting on `listener` (on the current runtime, the API thread's) until `stop`, and
/// returns the two streams of connections.
pub(crate) fn route(
    listener: TcpListener,
    stop: CancellationToken,
) -> std::io::Result<(ApiConnections, WorkConnections)> {
    let local = listener.local_addr()?;
    let (api_tx, api_rx) = mpsc::channel(BACKLOG);
    let (work_tx, work_rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
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
            // Without TCP_NODELAY, Nagle holds a small frame back until the previous one is
            // acked, and the client's delayed ACK turns that into up to 40 ms per event.
            let _ = tcp.set_nodelay(true);
            let (api_tx, work_tx) = (api_tx.clone(), work_tx.clone());
            tokio::spawn(async move {
                if opens_websocket(&tcp).await {
                    match tcp.into_std() {
                        Ok(std) => {
                            let _ = work_tx.send((std, addr)).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
                    }
                } else {
                    let _ = api_tx.send((tcp, addr)).await;
                }
            });
        }
    });
    Ok((
        ApiConnections { rx: api_rx, local },
        WorkConnections { rx: work_rx, local },
    ))
}

/// Whether the connection's first bytes are a WebSocket session request, read without
/// consuming them.
async fn opens_websocket(tcp: &TcpStream) -> bool {
    let deadline = tokio::time::Instant::now() + FIRST_BYTES_LIMIT;
    let mut buf = [0u8; WS_REQUEST.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 || !WS_REQUEST.starts_with(&buf[..n]) {
            return false;
        }
        if n == WS_REQUEST.len() {
            return true;
        }
        // Only part of it has arrived (peek returns at once while data is waiting).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl axum::serve::Listener for ApiConnections {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // Accepting has stopped: the server is shutting down.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl axum::serve::Listener for WorkConnections {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Some((std, addr)) = self.rx.recv().await else {
                return std::future::pending().await;
            };
            // Registers the socket with the runtime polling this, the work runtime.
            match TcpStream::from_std(std) {
                Ok(tcp) => return (tcp, addr),
                Err(e) => tracing::warn!(error = %e, "cannot take over a connection"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn classify(first: &[&[u8]]) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let parts: Vec<Vec<u8>> = first.iter().map(|p| p.to_vec()).collect();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.set_nodelay(true).unwrap();
            for p in parts {
                c.write_all(&p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c
        });
        let (server, _) = listener.accept().await.unwrap();
        let ws = opens_websocket(&server).await;
        // Nothing was consumed: the whole request is still there to read.
        let mut buf = vec![0u8; 64];
        let n = server.peek(&mut buf).await.unwrap();
        assert!(n > 0);
        drop(client.await.unwrap());
        ws
    }

    #[tokio::test]
    async fn websocket_requests_are_told_apart_from_others() {
        assert!(classify(&[b"GET /ws/sessions/x HTTP/1.1\r\n"]).await);
        assert!(classify(&[b"GET /w", b"s/sessions/x HTTP/1.1\r\n"]).await);
        assert!(!classify(&[b"GET /health HTTP/1.1\r\n"]).await);
        assert!(!classify(&[b"POST /ws/x HTTP/1.1\r\n"]).await);
        assert!(!classify(&[b"GET /api/sessions HTTP/1.1\r\n"]).await);
    }
}
