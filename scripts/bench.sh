#!/usr/bin/env bash
# Measures the relay against raw Docker on this machine: makes sure Docker is up,
# builds the default sandbox image and the benchmark image (fake pi), builds the
# relay and the benchmark (crates/relay-bench) in release mode, and runs the
# benchmark with the arguments given here,
# e.g. `bash scripts/bench.sh --output /tmp/bench.md` or, for a quick try,
# `bash scripts/bench.sh --sessions 10 --flood 20000 --replay 10000 --runs 3`.
# See docs/benchmarks.md for what each figure means.
set -euo pipefail
cd "$(dirname "$0")/.."

# Progress goes to stderr: stdout is the report alone.
bash scripts/docker-up.sh >&2
bash images/sandbox-debian/build.sh >&2
bash images/bench-fake-pi/build.sh >&2
cargo build --release --locked -p pi-relay -p relay-bench
bash scripts/build-forwarder.sh >&2
# Shown by the relay's /health and copied into the report.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $commit != unknown ]] && ! git diff --quiet HEAD 2>/dev/null; then
    commit="$commit-dirty"
fi
export GIT_COMMIT=$commit
target_dir=${CARGO_TARGET_DIR:-target}
exec "$target_dir/release/relay-bench" --relay "$target_dir/release/pi-relay" "$@"
