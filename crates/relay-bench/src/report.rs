//! The figures of one run and their markdown rendering: a summary table (each relay figure
//! next to its baseline, the ratio, the target and whether it is met), then the details of
//! every measurement, the machine, and anything that went wrong.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::probe::HealthRecord;
use super::raw::RawTimes;
use super::stats::{Summary, fmt_count, fmt_kib, fmt_kib_delta, fmt_ms, fmt_ratio, fmt_us, ms};
use super::sys::{Machine, TcpEntry, ThreadTimes};

/// Why a figure is missing, or the figure.
pub(crate) type Outcome<T> = Result<T, String>;

/// Targets (see docs/benchmarks.md).
const CREATE_RATIO_MAX: f64 = 1.05;
const THROUGHPUT_RATIO_MIN: f64 = 0.5;
const CPU_PER_EVENT_MAX_US: f64 = 5.0;
const HEALTH_P99_MAX_MS: f64 = 10.0;
const REPLAY_MAX_S_PER_100K: f64 = 0.3;
const IDLE_RSS_MAX_BYTES: f64 = 20e6;
/// Extra peak memory a stalled client may cost beyond a plain flood: its 8 MiB backlog cap,
/// twice, for allocator slack.
const STALLED_EXTRA_MAX_KIB: u64 = 16 * 1024;

/// The sizes this run used.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub sessions: usize,
    pub flood: u64,
    pub health_flood: u64,
    pub replay: u64,
    pub runs: usize,
    pub pace_events: u64,
    pub pace_interval_us: u64,
    pub image: String,
    pub image_id: String,
    pub clock_ticks: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct CreateResult {
    pub relay: Vec<Duration>,
    pub raw: Vec<RawTimes>,
}

#[derive(Clone, Debug)]
pub(crate) struct SessionsResult {
    pub count: usize,
    pub rss_before_kb: u64,
    pub rss_active_kb: u64,
    pub rss_after_delete_kb: u64,
    pub create_elapsed: Duration,
    pub delete_elapsed: Duration,
}

