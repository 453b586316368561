#!/usr/bin/env bash
# Brings pi-relay up on its defaults, on a fresh Debian/Ubuntu machine as root: installs and
# starts Docker when it is missing, builds the default sandbox image when it is missing, builds
# the relay, and runs `pi-relay serve` in the foreground (Ctrl-C stops it; sessions keep
# running). Arguments go to `pi-relay serve`; see `pi-relay serve --help`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Sandboxes have no network of their own (PI_RELAY_SANDBOX_NETWORK, default `none`): they reach
# model providers, and the hosts their environment allows, only through the relay's egress
# gateway. So a Docker engine started here needs no bridge or NAT (docker-up.sh's defaults),
# which many hosts cannot create anyway.
bash scripts/docker-up.sh
bash images/sandbox-debian/build.sh
cargo build --release --locked -p pi-relay
bash scripts/build-forwarder.sh
exec "${CARGO_TARGET_DIR:-target}/release/pi-relay" serve "$@"
