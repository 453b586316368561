//! `gateway`: what the egress gateway adds to a sandbox's model requests, next to the same
//! requests sent straight to the provider, in the same run. The provider is a small streaming
//! server on loopback answering like OpenAI's chat completions (server-sent events of about 200
//! bytes); the gateway path is the whole of a sandbox's: TCP to the real forwarder
//! (`pi-relay-forward`, a child process), the session's Unix socket, the gateway (on a runtime
//! thread of its own, so its CPU time can be read), and the provider. Requests alternate between
//! the two paths. Prints a markdown table: latency to the whole answer and to its first byte,
//! p50/p90/p99, and the CPU the gateway and the forwarder spend per streamed MB.
//! `cargo run --release -p relay-bench --bin gateway -- [--requests N] [--stream-mb M]`, after
//! `bash scripts/build-forwarder.sh`; results in docs/benchmarks.md.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Json;
use axum::response::Response;
use clap::Parser;
use relay_gateway::provider::{ApiKind, ProviderRoute, Routes};
use relay_gateway::{DialConfig, EgressPolicy, Gateway, GatewayConfig};
use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(
    name = "gateway",
    about = "Egress gateway latency and CPU against direct requests"
)]
struct Args {
    /// Requests per path (small answers: 20 events).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Megabytes streamed per path for the CPU figure.
    #[arg(long, default_value_t = 200)]
    stream_mb: usize,
    /// The forwarder [default: `pi-relay-forward` beside this program]
    #[arg(long)]
    forwarder: Option<PathBuf>,
}

/// One server-sent event as a provider streams text: about 200 bytes.
fn event() -> String {
    let chunk = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "x".repeat(96)}, "finish_reason": null}]});
    format!("data: {chunk}\n\n")
}

/// The provider: `{"events": n}` → n events, a usage chunk and `[DONE]`.
async fn provider(Json(body): Json<Value>) -> Response {
    let n = body["events"].as_u64().unwrap_or(20);
    let one = event();
    let usage = json!({"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": n}});
    let tail = format!("data: {usage}\n\ndata: [DONE]\n\n");
    // Sent in writes of about 16 KiB, as a provider's TLS records arrive.
    let per_write = (16 * 1024 / one.len()).max(1) as u64;
    let stream = futures_util::stream::iter((0..n.div_ceil(per_write)).map(move |i| {
        let count = per_write.min(n - i * per_write) as usize;
        Ok::<_, Infallible>(bytes::Bytes::from(one.repeat(count)))
    }))
    .chain(futures_util::stream::once(async move {
        Ok::<_, Infallible>(bytes::Bytes::from(tail))
    }));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

use futures_util::StreamExt;

/// Thread ids of the gateway's runtime.
type Tids = Arc<Mutex<Vec<i32>>>;

/// CPU seconds (user + system) of thread `tid` of this process, or of process `pid`.
fn cpu_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

fn gateway_cpu(tids: &Tids) -> f64 {
    let pid = std::process::id();
    tids.lock()
        .unwrap()
        .iter()
        .map(|t| cpu_of(&format!("/proc/{pid}/task/{t}/stat")))
        .sum()
}

