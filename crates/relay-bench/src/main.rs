//! `relay-bench`: measures pi-relay against raw Docker on this machine and prints a markdown
//! report (docs/benchmarks.md explains every figure). A tool of its own, never part of the
//! product binary.
//!
//! The relay under test runs as a child process (`pi-relay serve`, the release binary built next
//! to this one) so its CPU time and memory can be read from `/proc`. Its sandboxes use an image whose `pi` is
//! `fake-pi` (images/bench-fake-pi), which can flood events or pace them with timestamps. Each
//! relay figure is printed next to a baseline taken in the same run, mostly the same container
//! driven straight through the Engine API ([`raw`]). Everything the run creates (sessions,
//! containers, the relay, temporary directories) is removed at the end, also after a failed
//! measurement or Ctrl-C.

mod child;
mod client;
mod phases;
mod probe;
mod raw;
mod report;
mod stats;
mod sys;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use relay_docker::DockerSandbox;
use relay_sandbox::host::HostStorage;
use relay_sandbox::{LABEL_INSTANCE, Sandbox};

use self::child::RelayChild;
use self::client::Api;
use self::raw::Raw;
use self::report::{Report, Settings};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Adds what was being done to an error.
trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, BoxError>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, BoxError> {
        self.map_err(|e| format!("{what}: {e}").into())
    }
}

