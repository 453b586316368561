//! Drives [`fake_pi::run`] through in-memory pipes and holds its output against the real pi 1.5.2 captures in
//! `testdata/pi-1.5.2/`, plus the test-only hooks the relay's tests rely on.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;

/// The captures, found from the crate's directory at run time (cargo sets it for tests), so a
/// test binary built in another checkout still reads this checkout's files.
fn captures_dir() -> String {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("run through cargo test");
    format!("{crate_dir}/../../testdata/pi-1.5.2/")
}
const PATIENCE: Duration = Duration::from_secs(10);

fn capture(name: &str) -> Vec<String> {
    let path = format!("{}{name}", captures_dir());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines().map(str::to_owned).collect()
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// A running fake with the test holding the other ends of its three pipes.
struct Harness {
    stdin: Option<DuplexStream>,
    stdout: BufReader<DuplexStream>,
    stderr: BufReader<DuplexStream>,
    task: JoinHandle<i32>,
}

impl Harness {
    fn start(opts: fake_pi::Options) -> Harness {
        let (stdin, fake_stdin) = tokio::io::duplex(64 * 1024);
        let (fake_stdout, stdout) = tokio::io::duplex(64 * 1024);
        let (fake_stderr, stderr) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(fake_pi::run(fake_stdin, fake_stdout, fake_stderr, opts));
        Harness {
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            stderr: BufReader::new(stderr),
            task,
        }
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
    }

    /// The next stdout line, without its `\n`.
    async fn line(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(PATIENCE, self.stdout.read_line(&mut line))
            .await
            .expect("fake-pi went quiet")
            .unwrap();
        assert!(n > 0, "fake-pi closed stdout");
        assert!(line.ends_with('\n'), "unterminated line: {line}");
        line.pop();
        line
    }

    /// Lines up to and including the first one whose `type` is `kind`.
    async fn lines_until(&mut self, kind: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            let done = parse(&line)["type"] == kind;
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Closes stdin and returns the exit code and everything still unread on stdout.
    async fn finish(mut self) -> (i32, Vec<String>) {
        self.stdin = None;
        let mut rest = String::new();
        tokio::time::timeout(PATIENCE, self.stdout.read_to_string(&mut rest))
            .await
            .expect("fake-pi did not close stdout")
            .unwrap();
        let code = tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("fake-pi did not return")
            .unwrap();
        (code, rest.lines().map(str::to_owned).collect())
    }
}

/// Feeds `input` and EOF to a fresh fake; returns its exit code and stdout lines.
async fn exchange(input: &[&str]) -> (i32, Vec<String>) {
    let mut fake = Harness::start(fake_pi::Options::default());
    for line in input {
        fake.send(line).await;
    }
    fake.finish().await
}

/// What identifies a line's place in a run: its `type`, its `assistantMessageEvent.type` and its `message.role`.
fn shape(line: &Value) -> (String, String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        text(&line["type"]),
        text(&line["assistantMessageEvent"]["type"]),
        text(&line["message"]["role"]),
    )
}

/// Every object key of a line in document order, depth first: `serde_json::Value` sorts keys, so order needs this.
fn key_order(line: &str) -> Vec<String> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    struct Collect<'a>(&'a mut Vec<String>);

    impl<'de> DeserializeSeed<'de> for Collect<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Collect<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Collect(&mut *self.0))?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                self.0.push(key);
                map.next_value_seed(Collect(&mut *self.0))?;
            }
            Ok(())
        }
    }

    let mut keys = Vec::new();
    let mut de = serde_json::Deserializer::from_str(line);
    Collect(&mut keys).deserialize(&mut de).unwrap();
    keys
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// `line` with the capture's session file and id swapped for the fake's, so the two can be compared as text.
fn with_identity_of(capture_line: &str, fake_line: &str) -> String {
    let (real, fake) = (parse(capture_line), parse(fake_line));
    let mut text = capture_line.to_owned();
    for key in ["sessionFile", "sessionId"] {
        let (from, to) = (&real["data"][key], &fake["data"][key]);
        text = text.replace(&from.to_string(), &to.to_string());
    }
    text
}

const GET_STATE: &str = r#"{"id":"ready","type":"get_state"}"#;
const PROMPT: &str = r#"{"id":"p1","type":"prompt","message":"Run echo hi please"}"#;

