//! `GET /ws/sessions/:id?clientId=&lastSeq=`: the socket between a client and its session's
//! hub. The upgrade is always accepted and refusals are close codes (4001, 4003, 4004), as the
//! pi-apps clients expect. After `connected` the client gets the journal it missed (when
//! `0 < lastSeq < current`), then live frames; its frames go to the hub.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use relay_hub::hub::CLOSE_TOO_SLOW;
use relay_hub::protocol;
use relay_session::{ClientConn, Outbound};

use crate::AppState;

/// Largest frame a client may send (prompts carry base64 images).
pub const MAX_CLIENT_MESSAGE: usize = 32 * 1024 * 1024;
/// Frames written before the socket is flushed.
const FLUSH_EVERY: usize = 256;

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let client_id = q.get("clientId").filter(|c| !c.is_empty()).cloned();
    // As in the pi-apps relay, an unparsable lastSeq means "no replay".
    let last_seq = q
        .get("lastSeq")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| run(socket, state, id, client_id, last_seq))
}

/// Sends a close frame with `code` and `reason` (the socket's end).
pub(crate) async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

async fn run(
    socket: WebSocket,
    state: AppState,
    id: String,
    client_id: Option<String>,
    last_seq: u64,
) {
    let Some(client_id) = client_id else {
        return close(socket, 4001, "clientId query parameter is required").await;
    };
    if let Err(e) = crate::sessions::check_client_id(&client_id) {
        return close(socket, 4001, &e.to_string()).await;
    }
    if crate::sessions::valid_id(&id).is_err() {
        return close(socket, 4004, "Session not found").await;
    }
    let conn = match state.sessions.connect(&id, &client_id).await {
        Ok(c) => c,
        Err(r) => return close(socket, r.code, r.reason).await,
    };
    let hub = conn.hub().clone();
    let conn_id = conn.id();
    let (sink, mut stream) = socket.split();
    let cancel = state.sessions.cancel_token().clone();
    // A frame the client got wrong is answered with a close code, which the writer sends.
    let (violation_tx, violation) = tokio::sync::oneshot::channel();
    let stall = state.write_stall_timeout;
    let writer = write_loop(sink, conn, id.clone(), last_seq, stall, cancel, violation);
    let reader = async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Text(t)) => hub.command(conn_id, Bytes::from(t)).await,
                Ok(Message::Binary(b)) => hub.command(conn_id, b).await,
                Ok(Message::Close(_)) => return,
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Err(e) => {
                    let Some(code) = violation_code(e) else {
                        return;
                    };
                    let _ = violation_tx.send(code);
                    // The writer closes the socket and ends this.
                    return std::future::pending().await;
                }
            }
        }
    };
    tokio::select! {
        conn = writer => conn.close().await,
        () = reader => {}
    }
}

