#!/usr/bin/env bash
# Builds the sandbox forwarder (crates/relay-forward) as a static binary, so that any sandbox
# image runs it whatever its C library, and puts it next to the relay's binaries
# (target/release/ and target/debug/), where the relay looks for it by default
# (`pi-relay serve --forwarder` overrides). A no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
TARGET_DIR=${CARGO_TARGET_DIR:-target}
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" cargo build --quiet --release --locked \
    -p relay-forward --target "$TRIPLE"
for profile in release debug; do
    mkdir -p "$TARGET_DIR/$profile"
    cp -f "$TARGET_DIR/$TRIPLE/release/pi-relay-forward" "$TARGET_DIR/$profile/pi-relay-forward"
done
