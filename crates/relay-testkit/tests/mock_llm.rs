//! The mock LLM over real sockets: requests are written by hand the way pi's OpenAI SDK sends
//! them, and the SSE answers are parsed and reassembled the way pi does.

use std::collections::BTreeMap;
use std::time::Duration;

use relay_testkit::{MockLlm, Script};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Requests (path, headers, body) that real pi 1.5.2 sent to the Python mock of the recipe.
/// Found from the crate's directory at run time, so a test binary built in another checkout
/// still reads this checkout's file.
fn recorded_requests() -> String {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("run through cargo test");
    format!("{crate_dir}/../../testdata/pi-1.5.2/llm-requests-openai.jsonl")
}

/// Upper bound for any single exchange, so a bug makes a test fail instead of hang.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn script() -> Script {
    Script {
        // Quotes, a backslash and a newline make sure the arguments are JSON-escaped.
        tool_command: "printf '%s\\n' \"hi there\" > /workspace/hello.txt\necho done".to_owned(),
        final_text: "The file now says hi there.".to_owned(),
    }
}

fn pi_tools() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "bash",
            "description": "Execute a bash command in the current working directory.",
            "parameters": {
                "type": "object",
                "required": ["command"],
                "properties": { "command": { "type": "string", "description": "Shell command to execute" } },
            },
            "strict": false,
        },
    }])
}

fn first_request() -> Value {
    json!({
        "model": "mock-model",
        "messages": [
            { "role": "system", "content": "You are a coding assistant running inside pi." },
            { "role": "user", "content": [{ "type": "text", "text": "Write hello.txt please" }] },
        ],
        "stream": true,
        "stream_options": { "include_usage": true },
        "max_completion_tokens": 4096,
        "tools": pi_tools(),
    })
}

fn second_request(command: &str) -> Value {
    let mut request = first_request();
    let messages = request["messages"].as_array_mut().expect("messages array");
    messages.push(json!({
        "role": "assistant",
        "content": null,
        "tool_calls": [{
            "id": "call_1",
            "type": "function",
            "function": { "name": "bash", "arguments": json!({ "command": command }).to_string() },
        }],
    }));
    messages.push(json!({ "role": "tool", "content": "done\n", "tool_call_id": "call_1" }));
    request
}

/// A raw HTTP response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Sends `raw` on a fresh connection and reads one response.
async fn exchange(port: u16, raw: &[u8]) -> Response {
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the mock");
        let mut stream = BufReader::new(stream);
        stream.write_all(raw).await.expect("write request");
        read_response(&mut stream).await
    })
    .await
    .expect("exchange finished in time")
}

/// Reads one response the way an HTTP/1.1 client does: the head, then a body delimited by
/// chunked framing, by `Content-Length`, or else by the end of the connection. The connection
/// may stay open for the next request.
async fn read_response<R: AsyncBufRead + Unpin>(reader: &mut R) -> Response {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).await.expect("read head");
        assert!(read > 0, "connection closed inside the head: {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut lines = head.lines();
    let status_line = lines.next().expect("status line");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("header line");
            (name.to_owned(), value.trim().to_owned())
        })
        .collect();
    let mut response = Response {
        status,
        headers,
        body: String::new(),
    };

    let mut body = Vec::new();
    if response.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.expect("read chunk size");
            let size = usize::from_str_radix(size.trim_end(), 16).expect("chunk size is hex");
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.expect("read chunk");
            assert!(chunk.ends_with(b"\r\n"), "chunk ends with CRLF");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = response.header("content-length") {
        body.resize(length.parse().expect("content-length is a number"), 0);
        reader.read_exact(&mut body).await.expect("read body");
    } else {
        reader.read_to_end(&mut body).await.expect("read body");
    }
    response.body = String::from_utf8(body).expect("body is UTF-8");
    response
}

/// Formats a request like undici does for pi: `Content-Length`, keep-alive, the SDK's headers.
fn raw_post(port: u16, path: &str, extra_headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\n\
         host: 127.0.0.1:{port}\r\n\
         connection: keep-alive\r\n\
         content-type: application/json\r\n\
         content-length: {}\r\n",
        body.len()
    );
    for (name, value) in extra_headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    raw.into_bytes()
}

