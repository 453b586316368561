#!/usr/bin/env bash
# Brings pi-relay up on its defaults, on a fresh Debian/Ubuntu machine as root: installs and
# starts Docker when it is missing, builds the default sandbox image when it is missing, builds
# the relay, and runs `pi-relay serve` in the foreground (Ctrl-C stops it; sessions keep
# running). Arguments go to `pi-relay serve`; see `pi-relay serve --help`.
set -euo pipefail
cd "$(dirname "$0")/.."

# A Docker engine started here gets its normal default bridge network, which sandboxes use
# (PI_RELAY_SANDBOX_NETWORK, default `bridge`) to reach model providers.
export PI_RELAY_DOCKERD_FLAGS="${PI_RELAY_DOCKERD_FLAGS-}"
bash scripts/docker-up.sh
bash images/sandbox-debian/build.sh
cargo build --release --locked -p pi-relay
bash scripts/build-forwarder.sh
exec "${CARGO_TARGET_DIR:-target}/release/pi-relay" serve "$@"
