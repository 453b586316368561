//! The shapes of pi 1.5.2's records: the mock model, messages, `usage`, and the event sequence of one ordinary
//! prompt run, mirrored from `testdata/pi-1.5.2/ev152-basic.jsonl`.
//!
//! Keys and key order follow the capture. Large nested values that no client inspects (the system prompt's sections
//! and tool schemas) are shortened but keep their keys.

use crate::json::J;

/// The model real pi reported in the captures (a `models.json` entry pointing at a mock OpenAI server).
pub(crate) fn model() -> J {
    j!({
        "id": "mock-model",
        "name": "Mock Model",
        "api": "openai-completions",
        "provider": "mock",
        "baseUrl": "http://127.0.0.1:18080/v1",
        "reasoning": false,
        "input": ["text"],
        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
        "contextWindow": 128_000,
        "maxTokens": 4096,
        "compat": {"supportsDeveloperRole": false, "supportsReasoningEffort": false, "supportsStore": false}
    })
}

/// `usage` before the provider reported any tokens (start events carry this shorter form).
pub(crate) fn usage_empty() -> J {
    j!({
        "input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 0,
        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "total": 0}
    })
}

/// `usage` once the mock provider has reported its fixed 100 input / 10 output tokens.
pub(crate) fn usage_reported() -> J {
    j!({
        "input": 100, "output": 10, "cacheRead": 0, "cacheWrite": 0, "reasoning": 0, "totalTokens": 110,
        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "total": 0, "totalFromProvider": false}
    })
}

/// The `system` message pi 1.x records at the start of a context (the capture's is 5 KB; this keeps its keys).
pub(crate) fn system_message(cwd: &str, ts: i64) -> J {
    let cwd_section = format!("<cwd>\n{cwd}\n</cwd>");
    j!({
        "role": "system",
        "content": "",
        "sections": {
            "preamble": "You are a coding assistant running inside pi, a coding agent harness. Help users inspect files, run commands, and modify code.",
            "tools": "<tools>\n- read: Read file contents\n- bash: Execute bash commands (ls, grep, find, etc.)\n- edit: Make precise file edits with exact text replacement, including multiple disjoint edits in one call\n- write: Create or overwrite files\n\nAdditional tools may be available.\n</tools>",
            "rules": "<rules>\n- Use bash for file operations like ls, rg, find\n- Be concise in your responses\n</rules>",
            "docs": "<docs>\nPi documentation (fake-pi: shortened)\n</docs>",
            "cwd": cwd_section
        },
        "timestamp": ts,
        "toolsAdded": [
            (tool("read", "Read the contents of a file.", "path", "Path to the file to read (relative or absolute)")),
            (tool("bash", "Execute a bash command in the current working directory.", "command", "Shell command to execute")),
            (tool("edit", "Edit a single file using exact text replacement.", "path", "Path to the file to edit (relative or absolute)")),
            (tool("write", "Write content to a file.", "path", "Path to the file to write (relative or absolute)"))
        ]
    })
}

fn tool(name: &str, description: &str, param: &'static str, param_description: &str) -> J {
    J::Obj(vec![
        ("name", name.into()),
        ("description", description.into()),
        (
            "parameters",
            J::Obj(vec![
                ("type", "object".into()),
                ("required", J::Arr(vec![param.into()])),
                (
                    "properties",
                    J::Obj(vec![(
                        param,
                        j!({"type": "string", "description": param_description}),
                    )]),
                ),
            ]),
        ),
        (
            "constrainedSampling",
            j!({"type": "json_schema", "strict": "prefer"}),
        ),
    ])
}

pub(crate) fn user_message(text: &str, ts: i64) -> J {
    j!({"role": "user", "content": [{"type": "text", "text": text}], "timestamp": ts})
}

/// An assistant message as `message_start` shows it, before any content arrived.
fn assistant_pending(ts: i64) -> J {
    j!({
        "role": "assistant", "content": [], "api": "openai-completions", "provider": "mock", "model": "mock-model",
        "usage": (usage_empty()), "stopReason": "pending", "timestamp": ts
    })
}

/// A finished assistant message as `message_end`, `turn_end` and `agent_end` show it.
fn assistant_done(content: J, stop: &str, raw_stop: &str, ts: i64, duration_ms: i64) -> J {
    j!({
        "role": "assistant", "content": content, "api": "openai-completions", "provider": "mock", "model": "mock-model",
        "usage": (usage_reported()), "stopReason": stop, "timestamp": ts, "responseId": "chatcmpl-mock",
        "rawStopReason": raw_stop, "durationMs": duration_ms, "thinkingLevel": "off"
    })
}

fn update(usage: J, event: J) -> J {
    j!({"type": "message_update", "usage": usage, "assistantMessageEvent": event})
}

/// A `message_update` carrying one text delta, the bulk of any real streamed answer.
pub(crate) fn text_delta(delta: &str) -> J {
    update(
        usage_reported(),
        j!({"type": "text_delta", "contentIndex": 0, "delta": delta}),
    )
}

fn message_event(kind: &'static str, message: &J) -> J {
    J::Obj(vec![("type", kind.into()), ("message", message.clone())])
}