#[tokio::test]
async fn a_tool_prompt_streams_the_same_events_as_real_pi() {
    let real = capture("ev152-basic.jsonl");
    let (code, fake) = exchange(&[GET_STATE, PROMPT]).await;
    assert_eq!(code, 0);
    assert_eq!(fake.len(), real.len(), "line count differs");
    for (n, (real_line, fake_line)) in real.iter().zip(&fake).enumerate() {
        let (real, fake) = (parse(real_line), parse(fake_line));
        let at = format!("line {}", n + 1);
        // The system prompt is abridged, so lines that carry it have fewer nested keys; all others match in order.
        if real["message"]["role"] != "system" && real["type"] != "agent_end" {
            assert_eq!(
                key_order(fake_line),
                key_order(real_line),
                "key order, {at}"
            );
        }
        assert_eq!(shape(&fake), shape(&real), "{at}");
        assert_eq!(keys(&fake), keys(&real), "top-level keys, {at}");
        let event = "assistantMessageEvent";
        assert_eq!(keys(&fake[event]), keys(&real[event]), "{event} keys, {at}");
        assert_eq!(
            keys(&fake["message"]),
            keys(&real["message"]),
            "message keys, {at}"
        );
        assert_eq!(
            keys(&fake["usage"]),
            keys(&real["usage"]),
            "usage keys, {at}"
        );
        if real["type"] != "agent_end" {
            // Everything but the system prompt, timestamps and durations is the same value as real pi's.
            let strip = |v: &Value| {
                let mut text = v.to_string();
                for key in ["timestamp", "durationMs"] {
                    while let Some(at) = text.find(&format!("\"{key}\":")) {
                        let end = text[at..].find([',', '}']).map_or(text.len(), |e| at + e);
                        text.replace_range(at..end, "");
                    }
                }
                text
            };
            if real["message"]["role"] != "system" && real["command"] != "get_state" {
                assert_eq!(strip(&fake), strip(&real), "{at}");
            }
        }
    }
    let agent_end = parse(&fake[fake.len() - 2]);
    let roles: Vec<&str> = agent_end["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "toolResult", "assistant"]
    );
}

