//! The benchmark's side of the relay's API: the REST calls it makes (as a client would), its
//! WebSocket connections, and the frame classification it needs to keep count of the journal.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{BoxError, Context};

/// A WebSocket connection to the relay.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Limit of an ordinary REST call.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);
/// Limit of activate, which waits for the sandbox (the relay itself gives up after 60 s).
const ACTIVATE_LIMIT: Duration = Duration::from_secs(90);
/// Limit of a DELETE, which stops the container (5 s grace) before answering.
const DELETE_LIMIT: Duration = Duration::from_secs(120);
/// Limit of a WebSocket handshake.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// REST and WebSocket access to one relay.
#[derive(Clone, Debug)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    ws_base: String,
}

impl Api {
    /// A client of the relay on loopback `port`.
    pub(crate) fn new(port: u16) -> Result<Api, BoxError> {
        Ok(Api {
            // One keep-alive connection per concurrent caller, like a real client.
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .ctx("building the HTTP client")?,
            base: format!("http://127.0.0.1:{port}"),
            ws_base: format!("ws://127.0.0.1:{port}"),
        })
    }

    /// The URL of a path on the relay.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        limit: Duration,
    ) -> Result<Value, BoxError> {
        let mut rb = self
            .http
            .request(method.clone(), self.url(path))
            .timeout(limit);
        if let Some(body) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let res = rb.send().await.ctx(&format!("{method} {path}"))?;
        let status = res.status();
        let text = res.text().await.ctx(&format!("{method} {path}: body"))?;
        if !status.is_success() {
            return Err(format!("{method} {path}: HTTP {status}: {text}").into());
        }
        serde_json::from_str(&text).ctx(&format!("{method} {path}: not JSON: {text}"))
    }

    /// `GET /health`.
    pub(crate) async fn health(&self) -> Result<Value, BoxError> {
        self.call(reqwest::Method::GET, "/health", None, REQUEST_LIMIT)
            .await
    }

    /// `POST /api/sessions` for a chat session; returns its id.
    pub(crate) async fn create_session(&self) -> Result<String, BoxError> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/api/sessions",
                Some(json!({"mode": "chat"})),
                REQUEST_LIMIT,
            )
            .await?;
        v.pointer("/data/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("POST /api/sessions: no data.id in {v}").into())
    }

    /// `POST /api/sessions/:id/activate`; returns once the session is active, with its lastSeq.
    pub(crate) async fn activate(&self, id: &str, client_id: &str) -> Result<u64, BoxError> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/api/sessions/{id}/activate"),
                Some(json!({"clientId": client_id})),
                ACTIVATE_LIMIT,
            )
            .await?;
        v.pointer("/data/lastSeq")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("activate: no data.lastSeq in {v}").into())
    }

    /// `DELETE /api/sessions/:id`.
    pub(crate) async fn delete_session(&self, id: &str) -> Result<(), BoxError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/api/sessions/{id}"),
            None,
            DELETE_LIMIT,
        )
        .await
        .map(drop)
    }

    /// `GET /api/sessions/:id/events?afterSeq=&limit=`: the page's events and its lastSeq.
    pub(crate) async fn events(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Value>, u64), BoxError> {
        let mut v = self
            .call(
                reqwest::Method::GET,
                &format!("/api/sessions/{id}/events?afterSeq={after}&limit={limit}"),
                None,
                REQUEST_LIMIT,
            )
            .await?;
        let last = v
            .pointer("/data/lastSeq")
            .and_then(Value::as_u64)
            .ok_or("GET events: no data.lastSeq")?;
        let events = match v.pointer_mut("/data/events").map(Value::take) {
            Some(Value::Array(a)) => a,
            _ => return Err("GET events: no data.events array".into()),
        };
        Ok((events, last))
    }

    /// Opens `/ws/sessions/:id` without reading anything from it.
    pub(crate) async fn ws_raw(
        &self,
        id: &str,
        client_id: &str,
        last_seq: u64,
    ) -> Result<Ws, BoxError> {
        let url = format!(
            "{}/ws/sessions/{id}?clientId={client_id}&lastSeq={last_seq}",
            self.ws_base
        );
        let (ws, _) = tokio::time::timeout(CONNECT_LIMIT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| format!("WebSocket handshake took over {CONNECT_LIMIT:?}"))?
            .ctx("WebSocket handshake")?;
        Ok(ws)
    }

    /// Opens `/ws/sessions/:id` and reads its `connected` message; returns the socket and the
    /// message's lastSeq.
    pub(crate) async fn ws(
        &self,
        id: &str,
        client_id: &str,
        last_seq: u64,
    ) -> Result<(Ws, u64), BoxError> {
        let mut ws = self.ws_raw(id, client_id, last_seq).await?;
        let first = next_text(&mut ws, CONNECT_LIMIT).await?;
        let v: Value = serde_json::from_str(&first).ctx("first WebSocket frame")?;
        if v["type"] != "connected" {
            return Err(format!("expected `connected` first, got {first}").into());
        }
        let seq = v["lastSeq"].as_u64().ok_or("`connected` without lastSeq")?;
        Ok((ws, seq))
    }
}