async fn post_json(port: u16, path: &str, body: &Value) -> Response {
    let headers = [
        ("accept", "application/json"),
        ("authorization", "Bearer mock-key"),
        ("user-agent", "pi/1.5.2 (linux; node/v24.19.0; x64)"),
    ];
    exchange(port, &raw_post(port, path, &headers, &body.to_string())).await
}

/// An SSE answer reassembled the way pi's OpenAI client does.
#[derive(Debug, Default)]
struct Stream {
    roles: Vec<String>,
    content: String,
    content_deltas: usize,
    /// Tool calls by index: (id, name, arguments, number of argument deltas).
    tool_calls: BTreeMap<u64, (String, String, String, usize)>,
    finish_reasons: Vec<String>,
    usage: Option<Value>,
}

fn parse_sse(response: &Response) -> Stream {
    assert_eq!(response.status, 200, "body: {}", response.body);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    assert!(
        response.body.ends_with("data: [DONE]\n\n"),
        "stream must end with [DONE]: {:?}",
        response.body
    );

    let events: Vec<&str> = response
        .body
        .strip_suffix("\n\n")
        .expect("events end with a blank line")
        .split("\n\n")
        .map(|event| {
            event
                .strip_prefix("data: ")
                .expect("every event is `data: `")
        })
        .collect();
    let (done, chunks) = events.split_last().expect("some events");
    assert_eq!(*done, "[DONE]");

    let mut stream = Stream::default();
    for raw in chunks {
        let chunk: Value = serde_json::from_str(raw).expect("chunk is JSON");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], "chatcmpl-mock");
        assert!(chunk["created"].is_u64());
        assert!(chunk["model"].is_string());
        if let Some(usage) = chunk.get("usage") {
            stream.usage = Some(usage.clone());
        }
        for choice in chunk["choices"].as_array().expect("choices array") {
            assert_eq!(choice["index"], 0);
            let delta = &choice["delta"];
            if let Some(role) = delta["role"].as_str() {
                stream.roles.push(role.to_owned());
            }
            if let Some(content) = delta["content"].as_str() {
                stream.content.push_str(content);
                if !content.is_empty() {
                    stream.content_deltas += 1;
                }
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let entry = stream
                    .tool_calls
                    .entry(call["index"].as_u64().expect("tool call index"))
                    .or_default();
                if let Some(id) = call["id"].as_str() {
                    entry.0 = id.to_owned();
                }
                if let Some(name) = call["function"]["name"].as_str() {
                    entry.1.push_str(name);
                }
                if let Some(arguments) = call["function"]["arguments"].as_str() {
                    entry.2.push_str(arguments);
                    if !arguments.is_empty() {
                        entry.3 += 1;
                    }
                }
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                stream.finish_reasons.push(reason.to_owned());
            }
        }
    }
    assert_eq!(
        stream.usage,
        Some(json!({ "prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110 }))
    );
    stream
}

fn assert_tool_call_turn(stream: &Stream, command: &str) {
    assert_eq!(stream.roles, ["assistant"]);
    assert_eq!(stream.finish_reasons, ["tool_calls"]);
    assert_eq!(stream.content, "");
    assert_eq!(stream.tool_calls.len(), 1);
    let (id, name, arguments, deltas) = &stream.tool_calls[&0];
    assert_eq!(id, "call_1");
    assert_eq!(name, "bash");
    assert_eq!(*deltas, 2, "arguments arrive in two pieces");
    let arguments: Value = serde_json::from_str(arguments).expect("arguments are JSON");
    assert_eq!(arguments, json!({ "command": command }));
}

fn assert_final_text_turn(stream: &Stream, text: &str) {
    assert_eq!(stream.roles, ["assistant"]);
    assert_eq!(stream.finish_reasons, ["stop"]);
    assert!(stream.tool_calls.is_empty());
    assert_eq!(stream.content, text);
    assert_eq!(stream.content_deltas, 2, "text arrives in two pieces");
}

#[tokio::test]
async fn a_first_request_with_tools_streams_a_bash_tool_call() {
    let llm = MockLlm::start(script()).await.expect("start mock");

    let response = post_json(llm.port(), "/v1/chat/completions", &first_request()).await;

    assert_tool_call_turn(&parse_sse(&response), &script().tool_command);
}

#[tokio::test]
async fn a_request_ending_with_a_tool_result_streams_the_final_text() {
    let llm = MockLlm::start(script()).await.expect("start mock");

    let response = post_json(
        llm.port(),
        "/v1/chat/completions",
        &second_request(&script().tool_command),
    )
    .await;

    assert_final_text_turn(&parse_sse(&response), &script().final_text);
}

#[tokio::test]
async fn a_request_without_tools_streams_the_final_text() {
    let llm = MockLlm::start(script()).await.expect("start mock");
    let mut request = first_request();
    request.as_object_mut().expect("object").remove("tools");

    let response = post_json(llm.port(), "/v1/chat/completions", &request).await;

    assert_final_text_turn(&parse_sse(&response), &script().final_text);
}

#[tokio::test]
async fn a_whole_conversation_is_recorded_in_order() {
    let llm = MockLlm::start(script()).await.expect("start mock");
    assert!(llm.requests().is_empty());
    let first = first_request();
    let second = second_request(&script().tool_command);

    let one = post_json(llm.port(), "/v1/chat/completions", &first).await;
    let two = post_json(llm.port(), "/v1/chat/completions", &second).await;

    assert_tool_call_turn(&parse_sse(&one), &script().tool_command);
    assert_final_text_turn(&parse_sse(&two), &script().final_text);
    assert_eq!(llm.requests(), vec![first, second]);
}

#[tokio::test]
async fn base_url_names_the_loopback_port_and_v1() {
    let llm = MockLlm::start(Script::default()).await.expect("start mock");

    assert_eq!(
        llm.base_url(),
        format!("http://127.0.0.1:{}/v1", llm.port())
    );
}

#[tokio::test]
async fn the_model_of_the_request_is_echoed_in_every_chunk() {
    let llm = MockLlm::start(script()).await.expect("start mock");
    let mut request = first_request();
    request["model"] = json!("other-model");

    let response = post_json(llm.port(), "/v1/chat/completions", &request).await;

    assert_eq!(response.status, 200);
    let chunks: Vec<Value> = response
        .body
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: {"))
        .map(|rest| serde_json::from_str(&format!("{{{rest}")).expect("chunk is JSON"))
        .collect();
    assert_eq!(chunks.len(), 5);
    for chunk in chunks {
        assert_eq!(chunk["model"], "other-model");
    }
}

#[tokio::test]
async fn an_unknown_path_gets_a_json_404() {
    let llm = MockLlm::start(script()).await.expect("start mock");

    let response = post_json(llm.port(), "/v1/responses", &first_request()).await;

    assert_eq!(response.status, 404);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let error: Value = serde_json::from_str(&response.body).expect("error body is JSON");
    assert!(error["error"]["message"].is_string());
    assert!(llm.requests().is_empty(), "404s are not recorded");
}

#[tokio::test]
async fn a_get_on_chat_completions_gets_a_405() {
    let llm = MockLlm::start(script()).await.expect("start mock");
    let raw = format!(
        "GET /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n\r\n",
        llm.port()
    );

    let response = exchange(llm.port(), raw.as_bytes()).await;

    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("POST"));
}

/// undici keeps the connection to the model open between requests; both turns of a conversation
/// travel on one connection.
#[tokio::test]
async fn a_keep_alive_connection_carries_a_whole_conversation() {
    let llm = MockLlm::start(script()).await.expect("start mock");
    let port = llm.port();
    let first = raw_post(
        port,
        "/v1/chat/completions",
        &[],
        &first_request().to_string(),
    );
    let second = second_request(&script().tool_command).to_string();
    let second = raw_post(port, "/v1/chat/completions", &[], &second);

    let (one, two) = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut stream = BufReader::new(stream);
        stream.write_all(&first).await.expect("write first request");
        let one = read_response(&mut stream).await;
        stream
            .write_all(&second)
            .await
            .expect("write second request");
        (one, read_response(&mut stream).await)
    })
    .await
    .expect("in time");

    assert_tool_call_turn(&parse_sse(&one), &script().tool_command);
    assert_final_text_turn(&parse_sse(&two), &script().final_text);
    assert_eq!(llm.requests().len(), 2);
}

