#!/usr/bin/env bash
# Builds the benchmark's sandbox image: pi-relay/sandbox-debian with the release
# `fake-pi` copied over /usr/local/bin/pi, so the relay's unchanged command
# `pi --mode rpc --session-id X` runs the fake. See README.md next to this file.
#
# Usage: build.sh [TAG]   (TAG defaults to pi-relay/bench-fake-pi:latest)
# Env:   BENCH_BASE_IMAGE (default pi-relay/sandbox-debian:1.6.0, built by
#        images/sandbox-debian/build.sh, which must run first)
set -euo pipefail

TAG=${1:-pi-relay/bench-fake-pi:latest}
BASE=${BENCH_BASE_IMAGE:-pi-relay/sandbox-debian:1.6.0}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DOCKER=/usr/bin/docker; [[ -x $DOCKER ]] || DOCKER=docker

"$DOCKER" info >/dev/null 2>&1 || { echo "build.sh: no Docker engine answers (bash scripts/docker-up.sh starts one)" >&2; exit 1; }
base_id=$("$DOCKER" image inspect --format '{{.Id}}' "$BASE" 2>/dev/null) ||
    { echo "build.sh: base image $BASE is missing; build it first: bash images/sandbox-debian/build.sh" >&2; exit 1; }

# Cargo is itself a no-op when nothing changed, so the binary is always current.
(cd "$ROOT" && cargo build --release --locked -q -p fake-pi)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/fake-pi
[[ -x $BIN ]] || { echo "build.sh: $BIN was not built" >&2; exit 1; }

# Anything that changes the image's contents changes this hash: the recipe,
# the exact base image and the binary. An unchanged one makes this a no-op.
BUILD_HASH=$({ cat "$HERE/build.sh" "$HERE/Dockerfile"; echo "base=$base_id"; sha256sum <"$BIN"; } | sha256sum | cut -d' ' -f1)
if [[ $("$DOCKER" image inspect --format '{{index .Config.Labels "pi-relay.build-hash"}}' "$TAG" 2>/dev/null) == "$BUILD_HASH" ]]; then
    echo "image $TAG is up to date"
    exit 0
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$HERE/Dockerfile" "$ctx/"
install -m 0755 "$BIN" "$ctx/fake-pi"
old_id=$("$DOCKER" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
# The legacy builder works with the engine's --bridge=none; its RUN step needs
# no network, so it gets none.
DOCKER_BUILDKIT=0 "$DOCKER" build -q --network none --build-arg "BASE=$base_id" \
    --label "pi-relay.build-hash=$BUILD_HASH" -t "$TAG" "$ctx" >/dev/null

# Smoke test: `pi` in the image must be the fake and honour --session-id.
reply=$(echo '{"id":"smoke","type":"get_state"}' |
    "$DOCKER" run -i --rm --network none --user 1000:1000 "$TAG" pi --mode rpc --session-id bench-smoke)
if [[ $reply != *'"sessionId":"bench-smoke"'* ]]; then
    "$DOCKER" rmi "$TAG" >/dev/null 2>&1 || true   # or the next run would call it up to date
    echo "build.sh: smoke test failed; $TAG removed. Output: $reply" >&2
    exit 1
fi
new_id=$("$DOCKER" image inspect --format '{{.Id}}' "$TAG")
# The previous build is now dangling; drop it unless a container still uses it.
if [[ -n $old_id && $old_id != "$new_id" ]]; then
    "$DOCKER" rmi "$old_id" >/dev/null 2>&1 || true
fi
echo "built $TAG (base $BASE, build hash ${BUILD_HASH:0:12})"