#[derive(Clone, Debug)]
pub(crate) struct JournalCheck {
    pub expected_last: u64,
    pub last_seq: u64,
    pub events: u64,
    pub updates: u64,
    pub contiguous: bool,
    /// `GET …/events` pages read, how long that took, and the relay's RSS around it.
    pub pages: u64,
    pub elapsed: Duration,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct FloodResult {
    pub n: u64,
    pub relay_elapsed: Duration,
    pub relay_updates: u64,
    /// Times the reading client was cut off (4008) and resumed by lastSeq.
    pub relay_resumed: u32,
    pub journal_caught_up: Duration,
    pub relay_ticks_settled: u64,
    pub relay_ticks: u64,
    pub dockerd_ticks_relay: Option<u64>,
    pub bench_ticks_relay: u64,
    pub rss_before_kb: u64,
    pub rss_peak_kb: u64,
    pub raw_elapsed: Duration,
    pub raw_updates: u64,
    pub dockerd_ticks_raw: Option<u64>,
    pub bench_ticks_raw: u64,
    /// The relay's threads from the prompt to `agent_settled`.
    pub relay_threads: ThreadTimes,
    /// The journal's last seq before the prompt and after `agent_settled`.
    pub seq_before: u64,
    pub seq_after: u64,
    pub journal: Outcome<JournalCheck>,
}

#[derive(Clone, Debug)]
pub(crate) struct HealthResult {
    pub n: u64,
    /// Times the reading client was cut off (4008) and resumed by lastSeq.
    pub resumed: u32,
    pub idle: HealthRecord,
    /// While a raw flood (no relay involved) loads the machine.
    pub raw_streaming: HealthRecord,
    pub streaming: HealthRecord,
    pub flood_elapsed: Duration,
    /// The relay's threads during its flood.
    pub relay_threads: ThreadTimes,
}

#[derive(Clone, Debug)]
pub(crate) struct LatencyResult {
    pub count: u64,
    pub interval_us: u64,
    pub relay_us: Vec<f64>,
    pub raw_us: Vec<f64>,
}

#[derive(Clone, Debug)]
pub(crate) struct ReplayRun {
    pub from: u64,
    pub to: u64,
    pub frames: u64,
    pub elapsed: Duration,
    pub rss_peak_kb: u64,
    /// Half a second after the client closed.
    pub rss_after_kb: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct ReplayResult {
    pub journal_last: u64,
    pub rss_before_kb: u64,
    pub partial: ReplayRun,
    pub full: Outcome<ReplayRun>,
}

#[derive(Clone, Debug)]
pub(crate) struct StalledResult {
    pub n: u64,
    pub updates: u64,
    pub flood_elapsed: Duration,
    pub rss_before_kb: u64,
    pub rss_peak_kb: u64,
    pub rss_after_flood_kb: u64,
    pub rss_after_read_kb: u64,
    pub server_socket: Option<TcpEntry>,
    pub client_socket: Option<TcpEntry>,
    pub frames_read: u64,
    pub read_elapsed: Duration,
    pub ending: String,
    pub close_code: Option<u16>,
}

#[derive(Clone, Debug)]
pub(crate) struct DeleteResult {
    pub events: u64,
    pub delete_elapsed: Duration,
    pub quiet_after: Option<Duration>,
    pub during_delete: Vec<Duration>,
    pub after_delete: Vec<Duration>,
    pub failures: usize,
}

/// Everything one run measured.
#[derive(Debug)]
pub(crate) struct Report {
    pub settings: Settings,
    pub machine: Machine,
    pub started_at: String,
    pub load_end: String,
    pub duration: Duration,
    pub relay_version: String,
    pub relay_exit: String,
    pub relay_log_warnings: Vec<String>,
    pub relay_log_errors: Vec<String>,
    pub idle_rss_kb: Outcome<u64>,
    pub create: Outcome<CreateResult>,
    pub sessions: Outcome<SessionsResult>,
    pub flood: Outcome<FloodResult>,
    pub health: Outcome<HealthResult>,
    pub latency: Outcome<LatencyResult>,
    pub replay: Outcome<ReplayResult>,
    pub stalled: Outcome<StalledResult>,
    pub delete: Outcome<DeleteResult>,
    pub notes: Vec<String>,
}

fn not_run<T>() -> Outcome<T> {
    Err("not run".into())
}

/// One line of the summary table.
struct Row {
    id: &'static str,
    figure: String,
    relay: String,
    baseline: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn new(id: &'static str, figure: impl Into<String>) -> Row {
        Row {
            id,
            figure: figure.into(),
            relay: "—".into(),
            baseline: "—".into(),
            ratio: "—".into(),
            target: "—".into(),
            met: None,
        }
    }
    fn relay(mut self, v: impl Into<String>) -> Row {
        self.relay = v.into();
        self
    }
    fn baseline(mut self, v: impl Into<String>) -> Row {
        self.baseline = v.into();
        self
    }
    fn ratio(mut self, v: impl Into<String>) -> Row {
        self.ratio = v.into();
        self
    }
    fn target(mut self, v: impl Into<String>, met: bool) -> Row {
        self.target = v.into();
        self.met = Some(met);
        self
    }
    fn failed(id: &'static str, figure: &str, why: &str) -> Row {
        let mut r = Row::new(id, figure).relay(format!("not measured: {}", one_line(why)));
        r.met = Some(false);
        r
    }
}

fn one_line(s: &str) -> String {
    let first = s.lines().next().unwrap_or_default();
    let mut out: String = first.chars().take(160).collect();
    if out.len() < first.len() || s.lines().count() > 1 {
        out.push('…');
    }
    out.replace('|', "\\|")
}

fn yes_no(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    }
}

/// Events per second.
fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

impl Report {
    pub(crate) fn new(settings: Settings, machine: Machine, started_at: String) -> Report {
        Report {
            settings,
            machine,
            started_at,
            load_end: String::new(),
            duration: Duration::ZERO,
            relay_version: "unknown".into(),
            relay_exit: "unknown".into(),
            relay_log_warnings: Vec::new(),
            relay_log_errors: Vec::new(),
            idle_rss_kb: not_run(),
            create: not_run(),
            sessions: not_run(),
            flood: not_run(),
            health: not_run(),
            latency: not_run(),
            replay: not_run(),
            stalled: not_run(),
            delete: not_run(),
            notes: Vec::new(),
        }
    }

    /// How many measurements could not be taken.
    pub(crate) fn failures(&self) -> usize {
        [
            self.idle_rss_kb.is_err(),
            self.create.is_err(),
            self.sessions.is_err(),
            self.flood.is_err(),
            self.health.is_err(),
            self.latency.is_err(),
            self.replay.is_err(),
            self.stalled.is_err(),
            self.delete.is_err(),
        ]
        .iter()
        .filter(|f| **f)
        .count()
    }

    /// CPU ticks per event in µs.
    fn us_per_event(&self, ticks: u64, n: u64) -> f64 {
        ticks as f64 * 1e6 / self.settings.clock_ticks as f64 / n as f64
    }