#[tokio::test]
async fn any_path_ending_with_chat_completions_is_served() {
    let llm = MockLlm::start(script()).await.expect("start mock");

    let response = post_json(
        llm.port(),
        "/openai/deployments/x/chat/completions?api-version=1",
        &first_request(),
    )
    .await;

    assert_tool_call_turn(&parse_sse(&response), &script().tool_command);
}

#[tokio::test]
async fn a_chunked_request_body_is_accepted() {
    let llm = MockLlm::start(script()).await.expect("start mock");
    let body = first_request().to_string();
    let (left, right) = body.split_at(body.len() / 2);
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\n\
         host: 127.0.0.1:{}\r\n\
         content-type: application/json\r\n\
         transfer-encoding: chunked\r\n\
         \r\n\
         {:x}\r\n{left}\r\n{:X};note=1\r\n{right}\r\n0\r\n\r\n",
        llm.port(),
        left.len(),
        right.len()
    );

    let response = exchange(llm.port(), raw.as_bytes()).await;

    assert_tool_call_turn(&parse_sse(&response), &script().tool_command);
    assert_eq!(llm.requests(), vec![first_request()]);
}

#[tokio::test]
async fn a_client_expecting_100_continue_gets_it_before_sending_the_body() {
    let llm = MockLlm::start(script()).await.expect("start mock");
    let body = first_request().to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\n\
         host: 127.0.0.1:{}\r\n\
         expect: 100-continue\r\n\
         content-length: {}\r\n\r\n",
        llm.port(),
        body.len()
    );

    let response = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let stream = TcpStream::connect(("127.0.0.1", llm.port()))
            .await
            .expect("connect");
        let mut stream = BufReader::new(stream);
        stream.write_all(head.as_bytes()).await.expect("write head");
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        let mut got = vec![0; interim.len()];
        stream.read_exact(&mut got).await.expect("read 100");
        assert_eq!(got, interim);
        stream.write_all(body.as_bytes()).await.expect("write body");
        read_response(&mut stream).await
    })
    .await
    .expect("in time");

    assert_tool_call_turn(&parse_sse(&response), &script().tool_command);
}

