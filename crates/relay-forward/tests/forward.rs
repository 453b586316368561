//! The forwarder binary against a real Unix socket: bytes both ways, half-close, and a reset
//! (not a clean close) when nobody serves the socket.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Forwarder(Child);

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the forwarder and waits until it accepts.
fn forwarder(socket: &std::path::Path) -> (Forwarder, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_pi-relay-forward"))
        .arg(port.to_string())
        .arg(socket)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the forwarder did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Forwarder(child), port)
}

#[test]
fn bytes_go_both_ways_and_a_half_close_is_carried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("egress.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (_fwd, port) = forwarder(&path);
    let server = std::thread::spawn(move || {
        // The probe connection from `forwarder()` comes first and ends at once.
        loop {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            if got.is_empty() {
                continue;
            }
            // The client closed its side; this side can still answer.
            s.write_all(&[b"echo:", &got[..]].concat()).unwrap();
            return;
        }
    });
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"hello").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"echo:hello");
    server.join().unwrap();
}

#[test]
fn without_a_relay_behind_it_a_client_gets_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("egress.sock");
    // Nothing listens on the socket.
    let (_fwd, port) = forwarder(&path);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The reset may reach the client while it writes (then the write reports it, and a read
    // after that sees the connection gone) or when it reads; never a clean end of stream.
    if let Err(e) = c.write_all(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n") {
        assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "{e}"
        );
        return;
    }
    let mut buf = [0u8; 16];
    let err = c.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
}
