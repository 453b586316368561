//! The measurements. Each returns its figures or why it could not be taken; the report shows
//! both, and a failed measurement does not stop the others.
//!
//! Order matters for memory: a (create → active) and f (many sessions) run on a fresh relay;
//! then one "main" session serves every streaming measurement, in this order: b (flood), f
//! (stalled client), the journal check of b (paging `GET …/events` raises the relay's RSS for
//! good, so it comes after the memory figures), d (/health under load), c (latency), e (replay)
//! and g (delete). The main session's journal grows with every flood, so replay and delete see
//! a large one.

use std::time::{Duration, Instant};

use serde_json::json;

use super::client::{
    Api, SETTLED_PREFIX, UPDATE_PREFIX, Ws, is_relay_frame, next_text, realtime_ns, send_text,
    sent_at_ns,
};
use super::probe::{HealthProbe, RssSampler};
use super::report::{
    CreateResult, DeleteResult, FloodResult, HealthResult, JournalCheck, LatencyResult,
    ReplayResult, ReplayRun, Report, SessionsResult, StalledResult,
};
use super::{Bench, BoxError, Context, sys};

/// Period of the `/health` pollers.
const HEALTH_PERIOD: Duration = Duration::from_millis(5);
/// How long `/health` is polled on an idle relay for the baseline.
const IDLE_PROBE: Duration = Duration::from_secs(2);
/// Events per `GET …/events` page when checking the journal (the relay's maximum).
const EVENTS_PAGE: usize = 10_000;
/// Sessions created or deleted at once.
const BATCH: usize = 5;
/// Close code of a client the relay cut off for falling too far behind.
const CLIENT_TOO_SLOW: u16 = 4008;

fn progress(what: &str) {
    eprintln!("relay-bench: {what}");
}

/// How long a run of `n` events may take: generous (10,000 events/s), so only a stuck relay
/// times out.
fn run_limit(n: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_micros(n.saturating_mul(100))
}

fn prompt_line(message: &str) -> String {
    json!({"id": "bench", "type": "prompt", "message": message}).to_string()
}

/// Runs every phase, filling in `report`.
pub(crate) async fn run_all(b: &Bench, r: &mut Report) {
    // Right after start: nothing has been created yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.idle_rss_kb = sys::rss_kb(b.relay_pid).map_err(|e| format!("reading VmRSS: {e}"));
    if let Ok(v) = b.api.health().await {
        r.relay_version = format!(
            "{} (commit {})",
            v["version"].as_str().unwrap_or("?"),
            v["commit"].as_str().unwrap_or("?")
        );
    }

    progress("a. session create → active (relay and raw Docker, interleaved)");
    r.create = create_to_active(b).await.map_err(|e| e.to_string());

    progress(&format!(
        "f. memory with {} active sessions",
        b.args.sessions
    ));
    r.sessions = many_sessions(b).await.map_err(|e| e.to_string());

    progress("main session for the streaming measurements");
    let mut main = match MainSession::open(b).await {
        Ok(m) => m,
        Err(e) => {
            let why = format!("the session for this measurement could not be opened: {e}");
            r.flood = Err(why.clone());
            r.health = Err(why.clone());
            r.latency = Err(why.clone());
            r.replay = Err(why.clone());
            r.stalled = Err(why.clone());
            r.delete = Err(why);
            return;
        }
    };
    progress(&format!(
        "b. flood of {} events (relay, then raw Docker)",
        b.args.flood
    ));
    r.flood = flood(b, &mut main).await.map_err(|e| e.to_string());
    // Right after (b), while the relay's memory holds only what streaming needs: the journal
    // check below makes the relay build large pages, which raises its RSS for good.
    progress("f. stalled client during a flood");
    r.stalled = stalled_client(b, &mut main)
        .await
        .map_err(|e| e.to_string());
    if let Ok(f) = &mut r.flood {
        progress("b. checking the journal");
        f.journal = check_journal(b, &main.id, f.seq_before, f.seq_after)
            .await
            .map_err(|e| e.to_string());
    }
    progress("d. /health while idle, then during a second flood");
    r.health = health_under_flood(b, &mut main)
        .await
        .map_err(|e| e.to_string());
    progress(&format!(
        "c. latency of {} paced events (relay, then raw Docker)",
        b.args.pace_events
    ));
    r.latency = latency(b, &mut main).await.map_err(|e| e.to_string());
    progress("e. replay");
    r.replay = replay(b, &mut main).await.map_err(|e| e.to_string());
    progress("g. delete of the main session under /health polling");
    r.delete = delete_under_load(b, main).await.map_err(|e| e.to_string());
}

