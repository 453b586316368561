//! Background observers of the relay while something else loads it: a `/health` poller on a
//! thread of its own, and a sampler of the relay's resident memory.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{BoxError, sys};

/// How long one `/health` request may take before it counts as failed.
const HEALTH_LIMIT: Duration = Duration::from_secs(5);

/// One `/health` answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HealthSample {
    /// When the request was sent.
    pub at: Instant,
    /// Until the whole body was read.
    pub latency: Duration,
}

/// What a [`HealthProbe`] saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct HealthRecord {
    pub samples: Vec<HealthSample>,
    /// Requests that failed or took longer than 5 s.
    pub failures: usize,
}

impl HealthRecord {
    /// Latencies of the samples sent in `[from, to)`.
    pub(crate) fn between(&self, from: Instant, to: Instant) -> Vec<Duration> {
        self.samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .map(|s| s.latency)
            .collect()
    }

    /// All latencies.
    pub(crate) fn latencies(&self) -> Vec<Duration> {
        self.samples.iter().map(|s| s.latency).collect()
    }
}

/// Polls `GET /health` every `period` over one keep-alive connection, from a thread with its
/// own runtime: the benchmark's runtime is busy reading floods, and a poller sharing it would
/// measure the benchmark's scheduling instead of the relay's.
#[derive(Debug)]
pub(crate) struct HealthProbe {
    stop: CancellationToken,
    thread: std::thread::JoinHandle<Result<HealthRecord, String>>,
}

impl HealthProbe {
    /// Starts polling `url`.
    pub(crate) fn start(url: String, period: Duration) -> Result<HealthProbe, BoxError> {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-health".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("health poller runtime: {e}"))?;
                rt.block_on(poll(url, period, token))
            })
            .map_err(|e| format!("starting the health poller: {e}"))?;
        Ok(HealthProbe { stop, thread })
    }

    /// Stops polling (after the request in flight) and returns what was seen.
    pub(crate) async fn finish(self) -> Result<HealthRecord, BoxError> {
        self.stop.cancel();
        let thread = self.thread;
        let joined = tokio::time::timeout(
            HEALTH_LIMIT * 2,
            tokio::task::spawn_blocking(move || thread.join()),
        )
        .await
        .map_err(|_| "the health poller did not stop")?
        .map_err(|e| format!("joining the health poller: {e}"))?
        .map_err(|_| "the health poller panicked")?;
        Ok(joined?)
    }
}

async fn poll(
    url: String,
    period: Duration,
    stop: CancellationToken,
) -> Result<HealthRecord, String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| format!("health client: {e}"))?;
    let mut record = HealthRecord::default();
    let mut tick = tokio::time::interval(period);
    // A slow answer delays the next request instead of firing a burst to catch up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(record),
            _ = tick.tick() => {}
        }
        let at = Instant::now();
        let answer = async {
            let res = http.get(&url).timeout(HEALTH_LIMIT).send().await?;
            let ok = res.status().is_success();
            res.bytes().await?;
            Ok::<_, reqwest::Error>(ok)
        }
        .await;
        match answer {
            Ok(true) => record.samples.push(HealthSample {
                at,
                latency: at.elapsed(),
            }),
            Ok(false) | Err(_) => record.failures += 1,
        }
    }
}

/// Samples a process's VmRSS every 50 ms and keeps the peak.
#[derive(Debug)]
pub(crate) struct RssSampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub(crate) fn start(pid: u32) -> RssSampler {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = sys::rss_kb(pid).unwrap_or(0);
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                peak = peak.max(sys::rss_kb(pid).unwrap_or(0));
            }
            peak.max(sys::rss_kb(pid).unwrap_or(0))
        });
        RssSampler { stop, task }
    }

    /// The peak in KiB.
    pub(crate) async fn finish(self) -> Result<u64, BoxError> {
        self.stop.cancel();
        Ok(self.task.await.map_err(|e| format!("RSS sampler: {e}"))?)
    }
}