pub(crate) fn bare_event(kind: &'static str) -> J {
    J::Obj(vec![("type", kind.into())])
}

pub(crate) fn agent_end(messages: Vec<J>) -> J {
    j!({"type": "agent_end", "messages": messages, "willRetry": false})
}

pub(crate) fn agent_settled(aborted: bool) -> J {
    j!({"type": "agent_settled", "aborted": aborted})
}

pub(crate) fn tool_execution_update(call_id: &str, command: &str, partial_result: J) -> J {
    j!({
        "type": "tool_execution_update", "toolCallId": call_id, "toolName": "bash",
        "args": {"command": command}, "partialResult": partial_result
    })
}

/// What one ordinary prompt produces: the events to write and the messages it adds to the context.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) events: Vec<J>,
    pub(crate) new_messages: Vec<J>,
}

/// The ev152-basic run: the model calls `bash` with `echo hi`, sees `hi`, and answers "The command printed: hi".
///
/// `with_system` is whether the context is still empty: pi 1.x records its system message once at the start of a
/// context, so only a session's first run carries it (the retries in ev152-500.jsonl do not repeat it).
pub(crate) fn tool_run(prompt: &str, cwd: &str, with_system: bool, now: i64) -> Run {
    const CALL: &str = "call_1";
    const COMMAND: &str = "echo hi";
    const OUTPUT: &str = "hi\n";
    const ANSWER: (&str, &str) = ("The command printed: ", "hi");

    let mut events = vec![bare_event("agent_start"), bare_event("turn_start")];
    let mut messages = Vec::with_capacity(5);

    // Streamed assistant messages have had their own `message_start` already; the others appear whole.
    let mut record = |events: &mut Vec<J>, message: J, streamed: bool| {
        if !streamed {
            events.push(message_event("message_start", &message));
        }
        events.push(message_event("message_end", &message));
        messages.push(message);
    };
    if with_system {
        record(&mut events, system_message(cwd, now + 1), false);
    }
    record(&mut events, user_message(prompt, now), false);

    // Turn 1: a tool call streamed as JSON-argument chunks.
    let first_ts = now + 70;
    events.push(message_event("message_start", &assistant_pending(first_ts)));
    events.push(update(
        usage_empty(),
        j!({"type": "toolcall_start", "contentIndex": 0, "id": CALL, "toolName": "bash"}),
    ));
    for delta in ["", "{\"command\": ", "\"echo hi\"}"] {
        events.push(update(
            usage_reported(),
            j!({"type": "toolcall_delta", "contentIndex": 0, "delta": delta}),
        ));
    }
    let tool_call =
        j!({"type": "toolCall", "id": CALL, "name": "bash", "arguments": {"command": COMMAND}});
    events.push(update(
        usage_reported(),
        j!({"type": "toolcall_end", "contentIndex": 0, "toolCall": (&tool_call)}),
    ));
    let first = assistant_done(j!([tool_call]), "toolUse", "tool_calls", first_ts, 42);
    record(&mut events, first.clone(), true);

    // The tool runs after the assistant message ends.
    let text_content = j!([{"type": "text", "text": OUTPUT}]);
    events.push(j!({"type": "tool_execution_start", "toolCallId": CALL, "toolName": "bash", "args": {"command": COMMAND}}));
    events.push(tool_execution_update(CALL, COMMAND, j!({"content": []})));
    events.push(tool_execution_update(
        CALL,
        COMMAND,
        j!({"content": (&text_content), "details": {}}),
    ));
    events.push(j!({
        "type": "tool_execution_end", "toolCallId": CALL, "toolName": "bash",
        "result": {
            "content": (&text_content),
            "structuredContent": {"output": OUTPUT, "truncated": false, "exit_code": 0, "wall_time_seconds": 0}
        },
        "isError": false, "durationMs": 16
    }));
    let tool_result = j!({
        "role": "toolResult", "toolCallId": CALL, "toolName": "bash", "content": (&text_content),
        "isError": false, "durationMs": 16, "timestamp": (now + 132)
    });
    record(&mut events, tool_result.clone(), false);
    events.push(j!({"type": "turn_end", "message": first, "toolResults": [tool_result]}));

    // Turn 2: the text answer.
    let second_ts = now + 135;
    events.push(bare_event("turn_start"));
    events.push(message_event(
        "message_start",
        &assistant_pending(second_ts),
    ));
    events.push(update(
        usage_empty(),
        j!({"type": "text_start", "contentIndex": 0}),
    ));
    events.push(text_delta(ANSWER.0));
    events.push(text_delta(ANSWER.1));
    let answer = format!("{}{}", ANSWER.0, ANSWER.1);
    events.push(update(
        usage_reported(),
        j!({"type": "text_end", "contentIndex": 0, "content": (&answer)}),
    ));
    let second = assistant_done(
        j!([{"type": "text", "text": answer}]),
        "stop",
        "stop",
        second_ts,
        10,
    );
    record(&mut events, second.clone(), true);
    events.push(j!({"type": "turn_end", "message": second, "toolResults": []}));

    events.push(agent_end(messages.clone()));
    events.push(agent_settled(false));
    Run {
        events,
        new_messages: messages,
    }
}