/// a. Wall time of create + activate through the relay against create + start + inspect
/// straight through the Engine API, alternating so that load drifts hit both alike.
async fn create_to_active(b: &Bench) -> Result<CreateResult, BoxError> {
    let measured = async {
        // One pair first, not counted: the first start of an image pays for cold caches.
        b.new_session("bench-create").await?;
        b.raw.create_start_inspect().await?;
        let mut relay = Vec::with_capacity(b.args.runs);
        let mut raw = Vec::with_capacity(b.args.runs);
        for _ in 0..b.args.runs {
            let t0 = Instant::now();
            b.new_session("bench-create").await?;
            relay.push(t0.elapsed());
            raw.push(b.raw.create_start_inspect().await?);
        }
        Ok::<_, BoxError>(CreateResult { relay, raw })
    }
    .await;
    // Nothing may keep running into the next measurements, whatever happened.
    let deleted = b.delete_all_sessions().await;
    let removed = b.raw.remove_all().await;
    let result = measured?;
    deleted?;
    if let Some(e) = removed.first() {
        return Err(format!("removing raw containers: {e}").into());
    }
    Ok(result)
}

/// f. The relay's memory with many active sessions.
async fn many_sessions(b: &Bench) -> Result<SessionsResult, BoxError> {
    let count = b.args.sessions;
    let rss_before_kb = sys::rss_kb(b.relay_pid).ctx("VmRSS")?;
    let measured = async {
        let t0 = Instant::now();
        let mut created = 0;
        while created < count {
            let batch = BATCH.min(count - created);
            let results = futures_util::future::join_all(
                (0..batch).map(|i| b.new_session_named(format!("bench-many-{}", created + i))),
            )
            .await;
            for r in results {
                r?;
            }
            created += batch;
        }
        let create_elapsed = t0.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_active_kb = sys::rss_kb(b.relay_pid).ctx("VmRSS")?;
        Ok::<_, BoxError>((create_elapsed, rss_active_kb))
    }
    .await;
    let t1 = Instant::now();
    let deleted = b.delete_all_sessions().await;
    let delete_elapsed = t1.elapsed();
    let (create_elapsed, rss_active_kb) = measured?;
    deleted?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(SessionsResult {
        count,
        rss_before_kb,
        rss_active_kb,
        rss_after_delete_kb: sys::rss_kb(b.relay_pid).ctx("VmRSS")?,
        create_elapsed,
        delete_elapsed,
    })
}

/// The session every streaming measurement uses, with one reading client, and the journal's
/// last sequence number as it must be once everything seen so far is committed.
pub(crate) struct MainSession {
    id: String,
    api: Api,
    ws: Ws,
    expected_seq: u64,
}

/// Frames of one run.
struct RunCount {
    updates: u64,
    /// Times the client fell more than the relay's backlog behind, was closed with 4008 and
    /// resumed by lastSeq, as a pi-apps client does.
    resumed: u32,
}

impl MainSession {
    async fn open(b: &Bench) -> Result<MainSession, BoxError> {
        let id = b.new_session("bench-main").await?;
        let (ws, seq) = b.api.ws(&id, "bench-main", 0).await?;
        let mut m = MainSession {
            id,
            api: b.api.clone(),
            ws,
            expected_seq: seq,
        };
        // pi has no ready banner: its answer to get_state says it reads stdin.
        send_text(
            &mut m.ws,
            json!({"id": "ready", "type": "get_state"}).to_string(),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = next_text(&mut m.ws, left).await.ctx("waiting for pi")?;
            m.count(&frame);
            if frame.starts_with(r#"{"id":"ready""#) {
                return Ok(m);
            }
        }
    }

    /// Keeps the expected journal position: every pi line is journaled, relay messages not.
    fn count(&mut self, frame: &str) {
        if !is_relay_frame(frame) {
            self.expected_seq += 1;
        }
    }

    /// Sends a prompt (journaled too).
    async fn prompt(&mut self, message: &str) -> Result<(), BoxError> {
        send_text(&mut self.ws, prompt_line(message)).await?;
        self.expected_seq += 1;
        Ok(())
    }

