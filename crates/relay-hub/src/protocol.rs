//! The relay's side of the WebSocket protocol: which client commands pass to pi, the messages the
//! relay adds (`connected`, replay markers, `sandbox_status`, `error`), and the cheap look at a
//! pi line that the hub needs (its `type` and tool call id) without re-encoding it.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;

/// Client command types forwarded to pi; anything else is ignored. This is the pi-apps relay's
/// list, kept exactly so its clients behave the same.
pub const COMMAND_WHITELIST: &[&str] = &[
    "prompt",
    "steer",
    "follow_up",
    "abort",
    "new_session",
    "get_state",
    "get_messages",
    "set_model",
    "cycle_model",
    "get_available_models",
    "set_thinking_level",
    "cycle_thinking_level",
    "set_steering_mode",
    "set_follow_up_mode",
    "compact",
    "set_auto_compaction",
    "set_auto_retry",
    "abort_retry",
    "bash",
    "abort_bash",
    "get_session_stats",
    "export_html",
    "switch_session",
    "fork",
    "get_fork_messages",
    "get_last_assistant_text",
    "set_session_name",
    "get_commands",
    "extension_ui_response",
];

/// Id prefix of the relay's own requests to pi (re-attach markers); their answers are neither
/// journaled nor sent to clients.
pub const SYNC_ID_PREFIX: &str = "pi-relay-sync-";

/// Whether clients may send a command of this type.
pub fn is_allowed_command(ty: &str) -> bool {
    COMMAND_WHITELIST.contains(&ty)
}

/// The fields of a pi line the hub looks at. Parsing into this validates the whole line as JSON
/// while borrowing, so nothing else is allocated.
#[derive(Debug, Deserialize)]
pub struct LineHead<'a> {
    /// Event or response type.
    #[serde(rename = "type", borrow, default)]
    pub ty: Option<Cow<'a, str>>,
    /// Tool call id on `tool_execution_*` events.
    #[serde(rename = "toolCallId", borrow, default)]
    pub tool_call_id: Option<Cow<'a, str>>,
    /// Command name on responses.
    #[serde(borrow, default)]
    pub command: Option<Cow<'a, str>>,
    /// Method on `extension_ui_request`.
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    /// Request id on responses (a string for every request the relay or its clients make).
    #[serde(borrow, default, deserialize_with = "string_or_none")]
    pub id: Option<Cow<'a, str>>,
}

/// Reads a string, and anything else (a number, an object) as absent.
fn string_or_none<'de: 'a, 'a, D>(d: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id<'a> {
        Text(#[serde(borrow)] Cow<'a, str>),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<Id<'a>>::deserialize(d)? {
        Some(Id::Text(s)) => Some(s),
        _ => None,
    })
}

impl LineHead<'_> {
    /// Whether this line answers one of the relay's own requests.
    pub fn is_relay_sync(&self) -> bool {
        self.ty.as_deref() == Some("response")
            && self
                .id
                .as_deref()
                .is_some_and(|id| id.starts_with(SYNC_ID_PREFIX))
    }
}

/// Why a pi line is not journaled.
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    /// Empty or whitespace.
    Blank,
    /// Not a JSON object (npm or git noise on stdout).
    NotJson,
}

/// Trims a pi line and checks it is a JSON object; returns the line to journal and its head.
pub fn inspect_line(line: &[u8]) -> Result<(&[u8], LineHead<'_>), Skip> {
    let trimmed = trim_ascii(line);
    if trimmed.is_empty() {
        return Err(Skip::Blank);
    }
    if trimmed[0] != b'{' {
        return Err(Skip::NotJson);
    }
    match serde_json::from_slice::<LineHead<'_>>(trimmed) {
        Ok(head) => Ok((trimmed, head)),
        Err(_) => Err(Skip::NotJson),
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// A client command as the hub reads it.
#[derive(Debug, Deserialize)]
pub struct CommandHead {
    /// Command type.
    #[serde(rename = "type")]
    pub ty: Option<String>,
    /// The prompt text, for `prompt`.
    #[serde(default)]
    pub message: Option<serde_json::Value>,
}

fn quote(s: &str) -> String {
    // Serializing a &str cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

/// `{"type":"connected","sessionId":…,"lastSeq":…}`
pub fn connected(session_id: &str, last_seq: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"type":"connected","sessionId":{},"lastSeq":{last_seq}}}"#,
        quote(session_id)
    ))
}

