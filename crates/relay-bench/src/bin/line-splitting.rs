//! `line-splitting`: how fast the relay's own line splitter (`relay_hub::lines::LineSplitter`)
//! cuts pi's stdout into lines, next to tokio-util's codecs doing the same job, on the same input
//! in the same run: 200,000 lines shaped like pi's `message_update` events, delivered in the 32 KiB
//! frames Docker uses. Prints nanoseconds per line for each, five rounds (the first warms up).
//! `cargo run --release -p relay-bench --bin line-splitting`; results in docs/benchmarks.md.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use relay_hub::lines::{LineSplitter, MAX_LINE_BYTES};
use tokio_util::codec::{AnyDelimiterCodec, Decoder, LinesCodec};

const LINES: usize = 200_000;

fn main() {
    let line = format!(
        "{{\"type\":\"message_update\",\"assistantMessageEvent\":{{\"type\":\"text_delta\",\
         \"contentIndex\":0,\"delta\":\"{}\"}},\"usage\":{{\"input\":100,\"output\":10}}}}\n",
        "x".repeat(180)
    );
    let stream = line.repeat(LINES).into_bytes();
    let frames: Vec<Bytes> = stream
        .chunks(32 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    println!("| round | LineSplitter | LinesCodec | AnyDelimiterCodec |");
    println!("|---|---|---|---|");
    for round in 1..=5 {
        let ours = per_line(|| {
            let mut s = LineSplitter::new();
            let mut out = Vec::new();
            let mut n = 0;
            for f in &frames {
                s.push(f, &mut out);
                n += out.len();
                out.clear();
            }
            n
        });
        let lines =
            per_line(|| decode_all(LinesCodec::new_with_max_length(MAX_LINE_BYTES), &frames));
        let any = per_line(|| {
            let codec =
                AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), MAX_LINE_BYTES);
            decode_all(codec, &frames)
        });
        println!("| {round} | {ours:.0} ns | {lines:.0} ns | {any:.0} ns |");
    }
}

/// Runs `split`, checks it found every line, and returns the time per line in nanoseconds.
fn per_line(split: impl FnOnce() -> usize) -> f64 {
    let started = Instant::now();
    let n = split();
    let elapsed = started.elapsed();
    assert_eq!(n, LINES, "every line is found");
    elapsed.as_nanos() as f64 / LINES as f64
}

/// Feeds every frame to `codec` the way a `FramedRead` would and counts the lines decoded.
fn decode_all<D: Decoder>(mut codec: D, frames: &[Bytes]) -> usize
where
    D::Error: std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    let mut n = 0;
    for f in frames {
        buf.extend_from_slice(f);
        while codec.decode(&mut buf).expect("decodes").is_some() {
            n += 1;
        }
    }
    n
}
