#!/usr/bin/env bash
# Makes a Docker engine available (idempotent), plus the host tools that
# images/sandbox-debian/build.sh needs. Meant for Debian 12 run as root, with
# no systemd: dockerd is started by hand and remembered in a PID file so that
# scripts/docker-down.sh stops exactly that process and nothing else.
#
# Env: PI_RELAY_DOCKERD_FLAGS (when unset: no bridge, no NAT, no ip_forward, so
# containers only ever get loopback unless given --network host).
set -euo pipefail

FLAGS=${PI_RELAY_DOCKERD_FLAGS---bridge=none --iptables=false --ip-forward=false}
LOG=/var/log/pi-relay-dockerd.log
PIDFILE=/run/pi-relay-dockerd.pid
DOCKER=/usr/bin/docker; [[ -x $DOCKER ]] || DOCKER=docker
export DEBIAN_FRONTEND=noninteractive

# One package per missing command, so a prepared machine triggers no apt at all.
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v unzip >/dev/null || missing+=(unzip)
command -v strip >/dev/null || missing+=(binutils)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)   # build.sh runs `pip download`
[[ -r /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
if ((${#missing[@]})); then
    echo "docker-up: installing ${missing[*]}"
    apt-get update -qq
    # No init system here: keep package scripts from trying to start services.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get install -y -qq "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
fi

if "$DOCKER" info >/dev/null 2>&1; then
    exit 0
fi

pid=$(cat "$PIDFILE" 2>/dev/null || true)
if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    echo "docker-up: dockerd $pid (ours) is running but not answering yet; waiting"
else
    # If another dockerd holds /var/run/docker.pid, this one exits at once and
    # the loop below shows why from the log.
    echo "docker-up: starting dockerd $FLAGS (log: $LOG)"
    echo "=== $(date -u +%FT%TZ) docker-up: dockerd $FLAGS" >>"$LOG"   # the log is appended to
    # setsid: the daemon must outlive this shell and ignore its Ctrl-C.
    # $FLAGS is split into words on purpose.
    # shellcheck disable=SC2086
    setsid /usr/sbin/dockerd $FLAGS >>"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"
fi

for ((i = 0; i < 60; i++)); do
    if "$DOCKER" info >/dev/null 2>&1; then
        echo "docker-up: dockerd $pid is ready"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PIDFILE"
        echo "docker-up: dockerd exited during startup; last lines of $LOG:" >&2
        tail -n 20 "$LOG" >&2
        exit 1
    fi
    sleep 0.5
done
echo "docker-up: dockerd $pid did not answer within 30 s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2
exit 1
