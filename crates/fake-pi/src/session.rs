//! One fake pi process: its session state, the command dispatcher, and the loop that reads commands until EOF.
//!
//! Commands run strictly in order, each one's output burst written and flushed before the next command is read.
//! The one exception is the `sleep` hook, which keeps reading while its run is "streaming" so that `abort` (and
//! `get_state`, which then reports `isStreaming: true`) get through, as they would with real pi.

use std::io;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::Options;
use crate::hooks::Hook;
use crate::ids;
use crate::json::J;
use crate::transcript::{self, agent_end, agent_settled, bare_event};
use crate::wire::{Lines, Out};

/// The message real pi 1.5.2 rejects a second prompt with while a run is in progress (ev152-abort.jsonl).
const BUSY_ERROR: &str = "Agent is already processing. Specify streamingBehavior ('steer' or 'followUp') to queue the message.";

pub(crate) struct Fake<R, W, E> {
    lines: Lines<R>,
    out: Out<W>,
    stderr: E,
    state: State,
}

/// What `get_state` and the history commands report.
struct State {
    cwd: String,
    session_id: String,
    session_file: String,
    session_name: Option<String>,
    /// The context as pi counts it for `messageCount`: system, user, assistant and toolResult messages.
    messages: Vec<J>,
    steering_mode: String,
    follow_up_mode: String,
    auto_compaction: bool,
}

impl State {
    fn new(cwd: String, session_id: Option<String>) -> State {
        let session_id = session_id.unwrap_or_else(ids::session_id);
        let session_file = session_file(&cwd, &session_id);
        State {
            cwd,
            session_id,
            session_file,
            session_name: None,
            messages: Vec::new(),
            steering_mode: "one-at-a-time".into(),
            follow_up_mode: "one-at-a-time".into(),
            auto_compaction: true,
        }
    }

    fn data(&self, streaming: bool) -> J {
        let mut entries = vec![
            ("model", transcript::model()),
            ("thinkingLevel", "off".into()),
            ("isStreaming", streaming.into()),
            ("isCompacting", false.into()),
            ("steeringMode", (&self.steering_mode).into()),
            ("followUpMode", (&self.follow_up_mode).into()),
            ("sessionFile", (&self.session_file).into()),
            ("sessionId", (&self.session_id).into()),
        ];
        // pi leaves the key out until a name is set (ev152-sid2.jsonl shows where it goes).
        if let Some(name) = &self.session_name {
            entries.push(("sessionName", name.into()));
        }
        entries.extend([
            ("autoCompactionEnabled", self.auto_compaction.into()),
            ("messageCount", self.messages.len().into()),
            ("pendingMessageCount", 0.into()),
        ]);
        J::Obj(entries)
    }

    fn count_role(&self, role: &str) -> usize {
        self.messages
            .iter()
            .filter(|m| m.get("role").and_then(J::as_str) == Some(role))
            .count()
    }

    /// Shaped like the `get_session_stats` reply in events-1.5.2.jsonl; every mock answer costs 100 + 10 tokens.
    fn stats(&self) -> J {
        let assistants = self.count_role("assistant");
        let tool_calls = self
            .messages
            .iter()
            .filter_map(|m| match m.get("content") {
                Some(J::Arr(blocks)) => Some(blocks),
                _ => None,
            })
            .flatten()
            .filter(|b| b.get("type").and_then(J::as_str) == Some("toolCall"))
            .count();
        let (input, output) = (100 * assistants, 10 * assistants);
        let context_tokens: usize = if assistants > 0 { 110 } else { 0 };
        let percent = context_tokens as f64 * 100.0 / 128_000.0;
        j!({
            "sessionId": (&self.session_id),
            "userMessages": (self.count_role("user")),
            "assistantMessages": assistants,
            "toolCalls": tool_calls,
            "toolResults": (self.count_role("toolResult")),
            "totalMessages": (self.messages.len()),
            "tokens": {"input": input, "output": output, "cacheRead": 0, "cacheWrite": 0, "total": (input + output)},
            "cost": 0,
            "contextUsage": {"tokens": context_tokens, "contextWindow": 128_000, "percent": percent}
        })
    }

    fn last_assistant_text(&self) -> Option<String> {
        let last = self
            .messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(J::as_str) == Some("assistant"))?;
        let Some(J::Arr(blocks)) = last.get("content") else {
            return None;
        };
        let text: String = blocks
            .iter()
            .filter(|b| b.get("type").and_then(J::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(J::as_str))
            .collect();
        (!text.is_empty()).then_some(text)
    }
}

