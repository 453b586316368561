//! What the mock answers: the choice of turn for a chat-completions request and the stream of
//! `chat.completion.chunk` objects for it (what real pi 1.5.2 expects, see `testdata/README.md`).
//!
//! Every stream ends with a usage chunk whose `choices` is empty, because pi asks for
//! `stream_options.include_usage` and the OpenAI API sends usage that way.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// What the mock LLM says in a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The command of the `bash` tool call that answers the first turn.
    pub tool_command: String,
    /// The assistant text that answers once pi has sent the tool result back.
    pub final_text: String,
}

impl Default for Script {
    /// The conversation of the tested recipe: run `echo hi`, then report what it printed.
    fn default() -> Self {
        Script {
            tool_command: "echo hi".to_owned(),
            final_text: "The command printed: hi".to_owned(),
        }
    }
}

/// The two kinds of answer the mock gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Call `bash` with [`Script::tool_command`]; `finish_reason` is `tool_calls`.
    ToolCall,
    /// Say [`Script::final_text`]; `finish_reason` is `stop`.
    FinalText,
}

/// The id of the one tool call the mock ever makes. pi echoes it back as `tool_call_id`.
pub(crate) const TOOL_CALL_ID: &str = "call_1";

/// Picks the turn for a request body. A trailing `tool` message means pi is reporting the tool
/// result, so the conversation should end. A request without tools (pi's compaction and
/// summarisation calls) cannot take a tool call, so it gets text too.
pub(crate) fn choose_turn(body: &Value) -> Turn {
    let last_role = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| messages.last())
        .and_then(|message| message.get("role"))
        .and_then(Value::as_str);
    let has_tools = body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| !tools.is_empty());
    if last_role == Some("tool") || !has_tools {
        Turn::FinalText
    } else {
        Turn::ToolCall
    }
}

/// The chunks streamed for `turn`, in order, ending with the usage chunk. `model` is echoed into
/// each chunk like the real API does.
pub(crate) fn chunks(turn: Turn, script: &Script, model: &str) -> Vec<Value> {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let chunk = |delta: Value, finish_reason: Option<&str>| {
        json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
        })
    };

    let mut chunks = match turn {
        Turn::ToolCall => {
            // The arguments arrive in two pieces, as from a real model, so pi's streaming JSON
            // reassembly (`toolcall_delta` events) is exercised.
            let command = Value::String(script.tool_command.clone()).to_string();
            vec![
                chunk(
                    json!({
                        "role": "assistant",
                        "content": null,
                        "tool_calls": [{
                            "index": 0,
                            "id": TOOL_CALL_ID,
                            "type": "function",
                            "function": { "name": "bash", "arguments": "" },
                        }],
                    }),
                    None,
                ),
                chunk(
                    json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"command\": " } }] }),
                    None,
                ),
                chunk(
                    json!({ "tool_calls": [{ "index": 0, "function": { "arguments": format!("{command}}}") } }] }),
                    None,
                ),
                chunk(json!({}), Some("tool_calls")),
            ]
        }
        Turn::FinalText => {
            let (head, tail) = split_in_two(&script.final_text);
            vec![
                chunk(json!({ "role": "assistant", "content": "" }), None),
                chunk(json!({ "content": head }), None),
                chunk(json!({ "content": tail }), None),
                chunk(json!({}), Some("stop")),
            ]
        }
    };

    chunks.push(json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": { "prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110 },
    }));
    chunks
}

/// Splits `text` at its middle character, never inside a UTF-8 sequence.
fn split_in_two(text: &str) -> (&str, &str) {
    let middle = text.chars().count() / 2;
    let at = text
        .char_indices()
        .nth(middle)
        .map_or(text.len(), |(index, _)| index);
    text.split_at(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deltas(chunks: &[Value]) -> Vec<&Value> {
        chunks
            .iter()
            .filter_map(|chunk| chunk["choices"].get(0))
            .map(|choice| &choice["delta"])
            .collect()
    }

    #[test]
    fn a_request_with_tools_and_a_user_message_gets_a_tool_call() {
        let body = json!({ "messages": [{ "role": "user", "content": "hi" }], "tools": [{}] });
        assert_eq!(choose_turn(&body), Turn::ToolCall);
    }

    #[test]
    fn a_request_ending_with_a_tool_result_gets_the_final_text() {
        let body = json!({
            "messages": [{ "role": "user" }, { "role": "assistant" }, { "role": "tool" }],
            "tools": [{}],
        });
        assert_eq!(choose_turn(&body), Turn::FinalText);
    }

    #[test]
    fn a_request_with_missing_or_empty_tools_gets_the_final_text() {
        let messages = json!([{ "role": "user" }]);
        assert_eq!(
            choose_turn(&json!({ "messages": messages })),
            Turn::FinalText
        );
        assert_eq!(
            choose_turn(&json!({ "messages": messages, "tools": [] })),
            Turn::FinalText
        );
        assert_eq!(
            choose_turn(&json!({ "messages": messages, "tools": null })),
            Turn::FinalText
        );
    }

    #[test]
    fn bodies_of_the_wrong_shape_do_not_panic() {
        for body in [
            json!(null),
            json!([]),
            json!("text"),
            json!({ "messages": 3, "tools": [{}] }),
            json!({ "messages": [], "tools": [{}] }),
            json!({ "messages": [7], "tools": {} }),
        ] {
            let _ = chunks(choose_turn(&body), &Script::default(), "m");
        }
    }

    #[test]
    fn tool_call_arguments_reassemble_to_the_command_even_with_quotes_and_newlines() {
        let script = Script {
            tool_command: "printf '%s\\n' \"a b\"\necho \u{e9}".to_owned(),
            final_text: String::new(),
        };

        let chunks = chunks(Turn::ToolCall, &script, "mock-model");

        let arguments: String = deltas(&chunks)
            .iter()
            .filter_map(|delta| delta["tool_calls"][0]["function"]["arguments"].as_str())
            .collect();
        let parsed: Value = serde_json::from_str(&arguments).expect("arguments are JSON");
        assert_eq!(parsed, json!({ "command": script.tool_command }));
    }

    #[test]
    fn every_chunk_has_the_openai_shape_and_the_last_one_carries_usage() {
        for turn in [Turn::ToolCall, Turn::FinalText] {
            let chunks = chunks(turn, &Script::default(), "mock-model");
            for chunk in &chunks {
                assert_eq!(chunk["id"], "chatcmpl-mock");
                assert_eq!(chunk["object"], "chat.completion.chunk");
                assert_eq!(chunk["model"], "mock-model");
                assert!(chunk["created"].is_u64());
            }
            let (usage, rest) = chunks.split_last().expect("chunks");
            assert_eq!(usage["choices"], json!([]));
            assert_eq!(usage["usage"]["total_tokens"], 110);
            for chunk in rest {
                assert_eq!(chunk["choices"][0]["index"], 0);
            }
        }
    }

    #[test]
    fn text_is_split_between_characters() {
        assert_eq!(split_in_two("abcd"), ("ab", "cd"));
        assert_eq!(split_in_two("abc"), ("a", "bc"));
        assert_eq!(split_in_two(""), ("", ""));
        assert_eq!(split_in_two("\u{e9}\u{1f600}"), ("\u{e9}", "\u{1f600}"));
    }
}