/// Sends a text frame.
pub(crate) async fn send_text(ws: &mut Ws, text: String) -> Result<(), BoxError> {
    tokio::time::timeout(REQUEST_LIMIT, ws.send(Message::Text(text.into())))
        .await
        .map_err(|_| "sending a WebSocket frame timed out")?
        .ctx("sending a WebSocket frame")?;
    Ok(())
}

/// The next text frame, failing after `limit` without one or when the socket closes.
pub(crate) async fn next_text(ws: &mut Ws, limit: Duration) -> Result<Utf8Bytes, BoxError> {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            biased;
            msg = ws.next() => msg,
            () = &mut deadline => return Err(format!("no WebSocket frame within {limit:?}").into()),
        };
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(f))) => {
                return Err(format!("the relay closed the WebSocket: {f:?}").into());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("WebSocket error: {e}").into()),
            None => return Err("the WebSocket ended".into()),
        }
    }
}

/// Whether a frame is the relay's own message rather than a pi line (only pi lines and
/// prompts are journaled).
pub(crate) fn is_relay_frame(frame: &str) -> bool {
    [
        "{\"type\":\"connected\"",
        "{\"type\":\"replay_start\"",
        "{\"type\":\"replay_end\"",
        "{\"type\":\"sandbox_status\"",
        "{\"type\":\"error\"",
    ]
    .iter()
    .any(|p| frame.starts_with(p))
}

/// The `message_update` lines of floods and paced runs.
pub(crate) const UPDATE_PREFIX: &str = "{\"type\":\"message_update\"";
/// The line that ends every fake-pi run.
pub(crate) const SETTLED_PREFIX: &str = "{\"type\":\"agent_settled\"";

/// The `sentAtNs` stamp of a paced line.
pub(crate) fn sent_at_ns(line: &[u8]) -> Option<i128> {
    const KEY: &[u8] = b"\"sentAtNs\":";
    let at = line.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let digits = &line[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Now on CLOCK_REALTIME, in nanoseconds since the epoch (what fake-pi stamps lines with).
pub(crate) fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_from_the_end_of_a_paced_line() {
        let line = br#"{"type":"message_update","usage":{},"sentAtNs":1700000000123456789}"#;
        assert_eq!(sent_at_ns(line), Some(1_700_000_000_123_456_789));
        assert_eq!(sent_at_ns(br#"{"type":"message_update"}"#), None);
    }

    #[test]
    fn relay_messages_are_told_from_pi_lines() {
        assert!(is_relay_frame(r#"{"type":"replay_end"}"#));
        assert!(!is_relay_frame(r#"{"type":"message_update","usage":{}}"#));
    }
}