/// `<agentDir>/sessions/--<cwd with / replaced by ->--/<timestamp>_<id>.jsonl`, with the agent dir the relay's image
/// uses. Real pi computes the path up front and writes the file lazily; the fake never writes it.
fn session_file(cwd: &str, session_id: &str) -> String {
    let dir: String = cwd
        .strip_prefix(['/', '\\'])
        .unwrap_or(cwd)
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | ':') {
                '-'
            } else {
                c
            }
        })
        .collect();
    let stamp = ids::file_stamp(ids::now_ms());
    format!("/data/agent/sessions/--{dir}--/{stamp}_{session_id}.jsonl")
}

/// How a response ends: bare success, success with `data`, or failure with `error`.
enum Reply {
    Ok,
    Data(J),
    Err(String),
}

fn response(id: Option<&Value>, command: &str, reply: Reply) -> J {
    let mut entries = Vec::with_capacity(5);
    if let Some(id) = id {
        entries.push(("id", J::Raw(id.clone())));
    }
    entries.push(("type", "response".into()));
    entries.push(("command", command.into()));
    match reply {
        Reply::Ok => entries.push(("success", true.into())),
        Reply::Data(data) => entries.extend([("success", true.into()), ("data", data)]),
        Reply::Err(error) => entries.extend([("success", false.into()), ("error", error.into())]),
    }
    J::Obj(entries)
}

/// What the loop must do after a command's own output is written.
enum Step {
    Continue,
    Exit(i32),
    /// A `sleep` hook started its run; stay "streaming" this long.
    Sleep(u64),
    /// `abort` was received. Its response depends on whether a run is in progress, so the caller writes it.
    Abort(Option<Value>),
}

enum Wake {
    Timer,
    Line(io::Result<Option<Vec<u8>>>),
}

impl<R, W, E> Fake<R, W, E>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    E: AsyncWrite + Unpin + Send,
{
    pub(crate) fn new(stdin: R, stdout: W, stderr: E, opts: Options) -> Self {
        Fake {
            lines: Lines::new(stdin),
            out: Out::new(stdout),
            stderr,
            state: State::new(opts.cwd, opts.session_id),
        }
    }

    /// Serves until EOF (0), an `exit N` hook (N), or an I/O error on stdin or stdout (1).
    pub(crate) async fn run(mut self) -> i32 {
        self.serve().await.unwrap_or(1)
    }

    async fn serve(&mut self) -> io::Result<i32> {
        loop {
            let Some(line) = self.lines.next().await? else {
                self.out.flush().await?;
                return Ok(0);
            };
            match self.handle(&line, false).await? {
                Step::Continue => {}
                Step::Exit(code) => {
                    self.out.flush().await?;
                    return Ok(code);
                }
                Step::Sleep(ms) => {
                    if let Some(code) = self.sleep(ms).await? {
                        self.out.flush().await?;
                        return Ok(code);
                    }
                }
                Step::Abort(id) => {
                    self.out
                        .send(&response(id.as_ref(), "abort", Reply::Ok))
                        .await?;
                }
            }
            self.out.flush().await?;
        }
    }