    fn rows(&self) -> Vec<Row> {
        let s = &self.settings;
        let mut rows = Vec::new();
        match &self.create {
            Ok(c) => {
                let relay = Summary::of_ms(&c.relay);
                let raw = Summary::of_ms(&c.raw.iter().map(|r| r.total).collect::<Vec<_>>());
                if let (Some(relay), Some(raw)) = (relay, raw) {
                    rows.push(
                        Row::new(
                            "a",
                            format!("Session create → active, median of {}", relay.n),
                        )
                        .relay(fmt_ms(relay.p50))
                        .baseline(format!("{} raw create+start+inspect", fmt_ms(raw.p50)))
                        .ratio(fmt_ratio(relay.p50, raw.p50))
                        .target(
                            format!("≤ ×{CREATE_RATIO_MAX:.2}"),
                            relay.p50 <= raw.p50 * CREATE_RATIO_MAX,
                        ),
                    );
                    rows.push(
                        Row::new("a", "Session create → active, p90")
                            .relay(fmt_ms(relay.p90))
                            .baseline(fmt_ms(raw.p90))
                            .ratio(fmt_ratio(relay.p90, raw.p90)),
                    );
                }
            }
            Err(e) => rows.push(Row::failed("a", "Session create → active", e)),
        }
        match &self.flood {
            Ok(f) => {
                let relay = rate(f.n, f.relay_elapsed);
                let raw = rate(f.n, f.raw_elapsed);
                rows.push(
                    Row::new(
                        "b",
                        format!("Events per second, flood of {}", fmt_count(f.n as f64)),
                    )
                    .relay(format!("{}/s", fmt_count(relay)))
                    .baseline(format!("{}/s raw attach", fmt_count(raw)))
                    .ratio(fmt_ratio(relay, raw))
                    .target(
                        format!("≥ ×{THROUGHPUT_RATIO_MIN}"),
                        relay >= raw * THROUGHPUT_RATIO_MIN && f.relay_updates == f.n,
                    ),
                );
                let cpu = self.us_per_event(f.relay_ticks, f.n);
                let raw_cpu = self.us_per_event(f.bench_ticks_raw, f.n);
                rows.push(
                    Row::new("b", "Relay CPU per event (journal included)")
                        .relay(fmt_us(cpu))
                        .baseline(format!("{} raw attach reader", fmt_us(raw_cpu)))
                        .ratio(fmt_ratio(cpu, raw_cpu))
                        .target(
                            format!("≤ {CPU_PER_EVENT_MAX_US} µs"),
                            cpu <= CPU_PER_EVENT_MAX_US,
                        ),
                );
                match &f.journal {
                    Ok(j) => {
                        let complete = j.contiguous
                            && j.last_seq == j.expected_last
                            && j.events == j.expected_last - f.seq_before
                            && j.updates == f.n;
                        rows.push(
                            Row::new("b", "Journal holds the flood (GET …/events)")
                                .relay(format!(
                                    "{} events to seq {}, {} updates, {}",
                                    fmt_count(j.events as f64),
                                    j.last_seq,
                                    fmt_count(j.updates as f64),
                                    if j.contiguous { "no gap" } else { "**gaps**" }
                                ))
                                .baseline(format!(
                                    "{} seen by the client",
                                    fmt_count((j.expected_last - f.seq_before) as f64)
                                ))
                                .target("all", complete),
                        );
                    }
                    Err(e) => rows.push(Row::failed("b", "Journal holds the flood", e)),
                }
            }
            Err(e) => rows.push(Row::failed("b", "Events per second", e)),
        }
        match &self.latency {
            Ok(l) => {
                if let (Some(relay), Some(raw)) = (Summary::of(&l.relay_us), Summary::of(&l.raw_us))
                {
                    for (name, r, b) in [("p50", relay.p50, raw.p50), ("p99", relay.p99, raw.p99)] {
                        rows.push(
                            Row::new(
                                "c",
                                format!(
                                    "Latency per event {name} (pace {} every {} µs)",
                                    l.count, l.interval_us
                                ),
                            )
                            .relay(fmt_us(r))
                            .baseline(format!("{} raw attach", fmt_us(b)))
                            .ratio(format!("{} added", fmt_us(r - b))),
                        );
                    }
                }
            }
            Err(e) => rows.push(Row::failed("c", "Latency per event", e)),
        }
        match &self.health {
            Ok(h) => {
                let busy = Summary::of_ms(&h.streaming.latencies());
                let idle = Summary::of_ms(&h.idle.latencies());
                let raw = Summary::of_ms(&h.raw_streaming.latencies());
                let three = |s: &Summary| {
                    format!("{} / {} / {}", fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.max))
                };
                if let (Some(busy), Some(idle), Some(raw)) = (busy, idle, raw) {
                    rows.push(
                        Row::new("d", "/health while the relay streams, p50 / p99 / max")
                            .relay(three(&busy))
                            .baseline(format!("{} while raw Docker streams", three(&raw)))
                            .ratio(fmt_ratio(busy.p99, raw.p99))
                            .target(
                                format!("p99 ≤ {HEALTH_P99_MAX_MS} ms"),
                                busy.p99 <= HEALTH_P99_MAX_MS && h.streaming.failures == 0,
                            ),
                    );
                    rows.push(
                        Row::new("d", "/health idle (for reference), p50 / p99 / max")
                            .relay(three(&idle)),
                    );
                } else {
                    rows.push(Row::failed("d", "/health while streaming", "no samples"));
                }
            }
            Err(e) => rows.push(Row::failed("d", "/health while streaming", e)),
        }
        match &self.replay {
            Ok(r) => {
                let p = &r.partial;
                let events = p.to.saturating_sub(p.from);
                let limit = REPLAY_MAX_S_PER_100K * events as f64 / 100_000.0;
                rows.push(
                    Row::new(
                        "e",
                        format!(
                            "Replay of {} events (lastSeq={})",
                            fmt_count(events as f64),
                            p.from
                        ),
                    )
                    .relay(fmt_ms(ms(p.elapsed)))
                    .baseline(format!("{}/s", fmt_count(rate(events, p.elapsed))))
                    .target(
                        format!("≤ {}, all frames", fmt_ms(limit * 1000.0)),
                        p.elapsed.as_secs_f64() <= limit && p.frames == events,
                    ),
                );
                if let Ok(full) = &r.full {
                    let events = full.to.saturating_sub(full.from);
                    rows.push(
                        Row::new(
                            "e",
                            format!(
                                "Replay of the whole journal, {} events (lastSeq=1)",
                                fmt_count(events as f64)
                            ),
                        )
                        .relay(fmt_ms(ms(full.elapsed)))
                        .baseline(format!("{}/s", fmt_count(rate(events, full.elapsed)))),
                    );
                }
            }
            Err(e) => rows.push(Row::failed("e", "Replay", e)),
        }
        match &self.idle_rss_kb {
            Ok(kb) => rows.push(
                Row::new("f", "Relay RSS idle, right after start")
                    .relay(fmt_kib(*kb))
                    .target(
                        "≤ 20 MB (19.1 MiB)",
                        (*kb * 1024) as f64 <= IDLE_RSS_MAX_BYTES,
                    ),
            ),
            Err(e) => rows.push(Row::failed("f", "Relay RSS idle", e)),
        }
        match &self.sessions {
            Ok(m) => rows.push(
                Row::new("f", format!("Relay RSS with {} active sessions", m.count))
                    .relay(fmt_kib(m.rss_active_kb))
                    .baseline(format!("{} before", fmt_kib(m.rss_before_kb)))
                    .ratio(format!(
                        "{:+.0} KiB/session",
                        (m.rss_active_kb as f64 - m.rss_before_kb as f64) / m.count as f64
                    )),
            ),
            Err(e) => rows.push(Row::failed("f", "Relay RSS with many sessions", e)),
        }
        match (&self.stalled, &self.flood) {
            (Ok(st), flood) => {
                let growth = st.rss_peak_kb.saturating_sub(st.rss_before_kb);
                let (baseline, bounded) = match flood {
                    Ok(f) => {
                        let plain = f.rss_peak_kb.saturating_sub(f.rss_before_kb);
                        (
                            format!(
                                "{} plain flood (b)",
                                fmt_kib_delta(f.rss_peak_kb, f.rss_before_kb)
                            ),
                            Some(growth <= plain + STALLED_EXTRA_MAX_KIB),
                        )
                    }
                    Err(_) => ("—".to_owned(), None),
                };
                let mut row = Row::new("f", "Stalled client: peak RSS growth during the flood")
                    .relay(fmt_kib_delta(st.rss_peak_kb, st.rss_before_kb))
                    .baseline(baseline);
                if let Some(b) = bounded {
                    row = row.target("≤ plain + 16 MiB", b);
                }
                rows.push(row);
                let closed_while_stalled = st
                    .server_socket
                    .as_ref()
                    .is_none_or(|s| s.state != "ESTABLISHED");
                rows.push(
                    Row::new("f", "Stalled client cut off (close 4008)")
                        .relay(format!(
                            "{}; relay socket while stalled: {}",
                            st.ending,
                            st.server_socket.as_ref().map_or("gone", |s| s.state)
                        ))
                        .target(
                            "closed by the relay, 4008",
                            closed_while_stalled && st.close_code.is_none_or(|c| c == 4008),
                        ),
                );
            }
            (Err(e), _) => rows.push(Row::failed("f", "Stalled client", e)),
        }
        match &self.delete {
            Ok(d) => {
                rows.push(
                    Row::new(
                        "g",
                        format!(
                            "DELETE of a session with {} events",
                            fmt_count(d.events as f64)
                        ),
                    )
                    .relay(fmt_ms(ms(d.delete_elapsed)))
                    .baseline(match d.quiet_after {
                        Some(q) => format!("purge done after ~{}", fmt_ms(ms(q))),
                        None => "relay CPU never went quiet".into(),
                    }),
                );
                let mut all = d.during_delete.clone();
                all.extend(&d.after_delete);
                let idle = self
                    .health
                    .as_ref()
                    .ok()
                    .and_then(|h| Summary::of_ms(&h.idle.latencies()));
                match Summary::of_ms(&all) {
                    Some(s) => rows.push(
                        Row::new("g", "/health during delete and purge, p99 / max")
                            .relay(format!("{} / {}", fmt_ms(s.p99), fmt_ms(s.max)))
                            .baseline(idle.map_or("—".into(), |i| {
                                format!("{} / {} idle", fmt_ms(i.p99), fmt_ms(i.max))
                            }))
                            .ratio(idle.map_or("—".into(), |i| fmt_ratio(s.p99, i.p99)))
                            .target(
                                format!("p99 ≤ {HEALTH_P99_MAX_MS} ms (as d)"),
                                s.p99 <= HEALTH_P99_MAX_MS && d.failures == 0,
                            ),
                    ),
                    None => rows.push(Row::failed("g", "/health during delete", "no samples")),
                }
            }
            Err(e) => rows.push(Row::failed("g", "Delete under load", e)),
        }
        let _ = s;
        rows
    }

