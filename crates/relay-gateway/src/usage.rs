//! What each session did through its gateway: model requests, tokens and bytes per provider, and
//! every host its sandbox asked to reach with the decision. Tokens are read from the responses as
//! they stream by ([`TokenTap`]), in whichever shape the provider reports them; nothing is held
//! back from the sandbox to do so.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::Value;

/// Distinct hosts remembered per session; further ones are only counted
/// ([`UsageReport::hosts_dropped`]), so a sandbox cannot grow the relay's memory by asking for
/// random names.
pub const MAX_HOSTS: usize = 512;

/// One provider's model traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderUsage {
    /// Requests forwarded (or refused by the gateway).
    pub requests: u64,
    /// Of those, how many failed: refused, upstream unreachable, or answered 4xx/5xx.
    pub failed: u64,
    /// Input tokens, as the provider reported them.
    pub input_tokens: u64,
    /// Output tokens, as the provider reported them.
    pub output_tokens: u64,
    /// Request body bytes sent upstream.
    pub bytes_sent: u64,
    /// Response body bytes received from upstream.
    pub bytes_received: u64,
    /// When the last request started.
    pub last: Option<SystemTime>,
}

/// What the gateway decided for a host the sandbox asked to reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Tunneled.
    Allowed,
    /// Refused by policy or because of where it resolved to.
    Denied,
    /// Allowed, but the host could not be reached.
    Failed,
}

impl Verdict {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Failed => "failed",
        }
    }
}

/// One host's tunnels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostUsage {
    /// `host:port` as the sandbox asked for it.
    pub target: String,
    /// Tunnels opened.
    pub allowed: u64,
    /// Tunnels refused.
    pub denied: u64,
    /// Tunnels allowed whose host could not be reached.
    pub failed: u64,
    /// Bytes the sandbox sent through its tunnels.
    pub bytes_sent: u64,
    /// Bytes the sandbox received through them.
    pub bytes_received: u64,
    /// The latest decision.
    pub last_verdict: Verdict,
    /// Why, when it was not allowed.
    pub last_reason: Option<String>,
    /// When the sandbox last asked.
    pub last: SystemTime,
}

/// A copy of one session's usage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// Model traffic by provider id.
    pub providers: BTreeMap<String, ProviderUsage>,
    /// Hosts asked for, most recent first.
    pub hosts: Vec<HostUsage>,
    /// Requests for hosts beyond [`MAX_HOSTS`] distinct ones.
    pub hosts_dropped: u64,
}

/// One session's counters; shared by its connections.
#[derive(Debug, Default)]
pub struct SessionUsage {
    state: Mutex<UsageReport>,
}

/// The end of one model request, recorded when its response is finished or dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Exchange {
    pub(crate) failed: bool,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
}

impl SessionUsage {
    fn with<R>(&self, f: impl FnOnce(&mut UsageReport) -> R) -> R {
        // Counters stay usable after a panic elsewhere: they hold no invariant worth refusing.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// A model request to `provider` started.
    pub(crate) fn request_started(&self, provider: &str) {
        self.with(|s| {
            let p = s.providers.entry(provider.to_owned()).or_default();
            p.requests += 1;
            p.last = Some(SystemTime::now());
        });
    }

    /// A model request to `provider` ended.
    pub(crate) fn request_ended(&self, provider: &str, e: Exchange) {
        self.with(|s| {
            let p = s.providers.entry(provider.to_owned()).or_default();
            p.failed += u64::from(e.failed);
            p.input_tokens += e.input_tokens;
            p.output_tokens += e.output_tokens;
            p.bytes_sent += e.bytes_sent;
            p.bytes_received += e.bytes_received;
        });
    }

    /// The sandbox asked for `target`; `verdict` is what happened, `reason` why when refused.
    pub(crate) fn host_decided(&self, target: &str, verdict: Verdict, reason: Option<String>) {
        self.with(|s| {
            let now = SystemTime::now();
            let i = match s.hosts.iter().position(|h| h.target == target) {
                Some(i) => i,
                None if s.hosts.len() >= MAX_HOSTS => {
                    s.hosts_dropped += 1;
                    return;
                }
                None => {
                    s.hosts.push(HostUsage {
                        target: target.to_owned(),
                        allowed: 0,
                        denied: 0,
                        failed: 0,
                        bytes_sent: 0,
                        bytes_received: 0,
                        last_verdict: verdict,
                        last_reason: None,
                        last: now,
                    });
                    s.hosts.len() - 1
                }
            };
            let h = &mut s.hosts[i];
            match verdict {
                Verdict::Allowed => h.allowed += 1,
                Verdict::Denied => h.denied += 1,
                Verdict::Failed => h.failed += 1,
            }
            h.last_verdict = verdict;
            h.last_reason = reason;
            h.last = now;
        });
    }

    /// A tunnel to `target` closed after carrying these bytes.
    pub(crate) fn tunnel_closed(&self, target: &str, sent: u64, received: u64) {
        self.with(|s| {
            if let Some(h) = s.hosts.iter_mut().find(|h| h.target == target) {
                h.bytes_sent += sent;
                h.bytes_received += received;
            }
        });
    }

    /// A copy of the counters, hosts most recent first.
    pub fn report(&self) -> UsageReport {
        let mut r = self.with(|s| s.clone());
        r.hosts.sort_by_key(|h| std::cmp::Reverse(h.last));
        r
    }
}

/// Longest server-sent-event line read for usage; a longer one (a huge content delta) is
/// skipped, never buffered whole.
const MAX_LINE: usize = 256 * 1024;
/// Largest non-streamed JSON body read for usage.
const MAX_JSON: usize = 4 * 1024 * 1024;

/// Reads token counts from a response body as it passes: server-sent events line by line, or
/// a JSON body (up to [`MAX_JSON`]) at its end.
#[derive(Debug)]
pub(crate) struct TokenTap {
    sse: bool,
    buf: Vec<u8>,
    skipping: bool,
    input: u64,
    output: u64,
}

impl TokenTap {
    /// A tap for a body of this content type.
    pub(crate) fn new(content_type: Option<&str>) -> TokenTap {
        TokenTap {
            sse: content_type.is_some_and(|c| c.starts_with("text/event-stream")),
            buf: Vec::new(),
            skipping: false,
            input: 0,
            output: 0,
        }
    }