    /// Handles one command line. `busy` is true while a `sleep` run is in progress.
    async fn handle(&mut self, line: &[u8], busy: bool) -> io::Result<Step> {
        let parsed = serde_json::from_slice::<Value>(line).map_err(|e| e.to_string());
        let command = match parsed {
            Ok(Value::Object(command)) => command,
            Ok(_) => return self.parse_error("expected a JSON object").await,
            Err(e) => return self.parse_error(&e).await,
        };
        let id = command.get("id");
        let kind = match command.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            Some(other) => other.to_string(),
            None => "undefined".to_owned(),
        };
        let reply = match kind.as_str() {
            "prompt" => return self.prompt(id, &command, busy).await,
            "abort" => return Ok(Step::Abort(id.cloned())),
            // Answers to extension dialogs get no response; the fake never opens any.
            "extension_ui_response" => return Ok(Step::Continue),
            "get_state" => Reply::Data(self.state.data(busy)),
            // Queued input is accepted but never delivered: no run of the fake reads it.
            "steer" | "follow_up" => Reply::Data(j!({"disposition": "queued"})),
            "new_session" => {
                self.state = State::new(std::mem::take(&mut self.state.cwd), None);
                Reply::Data(j!({"cancelled": false}))
            }
            "get_messages" => Reply::Data(j!({"messages": (self.state.messages.clone())})),
            "set_model" => Reply::Data(transcript::model()),
            // With a single non-reasoning model there is nothing to cycle to; 0.73.1's capture shows `data: null`.
            "cycle_model" | "cycle_thinking_level" => Reply::Data(J::Null),
            "get_available_models" => Reply::Data(j!({"models": [(transcript::model())]})),
            "get_available_thinking_levels" => Reply::Data(j!({"levels": ["off"]})),
            "set_steering_mode" => {
                if let Some(mode) = command.get("mode").and_then(Value::as_str) {
                    self.state.steering_mode = mode.to_owned();
                }
                Reply::Ok
            }
            "set_follow_up_mode" => {
                if let Some(mode) = command.get("mode").and_then(Value::as_str) {
                    self.state.follow_up_mode = mode.to_owned();
                }
                Reply::Ok
            }
            "set_auto_compaction" => {
                if let Some(enabled) = command.get("enabled").and_then(Value::as_bool) {
                    self.state.auto_compaction = enabled;
                }
                Reply::Ok
            }
            "set_thinking_level" | "set_auto_retry" | "abort_retry" | "abort_bash" => Reply::Ok,
            "compact" => Reply::Data(j!({
                "summary": "fake-pi compaction summary", "firstKeptEntryId": null,
                "tokensBefore": 0, "details": {}
            })),
            // The fake runs nothing; an empty successful output keeps clients' parsing honest.
            "bash" => Reply::Data(
                j!({"output": "", "exitCode": 0, "cancelled": false, "truncated": false}),
            ),
            "get_session_stats" => Reply::Data(self.state.stats()),
            "export_html" => Reply::Data(j!({
                "path": (format!("{}/pi-session-{}.html", self.state.cwd, self.state.session_id))
            })),
            "switch_session" | "clone" => Reply::Data(j!({"cancelled": false})),
            "fork" => Reply::Data(j!({"text": "", "cancelled": false})),
            "get_fork_messages" => Reply::Data(j!({"messages": []})),
            "get_last_assistant_text" => {
                Reply::Data(j!({"text": (self.state.last_assistant_text())}))
            }
            "set_session_name" => {
                let name = command
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.state.session_name = Some(name.to_owned());
                // Real pi announces the change before answering (0.73.1 ev-misc.jsonl).
                self.out
                    .send(&j!({"type": "session_info_changed", "name": name}))
                    .await?;
                Reply::Ok
            }
            "get_commands" => Reply::Data(j!({"commands": []})),
            "clear_queue" => Reply::Data(j!({"steering": [], "followUp": []})),
            "get_entries" | "get_tree" => {
                let key = if kind == "get_entries" {
                    "entries"
                } else {
                    "tree"
                };
                Reply::Data(J::Obj(vec![(key, J::Arr(Vec::new())), ("leafId", J::Null)]))
            }
            other => Reply::Err(format!("Unknown command: {other}")),
        };
        self.out.send(&response(id, &kind, reply)).await?;
        Ok(Step::Continue)
    }

    async fn parse_error(&mut self, reason: &str) -> io::Result<Step> {
        let reply = Reply::Err(format!("Failed to parse command: {reason}"));
        self.out.send(&response(None, "parse", reply)).await?;
        Ok(Step::Continue)
    }

    async fn prompt(
        &mut self,
        id: Option<&Value>,
        command: &Map<String, Value>,
        busy: bool,
    ) -> io::Result<Step> {
        if busy {
            let reply = if command.get("streamingBehavior").is_some() {
                Reply::Data(j!({"disposition": "queued"}))
            } else {
                Reply::Err(BUSY_ERROR.into())
            };
            self.out.send(&response(id, "prompt", reply)).await?;
            return Ok(Step::Continue);
        }
        let Some(message) = command.get("message").and_then(Value::as_str) else {
            let reply = Reply::Err("fake-pi: prompt needs a string \"message\"".into());
            self.out.send(&response(id, "prompt", reply)).await?;
            return Ok(Step::Continue);
        };
        let hook = Hook::parse(message);
        // `exit` imitates a crash, so it exits without answering.
        if let Some(Hook::Exit(code)) = hook {
            return Ok(Step::Exit(code));
        }
        let started = Reply::Data(j!({"disposition": "started"}));
        self.out.send(&response(id, "prompt", started)).await?;

        match hook {
            None => {
                let with_system = self.state.messages.is_empty();
                let run =
                    transcript::tool_run(message, &self.state.cwd, with_system, ids::now_ms());
                self.out.send_all(&run.events).await?;
                self.state.messages.extend(run.new_messages);
            }
            Some(Hook::Flood(n)) => self.flood(n).await?,
            Some(Hook::Pace { count, interval_us }) => self.pace(count, interval_us).await?,
            Some(Hook::Big(n)) => {
                let text = "a".repeat(n);
                let partial = j!({"content": [{"type": "text", "text": text}], "details": {}});
                self.out.send(&bare_event("agent_start")).await?;
                self.out
                    .send(&transcript::tool_execution_update(
                        "call_big", "big", partial,
                    ))
                    .await?;
                self.finish_run(false).await?;
            }
            Some(Hook::Noise) => {
                self.out.raw(b"npm WARN something\n").await?;
                self.out.send(&agent_settled(false)).await?;
            }
            Some(Hook::Stderr(text)) => {
                // stderr is free-form logging; failing to write it must not end the fake.
                let _ = self.stderr.write_all(format!("{text}\n").as_bytes()).await;
                let _ = self.stderr.flush().await;
                self.out.send(&agent_settled(false)).await?;
            }
            Some(Hook::Sleep(ms)) => {
                self.out.send(&bare_event("agent_start")).await?;
                return Ok(Step::Sleep(ms));
            }
            Some(Hook::Exit(_)) => {}
        }
        Ok(Step::Continue)
    }

    async fn finish_run(&mut self, aborted: bool) -> io::Result<()> {
        self.out.send(&agent_end(Vec::new())).await?;
        self.out.send(&agent_settled(aborted)).await
    }

    /// The benchmark event source: the line is serialized once and written in blocks of about 64 KiB.
    async fn flood(&mut self, n: u64) -> io::Result<()> {
        self.out.send(&bare_event("agent_start")).await?;
        let line = transcript::text_delta("x").to_line()?;
        let per_block = (64 * 1024 / line.len()).max(1);
        let block = line.repeat(per_block);
        let per_block = per_block as u64;
        for _ in 0..n / per_block {
            self.out.raw(&block).await?;
        }
        for _ in 0..n % per_block {
            self.out.raw(&line).await?;
        }
        self.finish_run(false).await
    }

    /// The latency benchmark's event source: `count` flood-shaped deltas, the i-th due `i × interval_us` µs after the
    /// first, each stamped with the realtime clock just before it is written and flushed on its own, so a reader (in
    /// another container or on the host, which share that clock) can tell how long the line took to reach it.
    async fn pace(&mut self, count: u64, interval_us: u64) -> io::Result<()> {
        self.out.send(&bare_event("agent_start")).await?;
        self.out.flush().await?;
        let line = transcript::text_delta("x").to_line()?;
        // The stamp goes in as the last key: the serialized line minus its closing `}\n`, then the stamp, so each event
        // costs a number's formatting and nothing that could delay it.
        let head = line.strip_suffix(b"}\n").unwrap_or(&line);
        let mut buf = Vec::with_capacity(line.len() + 32);
        let start = std::time::Instant::now();
        for i in 0..count {
            // Deadlines, not sleeps between lines: the rate stays steady however long each write takes.
            wait_until(start + Duration::from_micros(interval_us.saturating_mul(i))).await;
            buf.clear();
            buf.extend_from_slice(head);
            buf.extend_from_slice(format!(",\"sentAtNs\":{}}}\n", realtime_ns()).as_bytes());
            self.out.raw(&buf).await?;
            self.out.flush().await?;
        }
        self.finish_run(false).await
    }

    /// Keeps a `sleep` run "streaming" for `ms` while still serving commands. Returns `Some(code)` if the fake must
    /// stop: stdin hit EOF (real pi exits with 0 mid-run, without `agent_end`).
    async fn sleep(&mut self, ms: u64) -> io::Result<Option<i32>> {
        self.out.flush().await?;
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            let wake = tokio::select! {
                () = tokio::time::sleep_until(deadline) => Wake::Timer,
                line = self.lines.next() => Wake::Line(line),
            };
            let line = match wake {
                Wake::Timer => {
                    self.finish_run(false).await?;
                    return Ok(None);
                }
                Wake::Line(line) => line?,
            };
            let Some(line) = line else {
                return Ok(Some(0));
            };
            match self.handle(&line, true).await? {
                // Real pi's order (ev152-abort.jsonl): the run ends, settles as aborted, then abort is answered.
                Step::Abort(id) => {
                    self.finish_run(true).await?;
                    self.out
                        .send(&response(id.as_ref(), "abort", Reply::Ok))
                        .await?;
                    return Ok(None);
                }
                Step::Exit(code) => return Ok(Some(code)),
                // Prompts are refused while busy, so no nested run can start here.
                Step::Continue | Step::Sleep(_) => {}
            }
            self.out.flush().await?;
        }
    }
}

/// Nanoseconds since the Unix epoch on CLOCK_REALTIME, which every container shares with the host.
fn realtime_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Waits until `due`. tokio's timers have millisecond resolution, too coarse for sub-millisecond pacing, so the last
/// stretch is slept on the thread: during a paced run the fake has nothing else to do (stdin waits, as in a flood).
async fn wait_until(due: std::time::Instant) {
    const COARSE: Duration = Duration::from_millis(2);
    let left = due.saturating_duration_since(std::time::Instant::now());
    if left > COARSE {
        tokio::time::sleep(left - Duration::from_millis(1)).await;
    }
    let left = due.saturating_duration_since(std::time::Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}