    /// The whole report as markdown.
    pub(crate) fn render(&self) -> String {
        let s = &self.settings;
        let m = &self.machine;
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "# relay-bench, {}\n", self.started_at);
        let _ = writeln!(
            w,
            "Relay {} as a child process; sandbox image `{}` (`{}`), network `none`. \
             Sizes: `--sessions {} --flood {} --health-flood {} --replay {} --runs {} --pace-events {} --pace-interval-us {}`. \
             The run took {:.0} s.\n",
            self.relay_version,
            s.image,
            short_id(&s.image_id),
            s.sessions,
            s.flood,
            s.health_flood,
            s.replay,
            s.runs,
            s.pace_events,
            s.pace_interval_us,
            self.duration.as_secs_f64()
        );
        let _ = writeln!(w, "## Machine\n");
        let _ = writeln!(w, "| | |\n|---|---|");
        let _ = writeln!(w, "| CPU | {} × {} |", m.cpus, m.cpu_model);
        let _ = writeln!(w, "| Memory | {} |", m.memory);
        let _ = writeln!(w, "| OS, kernel | {}, Linux {} |", m.os, m.kernel);
        let _ = writeln!(w, "| Docker | {} |", m.docker);
        let _ = writeln!(
            w,
            "| Load average (1, 5, 15 min) at start | {} |",
            m.load_start
        );
        let _ = writeln!(w, "| Load average at end | {} |", self.load_end);
        let _ = writeln!(
            w,
            "| Clock ticks per second (CPU times) | {} |\n",
            s.clock_ticks
        );

