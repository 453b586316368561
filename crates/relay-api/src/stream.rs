//! [`FollowingStream`]: a client's TCP socket that registers itself with the runtime polling it.
//! Connections are accepted and spoken to (HTTP) on the API thread; once a request upgrades one to
//! a WebSocket, the work runtime polls it, and from its first poll there the socket's readiness
//! events are delivered by the work runtime's reactor. Streaming then never wakes the API thread,
//! whatever request on the connection (first, or later on a kept-alive one) was the upgrade.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::{Handle, Id};

use crate::admission::{ConnectionStats, Slot};

/// A TCP stream that moves its registration to the runtime polling it, once: from the runtime that
/// accepted it to the first other runtime that polls it. Holds the connection's [`Slot`] while
/// open.
#[derive(Debug)]
pub(crate) struct FollowingStream {
    /// Always `Some` between polls; taken only while the socket changes runtimes.
    tcp: Option<TcpStream>,
    /// The runtime the socket is registered with, until it has moved once.
    home: Option<Id>,
    stats: Arc<ConnectionStats>,
    _slot: Slot,
}

impl FollowingStream {
    /// Wraps a socket accepted on the current runtime, let in with `slot`.
    pub(crate) fn new(tcp: TcpStream, stats: Arc<ConnectionStats>, slot: Slot) -> FollowingStream {
        FollowingStream {
            tcp: Some(tcp),
            home: Handle::try_current().ok().map(|h| h.id()),
            stats,
            _slot: slot,
        }
    }

    /// The socket, registered with the polling runtime.
    fn socket(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        if let Some(home) = self.home
            && let Ok(here) = Handle::try_current()
            && here.id() != home
        {
            let tcp = self.tcp.take().ok_or_else(lost)?;
            // Deregisters from the accepting runtime's reactor; `from_std` registers with this
            // one's. Bytes waiting in the kernel stay there, and a newly registered socket that
            // is already readable is reported at once.
            let std = tcp.into_std()?;
            self.tcp = Some(TcpStream::from_std(std)?);
            self.home = None;
            self.stats.count_move();
        }
        self.tcp.as_mut().map(Pin::new).ok_or_else(lost)
    }
}

fn lost() -> io::Error {
    io::Error::other("the socket was lost while changing runtimes")
}

impl AsyncRead for FollowingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().socket() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for FollowingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().socket() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().socket() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().socket() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().socket() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A second runtime on its own thread, returning what `work` produced.
    fn on_other_runtime<T: Send + 'static>(
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(work)
        })
        .join()
        .unwrap()
    }

    #[tokio::test]
    async fn a_stream_polled_from_another_runtime_moves_there_and_keeps_its_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, addr) = listener.accept().await.unwrap();
        let stats = Arc::new(ConnectionStats::default());
        let caps = crate::admission::Caps {
            total: 1,
            per_client: 1,
        };
        let slot = crate::admission::admit(&stats, addr.ip(), caps).unwrap();
        let mut stream = FollowingStream::new(tcp, stats.clone(), slot);

        // Polled here first: it stays.
        client.write_all(b"one").await.unwrap();
        let mut buf = [0u8; 3];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"one");
        assert_eq!(stats.moved(), 0);

        // Bytes that arrive before the other runtime polls are not lost by the move.
        client.write_all(b"two").await.unwrap();
        let stream = on_other_runtime(async move {
            let mut buf = [0u8; 3];
            stream.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"two");
            stream.write_all(b"back").await.unwrap();
            stream
        });
        assert_eq!(stats.moved(), 1);
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");

        assert_eq!(stats.open(), 1);
        drop(stream);
        assert_eq!(stats.open(), 0);
        assert_eq!(stats.accepted(), 1);
    }
}