    /// Reads frames until `agent_settled`, calling `each` with every frame and its arrival
    /// time on the realtime clock.
    async fn read_run(
        &mut self,
        limit: Duration,
        mut each: impl FnMut(&str, i128),
    ) -> Result<RunCount, BoxError> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut updates = 0;
        let mut resumed = 0;
        loop {
            let msg = tokio::select! {
                biased;
                m = self.ws.next() => m,
                () = &mut deadline => return Err(format!("the run did not settle within {limit:?} ({updates} updates)").into()),
            };
            let frame = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == CLIENT_TOO_SLOW => {
                    let (ws, _) = self
                        .api
                        .ws(&self.id, "bench-main", self.expected_seq)
                        .await?;
                    self.ws = ws;
                    resumed += 1;
                    continue;
                }
                Some(Ok(Message::Close(f))) => {
                    return Err(format!("the relay closed the WebSocket: {f:?}").into());
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("WebSocket error: {e}").into()),
                None => return Err("the WebSocket ended".into()),
            };
            let at = realtime_ns();
            self.count(&frame);
            each(&frame, at);
            if frame.starts_with(UPDATE_PREFIX) {
                updates += 1;
            } else if frame.starts_with(SETTLED_PREFIX) {
                return Ok(RunCount { updates, resumed });
            }
        }
    }

    /// Waits until the journal holds everything seen so far (the relay commits in batches
    /// after fanning out); returns how long that took.
    async fn wait_journal(&self, b: &Bench) -> Result<Duration, BoxError> {
        let t0 = Instant::now();
        let want = self.expected_seq;
        if want == 0 {
            return Ok(Duration::ZERO);
        }
        loop {
            let (events, _) = b.api.events(&self.id, want.saturating_sub(1), 1).await?;
            let last = events.first().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
            if last == want {
                return Ok(t0.elapsed());
            }
            if last > want {
                return Err(
                    format!("the journal is at seq {last}, more than the {want} seen").into(),
                );
            }
            if t0.elapsed() > Duration::from_secs(120) {
                return Err(format!("the journal did not reach seq {want} within 120 s").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// b. Throughput of a flood through the relay (WebSocket client) and through a raw attach,
/// with the relay's CPU time for it (journal included), then a check of the journal.
async fn flood(b: &Bench, m: &mut MainSession) -> Result<FloodResult, BoxError> {
    let n = b.args.flood;
    let limit = run_limit(n);
    let dockerd = sys::find_pid("dockerd");
    let me = std::process::id();
    let ticks = |pid: u32| sys::cpu_ticks(pid).ctx("reading CPU time");
    let dticks = || dockerd.and_then(|p| sys::cpu_ticks(p).ok());
    m.wait_journal(b).await?;
    let seq_before = m.expected_seq;
    let rss_before_kb = sys::rss_kb(b.relay_pid).ctx("VmRSS")?;
    let sampler = RssSampler::start(b.relay_pid);

    let (c0, d0, s0) = (ticks(b.relay_pid)?, dticks(), ticks(me)?);
    let threads0 = sys::thread_times(b.relay_pid);
    let t0 = Instant::now();
    m.prompt(&format!("flood {n}")).await?;
    let run = m.read_run(limit, |_, _| {}).await?;
    let relay_elapsed = t0.elapsed();
    let (c_settled, d1, s1) = (ticks(b.relay_pid)?, dticks(), ticks(me)?);
    let relay_threads = sys::thread_times_since(&threads0, &sys::thread_times(b.relay_pid));
    m.wait_journal(b).await?;
    let journal_caught_up = t0.elapsed();
    let c1 = ticks(b.relay_pid)?;
    let rss_peak_kb = sampler.finish().await?;
    let seq_after = m.expected_seq;

    let mut pi = b.raw.start_attached().await?;
    let (rd0, rs0) = (dticks(), ticks(me)?);
    let t0 = Instant::now();
    pi.send_line(&prompt_line(&format!("flood {n}"))).await?;
    let mut raw_updates = 0u64;
    pi.read_until(
        limit,
        |l| l.starts_with(SETTLED_PREFIX.as_bytes()),
        |l| {
            if l.starts_with(UPDATE_PREFIX.as_bytes()) {
                raw_updates += 1;
            }
        },
    )
    .await?;
    let raw_elapsed = t0.elapsed();
    let (rd1, rs1) = (dticks(), ticks(me)?);
    b.raw.remove(&pi.id).await?;

    Ok(FloodResult {
        n,
        relay_elapsed,
        relay_updates: run.updates,
        relay_resumed: run.resumed,
        journal_caught_up,
        relay_ticks_settled: c_settled - c0,
        relay_ticks: c1 - c0,
        dockerd_ticks_relay: d0.zip(d1).map(|(a, b)| b - a),
        bench_ticks_relay: s1 - s0,
        rss_before_kb,
        rss_peak_kb,
        raw_elapsed,
        raw_updates,
        dockerd_ticks_raw: rd0.zip(rd1).map(|(a, b)| b - a),
        bench_ticks_raw: rs1 - rs0,
        relay_threads,
        seq_before,
        seq_after,
        // Checked later (see `run_all`).
        journal: Err("not checked".into()),
    })
}

/// Pages through the journal from `seq_before` (exclusive) to `seq_after` and checks that it
/// holds every line seen there, with no gap. Also notes what paging cost the relay in memory.
async fn check_journal(
    b: &Bench,
    id: &str,
    seq_before: u64,
    seq_after: u64,
) -> Result<JournalCheck, BoxError> {
    let mut check = JournalCheck {
        expected_last: seq_after,
        last_seq: seq_before,
        events: 0,
        updates: 0,
        contiguous: true,
        pages: 0,
        elapsed: Duration::ZERO,
        rss_before_kb: sys::rss_kb(b.relay_pid).ctx("VmRSS")?,
        rss_after_kb: 0,
    };
    let t0 = Instant::now();
    let mut after = seq_before;
    'pages: while after < seq_after {
        let (events, last) = b.api.events(id, after, EVENTS_PAGE).await?;
        check.pages += 1;
        if events.is_empty() {
            break;
        }
        for e in &events {
            let seq = e["seq"].as_u64().ok_or("journal event without seq")?;
            if seq > seq_after {
                break 'pages;
            }
            check.contiguous &= seq == check.last_seq + 1;
            check.last_seq = seq;
            check.events += 1;
            if e["type"] == "message_update" {
                check.updates += 1;
            }
        }
        after = last;
    }
    check.elapsed = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    check.rss_after_kb = sys::rss_kb(b.relay_pid).ctx("VmRSS")?;
    Ok(check)
}

/// d. `/health` latency while idle, while a raw flood loads the machine (dockerd, the
/// container, the reader) but not the relay, and while the relay streams a flood itself.
async fn health_under_flood(b: &Bench, m: &mut MainSession) -> Result<HealthResult, BoxError> {
    let n = b.args.health_flood;
    m.wait_journal(b).await?;
    let url = b.api.url("/health");
    let probe = HealthProbe::start(url.clone(), HEALTH_PERIOD)?;
    tokio::time::sleep(IDLE_PROBE).await;
    let idle = probe.finish().await?;

    let mut pi = b.raw.start_attached().await?;
    let probe = HealthProbe::start(url.clone(), HEALTH_PERIOD)?;
    let read = async {
        pi.send_line(&prompt_line(&format!("flood {n}"))).await?;
        pi.read_until(
            run_limit(n),
            |l| l.starts_with(SETTLED_PREFIX.as_bytes()),
            |_| {},
        )
        .await
    }
    .await;
    let raw_streaming = probe.finish().await?;
    b.raw.remove(&pi.id).await?;
    read?;

    let probe = HealthProbe::start(url, HEALTH_PERIOD)?;
    let threads0 = sys::thread_times(b.relay_pid);
    let t0 = Instant::now();
    let streamed = async {
        m.prompt(&format!("flood {n}")).await?;
        m.read_run(run_limit(n), |_, _| {}).await
    }
    .await;
    let flood_elapsed = t0.elapsed();
    let relay_threads = sys::thread_times_since(&threads0, &sys::thread_times(b.relay_pid));
    let streaming = probe.finish().await?;
    let run = streamed?;
    if run.updates != n {
        return Err(format!("the flood delivered {} of {n} updates", run.updates).into());
    }
    Ok(HealthResult {
        n,
        resumed: run.resumed,
        idle,
        raw_streaming,
        streaming,
        flood_elapsed,
        relay_threads,
    })
}

/// c. Transit time of paced events, relay against raw attach.
async fn latency(b: &Bench, m: &mut MainSession) -> Result<LatencyResult, BoxError> {
    let (count, interval_us) = (b.args.pace_events, b.args.pace_interval_us);
    let limit = Duration::from_secs(60)
        + Duration::from_micros(count.saturating_mul(interval_us).saturating_mul(2));
    let message = format!("pace {count} {interval_us}");
    m.wait_journal(b).await?;
    let mut relay_us = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    m.prompt(&message).await?;
    m.read_run(limit, |frame, at| {
        if frame.starts_with(UPDATE_PREFIX)
            && let Some(sent) = sent_at_ns(frame.as_bytes())
        {
            relay_us.push((at - sent) as f64 / 1000.0);
        }
    })
    .await?;

    let mut pi = b.raw.start_attached().await?;
    let mut raw_us = Vec::with_capacity(relay_us.len());
    pi.send_line(&prompt_line(&message)).await?;
    let read = pi
        .read_until(
            limit,
            |l| l.starts_with(SETTLED_PREFIX.as_bytes()),
            |l| {
                let at = realtime_ns();
                if l.starts_with(UPDATE_PREFIX.as_bytes())
                    && let Some(sent) = sent_at_ns(l)
                {
                    raw_us.push((at - sent) as f64 / 1000.0);
                }
            },
        )
        .await;
    b.raw.remove(&pi.id).await?;
    read?;
    for (who, got) in [("relay", relay_us.len()), ("raw", raw_us.len())] {
        if got as u64 != count {
            return Err(format!("{who}: {got} of {count} paced events carried a stamp").into());
        }
    }
    Ok(LatencyResult {
        count,
        interval_us,
        relay_us,
        raw_us,
    })
}

/// e. A reconnecting client replaying `--replay` events, then the whole journal.
async fn replay(b: &Bench, m: &mut MainSession) -> Result<ReplayResult, BoxError> {
    m.wait_journal(b).await?;
    let last = m.expected_seq;
    let from = last.saturating_sub(b.args.replay).max(1);
    let rss_before_kb = sys::rss_kb(b.relay_pid).ctx("VmRSS")?;
    let partial = replay_once(b, &m.id, from).await?;
    let full = replay_once(b, &m.id, 1).await.map_err(|e| e.to_string());
    Ok(ReplayResult {
        journal_last: last,
        rss_before_kb,
        partial,
        full,
    })
}

async fn replay_once(b: &Bench, id: &str, from: u64) -> Result<ReplayRun, BoxError> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    const LIMIT: Duration = Duration::from_secs(120);
    let sampler = RssSampler::start(b.relay_pid);
    let t0 = Instant::now();
    let mut ws = b.api.ws_raw(id, "bench-replay", from).await?;
    let connected: serde_json::Value =
        serde_json::from_str(&next_text(&mut ws, LIMIT).await?).ctx("`connected`")?;
    let to = connected["lastSeq"]
        .as_u64()
        .ok_or("`connected` without lastSeq")?;
    let start = next_text(&mut ws, LIMIT).await?;
    if !start.starts_with(r#"{"type":"replay_start""#) {
        return Err(format!("expected replay_start, got {start}").into());
    }
    let deadline = tokio::time::sleep(LIMIT);
    tokio::pin!(deadline);
    let mut frames = 0u64;
    loop {
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            () = &mut deadline => return Err(format!("no replay_end within {LIMIT:?} ({frames} frames)").into()),
        };
        match msg {
            Some(Ok(Message::Text(t))) if t.starts_with(r#"{"type":"replay_end""#) => break,
            Some(Ok(Message::Text(_))) => frames += 1,
            Some(Ok(Message::Close(f))) => {
                return Err(format!("closed during replay: {f:?}").into());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("WebSocket error during replay: {e}").into()),
            None => return Err("the WebSocket ended during replay".into()),
        }
    }
    let elapsed = t0.elapsed();
    let rss_peak_kb = sampler.finish().await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(ReplayRun {
        from,
        to,
        frames,
        elapsed,
        rss_peak_kb,
        rss_after_kb: sys::rss_kb(b.relay_pid).ctx("VmRSS")?,
    })
}

/// f. A client that never reads while a flood runs on its session: what it costs the relay,
/// and whether the relay cuts it off.
async fn stalled_client(b: &Bench, m: &mut MainSession) -> Result<StalledResult, BoxError> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let n = b.args.flood;
    m.wait_journal(b).await?;
    let rss_before_kb = sys::rss_kb(b.relay_pid).ctx("VmRSS")?;
    let mut stalled = b.api.ws_raw(&m.id, "bench-stalled", 0).await?;
    let client_port = match stalled.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().ctx("local address")?.port(),
        _ => return Err("unexpected TLS stream".into()),
    };
    let sampler = RssSampler::start(b.relay_pid);
    let t0 = Instant::now();
    m.prompt(&format!("flood {n}")).await?;
    let run = m.read_run(run_limit(n), |_, _| {}).await?;
    let flood_elapsed = t0.elapsed();
    m.wait_journal(b).await?;
    // Time for the relay to act on the client it found too slow.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_peak_kb = sampler.finish().await?;
    let rss_after_flood_kb = sys::rss_kb(b.relay_pid).ctx("VmRSS")?;
    let server_socket = sys::tcp_socket(b.relay_port, client_port);
    let client_socket = sys::tcp_socket(client_port, b.relay_port);

    // Now read what the relay left for it, to see how the connection ends.
    let t1 = Instant::now();
    let mut frames = 0u64;
    let mut close_code = None;
    let overall = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(overall);
    let ending = loop {
        let msg = tokio::select! {
            biased;
            m = tokio::time::timeout(Duration::from_secs(10), stalled.next()) => m,
            () = &mut overall => break format!("still delivering frames after 60 s ({frames} read)"),
        };
        match msg {
            Err(_) => break format!("still open: no frame for 10 s after {frames} frames"),
            Ok(Some(Ok(Message::Text(_) | Message::Binary(_)))) => frames += 1,
            Ok(Some(Ok(Message::Close(f)))) => {
                close_code = f.as_ref().map(|f| u16::from(f.code));
                break match f {
                    Some(f) => format!("close frame {} \"{}\"", u16::from(f.code), f.reason),
                    None => "close frame without a code".to_owned(),
                };
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => break format!("connection error: {e}"),
            Ok(None) => break "connection ended without a close frame".to_owned(),
        }
    };
    let read_elapsed = t1.elapsed();
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(StalledResult {
        n,
        updates: run.updates,
        flood_elapsed,
        rss_before_kb,
        rss_peak_kb,
        rss_after_flood_kb,
        rss_after_read_kb: sys::rss_kb(b.relay_pid).ctx("VmRSS")?,
        server_socket,
        client_socket,
        frames_read: frames,
        read_elapsed,
        ending,
        close_code,
    })
}

/// g. DELETE of the session holding the big journal while `/health` is polled; polling goes
/// on until the relay's CPU goes quiet (the journal is purged in the background).
async fn delete_under_load(b: &Bench, m: MainSession) -> Result<DeleteResult, BoxError> {
    m.wait_journal(b).await?;
    let events = m.expected_seq;
    let MainSession { id, mut ws, .. } = m;
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
    drop(ws);
    let probe = HealthProbe::start(b.api.url("/health"), HEALTH_PERIOD)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let deleted = b.delete_session(&id).await;
    let delete_elapsed = t0.elapsed();
    let quiet_at = wait_quiet(b.relay_pid, Duration::from_secs(60)).await;
    let t_end = Instant::now();
    let record = probe.finish().await?;
    deleted?;
    Ok(DeleteResult {
        events,
        delete_elapsed,
        quiet_after: quiet_at.map(|q| q.saturating_duration_since(t0)),
        during_delete: record.between(t0, t0 + delete_elapsed),
        after_delete: record.between(t0 + delete_elapsed, t_end),
        failures: record.failures,
    })
}

/// When the process's CPU use fell to near nothing (≤ 2 ticks per 100 ms, three times in a
/// row): the end of background work such as a journal purge. `None` if it never did.
async fn wait_quiet(pid: u32, limit: Duration) -> Option<Instant> {
    const STEP: Duration = Duration::from_millis(100);
    let t0 = Instant::now();
    let mut last = sys::cpu_ticks(pid).ok()?;
    let mut quiet = 0;
    while t0.elapsed() < limit {
        tokio::time::sleep(STEP).await;
        let now = sys::cpu_ticks(pid).ok()?;
        quiet = if now - last <= 2 { quiet + 1 } else { 0 };
        last = now;
        if quiet == 3 {
            return Some(Instant::now() - STEP * 3);
        }
    }
    None
}
