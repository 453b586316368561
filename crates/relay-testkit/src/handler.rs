//! The answer to one request: routing by path and method, reading the body within its limit,
//! recording it, the JSON errors, and the server-sent events of a chat completion.
//!
//! HTTP/1.1 itself (framing, chunked bodies, `Expect: 100-continue`, keep-alive, malformed
//! requests) is hyper's work, under axum.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::completion::{Script, Turn, choose_turn, chunks};

/// Largest request body. pi's first request is about 5 KB and each later one carries the whole
/// conversation, so this leaves room for long test sessions.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// The OpenAI API's error `type` for a request it cannot take.
const INVALID: &str = "invalid_request_error";

/// What every request handler shares with the [`MockLlm`](crate::MockLlm) that owns it.
#[derive(Debug)]
pub(crate) struct Shared {
    script: Script,
    requests: Mutex<Vec<Value>>,
    /// The `Authorization` header of each recorded request, in the same order.
    authorizations: Mutex<Vec<Option<String>>>,
    /// Pause before each chunk of an answer.
    chunk_delay: Mutex<Duration>,
    /// Cancelled when the mock is dropped; a request still waiting for its body gives up then.
    shutdown: CancellationToken,
}

impl Shared {
    /// State for a mock that says `script` and stops reading bodies once `shutdown` is cancelled.
    pub(crate) fn new(script: Script, shutdown: CancellationToken) -> Shared {
        Shared {
            script,
            requests: Mutex::new(Vec::new()),
            authorizations: Mutex::new(Vec::new()),
            chunk_delay: Mutex::new(Duration::ZERO),
            shutdown,
        }
    }

    /// The request log. A panic while holding the lock cannot leave the Vec half-updated (push is
    /// the only mutation), so a poisoned lock is still safe to use.
    pub(crate) fn requests(&self) -> MutexGuard<'_, Vec<Value>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pause before each chunk of the answers that start from now on.
    pub(crate) fn set_chunk_delay(&self, delay: Duration) {
        *self
            .chunk_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = delay;
    }

    fn chunk_delay(&self) -> Duration {
        *self
            .chunk_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The `Authorization` headers of the recorded requests (poisoning as for `requests`).
    pub(crate) fn authorizations(&self) -> MutexGuard<'_, Vec<Option<String>>> {
        self.authorizations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Answers a request to the mock: `POST …/chat/completions` streams a completion; anything else
/// is an error in the OpenAI API's JSON shape.
pub(crate) async fn answer(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (method, path) = (&parts.method, parts.uri.path());
    if !path.ends_with("/chat/completions") {
        let message = format!("no route for {method} {path}");
        return error(StatusCode::NOT_FOUND, "not_found", message);
    }
    if method != Method::POST {
        let message = format!("{method} is not allowed on {path}");
        let refusal = error(StatusCode::METHOD_NOT_ALLOWED, INVALID, message);
        return ([(header::ALLOW, "POST")], refusal).into_response();
    }
    let body = match read_body(&parts.headers, body, &shared.shutdown).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(cause) => {
            let message = format!("request body is not JSON: {cause}");
            return error(StatusCode::BAD_REQUEST, INVALID, message);
        }
    };

    let turn = choose_turn(&request);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(crate::MODEL_ID)
        .to_owned();
    // Record before answering, so a test that has seen the response also sees the request.
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    shared.authorizations().push(authorization);
    shared.requests().push(request);
    stream(turn, &shared.script, &model, shared.chunk_delay())
}

/// Reads the whole body, or answers why not.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    shutdown: &CancellationToken,
) -> Result<Vec<u8>, Response> {
    // A declared length over the limit is refused before any of the body is read, so the client
    // is neither kept sending it nor, with `Expect: 100-continue`, invited to.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut frames = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(frame) = frames.next().await {
            let frame = frame.map_err(|cause| {
                let message = format!("cannot read the request body: {cause}");
                error(StatusCode::BAD_REQUEST, INVALID, message)
            })?;
            // A chunked body announces no length, so the limit is checked as it arrives.
            if frame.len() > MAX_BODY - bytes.len() {
                return Err(too_large());
            }
            bytes.extend_from_slice(&frame);
        }
        Ok(bytes)
    };
    tokio::select! {
        read = read => read,
        // A client that stalls inside its body must not keep the connection's task alive after
        // the mock is gone.
        () = shutdown.cancelled() => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the mock LLM is shutting down".to_owned(),
        )),
    }
}

/// The `413` for a body over [`MAX_BODY`].
fn too_large() -> Response {
    let message = format!("request body is larger than {MAX_BODY} bytes");
    error(StatusCode::PAYLOAD_TOO_LARGE, INVALID, message)
}

/// An error in the OpenAI API's `{"error": {...}}` shape, as `application/json`.
fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = json!({ "error": { "message": message, "type": kind, "code": null } });
    (status, Json(body)).into_response()
}

/// The completion for `turn` as server-sent events: one `data:` event per chunk, then
/// `data: [DONE]`. Each event is its own frame of the response body, so hyper sends it as soon
/// as it is produced.
fn stream(turn: Turn, script: &Script, model: &str, delay: Duration) -> Response {
    let events = chunks(turn, script, model)
        .into_iter()
        .map(|chunk| chunk.to_string())
        .chain(["[DONE]".to_owned()])
        .map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    if delay.is_zero() {
        return Sse::new(futures_util::stream::iter(events)).into_response();
    }
    // Each chunk after a pause: a response still streaming when a test acts.
    let slow = futures_util::stream::iter(events).then(move |event| async move {
        tokio::time::sleep(delay).await;
        event
    });
    Sse::new(slow).into_response()
}