/// `{"type":"replay_start","fromSeq":…,"toSeq":…}`
pub fn replay_start(from: u64, to: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"type":"replay_start","fromSeq":{from},"toSeq":{to}}}"#
    ))
}

/// `{"type":"replay_end"}`
pub fn replay_end() -> Bytes {
    Bytes::from_static(b"{\"type\":\"replay_end\"}")
}

/// `{"type":"sandbox_status","status":…,"message"?:…}`
pub fn sandbox_status(status: &str, message: Option<&str>) -> Bytes {
    let message = message
        .map(|m| format!(r#","message":{}"#, quote(m)))
        .unwrap_or_default();
    Bytes::from(format!(
        r#"{{"type":"sandbox_status","status":{}{message}}}"#,
        quote(status)
    ))
}

/// `{"type":"error","code":…,"message":…}`
pub fn error(code: &str, message: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"type":"error","code":{},"message":{}}}"#,
        quote(code),
        quote(message)
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_whitelist_is_exactly_the_pi_apps_list() {
        assert_eq!(COMMAND_WHITELIST.len(), 29);
        for t in [
            "prompt",
            "extension_ui_response",
            "get_commands",
            "abort_bash",
        ] {
            assert!(is_allowed_command(t));
        }
        for t in [
            "upload_file",
            "session_share",
            "file_panel_open",
            "clear_queue",
            "",
        ] {
            assert!(!is_allowed_command(t), "{t}");
        }
    }

    #[test]
    fn a_pi_event_line_yields_its_type_and_keeps_its_bytes() {
        let line = b"{\"type\":\"tool_execution_start\",\"toolCallId\":\"call_1\",\"args\":{}}\r";
        let (kept, head) = inspect_line(line).unwrap();
        assert_eq!(kept, &line[..line.len() - 1]);
        assert_eq!(head.ty.as_deref(), Some("tool_execution_start"));
        assert_eq!(head.tool_call_id.as_deref(), Some("call_1"));
    }

    #[test]
    fn noise_and_broken_json_are_skipped() {
        assert_eq!(
            inspect_line(b"npm WARN deprecated").unwrap_err(),
            Skip::NotJson
        );
        assert_eq!(inspect_line(b"{\"type\":").unwrap_err(), Skip::NotJson);
        assert_eq!(inspect_line(b"  \t").unwrap_err(), Skip::Blank);
    }

    #[test]
    fn escaped_strings_in_a_line_still_parse() {
        let line =
            br#"{"type":"message_update","assistantMessageEvent":{"delta":"a\"b\\n\u2028"}}"#;
        assert_eq!(
            inspect_line(line).unwrap().1.ty.as_deref(),
            Some("message_update")
        );
    }

    #[test]
    fn relay_messages_have_the_protocol_shapes() {
        assert_eq!(
            connected("s1", 7),
            Bytes::from(r#"{"type":"connected","sessionId":"s1","lastSeq":7}"#)
        );
        assert_eq!(replay_end(), Bytes::from(r#"{"type":"replay_end"}"#));
        let v: serde_json::Value =
            serde_json::from_slice(&sandbox_status("stopped", Some("stream closed"))).unwrap();
        assert_eq!(
            v,
            json!({"type":"sandbox_status","status":"stopped","message":"stream closed"})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&error("CHANNEL_DETACHED", "Sandbox channel not attached"))
                .unwrap();
        assert_eq!(v["code"], "CHANNEL_DETACHED");
    }
}
