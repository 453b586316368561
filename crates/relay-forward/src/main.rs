//! `pi-relay-forward <port> <socket>`: the sandbox's way out. It listens on `127.0.0.1:<port>`
//! inside the sandbox and carries every connection, byte for byte in both directions, to the
//! session's egress socket (a Unix socket the relay serves, mounted read-only into the sandbox).
//! The relay starts it as a user the agent cannot signal. When the relay is not there, a client
//! gets a reset, never a clean close: Node's fetch reconnects in a tight loop on a proxy that
//! closes without answering.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Connections carried at once; more are reset. Each costs two threads, and the sandbox's
/// process limit counts threads.
const MAX_CONNECTIONS: usize = 128;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (port, socket) = match args.as_slice() {
        [port, socket] => match port.parse::<u16>() {
            Ok(p) => (p, PathBuf::from(socket)),
            Err(_) => usage(),
        },
        _ => usage(),
    };
    let listener = match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pi-relay-forward: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    serve(listener, &socket);
}

fn usage() -> ! {
    eprintln!("usage: pi-relay-forward <port> <unix socket>");
    std::process::exit(2);
}

/// Accepts forever, one thread per connection.
fn serve(listener: TcpListener, socket: &Path) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(tcp) = conn else {
            // Out of descriptors and the like: the next accept may work.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            reset(tcp);
            continue;
        }
        let (socket, count) = (socket.to_path_buf(), open.clone());
        let spawned = std::thread::Builder::new().spawn(move || {
            carry(tcp, &socket);
            count.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Closes `tcp` with a reset, so the client sees an error at once.
fn reset(tcp: TcpStream) {
    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
}

/// Carries one connection until both directions have ended.
fn carry(tcp: TcpStream, socket: &Path) {
    let _ = tcp.set_nodelay(true);
    let unix = match UnixStream::connect(socket) {
        Ok(u) => u,
        Err(_) => return reset(tcp),
    };
    let (Ok(tcp_in), Ok(unix_out)) = (tcp.try_clone(), unix.try_clone()) else {
        return reset(tcp);
    };
    let upstream = std::thread::Builder::new().spawn(move || pump(tcp_in, unix_out));
    pump(unix, tcp);
    if let Ok(t) = upstream {
        let _ = t.join();
    }
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s writing side (the other direction
/// may go on: a client may half-close).
fn pump(mut from: impl Read + Endpoint, mut to: impl Write + Endpoint) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    to.end_writing();
    from.end_reading();
}

/// The two kinds of socket, shut down by direction.
trait Endpoint {
    fn end_writing(&self);
    fn end_reading(&self);
}

impl Endpoint for TcpStream {
    fn end_writing(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
    fn end_reading(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
}

impl Endpoint for UnixStream {
    fn end_writing(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
    fn end_reading(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
}