/// One request: (time to the first body byte, time to the end, body bytes).
async fn request(
    client: &reqwest::Client,
    url: &str,
    events: u64,
) -> Result<(Duration, Duration, usize), BoxError> {
    let started = Instant::now();
    let mut res = client
        .post(url)
        .header("authorization", "Bearer pi-relay-gateway-placeholder")
        .json(&json!({"model": "m", "stream": true, "events": events}))
        .send()
        .await?
        .error_for_status()?;
    let mut first = None;
    let mut bytes = 0;
    while let Some(chunk) = res.chunk().await? {
        first.get_or_insert_with(|| started.elapsed());
        bytes += chunk.len();
    }
    Ok((first.unwrap_or_default(), started.elapsed(), bytes))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let forwarder = match args.forwarder {
        Some(f) => f,
        None => std::env::current_exe()?.with_file_name("pi-relay-forward"),
    };
    if !forwarder.is_file() {
        return Err(format!(
            "{} is missing: bash scripts/build-forwarder.sh",
            forwarder.display()
        )
        .into());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream_port = listener.local_addr()?.port();
    let app = axum::Router::new().fallback(axum::routing::post(provider));
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The gateway on a runtime of its own, whose threads are known.
    let tids: Tids = Arc::default();
    let recorded = tids.clone();
    let gw_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(move || {
            #[allow(unsafe_code)]
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            recorded.lock().unwrap().push(tid);
        })
        .build()?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("egress.sock");
    let stop = tokio_util::sync::CancellationToken::new();
    let gateway = {
        let _in = gw_runtime.enter();
        let mut dial = DialConfig::default();
        dial.resolve
            .insert("provider.bench".into(), vec!["127.0.0.1".parse()?]);
        let gateway = Gateway::new(
            GatewayConfig {
                dial,
                ..GatewayConfig::default()
            },
            stop.clone(),
        )?;
        gateway.set_routes(Routes::new([ProviderRoute {
            id: "bench".into(),
            upstream: format!("http://provider.bench:{upstream_port}/v1").parse()?,
            api: ApiKind::OpenAiCompletions,
            bearer: false,
            key: Some("sk-bench".to_owned().into()),
            headers: Vec::new(),
        }]));
        gateway.open("bench", &socket, EgressPolicy::default())?;
        gateway
    };
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    let forward_port = probe.local_addr()?.port();
    drop(probe);
    let mut child = std::process::Command::new(&forwarder)
        .arg(forward_port.to_string())
        .arg(&socket)
        .spawn()?;
    let direct_url = format!("http://127.0.0.1:{upstream_port}/v1/chat/completions");
    let gateway_url = format!("http://127.0.0.1:{forward_port}/p/bench/v1/chat/completions");
    let client = reqwest::Client::builder().no_proxy().build()?;
    for _ in 0..100 {
        if request(&client, &gateway_url, 1).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Latency: small answers, the two paths alternating.
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for _ in 0..args.requests {
        direct.push(request(&client, &direct_url, 20).await?);
        via.push(request(&client, &gateway_url, 20).await?);
    }
    println!("## Egress gateway (`relay-bench --bin gateway`)\n");
    println!(
        "{} requests per path, alternating; each answer 20 events (~4.3 KB). Milliseconds.\n",
        args.requests
    );
    println!(
        "| figure | direct p50 | gateway p50 | added p50 | direct p90 | gateway p90 | direct p99 | gateway p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, pick) in [("whole answer", 1usize), ("first byte", 0usize)] {
        let sorted = |v: &[(Duration, Duration, usize)]| {
            let mut s: Vec<Duration> = v
                .iter()
                .map(|r| if pick == 0 { r.0 } else { r.1 })
                .collect();
            s.sort();
            s
        };
        let (d, g) = (sorted(&direct), sorted(&via));
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            ms(pct(&d, 0.5)),
            ms(pct(&g, 0.5)),
            ms(pct(&g, 0.5).saturating_sub(pct(&d, 0.5))),
            ms(pct(&d, 0.9)),
            ms(pct(&g, 0.9)),
            ms(pct(&d, 0.99)),
            ms(pct(&g, 0.99)),
        );
    }

    // CPU per streamed MB: large answers through the gateway.
    let events = 5000u64; // about 1 MB per answer
    let answers = args.stream_mb.max(1);
    let (gw0, fw0) = (
        gateway_cpu(&tids),
        cpu_of(&format!("/proc/{}/stat", child.id())),
    );
    let started = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..answers {
        bytes += request(&client, &gateway_url, events).await?.2;
    }
    let via_time = started.elapsed();
    let (gw1, fw1) = (
        gateway_cpu(&tids),
        cpu_of(&format!("/proc/{}/stat", child.id())),
    );
    let started = Instant::now();
    for _ in 0..answers {
        request(&client, &direct_url, events).await?;
    }
    let direct_time = started.elapsed();
    let mb = bytes as f64 / 1e6;
    println!(
        "\nStreaming {mb:.0} MB in answers of ~1 MB (200-byte events): gateway {:.1} ms CPU per MB, \
         forwarder {:.1} ms CPU per MB; wall time {:.2} s through the gateway, {:.2} s direct \
         ({:.0} vs {:.0} MB/s).",
        (gw1 - gw0) * 1000.0 / mb,
        (fw1 - fw0) * 1000.0 / mb,
        via_time.as_secs_f64(),
        direct_time.as_secs_f64(),
        mb / via_time.as_secs_f64(),
        mb / direct_time.as_secs_f64(),
    );
    let usage = gateway.usage("bench");
    if let Some(p) = usage.providers.get("bench") {
        println!(
            "\nThe gateway counted {} requests, {} failed, {} output tokens.",
            p.requests, p.failed, p.output_tokens
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    stop.cancel();
    gw_runtime.shutdown_background();
    Ok(())
}