/// Benchmark settings.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "relay-bench",
    about = "Measures pi-relay against raw Docker on this machine"
)]
struct BenchArgs {
    /// The pi-relay executable to measure [default: `pi-relay` next to this program]
    #[arg(long)]
    relay: Option<PathBuf>,
    /// Sessions active at once for the memory figure (created and activated 5 at a time).
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Events per flood (throughput, /health under load, the stalled client).
    #[arg(long, default_value_t = 200_000)]
    flood: u64,
    /// Events per flood while `/health` is polled: longer than --flood, so that its p99 rests on
    /// enough requests (a 5 ms period gives about one per 700 events).
    #[arg(long, default_value_t = 600_000)]
    health_flood: u64,
    /// Journal events a reconnecting client replays.
    #[arg(long, default_value_t = 100_000)]
    replay: u64,
    /// Create → active runs, of the relay and of raw Docker each (interleaved). Container
    /// start times on a shared machine vary by ±15% from run to run, so the medians need many.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Events of the paced latency run.
    #[arg(long, default_value_t = 2000)]
    pace_events: u64,
    /// Microseconds between paced events.
    #[arg(long, default_value_t = 500)]
    pace_interval_us: u64,
    /// Sandbox image whose `pi` is fake-pi (images/bench-fake-pi/build.sh builds it).
    #[arg(long, default_value = "pi-relay/bench-fake-pi:latest")]
    image: String,
    /// Docker Engine API endpoint (unix:///path, tcp://host:port) [default: local socket]
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,
    /// Also write the markdown report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// What every phase needs: the relay's API and process, the raw baseline, and the sessions
/// that exist so far (deleted at the end whatever happens).
#[derive(Debug)]
struct Bench {
    args: BenchArgs,
    api: Api,
    raw: Raw,
    relay_pid: u32,
    relay_port: u16,
    sessions: Mutex<BTreeSet<String>>,
}

impl Bench {
    fn tracked(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates and activates a chat session; returns its id once it is active.
    async fn new_session(&self, client_id: &str) -> Result<String, BoxError> {
        self.new_session_named(client_id.to_owned()).await
    }

    async fn new_session_named(&self, client_id: String) -> Result<String, BoxError> {
        let id = self.api.create_session().await?;
        self.tracked().insert(id.clone());
        self.api.activate(&id, &client_id).await?;
        Ok(id)
    }

    async fn delete_session(&self, id: &str) -> Result<(), BoxError> {
        self.api.delete_session(id).await?;
        self.tracked().remove(id);
        Ok(())
    }

    /// Deletes every session created so far, a few at a time; all are tried, the first
    /// failure is returned.
    async fn delete_all_sessions(&self) -> Result<(), BoxError> {
        let ids: Vec<String> = self.tracked().iter().cloned().collect();
        let mut first_error = None;
        for chunk in ids.chunks(5) {
            let results =
                futures_util::future::join_all(chunk.iter().map(|id| self.delete_session(id)))
                    .await;
            for r in results {
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(BoxError::from)
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The relay executable: as given, or `pi-relay` next to this program (cargo builds both into
/// the same directory).
fn relay_executable(args: &BenchArgs) -> Result<PathBuf, BoxError> {
    if let Some(p) = &args.relay {
        return Ok(p.clone());
    }
    let me = std::env::current_exe().ctx("locating this program")?;
    let relay = me.with_file_name("pi-relay");
    if !relay.is_file() {
        return Err(format!(
            "{} not found; build it (cargo build --release -p pi-relay) or pass --relay",
            relay.display()
        )
        .into());
    }
    Ok(relay)
}

/// Runs the benchmark and prints its report.
async fn run(args: BenchArgs) -> Result<(), BoxError> {
    if args.runs == 0
        || args.flood == 0
        || args.health_flood == 0
        || args.sessions == 0
        || args.replay == 0
    {
        return Err(
            "--runs, --flood, --health-flood, --sessions and --replay must be at least 1".into(),
        );
    }
    if args.pace_events == 0 {
        return Err("--pace-events must be at least 1".into());
    }
    let started = Instant::now();
    let started_at = relay_hub::timestamp();

    let relay_exe = relay_executable(&args)?;
    let tmp = tempfile::Builder::new()
        .prefix("pi-relay-bench-")
        .tempdir()
        .ctx("creating a temporary directory")?;
    let raw_state = tmp.path().join("raw-state");
    std::fs::create_dir_all(&raw_state).ctx("creating the baseline's state directory")?;
    let (euid, _) = sys::effective_ids().ctx("reading this process's uid")?;
    let storage = HostStorage::new(raw_state, euid == 0);
    let docker = DockerSandbox::connect(args.docker_host.as_deref(), storage)
        .await
        .ctx("connecting to Docker (bash scripts/docker-up.sh starts it)")?;
    let image_id = docker.pin_image(&args.image).await.map_err(|e| {
        format!("{e}\nBuild it first: bash images/bench-fake-pi/build.sh (scripts/bench.sh does)")
    })?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Labels every container of this run, the relay's and the raw ones, for the final sweep.
    let instance_id = format!("bench-{}-{nanos:x}", std::process::id());
    eprintln!(
        "relay-bench: starting the relay (instance {instance_id}, temp {})",
        tmp.path().display()
    );
    let relay = RelayChild::start(
        &relay_exe,
        tmp.path(),
        &args.image,
        &instance_id,
        args.docker_host.as_deref(),
    )
    .await?;
    let machine = sys::Machine::describe(docker.engine()).await;
    let settings = Settings {
        sessions: args.sessions,
        flood: args.flood,
        health_flood: args.health_flood,
        replay: args.replay,
        runs: args.runs,
        pace_events: args.pace_events,
        pace_interval_us: args.pace_interval_us,
        image: args.image.clone(),
        image_id: image_id.clone(),
        clock_ticks: sys::clock_ticks_per_sec(),
    };
    let mut report = Report::new(settings, machine, started_at);
    let bench = match (
        Api::new(relay.port),
        Raw::new(docker.clone(), image_id, instance_id.clone()),
    ) {
        (Ok(api), Ok(raw)) => Bench {
            args: args.clone(),
            api,
            raw,
            relay_pid: relay.pid,
            relay_port: relay.port,
            sessions: Mutex::default(),
        },
        (Err(e), _) | (_, Err(e)) => {
            let _ = relay.stop().await;
            return Err(e);
        }
    };

    let interrupted = tokio::select! {
        () = phases::run_all(&bench, &mut report) => false,
        _ = tokio::signal::ctrl_c() => true,
    };

    // Cleanup, whatever happened above.
    eprintln!("relay-bench: cleaning up");
    if let Err(e) = bench.delete_all_sessions().await {
        report
            .notes
            .push(format!("cleanup: deleting sessions: {e}"));
    }
    for e in bench.raw.remove_all().await {
        report
            .notes
            .push(format!("cleanup: removing a raw container: {e}"));
    }
    let (warnings, errors) = report::log_findings(&relay.log);
    report.relay_log_warnings = warnings;
    report.relay_log_errors = errors;
    let failed = report.failures();
    if failed > 0 || interrupted {
        eprintln!("relay-bench: last relay log lines:\n{}", relay.log_tail(20));
    }
    match relay.stop().await {
        Ok(how) => report.relay_exit = how,
        Err(e) => report
            .notes
            .push(format!("cleanup: stopping the relay: {e}")),
    }
    // Anything still labelled with this run (a session the relay failed to delete, a raw
    // container whose removal failed) goes now.
    match tokio::time::timeout(Duration::from_secs(60), sweep(&docker, &instance_id)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => report
            .notes
            .push(format!("cleanup: removed {n} leftover container(s)")),
        Ok(Err(e)) => report.notes.push(format!("cleanup: container sweep: {e}")),
        Err(_) => report
            .notes
            .push("cleanup: container sweep timed out".to_owned()),
    }
    if let Err(e) = tmp.close() {
        report
            .notes
            .push(format!("cleanup: removing temporary files: {e}"));
    }
    report.load_end = sys::load_average();
    report.duration = started.elapsed();

    let markdown = report.render();
    println!("{markdown}");
    if let Some(path) = &args.output {
        std::fs::write(path, &markdown).ctx(&format!("writing {}", path.display()))?;
        eprintln!("relay-bench: report written to {}", path.display());
    }
    if interrupted {
        return Err("interrupted".into());
    }
    if failed > 0 {
        return Err(format!("{failed} measurement(s) failed; see the report").into());
    }
    Ok(())
}

/// Removes every container labelled with this run's instance id; returns how many.
async fn sweep(docker: &DockerSandbox, instance_id: &str) -> Result<usize, BoxError> {
    let left = docker
        .list(&[(LABEL_INSTANCE.to_owned(), instance_id.to_owned())])
        .await
        .ctx("listing this run's containers")?;
    for c in &left {
        docker.remove(&c.id).await.ctx("removing a container")?;
    }
    Ok(left.len())
}