#[tokio::test]
async fn malformed_requests_get_an_error_and_the_mock_keeps_serving() {
    let llm = MockLlm::start(script()).await.expect("start mock");
    let port = llm.port();
    let not_json = raw_post(port, "/v1/chat/completions", &[], "{not json");
    let bad_length = b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: x\r\n\r\n".to_vec();
    let too_large =
        b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 999999999999\r\n\r\n{}".to_vec();
    // Requests that are not HTTP are refused by the HTTP layer itself, with a bare status; the
    // others reach the mock, which answers in the OpenAI API's error shape.
    let unparsable: [&[u8]; 2] = [b"\x00\x01 garbage \xff\r\n\r\n", &bad_length];
    let refused: [(&[u8], u16); 2] = [(&not_json, 400), (&too_large, 413)];

    for raw in unparsable {
        let response = exchange(port, raw).await;
        assert_eq!(response.status, 400, "body: {}", response.body);
    }
    for (raw, status) in refused {
        let response = exchange(port, raw).await;
        assert_eq!(response.status, status, "body: {}", response.body);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let error: Value = serde_json::from_str(&response.body).expect("error body is JSON");
        assert!(error["error"]["message"].is_string());
    }
    // A client that connects and leaves without a word must not disturb anything either.
    drop(
        TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect"),
    );

    let response = post_json(port, "/v1/chat/completions", &first_request()).await;
    assert_tool_call_turn(&parse_sse(&response), &script().tool_command);
    assert_eq!(
        llm.requests(),
        vec![first_request()],
        "only valid bodies are recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_conversations_are_served() {
    let llm = MockLlm::start(script()).await.expect("start mock");
    let port = llm.port();

    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..64 {
        tasks.spawn(async move {
            let request = if index % 2 == 0 {
                first_request()
            } else {
                second_request(&script().tool_command)
            };
            (
                index,
                post_json(port, "/v1/chat/completions", &request).await,
            )
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (index, response) = joined.expect("client task");
        let stream = parse_sse(&response);
        if index % 2 == 0 {
            assert_tool_call_turn(&stream, &script().tool_command);
        } else {
            assert_final_text_turn(&stream, &script().final_text);
        }
    }

    assert_eq!(llm.requests().len(), 64);
}

#[tokio::test]
async fn dropping_the_mock_stops_the_listener() {
    let llm = MockLlm::start(script()).await.expect("start mock");
    let port = llm.port();

    drop(llm);

    // The server task sees the shutdown when the runtime next polls it, so allow a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the port still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn dropping_the_mock_ends_the_connections_it_still_holds() {
    let llm = MockLlm::start(script()).await.expect("start mock");
    let port = llm.port();
    let first = raw_post(
        port,
        "/v1/chat/completions",
        &[],
        &first_request().to_string(),
    );
    let stalled_head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\n\
         host: 127.0.0.1:{port}\r\n\
         expect: 100-continue\r\n\
         content-length: 999\r\n\r\n"
    );

    tokio::time::timeout(EXCHANGE_TIMEOUT, async move {
        // One connection idles after a finished exchange, as undici's keep-alive pool leaves it.
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut idle = BufReader::new(stream);
        idle.write_all(&first).await.expect("write request");
        let response = read_response(&mut idle).await;
        assert_tool_call_turn(&parse_sse(&response), &script().tool_command);
        // The other is stuck inside a body it announced but never finishes. The interim answer
        // shows that the mock is already waiting for that body.
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut stalled = BufReader::new(stream);
        stalled
            .write_all(stalled_head.as_bytes())
            .await
            .expect("write head");
        let mut interim = vec![0; b"HTTP/1.1 100 Continue\r\n\r\n".len()];
        stalled.read_exact(&mut interim).await.expect("read 100");
        stalled
            .write_all(b"{\"model\": ")
            .await
            .expect("write part of the body");

        drop(llm);

        let mut rest = Vec::new();
        idle.read_to_end(&mut rest)
            .await
            .expect("read until closed");
        assert!(
            rest.is_empty(),
            "the idle connection is closed without a word"
        );
        let response = read_response(&mut stalled).await;
        assert_eq!(response.status, 503, "body: {}", response.body);
        stalled
            .read_to_end(&mut rest)
            .await
            .expect("read until closed");
    })
    .await
    .expect("both connections closed in time");
}

/// Replays every request real pi 1.5.2 sent, with its headers, and checks that the mock picks the
/// same turn the recipe's Python mock did. If pi's requests change shape, recapture the file and
/// this test shows whether the mock still understands them.
#[tokio::test]
async fn every_request_recorded_from_real_pi_gets_the_right_turn() {
    let path = recorded_requests();
    let recorded = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {path}: {error}"));
    let llm = MockLlm::start(script()).await.expect("start mock");
    let mut bodies = Vec::new();
    let (mut tool_turns, mut text_turns) = (0, 0);

    for line in recorded.lines().filter(|line| !line.trim().is_empty()) {
        let record: Value = serde_json::from_str(line).expect("record is JSON");
        let path = record["path"].as_str().expect("recorded path");
        let body = &record["body"];
        // Keep pi's headers (authorization, x-stainless-*, user-agent, accept-encoding...), but
        // not the ones that describe the original connection and body.
        let headers: Vec<(&str, &str)> = record["headers"]
            .as_object()
            .expect("recorded headers")
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "host" | "content-length" | "connection"))
            .map(|(name, value)| (name.as_str(), value.as_str().expect("header value")))
            .collect();

        let raw = raw_post(llm.port(), path, &headers, &body.to_string());
        let stream = parse_sse(&exchange(llm.port(), &raw).await);

        let last_role = body["messages"]
            .as_array()
            .and_then(|messages| messages.last())
            .and_then(|message| message["role"].as_str());
        if last_role == Some("tool") {
            text_turns += 1;
            assert_final_text_turn(&stream, &script().final_text);
        } else {
            tool_turns += 1;
            assert_tool_call_turn(&stream, &script().tool_command);
        }
        bodies.push(body.clone());
    }

    assert!(
        tool_turns > 0 && text_turns > 0,
        "the capture has both kinds of turn"
    );
    assert_eq!(llm.requests(), bodies);
}
