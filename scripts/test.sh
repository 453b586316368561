#!/usr/bin/env bash
# Runs the whole test suite: unit tests, API tests (fake sandbox), real-Docker tests and the
# end-to-end test with the real pi. Installs and starts Docker when it is missing (and stops the
# engine it started when done), and builds the default sandbox image when it is missing.
# Extra arguments go to `cargo test` (e.g. `bash scripts/test.sh needs_docker`).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=/usr/bin/docker; [[ -x $DOCKER ]] || DOCKER=docker
if ! "$DOCKER" info >/dev/null 2>&1; then
    # Test engines never get a bridge or NAT: sandboxes in tests use the host or no network.
    PI_RELAY_DOCKERD_FLAGS="--bridge=none --iptables=false --ip-forward=false" bash scripts/docker-up.sh
    trap 'bash scripts/docker-down.sh' EXIT
else
    bash scripts/docker-up.sh   # only installs the image build's host tools if missing
fi
bash images/sandbox-debian/build.sh
# The fault tests run the fake pi in this image (long, fast, deterministic runs).
bash images/bench-fake-pi/build.sh
# Sandboxes reach the relay through this static forwarder (crates/relay-forward).
bash scripts/build-forwarder.sh
cargo test --workspace --all-features --locked "$@"