    /// Reads the next chunk of the body.
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) {
        if !self.sse {
            if !self.skipping && self.buf.len() + chunk.len() <= MAX_JSON {
                self.buf.extend_from_slice(chunk);
            } else {
                self.skipping = true;
                self.buf = Vec::new();
            }
            return;
        }
        while let Some(nl) = memchr::memchr(b'\n', chunk) {
            let (line, rest) = chunk.split_at(nl);
            if !self.skipping && self.buf.len() + line.len() <= MAX_LINE {
                if self.buf.is_empty() {
                    self.line(line);
                } else {
                    self.buf.extend_from_slice(line);
                    let whole = std::mem::take(&mut self.buf);
                    self.line(&whole);
                }
            }
            self.skipping = false;
            self.buf.clear();
            chunk = &rest[1..];
        }
        if !self.skipping {
            if self.buf.len() + chunk.len() <= MAX_LINE {
                self.buf.extend_from_slice(chunk);
            } else {
                self.skipping = true;
                self.buf = Vec::new();
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(data) = line.strip_prefix(b"data:") {
            self.json(data);
        }
    }

    fn json(&mut self, bytes: &[u8]) {
        if memchr::memmem::find(bytes, b"sage").is_none() {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        let (i, o) = tokens_in(&v);
        // Anthropic and Google repeat running totals; OpenAI reports once: the largest is right
        // for all.
        self.input = self.input.max(i);
        self.output = self.output.max(o);
    }

    /// The tokens reported, once the body is complete: `(input, output)`.
    pub(crate) fn finish(mut self) -> (u64, u64) {
        if self.sse {
            let rest = std::mem::take(&mut self.buf);
            if !self.skipping && !rest.is_empty() {
                self.line(&rest);
            }
        } else if !self.skipping {
            let body = std::mem::take(&mut self.buf);
            self.json(&body);
        }
        (self.input, self.output)
    }
}

/// Input and output tokens in one provider event or response, wherever its API puts them.
fn tokens_in(v: &Value) -> (u64, u64) {
    let places = [
        v.get("usage"),
        v.pointer("/message/usage"),
        v.pointer("/response/usage"),
        v.get("usageMetadata"),
    ];
    let first = |u: &Value, names: &[&str]| names.iter().find_map(|n| u.get(*n)?.as_u64());
    let (mut input, mut output) = (0, 0);
    for u in places.into_iter().flatten() {
        let i = first(u, &["prompt_tokens", "input_tokens", "promptTokenCount"]);
        let o = first(
            u,
            &["completion_tokens", "output_tokens", "candidatesTokenCount"],
        );
        input = input.max(i.unwrap_or(0));
        output = output.max(o.unwrap_or(0));
    }
    (input, output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(content_type: &str, chunks: &[&str]) -> (u64, u64) {
        let mut t = TokenTap::new(Some(content_type));
        for c in chunks {
            t.feed(c.as_bytes());
        }
        t.finish()
    }

    #[test]
    fn openai_streams_report_usage_in_their_last_chunk() {
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3}}\n\n\
                    data: [DONE]\n\n";
        assert_eq!(tap("text/event-stream", &[body]), (12, 3));
        // Split anywhere, even inside a line or a CRLF.
        let crlf = body.replace('\n', "\r\n");
        for at in [1, 20, 60, 90, crlf.len() - 3] {
            let (a, b) = crlf.split_at(at);
            assert_eq!(
                tap("text/event-stream; charset=utf-8", &[a, b]),
                (12, 3),
                "{at}"
            );
        }
    }

    #[test]
    fn anthropic_google_and_responses_shapes_are_read_too() {
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        assert_eq!(tap("text/event-stream", &[anthropic]), (25, 15));
        let google = "data: {\"usageMetadata\":{\"promptTokenCount\":7,\"candidatesTokenCount\":2}}\r\n\r\n\
            data: {\"usageMetadata\":{\"promptTokenCount\":7,\"candidatesTokenCount\":9}}\r\n\r\n";
        assert_eq!(tap("text/event-stream", &[google]), (7, 9));
        let responses = "data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":40,\"output_tokens\":4}}}";
        assert_eq!(
            tap("text/event-stream", &[responses]),
            (40, 4),
            "no final newline"
        );
        let json = r#"{"id":"x","usage":{"prompt_tokens":5,"completion_tokens":6}}"#;
        assert_eq!(tap("application/json", &[&json[..10], &json[10..]]), (5, 6));
    }

    #[test]
    fn oversized_lines_and_bodies_are_skipped_not_buffered() {
        let huge = format!("data: {{\"x\":\"{}\"}}\n", "a".repeat(MAX_LINE));
        let usage = "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n";
        let mut t = TokenTap::new(Some("text/event-stream"));
        for piece in huge.as_bytes().chunks(4096) {
            t.feed(piece);
            assert!(t.buf.len() <= MAX_LINE);
        }
        t.feed(usage.as_bytes());
        assert_eq!(t.finish(), (1, 2), "the line after a skipped one is read");

        let mut t = TokenTap::new(Some("application/json"));
        let block = vec![b' '; 1024 * 1024];
        for _ in 0..5 {
            t.feed(&block);
        }
        assert!(t.buf.is_empty());
        assert_eq!(t.finish(), (0, 0));
    }

    #[test]
    fn hosts_are_counted_by_target_and_bounded() {
        let u = SessionUsage::default();
        u.host_decided("github.com:443", Verdict::Allowed, None);
        u.tunnel_closed("github.com:443", 10, 2000);
        u.host_decided("evil.com:443", Verdict::Denied, Some("not allowed".into()));
        u.host_decided("github.com:443", Verdict::Allowed, None);
        let r = u.report();
        let gh = r
            .hosts
            .iter()
            .find(|h| h.target == "github.com:443")
            .unwrap();
        assert_eq!(
            (gh.allowed, gh.bytes_sent, gh.bytes_received),
            (2, 10, 2000)
        );
        let evil = r.hosts.iter().find(|h| h.target == "evil.com:443").unwrap();
        assert_eq!(evil.denied, 1);
        assert_eq!(evil.last_verdict, Verdict::Denied);
        assert_eq!(evil.last_reason.as_deref(), Some("not allowed"));

        for i in 0..MAX_HOSTS + 10 {
            u.host_decided(&format!("h{i}.example:443"), Verdict::Denied, None);
        }
        let r = u.report();
        assert_eq!(r.hosts.len(), MAX_HOSTS);
        assert_eq!(r.hosts_dropped, 12);
    }

    #[test]
    fn model_requests_add_up_per_provider() {
        let u = SessionUsage::default();
        u.request_started("anthropic");
        u.request_ended(
            "anthropic",
            Exchange {
                failed: false,
                input_tokens: 10,
                output_tokens: 5,
                bytes_sent: 100,
                bytes_received: 900,
            },
        );
        u.request_started("anthropic");
        u.request_ended(
            "anthropic",
            Exchange {
                failed: true,
                ..Exchange::default()
            },
        );
        let p = &u.report().providers["anthropic"];
        assert_eq!((p.requests, p.failed), (2, 1));
        assert_eq!((p.input_tokens, p.output_tokens), (10, 5));
        assert_eq!((p.bytes_sent, p.bytes_received), (100, 900));
        assert!(p.last.is_some());
    }
}