        let _ = writeln!(w, "## Summary\n");
        let _ = writeln!(
            w,
            "| | Figure | pi-relay | Baseline (same run) | Ratio | Target | Met |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|");
        for r in self.rows() {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.id,
                r.figure,
                r.relay,
                r.baseline,
                r.ratio,
                r.target,
                yes_no(r.met)
            );
        }
        let _ = writeln!(w);
        self.render_details(w);
        out
    }

    fn render_details(&self, w: &mut String) {
        let _ = writeln!(w, "## Details\n");
        self.detail_create(w);
        self.detail_flood(w);
        self.detail_latency(w);
        self.detail_health(w);
        self.detail_replay(w);
        self.detail_memory(w);
        self.detail_delete(w);
        let _ = writeln!(w, "### Relay process\n");
        let _ = writeln!(w, "- Stopped: {}.", self.relay_exit);
        let _ = writeln!(
            w,
            "- Log: {} warning(s), {} error(s).",
            self.relay_log_warnings.len(),
            self.relay_log_errors.len()
        );
        for line in self
            .relay_log_errors
            .iter()
            .chain(&self.relay_log_warnings)
            .take(6)
        {
            let _ = writeln!(w, "  - `{}`", line.replace('`', "'"));
        }
        if !self.notes.is_empty() {
            let _ = writeln!(w, "\n### Notes\n");
            for n in &self.notes {
                let _ = writeln!(w, "- {n}");
            }
        }
    }

    fn detail_create(&self, w: &mut String) {
        let _ = writeln!(w, "### a. Session create → active\n");
        let c = match &self.create {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(w, "Not measured: {e}\n");
                return;
            }
        };
        let _ = writeln!(
            w,
            "Relay: `POST /api/sessions` + `POST …/activate` from the client. Raw: Engine API create + start + \
             inspect of the same image and configuration. Runs alternate relay, raw, relay, raw …, \
             after one uncounted warm-up pair.\n"
        );
        let _ = writeln!(
            w,
            "| Run | Relay | Raw total | Raw create | Raw start | Raw inspect |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|");
        for (i, (relay, raw)) in c.relay.iter().zip(&c.raw).enumerate() {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} |",
                i + 1,
                fmt_ms(ms(*relay)),
                fmt_ms(ms(raw.total)),
                fmt_ms(ms(raw.create)),
                fmt_ms(ms(raw.start)),
                fmt_ms(ms(raw.inspect))
            );
        }
        let col = |v: Vec<Duration>| Summary::of_ms(&v);
        let _ = writeln!(w, "\n| | min | median | p90 | max |\n|---|---|---|---|---|");
        for (name, sum) in [
            ("Relay", col(c.relay.clone())),
            ("Raw total", col(c.raw.iter().map(|r| r.total).collect())),
            ("Raw create", col(c.raw.iter().map(|r| r.create).collect())),
            ("Raw start", col(c.raw.iter().map(|r| r.start).collect())),
            (
                "Raw inspect",
                col(c.raw.iter().map(|r| r.inspect).collect()),
            ),
        ] {
            if let Some(s) = sum {
                let _ = writeln!(
                    w,
                    "| {name} | {} | {} | {} | {} |",
                    fmt_ms(s.min),
                    fmt_ms(s.p50),
                    fmt_ms(s.p90),
                    fmt_ms(s.max)
                );
            }
        }
        let _ = writeln!(w);
    }

    fn detail_flood(&self, w: &mut String) {
        let _ = writeln!(w, "### b. Events per second\n");
        let f = match &self.flood {
            Ok(f) => f,
            Err(e) => {
                let _ = writeln!(w, "Not measured: {e}\n");
                return;
            }
        };
        let per = |t: u64| fmt_us(self.us_per_event(t, f.n));
        let opt = |t: Option<u64>| t.map_or("n/a".into(), per);
        let _ = writeln!(
            w,
            "| | Relay (WebSocket client) | Raw attach |\n|---|---|---|"
        );
        let _ = writeln!(
            w,
            "| Prompt sent → `agent_settled` received | {} | {} |",
            fmt_ms(ms(f.relay_elapsed)),
            fmt_ms(ms(f.raw_elapsed))
        );
        let _ = writeln!(
            w,
            "| Events per second | {} | {} |",
            fmt_count(rate(f.n, f.relay_elapsed)),
            fmt_count(rate(f.n, f.raw_elapsed))
        );
        let _ = writeln!(
            w,
            "| `message_update` frames received | {} | {} |",
            f.relay_updates, f.raw_updates
        );
        let _ = writeln!(
            w,
            "| Client fell behind the relay's backlog, closed with 4008 and resumed by lastSeq | {} times | — |",
            f.relay_resumed
        );
        let _ = writeln!(
            w,
            "| Relay CPU per event, until `agent_settled` | {} | — |",
            per(f.relay_ticks_settled)
        );
        let _ = writeln!(
            w,
            "| Relay CPU per event, until the journal caught up ({}) | {} | — |",
            fmt_ms(ms(f.journal_caught_up)),
            per(f.relay_ticks)
        );
        let _ = writeln!(
            w,
            "| dockerd CPU per event (attach stream) | {} | {} |",
            opt(f.dockerd_ticks_relay),
            opt(f.dockerd_ticks_raw)
        );
        let _ = writeln!(
            w,
            "| Benchmark (client) CPU per event | {} | {} |",
            per(f.bench_ticks_relay),
            per(f.bench_ticks_raw)
        );
        let _ = writeln!(
            w,
            "| Relay RSS before → peak during the flood | {} → {} | — |\n",
            fmt_kib(f.rss_before_kb),
            fmt_kib(f.rss_peak_kb)
        );
        threads_line(w, "during the flood", &f.relay_threads, f.relay_elapsed);
        match &f.journal {
            Ok(j) => {
                let _ = writeln!(
                    w,
                    "Journal check, after the stalled-client flood (f): seqs {}..={} paged with `GET …/events` \
                     (limit 10,000) in {} pages and {}: {} events, last seq {}, {} `message_update`, {}. \
                     Relay RSS {} before paging, {} after.\n",
                    f.seq_before + 1,
                    f.seq_after,
                    j.pages,
                    fmt_ms(ms(j.elapsed)),
                    j.events,
                    j.last_seq,
                    j.updates,
                    if j.contiguous {
                        "no gap"
                    } else {
                        "**with gaps**"
                    },
                    fmt_kib(j.rss_before_kb),
                    fmt_kib(j.rss_after_kb)
                );
            }
            Err(e) => {
                let _ = writeln!(w, "Journal check: not done: {e}\n");
            }
        }
    }

    fn detail_latency(&self, w: &mut String) {
        let _ = writeln!(w, "### c. Added latency per event\n");
        let l = match &self.latency {
            Ok(l) => l,
            Err(e) => {
                let _ = writeln!(w, "Not measured: {e}\n");
                return;
            }
        };
        let _ = writeln!(
            w,
            "`pace {} {}`: receive time − `sentAtNs`, both CLOCK_REALTIME.\n",
            l.count, l.interval_us
        );
        let _ = writeln!(
            w,
            "| | n | min | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|"
        );
        for (name, v) in [
            ("Relay (WebSocket)", &l.relay_us),
            ("Raw attach", &l.raw_us),
        ] {
            if let Some(s) = Summary::of(v) {
                let _ = writeln!(
                    w,
                    "| {name} | {} | {} | {} | {} | {} | {} |",
                    s.n,
                    fmt_us(s.min),
                    fmt_us(s.p50),
                    fmt_us(s.p90),
                    fmt_us(s.p99),
                    fmt_us(s.max)
                );
            }
        }
        let _ = writeln!(w);
    }

    fn detail_health(&self, w: &mut String) {
        let _ = writeln!(w, "### d. /health latency\n");
        let h = match &self.health {
            Ok(h) => h,
            Err(e) => {
                let _ = writeln!(w, "Not measured: {e}\n");
                return;
            }
        };
        let _ = writeln!(
            w,
            "One keep-alive connection, a request every 5 ms, from a thread of its own. Raw Docker \
             streaming: the relay is idle while the benchmark reads a flood of the same size straight from \
             a container (same machine load, no relay work). Relay streaming: during a flood of {} events \
             through the relay that took {}; the reading client fell behind the relay's backlog, was \
             closed with 4008 and resumed by lastSeq {} times.\n",
            fmt_count(h.n as f64),
            fmt_ms(ms(h.flood_elapsed)),
            h.resumed
        );
        health_table(
            w,
            &[
                ("Idle", &h.idle.latencies(), h.idle.failures),
                (
                    "Raw Docker streaming",
                    &h.raw_streaming.latencies(),
                    h.raw_streaming.failures,
                ),
                (
                    "Relay streaming",
                    &h.streaming.latencies(),
                    h.streaming.failures,
                ),
            ],
        );
        threads_line(w, "while streaming", &h.relay_threads, h.flood_elapsed);
    }

    fn detail_replay(&self, w: &mut String) {
        let _ = writeln!(w, "### e. Replay\n");
        let r = match &self.replay {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(w, "Not measured: {e}\n");
                return;
            }
        };
        let _ = writeln!(
            w,
            "A new client connects with `lastSeq`; time from the connect call to `replay_end`. The journal's \
             last seq was {}; the relay's RSS before the first replay was {}.\n",
            r.journal_last,
            fmt_kib(r.rss_before_kb)
        );
        let _ = writeln!(
            w,
            "| lastSeq | to | Frames | Expected | Time | Frames/s | Relay RSS peak | RSS 0.5 s after |\n\
             |---|---|---|---|---|---|---|---|"
        );
        let mut row = |p: &ReplayRun| {
            let expected = p.to.saturating_sub(p.from);
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                p.from,
                p.to,
                p.frames,
                expected,
                fmt_ms(ms(p.elapsed)),
                fmt_count(rate(p.frames, p.elapsed)),
                fmt_kib(p.rss_peak_kb),
                fmt_kib(p.rss_after_kb)
            );
        };
        row(&r.partial);
        match &r.full {
            Ok(full) => row(full),
            Err(e) => {
                let _ = writeln!(w, "| 1 | | | | not measured: {} | | | |", one_line(e));
            }
        }
        let _ = writeln!(w);
    }

    fn detail_memory(&self, w: &mut String) {
        let _ = writeln!(w, "### f. Memory (relay VmRSS)\n");
        match &self.idle_rss_kb {
            Ok(kb) => {
                let _ = writeln!(w, "- Idle, 0.5 s after start: {}.", fmt_kib(*kb));
            }
            Err(e) => {
                let _ = writeln!(w, "- Idle: not measured: {e}.");
            }
        }
        match &self.sessions {
            Ok(m) => {
                let _ = writeln!(
                    w,
                    "- {} sessions, created and activated 5 at a time in {}: {} before, {} with all active \
                     ({:+.0} KiB per session), {} after deleting them (deleting took {}).",
                    m.count,
                    fmt_ms(ms(m.create_elapsed)),
                    fmt_kib(m.rss_before_kb),
                    fmt_kib(m.rss_active_kb),
                    (m.rss_active_kb as f64 - m.rss_before_kb as f64) / m.count as f64,
                    fmt_kib(m.rss_after_delete_kb),
                    fmt_ms(ms(m.delete_elapsed))
                );
            }
            Err(e) => {
                let _ = writeln!(w, "- Many sessions: not measured: {e}.");
            }
        }
        match &self.stalled {
            Ok(st) => {
                let sock = |s: &Option<TcpEntry>| {
                    s.as_ref().map_or("gone".to_owned(), |s| {
                        format!(
                            "{}, send queue {} B, receive queue {} B",
                            s.state, s.tx_queue, s.rx_queue
                        )
                    })
                };
                let _ = writeln!(
                    w,
                    "- Stalled client: it connected and read nothing while a flood of {} events ({} delivered to \
                     the reading client, in {}) ran on its session. RSS {} before, {} peak, {} 2 s after the flood, \
                     {} after it read and closed.",
                    fmt_count(st.n as f64),
                    fmt_count(st.updates as f64),
                    fmt_ms(ms(st.flood_elapsed)),
                    fmt_kib(st.rss_before_kb),
                    fmt_kib(st.rss_peak_kb),
                    fmt_kib(st.rss_after_flood_kb),
                    fmt_kib(st.rss_after_read_kb)
                );
                let _ = writeln!(
                    w,
                    "  - 2 s after the flood, the relay's end of its socket: {}; the client's end: {}.",
                    sock(&st.server_socket),
                    sock(&st.client_socket)
                );
                let _ = writeln!(
                    w,
                    "  - Reading it then: {} frames in {}, then {}.",
                    st.frames_read,
                    fmt_ms(ms(st.read_elapsed)),
                    st.ending
                );
            }
            Err(e) => {
                let _ = writeln!(w, "- Stalled client: not measured: {e}.");
            }
        }
        let _ = writeln!(w);
    }

    fn detail_delete(&self, w: &mut String) {
        let _ = writeln!(w, "### g. Delete under load\n");
        let d = match &self.delete {
            Ok(d) => d,
            Err(e) => {
                let _ = writeln!(w, "Not measured: {e}\n");
                return;
            }
        };
        let _ = writeln!(
            w,
            "`DELETE /api/sessions/:id` of the session with {} journal events returned after {}. The journal \
             is purged afterwards in the background; the relay's CPU went quiet {}. `/health` every 5 ms:\n",
            fmt_count(d.events as f64),
            fmt_ms(ms(d.delete_elapsed)),
            d.quiet_after
                .map_or("only after the 60 s watch ended".into(), |q| format!(
                    "{} after the DELETE was sent",
                    fmt_ms(ms(q))
                ))
        );
        health_table(
            w,
            &[
                ("While DELETE ran", &d.during_delete, 0),
                ("After, until quiet", &d.after_delete, 0),
            ],
        );
        if d.failures > 0 {
            let _ = writeln!(
                w,
                "{} `/health` request(s) failed or took over 5 s.\n",
                d.failures
            );
        }
    }
}

