//! The connection layer: requests in any form (partial, slow, kept alive, pipelined) and what
//! happens to their sockets. Each connection is made by hand over TCP so the test controls every
//! byte; the server's side is read from the relay's connection counters and from the kernel's
//! socket table.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn open_connections(app: &TestApp) -> usize {
    app.relay.as_ref().unwrap().connections.open()
}

async fn connect(app: &TestApp) -> TcpStream {
    let tcp = TcpStream::connect(app.relay.as_ref().unwrap().addr)
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// Reads one HTTP response (headers and a `Content-Length` body) off `tcp`.
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PROMPTLY, tcp.read(&mut byte))
            .await
            .expect("no response")
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8(body).unwrap()
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n";

#[tokio::test]
async fn a_partial_request_that_closes_releases_its_socket() {
    let app = spawn_app().await;
    // Every prefix of a WebSocket request (the old router waited forever on these), and of others.
    let request = b"GET /ws/sessions/x HTTP/1.1\r\n";
    for len in 1..=request.len() {
        let mut tcp = connect(&app).await;
        let client_port = tcp.local_addr().unwrap().port();
        tcp.write_all(&request[..len]).await.unwrap();
        tcp.shutdown().await.unwrap();
        drop(tcp);
        released(&app, client_port).await;
    }
    eventually(|| async { open_connections(&app) == 0 }).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stalls_mid_request_is_disconnected_while_health_keeps_answering() {
    let app = spawn_app_with(&["--header-timeout-secs", "1"]).await;
    let mut stalled = Vec::new();
    for prefix in [
        &b"GET /ws/"[..],
        b"G",
        b"GET /health HTTP/1.1\r\nHost: x\r\n",
        b"",
    ] {
        let mut tcp = connect(&app).await;
        tcp.write_all(prefix).await.unwrap();
        stalled.push(tcp);
    }
    // Meanwhile the relay answers others.
    let r = app.get("/health").await;
    assert_eq!(r.status, 200);
    for mut tcp in stalled {
        let client_port = tcp.local_addr().unwrap().port();
        // The relay closes the connection (a 408 may come first); the client sees the end.
        let mut rest = Vec::new();
        tokio::time::timeout(PROMPTLY, tcp.read_to_end(&mut rest))
            .await
            .expect("the stalled connection was not closed")
            .unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
            "{rest}"
        );
        released(&app, client_port).await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(&["--header-timeout-secs", "1"]).await;
    let mut tcp = connect(&app).await;
    tcp.write_all(HEALTH).await.unwrap();
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    tokio::time::timeout(PROMPTLY, tcp.read_to_end(&mut rest))
        .await
        .expect("the idle connection was not closed")
        .unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    app.shutdown().await;
}

#[tokio::test]
async fn pipelined_and_split_requests_are_each_answered() {
    let app = spawn_app().await;
    let mut tcp = connect(&app).await;
    // Two requests in one write.
    tcp.write_all(&[HEALTH, HEALTH].concat()).await.unwrap();
    for _ in 0..2 {
        let res = read_response(&mut tcp).await;
        assert!(res.starts_with("HTTP/1.1 200"), "{res}");
        assert!(res.contains("\"ok\":true"), "{res}");
    }
    // One request a byte at a time.
    for b in HEALTH {
        tcp.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_websocket_opened_on_a_kept_alive_connection_moves_to_the_work_runtime() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let relay = app.relay.as_ref().unwrap();
    let moved_before = relay.connections.moved();

    // A plain request first, then the upgrade on the same connection.
    let mut tcp = connect(&app).await;
    tcp.write_all(HEALTH).await.unwrap();
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    assert_eq!(relay.connections.moved(), moved_before);
    let url = format!("{}/ws/sessions/{id}?clientId=c1&lastSeq=0", app.ws_base);
    let (mut ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "connected", "{first}");
    let frames = prompt(&mut ws, "p1", "hello").await;
    assert_eq!(frames.last().unwrap()["type"], "agent_settled");
    assert_eq!(relay.connections.moved(), moved_before + 1);

    // A WebSocket on a connection of its own moves too.
    let (other, _) = app.connect(&id, "c2", 0).await;
    assert_eq!(relay.connections.moved(), moved_before + 2);
    drop(other);
    app.shutdown().await;
}

/// A connection to the relay from `source` (another loopback address stands for another client).
async fn connect_from(app: &TestApp, source: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = socket
        .connect(app.relay.as_ref().unwrap().addr)
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

#[tokio::test]
async fn one_address_holding_its_share_of_connections_is_refused_while_others_get_in() {
    let app = spawn_app_with(&["--max-connections-per-client", "5"]).await;
    let relay = app.relay.as_ref().unwrap();
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    // Slowloris: headers that never end.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut tcp = connect_from(&app, "127.0.0.2").await;
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(tcp);
    }
    eventually(|| async { relay.connections.open_from(attacker) == 5 }).await;
    // The sixth from that address is told why, and closed.
    let mut sixth = connect_from(&app, "127.0.0.2").await;
    sixth.write_all(HEALTH).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PROMPTLY, sixth.read_to_string(&mut answer))
        .await
        .expect("the refused connection was not closed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(
        answer.contains(r#"{"data":null,"error":"Too many open connections from this address; try again later"}"#),
        "{answer}"
    );
    // Another client is served all the while.
    assert_eq!(app.get("/health").await.status, 200);
    assert!(relay.connections.refused() >= 1);
    drop(held);
    eventually(|| async { relay.connections.open_from(attacker) == 0 }).await;
    app.shutdown().await;
}

#[tokio::test]
async fn slow_connections_are_released_by_the_header_timeout_while_health_keeps_answering() {
    let app = spawn_app_with(&["--header-timeout-secs", "1"]).await;
    let relay = app.relay.as_ref().unwrap();
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut tcp = connect_from(&app, "127.0.0.2").await;
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(tcp);
    }
    eventually(|| async { relay.connections.open_from(attacker) == 50 }).await;
    assert_eq!(app.get("/health").await.status, 200);
    // Every one of them is closed by the relay, without the client doing anything.
    eventually(|| async { relay.connections.open_from(attacker) == 0 }).await;
    for mut tcp in held {
        let mut rest = Vec::new();
        tokio::time::timeout(PROMPTLY, tcp.read_to_end(&mut rest))
            .await
            .expect("closed by the relay")
            .unwrap();
    }
    assert_eq!(app.get("/health").await.status, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn the_relay_holds_at_most_its_maximum_of_connections() {
    let app = spawn_app_with(&["--max-connections", "3"]).await;
    let relay = app.relay.as_ref().unwrap();
    let mut held = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        held.push(connect_from(&app, source).await);
    }
    eventually(|| async { relay.connections.open() == 3 }).await;
    let mut fourth = connect_from(&app, "127.0.0.5").await;
    fourth.write_all(HEALTH).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PROMPTLY, fourth.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("The relay has too many open connections"),
        "{answer}"
    );
    drop(held);
    eventually(|| async { relay.connections.open() == 0 }).await;
    assert_eq!(app.get("/health").await.status, 200);
    app.shutdown().await;
}

/// The header timeout bounds requests, not the WebSockets they became: a session socket that is
/// quiet for longer than it stays open and answers.
#[tokio::test]
async fn an_open_websocket_outlives_the_header_timeout() {
    let app = spawn_app_with(&["--header-timeout-secs", "1"]).await;
    let id = app.active_session().await;
    let (mut ws, _) = app.connect(&id, "quiet", 0).await;
    // Three header timeouts of silence on an otherwise idle relay.
    tokio::time::sleep(Duration::from_secs(3)).await;
    send(
        &mut ws,
        serde_json::json!({"id": "later", "type": "get_state"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["id"], "later");
    app.shutdown().await;
}
