//! [`MockLlm`]: the loopback listener, one task per connection, and the routing of each request.
//!
//! Each connection carries exactly one request and is closed after the response
//! (`Connection: close`), so an SSE body simply ends at EOF and no keep-alive state is needed.
//! All connection tasks live in a `JoinSet` owned by the accept task, so dropping the [`MockLlm`]
//! stops the listener and cuts off any stream still in flight.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::completion::{Script, choose_turn, chunks};
use crate::http::{self, Head, ReadError};

/// How long a client may take to send a whole request. pi sends it at once; the limit only stops
/// a stuck or half-open client from holding a task forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long, and how many bytes, to drain after an error response sent before the request was
/// read in full. Closing a socket with unread input makes the kernel send a reset, which can
/// destroy the response before the client reads it.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// Head of every streamed answer. There is no `Content-Length`: the body ends when the
/// connection closes, as with the Python mock of the recipe.
const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\n\
    Content-Type: text/event-stream\r\n\
    Cache-Control: no-cache\r\n\
    Connection: close\r\n\
    \r\n";

/// A mock LLM speaking the OpenAI chat-completions streaming API on `127.0.0.1`.
///
/// Any `POST` whose path ends with `/chat/completions` is recorded and answered with a stream of
/// `chat.completion.chunk` events: a `bash` tool call running [`Script::tool_command`] if the
/// request offers tools and its last message is not a tool result, otherwise
/// [`Script::final_text`]. Other paths get `404`. The server stops when this value is dropped.
#[derive(Debug)]
pub struct MockLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    script: Script,
    requests: Mutex<Vec<Value>>,
}

impl MockLlm {
    /// Binds `127.0.0.1:0` and serves until dropped. Must be called inside a tokio runtime; the
    /// server runs as tasks on that runtime.
    ///
    /// pi inside a container reaches it only when the container shares the host's network
    /// namespace (`--network host`), which is how the relay's end-to-end tests run it.
    pub async fn start(script: Script) -> std::io::Result<MockLlm> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script,
            requests: Mutex::new(Vec::new()),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(MockLlm {
            addr,
            shared,
            accept_task,
        })
    }

    /// The port the mock listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The value for `baseUrl` in pi's `models.json`: `http://127.0.0.1:<port>/v1`. pi's OpenAI
    /// client appends `/chat/completions`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every chat-completions request body received so far, parsed as JSON, in arrival order.
    /// Bodies that are not JSON are answered with `400` and not recorded.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.requests().clone()
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        // Aborting the accept task drops the listener and its JoinSet, which aborts every
        // connection task.
        self.accept_task.abort();
    }
}

impl Shared {
    /// The request log. A panic while holding the lock cannot leave the Vec half-updated (push is
    /// the only mutation), so a poisoned lock is still safe to use.
    fn requests(&self) -> std::sync::MutexGuard<'_, Vec<Value>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                // Accept fails for reasons such as running out of file descriptors; those pass,
                // so back off briefly instead of spinning or giving up.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow for the life of the mock.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Each SSE event is one small write; without this, Nagle's algorithm would delay the
    // streaming the tests want to observe.
    let _ = stream.set_nodelay(true);
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);

    let request =
        tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut reader, &mut writer)).await;
    let (head, body) = match request {
        Ok(Ok(request)) => request,
        Ok(Err(ReadError::Malformed(reason))) => {
            return reject(reader, writer, 400, "Bad Request", reason).await;
        }
        Ok(Err(ReadError::TooLarge(reason))) => {
            return reject(reader, writer, 413, "Content Too Large", reason).await;
        }
        Ok(Err(ReadError::Closed)) => return,
        Err(_elapsed) => {
            return reject(
                reader,
                writer,
                408,
                "Request Timeout",
                "request not received in time",
            )
            .await;
        }
    };

    // The request has been read in full, so closing after the response cannot cause a reset.
    let _ = respond(&shared, &head, &body, &mut writer).await;
    let _ = writer.shutdown().await;
}

async fn read_request(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
) -> Result<(Head, Vec<u8>), ReadError> {
    let head = http::read_head(reader).await?;
    // Clients that send `Expect: 100-continue` wait for this before sending the body.
    if head
        .header("expect")
        .is_some_and(|expect| expect.eq_ignore_ascii_case("100-continue"))
    {
        writer
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| ReadError::Closed)?;
    }
    let body = http::read_body(reader, &head).await?;
    Ok((head, body))
}

async fn respond<W: AsyncWrite + Unpin>(
    shared: &Shared,
    head: &Head,
    body: &[u8],
    writer: &mut W,
) -> std::io::Result<()> {
    let path = head.path();
    if !path.ends_with("/chat/completions") {
        let message = format!("no route for {} {path}", head.method);
        return write_error(writer, 404, "Not Found", "not_found", &message, "").await;
    }
    if head.method != "POST" {
        let message = format!("{} is not allowed on {path}", head.method);
        return write_error(
            writer,
            405,
            "Method Not Allowed",
            "invalid_request_error",
            &message,
            "Allow: POST\r\n",
        )
        .await;
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => {
            let message = format!("request body is not JSON: {error}");
            return write_error(
                writer,
                400,
                "Bad Request",
                "invalid_request_error",
                &message,
                "",
            )
            .await;
        }
    };

    let turn = choose_turn(&request);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(crate::MODEL_ID)
        .to_owned();
    // Record before answering, so a test that has seen the response also sees the request.
    shared.requests().push(request);

    writer.write_all(SSE_HEAD.as_bytes()).await?;
    for chunk in chunks(turn, &shared.script, &model) {
        writer
            .write_all(format!("data: {chunk}\n\n").as_bytes())
            .await?;
    }
    writer.write_all(b"data: [DONE]\n\n").await
}

/// Answers a request that could not be read, then drains what the client still sends.
async fn reject(
    mut reader: BufReader<OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
    status: u16,
    reason: &str,
    message: &str,
) {
    if write_error(
        &mut writer,
        status,
        reason,
        "invalid_request_error",
        message,
        "",
    )
    .await
    .is_err()
    {
        return;
    }
    let _ = writer.shutdown().await;
    let drain = async {
        let mut sink = [0; 8192];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match reader.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained += read,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
}

/// Writes a JSON error in the OpenAI API's `{"error": {...}}` shape.
async fn write_error<W: AsyncWrite + Unpin>(
    writer: &mut W,
    status: u16,
    reason: &str,
    kind: &str,
    message: &str,
    extra_headers: &str,
) -> std::io::Result<()> {
    let body = json!({ "error": { "message": message, "type": kind, "code": null } }).to_string();
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         {extra_headers}\
         \r\n\
         {body}",
        body.len()
    );
    writer.write_all(response.as_bytes()).await
}