/// One sentence on where the relay's threads spent a stretch of time: running, or runnable
/// but waiting for a CPU (the kernel's run queue), from their schedstat.
fn threads_line(w: &mut String, when: &str, threads: &ThreadTimes, span: Duration) {
    if threads.is_empty() {
        return;
    }
    let parts: Vec<String> = threads
        .iter()
        .map(|(name, (run, wait))| {
            format!(
                "`{name}` ran {} and waited {} for a CPU",
                fmt_ms(*run as f64 / 1e6),
                fmt_ms(*wait as f64 / 1e6)
            )
        })
        .collect();
    let _ = writeln!(
        w,
        "Relay threads {when} ({} wall, threads of one name summed): {}.\n",
        fmt_ms(ms(span)),
        parts.join("; ")
    );
}

fn health_table(w: &mut String, rows: &[(&str, &Vec<Duration>, usize)]) {
    let _ = writeln!(
        w,
        "| | Requests | p50 | p90 | p99 | max | Failed |\n|---|---|---|---|---|---|---|"
    );
    for (name, v, failed) in rows {
        match Summary::of_ms(v) {
            Some(s) => {
                let _ = writeln!(
                    w,
                    "| {name} | {} | {} | {} | {} | {} | {failed} |",
                    s.n,
                    fmt_ms(s.p50),
                    fmt_ms(s.p90),
                    fmt_ms(s.p99),
                    fmt_ms(s.max)
                );
            }
            None => {
                let _ = writeln!(w, "| {name} | 0 | | | | | {failed} |");
            }
        }
    }
    let _ = writeln!(w);
}

fn short_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

/// The relay log's WARN and ERROR lines (ANSI colours stripped): up to 10 distinct ones each.
pub(crate) fn log_findings(path: &Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut warnings, mut errors) = (Vec::new(), Vec::new());
    for line in text.lines().map(strip_ansi) {
        let into = if line.contains(" WARN ") {
            &mut warnings
        } else if line.contains(" ERROR ") {
            &mut errors
        } else {
            continue;
        };
        // Drop the timestamp so repeats of one message count once among the examples.
        let message: String = line
            .split_once(' ')
            .map_or(line.as_str(), |(_, m)| m)
            .trim()
            .chars()
            .take(300)
            .collect();
        if into.len() < 10 && !into.contains(&message) {
            into.push(message);
        }
    }
    (warnings, errors)
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