#[tokio::test]
async fn the_prompt_text_becomes_the_user_message() {
    let (_, lines) = exchange(&[r#"{"type":"prompt","message":"héllo \"there\"\u2028"}"#]).await;
    let user = lines
        .iter()
        .map(|l| parse(l))
        .find(|l| l["type"] == "message_end" && l["message"]["role"] == "user")
        .unwrap();
    assert_eq!(
        user["message"]["content"][0]["text"],
        "héllo \"there\"\u{2028}"
    );
}

#[tokio::test]
async fn get_state_matches_real_pi_byte_for_byte_apart_from_session_identity() {
    let real = &capture("ev152-basic.jsonl")[0];
    let (_, fake) = exchange(&[GET_STATE]).await;
    assert_eq!(fake[0], with_identity_of(real, &fake[0]));
}

#[tokio::test]
async fn get_state_after_one_tool_prompt_and_a_name_matches_the_resumed_capture() {
    // ev152-sid2.jsonl is get_state after one tool prompt and `set_session_name relaytest`.
    let real = &capture("ev152-sid2.jsonl")[0];
    let (_, lines) = exchange(&[
        r#"{"id":"n","type":"set_session_name","name":"relaytest"}"#,
        PROMPT,
        r#"{"id":"s","type":"get_state"}"#,
    ])
    .await;
    assert_eq!(
        lines[0],
        r#"{"type":"session_info_changed","name":"relaytest"}"#
    );
    let fake = lines.last().unwrap();
    assert_eq!(*fake, with_identity_of(real, fake));
}

#[tokio::test]
async fn later_prompts_add_four_messages_and_no_second_system_message() {
    let (_, lines) = exchange(&[PROMPT, PROMPT, r#"{"id":"s","type":"get_state"}"#]).await;
    let state = parse(lines.last().unwrap());
    assert_eq!(state["data"]["messageCount"], 9);
    let systems = lines
        .iter()
        .filter(|l| parse(l)["message"]["role"] == "system")
        .count();
    assert_eq!(
        systems, 2,
        "one message_start/message_end pair in the first run only"
    );
}

#[tokio::test]
async fn session_id_option_names_the_session_and_its_file() {
    let opts = fake_pi::Options {
        session_id: Some("relay-sess-42".into()),
        ..fake_pi::Options::default()
    };
    let mut fake = Harness::start(opts);
    fake.send(GET_STATE).await;
    let state = parse(&fake.line().await);
    assert_eq!(state["data"]["sessionId"], "relay-sess-42");
    let file = state["data"]["sessionFile"].as_str().unwrap();
    assert!(
        file.starts_with("/data/agent/sessions/--workspace--/"),
        "{file}"
    );
    assert!(file.ends_with("Z_relay-sess-42.jsonl"), "{file}");
    assert_eq!(fake.finish().await.0, 0);
}

#[tokio::test]
async fn an_unparsable_line_gets_a_parse_error_without_an_id() {
    let (_, lines) = exchange(&["not json"]).await;
    let reply = parse(&lines[0]);
    assert_eq!(
        lines[0].split(",\"error\"").next().unwrap(),
        r#"{"type":"response","command":"parse","success":false"#
    );
    let error = reply["error"].as_str().unwrap();
    assert!(error.starts_with("Failed to parse command: "), "{error}");
}

#[tokio::test]
async fn unknown_command_keeps_its_id() {
    let real = &capture("ev152-abort.jsonl")[29];
    let (_, lines) = exchange(&[r#"{"id":"6","type":"bogus"}"#]).await;
    assert_eq!(lines, std::slice::from_ref(real));
}

#[tokio::test]
async fn every_known_command_succeeds_and_echoes_its_id() {
    let commands = [
        "steer",
        "follow_up",
        "new_session",
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
        "clear_queue",
        "get_entries",
        "get_tree",
        "clone",
        "get_available_thinking_levels",
        "abort",
        "get_state",
    ];
    let input: Vec<String> = commands
        .iter()
        .enumerate()
        .map(|(n, c)| format!(r#"{{"id":"c{n}","type":"{c}"}}"#))
        .collect();
    let input: Vec<&str> = input.iter().map(String::as_str).collect();
    let (_, lines) = exchange(&input).await;
    let replies: Vec<Value> = lines
        .iter()
        .map(|l| parse(l))
        .filter(|l| l["type"] == "response")
        .collect();
    assert_eq!(replies.len(), commands.len());
    for (n, (reply, command)) in replies.iter().zip(commands).enumerate() {
        assert_eq!(reply["id"], format!("c{n}"), "{reply}");
        assert_eq!(reply["command"], command, "{reply}");
        assert_eq!(reply["success"], true, "{reply}");
    }
    let models = &replies[6]["data"]["models"];
    assert_eq!(models[0]["provider"], "mock");
    assert_eq!(models[0]["id"], "mock-model");
}

#[tokio::test]
async fn session_stats_after_a_tool_prompt_match_real_pi() {
    let real = capture("events-1.5.2.jsonl").pop().unwrap();
    let (_, lines) = exchange(&[PROMPT, r#"{"id":"st","type":"get_session_stats"}"#]).await;
    let (real, fake) = (parse(&real), parse(lines.last().unwrap()));
    let mut fake_data = fake["data"].clone();
    fake_data["sessionId"] = real["data"]["sessionId"].clone();
    assert_eq!(fake_data, real["data"]);
}

#[tokio::test]
async fn extension_ui_responses_get_no_reply() {
    let (_, lines) = exchange(&[
        r#"{"type":"extension_ui_response","id":"x","confirmed":true}"#,
        GET_STATE,
    ])
    .await;
    assert_eq!(lines.len(), 1);
    assert_eq!(parse(&lines[0])["command"], "get_state");
}

#[tokio::test]
async fn abort_when_idle_just_answers() {
    let (_, lines) = exchange(&[r#"{"id":"5","type":"abort"}"#]).await;
    assert_eq!(
        lines,
        [r#"{"id":"5","type":"response","command":"abort","success":true}"#]
    );
}

#[tokio::test]
async fn flood_n_writes_exactly_n_message_updates() {
    let n = 100_003;
    let (code, lines) = exchange(&[&format!(
        r#"{{"id":"f","type":"prompt","message":"flood {n}"}}"#
    )])
    .await;
    assert_eq!(code, 0);
    assert_run_of(&lines, n);
    let updates = &lines[2..n + 2];
    assert!(updates.iter().all(|l| l == &updates[0]));
    let update = parse(&updates[0]);
    assert_eq!(update["assistantMessageEvent"]["type"], "text_delta");
    assert_eq!(update["assistantMessageEvent"]["delta"], "x");
    // Same usage object as a real mid-stream delta.
    let real = parse(&capture("ev152-basic.jsonl")[25]);
    assert_eq!(update["usage"], real["usage"]);
}

/// `lines` are a prompt's response and a run around `n` updates: `response`, `agent_start`, the
/// updates, `agent_end`, `agent_settled`.
fn assert_run_of(lines: &[String], n: usize) {
    assert_eq!(lines.len(), n + 4);
    let kinds: Vec<String> = [0, 1, n + 2, n + 3]
        .iter()
        .map(|&i| shape(&parse(&lines[i])).0)
        .collect();
    assert_eq!(
        kinds,
        ["response", "agent_start", "agent_end", "agent_settled"]
    );
}

#[tokio::test]
async fn pace_n_writes_n_stamped_updates_at_the_asked_rate() {
    let (n, interval_us): (usize, u64) = (50, 1000);
    let before = realtime_ns();
    let (code, lines) = exchange(&[&format!(
        r#"{{"id":"p","type":"prompt","message":"pace {n} {interval_us}"}}"#
    )])
    .await;
    let after = realtime_ns();
    assert_eq!(code, 0);
    assert_run_of(&lines, n);
    let flood_line = exchange(&[r#"{"type":"prompt","message":"flood 1"}"#])
        .await
        .1
        .remove(2);
    let mut stamps = Vec::new();
    for line in &lines[2..n + 2] {
        let mut update = parse(line);
        let stamp = update["sentAtNs"].as_u64().expect("sentAtNs is an integer");
        // Apart from the stamp, the last key, a paced update is the flood's line.
        assert!(
            line.ends_with(&format!(",\"sentAtNs\":{stamp}}}")),
            "{line}"
        );
        update.as_object_mut().unwrap().remove("sentAtNs");
        assert_eq!(update, parse(&flood_line));
        stamps.push(u128::from(stamp));
    }
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "stamps go forward");
    assert!(before <= stamps[0] && stamps[n - 1] <= after);
    // The i-th line is due i intervals after the first, so the run cannot be faster than that.
    let spread_us = (stamps[n - 1] - stamps[0]) / 1000;
    assert!(
        spread_us >= (n as u128 - 1) * u128::from(interval_us),
        "{spread_us} µs"
    );
}

fn realtime_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn big_n_writes_one_line_longer_than_n() {
    let n = 300_000;
    let (_, lines) = exchange(&[&format!(r#"{{"type":"prompt","message":"big {n}"}}"#)]).await;
    let long: Vec<&String> = lines.iter().filter(|l| l.len() > n).collect();
    assert_eq!(long.len(), 1);
    let update = parse(long[0]);
    assert_eq!(update["type"], "tool_execution_update");
    assert_eq!(
        update["partialResult"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .len(),
        n
    );
    assert_eq!(parse(lines.last().unwrap())["type"], "agent_settled");
}

#[tokio::test]
async fn noise_writes_a_non_json_line_before_settling() {
    let (_, lines) = exchange(&[r#"{"type":"prompt","message":"noise"}"#]).await;
    assert_eq!(
        &lines[1..],
        [
            "npm WARN something",
            r#"{"type":"agent_settled","aborted":false}"#
        ]
    );
}

#[tokio::test]
async fn stderr_text_goes_to_stderr_only() {
    let mut fake = Harness::start(fake_pi::Options::default());
    fake.send(r#"{"type":"prompt","message":"stderr boom at line 3"}"#)
        .await;
    let mut err = String::new();
    fake.stderr.read_line(&mut err).await.unwrap();
    assert_eq!(err, "boom at line 3\n");
    let (code, lines) = fake.finish().await;
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1], r#"{"type":"agent_settled","aborted":false}"#);
}

#[tokio::test]
async fn exit_n_returns_n_after_earlier_output() {
    let mut fake = Harness::start(fake_pi::Options::default());
    fake.send(GET_STATE).await;
    fake.send(r#"{"id":"x","type":"prompt","message":"exit 7"}"#)
        .await;
    // stdin stays open: the exit must not wait for EOF.
    let code = tokio::time::timeout(PATIENCE, &mut fake.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 7);
    assert_eq!(parse(&fake.line().await)["command"], "get_state");
}

#[tokio::test]
async fn eof_returns_zero() {
    assert_eq!(exchange(&[]).await, (0, Vec::new()));
}

#[tokio::test]
async fn abort_during_sleep_settles_aborted_then_answers() {
    let real = capture("ev152-abort.jsonl");
    let mut fake = Harness::start(fake_pi::Options::default());
    fake.send(r#"{"id":"1","type":"prompt","message":"sleep 60000"}"#)
        .await;
    let started = fake.lines_until("agent_start").await;
    assert_eq!(started[0], real[0]);

    // While "streaming", other commands are served and a plain prompt is refused like real pi refuses it.
    fake.send(r#"{"id":"s","type":"get_state"}"#).await;
    assert_eq!(parse(&fake.line().await)["data"]["isStreaming"], true);
    fake.send(r#"{"id":"2","type":"prompt","message":"Say five words"}"#)
        .await;
    assert_eq!(fake.line().await, real[11]);

    fake.send(r#"{"id":"5","type":"abort"}"#).await;
    let ending = [fake.line().await, fake.line().await, fake.line().await];
    let shapes: Vec<_> = ending.iter().map(|l| shape(&parse(l))).collect();
    let real_shapes: Vec<_> = real[26..29].iter().map(|l| shape(&parse(l))).collect();
    assert_eq!(shapes, real_shapes);
    assert_eq!(ending[1..], real[27..29]);

    fake.send(r#"{"id":"s2","type":"get_state"}"#).await;
    assert_eq!(parse(&fake.line().await)["data"]["isStreaming"], false);
    assert_eq!(fake.finish().await, (0, Vec::new()));
}

#[tokio::test]
async fn sleep_ends_on_its_own_when_not_aborted() {
    let mut fake = Harness::start(fake_pi::Options::default());
    fake.send(r#"{"id":"z","type":"prompt","message":"sleep 20"}"#)
        .await;
    fake.send(GET_STATE).await;
    let lines = fake.lines_until("agent_settled").await;
    let kinds: Vec<String> = lines.iter().map(|l| shape(&parse(l)).0).collect();
    assert_eq!(
        kinds,
        [
            "response",
            "agent_start",
            "response",
            "agent_end",
            "agent_settled"
        ]
    );
    assert_eq!(lines[4], r#"{"type":"agent_settled","aborted":false}"#);
    assert_eq!(fake.finish().await, (0, Vec::new()));
}

#[tokio::test]
async fn eof_during_sleep_returns_zero_without_ending_the_run() {
    let mut fake = Harness::start(fake_pi::Options::default());
    fake.send(r#"{"type":"prompt","message":"sleep 600000"}"#)
        .await;
    fake.lines_until("agent_start").await;
    let started = std::time::Instant::now();
    assert_eq!(fake.finish().await, (0, Vec::new()));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_command_split_across_writes_during_sleep_is_not_lost() {
    let mut fake = Harness::start(fake_pi::Options::default());
    fake.send(r#"{"type":"prompt","message":"sleep 60000"}"#)
        .await;
    fake.lines_until("agent_start").await;
    let stdin = fake.stdin.as_mut().unwrap();
    stdin.write_all(br#"{"id":"a","ty"#).await.unwrap();
    stdin.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    fake.send(r#"pe":"abort"}"#).await;
    let lines = fake.lines_until("response").await;
    assert_eq!(
        lines.last().unwrap(),
        r#"{"id":"a","type":"response","command":"abort","success":true}"#
    );
    assert_eq!(fake.finish().await.0, 0);
}

#[tokio::test]
async fn a_closed_stdout_ends_the_run_with_one() {
    let (stdin, fake_stdin) = tokio::io::duplex(1024);
    let (fake_stdout, stdout) = tokio::io::duplex(1024);
    drop(stdout);
    let task = tokio::spawn(fake_pi::run(
        fake_stdin,
        fake_stdout,
        tokio::io::sink(),
        fake_pi::Options::default(),
    ));
    let mut stdin = stdin;
    stdin
        .write_all(b"{\"type\":\"get_state\"}\n")
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap(),
        1
    );
}
