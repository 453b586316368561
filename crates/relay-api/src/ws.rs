//! `GET /ws/sessions/:id?clientId=&lastSeq=`: the socket between a client and its session's
//! hub. The upgrade is always accepted and refusals are close codes (4001, 4003, 4004), as the
//! pi-apps clients expect. After `connected` the client gets the journal it missed (when
//! `0 < lastSeq < current`), then live frames; its frames go to the hub.

use std::collections::HashMap;

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

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
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
    let writer = write_loop(sink, conn, id.clone(), last_seq, cancel);
    let reader = async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Text(t)) => hub.command(conn_id, Bytes::from(t)).await,
                Ok(Message::Binary(b)) => hub.command(conn_id, b).await,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
            }
        }
    };
    tokio::select! {
        conn = writer => conn.close().await,
        () = reader => {}
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

fn text(b: Bytes) -> Option<Message> {
    Utf8Bytes::try_from(b).ok().map(Message::Text)
}

/// How long a close frame may wait for a client that does not read; then the connection is
/// dropped without it.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn close_sink(sink: &mut Sink, code: u16, reason: &str) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    // A client cut off for not reading will not read its close frame either: don't wait for it
    // forever, or the socket (and its buffers) would stay.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(frame)).await;
}

/// Sends `connected`, the replay, then live frames until the hub, the relay or the socket ends
/// it. Returns the connection so the caller unregisters it.
async fn write_loop(
    mut sink: Sink,
    mut conn: ClientConn,
    id: String,
    last_seq: u64,
    cancel: tokio_util::sync::CancellationToken,
) -> ClientConn {
    let upto = conn.seq_at_connect();
    let greeting = async {
        sink.feed(Message::Text(
            protocol::connected(&id, upto).try_into().ok()?,
        ))
        .await
        .ok()?;
        if last_seq > 0 && last_seq < upto {
            let mut replay = conn.hub().replay(last_seq, upto).await.ok()?;
            sink.feed(text(protocol::replay_start(last_seq, upto))?)
                .await
                .ok()?;
            while let Some(page) = replay.next_page().await.ok()? {
                for payload in page {
                    if let Some(m) = text(payload) {
                        sink.feed(m).await.ok()?;
                    }
                }
                sink.flush().await.ok()?;
            }
            sink.feed(text(protocol::replay_end())?).await.ok()?;
        }
        if !conn.attached() {
            sink.feed(text(protocol::sandbox_status(
                "stopped",
                Some("Sandbox channel not attached"),
            ))?)
            .await
            .ok()?;
        }
        sink.flush().await.ok()
    };
    if greeting.await.is_none() {
        return conn;
    }
    let kicked = conn.kicked();
    loop {
        let frame = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                close_sink(&mut sink, 1001, "Relay shutting down").await;
                return conn;
            }
            _ = kicked.cancelled() => {
                close_sink(&mut sink, CLOSE_TOO_SLOW, TOO_SLOW).await;
                return conn;
            }
            frame = conn.recv() => frame,
        };
        // Writing blocks while the client does not read: race it against being cut off, or a
        // stalled client would keep its socket (and the relay's buffers) forever.
        let sent = tokio::select! {
            biased;
            _ = kicked.cancelled() => Sent::Kicked,
            sent = send_batch(&mut sink, &mut conn, frame) => sent,
        };
        match sent {
            Sent::More => {}
            Sent::Done => return conn,
            Sent::Kicked => {
                close_sink(&mut sink, CLOSE_TOO_SLOW, TOO_SLOW).await;
                return conn;
            }
        }
    }
}

const TOO_SLOW: &str = "Client too slow; reconnect with lastSeq";

enum Sent {
    More,
    Done,
    Kicked,
}

/// Writes `first` and whatever else is queued (up to [`FLUSH_EVERY`] frames), then flushes.
async fn send_batch(sink: &mut Sink, conn: &mut ClientConn, first: Option<Outbound>) -> Sent {
    let mut next = first;
    let mut fed = 0;
    loop {
        match next {
            Some(Outbound::Text(b)) => {
                if let Some(m) = text(b)
                    && sink.feed(m).await.is_err()
                {
                    return Sent::Done;
                }
            }
            Some(Outbound::Close(code, reason)) => {
                close_sink(sink, code, &reason).await;
                return Sent::Done;
            }
            None => return Sent::Done,
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
    if sink.flush().await.is_err() {
        return Sent::Done;
    }
    Sent::More
}