/// The close code for a frame the client got wrong (RFC 6455 §7.4.1), or `None` when the
/// connection simply failed.
fn violation_code(e: axum::Error) -> Option<(u16, &'static str)> {
    use tokio_tungstenite::tungstenite::Error;
    let e = e.into_inner().downcast::<Error>().ok()?;
    match *e {
        Error::Capacity(_) => Some((1009, "Message too big")),
        Error::Utf8(_) => Some((1007, "Invalid UTF-8 in a text message")),
        Error::Protocol(_) => Some((1002, "WebSocket protocol error")),
        _ => None,
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

fn text(b: Bytes) -> Option<Message> {
    Utf8Bytes::try_from(b).ok().map(Message::Text)
}

/// How long a close frame may wait for a client that does not read; then the connection is
/// dropped without it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of how long a write may wait for a client that takes nothing: then the client is cut
/// off as too slow (4008) and reconnects with `lastSeq`. Bounds what a client that stopped
/// reading holds, in a replay as in live streaming, however quiet its session.
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

async fn close_sink(sink: &mut Sink, code: u16, reason: &str) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    // A client cut off for not reading will not read its close frame either: don't wait for it
    // forever, or the socket (and its buffers) would stay.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(frame)).await;
}

/// Why the writer stops.
enum End {
    /// The socket failed or the client left: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}

fn too_slow() -> End {
    End::Close(CLOSE_TOO_SLOW, TOO_SLOW.into())
}

/// One write to the client, cut off if it takes nothing for `stall`.
async fn write<E>(
    stall: Duration,
    op: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), End> {
    match tokio::time::timeout(stall, op).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(too_slow()),
    }
}

/// `connected`, the replay the client asked for (read page by page, so a replay holds at most a
/// page in memory), and the sandbox's state.
async fn greet(
    sink: &mut Sink,
    conn: &ClientConn,
    id: &str,
    last_seq: u64,
    stall: Duration,
) -> Result<(), End> {
    let upto = conn.seq_at_connect();
    let frame = |b: Bytes| text(b).ok_or(End::Gone);
    write(stall, sink.feed(frame(protocol::connected(id, upto))?)).await?;
    if last_seq > 0 && last_seq < upto {
        let mut replay = conn.hub().replay(last_seq, upto).await.map_err(|e| {
            tracing::warn!(session = %id, error = %e, "cannot replay the journal");
            End::Close(1011, "Cannot read the journal".into())
        })?;
        write(
            stall,
            sink.feed(frame(protocol::replay_start(last_seq, upto))?),
        )
        .await?;
        loop {
            let page = replay.next_page().await.map_err(|e| {
                tracing::warn!(session = %id, error = %e, "cannot replay the journal");
                End::Close(1011, "Cannot read the journal".into())
            })?;
            let Some(page) = page else { break };
            for payload in page {
                if let Some(m) = text(payload) {
                    write(stall, sink.feed(m)).await?;
                }
            }
            write(stall, sink.flush()).await?;
        }
        write(stall, sink.feed(frame(protocol::replay_end())?)).await?;
    }
    if !conn.attached() {
        let status = protocol::sandbox_status("stopped", Some("Sandbox channel not attached"));
        write(stall, sink.feed(frame(status)?)).await?;
    }
    write(stall, sink.flush()).await
}

/// Sends `connected`, the replay, then live frames until the hub, the relay, the client or the
/// socket ends it. Returns the connection so the caller unregisters it.
#[allow(clippy::too_many_arguments)]
async fn write_loop(
    mut sink: Sink,
    mut conn: ClientConn,
    id: String,
    last_seq: u64,
    stall: Duration,
    cancel: tokio_util::sync::CancellationToken,
    mut violation: tokio::sync::oneshot::Receiver<(u16, &'static str)>,
) -> ClientConn {
    let kicked = conn.kicked();
    // Whatever the writer is doing, these end it: the relay stopping, the client falling too far
    // behind (its backlog was dropped), a frame the client got wrong.
    let ended = async |violation: &mut tokio::sync::oneshot::Receiver<(u16, &'static str)>| {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => End::Close(1001, "Relay shutting down".into()),
            _ = kicked.cancelled() => too_slow(),
            v = violation => match v {
                Ok((code, reason)) => End::Close(code, reason.into()),
                // The reader ended without one: the client is gone.
                Err(_) => End::Gone,
            },
        }
    };
    let greeted = tokio::select! {
        biased;
        end = ended(&mut violation) => Err(end),
        r = greet(&mut sink, &conn, &id, last_seq, stall) => r,
    };
    let end = match greeted {
        Err(end) => end,
        Ok(()) => loop {
            let frame = tokio::select! {
                biased;
                end = ended(&mut violation) => break end,
                frame = conn.recv() => frame,
            };
            let sent = tokio::select! {
                biased;
                end = ended(&mut violation) => Err(end),
                sent = send_batch(&mut sink, &mut conn, frame, stall) => sent,
            };
            if let Err(end) = sent {
                break end;
            }
        },
    };
    if let End::Close(code, reason) = end {
        close_sink(&mut sink, code, &reason).await;
    }
    conn
}

const TOO_SLOW: &str = "Client too slow; reconnect with lastSeq";

/// Writes `first` and whatever else is queued (up to [`FLUSH_EVERY`] frames), then flushes.
async fn send_batch(
    sink: &mut Sink,
    conn: &mut ClientConn,
    first: Option<Outbound>,
    stall: Duration,
) -> Result<(), End> {
    let mut next = first;
    let mut fed = 0;
    loop {
        match next {
            Some(Outbound::Text(b)) => {
                if let Some(m) = text(b) {
                    write(stall, sink.feed(m)).await?;
                }
            }
            Some(Outbound::Close(code, reason)) => return Err(End::Close(code, reason)),
            None => return Err(End::Gone),
        }
        fed += 1;
        if fed >= FLUSH_EVERY {
            break;
        }
        next = match conn.try_recv() {
            Some(f) => Some(f),
            None => break,
        };
    }
    write(stall, sink.flush()).await
}
