//! `pi-relay bench`: placeholder until the benchmark lands.

use clap::Args;

/// Benchmark settings.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {}

/// Runs the benchmark.
pub async fn run(_args: BenchArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Err("the benchmark is not built yet".into())
}
