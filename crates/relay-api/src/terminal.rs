//! `GET /ws/sessions/:id/terminal?cols=&rows=`: an interactive shell in the session's sandbox,
//! in the pi-apps relay's JSON protocol (no client id, no hub, one shell per socket). The client
//! sends `{"type":"input","data"}` and `{"type":"resize","cols","rows"}`; the relay sends
//! `{"type":"output","data"}`, then `{"type":"exit","exitCode"}` and closes with 1000 when the
//! shell ends. A refusal is `{"type":"error","message"}` and a close (4004, 4003). Closing the
//! socket hangs the shell's terminal up.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures_util::StreamExt;
use relay_session::{Terminal, TerminalSize};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::AppState;

/// Largest message from a client (keystrokes and pastes).
const MAX_TERMINAL_MESSAGE: usize = 1024 * 1024;

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let dim = |name: &str, default: u16| {
        q.get(name)
            .and_then(|v| v.trim().parse::<u16>().ok())
            .filter(|v| *v > 0)
            .unwrap_or(default)
    };
    let size = TerminalSize {
        cols: dim("cols", 80),
        rows: dim("rows", 24),
    };
    ws.max_message_size(MAX_TERMINAL_MESSAGE)
        .max_frame_size(MAX_TERMINAL_MESSAGE)
        .on_upgrade(move |socket| run(socket, state, id, size))
}

/// What a client sends.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Input { data: String },
    Resize { cols: u16, rows: u16 },
}

async fn send(socket: &mut WebSocket, value: serde_json::Value) -> bool {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .is_ok()
}

async fn run(mut socket: WebSocket, state: AppState, id: String, size: TerminalSize) {
    if crate::sessions::valid_id(&id).is_err() {
        send(
            &mut socket,
            json!({"type": "error", "message": "Session not found"}),
        )
        .await;
        return crate::ws::close(socket, 4004, "Session not found").await;
    }
    let terminal = match state.sessions.open_terminal(&id, size).await {
        Ok(t) => t,
        Err(r) => {
            send(&mut socket, json!({"type": "error", "message": r.message})).await;
            let reason = if r.code == 4004 {
                "Session not found"
            } else {
                "Failed to open terminal"
            };
            return crate::ws::close(socket, r.code, reason).await;
        }
    };
    let cancel = state.sessions.cancel_token().clone();
    serve(socket, terminal, cancel).await;
}

async fn serve(
    mut socket: WebSocket,
    terminal: Terminal,
    cancel: tokio_util::sync::CancellationToken,
) {
    let Terminal {
        mut output,
        mut input,
        control,
    } = terminal;
    let mut text = Utf8Carry::default();
    loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(bytes)) => {
                    let data = text.push(&bytes);
                    if !data.is_empty()
                        && !send(&mut socket, json!({"type": "output", "data": data})).await
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "terminal output failed");
                    break;
                }
                None => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ClientMessage>(&t) {
                    Ok(ClientMessage::Input { data }) if !typed(&mut input, &data).await => break,
                    Ok(ClientMessage::Input { .. }) => {}
                    Ok(ClientMessage::Resize { cols, rows }) if cols > 0 && rows > 0 => {
                        if let Err(e) = control.resize(TerminalSize { cols, rows }).await {
                            tracing::debug!(error = %e, "terminal resize failed");
                        }
                    }
                    // Anything else is ignored, as in the pi-apps relay.
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            () = cancel.cancelled() => {
                return crate::ws::close(socket, 1001, "Relay shutting down").await;
            }
        }
    }
    // The shell ended (or its stream broke): its exit code, once the engine has it.
    let mut exit_code = 1;
    for _ in 0..20 {
        match control.exit_code().await {
            Ok(Some(c)) => {
                exit_code = c;
                break;
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => break,
        }
    }
    let rest = text.finish();
    if !rest.is_empty() {
        send(&mut socket, json!({"type": "output", "data": rest})).await;
    }
    send(&mut socket, json!({"type": "exit", "exitCode": exit_code})).await;
    crate::ws::close(socket, 1000, "PTY exited").await;
}

/// Writes a client's keystrokes to the shell; false once the shell's side is gone.
async fn typed(
    input: &mut std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    data: &str,
) -> bool {
    input.write_all(data.as_bytes()).await.is_ok() && input.flush().await.is_ok()
}

/// Turns a byte stream into text without splitting a character across messages: an
/// incomplete sequence at the end of a chunk waits for the next one.
#[derive(Default)]
struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete at the end: keep it for the next chunk.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_are_joined_and_bad_bytes_replaced() {
        let mut t = Utf8Carry::default();
        let e = "é".as_bytes();
        assert_eq!(t.push(&[b'a', e[0]]), "a");
        assert_eq!(t.push(&[e[1], b'b']), "éb");
        assert_eq!(t.push(&[0xff, b'c']), "\u{fffd}c");
        assert_eq!(t.push(&[e[0]]), "");
        assert_eq!(t.finish(), "\u{fffd}");
    }
}
